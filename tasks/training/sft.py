"""The optional SFT stage: TRL SFTTrainer on the chosen responses, before DPO (or any preference method).

Runs under the same Ray Train loop as the preference stage (tasks/train.py `train_loop` with
stage "sft"); its final model then becomes the preference stage's policy and, for DPO, its
reference (TRL copies the reference from the policy it is given). The knobs are
`training.sft` (TRL SFTConfig names); batch size, accumulation and max_length left null take
the `training` section's values, and scaling, seed, logging, checkpoints and LoRA are shared.
"""

from __future__ import annotations

import dataclasses

from alignflow.conf.training import TrainingConfig

# training.sft keys passed to SFTConfig under their own names (None: the training section's value).
SFT_FIELDS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "lr_scheduler_type", "warmup_steps", "completion_only_loss",
)  # fmt: skip
SHARED_FIELDS = ("logging_steps", "save_steps", "seed")


def sft_settings(training: TrainingConfig) -> dict:
    """The SFTConfig fields this stage asks for: training.sft, with nulls resolved from `training`."""
    chosen = {k: getattr(training.sft, k) for k in SFT_FIELDS}
    for key, value in chosen.items():
        if value is None:
            chosen[key] = getattr(training, key)
    return {**chosen, **{k: getattr(training, k) for k in SHARED_FIELDS}}


def sft_args(training: TrainingConfig, output_dir: str, use_gpu: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        **sft_settings(training),
        save_strategy="steps",
        save_total_limit=1,
        report_to=[],
        use_cpu=not use_gpu,
        bf16=use_gpu,  # TRL's defaults (bf16, activation checkpointing) fail or only slow down on CPU
        activation_checkpointing=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        logging_first_step=True,
    )


def effective_config(training: TrainingConfig) -> dict:
    """What SFTTrainer will use; notes for what differs from TRL's defaults."""
    import tempfile

    from trl import SFTConfig

    args = sft_args(training, tempfile.gettempdir(), training.scaling.use_gpu)
    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    notes = []
    if defaults.get("bf16") in (None, True) and not args.bf16:
        notes.append("sft stage bf16: TRL default True -> False (CPU run)")
    return {
        "trainer": "SFTTrainer",
        "effective": {k: getattr(args, k) for k in (*SFT_FIELDS, *SHARED_FIELDS, "bf16", "use_cpu")},
        "notes": notes,
    }


def to_prompt_completion(example: dict) -> dict:
    """TRL's conversational prompt-completion format: the user's prompt, the chosen answer as the completion."""
    return {
        "prompt": [{"role": "user", "content": example["prompt"]}],
        "completion": [{"role": "assistant", "content": example["chosen"]}],
    }


def build_sft_trainer(training: TrainingConfig, model_path: str, train_path: str, output_dir: str, callbacks=()):
    """SFTTrainer on the chosen responses of the train split at `train_path`."""
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from alignflow.tasks.training.train import load_model, peft_config

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = datasets.Dataset.from_parquet(train_path)
    data = data.map(to_prompt_completion, remove_columns=data.column_names)
    trainer = SFTTrainer(
        model=load_model(training, model_path),
        args=sft_args(training, output_dir, training.scaling.use_gpu),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=peft_config(training),
    )
    return trainer, tokenizer
