"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BUILTIN_TINY_MODEL = "builtin:tiny-llama"  # built from nothing in ~40 s: fast tests
BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"  # a real instruct model, converted from a registry package
BUILTIN_PROMPTS = "builtin:default"
# A generator model, or training.start_from, that names the registry's current champion (else the base model).
CHAMPION_MODEL = "registry:champion"
BUILTIN_EVAL_PROMPTS = "builtin:eval"  # the gate's evaluation set, conf/prompts/eval.jsonl


class Section(BaseModel):
    """Unknown keys are errors, and assignments are validated too: a typo stops the run before compute."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
