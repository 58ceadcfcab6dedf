"""Another base model's champion (issue 30, item 6): the registered model's name follows the base model by
default, and a run whose champion was trained from another base stops with exit 2, naming both.

The champions are real model versions on a real MLflow SQLite store (one per module: creating a store takes
seconds), carrying the `base_model` lineage tag registration writes and the `champion` alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignflow.conf.base import BUILTIN_SMOLLM2, BUILTIN_TINY_MODEL
from alignflow.conf.evaluation import default_model_name
from alignflow.conf.loader import load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.tasks.registry import base_guard as guard

REPO = Path(__file__).resolve().parents[2]
TINY_NAME = default_model_name(BUILTIN_TINY_MODEL)  # the registered model a tiny-model profile gets by default


@pytest.mark.parametrize(
    ("base", "name"),
    [
        (BUILTIN_SMOLLM2, "alignflow-smollm2-135m-instruct"),
        (BUILTIN_TINY_MODEL, "alignflow-tiny-llama"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "alignflow-smollm2-360m-instruct"),
        ("/data/models/base/", "alignflow-base"),
        ("./checkpoints/Llama 3.1 8B (sft)", "alignflow-llama-3.1-8b-sft"),
        ("s3://bucket/models/qwen2.5-0.5b/", "alignflow-qwen2.5-0.5b"),
        ("/models/alignflow-support-v2", "alignflow-support-v2"),  # already named after its registered model
        ("/", "alignflow-model"),
    ],
)
def test_the_default_name_is_the_base_models(base, name):
    assert default_model_name(base) == name


def test_a_profile_that_names_no_model_gets_its_base_models_name():
    assert load_config().registry.model_name == "alignflow-smollm2-135m-instruct"  # the embedded default
    assert PipelineConfig().registry.model_name == "alignflow-smollm2-135m-instruct"
    other = load_config(None, ["training.model_name_or_path=HuggingFaceTB/SmolLM2-360M-Instruct"])
    assert other.registry.model_name == "alignflow-smollm2-360m-instruct"
    # A name the profile sets is kept, whatever the base model; and a resolved config reads back the same.
    named = load_config(None, [f"training.model_name_or_path={BUILTIN_TINY_MODEL}", "registry.model_name=team-a"])
    assert named.registry.model_name == "team-a"
    assert load_config(REPO / "conf" / "cluster.yaml").registry.model_name == "alignflow-cluster"
    assert PipelineConfig.model_validate(other.model_dump()).registry.model_name == other.registry.model_name


def test_one_base_model_named_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert guard.same_base(BUILTIN_TINY_MODEL, BUILTIN_TINY_MODEL)
    assert guard.same_base("s3://bucket/base/", "s3://bucket/base")
    assert guard.same_base("models/base", str(tmp_path / "models" / "base"))
    assert not guard.same_base(BUILTIN_SMOLLM2, BUILTIN_TINY_MODEL)
    assert not guard.same_base("/data/a/base", "/data/b/base")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A state directory whose MLflow store holds: the tiny model's default name with a SmolLM2 champion, a
    champion of the same base, one registered without lineage, and a model with no champion."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("home")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for name, base, champion in (
        (TINY_NAME, BUILTIN_SMOLLM2, True),
        ("same-base", BUILTIN_TINY_MODEL, True),
        ("no-lineage", None, True),
        ("no-champion", BUILTIN_SMOLLM2, False),
    ):
        client.create_registered_model(name)
        client.create_model_version(name, str(root), tags={"method": "dpo"})  # v1, an earlier round
        tags = {guard.BASE_MODEL_TAG: base} if base else {}
        client.create_model_version(name, str(root), tags=tags)  # v2
        if champion:
            client.set_registered_model_alias(name, "champion", "2")
    return root


def _config(home: Path, *overrides: str) -> PipelineConfig:
    return load_config(None, [f"runtime.home={home}", f"training.model_name_or_path={BUILTIN_TINY_MODEL}", *overrides])


def test_the_champions_base_is_read_from_its_lineage_tag(home):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert guard.champion_base(uri, TINY_NAME) == guard.ChampionBase("2", BUILTIN_SMOLLM2)
    assert guard.champion_base(uri, "no-lineage").base_model is None
    for name in ("no-champion", "no-such-model"):
        assert guard.champion_base(uri, name) is None, name
    # A state directory without a store has no champion, and none is created to say so.
    assert guard.champion_base(f"sqlite:///{home / 'none' / 'mlflow.db'}", TINY_NAME) is None
    assert not (home / "none").exists()


def test_a_champion_of_another_base_is_named_with_both_bases(home):
    problem = guard.foreign_champion(_config(home))
    assert problem and f"{TINY_NAME} v2" in problem
    assert f"trained from base model {BUILTIN_SMOLLM2}" in problem
    assert f"training.model_name_or_path is {BUILTIN_TINY_MODEL}" in problem
    assert "start from it" in problem and "be judged against it" in problem
    assert "set another registry.model_name" in problem  # the default name is the one taken
    named = guard.foreign_champion(
        _config(home, "training.model_name_or_path=./tiny", f"registry.model_name={TINY_NAME}")
    )
    assert named and "registry.model_name=alignflow-tiny, the default" in named
    # Starting from the base model, the run is still judged against the champion: the same guard.
    judged = guard.foreign_champion(
        _config(
            home, "training.start_from=base", "generation.generators=[{model: builtin:tiny-llama, num_generations: 2}]"
        )
    )
    assert judged and "this run would be judged against it" in judged
    with pytest.raises(guard.ForeignChampion, match=BUILTIN_SMOLLM2):
        guard.check_champion_base(_config(home))


@pytest.mark.parametrize("name", ["same-base", "no-lineage", "no-champion"])
def test_nothing_to_object_to(home, name):
    guard.check_champion_base(_config(home, f"registry.model_name={name}"))


def test_alignflow_run_exits_2_naming_both_bases_before_any_compute(home):
    """The issue's acceptance: with a champion of another base model, a run exits 2 naming both (how fast:
    bench/champion_guard.py, not a timed test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    before = sorted(p.name for p in home.iterdir())
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "alignflow"),
            "run",
            "--home",
            str(home),
            f"training.model_name_or_path={BUILTIN_TINY_MODEL}",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = " ".join((done.stdout + done.stderr).split())  # rich wraps the message at the terminal's width
    assert done.returncode == 2, out
    assert BUILTIN_SMOLLM2 in out and BUILTIN_TINY_MODEL in out and "registry.model_name" in out
    assert sorted(p.name for p in home.iterdir()) == before  # nothing started: no prefect/, hf/, ray/
