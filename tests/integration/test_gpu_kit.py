"""The GPU kit: its device commands stay under the device's limits, and the runner's CPU smoke path works.

The GPU machine is lent only now and then, for minutes; what it runs is checked here beforehand: the
command line and the carried bytes by the kit's own size computation (the lock's recorded wheel sizes,
nothing downloaded), the runner by its `--smoke` mode on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "bench" / "gpu" / "kit.py"
RUNNER = ROOT / "bench" / "gpu" / "run.py"
MiB = 2**20


def load_kit():
    spec = importlib.util.spec_from_file_location("gpu_kit", KIT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_kit"] = module
    spec.loader.exec_module(module)
    return module


def test_kit_commands_fit_the_device_limits():
    kit = load_kit()
    wheels = [(w["file"], w["size"]) for w in kit.read_lock()]
    commands = kit.plan(wheels, kit.tree_bytes())
    assert commands and all(not c.problems() for c in commands)
    for command in commands:
        assert len(command.command) < 2000
        assert command.travel_bytes < 64 * MiB
        assert all(not (ROOT / path).exists() or _ignored(path) for path in command.carry)  # carried once, not twice
    assert sorted(n for c in commands for n in c.wheels) == sorted(n for n, _ in wheels)  # every wheel travels
    assert "bench/gpu/run.py" in commands[-1].command and "$OUT" in commands[-1].command


def test_lock_carries_what_the_image_lacks_and_not_ray():
    kit = load_kit()
    carried = {kit.normalize(w["name"]) for w in kit.read_lock()}
    image = kit.read_pins(kit.IMAGE)
    assert {"trl", "datasets", "distilabel", "liger-kernel", "pydantic"} <= carried
    assert carried & set(image) == set(kit.OVERRIDES)  # nothing the image has, but the pinned overrides
    assert "ray" not in carried and "torch" not in carried
    assert all(w["size"] > 0 and w["file"].endswith(".whl") for w in kit.read_lock())


def test_a_kit_too_big_for_one_command_is_split_and_a_wheel_too_big_for_any_is_refused():
    kit = load_kit()
    tree = 1 * MiB
    wheels = [("a.whl", 40 * MiB), ("b.whl", 30 * MiB), ("c.whl", 5 * MiB)]
    commands = kit.plan(wheels, tree)
    assert len(commands) == 2 and all(not c.problems() for c in commands)
    assert "run.py" in commands[-1].command and kit.STAGED in commands[-1].command
    assert "run.py" not in commands[0].command
    assert sorted(n for c in commands for n in c.wheels) == ["a.whl", "b.whl", "c.whl"]
    with pytest.raises(ValueError, match="larger than one command"):
        kit.plan([("ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", 79_321_593)], tree)


def test_mfu_counts_the_lm_head():
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import models  # the runner's FLOPs arithmetic (bench/gpu/models.py)

    qwen15 = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2)  # fmt: skip
    n = models.matmul_weights(qwen15)
    assert 1.54e9 < n < 1.55e9  # Qwen2.5-1.5B: 1.31B in the layers + 0.23B LM head (tied to the embedding)
    assert models.forward_flops(qwen15, 1024) == 2 * n + 4 * 28 * 1536 * 1024


def test_the_kit_installs_into_a_site_packages_folder():
    """datasets hashes map functions with dill, which pickles modules outside a site-packages folder by value:
    with the kit elsewhere, TRL's dataset preparation fails (seen with a --target folder of another name)."""
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import run

    assert run.SITE.name == "site-packages"


def test_runner_smoke_on_cpu(tmp_path):
    """The runner's whole path on CPU with tiny shapes: smoke test, training rows, the generation row."""
    env = {**os.environ, "OUT": str(tmp_path), "ALIGNFLOW_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(RUNNER), "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_smoke_result(json.loads((tmp_path / "train_throughput_smoke.json").read_text()))


def check_smoke_result(result: dict) -> None:
    assert result["smoke_test"]["dpo"]["ok"] and result["smoke_test"]["orpo"]["ok"], result["smoke_test"]
    assert not result["errors"], result["errors"]
    rows = result["rows"]
    for label in ("DPO, TRL defaults", "DPO, alignflow + precomputed reference log-probs"):
        assert rows[label]["tokens"] > 0 and rows[label]["tokens_per_s"] > 0 and rows[label]["timed_steps"] == 1
    assert rows["DPO, TRL defaults"]["activation_checkpointing"] is True  # TRL's own default
    assert rows["DPO, alignflow + precomputed reference log-probs"]["bf16"] is False  # alignflow's CPU settings
    assert rows["DPO, alignflow + precomputed reference log-probs"]["precompute_s"] > 0
    assert rows["DPO, alignflow + LoRA r16 (conf/cluster.yaml as shipped)"]["lora"] is True
    assert result["skipped"]["ORPO, alignflow GPU defaults"].startswith("--smoke: config built")  # every row's config
    generation = next(v for k, v in rows.items() if k.startswith("Generation: distilabel"))
    for side in ("direct transformers generate", "distilabel pipeline"):
        assert generation[side]["responses"] > 0 and generation[side]["tokens"] > 0
    assert "MFU" in result["mfu_formula"] and "no GPU" in result["machine"]
    # issue 27's rows: on CPU the FSDP settings reach TrainingArguments' plugin, generation and evaluation run
    # their CPU side, and the real SmolLM2 row says why it does not train here
    fsdp = next(k for k in rows if "FSDP" in k)
    assert rows[fsdp]["plugin"]["transformer_cls_names_to_wrap"] == "Qwen2DecoderLayer"
    assert result["skipped"][fsdp].startswith("--smoke: FSDP settings reached")
    devices = next(v for k, v in rows.items() if k.startswith("Generation: a GPU actor"))
    assert devices["sides"]["cpu actor"]["tokens"] > 0
    assert (
        devices["sides"]["cpu actor"]["placement"]["device"],
        devices["sides"]["cpu actor"]["placement"]["dtype"],
    ) == ("cpu", "float32")
    evaluation = next(v for k, v in rows.items() if k.startswith("Evaluation on the GPU"))
    assert evaluation["pairs"] == 4 and evaluation["cpu_s"] > 0
    assert any("SmolLM2" in k for k in result["skipped"])


def test_kit_commands_name_every_row_of_the_matrix():
    kit = load_kit()
    printed = kit.describe(kit.plan([(w["file"], w["size"]) for w in kit.read_lock()], kit.tree_bytes()))
    for row in (
        "FSDP full shard",
        "real SmolLM2",
        "a GPU actor's work (bf16) against a CPU actor's",
        "Evaluation on the GPU",
    ):
        assert row in printed
    assert kit.RUN_TIMEOUT_S <= 480 and kit.BUDGET_S < kit.RUN_TIMEOUT_S  # one device call of at most 8 minutes


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
