"""The generate stage on the real-model default, as local processes against on Ray actors: wall, generation phase,
the stage process's peak RSS, and whether both give the same candidates (issue 27, item 1).

    .venv/bin/python bench/generation_ray.py [--home .alignflow] [--prompts 48]

Reads a state directory where `make run` ran (its converted SmolLM2) and runs tasks/generation/stage.py
`generate_preferences` with the embedded default's generation section (conf/pipeline.yaml: two generators on the
model, 2 answers each of at most 48 tokens, the offline judge) on the first `--prompts` shipped prompts, once with
`generation.ray: false` (distilabel's local processes) and once with `generation.ray: true` (the default: a Ray
actor per step, the local models' with an equal share of the CPUs), each in a fresh process. With Ray, the timing
starts after Ray is up: in the flow, the first stage to need Ray starts it once for the run. Peak RSS is the stage's
process alone (ru_maxrss: the models load in its children off Ray, in Ray's actors on it). Writes
bench/results/generation_ray.json and prints it.
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
import json, resource, sys, tempfile, time
from pathlib import Path
from alignflow.conf.loader import load_config
from alignflow.tasks.generation.prompts import load_prompts
from alignflow.tasks.generation.rows import read_rows
from alignflow.tasks.generation.stage import generate_preferences
model, prompts, on_ray, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "true", Path(sys.argv[4])
generation = load_config(None, [f"generation.ray={str(on_ray).lower()}"]).generation
if on_ray:  # in the flow, Ray is up by now (or the first stage that needs it starts it once)
    from alignflow.tasks.runtime.ray import start_ray
    start_ray(None)
rows = load_prompts(max_prompts=prompts)
started = time.perf_counter()
_, report = generate_preferences(rows, generation, [model] * len(generation.generators), out, seed=0)
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
candidates = {r["prompt_id"]: list(r["candidates"]) for r in read_rows(out / "candidates.parquet")}
(out / "candidates.json").write_text(json.dumps(candidates, sort_keys=True))
print(json.dumps({"ray": on_ray, "wall_s": round(wall, 1), "generation_phase_s": report.generation_phase_s,
                  "tokens_per_s": report.tokens_per_s, "candidates": report.candidates, "pairs": report.pairs,
                  "stage_process_peak_rss_mb": round(peak), "placements": report.placements}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".alignflow")
    parser.add_argument("--prompts", type=int, default=48)
    args = parser.parse_args()
    from alignflow.conf.base import BUILTIN_SMOLLM2
    from alignflow.conf.training import TinyModelConfig
    from alignflow.tasks.runtime.models import resolve_model

    home = args.home.resolve()
    model = str(resolve_model(BUILTIN_SMOLLM2, TinyModelConfig(), home / "models"))
    env = {**os.environ, "ALIGNFLOW_HOME": str(home)}
    runs, texts = [], []
    for on_ray in ("false", "true"):
        out = home / "bench-generation-ray" / f"ray-{on_ray}"
        subprocess.run(["rm", "-rf", str(out)], check=True)  # a fresh stage: no scored rows to reuse
        cmd = [sys.executable, "-c", ONE_RUN, model, str(args.prompts), on_ray, str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        texts.append((out / "candidates.json").read_text())
        print(runs[-1], flush=True)
    result = {
        "model": "SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct), float32 on CPU",
        "prompts": args.prompts,
        "runs": runs,
        "same_candidates": texts[0] == texts[1],
        "load_average_at_end": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    out = ROOT / "bench" / "results" / "generation_ray.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
