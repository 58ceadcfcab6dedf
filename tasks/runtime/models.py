"""Base models by name: the builtin ones are built or converted into the state directory on first use.

`builtin:tiny-llama` is built from nothing (fast tests); `builtin:smollm2-135m-instruct` is a real
pretrained instruct model converted from a registry package (the embedded default). Any other name
is a local HF folder or a hub id, passed through as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from alignflow.conf.base import BUILTIN_SMOLLM2, BUILTIN_TINY_MODEL
from alignflow.conf.training import TinyModelConfig

BUILD_FILE = "alignflow_build.json"  # written into every builtin model's folder: how it was made


def resolve_model(
    name_or_path: str, tiny: TinyModelConfig, models_dir: Path, progress: Callable[[str], None] | None = None
) -> Path | str:
    """A path or hub id transformers can load; a builtin model is made on first use, reported through `progress`."""
    if name_or_path == BUILTIN_TINY_MODEL:
        from alignflow.tasks.runtime.tiny_model import tiny_model_dir

        return tiny_model_dir(tiny, Path(models_dir), progress)
    if name_or_path == BUILTIN_SMOLLM2:
        from alignflow.tasks.runtime.smollm2 import ensure_smollm2

        return ensure_smollm2(Path(models_dir), progress)
    return name_or_path


def provenance(model_dir: str | Path) -> dict[str, str]:
    """Lineage tags of a builtin model's source (package, version, file, sha256); empty for any other folder."""
    build = Path(model_dir) / BUILD_FILE
    if not build.is_file():
        return {}
    made = json.loads(build.read_text())
    if not made.get("source"):  # built here from nothing: the settings are in the model's name and config
        return {"base_model_builder": str(made.get("builder", ""))}
    return {f"base_model_source_{k}": str(v) for k, v in made["source"].items()}
