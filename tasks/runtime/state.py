"""The state directory and the references stages hand each other.

Everything a run writes lives under one directory (`.alignflow/` or $ALIGNFLOW_HOME):
MLflow's database and artifacts, Ray storage, datasets, models, Prefect's results.
Stages pass `Ref`s (URI + content hash), never large objects, so any stage can run on
another machine that sees the same storage.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from urllib.parse import unquote

import fsspec
from pydantic import BaseModel

from alignflow.conf.schema import PipelineConfig


class Ref(BaseModel):
    """A stage output: where it is and what it holds."""

    uri: str
    sha256: str

    @property
    def path(self) -> Path:
        """Local path of a `file://` or plain URI (the embedded default's storage). A `file://` URI is
        percent-encoded (Path.as_uri writes `+` as %2B, as in a grid recipe's `loss_type=sigmoid+sft`)."""
        if self.uri.startswith("file://"):
            return Path(unquote(self.uri.removeprefix("file://")))
        return Path(self.uri)

    @property
    def loadable(self) -> str:
        """What from_pretrained takes: the local path of a `file://` URI, else the URI itself (a hub id)."""
        return str(self.path) if self.uri.startswith("file://") else self.uri


def home(config: PipelineConfig | None = None) -> Path:
    configured = config.runtime.home if config else None
    root = configured or os.environ.get("ALIGNFLOW_HOME") or ".alignflow"
    return Path(root).expanduser().resolve()


def tracking_uri(config: PipelineConfig) -> str:
    return config.runtime.tracking_uri or f"sqlite:///{home(config) / 'mlflow.db'}"


def artifact_root(config: PipelineConfig) -> str:
    return (home(config) / "mlartifacts").as_uri()


def configure_environment(config: PipelineConfig) -> Path:
    """Point every library's caches and stores into the state directory.

    Must run before prefect, mlflow, datasets or transformers are imported: several read
    these variables at import time.
    """
    root = home(config)
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "ALIGNFLOW_HOME": str(root),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect" / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",  # stage starts and ends are the run's progress lines
        # The temporary API a run without a server starts takes 8-15 s here, and over Prefect's 20 s default
        # on a busy 2-core machine ("Timed out while attempting to connect to ephemeral Prefect API server").
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_TRACKING_URI": tracking_uri(config),
        # HF_HOME stays the user's: models already in ~/.cache/huggingface (or their HF_HOME) are found, and
        # read only (offline, nothing is downloaded into it). What the HF libraries write goes here instead:
        # datasets' Arrow caches and remote code's modules.
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "HF_MODULES_CACHE": str(root / "hf" / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DISTILABEL_CACHE_DIR": str(root / "distilabel"),
        "DISTILABEL_LOG_LEVEL": "WARNING",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_TRAIN_V2_ENABLED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # Ray Train routes print() to a logger; dill (datasets' hashing) then leaks
        # disassembly it meant to capture from stdout into the console.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # How often Ray Train's controller collects worker reports (default 2 s); each
        # checkpoint waits for it (tasks/train.py), so a shorter poll costs less per save.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # distilabel 1.5.3 declares fields that pydantic 2.14 warns about in every step process.
        "PYTHONWARNINGS": "ignore::Warning:pydantic._internal._generate_schema",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module="pydantic._internal._generate_schema")  # this process too
    return root


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with fsspec.open(str(path), "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: str | Path) -> str:
    """Hash of a directory's files (names and contents), order-independent of the walk."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
