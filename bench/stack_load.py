"""Load on the stack (issue 14): many alignment deployment runs triggered at once -> stack.json `load`.

    .venv/bin/python bench/stack_load.py [--runs 20] [--nightly 4] [--pool-limit 4] [--promotions 4]

Brings the whole stack up in a fresh state directory (`alignflow stack up`: Postgres, S3, MLflow and Prefect
with auth, a Ray head and a worker node, the deployments and a process worker) on free ports, then:

1. one alignment-on-demand run primes the data: the others are triggered when its `validate` task is done,
   so that they hit the cached dataset (concurrent first runs would each generate it);
2. the other runs - 1 are triggered at once through the API (`--nightly` of them on nightly-alignment, which
   queues them one at a time; the rest on alignment-on-demand) with small training (the stack profile,
   two Ray workers on the two nodes, checkpoints in S3, `--max-steps`);
3. as soon as `--promotions` versions are registered, that many promote-model runs are triggered at once,
   then one rollback-model run: the champion's history is written while the runs go on.

The work pool's concurrency limit (`--pool-limit`, flow runs at once) sizes the load to the machine, as an
operator would: every run on 2 cores at once would each import torch and TRL side by side.

Figures: runs, completed, failed (with their state message), overlapping_trainings (pairs of `train` task
runs whose Running windows overlap: the `alignflow-train` limit is 1), overlapping_champion_changes (the same
for `champion-change` task runs of the alignment, promote and rollback runs: the `alignflow-promotion` limit
is 1), seconds (first trigger to last end),
runs_per_minute, the champion history check (events numbered without a gap, each one's `previous` the
champion before it, the newest naming the alias) and database errors (Postgres' log and the servers' logs
searched for errors). Merged into bench/results/stack.json under `load`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignflow.flows.ops.processes import free_ports  # noqa: E402
from alignflow.flows.ops.serve import WORK_POOL  # noqa: E402
from alignflow.flows.ops.stack import stack_dir, stack_down, stack_up  # noqa: E402
from alignflow.flows.ops.stack_services import Ports, s3_client  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stack.json"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
MODEL = "alignflow-stack"  # conf/stack.yaml's registry.model_name
# What a database error looks like in Postgres' log or in the servers' (psycopg2: MLflow; asyncpg: Prefect).
DB_ERROR = re.compile(
    r"(ERROR:|FATAL:|PANIC:|deadlock detected|psycopg2\.\w*Error|asyncpg\.\w*Error|sqlalchemy\.exc\.\w+"
    r"|IntegrityError|OperationalError|could not serialize)"
)
PG_DATABASE = re.compile(r"^\S+ \S+ UTC \[\d+\] (\w+) (?:ERROR|FATAL|PANIC):")  # log_line_prefix '%m [%p] %d '


class Api:
    """Prefect's REST API with the stack's basic auth."""

    def __init__(self, url: str, auth: str) -> None:
        self.url = url
        self.headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}

    def call(self, method: str, path: str, body: dict | None = None):
        for attempt in range(5):
            try:
                answer = requests.request(method, self.url + path, json=body, headers=self.headers, timeout=120)
            except requests.ConnectionError:
                if attempt == 4:
                    raise
                time.sleep(2)
                continue
            answer.raise_for_status()
            return answer.json() if answer.content else None
        raise RuntimeError("unreachable")

    def deployment(self, name: str) -> dict:
        [found] = [d for d in self.call("POST", "/deployments/filter", {}) if d["name"] == name]
        return found

    def trigger(self, deployment: dict, parameters: dict) -> str:
        return self.call("POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})["id"]

    def run(self, run_id: str) -> dict:
        return self.call("GET", f"/flow_runs/{run_id}")

    def task_runs(self, run_ids: list[str]) -> list[dict]:
        found, offset = [], 0
        while page := self.call(
            "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}, "offset": offset, "limit": 200}
        ):
            found += page
            offset += len(page)
        return found


def state(run: dict) -> str | None:
    return (run.get("state") or {}).get("type")


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def wait_until(check, what: str, timeout: float, every: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def overlapping(task_runs: list[dict]) -> list[tuple[str, str]]:
    """Pairs of task runs (by flow run) whose Running windows overlap."""
    windows = sorted((when(t["start_time"]), when(t["end_time"]), t["flow_run_id"]) for t in task_runs if t["end_time"])
    return [(a[2], b[2]) for i, a in enumerate(windows) for b in windows[i + 1 :] if b[0] < a[1]]


def history_check(tracking_uri: str) -> dict:
    """The champion history of MODEL: numbered without a gap, each event's `previous` the version the event
    before it made champion (a promotion's or a rollback's `version`), the newest naming the alias."""
    from alignflow.tasks.registry.promotion import CHAMPION, history
    from alignflow.tasks.registry.tracking import mlflow_client

    events = history(tracking_uri, MODEL)
    seqs = [int(e["seq"]) for e in events]
    breaks = [] if seqs == list(range(1, len(seqs) + 1)) else [f"sequence numbers {seqs}"]
    for before, event in zip([None, *events], events):
        expected = str(before["version"]) if before else None
        if (str(event["previous"]) if event.get("previous") is not None else None) != expected:
            breaks.append(f"event {event['seq']}: previous {event.get('previous')!r}, champion before it {expected!r}")
    alias = mlflow_client(tracking_uri).get_registered_model(MODEL).aliases.get(CHAMPION)
    if events and str(alias) != str(events[-1]["version"]):
        breaks.append(f"alias {CHAMPION}={alias}, history's newest {events[-1]['version']}")
    return {"events": len(events), "actions": [e.get("action") for e in events], "champion": alias, "breaks": breaks}


def where_things_are(env: dict[str, str]) -> dict:
    """Where the runs left what they made: checkpoint objects in the S3 store, model versions in MLflow."""
    from alignflow.tasks.registry.tracking import mlflow_client

    s3 = s3_client(env)
    keys = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="alignflow"):
        keys += len(page.get("Contents") or [])
    artifacts = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow"):
        artifacts += len(page.get("Contents") or [])
    versions = mlflow_client(env["MLFLOW_TRACKING_URI"]).search_model_versions(f"name='{MODEL}'")
    return {
        "s3_objects_alignflow_bucket": keys,
        "s3_objects_mlflow_bucket": artifacts,
        "model_versions": len(versions),
        "a_version_source": versions[0].source if versions else None,
    }


def database_errors(root: Path) -> dict:
    """Errors in Postgres' log (each line names its database) and in the servers' logs, counted by where."""
    errors, where = [], {}
    for log in sorted((root / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not DB_ERROR.search(line):
                continue
            found = PG_DATABASE.search(line) if log.name == "postgres.log" else None
            key = f"postgres:{found.group(1)}" if found else log.name
            where[key] = where.get(key, 0) + 1
            errors.append(f"{log.name}: {line.strip()[:300]}")
    return {"errors": len(errors), "by_database": where, "first_errors": errors[:20]}


def promote_when_registered(api: Api, tracking_uri: str, count: int, runs: list[str], stop: threading.Event) -> None:
    """Once `count` versions exist, `count` promote-model runs at once, then one rollback-model run."""
    from alignflow.tasks.registry.tracking import mlflow_client

    client = mlflow_client(tracking_uri)
    while not stop.is_set():
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
        except Exception:  # noqa: BLE001 (no model registered yet)
            versions = []
        if len(versions) >= count:
            promote = api.deployment("promote-model")
            for version in versions[:count]:
                params = {"name": MODEL, "version": version, "reason": f"load test: version {version}"}
                runs.append(api.trigger(promote, params))
            runs.append(api.trigger(api.deployment("rollback-model"), {"name": MODEL, "reason": "load test"}))
            return
        stop.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="alignment runs in all (the priming run included)")
    parser.add_argument("--nightly", type=int, default=4, help="of them on nightly-alignment (one at a time)")
    parser.add_argument("--pool-limit", type=int, default=4, help="flow runs at once on the work pool")
    parser.add_argument("--promotions", type=int, default=4, help="promote-model runs at once, then a rollback")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5400)
    parser.add_argument("--keep", action="store_true", help="leave the stack's folder (its logs) in /tmp")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="afload-", dir="/tmp"))
    home.chmod(0o755)
    ports = Ports(*free_ports(5))
    started = time.monotonic()
    env = stack_up(home, ports)
    up_s = time.monotonic() - started
    os.environ.update(env)
    api = Api(env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"])
    try:
        api.call("PATCH", f"/work_pools/{WORK_POOL}", {"concurrency_limit": args.pool_limit})
        on_demand, nightly = api.deployment("alignment-on-demand"), api.deployment("nightly-alignment")
        small = [f"training.max_steps={args.max_steps}", "training.save_steps=2", "evaluation.samples_per_prompt=1"]

        def params(deployment: dict) -> dict:  # the deployment's own overrides (the stack's ports) first
            return {"overrides": [*(deployment["parameters"].get("overrides") or []), *small]}

        t0 = time.monotonic()
        first_at = datetime.now().astimezone()
        alignment = [api.trigger(on_demand, params(on_demand))]
        print(f"stack up in {up_s:.0f} s; priming run {alignment[0]}", flush=True)
        wait_until(
            lambda: (
                any(t["name"].startswith("validate") and state(t) == "COMPLETED" for t in api.task_runs(alignment))
                or state(api.run(alignment[0])) in TERMINAL
            ),
            "the priming run's validate task",
            args.timeout,
        )
        primed_s = time.monotonic() - t0
        rest = [nightly] * args.nightly + [on_demand] * (args.runs - 1 - args.nightly)
        alignment += [api.trigger(d, params(d)) for d in rest]
        print(f"data ready after {primed_s:.0f} s; {len(rest)} runs triggered", flush=True)

        registry_runs: list[str] = []
        stop = threading.Event()
        promoter = threading.Thread(
            target=promote_when_registered,
            args=(api, env["MLFLOW_TRACKING_URI"], args.promotions, registry_runs, stop),
            daemon=True,
        )
        promoter.start()

        def all_done() -> list[dict] | None:
            runs = [api.run(i) for i in alignment]
            done = sum(state(r) in TERMINAL for r in runs)
            print(f"  {time.monotonic() - t0:6.0f} s: {done}/{len(runs)} ended", flush=True)
            return runs if done == len(runs) else None

        runs = wait_until(all_done, "every alignment run", args.timeout, every=15)
        seconds = time.monotonic() - t0
        stop.set()
        promoter.join(timeout=10)

        def registry_done() -> list[dict] | None:
            """The promote/rollback runs once all have ended ([{}] when none were triggered: nothing to wait on)."""
            if not registry_runs:
                return [{}]
            found = [api.run(i) for i in registry_runs]
            return found if all(state(r) in TERMINAL for r in found) else None

        registry = wait_until(registry_done, "the promote and rollback runs", 600)
        task_runs = api.task_runs(alignment + registry_runs)
        trains = [t for t in task_runs if t["name"].startswith("train-")]
        changes = [t for t in task_runs if t["name"].startswith("champion-change-")]
        failed = [
            {"name": r["name"], "state": state(r), "message": (r["state"].get("message") or "")[:300]}
            for r in runs
            if state(r) != "COMPLETED"
        ]
        load = {
            "measured_at": first_at.isoformat(timespec="seconds"),
            "runs": len(runs),
            "deployments": {"alignment-on-demand": len(runs) - args.nightly, "nightly-alignment": args.nightly},
            "completed": sum(state(r) == "COMPLETED" for r in runs),
            "failed": failed,
            "overlapping_trainings": len(overlapping(trains)),
            "trainings": len(trains),
            "overlapping_champion_changes": len(overlapping(changes)),
            "champion_changes": len(changes),
            "seconds": round(seconds, 1),
            "runs_per_minute": round(len(runs) / seconds * 60, 2),
            "priming_run_data_ready_s": round(primed_s, 1),
            "pool_concurrency_limit": args.pool_limit,
            "training": {"max_steps": args.max_steps, "workers": 2, "nodes": 2, "checkpoints": "s3://alignflow"},
            "registry_runs": {
                "promote_model": args.promotions,
                "rollback_model": 1,
                "completed": sum(state(r) == "COMPLETED" for r in registry if r),
            },
            "champion_history": history_check(env["MLFLOW_TRACKING_URI"]),
            "stored": where_things_are(env),
            "database_errors": database_errors(stack_dir(home)),
            "stack_up_s": round(up_s, 1),
            "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        }
    finally:
        stack_down(home)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    current = json.loads(args.out.read_text()) if args.out.exists() else {}
    current["load"] = load
    (current.get("not_measured") or {}).pop("load", None)
    if current.get("not_measured") == {}:
        current.pop("not_measured")
    args.out.write_text(json.dumps(current, indent=2) + "\n")
    print(json.dumps(load, indent=2))


if __name__ == "__main__":
    main()
