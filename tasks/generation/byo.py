"""Bring-your-own preference data: the generate stage's output when `generation.preference_data` is set.

Any of TRL's preference forms is accepted as is (the validation package detects them):

    standard                        prompt, chosen, rejected strings
    conversational                  prompt, chosen, rejected lists of {role, content} messages
    standard_implicit_prompt        chosen, rejected strings that both start with the prompt
    conversational_implicit_prompt  chosen, rejected whole transcripts (HH-RLHF style)

The file is snapshotted into the stage's folder (a `datasets` folder is written as parquet)
so the dataset a model was trained on never changes under its lineage tags. The validate
stage then checks it and writes the train/test split as explicit prompt/chosen/rejected
strings (the implicit prompt is the shared prefix, as TRL extracts it), which is what the
train stage feeds TRL: every form trains the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from alignflow.tasks.generation.report import GenerationReport
from alignflow.tasks.runtime.state import Ref, sha256_file
from alignflow.tasks.validation.fields import FORMATS, detect_format
from alignflow.tasks.validation.readers import DatasetError, check_readable, iter_chunks


class PreferenceDataError(ValueError):
    """The preference data cannot be used; the message names the file and what to do."""


def snapshot(source: str | Path, out_dir: Path) -> Path:
    """Copy a dataset file, or write a `datasets` folder as parquet, into `out_dir`."""
    source = Path(source).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        import datasets

        try:
            data = datasets.load_from_disk(str(source))
        except (FileNotFoundError, ValueError) as exc:
            raise PreferenceDataError(
                f"{source}: not a `datasets` folder written by save_to_disk ({exc}) (generation.preference_data)"
            ) from None
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data and len(data) != 1:
                raise PreferenceDataError(f"{source}: splits {list(data)} and no `train`: save one split")
            data = data["train"] if "train" in data else next(iter(data.values()))
        target = out_dir / "pairs.parquet"
        data.to_parquet(str(target))
        return target
    try:
        kind = check_readable(source)
    except DatasetError as exc:
        raise PreferenceDataError(f"{exc} (generation.preference_data)") from None
    target = out_dir / f"pairs{source.suffix.lower() if kind != 'jsonl' else '.jsonl'}"
    shutil.copyfile(source, target)
    return target


def import_preference_data(source: str | Path, out_dir: Path) -> tuple[Ref, GenerationReport]:
    """Snapshot the data and report its format and size; rows are checked by the validate stage."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = snapshot(source, out_dir)
    try:
        fmt = detect_format(iter_chunks(path))
        rows, columns = 0, {}
        for chunk in iter_chunks(path):
            rows += chunk.n
            columns.update(dict.fromkeys(chunk.columns))
    except DatasetError as exc:
        raise PreferenceDataError(f"{exc} (generation.preference_data)") from None
    if fmt is None:
        raise PreferenceDataError(
            f"{source}: no row has chosen/rejected as strings or message lists; expected a TRL preference format "
            "(prompt/chosen/rejected, or chosen/rejected with an implicit prompt) (generation.preference_data)"
        )
    digest = sha256_file(path)
    report = GenerationReport(
        source=str(source),
        generated=False,
        format=FORMATS[fmt],
        rows=rows,
        prompts=rows,
        pairs=rows,
        columns=list(columns),
        content_sha256=digest,
        seconds=round(time.perf_counter() - started, 2),
    )
    (out_dir / "report.json").write_text(json.dumps(report.model_dump(), indent=2))
    return Ref(uri=path.resolve().as_uri(), sha256=digest), report
