"""Every objective and LoRA runs real TRL steps on the tiny model (through alignflow's recipe; LoRA also on
Ray); the effective config is reported."""

from __future__ import annotations

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import Ref, sha256_file, tracking_uri
from alignflow.tasks.training.driver import train_model
from alignflow.tasks.training.job import TrainJob
from alignflow.tasks.training.recipe import effective_config

OBJECTIVES = {
    "dpo-sigmoid": ["training.method=dpo", "training.loss_type=[sigmoid]"],
    "dpo-ipo": ["training.method=dpo", "training.loss_type=[ipo]"],
    "dpo-hinge": ["training.method=dpo", "training.loss_type=[hinge]"],
    "dpo-robust": ["training.method=dpo", "training.loss_type=[robust]", "training.label_smoothing=0.1"],
    "rpo": ["training.method=dpo", "training.loss_type=[sigmoid,sft]", "training.loss_weights=[1.0,0.5]"],
    "orpo": ["training.method=orpo"],
    "cpo": ["training.method=cpo", "training.loss_type=[sigmoid]"],
    "simpo": ["training.method=simpo", "training.cpo_alpha=0.0"],
    "dpo-lora": ["training.method=dpo", "training.use_peft=true", "training.lora_r=4", "training.lora_alpha=8"],
    "dpo-precomputed-ref": ["training.method=dpo", "training.precompute_ref_log_probs=true"],
}


@pytest.fixture(scope="module")
def train_ref(pairs_frame, tmp_path_factory) -> Ref:
    path = tmp_path_factory.mktemp("objectives") / "train.parquet"
    pairs_frame.head(8).to_parquet(path, index=False)
    return Ref(uri=path.as_uri(), sha256=sha256_file(path))


ON_RAY = (
    "dpo-lora"  # one objective through the Ray worker (LoRA merged there); the comparison test runs sft -> dpo and orpo
)


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n != ON_RAY])
def test_objective_trains_with_the_recipe(name, tiny_model_path, train_ref, tmp_path):
    """The recipe the Ray worker runs (recipe.build_trainer, train, save_final), in this process: the
    objective's TRL config and loss take real steps; Ray's part is the same for every objective."""
    from transformers import AutoModelForCausalLM

    from alignflow.tasks.training import recipe

    cfg = small_config(*OBJECTIVES[name], "training.max_steps=1")
    trainer, tokenizer = recipe.build_trainer(
        cfg.training, str(tiny_model_path), str(train_ref.path), str(tmp_path / "out"), reference_cache=tmp_path / "ref"
    )
    trainer.args.disable_tqdm = True
    result = trainer.train()
    assert trainer.state.global_step == 1 and result.training_loss == result.training_loss  # a number, not NaN
    recipe.save_final(trainer, tokenizer, tmp_path / "final")
    assert not hasattr(AutoModelForCausalLM.from_pretrained(tmp_path / "final"), "peft_config")


def test_objective_trains_on_ray(ray_session, tiny_model_path, train_ref, state_dir):
    from transformers import AutoModelForCausalLM

    cfg = small_config(*OBJECTIVES[ON_RAY], "training.scaling.num_workers=1", "training.max_steps=1")
    trained = train_model(
        TrainJob(
            cfg.training,
            str(tiny_model_path),
            train_ref,
            str(state_dir / "ray"),
            f"objective-{ON_RAY}",
            tracking_uri(cfg),
            None,
        )
    )
    assert trained.steps == 1
    loaded = AutoModelForCausalLM.from_pretrained(trained.model.path)  # LoRA is merged: a plain model
    assert not hasattr(loaded, "peft_config")


def test_effective_config_reports_what_trl_ignores_or_changes():
    orpo = effective_config(small_config("training.method=orpo", "training.loss_type=[ipo]").training)
    assert orpo["trainer"] == "ORPOTrainer"
    assert any(n.startswith("loss_type=['ipo']: not a ORPOConfig field") for n in orpo["notes"])
    assert not any(n.startswith("cpo_alpha") for n in orpo["notes"])  # untouched knobs are not noise
    dpo = effective_config(small_config().training)
    assert dpo["effective"]["bf16"] is False and dpo["effective"]["use_cpu"] is True
    assert any(n.startswith("bf16: TRL default True -> False") for n in dpo["notes"])
    assert not any(n.startswith("activation_checkpointing") for n in dpo["notes"])  # TRL's default (on), kept
    rpo = effective_config(small_config("training.loss_type=[sigmoid,sft]", "training.loss_weights=[1,0.5]").training)
    assert rpo["effective"]["loss_type"] == ["sigmoid", "sft"] and rpo["effective"]["loss_weights"] == [1.0, 0.5]


def test_precomputed_reference_log_probs_are_reused_across_runs(tiny_model_path, train_ref, tmp_path):
    """Two runs on the same inputs through the recipe the Ray worker runs: the second reads the first's
    reference log-probs (the driver names the cache by data, reference model and max_length)."""
    from alignflow.tasks.training import recipe

    cfg = small_config("training.precompute_ref_log_probs=true", "training.max_steps=1", "training.max_length=200")
    outcomes = []
    for attempt in range(2):
        trainer, _ = recipe.build_trainer(
            cfg.training,
            str(tiny_model_path),
            str(train_ref.path),
            str(tmp_path / f"out-{attempt}"),
            reference_cache=tmp_path / "ref_logps" / "key",
        )
        trainer.args.disable_tqdm = True
        trainer.train()
        outcomes.append(trainer.reference_cache)
    assert outcomes == ["miss", "hit"]  # the second run did no reference forward pass
    cached = list((tmp_path / "ref_logps").glob("*-train.parquet"))
    assert cached
