"""The pipeline's configuration: one pydantic model per YAML section.

Keys that mean a TRL or transformers field carry that field's name (beta, loss_type,
learning_rate, max_length, ...), as alignment-handbook recipes do. Every model forbids
unknown keys, so a typo stops the run before any compute starts.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

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


ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
JUDGE_ASPECTS = ("overall-rating", "helpfulness", "honesty", "instruction-following", "truthfulness")


class LLMConfig(Section):
    """One LLM: a local transformers model, or any OpenAI-compatible endpoint (vLLM, TGI, hosted APIs).

    Both run through distilabel (TransformersLLM, OpenAILLM). An API key is never part of the
    config: `api_key_env` names the environment variable that holds it.
    """

    provider: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers: a local model in-process; openai: an OpenAI-compatible endpoint."
    )
    model: str = Field(
        BUILTIN_TINY_MODEL,
        min_length=1,
        description="transformers: `builtin:tiny-llama` or a local HF model path; openai: the served model name.",
    )
    base_url: str | None = Field(
        None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (`vllm serve`); None: api.openai.com."
    )
    api_key_env: str | None = Field(
        None,
        description="openai: NAME of the environment variable holding the API key (None: no key, local servers).",
    )
    timeout: float = Field(120.0, gt=0.0, description="openai: seconds per request before it counts as timed out.")
    max_retries: int = Field(
        3, ge=0, le=20, description="openai: retries of HTTP 5xx/429/408 and time-outs, with exponential backoff."
    )
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=32768)
    repetition_penalty: float | None = Field(
        None,
        ge=1.0,
        le=3.0,
        description="None: 1.1 for transformers (tiny models loop without it), not sent to endpoints; "
        "a value is sent to endpoints as `repetition_penalty` (vLLM, TGI).",
    )

    @model_validator(mode="after")
    def _endpoint_fields_need_openai(self) -> LLMConfig:
        # Checked here, not with a field pattern: a field error echoes its input, and what a user
        # pastes by mistake into api_key_env is usually the key itself.
        if self.api_key_env is not None and not re.fullmatch(ENV_VAR_NAME, self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _), never the key itself"
            )
        if self.provider == "transformers":
            given = [k for k in ("base_url", "api_key_env") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for provider: openai")
        if self.base_url is not None:
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https:// (got {self.base_url!r})")
            if "@" in self.base_url.split("//", 1)[1].split("/", 1)[0] or "key=" in self.base_url.lower():
                raise ValueError(
                    "base_url must not carry credentials: put the key in the variable named by api_key_env"
                )
        return self


class GeneratorConfig(LLMConfig):
    """One model that writes candidate responses (a distilabel TextGeneration step)."""

    num_generations: int = Field(1, ge=1, le=16, description="Responses per prompt from this generator.")


class JudgeConfig(Section):
    """Who rates the candidates: the offline scorer, or an UltraFeedback-style LLM judge."""

    kind: Literal["offline", "ultrafeedback"] = Field(
        "offline", description="offline: deterministic reference-based scorer; ultrafeedback: an LLM (distilabel)."
    )
    aspect: Literal[JUDGE_ASPECTS] = Field("overall-rating", description="UltraFeedback aspect the LLM rates on.")
    llm: LLMConfig | None = Field(None, description="The judge LLM (required for ultrafeedback).")
    parse_retries: int = Field(
        2, ge=0, le=10, description="Ask the judge again when its answer does not parse (then the row fails)."
    )
    retry_backoff: float = Field(
        1.0, ge=0.0, le=60.0, description="Seconds before the first re-ask, doubled each time."
    )

    @model_validator(mode="after")
    def _llm_judge_needs_an_llm(self) -> JudgeConfig:
        if self.kind == "ultrafeedback" and self.llm is None:
            raise ValueError("judge.kind ultrafeedback needs judge.llm (provider, model, ...)")
        return self


class GenerationConfig(Section):
    prompts: str = Field(
        BUILTIN_PROMPTS,
        description="`builtin:default`, a .jsonl/.parquet/.csv file, or a `datasets` folder (save_to_disk).",
    )
    prompt_column: str = Field("prompt", min_length=1, description="Column of the prompt source holding the prompt.")
    reference_column: str = Field(
        "reference", min_length=1, description="Column with a reference answer (offline judge), used when present."
    )
    max_prompts: int | None = Field(None, ge=1, description="Use only the first N prompts (None: all).")
    preference_data: str | None = Field(
        None,
        description="Bring your own pairs and skip generation: a .jsonl/.json/.parquet/.csv file or a `datasets` "
        "folder in a TRL preference format (standard, conversational, implicit prompt).",
    )
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(temperature=0.5), GeneratorConfig(temperature=1.2)],
        min_length=1,
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Who rates the candidates.")
    binarization: Literal["best_vs_worst", "best_vs_random_lower"] = Field(
        "best_vs_worst",
        description="Chosen is the best candidate; rejected the worst, or a random one scoring at least "
        "min_score_margin lower.",
    )
    min_score_margin: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Chosen must out-score rejected by at least this much (judge score in [0, 1]; an UltraFeedback "
        "rating step is 0.25); closer pairs are ties and are dropped. Equal scores never make a pair.",
    )
    min_success_rate: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Fail the stage when fewer prompts than this share were generated and judged (what was "
        "generated is kept; a re-run retries only the failed rows).",
    )
    input_batch_size: int = Field(16, ge=1, description="Rows per distilabel batch.")
    ray: bool = Field(False, description="Run the distilabel pipeline on the Ray cluster (runtime.ray_address).")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_shorthand(cls, value: object) -> object:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _at_least_two_candidates(self) -> GenerationConfig:
        if self.preference_data is None and sum(g.num_generations for g in self.generators) < 2:
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


COMPARISON_METRICS = ("preference_accuracy", "reward_margin", "logp_accuracy", "win_rate")
RecipeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=64)]


class Recipe(NamedTuple):
    """One expanded recipe: a readable name (`orpo[beta=0.1]`) and the training section it runs."""

    name: str
    training: TrainingConfig


def knob_label(value: Any) -> str:
    """A grid value as it reads in a recipe name: `0.1`, `true`, `sigmoid+sft`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "+".join(knob_label(v) for v in value)
    return str(value)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a grid, in declaration order: {beta: [a, b], loss_type: [c]} -> 2 points."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def with_knobs(training: BaseModel, point: dict[str, Any]) -> TrainingConfig:
    """`training` with the knobs of one grid point set (`sft.learning_rate` reaches into a sub-section)."""
    data = training.model_dump(exclude={"grid"})
    for key, value in point.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{key}: {part} is not a section of training")
            node = node[part]
        node[leaf] = value
    return TrainingConfig.model_validate(data)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'training'}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
        for e in exc.errors()
    )


class RecipeConfig(TrainingConfig):
    """One recipe of a comparison: the profile's `training` section with this recipe's keys on top, and an
    optional grid of knobs whose every combination becomes a recipe of its own."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Knob (a training key, `sft.learning_rate` for a sub-section) -> values; the cartesian "
        "product expands into recipes named like `orpo[beta=0.1]`.",
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _nested_knobs_are_dotted(cls, grid: Any) -> Any:
        """`{sft: {learning_rate: [..]}}` (what `grid.sft.learning_rate=[..]` overrides build) is `sft.learning_rate`."""
        if not isinstance(grid, dict):
            return grid
        flat: dict[str, Any] = {}
        for key, value in grid.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in cls._nested_knobs_are_dotted(value).items()})
            else:
                flat[key] = value
        return flat

    @field_validator("grid")
    @classmethod
    def _every_point_is_a_valid_recipe(cls, grid: dict[str, list[Any]], info: ValidationInfo) -> dict[str, list[Any]]:
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"{', '.join(empty)}: give at least one value")
        fields = set(TrainingConfig.model_fields)
        if not fields <= set(info.data):  # a training key already failed: that error is reported on its own
            return grid
        training = TrainingConfig.model_construct(**{k: info.data[k] for k in fields})
        for point in grid_points(grid):
            try:
                with_knobs(training, point)
            except ValidationError as exc:
                label = ",".join(f"{k}={knob_label(v)}" for k, v in point.items())
                raise ValueError(f"grid point [{label}]: {_problems(exc)}") from None
        return grid


def expand_recipes(recipes: dict[str, RecipeConfig]) -> list[Recipe]:
    """The recipes a comparison trains: one per recipe without a grid, one per grid point otherwise."""
    expanded = []
    for name, recipe in recipes.items():
        if not recipe.grid:
            expanded.append(Recipe(name, with_knobs(recipe, {})))
            continue
        for point in grid_points(recipe.grid):
            label = ",".join(f"{k}={knob_label(v)}" for k, v in point.items())
            expanded.append(Recipe(f"{name}[{label}]", with_knobs(recipe, point)))
    return expanded


class ComparisonConfig(Section):
    """`alignflow compare`: several recipes trained on one validated split and measured on the same held-out pairs."""

    recipes: dict[RecipeName, RecipeConfig] = Field(
        default_factory=dict,
        description="Name -> training keys that differ from the `training` section (plus an optional `grid`).",
    )
    metric: Literal[COMPARISON_METRICS] = Field(
        "preference_accuracy", description="Held-out metric that picks the best recipe (higher is better)."
    )
    register_best: bool = Field(
        True, description="The best recipe goes through registry.gate (challenger, maybe champion); others stay runs."
    )
    max_parallel: int = Field(
        2,
        ge=1,
        le=64,
        description="Recipes training at once, side by side on the Ray cluster, each in its own "
        "training.scaling resources (1: one after the other, for clean timings).",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> ComparisonConfig:
        names = [r.name for r in expand_recipes(self.recipes)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"recipes expand to the same name twice: {', '.join(twice)}")
        return self


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value  # fmt: skip
    return merged


class RuntimeConfig(Section):
    home: Path | None = Field(None, description="State directory (default: $ALIGNFLOW_HOME or ./.alignflow).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in the state directory).")
    ray_address: str | None = Field(
        None, description="Join this Ray cluster (`auto`, `ray://host:10001`); None starts a local one."
    )
    seed: int = 0
    notify_webhook: str | None = Field(
        None,
        pattern=r"^https?://",
        description="POST a JSON message (Slack/Teams-style `text` plus details) here when a run fails or "
        "crashes; None: no notification.",
    )
    mlflow_ui_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="MLflow UI base URL for the links in Prefect artifacts (None: $ALIGNFLOW_MLFLOW_UI_URL, else "
        "the tracking URI when it is an http(s) server).",
    )


class PipelineConfig(Section):
    """One alignment run, from prompts to a registered model."""

    name: str = Field("alignflow", min_length=1, description="Run name, shown in Prefect and MLflow.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _recipes_start_from_training(cls, data: Any) -> Any:
        """Each recipe is the `training` section with the recipe's keys on top (nested sections merged), so
        errors name the recipe's own key path (comparison.recipes.orpo.beta)."""
        if not isinstance(data, dict) or not isinstance(data.get("comparison"), dict):
            return data
        recipes, base = data["comparison"].get("recipes"), data.get("training") or {}
        base = base.model_dump() if isinstance(base, BaseModel) else base
        if not isinstance(recipes, dict) or not isinstance(base, dict):
            return data
        merged = {
            name: _deep_merge(base, recipe or {}) if isinstance(recipe, dict | None) else recipe
            for name, recipe in recipes.items()
        }
        return {**data, "comparison": {**data["comparison"], "recipes": merged}}

    @model_validator(mode="after")
    def _recipes_share_the_base_model(self) -> PipelineConfig:
        # Every recipe trains from the one base model the comparison builds and evaluates against.
        for name, recipe in self.comparison.recipes.items():
            for key in ("model_name_or_path", "tiny_model"):
                if getattr(recipe, key) != getattr(self.training, key):
                    raise ValueError(
                        f"comparison.recipes.{name}.{key}: recipes share the base model of training.{key}; "
                        "compare base models in separate runs"
                    )
        return self
