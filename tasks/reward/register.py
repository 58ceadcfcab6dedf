"""The reward model into the registry: a version of its own registered model, its accuracy as evidence, the gate.

The version is the reward pyfunc (tasks/reward/serving.py) with the plain HF folder as its `hf_model` artifact,
so a judge's `registry:NAME@champion` downloads a loadable one-label classifier. Every version becomes
`challenger`; `champion` moves to it through promotion.promote (lock, who/when/why, history) only when the 95%
interval's lower bound of held-out accuracy exceeds `reward_model.min_accuracy`: a reward model no better than
chance on pairs it has not seen must not judge anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignflow.tasks.registry import versions
from alignflow.tasks.reward.accuracy import RewardAccuracy


@dataclass(frozen=True)
class RewardGate:
    """The gate's decision on a reward model, with the rule and the evidence in words."""

    passed: bool
    rule: str
    reason: str


@dataclass(frozen=True)
class RewardRegistration:
    model: str
    version: str
    champion: bool
    gate: RewardGate


def decide(accuracy: RewardAccuracy, min_accuracy: float) -> RewardGate:
    """Pass when the interval's lower bound exceeds `min_accuracy`."""
    rule = f"held-out accuracy 95% lower bound > {min_accuracy:g}"
    passed = accuracy.n_pairs > 0 and accuracy.low > min_accuracy
    verb = "exceeds" if passed else "does not exceed"
    return RewardGate(passed, rule, f"lower bound {accuracy.low:.3f} of accuracy {accuracy} {verb} {min_accuracy:g}")


def evidence_tags(accuracy: RewardAccuracy, gate: RewardGate) -> dict[str, str]:
    """The version's tags of the accuracy and the decision."""
    return {
        "reward.accuracy": f"{accuracy.accuracy:.6f}",
        "reward.accuracy_low": f"{accuracy.low:.6f}",
        "reward.accuracy_high": f"{accuracy.high:.6f}",
        "reward.n_pairs": str(accuracy.n_pairs),
        "reward.mean_margin": f"{accuracy.mean_margin:.6f}",
        "gate.rule": gate.rule,
        "gate.reason": gate.reason,
        "gate.outcome": "promoted" if gate.passed else "not promoted",
    }


def log_reward_version(tracking_uri: str, run_id: str, name: str, model_dir: Path) -> str:
    """Log the reward pyfunc into the run and register it under `name`; the version (versions.register_logged:
    idempotent per run, a retried flow logs nothing twice)."""
    from alignflow.tasks.reward.serving import log_reward_model

    return versions.register_logged(
        tracking_uri, run_id, name, lambda model_id: log_reward_model(model_dir, model_id=model_id)
    )


def register_reward_model(
    tracking_uri: str,
    run_id: str,
    name: str,
    model_dir: Path,
    accuracy: RewardAccuracy,
    min_accuracy: float,
    tags: dict[str, str],
    flow_run: str | None = None,
) -> RewardRegistration:
    """Register, tag (lineage `tags`, accuracy, decision), alias `challenger`, and `champion` when the gate passes."""
    gate = decide(accuracy, min_accuracy)
    version = log_reward_version(tracking_uri, run_id, name, model_dir)
    all_tags = {**tags, **evidence_tags(accuracy, gate)}
    versions.tag_and_alias(tracking_uri, name, version, all_tags, gate.passed, flow_run=flow_run)
    return RewardRegistration(name, version, gate.passed, gate)
