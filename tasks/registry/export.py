"""`alignflow export`: a registered model version as a plain Hugging Face folder for serving engines.

A version's model is the serving pyfunc around a plain HF folder (serving.py), already merged:
training merges LoRA adapters before it registers (tasks/training/recipe.py `save_final`). So an
export resolves `NAME@ALIAS` or `NAME/VERSION` to one version, downloads that folder, checks that
it is a model a serving engine loads (config, weights, tokenizer), adds generation_config.json where
it is missing (vLLM reads its sampling defaults there), records where it came from
(`alignflow-export.json`) and moves it into place with one rename: a failed export leaves no half
folder. `vllm serve DIR`, TGI (`--model-id DIR`) and `AutoModelForCausalLM.from_pretrained(DIR)`
read it as it is. mlflow is imported only when the registry is asked, so usage errors answer at once.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from alignflow.tasks.registry import promotion
from alignflow.tasks.registry.promotion import CHAMPION, LOCK_SUFFIX
from alignflow.tasks.registry.tracking import mlflow_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

REFERENCE_SYNTAX = "NAME@ALIAS (e.g. NAME@champion), NAME/VERSION (e.g. NAME/3), or NAME alone (its champion)"
EXPORT_RECORD = "alignflow-export.json"  # which version this folder is: a serving host compares it with the champion
WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class ExportRefused(ValueError):
    """The reference or the destination cannot be used: a usage error, and nothing was written."""


class ExportFailed(RuntimeError):
    """The version's model is not a folder a serving engine loads; nothing was written."""


@dataclass(frozen=True)
class Reference:
    """One registered version, by alias or by number."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    name: str
    version: str
    aliases: list[str]
    path: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (name, bytes), the folder's files
    chat_template: bool = True


def parse_reference(text: str) -> Reference:
    """`NAME@ALIAS`, `NAME/VERSION` or `NAME` (its champion), with or without MLflow's `models:/` prefix."""
    ref = text.strip().removeprefix("models:/")
    name, slash, version = ref.partition("/")
    if slash:
        if not name or not version.isdigit() or int(version) < 1:
            raise ExportRefused(f"{text!r}: the version after / must be a number; expected {REFERENCE_SYNTAX}")
        return Reference(name, version=str(int(version)))
    name, at, alias = ref.rpartition("@")
    if not at:
        name, alias = ref, CHAMPION
    if not name or not alias:
        raise ExportRefused(f"{text!r}: expected {REFERENCE_SYNTAX}")
    return Reference(name, alias=alias)


def check_destination(dest: Path) -> None:
    """Refuse a destination that holds anything: an export never mixes its files with others."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        kind = "folder is not empty" if dest.is_dir() else "is a file"
        raise ExportRefused(
            f"{dest}: {kind}; export writes a new folder. Name a new DIR (e.g. one per version: "
            f"{dest.name}-v<VERSION>) or remove this one first"
        )


def _shown(uri: str) -> str:
    """The tracking URI as an error may print it: without a user:password@ part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def resolve(tracking_uri: str, ref: Reference) -> ModelVersion:
    """The version `ref` names; ExportRefused naming what is unknown and what exists instead."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    model = promotion.registered_model(client, ref.name)
    if model is None:
        names = sorted(m.name for m in client.search_registered_models() if not m.name.endswith(LOCK_SUFFIX))
        raise ExportRefused(
            f"no registered model {ref.name!r} in the registry at {_shown(tracking_uri)} "
            f"(registered: {', '.join(names) or 'none'}); check the name, or pass --tracking-uri/--config "
            "for the registry that holds it"
        )
    aliases = dict(model.aliases or {})
    version = ref.version or aliases.get(ref.alias or "")
    if version is None:
        held = ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
        hint = f"; for version {ref.alias} write {ref.name}/{ref.alias}" if (ref.alias or "").isdigit() else ""
        raise ExportRefused(
            f"{ref.name} has no alias @{ref.alias} (its aliases: {held}){hint}; "
            f"`alignflow history {ref.name}` lists every version"
        )
    try:
        return client.get_model_version(ref.name, str(version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # the registry failed: not a usage error
            raise
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{ref.name}'"))
        raise ExportRefused(
            f"{ref.name} has no version {version} (versions: {', '.join(map(str, numbers)) or 'none'}); "
            f"`alignflow history {ref.name}` lists them with their gate outcome"
        ) from None


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(p), None) for p in patterns)


def _chat_template(folder: Path) -> bool:
    """Does the tokenizer carry a chat template (transformers 5 writes chat_template.jinja, older ones a key)?"""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def complete_folder(folder: Path) -> bool:
    """Check `folder` is a loadable causal LM and write generation_config.json when it has none;
    whether its tokenizer has a chat template. ExportFailed naming what is missing."""
    missing = [
        what
        for what, present in (
            ("config.json", (folder / "config.json").is_file()),
            (f"weights ({' or '.join(WEIGHTS)})", _has(folder, WEIGHTS)),
            (f"tokenizer files ({', '.join(TOKENIZER)})", _has(folder, TOKENIZER)),
        )
        if not present
    ]
    if missing:
        raise ExportFailed(f"the registered model folder has no {' and no '.join(missing)}: not a loadable HF model")
    if not (folder / "generation_config.json").is_file():
        # What transformers derives on load (bos/eos/pad from config.json), written down for engines that only read.
        from transformers import AutoConfig, GenerationConfig

        GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return _chat_template(folder)


def _record(found: ModelVersion, ref: Reference, aliases: list[str]) -> dict[str, object]:
    return {
        "name": found.name,
        "version": str(found.version),
        "reference": str(ref),
        "aliases": aliases,
        "run_id": found.run_id,
        "source": found.source,
        "model_sha256": found.tags.get("model_sha256"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_by": promotion.whoami(),
    }


def export_version(tracking_uri: str, reference: str, dest: Path) -> Exported:
    """Write the version `reference` names as a plain HF folder at `dest` (new, or an empty folder).

    The files are assembled in a hidden folder beside `dest` and renamed into place at the end;
    on any failure that folder is removed and `dest` is left as it was. The alias is resolved to
    its version once, so a promotion during the download cannot mix two versions.
    """
    import mlflow

    from alignflow.tasks.registry.serving import download_model_dir

    ref = parse_reference(reference)
    dest = dest.expanduser().absolute()
    check_destination(dest)
    found = resolve(tracking_uri, ref)
    version = str(found.version)
    aliases = sorted(found.aliases or [])
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
    try:
        mlflow.set_tracking_uri(tracking_uri)
        folder = download_model_dir(f"models:/{ref.name}/{version}", staging / "model")
        chat_template = complete_folder(folder)
        (folder / EXPORT_RECORD).write_text(json.dumps(_record(found, ref, aliases), indent=2) + "\n")
        check_destination(dest)  # again: something may have been written there during the download
        if dest.is_dir():
            dest.rmdir()
        folder.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted((str(p.relative_to(dest)), p.stat().st_size) for p in dest.rglob("*") if p.is_file())
    return Exported(ref.name, version, aliases, dest, files, chat_template)
