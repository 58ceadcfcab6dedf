"""What identifies generated data: the settings that shape candidates and scores, and the code.

The flow's cache key for the generate task, the stage's resume fingerprint (scored.fingerprint)
and the pairs' lineage are all made of these two.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignflow.conf.generation import GenerationConfig
from alignflow.tasks.runtime.state import sha256_text

# Settings that change which rows fail or how fast, never what a successful row holds: left out of
# the fingerprint, so raising a time-out after an outage keeps what was generated.
_RETRY_KNOBS = ("timeout", "max_retries", "parse_retries", "retry_backoff", "max_concurrency")


def candidate_settings(generation: GenerationConfig) -> str:
    """The settings that shape candidates and scores, as JSON: not binarization, thresholds,
    retry knobs or where the pipeline runs (changing those reuses the scored rows)."""
    data = generation.model_dump(
        mode="json",
        include={"prompts", "prompt_column", "reference_column", "max_prompts", "generators", "judge"},
    )
    data["input_batch_size"] = generation.input_batch_size  # transformers batches shape the sampled text
    if generation.on_gpu:  # bf16 on a GPU samples other text than float32 on CPU (replicas change nothing)
        data["local_models_on"] = "gpu-bfloat16"
    for llm in [*data["generators"], data["judge"].get("llm") or {}]:
        for knob in _RETRY_KNOBS:
            llm.pop(knob, None)
    for knob in _RETRY_KNOBS:
        data["judge"].pop(knob, None)
    return json.dumps(data, sort_keys=True)


def code_version() -> str:
    """Hash of the code that shapes generated data (every module of this package), so a judge or
    binarization change is a cache miss."""
    package = Path(__file__).parent
    return sha256_text(*(p.read_text() for p in sorted(package.glob("*.py"))))
