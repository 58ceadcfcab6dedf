"""Bring-your-own preference data: the four TRL forms (and a `datasets` folder) skip generation,
pass validation into explicit prompt/chosen/rejected strings, and train with TRL."""

from __future__ import annotations

import json

import pytest
from conftest import small_config

from alignflow.tasks.generation.byo import PreferenceDataError, import_preference_data
from alignflow.tasks.generation.prompts import load_prompts
from alignflow.tasks.validation.readers import read_pairs
from alignflow.tasks.validation.stage import validate_file

ROWS = load_prompts(max_prompts=12)


def _bad(text: str) -> str:
    return " ".join(text.split()[::-1][:10])


def records(form: str) -> list[dict]:
    out = []
    for r in ROWS:
        q, good, bad = r["prompt"], r["reference"], _bad(r["reference"])
        if form == "standard":
            out.append({"prompt": q, "chosen": good, "rejected": bad})
        elif form == "conversational":
            out.append(
                {
                    "prompt": [{"role": "user", "content": q}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
        elif form == "standard_implicit_prompt":  # HH-RLHF: whole transcripts
            out.append(
                {"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"}
            )
        else:
            user = {"role": "user", "content": q}
            out.append(
                {
                    "chosen": [user, {"role": "assistant", "content": good}],
                    "rejected": [user, {"role": "assistant", "content": bad}],
                }
            )
    return out


FORMS = ["standard", "conversational", "standard_implicit_prompt", "conversational_implicit_prompt"]


@pytest.mark.parametrize("form", FORMS)
def test_each_form_is_imported_and_validated_into_explicit_strings(form, tmp_path):
    source = tmp_path / f"{form}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records(form)))
    ref, report = import_preference_data(source, tmp_path / "stage")
    assert report.format == form and report.rows == len(ROWS) and not report.generated
    assert ref.path.read_bytes() == source.read_bytes()  # a snapshot: later edits of the source change nothing

    result = validate_file(ref.path, small_config().validation, tmp_path / "validation")
    assert result.gate.passed and result.valid == len(ROWS)
    train = read_pairs(result.files["train"])
    assert all(isinstance(train[c][0], str) for c in ("prompt", "chosen", "rejected"))
    by_prompt = {r["prompt"]: r for r in ROWS}
    for row in train.to_dict("records"):
        # The implicit prompt is the shared prefix; what TRL trains on is the same question and answers.
        question = row["prompt"].removeprefix("user: ").removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")
        expected = by_prompt[question.strip()]
        assert row["chosen"].strip().removeprefix("assistant: ") == expected["reference"]


def test_datasets_folder_and_training_on_an_implicit_prompt_split(tmp_path, tiny_model_path):
    import datasets

    from alignflow.tasks.training.recipe import build_trainer

    folder = tmp_path / "hh"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records("conversational_implicit_prompt"))}).save_to_disk(
        str(folder)
    )
    ref, report = import_preference_data(folder, tmp_path / "stage")
    assert ref.path.suffix == ".parquet" and report.format == "conversational_implicit_prompt"
    result = validate_file(ref.path, small_config().validation, tmp_path / "validation")
    assert result.gate.passed

    training = small_config("training.max_steps=1", "training.per_device_train_batch_size=2").training
    trainer, _ = build_trainer(training, str(tiny_model_path), result.files["train"], str(tmp_path / "trl"))
    assert trainer.train().global_step == 1


def test_unusable_data_names_the_file_and_the_key(tmp_path):
    source = tmp_path / "notes.jsonl"
    source.write_text(json.dumps({"text": "no pairs here"}) + "\n")
    with pytest.raises(PreferenceDataError, match="generation.preference_data") as info:
        import_preference_data(source, tmp_path / "stage")
    assert str(source) in str(info.value)
    with pytest.raises(PreferenceDataError, match="no such file"):
        import_preference_data(tmp_path / "missing.jsonl", tmp_path / "stage")
