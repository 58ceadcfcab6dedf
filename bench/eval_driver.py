"""The evaluate stage on the real-model default, in the flow's process against on Ray workers: the driver's peak
RSS and the wall time (issue 27, item 2).

    .venv/bin/python bench/eval_driver.py [--home .alignflow] [--workers 0 2]

Reads a state directory where `make run` ran (its converted SmolLM2 and its newest validated split), and runs
tasks/evaluation/stage.py `evaluate` with the embedded default's evaluation settings (48 prompts x 2 samples a
side, 48 new tokens, the held-out pairs), SmolLM2 as candidate and base (the work of a first round, no cached
answers), once per `evaluation.workers` value, each in a fresh process: its peak RSS (ru_maxrss, the driver alone:
Ray's workers are not its children) and wall seconds (with workers, from after Ray's start, which the flow's
training has paid by then; its worker processes' start-up is counted). Writes bench/results/eval_driver.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_RUN = """
import json, resource, sys, time
from pathlib import Path
from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.stage import evaluate
from alignflow.tasks.runtime.state import Ref, sha256_tree
model, test, train, workers = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ref = Ref(uri=model.as_uri(), sha256=sha256_tree(model))
if workers:  # in the flow, training has started Ray already: its start-up is not the evaluation's
    from alignflow.tasks.runtime.ray import start_ray
    start_ray(None)
started = time.perf_counter()
result = evaluate(EvaluationConfig(workers=workers), 0.1, ref, ref, test, train, None)
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"workers": workers, "wall_s": round(wall, 1), "driver_peak_rss_mb": round(peak),
                  "ray_tasks": len(result.placements), "pairs": result.held_out.pairs,
                  "prompts": result.head_to_head.prompts, "win_rate": result.head_to_head.win_rate.estimate}))
"""


def newest_split(home: Path) -> Path:
    splits = [
        p.parent for p in home.glob("datasets/*/validation/*/test.parquet") if (p.parent / "train.parquet").exists()
    ]
    if not splits:
        raise SystemExit(f"no validated split under {home}/datasets: run `make run` first (or pass --home)")
    return max(splits, key=lambda p: (p / "test.parquet").stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".alignflow")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    from alignflow.conf.base import BUILTIN_SMOLLM2
    from alignflow.conf.training import TinyModelConfig
    from alignflow.tasks.runtime.models import resolve_model

    home = args.home.resolve()
    model = Path(resolve_model(BUILTIN_SMOLLM2, TinyModelConfig(), home / "models"))
    split = newest_split(home)
    env = {**os.environ, "ALIGNFLOW_HOME": str(home)}
    runs = []
    for workers in args.workers:
        cmd = [sys.executable, "-c", ONE_RUN, str(model), str(split / "test.parquet"), str(split / "train.parquet")]
        done = subprocess.run([*cmd, str(workers)], capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    result = {
        "model": "SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct), float32 on CPU",
        "split": str(split.relative_to(home)),
        "runs": runs,
        "load_average_at_end": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    out = ROOT / "bench" / "results" / "eval_driver.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
