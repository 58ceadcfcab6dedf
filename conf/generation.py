"""`generation`: prompt sources, generator LLMs (local or OpenAI-compatible endpoints), the judge, binarization."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from alignflow.conf.base import BUILTIN_PROMPTS, CHAMPION_MODEL, Section

ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
JUDGE_ASPECTS = ("overall-rating", "helpfulness", "honesty", "instruction-following", "truthfulness")


class LLMConfig(Section):
    """One LLM: a local transformers model, or any OpenAI-compatible endpoint (vLLM, TGI, hosted APIs).

    Both run through distilabel (TransformersLLM, OpenAILLM). An API key is never part of the
    config: `api_key_env` names the environment variable that holds it.
    """

    provider: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="transformers: a local model (on Ray actors with generation.resources); vllm: a local model "
        "served by vLLM inside those actors (GPU; vllm installed on the nodes: docs/generation.md#vllm); openai: an "
        "OpenAI-compatible endpoint.",
    )
    model: str = Field(
        CHAMPION_MODEL,
        min_length=1,
        validate_default=True,  # the default is the champion, which an endpoint cannot be asked for
        description="transformers: `registry:champion` (the current champion, else the base model: on-policy data "
        "for iterative DPO), a builtin model (`builtin:smollm2-135m-instruct`, `builtin:tiny-llama`) or a local HF "
        "model path; openai: the served model name (required: export the champion and serve it to use it there).",
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
    max_concurrency: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="openai: requests in flight at once to this endpoint (None: an equal share of "
        "generation.max_concurrency). Halved while the server answers 429/503 or times out, regrown as it recovers.",
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

    @field_validator("model")
    @classmethod
    def _endpoint_names_its_served_model(cls, model: str, info: ValidationInfo) -> str:
        # An endpoint answers with whatever model its server loaded, so `registry:champion` there would send
        # that literal name and generate with some other model (or fail mid-stage): stop before compute.
        if model == CHAMPION_MODEL and info.data.get("provider") == "openai":
            raise ValueError(
                f"{CHAMPION_MODEL} (also the default when model is not set) works only with provider: transformers; "
                "an endpoint serves whatever model its server loaded. To generate with the champion on an endpoint, "
                "export it with `alignflow export NAME@champion DIR`, serve that folder "
                "(`vllm serve DIR --served-model-name NAME`), then set model to the served model's name"
            )
        return model

    @model_validator(mode="after")
    def _endpoint_fields_need_openai(self) -> LLMConfig:
        # Checked here, not with a field pattern: a field error echoes its input, and what a user
        # pastes by mistake into api_key_env is usually the key itself.
        if self.api_key_env is not None and not re.fullmatch(ENV_VAR_NAME, self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _), never the key itself"
            )
        if self.is_local:
            given = [k for k in ("base_url", "api_key_env", "max_concurrency") if getattr(self, k) is not None]
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

    @property
    def is_local(self) -> bool:
        """A model this pipeline loads itself (transformers, vLLM), rather than an endpoint's."""
        return self.provider != "openai"


class GeneratorConfig(LLMConfig):
    """One model that writes candidate responses (a distilabel TextGeneration step)."""

    num_generations: int = Field(1, ge=1, le=16, description="Responses per prompt from this generator.")


def check_resources(resources: dict[str, float], key: str) -> None:
    """An actor's Ray resources: CPU, GPU and memory (bytes) only, none negative."""
    if unknown := sorted(set(resources) - {"CPU", "GPU", "memory"}):
        raise ValueError(f"{key}: {unknown} not among CPU, GPU, memory")
    if negative := sorted(k for k, v in resources.items() if v < 0):
        raise ValueError(f"{key}: {negative} below 0")


class JudgeConfig(Section):
    """Who rates the candidates: the offline scorer, an UltraFeedback-style LLM judge, or a reward model."""

    kind: Literal["offline", "ultrafeedback", "reward_model"] = Field(
        "offline",
        description="offline: deterministic reference-based scorer; ultrafeedback: an LLM (distilabel); "
        "reward_model: a sequence-classification reward model scoring each answer (RLHFlow/OpenRLHF iterative DPO).",
    )
    aspect: Literal[JUDGE_ASPECTS] = Field("overall-rating", description="UltraFeedback aspect the LLM rates on.")
    llm: LLMConfig | None = Field(None, description="The judge LLM (required for ultrafeedback).")
    model: str | None = Field(
        None,
        min_length=1,
        description="reward_model: a local reward model folder (AutoModelForSequenceClassification, one label, a "
        "chat template), or a registered one: `registry:NAME@ALIAS` (e.g. registry:alignflow-reward@champion, what "
        "`alignflow reward-model` trains) or `registry:NAME/VERSION`.",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="reward_model: answers scored per forward pass.")
    resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1},
        description="reward_model: the Ray resources of the actor that scores (e.g. {GPU: 1}: on a GPU, in bf16). "
        "In generation with generation.ray, the judge step's; in evaluation, its scoring actor's.",
    )
    parse_retries: int = Field(
        2, ge=0, le=10, description="Ask the judge again when its answer does not parse (then the row fails)."
    )
    retry_backoff: float = Field(
        1.0, ge=0.0, le=60.0, description="Seconds before the first re-ask, doubled each time."
    )

    @model_validator(mode="after")
    def _each_kind_its_model(self) -> JudgeConfig:
        if self.kind == "ultrafeedback" and self.llm is None:
            raise ValueError("judge.kind ultrafeedback needs judge.llm (provider, model, ...)")
        if self.kind == "reward_model":
            if self.model is None:
                raise ValueError(
                    "judge.kind reward_model needs judge.model: a reward model folder, or registry:NAME@champion "
                    "(train one with `alignflow reward-model`)"
                )
            if self.llm is not None:
                raise ValueError("judge.llm: a reward_model judge has no LLM (judge.model names the reward model)")
            if self.model == CHAMPION_MODEL:
                raise ValueError(
                    f"judge.model {CHAMPION_MODEL}: name the reward model, registry:NAME@champion "
                    "(the policy's champion is not a reward model)"
                )
        elif self.model is not None:
            raise ValueError(f"judge.model: only for kind reward_model (kind is {self.kind})")
        check_resources(self.resources, "judge.resources")
        return self

    @property
    def label(self) -> str:
        """The judge's name in reports: its kind, and its LLM or reward model."""
        named = self.llm.model if self.llm is not None else self.model
        return self.kind if named is None else f"{self.kind}:{named}"


# An UltraFeedback judge answers "#### Output for Text i / Rating: n / Rationale: ..." for every answer in one
# reply: ~10 tokens of header and a one-to-three-sentence rationale each. 64 tokens (an LLM's default here)
# cut the last ratings of four answers off, and a rating cut off is a row that fails to parse.
JUDGE_TOKENS_PER_ANSWER = 96
JUDGE_TOKENS_BASE = 32


def judge_shorthand(value: object) -> object:
    """`judge: offline` for `judge: {kind: offline}`, in generation and evaluation alike."""
    return {"kind": value} if isinstance(value, str) else value


def size_judge_budget(judge: JudgeConfig, answers: int) -> None:
    """Unless the profile sets it, an LLM judge's max_new_tokens fits a rating and rationale for each answer."""
    if judge.llm is not None and "max_new_tokens" not in judge.llm.model_fields_set:
        judge.llm.max_new_tokens = JUDGE_TOKENS_BASE + JUDGE_TOKENS_PER_ANSWER * answers


class GenerationConfig(Section):
    prompts: str = Field(
        BUILTIN_PROMPTS,
        description="`builtin:default`, a .jsonl/.parquet/.csv file, or a `datasets` folder (save_to_disk).",
    )
    prompt_column: str = Field("prompt", min_length=1, description="Column of the prompt source holding the prompt.")
    reference_column: str = Field(
        "reference", min_length=1, description="Column with a reference answer (offline judge), used when present."
    )
    max_prompts: int | None = Field(96, ge=1, description="Use N prompts of the set per run (None: all).")
    rotate_prompts: bool = Field(
        True,
        description="Each run takes the next max_prompts prompts (wrapping around the set): round k starts at "
        "k x max_prompts, k the versions registered so far, so each night's round trains on prompts the champion "
        "has not seen (disjoint prompt batches per iteration, as in iterative DPO). False: the first max_prompts.",
    )
    preference_data: str | None = Field(
        None,
        description="Bring your own pairs and skip generation: a .jsonl/.json/.parquet/.csv file or a `datasets` "
        "folder in a TRL preference format (standard, conversational, implicit prompt).",
    )
    preference_columns: dict[Literal["prompt", "chosen", "rejected", "system"], str] = Field(
        default_factory=dict,
        description="preference_data's columns when they are named otherwise: TRL's name -> the file's, e.g. "
        "{prompt: question, chosen: response_j, rejected: response_k}; `system` names a system-prompt column. "
        "Also read by `alignflow validate`.",
    )
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [  # the embedded default (conf/pipeline.yaml): 4 on-policy candidates per prompt
            GeneratorConfig(
                model=CHAMPION_MODEL, temperature=t, num_generations=2, max_new_tokens=48, repetition_penalty=1.0
            )
            for t in (0.7, 1.0)
        ],
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
        "rating step is 0.25; a reward model's scores are its rewards, so there a reward difference: 0.05 is a "
        "Bradley-Terry P(better) of 0.51); closer pairs are ties and are dropped. Equal scores never make a pair.",
    )
    min_success_rate: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Fail the stage when fewer prompts than this share were generated and judged (what was "
        "generated is kept; a re-run retries only the failed rows).",
    )
    input_batch_size: int = Field(16, ge=1, description="Rows per distilabel batch.")
    max_concurrency: int = Field(
        64,
        ge=1,
        le=4096,
        description="Endpoint requests in flight at once, all openai LLMs of the stage together: each gets an "
        "equal share, at most its own max_concurrency (what one LLM leaves goes to the others).",
    )
    ray: bool = Field(
        True,
        description="Run the distilabel pipeline's steps as Ray actors (runtime.ray_address: a local Ray, or the "
        "cluster), each local model on actors with generation.resources; false: processes on this machine.",
    )
    resources: dict[str, float] | None = Field(
        None,
        description="Ray resources of each actor of a local model (transformers, vllm: the generators and an "
        "UltraFeedback judge's LLM): {GPU: 1} loads it on the actor's GPU in bf16; without GPU, float32 on CPU with "
        "its CPUs as threads. memory: bytes (default: the model's estimate). null: an equal share of the largest "
        "node's CPUs for each local model.",
    )
    replicas: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Actors per local model, the prompts' batches dealt among them (each batch's sampling is seeded "
        "by its prompts, so which actor draws it changes nothing). null: 1 without GPU; with GPU, as many as the "
        "Ray cluster's GPUs hold, shared among the local models.",
    )

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_shorthand(cls, value: object) -> object:
        return judge_shorthand(value)

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            check_resources(value, "generation.resources")
        return value

    @model_validator(mode="after")
    def _at_least_two_candidates(self) -> GenerationConfig:
        if self.preference_data is None and sum(g.num_generations for g in self.generators) < 2:
            raise ValueError("generators must produce at least 2 candidates per prompt in total")
        return self

    @model_validator(mode="after")
    def _vllm_on_gpus(self) -> GenerationConfig:
        # vLLM's CPU backend is a build of its own; the wheel on PyPI serves on CUDA only.
        vllm = [key for key, llm in self.llm_slots() if llm.provider == "vllm"]
        if vllm and not self.on_gpu:
            raise ValueError(
                f"{vllm[0]}: provider vllm needs GPUs: set generation.resources={{GPU: 1}} (or provider: transformers "
                "on CPU)"
            )
        return self

    @model_validator(mode="after")
    def _judge_budget(self) -> GenerationConfig:
        size_judge_budget(self.judge, sum(g.num_generations for g in self.generators))
        return self

    @property
    def on_gpu(self) -> bool:
        """Whether the local models run on GPUs (bf16), by generation.resources."""
        return (self.resources or {}).get("GPU", 0) > 0

    def llm_slots(self) -> list[tuple[str, LLMConfig]]:
        """Every LLM of the stage with its config key: the generators, then the judge's LLM."""
        slots: list[tuple[str, LLMConfig]] = [(f"generation.generators.{i}", g) for i, g in enumerate(self.generators)]
        if self.judge.kind != "offline" and self.judge.llm is not None:
            slots.append(("generation.judge.llm", self.judge.llm))
        return slots
