"""The promotion gate on the embedded default: two `make run`s on a fresh state directory.

Round 1 trains from the base model and is judged against it; round 2 (when round 1 became
champion) trains from the champion on its own generations and is judged against it. Records,
per round, the decision with its evidence: n prompts x samples, the win-rate estimate and its
95% paired-bootstrap interval, the length-controlled estimate, the NLL guard rail and the wall
time, into bench/results/eval_gate.json.

    .venv/bin/python bench/eval_gate.py [--rounds 2] [key.path=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "eval_gate.json"


def _round(home: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "alignflow"),
            "run",
            "--config",
            str(ROOT / "conf" / "pipeline.yaml"),
            *overrides,
        ],
        env={**os.environ, "ALIGNFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise SystemExit(f"alignflow run exited {done.returncode}:\n{done.stderr[-3000:]}")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    from alignflow.conf.loader import load_config

    # The name the run registered under: the profile's registry.model_name, by default the base model's.
    name = load_config(ROOT / "conf" / "pipeline.yaml", overrides, trl_checks=False).registry.model_name
    latest = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    run = client.get_run(latest.run_id)
    m, tags = run.data.metrics, latest.tags
    return {
        "version": latest.version,
        "against": tags["gate.against"],
        "started_from": tags.get("started_from"),
        "outcome": tags["gate.outcome"],
        "reason": tags["gate.reason"],
        "rule": tags["gate.rule"],
        "n_prompts": int(m["eval/win_rate_n_prompts"]),
        "n_pairs": int(m["eval/win_rate_n_pairs"]),
        "win_rate": round(m["eval/win_rate"], 4),
        "ci95": [round(m["eval/win_rate_low"], 4), round(m["eval/win_rate_high"], 4)],
        "length_controlled": round(m["eval/win_rate_lc"], 4),
        "length_controlled_ci95": [round(m["eval/win_rate_lc_low"], 4), round(m["eval/win_rate_lc_high"], 4)],
        "chosen_nll": round(m["eval/chosen_nll"], 4),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="alignflow-eval-gate-"))
    rounds = []
    for _ in range(args.rounds):
        rounds.append(_round(home, args.overrides))
        print(json.dumps(rounds[-1]), file=sys.stderr)
    load = os.getloadavg()[0]
    result = {
        "profile": "conf/pipeline.yaml",
        "overrides": args.overrides,
        "load_avg_1m": round(load, 1),
        "rounds": rounds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
