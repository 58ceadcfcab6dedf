"""Several evaluation judges (issue 28, item 3): agreement and Cohen's kappa, the gate on the first or on all."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from alignflow.conf.evaluation import EvaluationConfig, GateConfig
from alignflow.tasks.evaluation.agreement import cohen_kappa, judge_agreement, panel_markdown, verdicts
from alignflow.tasks.evaluation.head_to_head import HeadToHead
from alignflow.tasks.evaluation.stats import Interval
from alignflow.tasks.registry.gate import decide_panel

FLUENT = {"chosen_nll": 2.0}


def record(judge: str, outcomes: list[float], low: float = 0.55) -> HeadToHead:
    """A head-to-head of 2 samples per prompt with these per-pair outcomes."""
    rows = [{"prompt_id": f"p{i // 2}", "sample": i % 2, "outcome": o} for i, o in enumerate(outcomes)]
    return HeadToHead(
        against="base",
        prompt_set="builtin:eval",
        prompt_set_sha256="0" * 64,
        judge=judge,
        prompts=len(outcomes) // 2,
        samples_per_prompt=2,
        pairs=len(outcomes),
        wins=sum(o > 0.5 for o in outcomes),
        ties=sum(o == 0.5 for o in outcomes),
        losses=sum(o < 0.5 for o in outcomes),
        win_rate=Interval(low + 0.05, low, low + 0.1),
        length_controlled=Interval(0.5, 0.4, 0.6),
        candidate_words=10.0,
        opponent_words=10.0,
        rows=rows,
    )


def test_cohen_kappa_against_a_worked_example():
    # 4 items: agree on 3 (0.75); chance = 0.5 * 0.25 + 0.5 * 0.75 = 0.5; kappa = (0.75 - 0.5) / 0.5
    assert cohen_kappa(np.array([1, 1, -1, -1]), np.array([1, -1, -1, -1])) == pytest.approx(0.5)
    assert cohen_kappa(np.array([1, -1, 0]), np.array([1, -1, 0])) == pytest.approx(1.0)
    assert cohen_kappa(np.array([1, 1, 1]), np.array([1, 1, 1])) is None  # one verdict throughout: undefined
    assert verdicts(np.array([1.0, 0.75, 0.5, 0.25, 0.0])).tolist() == [1, 1, 0, -1, -1]


def test_agreement_of_two_judges_on_the_same_pairs_with_an_interval_over_prompts():
    a = record("offline", [1, 1, 0, 0, 1, 0.5, 1, 0])
    b = record("ultrafeedback:m", [1, 0, 0, 0, 1, 0.5, 1, 1])
    agreement = judge_agreement(a, b, resamples=500, seed=0)
    assert agreement.n_pairs == 8 and agreement.n_prompts == 4
    assert agreement.agreement.estimate == pytest.approx(6 / 8)
    assert agreement.agreement.low <= 0.75 <= agreement.agreement.high
    assert agreement.kappa == pytest.approx(11 / 19)  # chance: (4*4 + 1*1 + 3*3) / 64; (0.75 - 26/64) / (38/64)
    line = agreement.line()
    assert "offline and ultrafeedback:m agree on 0.750" in line and "n=8 pairs" in line and "Cohen's kappa" in line
    with pytest.raises(ValueError, match="did not judge the same pairs"):
        judge_agreement(a, dataclasses.replace(b, rows=b.rows[::-1]), resamples=100, seed=0)
    text = "\n".join(panel_markdown((a, b), (agreement,)))
    assert "### Judges (2" in text and "| ultrafeedback:m |" in text and "kappa" in text
    assert panel_markdown((a,), ()) == []


def test_the_gate_reads_the_first_judge_or_all_of_them():
    passes, fails = record("offline", [1, 1], low=0.55), record("ultrafeedback:m", [0, 0], low=0.40)
    first = decide_panel((passes, fails), FLUENT, None, GateConfig())
    assert first.passed and "by the offline judge (first of 2 decide)" in first.reason
    every = decide_panel((passes, fails), FLUENT, None, GateConfig(judges="all"))
    assert not every.passed and "by the ultrafeedback:m judge (all of 2 decide)" in every.reason
    assert "under every one of the 2 judges" in every.rule
    alone = decide_panel((passes,), FLUENT, None, GateConfig(judges="all"))
    assert alone.passed and "judge" not in alone.reason


def test_judges_config_shorthand_and_conflict():
    config = EvaluationConfig.model_validate({"judges": ["offline", "offline"]})
    assert [j.kind for j in config.panel()] == ["offline", "offline"]
    assert [j.kind for j in EvaluationConfig().panel()] == ["offline"]
    llm = {"kind": "ultrafeedback", "llm": {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}}
    with pytest.raises(ValidationError, match="evaluation.judge and evaluation.judges are both set"):
        EvaluationConfig.model_validate({"judge": llm, "judges": ["offline", "offline"]})
    # A dumped config carries `judge` at its default beside `judges`: no conflict when read back.
    assert EvaluationConfig.model_validate(config.model_dump()).panel() == config.panel()
