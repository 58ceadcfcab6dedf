"""A Ray node lost mid-training (production-stack test: pytest -m stack): the run resumes or goes on elastically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.stack
@pytest.mark.parametrize("case", ["replacement", "elastic"])
def test_a_lost_node_costs_at_most_a_checkpoint_interval(case, tmp_path):
    # bench/node_failure.py: its own 2-node Ray cluster, the second node SIGKILLed mid-run (a few minutes).
    out = tmp_path / "stack.json"
    args = ["--runs", "1", "--cases", case, "--max-steps", "16", "--save-steps", "2", "--kill-after", "7"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "node_failure.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["node_failure"][case]
    run = figures["runs"][0]
    assert figures["n"] == 1, run
    assert run["steps"] == 16  # the planned steps, after a restart from a checkpoint
    assert run["resumed_from_step"] > 0
    assert run["workers_at_end"] == (1 if case == "elastic" else 2)
    # At most the checkpoint interval, plus the steps finished while the killer's poll noticed step 7.
    assert 0 <= run["steps_redone"] <= 2 + 2
