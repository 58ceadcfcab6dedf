"""`training`: alignflow's own keys (method, base model, Ray scaling and storage, the SFT stage), then TRL's knobs.

Every other key under `training:` is a field of TRL's own config class, under TRL's name:
DPOConfig for dpo, ORPOConfig for orpo, CPOConfig for cpo and simpo, and trl.ModelConfig for
LoRA/QLoRA and model loading; `training.sft` takes SFTConfig's. None of them is declared here.
When the config loads, each key is checked against its class's fields and their types (read from
the table conf/trl_fields.json made from those classes, so a typo fails in well under a second), and once the whole
config is otherwise valid TRL's own checks run on what training will build (`trl_problems`).

alignflow's values for the knobs (beta 0.1, RPO, LoRA, ...) are `KNOBS` below, the embedded default's
recipe (conf/pipeline.yaml lists them with their comments): a knob a profile leaves out takes that value,
one KNOBS leaves out takes TRL's default (`TrainingConfig.knob`).
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from alignflow.conf import trl_fields
from alignflow.conf.base import BUILTIN_SMOLLM2, Section
from alignflow.conf.chat_template import ChatTemplate

T = TypeVar("T")
# The preference classes (trl_fields.CLASSES keys) in the order that says what a key means when several
# declare it: a profile's training section is shared by recipes of different methods.
PREFERENCE = ("dpo", "cpo", "orpo")
# TRL fields alignflow sets on every run: checkpoints go to Ray storage, metrics to MLflow through
# alignflow's callback, the device follows scaling.use_gpu.
OWNED = ("output_dir", "save_strategy", "save_total_limit", "report_to", "use_cpu")
# Loss names TRL checks only when it computes the loss, after generation and validation have run.
DPO_LOSSES = (
    *("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired"),
    *("apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
)
CPO_LOSSES = ("sigmoid", "hinge", "ipo")
# Fields whose declared annotation is narrower than what transformers documents and takes: TrainingArguments.fsdp is
# `str | None`, but its help says "fsdp=True" (a string of options is its deprecated form).
ALSO_TAKES: dict[str, type] = {"fsdp": bool}


def run_defaults(use_gpu: bool) -> dict[str, Any]:
    """alignflow's values for TRL settings a profile may still set: TRL's bf16 fails on CPU; Ray runs one data
    loader per worker; the first step is logged. Activation checkpointing keeps TRL's default (on) on CPU too:
    it costs a second forward pass and cuts a worker's peak several-fold (tasks/training/memory.py)."""
    return {
        "bf16": use_gpu,
        "ddp_find_unused_parameters": False,
        "dataloader_num_workers": 0,
        "logging_first_step": True,
    }


def owned_settings(use_gpu: bool) -> dict[str, Any]:
    """The OWNED fields' values (all but output_dir, which the caller names)."""
    return {"save_strategy": "steps", "save_total_limit": 1, "report_to": [], "use_cpu": not use_gpu}


# alignflow's values for TRL knobs: the embedded default's recipe (conf/pipeline.yaml lists the same values, each
# with its comment; tests/unit/test_config.py holds them equal). A profile's own knob wins; a knob in neither takes
# TRL's default. Defined here, not read from a YAML file, so that editing a profile never changes another's.
KNOBS: dict[str, Any] = {
    "beta": 0.1,
    "loss_type": ["sigmoid"],
    "loss_weights": None,
    "label_smoothing": 0.0,
    "precompute_ref_log_probs": True,
    "cpo_alpha": 1.0,
    "simpo_gamma": 0.5,
    "learning_rate": 2.0e-4,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 2,
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
    "load_in_4bit": False,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "use_bnb_nested_quant": False,
}
SFT_KNOBS: dict[str, Any] = {
    "learning_rate": 2.0e-4,
    "num_train_epochs": 1,
    "max_steps": -1,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.1,
    "completion_only_loss": True,
}


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _error(key: tuple[str, ...], value: Any, message: str, kind: str = "trl_value") -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=key, input=value)


def _typed(field: trl_fields.TrlField, owner: str, value: Any) -> Any:
    """`value` as the field's type; a single value where TRL takes a list is a one-item list (TRL's CLI and
    __post_init__ read `loss_type: ipo` and `lora_target_modules: all-linear` that way too)."""
    if field.name in ALSO_TAKES and isinstance(value, ALSO_TAKES[field.name]):
        return value
    adapter = _adapter(field.annotation)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        if not isinstance(value, list | tuple | dict):
            try:
                return adapter.validate_python([value])
            except ValidationError:
                pass
        reasons = "; ".join(dict.fromkeys(e["msg"] for e in exc.errors()))
        raise ValueError(f"{reasons} ({owner}.{field.name} is {field.source})") from None


def _declaration(key: str) -> trl_fields.TrlField:
    """A training knob's field: the first of PREFERENCE and ModelConfig that declares it (what `_checked` typed)."""
    return next(trl_fields.fields(c)[key] for c in (*PREFERENCE, "model") if key in trl_fields.fields(c))


def _checked(knobs: dict[str, Any], classes: tuple[str, ...]) -> dict[str, Any]:
    """The knobs typed by the first of `classes` that declares each; unknown, owned or mistyped keys raise
    one ValidationError naming every such key."""
    checked, errors = {}, []
    for key, value in knobs.items():
        owner = next((c for c in classes if key in trl_fields.fields(c)), None)
        if owner is None:
            errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
        elif key in OWNED:
            errors.append(_error((key,), value, "set by alignflow for every run, not a knob", "trl_owned"))
        else:
            try:
                checked[key] = _typed(trl_fields.fields(owner)[key], trl_fields.class_name(owner), value)
            except ValueError as exc:
                errors.append(_error((key,), value, str(exc)))
    if errors:
        raise ValidationError.from_exception_data("training", errors)
    return checked


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
    # None: exactly num_workers; after a lost node, training waits until the cluster has room for all of them
    # again. Set: Ray Train V2 elastic, between min_workers and num_workers: a restart after a lost node goes
    # on with the workers that fit (at least min_workers), and Ray grows the group again (another restart from
    # the last checkpoint) when it sees room, at most once a minute. The global batch changes with the size.
    min_workers: int | None = Field(
        None,
        ge=1,
        description="Elastic training: the fewest workers a restart may go on with (None: fixed num_workers).",
    )
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})

    @model_validator(mode="after")
    def _min_workers_within_num_workers(self) -> ScalingConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must be at most num_workers ({self.num_workers})")
        return self


class SFTStageConfig(Section):
    """An optional supervised stage before the preference stage: TRL SFTTrainer on the chosen responses.

    Its model becomes the preference stage's policy and, for DPO, its reference. Every key but
    `enabled` is an SFTConfig field. Knobs of the training section that SFTConfig declares with the
    same type (batch size, max_length, logging, checkpoints, seed, ...) carry over unless set here;
    LoRA and scaling are the training section's.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: bool = Field(False, description="Run SFT first (`sft -> dpo`); off: one preference stage.")

    @model_validator(mode="before")
    @classmethod
    def _embedded_knobs_first(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {**SFT_KNOBS, **data}

    @model_validator(mode="after")
    def _knobs_are_sft_config_fields(self) -> SFTStageConfig:
        self.__pydantic_extra__.update(_checked(self.knobs, ("sft",)))
        return self

    @property
    def knobs(self) -> dict[str, Any]:
        """The SFTConfig fields this section sets."""
        return dict(self.model_extra or {})


class TrainingConfig(Section):
    """alignflow's keys are declared below; every other key is a TRL knob (see the module's docstring)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    method: Literal["dpo", "orpo", "cpo", "simpo"] = Field(
        "dpo", description="dpo: TRL DPOTrainer; orpo, cpo, simpo: trl.experimental (no reference model)."
    )
    model_name_or_path: str = Field(
        BUILTIN_SMOLLM2,
        description="Base policy: `builtin:smollm2-135m-instruct` (a real instruct model, converted offline), "
        "`builtin:tiny-llama` (built from nothing: fast tests), or an HF folder or hub id.",
    )
    start_from: Literal["base", "champion"] = Field(
        "champion",
        description="The policy's starting point: the base model, or the registry's current champion (the base "
        "model while there is none): one round of iterative DPO per run. DPO's reference model is the starting "
        "point, so each round is anchored to the model it improves on.",
    )
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    storage: str | None = Field(
        None,
        description="Ray checkpoint storage, an fsspec URI (s3://, gs://, a shared path); None: the state directory.",
    )
    sft: SFTStageConfig = Field(
        default_factory=SFTStageConfig, description="Optional SFT stage on the chosen responses before `method`."
    )
    max_failures: int = Field(0, ge=-1, description="Ray FailureConfig: worker-group restarts allowed.")
    chat_template: ChatTemplate | None = Field(
        None,
        description="Jinja text, or a template file's path, applied in place of the base model's chat template "
        "wherever that is (generation, validation, training, evaluation, the registered model); None: the model's.",
    )

    EMBEDDED_KNOBS: ClassVar[dict[str, Any]] = KNOBS  # a section of another trainer (conf/reward_model.py) has its own

    @model_validator(mode="before")
    @classmethod
    def _embedded_knobs_first(cls, data: Any) -> Any:
        """alignflow's knob values (EMBEDDED_KNOBS) under this section's: a profile lists only what differs."""
        if not isinstance(data, dict):
            return data
        return {**cls.EMBEDDED_KNOBS, **data}

    @model_validator(mode="after")
    def _knobs_fit_trl_and_the_method(self) -> TrainingConfig:
        self.__pydantic_extra__.update(_checked(self.knobs, (*PREFERENCE, "model")))
        if self.knob("beta", float) <= 0:  # TRL takes 0, which leaves no preference signal
            raise ValidationError.from_exception_data(
                "training",
                [InitErrorDetails(type="greater_than", loc=("beta",), input=self.knobs.get("beta"), ctx={"gt": 0})],
            )
        losses = self.knob("loss_type", list)
        if self.method in ("dpo", "cpo"):
            known = CPO_LOSSES if self.method == "cpo" else DPO_LOSSES
            unknown = [name for name in losses if name not in known]
            if unknown:
                raise ValueError(f"loss_type {unknown} not one of {list(known)} for method {self.method}")
        if self.method == "cpo" and len(losses) > 1:
            raise ValueError("loss_type: cpo takes one loss type")
        quantized = self.knob("load_in_4bit", bool) or self.knob("load_in_8bit", bool)
        if quantized and not self.scaling.use_gpu:
            raise ValueError("load_in_4bit/load_in_8bit (QLoRA) need scaling.use_gpu=true")
        if quantized and not self.knob("use_peft", bool):
            raise ValueError("load_in_4bit/load_in_8bit train adapters only: set use_peft=true")
        self._fsdp_fits()
        if self.chat_template is not None and self.sft.knobs.get("chat_template_path") is not None:
            # TRL's would replace the template in the SFT stage only, and validation would count another's tokens.
            raise ValueError("sft.chat_template_path: set training.chat_template alone (every stage applies it)")
        return self

    def _fsdp_fits(self) -> None:
        """FSDP (`fsdp`, `fsdp_config`: TrainingArguments' own fields) with what alignflow can run, refused here rather
        than after generation: accelerate shards only on GPUs (on CPU it drops the plugin and trains plain DDP, every
        worker holding the whole model); alignflow merges LoRA adapters on rank 0, which a sharded model cannot; and
        transformers refuses both activation checkpointings at once when it builds the trainer."""
        fsdp = self.knobs.get("fsdp")
        if not fsdp:
            return
        if not self.scaling.use_gpu:
            raise ValueError(
                "fsdp needs training.scaling.use_gpu=true: accelerate shards only on GPUs (on CPU it would train "
                "unsharded DDP)"
            )
        if self.knob("use_peft", bool):
            raise ValueError(
                "fsdp with use_peft=true: alignflow merges LoRA adapters on one worker, which a sharded model cannot; "
                "LoRA leaves the weights frozen (an 8B model's bf16 copy fits one 80 GB GPU): set fsdp=false, or "
                "use_peft=false for a sharded full fine-tune (docs/training.md#what-fits)"
            )
        own = (self.knobs.get("fsdp_config") or {}) if isinstance(self.knobs.get("fsdp_config"), dict) else {}
        own = {k.removeprefix("fsdp_"): v for k, v in own.items()}
        if str(own.get("activation_checkpointing", "false")).lower() == "true" and activation_checkpointing(self):
            raise ValueError(
                "fsdp_config.activation_checkpointing and activation_checkpointing are both on: transformers "
                "refuses the pair; set activation_checkpointing=false to keep FSDP's own"
            )
        if str(own.get("state_dict_type", "FULL_STATE_DICT")) != "FULL_STATE_DICT":
            raise ValueError(
                "fsdp_config.state_dict_type: alignflow registers a plain model folder, saved from a full state dict "
                "(FULL_STATE_DICT, transformers' default)"
            )

    @property
    def chat_template_text(self) -> str | None:
        """The chat template's Jinja text, None for the model's own: what every tokenizer load applies."""
        return self.chat_template.text if self.chat_template else None

    # --- the knobs, as TRL will get them ------------------------------------------------------------

    @property
    def knobs(self) -> dict[str, Any]:
        """The TRL knobs this section sets (every key that is not alignflow's own), in the profile's order."""
        return dict(self.model_extra or {})

    @property
    def trl_class(self) -> str:
        """The trl_fields.CLASSES key of the method's config class (simpo is CPOConfig's `loss_type=simpo`)."""
        return "cpo" if self.method == "simpo" else self.method

    def knob(self, name: str, kind: type[T]) -> T:
        """The value of knob `name`: this section's, else TRL's default (the method's class, then the others)."""
        if name in self.knobs:
            value = self.knobs[name]
        else:
            owner = next(c for c in (self.trl_class, *PREFERENCE, "model") if name in trl_fields.fields(c))
            value = trl_fields.default(owner, name)
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise TypeError(f"training.{name} is {value!r}, not {kind.__name__}")
        return value

    def ignored(self) -> dict[str, Any]:
        """Knobs neither the method's class nor ModelConfig declares: the method ignores them."""
        used = {*trl_fields.fields(self.trl_class), *trl_fields.fields("model")}
        return {k: v for k, v in self.knobs.items() if k not in used}

    def trl_kwargs(self) -> dict[str, Any]:
        """The method's TRL config class's keyword arguments (but output_dir): alignflow's run defaults, the
        knobs the class declares on top, then the settings alignflow owns."""
        declared = trl_fields.fields(self.trl_class)
        knobs = {k: v for k, v in self.knobs.items() if k in declared}
        if self.method == "cpo":  # alignflow holds loss_type as DPO's list; CPOConfig takes one name
            knobs["loss_type"] = self.knob("loss_type", list)[0]
        elif self.method == "simpo":
            knobs["loss_type"] = "simpo"
        gpu = self.scaling.use_gpu
        # A copy: transformers' __post_init__ edits the dicts it is given (fsdp_config gains its defaults).
        return copy.deepcopy({**run_defaults(gpu), **knobs, **owned_settings(gpu)})

    def sft_kwargs(self) -> dict[str, Any]:
        """SFTConfig's keyword arguments (but output_dir): this section's knobs that SFTConfig declares with
        the same type (a DPO loss_type list is not SFT's loss_type), then training.sft's."""
        sft = trl_fields.fields("sft")
        shared = {k: v for k, v in self.knobs.items() if k in sft and sft[k].annotation == _declaration(k).annotation}
        gpu = self.scaling.use_gpu
        return copy.deepcopy({**run_defaults(gpu), **shared, **self.sft.knobs, **owned_settings(gpu)})

    def model_kwargs(self, model_path: str) -> dict[str, Any]:
        """trl.ModelConfig's keyword arguments: its knobs, the base model's path, dtype by device unless set."""
        declared = trl_fields.fields("model")
        return {
            "dtype": "bfloat16" if self.scaling.use_gpu else "float32",
            **{k: v for k, v in self.knobs.items() if k in declared},
            "model_name_or_path": model_path,
        }


def activation_checkpointing(training: TrainingConfig) -> bool:
    """activation_checkpointing, else its deprecated alias gradient_checkpointing (TRL's default: on); the TRL
    configs resolve one from the other in __post_init__, so the first field's declared default is None."""
    value = training.knob("activation_checkpointing", object)
    return bool(training.knob("gradient_checkpointing", object) if value is None else value)


def _rejected(config_class: type, kwargs: dict[str, Any], knobs: list[str]) -> tuple[str | None, str] | None:
    """None when `config_class(**kwargs)` passes TRL's checks, else (the knob that breaks it, TRL's message):
    the first of `knobs`, added in order to the rest, whose addition fails; None as the knob when the rest
    fails on its own."""

    def failure(given: dict[str, Any]) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config_class(**given)
        except Exception as exc:  # noqa: BLE001 - TRL and transformers raise ValueError, TypeError, ImportError
            return f"{type(exc).__name__}: {exc}"
        return None

    message = failure(kwargs)
    if message is None:
        return None
    applied = {k: v for k, v in kwargs.items() if k not in knobs}
    if failure(applied):
        return None, message
    for key in knobs:
        applied[key] = kwargs[key]
        if failure(applied):
            return key, message
    return None, message


def trl_problems(training: TrainingConfig) -> list[tuple[tuple[str, ...], Any, str]]:
    """TRL's own checks (its config classes' __post_init__) on the configs training will build, as
    (key path under the section, value, message). Imports TRL's config classes: seconds, the first time."""
    import tempfile

    import torch

    scratch = {"output_dir": tempfile.gettempdir()}
    if training.scaling.use_gpu and not torch.cuda.is_available():
        # A GPU profile loaded without a GPU (deploying from a laptop): TRL's device checks belong to the
        # machine that trains, so its values are checked as a CPU run's.
        scratch["use_cpu"] = True
    preference = {k: (k,) for k in training.knobs}
    sft = {**{k: (k,) for k in training.knobs}, **{k: ("sft", k) for k in training.sft.knobs}}
    checks = [
        (trl_fields.config_class(training.trl_class), {**training.trl_kwargs(), **scratch}, preference, ()),
        (trl_fields.config_class("model"), training.model_kwargs("model"), preference, ()),
        (trl_fields.config_class("sft"), {**training.sft_kwargs(), **scratch}, sft, ("sft",)),
    ]
    problems = []
    for config_class, kwargs, paths, section in checks:
        found = _rejected(config_class, kwargs, [k for k in kwargs if k in paths])
        if found:
            key, message = found
            problems.append(
                (paths[key] if key else section, kwargs.get(key), f"{config_class.__name__} rejects it: {message}")
            )
    return problems
