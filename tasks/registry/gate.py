"""The promotion gate: promote the candidate or not, and why.

The candidate is compared with the current champion on the same held-out pairs; the
champion moves only when the candidate is better by more than `registry.gate.min_improvement`
(the first model becomes champion).
"""

from __future__ import annotations

from alignflow.conf.evaluation import GateConfig


def decide(
    candidate: dict[str, float], champion: dict[str, float] | None, gate: GateConfig, has_champion: bool | None = None
) -> tuple[bool, str]:
    """Promote or not, and why, in words a person reads on the model version.

    `candidate` holds the held-out metrics (plus `win_rate` when measured). The thresholds
    apply whatever the champion does; then the candidate must beat the champion on
    `gate.metric` by more than `gate.min_improvement` (the first model needs no champion).
    """
    below = [
        f"{m} {candidate[m]:.4f} < {minimum}" if m in candidate else f"{m} not measured (threshold {minimum})"
        for m, minimum in gate.thresholds.items()
        if m not in candidate or candidate[m] < minimum
    ]
    if gate.max_chosen_nll is not None and candidate.get("chosen_nll", float("inf")) > gate.max_chosen_nll:
        below.append(f"chosen_nll {candidate.get('chosen_nll', float('nan')):.4f} > {gate.max_chosen_nll}")
    if below:
        return False, "below the gate's thresholds: " + "; ".join(below)
    value = candidate[gate.metric]
    if champion is None or gate.metric not in champion:
        if has_champion:
            return False, f"the champion's {gate.metric} is unknown (not loadable, none recorded); promote by hand"
        return True, f"first model: no champion yet ({gate.metric}={value:.4f})"
    best = champion[gate.metric]
    if value > best + gate.min_improvement:
        return True, f"{gate.metric} {value:.4f} > champion {best:.4f} + {gate.min_improvement}"
    return False, f"{gate.metric} {value:.4f} does not beat champion {best:.4f} + {gate.min_improvement}"
