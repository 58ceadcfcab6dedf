"""The pipeline's configuration: one pydantic model per YAML section.

Keys that mean a TRL or transformers field carry that field's name (beta, loss_type,
learning_rate, max_length, ...), as alignment-handbook recipes do. Every model forbids
unknown keys, so a typo stops the run before any compute starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


class ValidationConfig(Section):
    max_length: int = Field(
        256,
        ge=8,
        description="Longest prompt+response in tokens (chat template applied); longer pairs are quarantined.",
    )
    min_valid_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop the run below this fraction of valid pairs."
    )
    min_pairs: int = Field(20, ge=1, description="Stop the run with fewer valid pairs than this.")
    test_size: float = Field(0.15, gt=0.0, lt=1.0, description="Held-out fraction of prompts.")
    split_seed: int = 0


class ScalingConfig(Section):
    """Ray Train's ScalingConfig fields."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})


class TrainingConfig(Section):
    method: Literal["dpo", "orpo"] = "dpo"
    model_name_or_path: str = Field(BUILTIN_TINY_MODEL, description="Base policy: `builtin:tiny-llama` or an HF path.")
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    # TRL / transformers fields, passed through under their own names.
    beta: float = Field(0.1, gt=0.0, description="DPO: KL strength; ORPO: odds-ratio weight (lambda).")
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1, description="DPO loss types.")
    learning_rate: float = Field(5e-4, gt=0.0)
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

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_loss_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class EvaluationConfig(Section):
    max_pairs: int | None = Field(None, ge=1, description="Score at most this many held-out pairs (None: all).")
    batch_size: int = Field(16, ge=1)


class GateConfig(Section):
    metric: Literal["preference_accuracy", "reward_margin", "logp_accuracy"] = Field(
        "preference_accuracy", description="Held-out metric that decides promotion (higher is better)."
    )
    min_improvement: float = Field(0.0, ge=0.0, description="The candidate must beat the champion by more than this.")


class RegistryConfig(Section):
    model_name: str = Field("alignflow-tiny", min_length=1, description="Registered model name in MLflow.")
    experiment: str = Field("alignflow", min_length=1)
    gate: GateConfig = Field(default_factory=GateConfig)


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
