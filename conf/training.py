"""`training`: the method, the base model, Ray scaling and storage, and TRL's own knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignflow.conf.base import BUILTIN_TINY_MODEL, Section


class TinyModelConfig(Section):
    """Shape of the offline Llama-architecture model built when a model is `builtin:tiny-llama`."""

    vocab_size: int = Field(2048, ge=300, le=32000, description="BPE vocabulary size.")
    hidden_size: int = Field(128, ge=16, le=1024)
    intermediate_size: int = Field(384, ge=16, le=4096)
    num_hidden_layers: int = Field(2, ge=1, le=12)
    num_attention_heads: int = Field(4, ge=1, le=32)
    max_position_embeddings: int = Field(256, ge=64, le=4096)
    warmup_steps: int = Field(
        500,
        ge=0,
        le=5000,
        description="Causal-LM steps on the shipped prompts and reference answers, so the "
        "model writes on-topic text rather than noise (0 keeps random weights).",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return self


class ScalingConfig(Section):
    """Ray Train's ScalingConfig fields."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})


DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
CPO_LOSSES = ("sigmoid", "hinge", "ipo")


class SFTStageConfig(Section):
    """An optional supervised stage before the preference stage: TRL SFTTrainer on the chosen responses.

    Its model becomes the preference stage's policy and, for DPO, its reference. Knobs keep TRL
    SFTConfig's names; the ones left null take the `training` section's value. Scaling, seed,
    logging, checkpoints and LoRA are the training section's.
    """

    enabled: bool = Field(False, description="Run SFT first (`sft -> dpo`); off: one preference stage.")
    learning_rate: float = Field(2e-4, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    per_device_train_batch_size: int | None = Field(None, ge=1, description="None: training's.")
    gradient_accumulation_steps: int | None = Field(None, ge=1, description="None: training's.")
    max_length: int | None = Field(None, ge=8, description="None: training's.")
    lr_scheduler_type: str = "linear"
    warmup_steps: float = Field(0.1, ge=0.0, description="Warm-up: steps, or a fraction of training when < 1.")
    completion_only_loss: bool = Field(True, description="Loss on the response tokens only (false: on the prompt too).")


class TrainingConfig(Section):
    method: Literal["dpo", "orpo", "cpo", "simpo"] = Field(
        "dpo", description="dpo: TRL DPOTrainer; orpo, cpo, simpo: trl.experimental (no reference model)."
    )
    model_name_or_path: str = Field(BUILTIN_TINY_MODEL, description="Base policy: `builtin:tiny-llama` or an HF path.")
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    storage: str | None = Field(
        None,
        description="Ray checkpoint storage, an fsspec URI (s3://, gs://, a shared path); None: the state directory.",
    )
    sft: SFTStageConfig = Field(
        default_factory=SFTStageConfig, description="Optional SFT stage on the chosen responses before `method`."
    )
    # TRL / transformers fields, passed through under their own names.
    beta: float = Field(0.1, gt=0.0, description="DPO: KL strength; ORPO: odds-ratio weight (lambda); CPO/SimPO: beta.")
    loss_type: list[str] = Field(
        default_factory=lambda: ["sigmoid", "sft"], min_length=1, description="DPO loss types ([sigmoid, sft]: RPO)."
    )
    loss_weights: list[float] | None = Field(None, description="Weights of the loss types (DPO), e.g. [1.0, 0.5].")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Robust DPO / cDPO label-flip probability.")
    precompute_ref_log_probs: bool = Field(
        False, description="DPO: compute reference log-probs once, cached on disk keyed by data, model and tokenizer."
    )
    cpo_alpha: float = Field(1.0, ge=0.0, description="CPO/SimPO: weight of the NLL term (0 gives pure SimPO).")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO: target reward margin.")
    learning_rate: float = Field(2e-4, gt=0.0)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(3.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    max_length: int = Field(256, ge=8)
    lr_scheduler_type: str = "linear"
    warmup_steps: float = Field(0.1, ge=0.0, description="Warm-up: steps, or a fraction of training when < 1.")
    logging_steps: int = Field(2, ge=1)
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps into Ray storage.")
    max_failures: int = Field(0, ge=-1, description="Ray FailureConfig: worker-group restarts allowed.")
    seed: int = 42
    # LoRA / QLoRA, with TRL ModelConfig's field names.
    use_peft: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | str = Field("all-linear", description="Module names, or `all-linear`.")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base weights (bitsandbytes, GPU only).")
    load_in_8bit: bool = Field(False, description="8-bit base weights (bitsandbytes, GPU only).")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    use_bnb_nested_quant: bool = False

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_loss_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_the_method(self) -> TrainingConfig:
        known = CPO_LOSSES if self.method == "cpo" else DPO_LOSSES
        if self.method in ("dpo", "cpo"):
            unknown = [name for name in self.loss_type if name not in known]
            if unknown:
                raise ValueError(f"loss_type {unknown} not one of {list(known)} for method {self.method}")
        if self.method == "cpo" and len(self.loss_type) > 1:
            raise ValueError("loss_type: cpo takes one loss type")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("loss_weights needs one weight per loss_type")
        if (self.load_in_4bit or self.load_in_8bit) and not self.scaling.use_gpu:
            raise ValueError("load_in_4bit/load_in_8bit (QLoRA) need scaling.use_gpu=true")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_peft:
            raise ValueError("load_in_4bit/load_in_8bit train adapters only: set use_peft=true")
        return self
