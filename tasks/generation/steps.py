"""alignflow's own distilabel steps: the generate stage's pipeline is

    LoadDataFromDicts >> [TrackedTextGeneration per generator] >> CollectCandidates >> OfflineJudge | UltraFeedbackJudge

Each step keeps what went wrong with a row next to the row (`generation_error`, `row_error`,
`judge_error`) instead of dropping it, and shows its own progress bar.

No `from __future__ import annotations` here: distilabel reads the `StepInput` type hint
of a step's process() at runtime.
"""

import time
from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.steps.tasks import TextGeneration, UltraFeedback
from distilabel.typing import StepOutput
from tqdm.auto import tqdm

from alignflow.tasks.generation import judge

_bars: dict[str, Any] = {}  # one bar per step; each step runs in its own process or Ray actor


def _advance(name: str, total: int, position: int, n: int) -> None:
    """Move this step's bar (created on first use: at load, with n=0); drawn on a terminal only."""
    if name not in _bars:
        _bars[name] = tqdm(total=total or None, desc=name, unit="prompt", position=position, disable=None)
    bar = _bars[name]
    bar.update(n)
    if total and bar.n >= total:
        bar.close()  # draws the final state: a step process can end before the bar's next refresh


def _first(value: Any) -> Any:
    """The first non-None of a value that group_generations may have turned into a list."""
    if isinstance(value, list):
        return next((v for v in value if v is not None), None)
    return value


def _output_tokens(meta: Any, step_name: str) -> int:
    """Output tokens the LLM reported for a row (distilabel's statistics, grouped or not)."""
    metas = meta if isinstance(meta, list) else [meta]
    total = 0
    for item in metas:
        stats = (item or {}).get(f"statistics_{step_name}") or {}
        tokens = stats.get("output_tokens", 0)
        total += sum(tokens) if isinstance(tokens, list) else int(tokens or 0)
    return total


class TrackedTextGeneration(TextGeneration):
    """TextGeneration that labels its rows with the generator and keeps a failed request's reason."""

    generator_index: int = 0
    label: str = ""
    progress_total: int = 0

    def load(self) -> None:
        super().load()
        _advance(f"{self.name} {self.label}", self.progress_total, self.generator_index, 0)

    @property
    def outputs(self) -> list[str]:
        timing = ["generation_started", "generation_finished"]
        labels = ["generation_error", "generator_label", "generator_index", "generated_on"]
        return [*super().outputs, *labels, "output_tokens", *timing]

    def process(self, inputs: StepInput) -> StepOutput:
        started = time.time()
        where = getattr(self.llm, "where", None)  # a local model's node, process, device; None for an endpoint
        for rows in super().process(inputs):
            finished = time.time()  # the batch's generation time span, for the stage's throughput figures
            for row in rows:
                row["generation_error"] = _first(row.pop(f"llm_{self.name}_error", None))
                row["generator_label"] = self.label
                row["generator_index"] = self.generator_index
                row["generated_on"] = {"step": self.label, **where} if where else None
                row["output_tokens"] = _output_tokens(row.get("distilabel_metadata"), self.name)
                row["generation_started"], row["generation_finished"] = started, finished
            _advance(f"{self.name} {self.label}", self.progress_total, self.generator_index, len(inputs))
            yield rows


class CollectCandidates(Step):
    """Joins the generators' rows (by row number) into one candidate list per prompt.

    A failed generation is left out of the candidates and listed in `generation_errors`; a
    prompt left with fewer than two candidates by failures gets a `row_error` and is not judged.
    """

    @property
    def inputs(self) -> list[str]:
        return ["row", "generation", "generation_error", "generator_label", "generator_index"]

    @property
    def outputs(self) -> list[str]:
        timing = ["generation_started", "generation_finished"]
        made = ["candidates", "candidate_generators", "generation_errors", "generated_on", "output_tokens"]
        return [*made, "row_error", *timing]

    def process(self, *inputs: StepInput) -> StepOutput:
        groups = sorted((g for g in inputs if g), key=lambda g: g[0]["generator_index"])
        by_row = [{r["row"]: r for r in group} for group in groups]
        out = []
        for first in groups[0]:
            candidates, labels, errors, tokens, spans, places = [], [], [], 0, [], []
            for rows in by_row:
                row = rows[first["row"]]
                if row.get("generated_on"):
                    places.append(row["generated_on"])
                spans.append((row.get("generation_started"), row.get("generation_finished")))
                texts = row["generation"] if isinstance(row["generation"], list) else [row["generation"]]
                for text in texts:
                    if text is not None:
                        candidates.append(text)
                        labels.append(row["generator_label"])
                if any(text is None for text in texts):  # one request per prompt: one reason per generator
                    reason = row["generation_error"] or "the LLM returned no text"
                    errors.append({"generator": row["generator_label"], "reason": reason})
                tokens += row.get("output_tokens") or 0
            keep = {k: v for k, v in first.items() if k in ("row", "prompt_id", "instruction", "reference")}
            failed = len(candidates) < 2 and errors
            row_error = f"generation failed: {errors[0]['generator']}: {errors[0]['reason']}" if failed else None
            out.append(
                {
                    **keep,
                    "candidates": candidates,
                    "candidate_generators": labels,
                    "generation_errors": errors,
                    "generated_on": places,
                    "output_tokens": tokens,
                    "row_error": row_error,
                    "generation_started": min((a for a, _ in spans if a), default=None),
                    "generation_finished": max((b for _, b in spans if b), default=None),
                }
            )
        yield out


class OfflineJudge(Step):
    """Scores every candidate against the prompt's reference answer (judge.py)."""

    progress_total: int = 0
    progress_position: int = 0

    def load(self) -> None:
        super().load()
        _advance(self.name, self.progress_total, self.progress_position, 0)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "reference", "candidates", "row_error"]

    @property
    def outputs(self) -> list[str]:
        return ["scores", "ratings", "judge_error"]

    def process(self, inputs: StepInput) -> StepOutput:
        for row in inputs:
            if row["row_error"]:
                row.update(scores=None, ratings=None, judge_error=None)
                continue
            scores = [judge.score(row["instruction"], text or "", row["reference"]) for text in row["candidates"]]
            row.update(scores=scores, ratings=[judge.rating(s) for s in scores], judge_error=None)
        _advance(self.name, self.progress_total, self.progress_position, len(inputs))
        yield inputs


class UltraFeedbackJudge(UltraFeedback):
    """distilabel's UltraFeedback on `candidates`, re-asking when the answer does not parse.

    Ratings 1-5 become scores in [0, 1] (judge.rating_to_score), the offline judge's
    scale. An endpoint error after the client's retries, or an answer that still does not
    parse after `parse_retries` re-asks, is the row's `judge_error`.
    """

    parse_retries: int = 2
    retry_backoff: float = 1.0
    progress_total: int = 0
    progress_position: int = 0

    def load(self) -> None:
        super().load()
        _advance(self.name, self.progress_total, self.progress_position, 0)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "candidates", "row_error"]

    @property
    def outputs(self) -> list[str]:
        return [*super().outputs, "scores", "judge_error"]

    def _blank(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, **{k: None for k in super().outputs}, "scores": None, "judge_error": None}

    def process(self, inputs: StepInput) -> StepOutput:
        results: list[dict[str, Any] | None] = [None] * len(inputs)
        pending = []
        for i, row in enumerate(inputs):
            if row["row_error"] or len(row["candidates"] or []) < 2:
                results[i] = self._blank(row)  # nothing to compare: binarization counts it
            else:
                pending.append(i)
        for attempt in range(self.parse_retries + 1):
            if not pending:
                break
            if attempt:
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))
            batch = [{**inputs[i], "generations": inputs[i]["candidates"]} for i in pending]
            retry = []
            for i, out in zip(pending, next(super().process(batch))):
                out.pop("generations", None)
                endpoint_error = _first(out.pop(f"llm_{self.name}_error", None))
                raw = (out.get("distilabel_metadata") or {}).get(f"raw_output_{self.name}")
                n = len(inputs[i]["candidates"])
                ratings = judge.valid_ratings(out.get("ratings"), n) or judge.parse_ultrafeedback(raw, n)
                if endpoint_error:
                    out.update(ratings=None, scores=None, judge_error=f"judge request failed: {endpoint_error}")
                elif ratings is None:
                    shown = " ".join(str(raw).split())[:160]
                    out.update(
                        ratings=None,
                        scores=None,
                        judge_error=f"judge answer did not parse ({n} ratings 1-5 expected) after "
                        f"{attempt + 1} attempts: {shown!r}",
                    )
                    retry.append(i)
                else:
                    out.update(ratings=ratings, scores=[judge.rating_to_score(r) for r in ratings], judge_error=None)
                results[i] = out
            pending = retry
        _advance(self.name, self.progress_total, self.progress_position, len(inputs))
        yield results


class RewardModelJudge(Step):
    """Scores every candidate with a reward model (tasks/reward/scorer.py), batched over the step's rows.

    A candidate's score is its reward as the model gives it (unbounded): binarization ranks by it, and
    generation.min_score_margin is in reward units then (a Bradley-Terry log-odds: 0.05 is P(better) = 0.51).
    A sigmoid of it would saturate (rewards 6 and 9 both read ~1.0) and turn clear preferences into ties. `ratings`
    (1-5, for people reading the data) come from that sigmoid. The model loads once per step process or Ray actor.
    """

    model_path: str
    batch_size: int = 8
    use_gpu: bool = False
    progress_total: int = 0
    progress_position: int = 0
    _model: Any = None

    def load(self) -> None:
        from alignflow.tasks.reward.scorer import load_reward_model

        super().load()
        self._model = load_reward_model(self.model_path, self.use_gpu, self.batch_size)
        _advance(self.name, self.progress_total, self.progress_position, 0)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "candidates", "row_error"]

    @property
    def outputs(self) -> list[str]:
        return ["scores", "ratings", "judge_error"]

    def process(self, inputs: StepInput) -> StepOutput:
        from alignflow.tasks.reward.scorer import to_unit

        todo = [r for r in inputs if not r["row_error"]]
        rewards = iter(self._model.scores([(r["instruction"], text or "") for r in todo for text in r["candidates"]]))
        for row in inputs:
            row.update(scores=None, ratings=None, judge_error=None)
        for row in todo:
            scores = [round(next(rewards), 6) for _ in row["candidates"]]
            row.update(scores=scores, ratings=[judge.rating(to_unit(r)) for r in scores])
        _advance(self.name, self.progress_total, self.progress_position, len(inputs))
        yield inputs
