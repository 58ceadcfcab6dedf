"""Wall time of the whole pipeline on the embedded default, per stage, cold and warm.

    .venv/bin/python bench/pipeline_wall.py [key.path=value ...]

Cold: a fresh state directory (the base model is converted, the data generated). Warm: the same
state directory again (a second round: with the champion generating, new data when the first was promoted). Writes
bench/results/pipeline_wall.json and prints a table. Target (issue 2): cold under 5 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignflow.conf.loader import load_config  # noqa: E402
from alignflow.tasks.runtime.state import configure_environment  # noqa: E402


def main(overrides: list[str]) -> None:
    home = Path(tempfile.mkdtemp(prefix="alignflow-bench-"))
    config = load_config(ROOT / "conf" / "pipeline.yaml", [f"runtime.home={home}", *overrides])
    configure_environment(config)
    from alignflow.flows.alignment import alignment

    rows = []
    for label in ("cold", "warm"):
        started = time.perf_counter()
        result = alignment(config)
        wall = time.perf_counter() - started
        rows.append(
            {
                "run": label,
                "wall_s": round(wall, 1),
                **result.seconds,
                "promoted": result.promoted,
                "win_rate": [result.win_rate, result.win_rate_low, result.win_rate_high],
            }
        )
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "config": "conf/pipeline.yaml " + " ".join(overrides),
        "runs": rows,
    }
    target = ROOT / "bench" / "results" / "pipeline_wall.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    stages = ["base_model", "champion", "data", "train", "evaluate", "register"]
    print("| run | wall s | " + " | ".join(stages) + " |")
    print("|---" * (len(stages) + 2) + "|")
    for r in rows:
        print(f"| {r['run']} | {r['wall_s']} | " + " | ".join(str(r.get(s, "-")) for s in stages) + " |")
    print(f"written to {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
