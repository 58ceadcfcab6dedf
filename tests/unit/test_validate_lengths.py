"""Token-length percentiles and the suggested max_length of the validation report (issue 30, item 9)."""

from __future__ import annotations

import pandas as pd
import pytest

from alignflow.conf.validation import ValidationConfig
from alignflow.tasks.validation.outputs import summary_markdown
from alignflow.tasks.validation.report import TokenPercentiles, length_lines, length_percentiles
from alignflow.tasks.validation.stage import validate_pairs


class WordTokenizer:
    """One token per whitespace-separated word, a chat template that joins the contents with spaces: a pair's
    length is the words of its prompt plus its longer response, known in advance."""

    chat_template = None  # no skeleton: every conversation through apply_chat_template
    bos_token = None

    def apply_chat_template(self, conversations: list[list[dict]], tokenize: bool = False) -> list[str]:
        return [" ".join(m["content"] for m in conversation) for conversation in conversations]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [text.split() for text in texts]}


def test_one_pair_of_each_length_gives_the_nearest_ranks():
    pct = length_percentiles({length: 1 for length in range(1, 101)}, max_length=80)
    assert pct == TokenPercentiles(p50=50, p90=90, p95=95, p99=99, suggested_max_length=95, too_long_fraction=0.2)


def test_the_suggestion_keeps_95_percent_and_no_less():
    # 94 short pairs and 6 long ones: 94% is not 95%, so keeping 95% needs the long pairs' length.
    pct = length_percentiles({10: 94, 500: 6}, max_length=256)
    assert (pct.p50, pct.p90, pct.p95, pct.p99) == (10, 10, 500, 500)
    assert pct.suggested_max_length == 500 and pct.too_long_fraction == 0.06
    # 95 short pairs: they are 95% already, and the suggestion may be below the current setting.
    pct = length_percentiles({10: 95, 500: 5}, max_length=256)
    assert pct.suggested_max_length == 10 and pct.p99 == 500 and pct.too_long_fraction == 0.05


def test_exact_ranks_where_floats_would_miss():
    # 0.95 * 20 is 18.999... in floats; the 19th of 20 pairs is the 95th percentile.
    pct = length_percentiles({length: 1 for length in range(1, 21)}, max_length=256)
    assert (pct.p50, pct.p90, pct.p95, pct.p99) == (10, 18, 19, 20)
    assert pct.too_long_fraction == 0.0


def test_nothing_measured_gives_no_percentiles():
    assert length_percentiles({}, max_length=256) is None
    assert length_percentiles({7: 0}, max_length=256) is None


@pytest.mark.parametrize("chunk_rows", [1000, 7])  # chunks merge by adding counts
def test_the_report_carries_percentiles_of_the_pair_lengths(chunk_rows):
    # Pair lengths 2..41: a one-word prompt and a chosen answer of 1..40 words (rejected is shorter).
    rows = [{"prompt": "q", "chosen": " ".join(["w"] * n), "rejected": "no" if n > 1 else "x"} for n in range(1, 41)]
    config = ValidationConfig(min_pairs=1, max_length=30, max_rejected_fraction=1.0, chunk_rows=chunk_rows)
    _, quarantined, report = validate_pairs(pd.DataFrame(rows), config, WordTokenizer())
    tokens = report.tokens
    assert tokens.measured == 40 and tokens.longest == 41 and tokens.too_long == 11  # lengths 31..41
    assert tokens.percentiles == TokenPercentiles(
        p50=21, p90=37, p95=39, p99=41, suggested_max_length=39, too_long_fraction=0.275
    )
    assert tokens.percentiles.too_long_fraction == tokens.truncated_fraction
    assert len(quarantined) == 11
    assert report.model_dump(mode="json")["tokens"]["percentiles"]["suggested_max_length"] == 39


def test_the_summary_and_the_cli_lines_state_the_suggestion():
    _, _, report = validate_pairs(
        pd.DataFrame([{"prompt": "q", "chosen": " ".join(["w"] * n), "rejected": "no"} for n in range(2, 12)]),
        ValidationConfig(min_pairs=1, max_length=8, max_rejected_fraction=1.0),
        WordTokenizer(),
    )
    lines = length_lines(report.tokens)
    assert lines[1] == "pair length (the longer side, after the chat template): p50 7, p90 11, p95 12, p99 12"
    assert lines[2].startswith("max_length=12 would keep 95% of the pairs; at max_length=8, 40.0% are too long")
    summary = summary_markdown(report)
    assert f"- {lines[1]}" in summary and f"- {lines[2]}" in summary


def test_no_tokenizer_no_length_lines():
    _, _, report = validate_pairs(
        pd.DataFrame([{"prompt": "q", "chosen": "a b", "rejected": "c"}]), ValidationConfig(min_pairs=1)
    )
    assert report.tokens.percentiles is None and length_lines(report.tokens) == []
    assert "percentiles" not in report.model_dump(mode="json")["tokens"]  # absent, not null, as the file has been
