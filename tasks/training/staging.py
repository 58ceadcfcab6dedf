"""Training inputs through remote storage: with `training.storage` an fsspec URI (s3://...), no Ray worker reads a
path on the driver's disk.

The driver uploads the train split and the base model folder under `<storage>/inputs/<sha256>/` (`stage`):
named by content, so an upload already there (its marker is written last) is skipped, and a re-run or a
second stage on the same inputs uploads nothing. Each worker downloads them into a folder of its own node
(`localize`), once per node and content, before it builds the trainer; its scratch files and reference
log-prob cache stay on that node too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignflow.tasks.training.job import WorkerInputs

INPUTS = "inputs"
MARKER = ".alignflow-complete"  # written last: a folder without it is an interrupted copy


def is_remote(storage_path: str) -> bool:
    """Storage the driver's paths do not reach on every node: any fsspec URI but a local file:// one."""
    return "://" in storage_path and not storage_path.startswith("file://")


def node_root() -> Path:
    """This node's own folder for fetched inputs, scratch files and caches (Ray workers see their node's /tmp)."""
    return Path(os.environ.get("ALIGNFLOW_NODE_DIR") or Path(tempfile.gettempdir()) / "alignflow-node")


def _files(local: Path) -> list[tuple[Path, str]]:
    """(file, path relative to `local`'s parent) for a file or every file of a folder."""
    if local.is_file():
        return [(local, local.name)]
    return [(f, f.relative_to(local.parent).as_posix()) for f in sorted(local.rglob("*")) if f.is_file()]


def upload(local: Path, sha256: str, storage_path: str) -> str:
    """`local` (a file or a folder) as `<storage>/inputs/<sha256>/<its name>`; returns that URI.

    Nothing is sent when the content is there already (its marker exists)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    base = f"{root.rstrip('/')}/{INPUTS}/{sha256}"
    marker = f"{base}/{MARKER}"
    if fs.exists(marker):  # the same content, perhaps under another name (a champion downloaded anew)
        name = fs.cat_file(marker).decode() or local.name
    else:
        for file, relative in _files(local):
            fs.put_file(str(file), f"{base}/{relative}")
        fs.pipe_file(marker, local.name.encode())
        name = local.name
    return fs.unstrip_protocol(f"{base}/{name}")


def fetch(uri: str, sha256: str, cache: Path) -> Path:
    """A local copy of the uploaded `uri` under `cache/<sha256>/`, downloaded once per `cache`: several workers
    of one node may ask at once, and the first complete copy wins (an atomic rename)."""
    import fsspec

    fs, remote = fsspec.core.url_to_fs(uri)
    name = remote.rstrip("/").rsplit("/", 1)[-1]
    done = cache / sha256
    if not (done / MARKER).exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=f".{sha256[:12]}-"))
        base = remote.rstrip("/").rsplit("/", 1)[0]
        files = [remote] if fs.isfile(remote) else fs.find(remote)
        if not files:  # never an empty folder, which a trainer would take for a hub id
            raise FileNotFoundError(f"staged training input {uri} is not in storage (sha256 {sha256})")
        for path in files:
            target = partial / path[len(base) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        (partial / MARKER).write_text(name)
        try:
            partial.rename(done)
        except OSError:  # another worker's copy got there first (or an interrupted one is in the way)
            if not (done / MARKER).exists():
                shutil.rmtree(done, ignore_errors=True)
                with contextlib.suppress(OSError):
                    partial.rename(done)
            shutil.rmtree(partial, ignore_errors=True)
    return done / name


def stage(inputs: WorkerInputs, storage_path: str, model_sha256: str) -> WorkerInputs:
    """The driver's WorkerInputs for workers that reach only `storage_path`: the train split and (when it is a
    local folder) the base model uploaded there, scratch and reference cache relative to each node's folder."""
    staged = {"train_path": upload(Path(inputs.train_path), inputs.train_sha256, storage_path)}
    if Path(inputs.model_path).is_dir():  # a hub id stays a hub id: each node resolves it itself
        staged["model_path"] = upload(Path(inputs.model_path), model_sha256, storage_path)
    shas = {"train_path": inputs.train_sha256, "model_path": model_sha256}
    return dataclasses.replace(
        inputs,
        **staged,
        staged=tuple((field, shas[field]) for field in staged),
        scratch_dir=f"scratch/{Path(inputs.scratch_dir).name}",
        reference_cache=f"ref_logps/{Path(inputs.reference_cache).name}" if inputs.reference_cache else None,
    )


def localize(inputs: WorkerInputs) -> WorkerInputs:
    """On a worker: staged inputs fetched to this node, relative folders put under this node's folder."""
    root = node_root()
    local = {field: str(fetch(getattr(inputs, field), sha, root / INPUTS)) for field, sha in inputs.staged}
    for field in ("scratch_dir", "reference_cache"):
        value = getattr(inputs, field)
        if value and not Path(value).is_absolute():
            local[field] = str(root / value)
    return dataclasses.replace(inputs, **local) if local else inputs
