"""Where a reward-model judge's weights are: a local folder, or a registered version copied into the state directory.

`judge.model` is a folder, or `registry:NAME@ALIAS` / `registry:NAME/VERSION` (the registry's syntax of
`alignflow export`). A registered version is resolved to its number once, at the start of a run, and downloaded
into `<models_dir>/reward/NAME-vVERSION` (once per version: a later run reads that copy), so a promotion of another
reward model during the run cannot change the judge half-way through.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from alignflow.conf.generation import JudgeConfig

REGISTRY_PREFIX = "registry:"


def is_registered(model: str) -> bool:
    return model.startswith(REGISTRY_PREFIX)


def reward_model_dir(model: str, tracking_uri: str, models_dir: Path) -> Path:
    """The local folder of `judge.model`. A folder must exist (FileNotFoundError naming it); a registry reference
    is resolved and downloaded (ExportRefused naming what is unknown and what the registry holds instead)."""
    if not is_registered(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"judge.model {model}: no reward model folder there (no config.json)")
        return folder.resolve()
    import mlflow

    from alignflow.tasks.registry.export import parse_reference, resolve
    from alignflow.tasks.registry.serving import download_model_dir

    found = resolve(tracking_uri, parse_reference(model.removeprefix(REGISTRY_PREFIX)))
    target = models_dir / "reward" / f"{found.name}-v{found.version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:  # downloaded beside the target and renamed into place: a crash leaves no half folder to read next time
        download_model_dir(f"models:/{found.name}/{found.version}", staging / "model").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def judge_model_dir(judge: JudgeConfig, tracking_uri: str, models_dir: Path) -> Path | None:
    """The reward model folder of a reward_model judge; None for every other kind."""
    if judge.kind != "reward_model" or judge.model is None:
        return None
    return reward_model_dir(judge.model, tracking_uri, models_dir)
