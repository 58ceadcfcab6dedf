"""Node failure during training (issue 14): a Ray node is lost mid-run; how many steps are redone and how long
until training goes on, with a replacement node (fixed num_workers) and without one (elastic min_workers).

    .venv/bin/python bench/node_failure.py [--runs 2] [--cases replacement,elastic] [--max-steps 24] [--s3]

A 2-node Ray cluster of its own on 127.0.0.1 (a head and a second node, one CPU each, free ports, a temporary
folder; flows/ops/stack_services.py's node arguments), a small DPO run through alignflow's own driver
(`train_model`, the tiny model, two workers: one per node) with a checkpoint every `--save-steps` steps.
After step `--kill-after` the second node is killed outright (SIGKILL to `ray start` and every process below
it: the raylet, its agents, the Ray Train worker), as a lost machine is. Then:

- replacement: fixed `num_workers=2`; a new node is started at once; Ray Train restarts the worker group
  when the new node has joined;
- elastic: `min_workers=1`; no new node; Ray Train restarts on the one CPU left (the head's).

Figures per run, from the MLflow metrics the workers log at every step (their timestamps):
`steps_redone` = the last step logged before the kill minus the step training resumed from;
`recovery_s` = seconds from the kill to the first step logged after the restart. Checkpoints are on local
file storage in the temporary folder (both nodes are on this machine, so they see it, as they see the model
and data paths); with `--s3` they are in an S3 store of its own (SeaweedFS, as on the stack) and the workers
read the model and data from there. Results merge into bench/results/stack.json under `node_failure`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignflow.conf.loader import load_config  # noqa: E402
from alignflow.flows.ops.processes import HOST, alive, descendants, free_ports, spawn, terminate, wait_for  # noqa: E402
from alignflow.flows.ops.stack_services import NODE_ENV, Ports, ray_node_args, ray_node_count  # noqa: E402
from alignflow.tasks.runtime.state import Ref, configure_environment, sha256_file  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stack.json"
COORDINATOR_TICK_S = 20  # ray.data's AutoscalingCoordinator refreshes its view of the nodes this often


def small_overrides(home: Path, args: argparse.Namespace) -> list[str]:
    """tests/conftest.py's small tiny model, and a run long enough for the kill to land mid-way."""
    return [
        f"runtime.home={home}",
        "training.tiny_model.vocab_size=512",
        "training.tiny_model.hidden_size=32",
        "training.tiny_model.intermediate_size=64",
        "training.tiny_model.warmup_steps=40",
        "training.per_device_train_batch_size=2",
        "training.num_train_epochs=100",
        f"training.max_steps={args.max_steps}",
        f"training.save_steps={args.save_steps}",
        "training.logging_steps=1",
        "training.max_failures=3",
        "training.scaling.num_workers=2",
    ]


class Cluster:
    """A Ray head and second nodes on this machine, each a `ray start --block` recorded under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.ports = Ports(ray=free_ports(1)[0])
        self.address = f"{HOST}:{self.ports.ray}"
        self.env = {**os.environ, **NODE_ENV, "RAY_ADDRESS": self.address}
        self.count = 0

    def _args(self, name: str, head: bool) -> list[str]:
        # A temp dir per node: a replacement must not meet the killed node's sockets.
        args = ray_node_args(self.root, self.ports, head=head)
        return [a if not a.startswith("--temp-dir=") else f"--temp-dir={self.root / 'ray' / name}" for a in args]

    def start_head(self) -> dict:
        record = spawn("ray-head", self._args("h", head=True), {**self.env, "HOME": str(self.root)}, self.root)
        wait_for(lambda: ray_node_count(self.address) >= 1, "the Ray head", record, 180)
        return record

    def start_node(self, known: set[str]) -> dict:
        """A second node; returns once the driver's Ray sees a node id not in `known` alive."""
        import ray

        for attempt in range(3):  # a node may miss its start-up deadline on a loaded machine: start another
            self.count += 1
            name = f"node{self.count}"
            record = spawn(name, self._args(name, head=False), {**self.env, "HOME": str(self.root)}, self.root)
            try:
                wait_for(lambda: bool(alive_nodes(ray) - known), f"the Ray node {name}", record, 180)
                return record
            except (RuntimeError, TimeoutError):
                terminate(record, grace=5)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def alive_nodes(ray) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def kill_node(record: dict) -> None:
    """SIGKILL the node's `ray start` and everything below it, all at once: a machine lost, not a shutdown."""
    for pid in [record["pid"], *descendants(record["pid"])]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_step(client, run_id: str, step: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
        if steps and max(steps) >= step:
            return max(steps)
        time.sleep(0.2)
    raise TimeoutError(f"training did not reach step {step} in {timeout:.0f}s")


def one_run(case: str, cluster: Cluster, cfg, model: str, data: Ref, args: argparse.Namespace) -> dict:
    import ray
    from mlflow import MlflowClient

    from alignflow.tasks.registry.tracking import start_run
    from alignflow.tasks.runtime.state import tracking_uri
    from alignflow.tasks.training.driver import train_model
    from alignflow.tasks.training.job import TrainJob

    training = cfg.training
    if case == "elastic":
        training = training.model_copy(
            update={"scaling": training.scaling.model_copy(update={"min_workers": 1})}, deep=True
        )
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    run_id = start_run(uri, "node-failure", f"{case}-{uuid.uuid4().hex[:6]}", {}, {})
    seen: dict = {}

    def kill_then_maybe_replace() -> None:
        try:
            seen["step_at_kill_decision"] = wait_for_step(client, run_id, args.kill_after, 600)
            known = alive_nodes(ray)
            seen["nodes_before"] = len(known)
            kill_node(cluster.second)
            seen["kill_ts"] = time.time()
            if case == "replacement":
                cluster.second = cluster.start_node(known)
                seen["node_joined_s"] = round(time.time() - seen["kill_ts"], 1)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and cluster.second_id in alive_nodes(ray):
                time.sleep(0.2)
            seen["death_noticed_s"] = round(time.time() - seen["kill_ts"], 1)
        except Exception as exc:  # noqa: BLE001 - reported with the run's figures
            seen["killer_error"] = repr(exc)

    killer = threading.Thread(target=kill_then_maybe_replace, daemon=True)
    started = time.time()
    load_before = os.getloadavg()[0]
    killer.start()
    name = f"nodefail-{case}-{uuid.uuid4().hex[:8]}"
    result = train_model(TrainJob(training, model, data, args.storage, name, uri, run_id, ray_address=cluster.address))
    killer.join(timeout=200)
    history = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.timestamp)
    kill_ts = seen.get("kill_ts")
    figures = {
        "case": case,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "workers_at_end": result.num_workers,
        "wall_s": round(time.time() - started, 1),
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        **{k: v for k, v in seen.items() if k != "kill_ts"},
    }
    if kill_ts is None:
        return figures
    if result.resumed_from_step == 0:  # no restart: the group had started without the killed node
        figures["not_counted"] = "no restart: the run had no worker on the killed node"
        return figures
    # The restart takes seconds: a step logged within 1 s after the kill was finished before it.
    before = [m.step for m in history if m.timestamp / 1000 < kill_ts + 1.0]
    after = [m for m in history if m.timestamp / 1000 >= kill_ts + 1.0 and m.step == result.resumed_from_step + 1]
    figures["last_step_before_kill"] = max(before) if before else 0
    figures["steps_redone"] = figures["last_step_before_kill"] - result.resumed_from_step
    if after:
        figures["recovery_s"] = round(after[0].timestamp / 1000 - kill_ts, 1)
    return figures


def summary(runs: list[dict], settings: dict) -> dict:
    """Median and range over the runs where the kill cost a restart (the lost node held a worker)."""
    done = [r for r in runs if "recovery_s" in r and r["resumed_from_step"] > 0]
    out: dict = {**settings, "n": len(done), "runs": runs}
    if done:
        for key in ("steps_redone", "recovery_s"):
            values = [r[key] for r in done]
            out[key] = round(statistics.median(values), 1)
            out[f"{key}_range"] = [min(values), max(values)]
    return out


def merge(figures: dict, path: Path = RESULTS, label: str | None = None) -> None:
    """Into stack.json under `node_failure` (or `node_failure.<label>`, a variant kept beside the main figures),
    keeping every other key bench/stack.py wrote."""
    current = json.loads(path.read_text()) if path.exists() else {}
    # A run of some cases (or a variant) replaces those and keeps the rest.
    current["node_failure"] = {**(current.get("node_failure") or {}), **({label: figures} if label else figures)}
    not_measured = current.get("not_measured") or {}
    not_measured.pop("node_failure", None)
    current["not_measured"] = not_measured
    path.write_text(json.dumps(current, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per case")
    parser.add_argument("--cases", default="replacement,elastic")
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--save-steps", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=9, help="kill once this step is logged")
    parser.add_argument(
        "--start-timeout", type=float, default=None, help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (Ray: 60)"
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="checkpoints, model and data in an S3 store of its own (SeaweedFS, as on the stack), not on local disk",
    )
    parser.add_argument("--label", help="store under node_failure.<label>: a variant beside the main figures")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (Ray's logs, checkpoints)")
    args = parser.parse_args()

    if args.start_timeout is not None:  # forwarded to Ray Train's controller by start_ray
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(args.start_timeout)
    root = Path(tempfile.mkdtemp(prefix="af-nodefail-"))
    cfg = load_config(None, small_overrides(root / "home", args))
    configure_environment(cfg)
    import pandas as pd

    from alignflow.tasks.generation.prompts import load_prompts
    from alignflow.tasks.runtime.models import resolve_model

    rows = load_prompts(max_prompts=24)
    frame = pd.DataFrame(
        {
            "prompt": [r["prompt"] for r in rows],
            "chosen": [r["reference"] for r in rows],
            "rejected": [" ".join(r["reference"].split()[::-1][:12]) for r in rows],
        }
    )
    data_path = root / "train.parquet"
    frame.to_parquet(data_path, index=False)
    data = Ref(uri=data_path.as_uri(), sha256=sha256_file(data_path))
    model = resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, root / "home" / "models")

    import ray

    from alignflow.tasks.runtime.ray import start_ray

    records = []
    args.storage = str(root / "checkpoints")
    if args.s3:
        records.append(start_s3_store(root))
        args.storage = "s3://alignflow/node-failure"
    cluster = Cluster(root)  # its nodes inherit the S3 endpoint and credentials from os.environ
    head = cluster.start_head()
    start_ray(cluster.address)
    records.append(head)
    results: dict = {}
    try:
        for case in args.cases.split(","):
            runs = []
            for _ in range(args.runs):
                if len(alive_nodes(ray)) < 2:  # the elastic case leaves the head alone
                    known = alive_nodes(ray)
                    cluster.second = cluster.start_node(known)
                    records.append(cluster.second)
                    # Elastic training sizes its group from Ray's autoscaling coordinator, which sees the cluster
                    # once per 20 s tick: started sooner, it would start on the head alone.
                    time.sleep(COORDINATOR_TICK_S + 5)
                cluster.second_id = _node_of(ray, cluster.second)
                figures = one_run(case, cluster, cfg, str(model), data, args)
                records.append(cluster.second)
                print(json.dumps(figures), flush=True)
                runs.append(figures)
            settings = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "bench/node_failure.py " + " ".join(sys.argv[1:]),
                "worker_group_start_timeout_s": float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60)),
                "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
            }
            results[case] = summary(runs, settings)
    finally:
        ray.shutdown()
        for record in reversed(records):
            if alive(record["pid"]):
                terminate(record, grace=5)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures = {
        "cluster": "2 local Ray nodes on 127.0.0.1 (head + second node, 1 CPU each), one Ray Train worker per node",
        "storage": "S3 (SeaweedFS on 127.0.0.1): checkpoints, and the model and data staged there for the workers"
        if args.s3
        else "local file storage (both nodes on this machine); not S3",
        "run": f"DPO, tiny model, {args.max_steps} steps, checkpoint every {args.save_steps}, "
        f"second node SIGKILLed once step {args.kill_after} is logged",
        "figures": "steps_redone: last step logged before the kill minus the step resumed from; recovery_s: "
        "kill to the first step logged after the restart; medians and [min, max] over n runs with a restart",
        "cpus": os.cpu_count(),
        **results,
    }
    print(json.dumps(figures, indent=2))
    if not args.no_write:
        merge(figures, args.out, args.label)


def start_s3_store(root: Path) -> dict:
    """flows/ops/stack_services.py's SeaweedFS on a free port, data under root; its endpoint and a fresh identity
    into os.environ (the driver's S3 clients, and the Ray nodes started after this)."""
    import secrets

    from alignflow.flows.ops.stack_services import start_s3

    port = free_ports(1)[0]
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{HOST}:{port}",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="nodefail",
        AWS_SECRET_ACCESS_KEY=secrets.token_hex(16),
    )
    return start_s3(root, Ports(s3=port), dict(os.environ))


def _node_of(ray, record: dict) -> str:
    """The node id of the second node: the alive node that is not the head (the driver's own node)."""
    head = ray.get_runtime_context().get_node_id()
    others = alive_nodes(ray) - {head}
    if len(others) != 1:
        raise RuntimeError(f"expected one second node, found {len(others)}")
    return next(iter(others))


if __name__ == "__main__":
    main()
