"""Head-to-head on the evaluation prompt set, with the real tiny model."""

from __future__ import annotations

import pytest

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.head_to_head import EvalSetOverlap, check_disjoint, head_to_head, load_eval_set
from alignflow.tasks.evaluation.judges import offline_judge
from alignflow.tasks.generation.prompts import load_prompts


def test_a_model_against_itself_is_one_half_with_every_pair_tied(tiny_model_path):
    config = EvaluationConfig(max_prompts=5, samples_per_prompt=2, max_new_tokens=6, bootstrap_resamples=200)
    eval_set = load_eval_set(config)
    result = head_to_head(tiny_model_path, tiny_model_path, "base", eval_set, config, offline_judge, "offline")
    # Same weights, same seeds: the same answers, so every pair ties.
    assert result.win_rate.estimate == 0.5 and result.ties == result.pairs == 10
    assert result.win_rate.low == result.win_rate.high == 0.5
    assert result.prompts == 5 and len(result.rows) == 10 and len(result.prompt_set_sha256) == 64
    assert {"prompt_id", "sample", "candidate", "base", "outcome"} <= set(result.rows[0])


def test_the_shipped_evaluation_set_is_disjoint_from_the_training_prompts():
    eval_set = load_eval_set(EvaluationConfig())
    check_disjoint(eval_set, [r["prompt"] for r in load_prompts()], "generation.prompts")
    with pytest.raises(EvalSetOverlap, match="e0003"):
        check_disjoint(eval_set, ["WHAT is an isotope? Give an example!", *eval_set.prompts[:3]], "the train split")


def test_validation_and_evaluation_share_one_overlap_rule_in_any_script():
    from alignflow.tasks.evaluation.head_to_head import EvalPromptSet
    from alignflow.tasks.validation import overlap

    asked = "Что такое фотосинтез? Объясни просто."
    eval_set = EvalPromptSet("mine", "0" * 64, ["r1", "r2"], [asked, "Why is the sky blue?"], ["", ""])
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "что такое ФОТОСИНТЕЗ — объясни просто"},
    ]
    with pytest.raises(EvalSetOverlap, match="r1"):
        check_disjoint(eval_set, [conversation], "the train split")
    queries = overlap.normalise(overlap.query_texts([0], ["ignored"], {0: (conversation,)}))
    assert overlap.in_eval_set(queries, overlap.eval_prompt_set(eval_set.prompts)).tolist() == [True]
    check_disjoint(eval_set, ["Что такое гравитация?"], "the train split")  # another question: no overlap
