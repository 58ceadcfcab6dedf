"""alignflow's own distilabel building blocks.

No `from __future__ import annotations` here: distilabel reads the `StepInput` type hint
of a decorated step at runtime.
"""

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.llms import TransformersLLM
from distilabel.steps import StepInput, step
from distilabel.typing import StepOutput
from tqdm.auto import tqdm

from tasks import judge


class SeededTransformersLLM(TransformersLLM):
    """TransformersLLM that generates in batches, with sampling seeded when its process loads it.

    distilabel hands the whole input batch to the transformers pipeline, which without a
    batch size generates one prompt at a time: 10x slower for small models.
    """

    seed: int = 0
    batch_size: int = 16

    def load(self) -> None:
        super().load()
        from transformers import set_seed

        self._pipeline._batch_size = self.batch_size
        self._pipeline.tokenizer.padding_side = "left"  # batched decoder-only generation pads on the left
        set_seed(self.seed)


_progress = None


@step(inputs=["instruction", "reference", "generations"], outputs=["candidates", "scores", "ratings"])
def OfflineJudge(inputs: StepInput, total_rows: RuntimeParameter[int] = 0) -> StepOutput:
    """Scores every candidate against the prompt's reference answer (see tasks/judge.py).

    As the last step it sees every row once, so it also drives the stage's progress bar.
    """
    global _progress
    if _progress is None:
        _progress = tqdm(total=total_rows or None, desc="generate+judge", unit="prompt")
    for row in inputs:
        # GroupColumns nests one list per generator; flatten them into one candidate list.
        candidates = [text or "" for group in row["generations"] for text in (group or [])]
        scores = [judge.score(row["instruction"], text, row["reference"]) for text in candidates]
        row["candidates"] = candidates
        row["scores"] = scores
        row["ratings"] = [judge.rating(s) for s in scores]
    _progress.update(len(inputs))
    yield inputs
