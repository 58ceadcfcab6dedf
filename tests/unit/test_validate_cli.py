"""`alignflow validate` and the token-length checks with the offline tiny model's chat template."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import SMALL
from typer.testing import CliRunner

from alignflow.conf.validation import ValidationConfig
from alignflow.flows.cli import app
from alignflow.tasks.validation.stage import validate_file, validate_pairs


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The offline tiny model's tokenizer (BPE + chat template) alone: seconds, not the model's minute."""
    from alignflow.tasks.runtime.tiny_model import corpus, train_tokenizer

    target = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus(), 512).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_token_lengths_follow_the_chat_template(tokenizer):
    rows = [
        {"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "It is not."},
        {"prompt": "Tell me a story.", "chosen": "Once upon a time " * 40, "rejected": "No."},
    ]
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), ValidationConfig(min_pairs=1, max_length=40), tokenizer)
    conv = [{"role": "user", "content": rows[0]["prompt"]}, {"role": "assistant", "content": rows[0]["chosen"]}]
    expected = len(
        tokenizer(tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    )
    assert quarantined["row"].tolist() == [1] and quarantined["reasons"].tolist() == [["too_long"]]
    tokens = report.tokens
    assert tokens.measured == 2 and tokens.too_long == 1 and tokens.truncated_fraction == 0.5
    assert tokens.longest > 40
    assert expected <= 40
    assert report.checks["length_bias"].detail["unit"] == "tokens"


def test_conversational_token_lengths(tokenizer):
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "word " * 80}],
        }
    ]
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), ValidationConfig(min_pairs=1, max_length=50), tokenizer)
    assert quarantined["reasons"].tolist() == [["too_long"]]
    assert report.tokens.truncated_fraction == 1.0


def write_pairs(path, n: int, **extra) -> None:
    path.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Question number {i}?", "chosen": f"A good answer {i}.", "rejected": f"Bad {i}.", **extra}
            )
            + "\n"
            for i in range(n)
        )
    )


def test_cli_passes_with_tokenizer_and_writes_report(tmp_path, tokenizer_dir):
    # The tokenizer comes from training.model_name_or_path (here a folder holding only a tokenizer).
    write_pairs(tmp_path / "pairs.jsonl", 30)
    report = tmp_path / "r" / "report.json"
    args = [*SMALL, f"training.model_name_or_path={tokenizer_dir}"]
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "pairs.jsonl"), "--report", str(report), *args])
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.output
    written = json.loads(report.read_text())
    assert written["valid"] == 30 and written["tokens"]["measured"] == 30
    assert set(written["files"]) == {"quarantine", "summary", "report", "train", "test"}
    assert (tmp_path / "r" / "pairs.validation" / "summary.md").exists()
    # The percentiles and the suggested max_length, in the file and on the screen (rich may wrap the lines).
    percentiles = written["tokens"]["percentiles"]
    assert (
        percentiles["p50"] <= percentiles["p95"] == percentiles["suggested_max_length"] <= written["tokens"]["longest"]
    )
    printed = " ".join(result.output.split())
    assert f"p95 {percentiles['p95']}, p99 {percentiles['p99']}" in printed
    assert f"max_length={percentiles['suggested_max_length']} would keep 95% of the pairs" in printed
    assert "would keep 95% of the pairs" in (tmp_path / "r" / "pairs.validation" / "summary.md").read_text()


def test_cli_gate_failure_exits_1(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", 3)
    result = CliRunner().invoke(
        app, ["validate", str(tmp_path / "pairs.jsonl"), "--no-tokenizer", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "gate failed" in result.output and "3 valid pairs < validation.min_pairs=20" in result.output


def test_cli_gate_is_configurable(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", 3)
    args = ["validate", str(tmp_path / "pairs.jsonl"), "--no-tokenizer", "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(app, [*args, "validation.min_pairs=3"]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "validation.min_pairs=0"])
    assert result.exit_code == 2 and "validation.min_pairs" in result.output


def test_cli_does_not_import_heavy_libraries(tmp_path):
    import subprocess
    import sys

    write_pairs(tmp_path / "pairs.jsonl", 25)
    code = (
        "import sys; from alignflow.flows.cli import main; sys.argv = ['alignflow', 'validate', "
        f"{str(tmp_path / 'pairs.jsonl')!r}, '--no-tokenizer', '--out', {str(tmp_path / 'o')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'prefect', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"ALIGNFLOW_HOME": str(tmp_path / "h")}
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_validate_file_reads_the_flows_pairs(tmp_path, pairs_frame):
    frame = pairs_frame.assign(score_chosen=0.8, score_rejected=0.2)
    frame.to_parquet(tmp_path / "pairs.parquet")
    report = validate_file(tmp_path / "pairs.parquet", ValidationConfig(min_pairs=4), tmp_path / "out")
    assert report.gate.passed and report.valid == len(frame)
    train = pd.read_parquet(report.files["train"])
    assert {"prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected"} <= set(train.columns)


def test_cli_builds_the_tiny_models_tokenizer_alone(tmp_path):
    # A fresh state directory: the token checks need the tokenizer, never the model (a minute to build).
    write_pairs(tmp_path / "pairs.jsonl", 25)
    args = ["validate", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "o"), *SMALL]
    result = CliRunner().invoke(app, [*args, f"runtime.home={tmp_path / 'home'}"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["tokens"]["measured"] == 25
    built = [p.name for p in (tmp_path / "home" / "models").iterdir()]
    assert len(built) == 1 and built[0].startswith("tiny-llama-tokenizer-")


def test_cli_reads_nothing_it_does_not_need_for_an_unreadable_file(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{not json\n')
    args = ["validate", str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "o"), *SMALL]
    result = CliRunner().invoke(app, [*args, f"runtime.home={tmp_path / 'home'}"])
    assert result.exit_code == 2 and "broken.jsonl:2: malformed JSON line" in result.output
    assert not (tmp_path / "home" / "models").exists()  # the file failed before any tokenizer was wanted
