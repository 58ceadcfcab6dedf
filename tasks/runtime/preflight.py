"""Before any compute: does every service and model the profile names answer?

A cluster profile names a base model (a folder, a hub id or an s3:// prefix), LLM endpoints, a Ray
cluster, a tracking server and checkpoint storage. `preflight` checks each one the config names, all at
once with a short time-out (about 5 s in all), and returns what did not answer, in pipeline order, each
naming its config key; `alignflow run` exits 2 with the first (and lists the rest). The embedded default
names only built-in models, a local Ray and SQLite: nothing to reach, so it costs nothing.

Nothing here writes anything, and nothing heavy is imported (no ray, no mlflow): the state directory
is not even created when a check fails.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignflow.conf.base import BUILTIN_SMOLLM2, BUILTIN_TINY_MODEL, CHAMPION_MODEL
from alignflow.conf.schema import PipelineConfig
from alignflow.tasks.runtime.state import home

TIMEOUT = 5.0  # seconds per check; the checks run side by side
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Unreachable:
    """A part of the profile that did not answer: the config key, what it names, and why."""

    key: str
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.target}: {self.reason}"


def _http(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status `url` answers with (an error status is an answer too); raises when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=TIMEOUT):
        pass


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":") if ":" in address else (address, "", str(default_port))
    return host.strip("[]") or "127.0.0.1", int(port)


# ---- one check per kind of part: each returns None (it answers) or the reason it does not ----------------


def _check_builtin(name: str) -> str | None:
    from alignflow.tasks.runtime.smollm2 import BuiltinModelMissing, locate_gguf

    if name == BUILTIN_TINY_MODEL:
        return None
    if name != BUILTIN_SMOLLM2:
        return f"no such builtin model (there are {BUILTIN_TINY_MODEL} and {BUILTIN_SMOLLM2})"
    try:
        locate_gguf()
    except BuiltinModelMissing as exc:
        return str(exc)
    return None


def check_model(name: str, hub_cache: Path) -> str | None:
    """A built-in model, a local folder with config.json, an s3:// (fsspec) prefix, or a hub id in the
    user's hub cache `hub_cache` (offline, the default) or on the hub (HF_HUB_OFFLINE=0)."""
    if name == CHAMPION_MODEL:  # exported from the registry
        return None
    if name.startswith("builtin:"):  # built or converted here
        return _check_builtin(name)
    if "://" in name:
        return check_storage(name)
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists() or not HUB_ID.match(name):
        if not path.is_dir():
            return "no such folder on this machine (a path must exist on every node that loads it)"
        if not (path / "config.json").exists():
            return "the folder has no config.json (not a Hugging Face model folder)"
        return None
    cached = hub_cache / f"models--{name.replace('/', '--')}"
    if os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False"):
        if cached.is_dir():
            return None
        return f"a hub id, not in the offline cache {cached.parent} (download it there, or set HF_HUB_OFFLINE=0)"
    try:
        status = _http(f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/api/models/{name}")
    except OSError as exc:
        return f"the hub does not answer ({exc})"
    return None if status == 200 else f"the hub answers {status} for this id"


def check_endpoint(base_url: str | None, api_key_env: str | None) -> str | None:
    """An OpenAI-compatible server answers GET /models (any HTTP status counts as an answer but 5xx)."""
    url = (base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
    key = os.environ.get(api_key_env or "", "")
    try:
        status = _http(url, {"Authorization": f"Bearer {key}"} if key else None)
    except OSError as exc:
        return f"does not answer ({exc})"
    return f"answers {status}" if status >= 500 else None


def check_ray(address: str) -> str | None:
    """`auto` (RAY_ADDRESS, else the cluster this node started), `ray://host:port` or `host:port` answers."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        current = Path("/tmp/ray/ray_current_cluster")  # where `ray start` leaves the address on a node
        if not address and current.exists():
            address = current.read_text().strip()
        if not address or address == "auto":
            return "no Ray cluster on this node (RAY_ADDRESS is not set and no `ray start` ran here)"
    try:
        _tcp(*_host_port(address.removeprefix("ray://"), 10001 if address.startswith("ray://") else 6379))
    except (OSError, ValueError) as exc:
        return f"does not answer ({exc})"
    return None


def check_tracking(uri: str) -> str | None:
    """An MLflow server answers /health, and lets us in with MLFLOW_TRACKING_USERNAME/PASSWORD if it asks."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        if _http(f"{uri.rstrip('/')}/health") >= 500:
            return "answers /health with a server error"
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        auth = {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()} if user else None
        status = _http(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", auth)
    except OSError as exc:
        return f"does not answer ({exc})"
    if status in (401, 403):
        return f"answers {status}: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of it"
    return None


def check_storage(uri: str) -> str | None:
    """A remote fsspec URI (s3://bucket/prefix) whose bucket answers; local paths need nothing."""
    if "://" not in uri or uri.startswith("file://"):
        return None
    import fsspec

    options = {}
    if uri.startswith("s3://"):
        if not _s3_credentials():
            return (
                "no S3 credentials here (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web "
                "identity or ~/.aws; AWS_EC2_METADATA_DISABLED=false to ask the instance metadata)"
            )
        options = {
            "config_kwargs": {"connect_timeout": TIMEOUT, "read_timeout": TIMEOUT, "retries": {"max_attempts": 1}}
        }
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
        fs.ls(path.split("/", 1)[0])
    except ImportError as exc:
        return f"no filesystem for it here ({exc}; for s3:// pip install 'alignflow[stack]')"
    except Exception as exc:  # botocore/s3fs raise their own types for refused, denied and unknown
        return f"does not answer ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _s3_credentials() -> bool:
    """Credentials botocore finds without asking the instance-metadata address (which the check must not
    call unasked: off a cloud machine it is an address nobody serves)."""
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    )
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    return (
        any(os.environ.get(n) for n in names)
        or any(Path(f).expanduser().exists() for f in files)
        or os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false"
    )


# ---- all of them -----------------------------------------------------------------------------------------


def _dataset_id(path: str) -> bool:
    from alignflow.tasks.runtime.hf_datasets import is_dataset_id

    return is_dataset_id(path)


def check_dataset_id(source: str, cache: Path) -> str | None:
    """A dataset id must be in the HF datasets cache `cache`: nothing is downloaded."""
    from alignflow.tasks.runtime.hf_datasets import in_hf_cache

    return None if in_hf_cache(source, cache) else f"not in the HF datasets cache {cache} (nothing is downloaded)"


def _endpoint_part(key: str, llm) -> tuple[str, str, Callable[[], str | None]]:
    """(config key, target, check) of an OpenAI-compatible endpoint."""
    target = llm.base_url or "https://api.openai.com/v1"
    return f"{key}.base_url", target, lambda: check_endpoint(llm.base_url, llm.api_key_env)


def parts(config: PipelineConfig) -> list[tuple[str, str, Callable[[], str | None]]]:
    """(config key, target, check) for every part the config names, in pipeline order."""
    from huggingface_hub import constants  # the user's hub cache, as the HF libraries resolve it (HF_HOME's hub/)

    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home(config) / "hf" / "datasets")
    gen, found = config.generation, []
    paths = (
        ("generation.prompts", gen.prompts),
        ("generation.preference_data", gen.preference_data),
        ("evaluation.prompts", config.evaluation.prompts),
    )
    for key, path in paths:
        if key == "generation.preference_data" and path and _dataset_id(path):
            found.append((key, path, lambda p=path: check_dataset_id(p, datasets_cache)))  # read from the HF cache
            continue
        if path and not path.startswith("builtin:") and "://" not in path:
            found.append((key, path, lambda p=path: None if Path(p).expanduser().exists() else "no such file"))
    if not gen.preference_data:
        for key, llm in gen.llm_slots():
            if llm.provider == "openai":
                found.append(_endpoint_part(key, llm))
            else:
                found.append((f"{key}.model", llm.model, lambda m=llm.model: check_model(m, hub_cache)))
    model = config.training.model_name_or_path
    found.append(("training.model_name_or_path", model, lambda: check_model(model, hub_cache)))
    judges = config.evaluation.judges
    for key, judge in [(f"evaluation.judges[{i}]", j) for i, j in enumerate(judges)] or [
        ("evaluation.judge", config.evaluation.judge)
    ]:
        if judge.llm is not None and judge.llm.provider == "openai":  # the head-to-head's judge answers before training
            found.append(_endpoint_part(f"{key}.llm", judge.llm))
    if config.runtime.ray_address:
        found.append(("runtime.ray_address", config.runtime.ray_address, lambda: check_ray(config.runtime.ray_address)))
    if config.runtime.tracking_uri:
        found.append(
            ("runtime.tracking_uri", config.runtime.tracking_uri, lambda: check_tracking(config.runtime.tracking_uri))
        )
    if config.training.storage:
        found.append(("training.storage", config.training.storage, lambda: check_storage(config.training.storage)))
    return found


def preflight(config: PipelineConfig) -> list[Unreachable]:
    """Run every check side by side (daemon threads: a check that hangs past its time-out is left behind);
    what did not answer, in pipeline order. The same target named twice is checked once."""
    checks = parts(config)
    results: dict[int, str | None] = {}
    threads, seen = [], {}
    for index, (_key, target, check) in enumerate(checks):
        if target in seen:
            continue
        seen[target] = index

        def run(index=index, check=check) -> None:
            try:
                results[index] = check()
            except Exception as exc:
                results[index] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append((index, thread))
    deadline = time.monotonic() + TIMEOUT * 3
    for _index, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    found = []
    for key, target, _check in checks:
        index = seen[target]
        reason = results[index] if index in results else f"no answer within {TIMEOUT * 3:.0f}s"
        if reason:
            found.append(Unreachable(key, target, reason))
    return found
