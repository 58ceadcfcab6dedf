"""Remote storage: the train split and the base model reach the workers through it, never a driver path.

fsspec's memory:// filesystem stands in for S3; it lives in this process, so the staging functions are called
directly (a Ray worker in another process could not see it).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from alignflow.conf.loader import load_config
from alignflow.tasks.training import staging
from alignflow.tasks.training.job import WorkerInputs


@pytest.fixture
def storage() -> str:
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/checkpoints"


@pytest.fixture
def driver_files(tmp_path) -> tuple[Path, Path]:
    model = tmp_path / "driver" / "models" / "base"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    train = tmp_path / "driver" / "datasets" / "train.parquet"
    train.parent.mkdir()
    train.write_bytes(b"PAR1 rows")
    return model, train


def _inputs(model: Path, train: Path, tmp_path: Path) -> WorkerInputs:
    return WorkerInputs(
        training=load_config().training,
        stage="preference",
        model_path=str(model),
        train_path=str(train),
        scratch_dir=str(tmp_path / "driver" / "scratch" / "run-1"),
        tracking_uri="sqlite:///x.db",
        run_id=None,
        reference_cache=str(tmp_path / "driver" / "ref_logps" / "abc123"),
        train_sha256="t" * 64,
    )


def test_only_remote_storage_is_staged():
    assert staging.is_remote("s3://alignflow/checkpoints")
    assert staging.is_remote("memory://b/c")
    assert not staging.is_remote("/data/alignflow/ray")
    assert not staging.is_remote("file:///data/alignflow/ray")


def test_workers_get_inputs_from_storage_not_the_driver_disk(storage, driver_files, tmp_path, monkeypatch):
    model, train = driver_files
    driver = tmp_path / "driver"
    staged = staging.stage(_inputs(model, train, tmp_path), storage, "m" * 64)

    # What crosses to the workers names the storage only.
    for value in (staged.model_path, staged.train_path):
        assert value.startswith("memory://") and "/inputs/" in value
    assert str(driver) not in repr(staged)
    assert dict(staged.staged) == {"train_path": "t" * 64, "model_path": "m" * 64}

    # A worker on another node: its own folder; the driver's files are gone from its view.
    node = tmp_path / "node2"
    monkeypatch.setenv("ALIGNFLOW_NODE_DIR", str(node))
    moved = driver.rename(tmp_path / "elsewhere")
    local = staging.localize(staged)
    assert Path(local.model_path).is_relative_to(node) and Path(local.train_path).is_relative_to(node)
    assert (Path(local.model_path) / "config.json").read_text() == '{"model_type": "llama"}'
    assert (Path(local.model_path) / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert Path(local.train_path).read_bytes() == b"PAR1 rows"
    assert local.scratch_dir == str(node / "scratch" / "run-1")
    assert local.reference_cache == str(node / "ref_logps" / "abc123")
    assert moved.exists()


def test_uploads_and_downloads_happen_once_per_content(storage, driver_files, tmp_path, monkeypatch):
    model, train = driver_files
    first = staging.upload(model, "m" * 64, storage)
    puts = []
    fs, _ = fsspec.core.url_to_fs(storage)
    monkeypatch.setattr(type(fs), "put_file", lambda self, *a, **k: puts.append(a))
    assert staging.upload(model, "m" * 64, storage) == first  # already there: nothing sent
    assert not puts
    monkeypatch.undo()

    cache = tmp_path / "node" / "inputs"
    copy = staging.fetch(first, "m" * 64, cache)
    fs.rm(fs._strip_protocol(first), recursive=True)  # gone from storage: the node's copy is used
    assert staging.fetch(first, "m" * 64, cache) == copy
    assert sorted(p.name for p in copy.rglob("*") if p.is_file()) == ["config.json", "weights.bin"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no partial copy left behind


def test_an_interrupted_upload_is_sent_again(storage, driver_files):
    model, _ = driver_files
    fs, root = fsspec.core.url_to_fs(storage)
    fs.pipe_file(f"{root}/inputs/{'m' * 64}/base/config.json", b"half")  # no marker: an interrupted copy
    uri = staging.upload(model, "m" * 64, storage)
    assert fs.cat_file(fs._strip_protocol(uri) + "/config.json") == b'{"model_type": "llama"}'


def test_the_same_content_under_another_name_is_the_first_upload(storage, driver_files, tmp_path):
    """Seen on the stack under load: a champion model downloaded into a folder of another name had the content
    of an earlier upload; the upload was skipped and the returned path did not exist, so the worker got an
    empty folder and transformers took the path for a hub id."""
    model, _ = driver_files
    first = staging.upload(model, "m" * 64, storage)
    renamed = tmp_path / "elsewhere" / "73852471"
    renamed.parent.mkdir()
    model.rename(renamed)
    assert staging.upload(renamed, "m" * 64, storage) == first
    copy = staging.fetch(first, "m" * 64, tmp_path / "node")
    assert sorted(p.name for p in copy.rglob("*") if p.is_file()) == ["config.json", "weights.bin"]
    with pytest.raises(FileNotFoundError, match="not in storage"):
        staging.fetch(first.replace("m" * 64, "x" * 64), "x" * 64, tmp_path / "node")
