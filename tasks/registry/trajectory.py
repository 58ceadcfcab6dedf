"""Champions against the original base model: is each round's champion better than the base, and by how much?

Every model version records its win rate against the base model (`vs_base.*` tags), on the gate's prompt
set with the gate's seeds, also when the gate itself judged it against the champion. Read in the order
the registry's history promoted them, these tags are the trajectory of the nightly rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from alignflow.tasks.evaluation.head_to_head import HeadToHead
from alignflow.tasks.registry.promotion import history
from alignflow.tasks.registry.tracking import mlflow_client

PREFIX = "vs_base."


def tags(against_base: HeadToHead) -> dict[str, str]:
    """A version's record against the base model, as MLflow tags."""
    wr = against_base.win_rate
    return {
        f"{PREFIX}win_rate": f"{wr.estimate:.4f}",
        f"{PREFIX}low": f"{wr.low:.4f}",
        f"{PREFIX}high": f"{wr.high:.4f}",
        f"{PREFIX}n_prompts": str(against_base.prompts),
        f"{PREFIX}samples_per_prompt": str(against_base.samples_per_prompt),
        f"{PREFIX}prompt_set_sha256": against_base.prompt_set_sha256,
    }


@dataclass(frozen=True)
class ChampionRecord:
    """One promotion in the history, with the promoted version's win rate against the base model."""

    round: int
    version: str
    action: str
    win_rate: float | None
    low: float | None
    high: float | None
    n: str

    def row(self) -> dict[str, str]:
        """For tables: the interval as text, '-' where a version has no record against the base."""
        return {
            k: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in asdict(self).items()
        }


def champions(tracking_uri: str, name: str) -> list[ChampionRecord]:
    """Every champion change of `name`, oldest first, with the new champion's win rate against the base."""
    client = mlflow_client(tracking_uri)
    found = []
    for n, event in enumerate(history(tracking_uri, name), start=1):
        version = str(event["version"])
        tagged = client.get_model_version(name, version).tags
        number = {k: float(tagged[PREFIX + k]) if PREFIX + k in tagged else None for k in ("win_rate", "low", "high")}
        size = tagged.get(f"{PREFIX}n_prompts")
        samples = tagged.get(f"{PREFIX}samples_per_prompt")
        found.append(
            ChampionRecord(
                round=n,
                version=version,
                action=str(event.get("action", "promote")),
                n=f"{size} x {samples}" if size else "-",
                **number,
            )
        )
    return found
