"""The user's Hugging Face cache is found, and only read (issue 30, item 5).

alignflow points every cache it writes into the state directory, but not HF_HOME: a model already in the
user's ~/.cache/huggingface/hub is found by preflight and loaded offline by transformers, and nothing is
written there. Run in a subprocess with its own HOME, as a user's shell would start `alignflow run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from alignflow.conf.loader import load_config
from alignflow.tasks.runtime.state import configure_environment
config = load_config(None, [f"runtime.home={sys.argv[1]}", "training.model_name_or_path=someone/cached-model"])
configure_environment(config)
from alignflow.tasks.runtime.preflight import parts
check = next(c for key, _, c in parts(config) if key == "training.model_name_or_path")
from transformers import AutoConfig
loaded = AutoConfig.from_pretrained("someone/cached-model")  # offline: from the user's hub cache
import os
print(json.dumps({"preflight": check(), "hidden_size": loaded.hidden_size, "HF_HOME": os.environ.get("HF_HOME")}))
"""


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def test_a_model_in_the_users_hub_cache_is_found_and_only_read(tmp_path):
    user = tmp_path / "user"
    snapshot = user / ".cache" / "huggingface" / "hub" / "models--someone--cached-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": 48, "num_attention_heads": 4})
    )
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    before = _files(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "XDG_", "ALIGNFLOW_"))}
    env["HOME"] = str(user)
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(state)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"preflight": None, "hidden_size": 48, "HF_HOME": None}
    assert _files(user) == before  # read, not written: no lock files, no new revisions
    assert not (state / "hf" / "hub").exists()
