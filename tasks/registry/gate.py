"""The promotion gate: promote only on evidence.

The candidate is compared head to head with an opponent: the champion, or the base model when
there is none (so the first model must beat the base too; nothing passes for free). The rule:

    promote  iff  lower bound of the 95% win-rate interval  >  0.5 + gate.min_win_rate_margin
             and  held-out chosen NLL  <=  the opponent's + gate.max_nll_increase   (fluency guard rail)
             and  every metric in gate.thresholds reaches its minimum
             and  (gate.max_chosen_nll) the candidate's chosen NLL is at most that

With several evaluation judges, the first judge's head-to-head decides (`gate.judges: first`), or
every judge's must pass (`all`; the decision then reports the first judge that failed, else the first).

Every decision carries the estimate, the interval, n and the rule in words, so the version's
tags, its model card, the CLI summary and the Prefect artifact all say why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alignflow.conf.evaluation import GateConfig
from alignflow.tasks.evaluation.head_to_head import HeadToHead


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    rule: str
    against: str
    estimate: float
    low: float
    high: float
    n_prompts: int
    n_pairs: int

    def tags(self) -> dict[str, str]:
        return {
            "gate.rule": self.rule,
            "gate.against": self.against,
            "gate.win_rate": f"{self.estimate:.4f}",
            "gate.win_rate_ci95": f"[{self.low:.4f}, {self.high:.4f}]",
            "gate.n_prompts": str(self.n_prompts),
            "gate.n_pairs": str(self.n_pairs),
            "gate.reason": self.reason,
        }


def rule_text(gate: GateConfig, judges: int = 1) -> str:
    who = f" under every one of the {judges} judges" if judges > 1 and gate.judges == "all" else ""
    return (
        f"promote when the 95% CI lower bound of the win rate{who} > {0.5 + gate.min_win_rate_margin:.2f} "
        f"and held-out chosen NLL <= opponent's + {gate.max_nll_increase}"
        + (f" and thresholds {gate.thresholds}" if gate.thresholds else "")
        + (f" and chosen NLL <= {gate.max_chosen_nll}" if gate.max_chosen_nll is not None else "")
    )


def decide(
    h2h: HeadToHead, candidate: dict[str, float], opponent: dict[str, float] | None, gate: GateConfig
) -> GateDecision:
    """Promote or not, and why. `candidate`/`opponent` hold held-out metrics (chosen_nll, preference_accuracy, ...)."""
    bar = 0.5 + gate.min_win_rate_margin
    wr = h2h.win_rate
    measured = {**candidate, **{k: v for k, v in h2h.metrics().items() if k.startswith("win_rate")}}
    failures = []
    if wr.low <= bar:
        failures.append(f"win rate lower bound {wr.low:.3f} <= {bar:.2f}")
    if opponent is not None and "chosen_nll" in candidate and "chosen_nll" in opponent:
        limit = opponent["chosen_nll"] + gate.max_nll_increase
        if candidate["chosen_nll"] > limit:
            failures.append(
                f"chosen NLL {candidate['chosen_nll']:.3f} > {h2h.against}'s {opponent['chosen_nll']:.3f} + "
                f"{gate.max_nll_increase}"
            )
    for metric, minimum in gate.thresholds.items():
        value = measured.get(metric)
        if value is None or value < minimum:
            failures.append(f"{metric} {'not measured' if value is None else f'{value:.4f}'} < {minimum}")
    if gate.max_chosen_nll is not None and candidate.get("chosen_nll", float("inf")) > gate.max_chosen_nll:
        failures.append(f"chosen NLL {candidate.get('chosen_nll', float('nan')):.3f} > {gate.max_chosen_nll}")
    evidence = f"win rate against the {h2h.against} {wr} on n={h2h.prompts} prompts x {h2h.samples_per_prompt} samples"
    reason = (
        f"not promoted: {'; '.join(failures)} ({evidence})" if failures else f"promoted: {evidence} clears {bar:.2f}"
    )
    return GateDecision(
        passed=not failures,
        reason=reason,
        rule=rule_text(gate),
        against=h2h.against,
        estimate=wr.estimate,
        low=wr.low,
        high=wr.high,
        n_prompts=h2h.prompts,
        n_pairs=h2h.pairs,
    )


def decide_panel(
    records: tuple[HeadToHead, ...], candidate: dict[str, float], opponent: dict[str, float] | None, gate: GateConfig
) -> GateDecision:
    """`decide` on the first judge's record, or (gate.judges: all) on every judge's: the first failure, else the
    first judge's decision, naming the judge when there are several."""
    if len(records) == 1:
        return decide(records[0], candidate, opponent, gate)
    deciding = records if gate.judges == "all" else records[:1]
    decisions = [decide(r, candidate, opponent, gate) for r in deciding]
    index, decision = next(((i, d) for i, d in enumerate(decisions) if not d.passed), (0, decisions[0]))
    verdict, _, rest = decision.reason.partition(": ")
    return dataclasses.replace(
        decision,
        reason=f"{verdict} by the {deciding[index].judge} judge ({gate.judges} of {len(records)} decide): {rest}",
        rule=rule_text(gate, len(records)),
    )
