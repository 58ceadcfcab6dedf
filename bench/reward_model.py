"""A reward model of SmolLM2-135M-Instruct trained on the embedded default's pairs: held-out accuracy and wall time.

    .venv/bin/python bench/reward_model.py [--home DIR] [key.path=value ...]

Runs `alignflow reward-model --config conf/pipeline.yaml` (the embedded default: the shipped prompts, generated
and judged offline into pairs, validated and split; the reward model's embedded knobs: LoRA r 16 on SEQ_CLS, one
epoch, 2 CPU workers) on DIR (default: a fresh temporary state directory; a DIR where `make run` already
generated the data reuses it, content-cached). Reads the run back from DIR's MLflow and writes
bench/results/reward_model.json: held-out accuracy with its 95% interval and n, the gate's decision, wall
seconds by stage and in all. Prints them.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="state directory (default: a fresh temporary one)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. reward_model.max_steps=20")
    args = parser.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="alignflow-bench-rm-"))).resolve()
    cmd = [str(ROOT / ".venv" / "bin" / "alignflow"), "reward-model", "--config", str(ROOT / "conf" / "pipeline.yaml")]
    started = time.perf_counter()
    done = subprocess.run([*cmd, "--home", str(home), *args.overrides], cwd=ROOT, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    (home / "reward-model.log").write_text(done.stdout + done.stderr)
    print(done.stdout[-2000:], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"alignflow reward-model exited {done.returncode}: see {home / 'reward-model.log'}")

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.method = 'reward'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    metrics = runs[0].data.metrics
    result = {
        "model": "SmolLM2-135M-Instruct (builtin:smollm2-135m-instruct)",
        "accuracy": metrics["reward/accuracy"],
        "accuracy_ci95": [metrics["reward/accuracy_low"], metrics["reward/accuracy_high"]],
        "n_pairs": int(metrics["reward/n_pairs"]),
        "steps": int(metrics.get("reward/steps", 0)),
        "seconds": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("seconds/")},
        "wall_s": wall,
        "overrides": args.overrides,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    out = ROOT / "bench" / "results" / "reward_model.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    ci = result["accuracy_ci95"]
    print(f"held-out accuracy {result['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], n={result['n_pairs']}; wall {wall}s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
