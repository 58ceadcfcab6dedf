"""Nightly rounds on one state directory: do they compound? Stage times per run, and every champion against the base.

    .venv/bin/python bench/rounds.py [--home DIR] [--rounds N] [key.path=value ...]

Runs `alignflow run --config conf/pipeline.yaml` N times in a row on DIR (default: a fresh temporary state
directory), as `make run` three nights in a row would: each round generates with the champion, trains from it
and is judged against it; every version is also judged against the base model (same prompts, same seeds).
Reads every run of DIR's MLflow back (runs that were there before included, oldest first) and writes
bench/results/rounds.json: per run its wall seconds by stage, the version, the gate's decision with its
interval and n; per champion its win rate against the base with its interval and n. Prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("base_model", "champion", "data", "train", "evaluate", "register")


def run_rounds(home: Path, rounds: int, overrides: list[str]) -> list[float]:
    walls = []
    for n in range(1, rounds + 1):
        print(f"round {n}/{rounds} on {home} ...", flush=True)
        started = time.perf_counter()
        cmd = [str(ROOT / ".venv" / "bin" / "alignflow"), "run", "--config", str(ROOT / "conf" / "pipeline.yaml")]
        done = subprocess.run([*cmd, "--home", str(home), *overrides], cwd=ROOT, capture_output=True, text=True)
        walls.append(round(time.perf_counter() - started, 1))
        (home / f"round-{n}.log").write_text(done.stdout + done.stderr)
        print(done.stdout[-1500:], flush=True)
        if done.returncode != 0:
            raise SystemExit(f"round {n} exited {done.returncode}: see {home / f'round-{n}.log'}")
    return walls


def read_back(home: Path, model: str) -> tuple[list[dict], list[dict]]:
    sys.path.insert(0, str(ROOT))
    from mlflow import MlflowClient

    from alignflow.tasks.registry.trajectory import champions

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = []
    for version in sorted(client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version)):
        run, tags = client.get_run(version.run_id), version.tags
        seconds = {s: run.data.metrics.get(f"seconds/{s}") for s in STAGES}
        runs.append(
            {
                "version": version.version,
                "against": tags.get("gate.against"),
                "outcome": tags.get("gate.outcome"),
                "win_rate": tags.get("gate.win_rate"),
                "ci95": tags.get("gate.win_rate_ci95"),
                "n_prompts": tags.get("gate.n_prompts"),
                "vs_base": tags.get("vs_base.win_rate"),
                "vs_base_ci95": f"[{tags.get('vs_base.low')}, {tags.get('vs_base.high')}]",
                "flow_s": round(sum(v for v in seconds.values() if v), 1),
                **{f"{s}_s": v for s, v in seconds.items()},
            }
        )
    return runs, [c.row() for c in champions(uri, model)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="state directory (default: a fresh one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--model", default=None, help="registered model name (default: the profile's registry.model_name)"
    )
    args, overrides = parser.parse_known_args()
    if args.model is None:  # the name the runs register under: by default the base model's
        from alignflow.conf.loader import load_config

        args.model = load_config(ROOT / "conf" / "pipeline.yaml", overrides, trl_checks=False).registry.model_name
    home = (args.home or Path(tempfile.mkdtemp(prefix="alignflow-rounds-"))).resolve()
    walls = run_rounds(home, args.rounds, overrides) if args.rounds else []
    runs, trajectory = read_back(home, args.model)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "config": "conf/pipeline.yaml " + " ".join(overrides),
        "state": str(home),
        "command_wall_s": walls,
        "runs": runs,
        "champions_vs_base": trajectory,
    }
    target = ROOT / "bench" / "results" / "rounds.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print("| version | flow s | " + " | ".join(STAGES) + " | against | win rate [95% CI] | gate | vs base [95% CI] |")
    print("|---" * (len(STAGES) + 6) + "|")
    for r in runs:
        stages = " | ".join(f"{r[f'{s}_s']:.0f}" if r[f"{s}_s"] is not None else "-" for s in STAGES)
        print(
            f"| {r['version']} | {r['flow_s']:.0f} | {stages} | {r['against']} | {r['win_rate']} {r['ci95']} "
            f"| {r['outcome']} | {r['vs_base']} {r['vs_base_ci95']} |"
        )
    print("\n| round | champion | win rate vs base | 95% CI | n |")
    print("|---|---|---|---|---|")
    for c in trajectory:
        print(
            f"| {c['round']} | v{c['version']} ({c['action']}) | {c['win_rate']} | [{c['low']}, {c['high']}] | {c['n']} |"
        )
    print(f"written to {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
