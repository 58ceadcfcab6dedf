"""The pipeline's configuration: one pydantic model per YAML section.

Keys that mean a TRL or transformers field carry that field's name (beta, loss_type,
learning_rate, max_length, ...), as alignment-handbook recipes do. Every model forbids
unknown keys, so a typo stops the run before any compute starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_TINY_MODEL = "builtin:tiny-llama"
BUILTIN_PROMPTS = "builtin:default"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class GeneratorConfig(Section):
    """One model that writes candidate responses (a distilabel TextGeneration step)."""

    model: str = Field(BUILTIN_TINY_MODEL, description="`builtin:tiny-llama` or a local HF model path.")
    num_generations: int = Field(1, ge=1, le=16, description="Responses per prompt from this generator.")
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0)


class GenerationConfig(Section):
    prompts: str = Field(BUILTIN_PROMPTS, description="`builtin:default` or a jsonl file with a `prompt` column.")
    max_prompts: int | None = Field(None, ge=1, description="Use only the first N prompts (None: all).")
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(temperature=0.5), GeneratorConfig(temperature=1.2)],
        min_length=1,
    )
    judge: Literal["offline"] = Field("offline", description="Who rates the candidates.")
    min_score_margin: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Chosen must out-score rejected by at least this much (judge score in [0, 1]); "
        "closer pairs are ties and are dropped.",
    )
    input_batch_size: int = Field(16, ge=1, description="Rows per distilabel batch.")

    @model_validator(mode="after")
    def _at_least_two_candidates(self) -> GenerationConfig:
        if sum(g.num_generations for g in self.generators) < 2:
            raise ValueError("generators must produce at least 2 candidates per prompt in total")
        return self


ValidationCheck = Literal[
    "missing_column",
    "extra_columns",
    "wrong_type",
    "null_field",
    "empty_field",
    "invalid_utf8",
    "control_chars",
    "mixed_format",
    "conversation_structure",
    "identical_pair",
    "rating_tie",
    "low_margin",
    "duplicate_pair",
    "contradiction",
    "too_long",
    "length_bias",
    "split_leakage",
]
DEFAULT_WARNINGS = ("extra_columns", "length_bias")  # every other check is an error by default
# A row failing one of these has no usable text: it can never be kept, so they are always errors.
STRUCTURAL_CHECKS = ("missing_column", "wrong_type", "null_field", "mixed_format")


class ValidationConfig(Section):
    """Dataset checks (ids in tasks/validate.py CHECKS), their levels and the gate before training."""

    max_length: int = Field(
        256,
        ge=8,
        description="Longest prompt+response in tokens (chat template applied); longer pairs are `too_long`.",
    )
    max_rejected_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop the run when more than this fraction of rows is quarantined."
    )
    min_pairs: int = Field(20, ge=1, description="Stop the run with fewer valid pairs than this.")
    errors: list[ValidationCheck] = Field(
        default_factory=lambda: [c for c in get_args(ValidationCheck) if c not in DEFAULT_WARNINGS],
        description="Checks that quarantine their rows (row checks) or fail the gate (dataset checks).",
    )
    warnings: list[ValidationCheck] = Field(
        default_factory=lambda: list(DEFAULT_WARNINGS),
        description="Checks that are only reported; a check in neither list is not run.",
    )
    min_rating_margin: float = Field(
        0.0, ge=0.0, description="Rating margin (chosen - rejected) below this is `low_margin`; equal is `rating_tie`."
    )
    rating_columns: list[str] = Field(
        default_factory=lambda: ["score_chosen", "score_rejected"],
        min_length=2,
        max_length=2,
        description="The chosen and rejected ratings, when the dataset has them.",
    )
    allowed_columns: list[str] = Field(
        default_factory=lambda: ["prompt_id", "id", "split", "chosen_generator", "rejected_generator"],
        description="Columns besides prompt/chosen/rejected and the ratings that are not `extra_columns`.",
    )
    length_bias_threshold: float = Field(
        0.65,
        gt=0.5,
        le=1.0,
        description="Warn when more than this share of pairs has the longer response chosen (and it is significant).",
    )
    chunk_rows: int = Field(10000, ge=1, description="Rows read and checked at a time: memory is bounded by this.")
    example_rows: int = Field(5, ge=0, le=1000, description="Example row numbers kept per check in the report.")
    test_size: float = Field(0.15, gt=0.0, lt=1.0, description="Held-out fraction of prompts.")
    split_seed: int = 0

    @model_validator(mode="after")
    def _levels_are_consistent(self) -> ValidationConfig:
        both = sorted(set(self.errors) & set(self.warnings))
        if both:
            raise ValueError(f"checks listed as both errors and warnings: {', '.join(both)}")
        structural = [c for c in STRUCTURAL_CHECKS if c not in self.errors]
        if structural:
            raise ValueError(f"{', '.join(structural)} must stay in validation.errors: such rows have no usable text")
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


class EvaluationConfig(Section):
    max_pairs: int | None = Field(None, ge=1, description="Score at most this many held-out pairs (None: all).")
    batch_size: int = Field(16, ge=1)
    win_rate_prompts: int = Field(
        16,
        ge=1,
        description="Held-out prompts (a seeded sample when there are more) on which the candidate and the "
        "champion (or the base model when there is none) each generate an answer for the judge.",
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated per answer for the win rate.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature (0: greedy).")
    seed: int = Field(0, description="Seeds the prompt sample and the sampling of every answer.")
    samples: int = Field(8, ge=0, description="Rows of (prompt, champion, candidate) in the samples table.")


GATE_THRESHOLD_METRICS = ("preference_accuracy", "reward_margin", "logp_accuracy", "win_rate")


class GateConfig(Section):
    metric: Literal["preference_accuracy", "reward_margin", "logp_accuracy"] = Field(
        "preference_accuracy", description="Held-out metric that decides promotion (higher is better)."
    )
    min_improvement: float = Field(0.0, ge=0.0, description="The candidate must beat the champion by more than this.")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Minimum the candidate must reach on each named metric, whatever the champion does: "
        f"keys among {', '.join(GATE_THRESHOLD_METRICS)}.",
    )
    max_chosen_nll: float | None = Field(
        None,
        gt=0.0,
        description="The candidate's held-out NLL of chosen responses must not exceed this (None: no limit).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_threshold_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(GATE_THRESHOLD_METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; expected some of {list(GATE_THRESHOLD_METRICS)}")
        return value


class RegistryConfig(Section):
    model_name: str = Field("alignflow-tiny", min_length=1, description="Registered model name in MLflow.")
    experiment: str = Field("alignflow", min_length=1)
    gate: GateConfig = Field(default_factory=GateConfig)
    auto_promote: bool = Field(
        True,
        description="A candidate that passes the gate becomes champion; false: it stays challenger until "
        "`alignflow promote` (the gate outcome is recorded either way).",
    )


class RuntimeConfig(Section):
    home: Path | None = Field(None, description="State directory (default: $ALIGNFLOW_HOME or ./.alignflow).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in the state directory).")
    ray_address: str | None = Field(
        None, description="Join this Ray cluster (`auto`, `ray://host:10001`); None starts a local one."
    )
    seed: int = 0


class PipelineConfig(Section):
    """One alignment run, from prompts to a registered model."""

    name: str = Field("alignflow", min_length=1, description="Run name, shown in Prefect and MLflow.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
