"""How long `alignflow run` takes to stop on another base model's champion (issue 30, item 6: under 5 s).

    .venv/bin/python bench/champion_guard.py [--runs 5]

A state directory whose MLflow SQLite store has a champion trained from SmolLM2 under the tiny model's default
registered-model name; `alignflow run` on the tiny model must exit 2 naming both bases. Prints each run's
wall seconds (process start to exit), the median and the range, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def champion_of_smollm2(home: Path) -> None:
    from mlflow import MlflowClient

    from alignflow.conf.base import BUILTIN_SMOLLM2, BUILTIN_TINY_MODEL
    from alignflow.conf.evaluation import default_model_name
    from alignflow.tasks.registry.base_guard import BASE_MODEL_TAG

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    name = default_model_name(BUILTIN_TINY_MODEL)
    client.create_registered_model(name)
    client.create_model_version(name, str(home), tags={BASE_MODEL_TAG: BUILTIN_SMOLLM2})
    client.set_registered_model_alias(name, "champion", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="alignflow-guard-"))
    champion_of_smollm2(home)
    command = [
        str(Path(sys.executable).parent / "alignflow"),
        "run",
        "--home",
        str(home),
        "training.model_name_or_path=builtin:tiny-llama",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    seconds = []
    for _ in range(args.runs):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if done.returncode != 2:
            raise SystemExit(f"expected exit 2, got {done.returncode}:\n{done.stdout}{done.stderr}")
    print(f"exit 2 in {', '.join(f'{s:.2f}' for s in seconds)} s")
    print(
        f"median {statistics.median(seconds):.2f} s, range {min(seconds):.2f}-{max(seconds):.2f} s, n = {args.runs}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
