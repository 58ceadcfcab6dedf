"""The served model: a pyfunc around the HF folder that answers with the completion alone.

A model version is logged as MLflow "models from code": MLflow copies this file into the model
and runs it to build the model when it is loaded, so serving needs mlflow, pydantic, torch and
transformers, not alignflow. The HF folder is a plain artifact (`artifacts/hf_model`), so
`download_model_dir` gets the weights and tokenizer back without a transformers-flavour round trip.

Payloads `mlflow models serve` accepts (POST /invocations, Content-Type: application/json):

    {"inputs": [{"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 64}]}
    {"inputs": [{"prompt": "Why is the sky blue?", "do_sample": true, "temperature": 0.7}]}
    {"inputs": ["Why is the sky blue?"], "params": {"max_new_tokens": 64}}
        -> {"predictions": ["<completion>", ...]}, one per input
    {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 64}
    {"prompt": "Why is the sky blue?", "max_new_tokens": 64}
        -> "<completion>" (MLflow's unwrapped chat/completions format: one request, one string)

A request is a `prompt` or a chat `messages` list; both go through the tokenizer's chat template
(a prompt as one user turn, the way the promotion gate evaluated the model) with the assistant
turn opened. Options are max_new_tokens, temperature, top_p, do_sample, bounded (`Request`), in
a request or in `params` (a request's own value wins); unset, they are the model's own
generation_config.json (read at logging). An unknown field, option, role or an out-of-range
value is refused with HTTP 400 naming it and listing what is allowed.

One hole is MLflow's, not the model's: extra top-level keys beside `inputs` (`{"inputs": [...],
"max_tokens": 5}`) are dropped by the scoring server before any model sees them; send options
inside the request or in `params`.
"""

from __future__ import annotations

import functools
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

HF_ARTIFACT = "hf_model"
# The generation options, and their defaults where the model's generation_config.json sets none.
DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "do_sample": False}
OPTIONS = tuple(DEFAULTS)
ROLES = ("system", "user", "assistant")
# Serving imports no vision packages: MLflow's requirement inference would try to.
REQUIREMENTS = ("mlflow", "pydantic", "torch", "transformers", "tokenizers")


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; allowed: {', '.join(ROLES)}")
        return role


class Request(BaseModel):
    """One generation request: a prompt or a chat, and bounded generation options."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[Message] | None = None
    # Optional (None: the served model's default) so the logged signature does not call them required.
    max_new_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float | None = Field(None, gt=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    do_sample: bool | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Request:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty")
        return self


def _refuse(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE is answered as HTTP 400 by the scoring server.
    return MlflowException.invalid_parameter_value(message)


def _check_names(given: dict, allowed: tuple[str, ...] | list[str], where: str) -> None:
    unknown = sorted(str(k) for k in given if k not in allowed)
    if unknown:
        raise _refuse(f"unknown {where}: {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _explain(exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        where = ".".join(map(str, e["loc"])) or "request"
        if e["type"] == "extra_forbidden" and where.startswith("messages."):
            problems.append(f"{where}: unknown field; a message has only role and content")
        else:
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def model_defaults(model_dir: Path) -> dict[str, Any]:
    """The options' defaults: the model's generation_config.json where it sets them within bounds."""
    import json

    path = Path(model_dir) / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    defaults = dict(DEFAULTS)
    for name in OPTIONS:
        if config.get(name) is not None:
            try:
                Request.model_validate({"prompt": "", name: config[name]})
                defaults[name] = config[name]
            except ValidationError:
                pass  # out of the served bounds (say max_new_tokens 4096): keep ours
    return defaults


def parse_requests(
    model_input: Any, params: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
) -> list[Request]:
    """Validated requests, every option set, from a list of requests (dicts, prompts, Request) or one dict.

    An option comes from the request, else `params`, else `defaults` (else DEFAULTS).

    Raises MlflowException (HTTP 400) naming unknown fields and options and listing the allowed ones.
    """
    _check_names(params or {}, OPTIONS, "params")
    params = {k: v for k, v in (params or {}).items() if v is not None}
    if isinstance(model_input, (dict, str, Request)):
        rows, label = [model_input], "request"
    elif isinstance(model_input, list) and model_input:
        rows, label = model_input, "inputs[{i}]"
    else:
        raise _refuse("expected a request or a non-empty list of requests (prompts or {prompt|messages, options})")
    requests = []
    for i, row in enumerate(rows):
        where = label.format(i=i)
        if isinstance(row, str):
            row = {"prompt": row}
        elif isinstance(row, Request):
            row = row.model_dump(exclude_unset=True)
        elif not isinstance(row, dict):
            raise _refuse(f"{where}: expected a prompt string or an object, got {type(row).__name__}")
        _check_names(row, list(Request.model_fields), f"field(s) in {where}")
        given = {k: v for k, v in row.items() if v is not None}  # null: not given
        try:
            requests.append(Request.model_validate({**DEFAULTS, **(defaults or {}), **params, **given}))
        except ValidationError as exc:
            raise _refuse(f"{where}: {_explain(exc)}") from None
    return requests


def _reject_unknown_params() -> None:
    """Make MLflow refuse, instead of drop, `params` this model does not know.

    MLflow's pyfunc drops unknown params before the model sees them, with only a server-side
    warning ("Unrecognized params ... are ignored"). Wrapping its check for schemas that are
    exactly ours keeps other models' behaviour; tests/unit/test_serving.py catches an MLflow upgrade
    that moves the function.
    """
    import logging

    enforce = getattr(mlflow.pyfunc, "_enforce_params_schema", None)
    if enforce is None:
        logging.getLogger(__name__).warning("mlflow.pyfunc._enforce_params_schema moved: unknown params are dropped")
        return
    if getattr(enforce, "strict_for_alignflow", False):
        return

    @functools.wraps(enforce)
    def strict(params, schema):
        if schema is not None and isinstance(params, dict) and {p.name for p in schema.params} == set(OPTIONS):
            _check_names(params, OPTIONS, "params")
        return enforce(params, schema)

    strict.strict_for_alignflow = True
    mlflow.pyfunc._enforce_params_schema = strict


class ServingModel(mlflow.pyfunc.PythonModel):
    """Completion-only text generation from the HF folder logged as the `hf_model` artifact."""

    # MLflow's own type-hint validation insists on a list, which would refuse the unwrapped
    # {"messages": [...]} chat payload; parse_requests validates every shape with clearer errors.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[HF_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.defaults = {**DEFAULTS, **(context.model_config or {}).get("defaults", {})}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        # The assistant turn ends at the first special token (end of turn, or a role marker that
        # would open the next one), so generation stops there and decoding drops it.
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        self.stop_ids = sorted(special | set(self.tokenizer.all_special_ids))
        _reject_unknown_params()

    def predict(self, context, model_input: list[Request], params: dict[str, Any] | None = None) -> list[str]:
        """Completions, one per request; a single request dict (the chat format) gets one string."""
        completions = [self.complete(r) for r in parse_requests(model_input, params, self.defaults)]
        return completions[0] if isinstance(model_input, dict) else completions

    # What MLflow's @pyfunc decorator would mark: this predict validates its own input (so MLflow
    # does not warn at logging that it is undecorated).
    predict._is_pyfunc = True

    def complete(self, request: Request) -> str:
        """The new tokens only, decoded without special tokens and stripped."""
        import torch

        messages = [m.model_dump() for m in request.messages or [Message(role="user", content=request.prompt)]]
        templated = bool(self.tokenizer.chat_template)
        if templated:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif request.messages is not None:
            raise _refuse("this model's tokenizer has no chat template: send a `prompt` instead of `messages`")
        else:
            text = request.prompt
        inputs = self.tokenizer(text, add_special_tokens=not templated, return_tensors="pt").to(self.device)
        sampling = (
            {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
            if request.do_sample
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=request.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids,
                **sampling,
            )
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def requirements() -> list[str]:
    """Pinned pip requirements of the served model (local build tags such as +cpu dropped)."""
    return [f"{p}=={pkg_version(p).split('+')[0]}" for p in REQUIREMENTS]


def log_serving_model(model_dir: Path, model_id: str | None = None, name: str = "model") -> ModelInfo:
    """Log `model_dir` (a HF folder) as the serving model (into the logged model `model_id` when given, else
    into a new one of the active MLflow run); its ModelInfo.

    Logging loads the model once and answers the input example, which MLflow stores with the
    signature (inferred from `Request`) and the params schema. The options' defaults are the
    model's own generation config (as a transformers pipeline would use), fixed at logging.
    """
    example = [{"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_new_tokens": 8}]
    defaults = model_defaults(model_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).resolve()),
        artifacts={HF_ARTIFACT: str(model_dir)},
        input_example=(example, defaults),
        model_config={"defaults": defaults},
        model_id=model_id,
        pip_requirements=requirements(),
    )


def download_model_dir(model_uri: str, dest: Path) -> Path:
    """The plain HF folder (weights, tokenizer) of a logged model, written at `dest`.

    Serving models give back their `hf_model` artifact as it was logged; versions logged
    before (transformers flavour) are loaded and saved again.
    """
    import shutil
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    flavors = Model.load(model_uri).flavors
    dest.parent.mkdir(parents=True, exist_ok=True)
    if "transformers" in flavors:
        parts = mlflow.transformers.load_model(model_uri, return_type="components")
        parts["model"].save_pretrained(dest)
        parts["tokenizer"].save_pretrained(dest)
        return dest
    artifact = flavors["python_function"]["artifacts"][HF_ARTIFACT]["path"]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        got = Path(download_artifacts(artifact_uri=f"{model_uri.rstrip('/')}/{artifact}", dst_path=tmp))
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(got), dest)
    return dest


def usage_markdown(name: str, version: str, port: int = 5001) -> str:
    """The model card's "Use" section: serve the version, and the payloads it answers."""
    url = f"http://127.0.0.1:{port}/invocations"
    chat = '{"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_new_tokens": 64}'
    batch = (
        '{"inputs": [{"messages": [{"role": "user", "content": "Why is the sky blue?"}]}, '
        '{"prompt": "Name a prime number.", "do_sample": true, "temperature": 0.7}], '
        '"params": {"max_new_tokens": 64}}'
    )
    return "\n".join(
        [
            "## Use",
            "",
            "```bash",
            "# in the project's virtualenv (the server runs its uvicorn), MLFLOW_TRACKING_URI set to the registry",
            f"mlflow models serve -m models:/{name}/{version} --env-manager local --port {port}",
            "# a chat: the answer is the completion alone, a JSON string",
            f"curl -s {url} -H 'Content-Type: application/json' -d '{chat}'",
            '# several requests: {"predictions": [completion, ...]}',
            f"curl -s {url} -H 'Content-Type: application/json' -d '{batch}'",
            "```",
            "",
            "A request is a `prompt` or a chat `messages` list ({role: system|user|assistant, content}); both",
            "go through the chat template, and the answer is the new text only. Options: `max_new_tokens`",
            "(1-1024), `do_sample`, `temperature` (0-2], `top_p` (0-1], in a request or in `params`; unset,",
            "the model's generation config. Anything else is refused with HTTP 400 naming it. In Python:",
            "`mlflow.pyfunc.load_model(uri).predict(...)` takes the same shapes.",
            "",
        ]
    )


# MLflow runs this file under a module name of its own to build the logged model (models from
# code); imported as part of alignflow, it registers nothing.
if not __name__.startswith("alignflow."):
    mlflow.models.set_model(ServingModel())
