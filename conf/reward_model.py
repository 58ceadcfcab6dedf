"""`reward_model`: a reward model trained from the validated preference data (`alignflow reward-model`).

It is the `training` section's machinery (conf/training.py) with method `reward`: the same base-model, Ray
scaling, storage and chat-template keys, and every other key a TRL knob under TRL's name, checked against
RewardConfig's and trl.ModelConfig's fields (the table conf/trl_fields.json). Its own embedded knob values
(`REWARD_KNOBS`) train SmolLM2-135M-Instruct in a minute or two on CPU. alignflow's own keys beyond training's:
`registered_model` (the MLflow registered model, its own lineage of champions) and `min_accuracy` (the gate).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from alignflow.conf.evaluation import default_model_name
from alignflow.conf.training import TrainingConfig, _checked

REWARD_SUFFIX = "-reward"
# PEFT saves the classification head (`score`) with the adapters, and merges it, only for this task type; with
# CAUSAL_LM the head would stay at its random initial weights.
LORA_TASK_TYPE = "SEQ_CLS"

# alignflow's values for the reward model's TRL knobs (RewardConfig and trl.ModelConfig fields): one epoch of LoRA
# over the validated train split. A profile's own knob wins; a knob in neither takes TRL's default.
REWARD_KNOBS: dict[str, Any] = {
    "learning_rate": 1.0e-4,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,
    "max_steps": -1,
    "max_length": 256,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.1,
    "logging_steps": 2,
    "save_steps": 10,
    "seed": 42,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "lora_task_type": LORA_TASK_TYPE,
    "load_in_4bit": False,
    "load_in_8bit": False,
}


class RewardModelConfig(TrainingConfig):
    """TRL RewardTrainer on the validated pairs: training's keys (see the module's docstring) and the gate's."""

    method: Literal["reward"] = Field("reward", description="TRL RewardTrainer (a one-label sequence classifier).")
    start_from: Literal["base"] = Field("base", description="A reward model always starts from the base model.")
    registered_model: str | None = Field(
        None,
        description="The MLflow registered model the reward model is versioned under; None: the base model's "
        "registered name plus `-reward` (alignflow-smollm2-135m-instruct-reward).",
    )
    min_accuracy: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Gate: `champion` only when the 95% interval's lower bound of held-out pairwise accuracy "
        "exceeds this (0.5: better than chance).",
    )

    EMBEDDED_KNOBS: ClassVar[dict[str, Any]] = REWARD_KNOBS  # the reward model's own, not the preference recipe's

    @model_validator(mode="after")
    def _knobs_fit_trl_and_the_method(self) -> RewardModelConfig:
        self.__pydantic_extra__.update(_checked(self.knobs, ("reward", "model")))
        if self.knob("use_peft", bool) and self.knob("lora_task_type", str) != LORA_TASK_TYPE:
            raise ValidationError.from_exception_data(
                "reward_model",
                [
                    InitErrorDetails(
                        type="literal_error",
                        loc=("lora_task_type",),
                        input=self.knobs.get("lora_task_type"),
                        ctx={"expected": f"'{LORA_TASK_TYPE}' (LoRA must train and save the score head)"},
                    )
                ],
            )
        quantized = self.knob("load_in_4bit", bool) or self.knob("load_in_8bit", bool)
        if quantized and not self.scaling.use_gpu:
            raise ValueError("load_in_4bit/load_in_8bit (QLoRA) need scaling.use_gpu=true")
        if quantized and not self.knob("use_peft", bool):
            raise ValueError("load_in_4bit/load_in_8bit train adapters only: set use_peft=true")
        if self.sft.enabled:
            raise ValueError("sft: a reward model has no SFT stage")
        return self

    @property
    def model_name(self) -> str:
        """The registered model's name: `registered_model`, else derived from the base model."""
        return self.registered_model or default_model_name(self.model_name_or_path) + REWARD_SUFFIX
