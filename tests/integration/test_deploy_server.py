"""The deployments on a real server: `alignflow serve` (Prefect server on SQLite, deploy/prefect.yaml
deployed with `prefect deploy`, a process worker, the MLflow UI) started on 127.0.0.1 for this module.

- schedule: the API shows nightly-alignment's 02:00 UTC cron schedule and its next run;
- browser: headless Chromium opens alignment-on-demand in the Prefect UI, starts a custom run with
  method=orpo and a profile stored outside the package (a YAML file path typed into the form), the run
  completes, and its model version is in the MLflow registry, named after that profile with its hash;
- overlap: of two nightly runs triggered together the second waits (AwaitingConcurrencySlot) while the
  first runs (deployment concurrency 1, ENQUEUE; it is then cancelled: a third whole flow run would cost
  minutes here), and the nightly run's training and the on-demand run's (when the browser test ran) do
  not overlap (the `alignflow-train` tag limit).

Runs use the small test settings: `alignflow serve` makes SMALL the deployments' default `overrides`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import SMALL, STATE, small_config

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
# A small head-to-head: three flow runs share two cores here (the default is 120 prompts x 4 samples a side).
EVAL = ["evaluation.max_prompts=8", "evaluation.samples_per_prompt=1", "evaluation.max_new_tokens=8"]
MODEL = "test-deploy"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 360  # seconds for a flow run on a busy 2-core machine (about 40-100 s alone)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The running `alignflow serve`: its URLs and a small client for Prefect's REST API."""

    def __init__(self, prefect_port: int, mlflow_port: int, log: Path):
        self.ui = f"http://127.0.0.1:{prefect_port}"
        self.api = f"{self.ui}/api"
        self.mlflow_ui = f"http://127.0.0.1:{mlflow_port}"
        self.log = log
        self.on_demand_run: str | None = None  # set by the browser test, checked by the overlap test

    def request(self, method: str, path: str, **kwargs):
        # SQLite under a busy scheduler answers 503 (database locked) now and then, and with three flow
        # runs and a browser on two cores an answer can take over 30 s: a read is asked again.
        reads = method == "GET" or path.endswith("/filter")
        for attempt in range(5):
            try:
                response = requests.request(method, f"{self.api}{path}", timeout=60 if reads else 180, **kwargs)
            except requests.exceptions.ReadTimeout:
                if not reads or attempt == 4:
                    raise
                continue
            if response.status_code != 503:
                break
            time.sleep(1 + attempt)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, json=body or {})

    def get(self, path: str, **params):
        return self.request("GET", path, params=params)

    def deployment(self, name: str) -> dict:
        found = [d for d in self.post("/deployments/filter") if d["name"] == name]
        assert found, f"deployment {name!r} not on the server; log: {self.log}"
        return found[0]

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_done(self, run_ids: list[str], timeout: float = RUN_TIMEOUT) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.flow_run(i) for i in run_ids]
            if all(_state(r) in TERMINAL for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = [(r["name"], (r.get("state") or {}).get("name")) for r in runs]
                pytest.fail(f"flow runs not finished after {timeout}s: {states}; worker output: {self.log}")
            time.sleep(2)

    def task_runs(self, run_id: str, prefix: str) -> list[dict]:
        runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        return [t for t in runs if t["name"].startswith(f"{prefix}-")]

    def artifacts(self, run_id: str) -> dict[str, dict]:
        found = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return {a["key"]: a for a in found if a.get("key")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    prefect_port, mlflow_port = free_port(), free_port()
    log = root / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_UI", "ALIGNFLOW_MLFLOW"))}
    env.update(
        PREFECT_HOME=str(root / "prefect"),  # a fresh server database; results and caches stay in STATE
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    args = [str(BIN / "alignflow"), "serve", "--home", str(STATE), "--prefect-port", str(prefect_port),
            "--mlflow-port", str(mlflow_port), *SMALL, *EVAL, f"registry.model_name={MODEL}"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    started = time.monotonic()
    try:
        while "alignflow serve: ready" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - started > 240:
                pytest.fail(f"alignflow serve did not get ready (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        print(f"alignflow serve ready in {time.monotonic() - started:.0f}s; output: {log}")
        yield Stack(prefect_port, mlflow_port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # serve stops the worker, the MLflow UI and the server
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        assert proc.returncode == 0, f"alignflow serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


@dataclass
class Nightly:
    run: str  # the nightly run the worker started
    held: str  # the one triggered with it, held back while `run` ran, then cancelled
    held_states: set[str]  # the state names `held` was seen in while `run` was Running


@pytest.fixture(scope="module")
def nightly(stack) -> Nightly:
    """Two runs of nightly-alignment triggered back to back (as an operator clicking Quick run twice): which
    one the worker picks up first is not ordered. The other is watched while the first runs, then cancelled."""
    deployment = stack.deployment("nightly-alignment")
    ids = [stack.post(f"/deployments/{deployment['id']}/create_flow_run")["id"] for _ in range(2)]
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (running := [i for i in ids if _state(stack.flow_run(i)) == "RUNNING"]):
        assert time.monotonic() < deadline, f"no nightly run started; worker output: {stack.log}"
        time.sleep(1)
    [run] = running  # ENQUEUE: never both
    [held] = [i for i in ids if i != run]
    states = set()
    for _ in range(10):  # the limit's slot wait is 2 s here: a few rounds of being held back
        states.add((stack.flow_run(held).get("state") or {}).get("name"))
        time.sleep(1)
    still_running = _state(stack.flow_run(run)) == "RUNNING"
    stack.post(f"/flow_runs/{held}/set_state", {"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True})
    assert still_running, "the first nightly run ended before its twin was seen waiting: nothing was checked"
    return Nightly(run, held, states)


def test_nightly_schedule_and_its_next_run(stack):
    nightly = stack.deployment("nightly-alignment")
    [schedule] = nightly["schedules"]
    assert schedule["active"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert nightly["parameters"]["overrides"][-1] == f"registry.model_name={MODEL}"  # serve's defaults

    now = dt.datetime.now(dt.UTC)
    expected = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if expected <= now:
        expected += dt.timedelta(days=1)
    query = {"deployments": {"id": {"any_": [nightly["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}
    deadline = time.monotonic() + 60  # the scheduler service fills in a new deployment's runs within seconds
    while True:
        scheduled = [r for r in stack.post("/flow_runs/filter", query) if r["auto_scheduled"]]
        if scheduled or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert scheduled, "the scheduler created no run for nightly-alignment"
    first = dt.datetime.fromisoformat(scheduled[0]["expected_start_time"].replace("Z", "+00:00"))
    assert first == expected
    assert scheduled[0]["state"]["type"] == "SCHEDULED"


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _state(run: dict) -> str | None:
    """A run's state type; None for a run just created, whose state the API has not set yet."""
    return (run.get("state") or {}).get("type")


def _window(run: dict) -> tuple[dt.datetime, dt.datetime]:
    """When a flow or task run was Running: start_time to end_time."""
    return _time(run["start_time"]), _time(run["end_time"])


def _browser(user_data: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1100", f"--user-data-dir={user_data}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # nothing is downloaded
    driver.set_page_load_timeout(60)
    return driver


def _wait_for_data(stack, run_id: str, timeout: float = RUN_TIMEOUT) -> None:
    """Until the run's dataset is generated and validated, so a second run reuses it instead of racing it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        validated = [t for t in stack.task_runs(run_id, "validate") if _state(t) == "COMPLETED"]
        if validated or _state(stack.flow_run(run_id)) in TERMINAL:
            return
        time.sleep(2)
    pytest.fail(f"nightly run {run_id} never validated its data; worker output: {stack.log}")


def _submit(driver, stack, deployment_id: str, before: set[str], shots: Path) -> list[dict]:
    """Click Submit until the run exists, at most three times, with a screenshot of each try that made nothing.

    Seen twice here with a flow run training on the same two cores: the UI showed "Oops. Something went
    wrong." and created no run (it does not retry; this module's own API calls retry SQLite's 503s). A
    user clicks again; so does this."""
    from selenium.webdriver.common.by import By

    query = {"deployments": {"id": {"any_": [deployment_id]}}}
    for attempt in range(3):
        driver.find_element(By.XPATH, "//button[normalize-space(.)='Submit']").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if new := [r for r in stack.post("/flow_runs/filter", query) if r["id"] not in before]:
                return new
            time.sleep(1)
        driver.save_screenshot(str(shots / f"submit-{attempt + 1}-created-nothing.png"))
        print(f"Submit created no flow run (try {attempt + 1}); clicking it again")
    pytest.fail("Submit created no flow run after three clicks (screenshots: submit-*.png)")


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install -y chromium chromium-driver (.ci/run does)",
)
def test_custom_run_from_the_ui_registers_an_orpo_model(stack, nightly, tmp_path):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from alignflow.conf.loader import DEFAULT_PROFILE
    from alignflow.flows.deployments import METHODS
    from alignflow.tasks.runtime.state import tracking_uri

    # A team's profile outside the package: the embedded default under its own name, typed into the form as a path.
    team = tmp_path / "team-profile.yaml"
    team.write_text(DEFAULT_PROFILE.read_text().replace("name: alignflow-smollm2", "name: team-ui", 1))
    on_demand = stack.deployment("alignment-on-demand")
    before = {r["id"] for r in stack.post("/flow_runs/filter", {"deployments": {"id": {"any_": [on_demand["id"]]}}})}
    method = (
        "//span[contains(@class,'schema-form-property__label') and starts-with(normalize-space(.),'method')]"
        "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]"
    )
    profile = method.replace("'method'", "'profile'")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = _browser(tmp_path / "chromium-profile")
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{stack.ui}/deployments")
        wait.until(EC.element_to_be_clickable((By.XPATH, "//a[normalize-space(.)='alignment-on-demand']"))).click()
        wait.until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Run']"))).click()
        wait.until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Custom run']"))).click()
        # method is optional (empty: the profile's); choosing it switches the field to a select of the schema's methods
        wait.until(EC.element_to_be_clickable((By.XPATH, f"{method}//button[normalize-space(.)='str']"))).click()
        select = Select(wait.until(EC.presence_of_element_located((By.XPATH, f"{method}//select"))))
        assert [o.get_attribute("value") for o in select.options] == list(METHODS)
        select.select_by_value("orpo")
        # profile is free text (a textarea in Prefect 3.8's form): the in-package names are in its description
        field = wait.until(EC.element_to_be_clickable((By.XPATH, f"({profile}//textarea | {profile}//input)")))
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(team))
        driver.save_screenshot(str(shots / "1-custom-run-form.png"))
        # Submit as the first nightly run goes to training, so both want to train at the same time.
        _wait_for_data(stack, nightly.run)
        [run] = _submit(driver, stack, on_demand["id"], before, shots)
        assert run["parameters"]["method"] == "orpo"
        assert run["parameters"]["profile"] == str(team)
        assert run["parameters"]["overrides"] == on_demand["parameters"]["overrides"]  # the small settings
        stack.on_demand_run = run["id"]
        [done] = stack.wait_done([run["id"]])
        assert done["state"]["type"] == "COMPLETED", f"{done['state']}; worker output: {stack.log}"

        driver.get(f"{stack.ui}/runs/flow-run/{run['id']}")
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(.)='Completed']")))
        time.sleep(2)  # let the task-run graph draw
        driver.save_screenshot(str(shots / "2-completed-run.png"))
        driver.find_element(By.XPATH, "//li[contains(@class,'p-tab') and normalize-space(.)='Artifacts']").click()
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[contains(normalize-space(.),'evaluation-summary')]")))
        driver.save_screenshot(str(shots / "3-artifacts.png"))
    except Exception:
        driver.save_screenshot(str(shots / "failure.png"))
        raise
    finally:
        driver.quit()
        keep = REPO / ".alignflow" / "screenshots" / "browser-custom-run"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(shots, keep)
        print(f"screenshots: {shots} (copied to {keep})")

    client = MlflowClient(tracking_uri(small_config()))
    versions = [
        v for v in client.search_model_versions(f"name='{MODEL}'") if v.tags.get("prefect_flow_run_id") == run["id"]
    ]
    assert len(versions) == 1, "the run registered no model version"
    assert versions[0].tags["method"] == "orpo"
    # The profile that ran is the team's: its name, its source and the hash of its text in the lineage.
    assert versions[0].tags["profile"] == str(team)
    assert versions[0].tags["profile_sha256"] == hashlib.sha256(team.read_bytes()).hexdigest()
    mlflow_run = client.get_run(versions[0].run_id)
    assert mlflow_run.data.params["training.method"] == "orpo" and mlflow_run.data.params["name"] == "team-ui"
    assert mlflow_run.info.run_name.startswith("team-ui-")
    assert str(team) in stack.artifacts(run["id"])["profile"]["data"]


def test_a_second_nightly_run_waits_and_no_two_trainings_overlap(stack, nightly):
    # The deployment's limit (1, ENQUEUE) held the second run back while the first ran.
    assert "AwaitingConcurrencySlot" in nightly.held_states, nightly.held_states
    assert "Running" not in nightly.held_states, nightly.held_states
    [run, held] = stack.wait_done([nightly.run, nightly.held])
    assert run["state"]["type"] == "COMPLETED", f"worker output: {stack.log}"
    assert held["state"]["type"] == "CANCELLED" and held["run_count"] == 0  # it never ran

    windows = []
    for run_id in [nightly.run, *([stack.on_demand_run] if stack.on_demand_run else [])]:
        [train] = stack.task_runs(run_id, "train")
        assert train["state"]["type"] == "COMPLETED"
        windows.append((*_window(train), run_id))
        waited = (windows[-1][0] - _time(train["created"])).total_seconds()
        print(
            f"train of {run_id}: {windows[-1][0]:%H:%M:%S}-{windows[-1][1]:%H:%M:%S}, {waited:.0f}s after it was created"
        )
    windows.sort()
    for (_, end, first), (start, _, second) in zip(windows, windows[1:]):
        assert end <= start, f"training of {first} ({end}) overlaps training of {second} (from {start})"

    # Every run's page has the validation table, the training curves and the evaluation summary with links.
    artifacts = stack.artifacts(nightly.run)
    assert {"validation-report", "training-curves", "evaluation-summary"} <= set(artifacts)
    assert artifacts["validation-report"]["type"] == "table"
    assert "data:image/png;base64," in artifacts["training-curves"]["data"]
    summary = artifacts["evaluation-summary"]["data"]
    assert f"{stack.mlflow_ui}/#/experiments/" in summary and f"{stack.mlflow_ui}/#/models/{MODEL}/versions/" in summary
