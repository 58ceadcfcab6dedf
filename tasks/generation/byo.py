"""Bring-your-own preference data: the generate stage's output when `generation.preference_data` is set.

Any of TRL's preference forms is accepted as is (the validation package detects them):

    standard                        prompt, chosen, rejected strings
    conversational                  prompt, chosen, rejected lists of {role, content} messages
    standard_implicit_prompt        chosen, rejected strings that both start with the prompt
    conversational_implicit_prompt  chosen, rejected whole transcripts (HH-RLHF style)

and so are the layouts the validation package reads into them (tasks/validation/layouts.py:
the ultrafeedback_binarized layout, a system column, columns named otherwise through
`generation.preference_columns`). The source is a file (.jsonl, .json, .parquet, .csv; the text
ones gzipped too), a `datasets` folder (save_to_disk, or data files load_dataset reads), or a
dataset id read through `datasets.load_dataset` offline, from the HF cache:
`HuggingFaceH4/ultrafeedback_binarized:train_prefs` (`hf:` in front is optional; `:split`
picks a split, else `train`, else the only one).

The data is snapshotted into the stage's folder (a folder or a dataset id is written as parquet)
so the dataset a model was trained on never changes under its lineage tags. The validate
stage then checks it and writes the train/test split as explicit prompt/chosen/rejected
strings (the implicit prompt is the shared prefix, as TRL extracts it), which is what the
train stage feeds TRL: every form trains the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.runtime.hf_datasets import DATASET_ID, is_dataset_id
from alignflow.tasks.runtime.state import Ref, sha256_file
from alignflow.tasks.validation.fields import FORMATS, detect_format
from alignflow.tasks.validation.layouts import detect_layout
from alignflow.tasks.validation.readers import DatasetError, check_readable, compression, iter_chunks

KEY = "generation.preference_data"


class PreferenceDataError(ValueError):
    """The preference data cannot be used; the message names the file and what to do."""


def load_dataset_id(source: str, out_dir: Path) -> tuple[Path, str]:
    """Read a dataset id from the HF cache (offline: nothing is downloaded) into out_dir/pairs.parquet.

    Returns the parquet path and the one-line note for reports."""
    match = DATASET_ID.match(source)
    if match is None:
        raise PreferenceDataError(f"{source}: not a dataset id (owner/name[:split]) ({KEY})")
    name, split = match.groups()
    import datasets

    try:
        data = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        cache = datasets.config.HF_DATASETS_CACHE
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PreferenceDataError(
            f"{source}: not readable offline from the HF datasets cache {cache} ({first}); set HF_DATASETS_CACHE "
            f"to a cache that holds it (e.g. ~/.cache/huggingface/datasets), or save it to a file ({KEY})"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        data, split = _one_split(source, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "pairs.parquet"
    data.to_parquet(str(target))
    return target, f"read with datasets.load_dataset from the HF cache: {name}, split {split} ({len(data)} rows)"


def _one_split(source: str, data) -> tuple:
    if "train" in data:
        return data["train"], "train"
    if len(data) == 1:
        return next(iter(data.values())), next(iter(data))
    raise PreferenceDataError(
        f"{source}: splits {', '.join(data)} and no `train`: name one, e.g. {source}:{next(iter(data))} ({KEY})"
    )


def source_sha256(source: str | Path) -> str:
    """A content hash of the source before it is snapshotted (the generate stage's cache key)."""
    from alignflow.tasks.generation.prompts import source_sha256 as path_sha256

    if is_dataset_id(source):
        return _dataset_id_fingerprint(str(source))
    return path_sha256(Path(source).expanduser())


def _dataset_id_fingerprint(source: str) -> str:
    import hashlib

    import datasets

    name, split = DATASET_ID.match(source).groups()  # type: ignore[union-attr]
    try:
        data = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise FileNotFoundError(f"{source}: not in the HF datasets cache ({exc}) ({KEY})") from None
    parts = [data._fingerprint] if isinstance(data, datasets.Dataset) else [d._fingerprint for d in data.values()]
    return hashlib.sha256("\0".join([source, *parts]).encode()).hexdigest()


def snapshot(source: str | Path, out_dir: Path) -> Path:
    """Copy a dataset file, or write a `datasets` folder or dataset id as parquet, into `out_dir`."""
    if is_dataset_id(source):
        return load_dataset_id(str(source), out_dir)[0]
    source = Path(source).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target = out_dir / "pairs.parquet"
        _folder(source).to_parquet(str(target))
        return target
    try:
        kind = check_readable(source)
    except DatasetError as exc:
        raise PreferenceDataError(f"{exc} ({KEY})") from None
    # The snapshot keeps the reader's suffix (a .json holding JSON lines stays .json) and the compression.
    suffix = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "csv": ".csv"}[kind]
    target = out_dir / f"pairs{suffix}{'.gz' if compression(source) == 'gzip' else ''}"
    shutil.copyfile(source, target)
    return target


def _folder(source: Path):
    """A `datasets` save_to_disk folder, else the data files in it read by load_dataset (parquet, json, csv)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as first:
        try:
            data = datasets.load_dataset(str(source))
        except (FileNotFoundError, ValueError) as exc:
            raise PreferenceDataError(
                f"{source}: neither a `datasets` save_to_disk folder ({first}) nor a folder of data files "
                f"load_dataset reads ({exc}) ({KEY})"
            ) from None
    if isinstance(data, datasets.DatasetDict):
        data, _ = _one_split(str(source), data)
    return data


def import_preference_data(
    source: str | Path, out_dir: Path, columns: Mapping[str, str] | None = None
) -> tuple[Ref, GenerationReport]:
    """Snapshot the data and report its format and size; rows are checked by the validate stage.

    `columns` is generation.preference_columns (TRL's names -> the file's)."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = snapshot(source, out_dir)
    try:
        layout = detect_layout(iter_chunks(path), columns, str(source))
        fmt = detect_format(layout.apply(chunk) for chunk in iter_chunks(path))
        rows, names = 0, {}
        for chunk in iter_chunks(path):
            rows += chunk.n
            names.update(dict.fromkeys(chunk.columns))
    except DatasetError as exc:
        raise PreferenceDataError(f"{exc} ({KEY})") from None
    if fmt is None:
        raise PreferenceDataError(
            f"{source}: no row has chosen/rejected as strings or message lists; expected a TRL preference format "
            "(prompt/chosen/rejected, or chosen/rejected with an implicit prompt), or name the columns in "
            f"generation.preference_columns ({KEY})"
        )
    digest = sha256_file(path)
    report = GenerationReport(
        source=str(source),
        generated=False,
        format=FORMATS[fmt],
        rows=rows,
        prompts=rows,
        pairs=rows,
        columns=list(names),
        content_sha256=digest,
        seconds=round(time.perf_counter() - started, 2),
    )
    (out_dir / "report.json").write_text(json.dumps(report.model_dump(), indent=2))
    return Ref(uri=path.resolve().as_uri(), sha256=digest), report
