"""The TRL recipe: tokenizer, model, data in TRL's conversational format, TRL config, trainer.

Read `build_trainer` like alignment-handbook's `scripts/dpo.py`: the same steps, with the
`training` section (conf/training.py) as its ModelConfig and the method's TRL config. It runs the
same inside a Ray Train worker (tasks/training/loop.py) or in a plain process (the Ray-overhead
benchmark). Methods: dpo (DPOTrainer), orpo (ORPOTrainer), cpo and simpo (CPOTrainer, simpo being
its `loss_type="simpo"`); the optional SFT stage is SFTTrainer on the chosen responses; `reward` (the
`reward_model` section, conf/reward_model.py) is RewardTrainer on a one-label sequence classifier.
`effective_config` reports what TRL will use and every setting it ignores or changes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

from alignflow.conf.training import TrainingConfig, run_defaults
from alignflow.tasks.runtime.turns import row_turns
from alignflow.tasks.training.memory import bound_logprob_tiles

SFT = "sft"  # the stage name of the SFT stage; the preference stage is named by its method
REWARD = "reward"  # the reward model's method and stage: a sequence classifier, not a causal LM


def trl_classes(stage: str) -> tuple[type, type]:
    """The TRL config and trainer classes of a stage: a preference method, or "sft"."""
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if stage == SFT:
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, SFTTrainer
    if stage == REWARD:
        from trl import RewardConfig, RewardTrainer

        return RewardConfig, RewardTrainer
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # cpo and simpo

    return CPOConfig, CPOTrainer


def preload_trainers(trainings: list[TrainingConfig]) -> None:
    """Import the TRL classes these trainings use, once, in the calling thread: `trl` imports lazily, and
    threads importing it for the first time at once (recipes of a comparison) can see half-built modules."""
    for training in trainings:
        trl_classes(training.method)
        if training.sft.enabled:
            trl_classes(SFT)


# --- data: the train split in TRL's conversational formats ------------------------------------------


def _turns(example: dict, part: str, role: str) -> list[dict[str, str]]:
    """The row's own turns (a conversational data file: system prompt and earlier turns kept), else its text as
    one turn of `role`."""
    return row_turns(example, part) or [{"role": role, "content": example[part]}]


def to_conversational(example: dict) -> dict:
    """TRL's conversational preference format, so the model's chat template is applied to the turns as they were."""
    return {
        "prompt": _turns(example, "prompt", "user"),
        "chosen": _turns(example, "chosen", "assistant"),
        "rejected": _turns(example, "rejected", "assistant"),
    }


def to_prompt_completion(example: dict) -> dict:
    """TRL's conversational prompt-completion format: the user's prompt, the chosen answer as the completion."""
    return {"prompt": _turns(example, "prompt", "user"), "completion": _turns(example, "chosen", "assistant")}


# --- model and tokenizer ----------------------------------------------------------------------------


def get_tokenizer(model_path: str, stage: str, chat_template: str | None = None):
    from alignflow.tasks.runtime.chat_template import load_tokenizer

    tokenizer = load_tokenizer(model_path, chat_template)  # training.chat_template, saved with the model
    if stage not in (SFT, REWARD):
        tokenizer.padding_side = "left"  # preference trainers pad prompts on the left; the reward head reads the
        # last token that is not padding, so a reward model keeps right padding
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def get_model(model_args, stage: str = "preference", pad_token_id: int | None = None):
    """The base model as trl.ModelConfig describes it (dtype, revision, attention, QLoRA quantization); for the
    reward stage, the same weights under a one-output classification head (`score`, newly initialised)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import get_quantization_config

    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype,
        "quantization_config": get_quantization_config(model_args),
    }
    if stage != REWARD:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    # The head finds each row's last real token by the pad token id, so the saved config must name it.
    return AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=1, pad_token_id=pad_token_id, **kwargs
    )


def with_reference_cache(trainer_class: type, cache_file: Path) -> type:
    """DPOTrainer whose precomputed reference log-probs are kept in `cache_file`.

    The caller names the file by the content that determines the values (train data,
    reference model and tokenizer, max_length), so a later run on the same data skips the
    reference forward pass entirely. TRL's own cache keys on datasets fingerprints that
    change from one process to the next, so it misses across runs.
    """
    import datasets

    class ReferenceCachedTrainer(trainer_class):
        reference_cache = "off"

        def _precompute_ref_logps(self, dataset, name, batch_size):
            target = cache_file.with_name(f"{cache_file.stem}-{name}.parquet")
            if target.exists():
                cached = datasets.Dataset.from_parquet(str(target))
                if len(cached) == len(dataset):
                    self.reference_cache = "hit"
                    return datasets.concatenate_datasets([dataset, cached], axis=1)
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                out.select_columns(["ref_chosen_logps", "ref_rejected_logps"]).to_parquet(str(partial))
                partial.rename(target)
            self.reference_cache = "miss"
            return out

    return ReferenceCachedTrainer


# --- the recipe -------------------------------------------------------------------------------------


def trl_args(training: TrainingConfig, stage: str, output_dir: str):
    """The stage's TRL config: the section's knobs under TRL's names, with alignflow's run settings."""
    config_class, _ = trl_classes(stage)
    kwargs = training.sft_kwargs() if stage == SFT else training.trl_kwargs()
    return config_class(output_dir=output_dir, **kwargs)


def build_trainer(
    training: TrainingConfig,
    model_path: str,
    train_path: str,
    output_dir: str,
    stage: str = "preference",
    callbacks: Sequence = (),
    reference_cache: Path | None = None,
):
    """The stage's TRL trainer on the train split at `train_path`: `training.method`, or SFT when `stage` is "sft"."""
    import datasets
    from transformers import set_seed
    from trl import ModelConfig, get_peft_config

    stage = SFT if stage == SFT else training.method
    ###################
    # Model & tokenizer
    ###################
    model_args = ModelConfig(**training.model_kwargs(model_path))
    tokenizer = get_tokenizer(model_path, stage, training.chat_template_text)
    args = trl_args(training, stage, output_dir)
    # A reward model's score head is initialised as it loads, from the process's RNG: seeded here, or its draw would
    # depend on what the Ray worker process ran before (Ray reuses worker processes); the trainer seeds the rest.
    set_seed(args.seed)
    model = get_model(model_args, stage, tokenizer.pad_token_id)
    ######
    # Data
    ######
    data = datasets.Dataset.from_parquet(train_path)
    data = data.map(to_prompt_completion if stage == SFT else to_conversational, remove_columns=data.column_names)
    #########
    # Trainer
    #########
    _, trainer_class = trl_classes(stage)
    if stage == "dpo" and args.precompute_ref_log_probs and reference_cache is not None:
        trainer_class = with_reference_cache(trainer_class, reference_cache)
    bound_logprob_tiles(training.scaling.use_gpu)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=get_peft_config(model_args),  # LoRA from ModelConfig's lora_* fields, None unless use_peft
    )
    return trainer, tokenizer


def save_final(trainer, tokenizer, target: Path) -> None:
    """A plain HF model folder: LoRA adapters are merged so the registry gets a loadable model."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model.merge_and_unload().save_pretrained(target)
    else:
        trainer.save_model(str(target))
    tokenizer.save_pretrained(target)


# --- what TRL will use --------------------------------------------------------------------------------


def _report(training: TrainingConfig, stage: str, profile: Collection[str]) -> tuple[dict, list[str]]:
    """The stage's TRL config next to TRL's own, both resolved by TRL's __post_init__: every field alignflow
    passes or that differs from TRL's, and a note for each run default of alignflow's (not a knob in `profile`)
    that changes TRL's."""
    config_class, _ = trl_classes(stage)
    passed = training.sft_kwargs() if stage == SFT else training.trl_kwargs()
    args = trl_args(training, stage, tempfile.gettempdir())
    with warnings.catch_warnings():  # TRL's own defaults warn about TRL's deprecated names
        warnings.simplefilter("ignore")
        trl_default = config_class(output_dir=tempfile.gettempdir(), use_cpu=args.use_cpu)
    effective = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_class)
        if f.init and (f.name in passed or getattr(args, f.name) != getattr(trl_default, f.name))
    }
    device = "GPU" if training.scaling.use_gpu else "CPU"
    notes = [
        f"{key}: TRL default {getattr(trl_default, key)} -> {getattr(args, key)} ({device} run)"
        for key in run_defaults(training.scaling.use_gpu)
        if key not in profile and getattr(args, key) != getattr(trl_default, key)
    ]
    return effective, notes


def effective_config(training: TrainingConfig) -> dict:
    """What TRL/transformers will actually use, and every setting they ignore or change."""
    config_class, trainer_class = trl_classes(training.method)
    effective, notes = _report(training, training.method, training.knobs)
    # The embedded profile's knobs (a reward model's own): only what a profile changed is noise-free to report.
    ours = type(training)().knobs
    notes[:0] = [
        f"{k}={v!r}: not a {config_class.__name__} field, ignored by {training.method}"
        for k, v in training.ignored().items()
        if v != ours.get(k)
    ]
    if training.method == "simpo" and training.knobs.get("loss_type") != ours.get("loss_type"):
        notes.append(f"loss_type: simpo has its own loss, {training.knobs['loss_type']} is ignored")
    if effective.get("padding_free"):
        notes.append("padding_free: accepted by TRL but ignored (TRL warns); batches are padded")
    if training.knob("use_peft", bool):
        notes.append(
            f"LoRA r={training.knob('lora_r', int)} alpha={training.knob('lora_alpha', int)} on "
            f"{training.knobs.get('lora_target_modules')}; adapters are merged into the saved model"
        )
    report = {"method": training.method, "trainer": trainer_class.__name__, "effective": effective, "notes": notes}
    if training.sft.enabled:
        sft_effective, sft_notes = _report(training, SFT, {*training.knobs, *training.sft.knobs})
        report["sft"] = {"trainer": "SFTTrainer", "effective": sft_effective, "notes": sft_notes}
        notes.extend(f"sft stage {note}" for note in sft_notes)
    return report
