"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BUILTIN_TINY_MODEL = "builtin:tiny-llama"
BUILTIN_PROMPTS = "builtin:default"
# A generator model, or training.start_from, that names the registry's current champion (else the base model).
CHAMPION_MODEL = "registry:champion"
BUILTIN_EVAL_PROMPTS = "builtin:eval"  # the gate's evaluation set, conf/prompts/eval.jsonl


class Section(BaseModel):
    """Unknown keys are errors, and assignments are validated too: a typo stops the run before compute."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
