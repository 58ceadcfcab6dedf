"""Which LLMs the generate stage uses, and their API keys (read from the environment, never the config).

Light on purpose (os and the schema only): the CLI checks the keys before it imports anything
heavy, so a missing variable is an exit 2 that names the config key, like any config error.
"""

from __future__ import annotations

import os

from alignflow.conf.generation import GenerationConfig, LLMConfig

NO_KEY = "EMPTY"  # what vLLM and TGI expect when they run without authentication


class MissingApiKey(ValueError):
    """An endpoint's key variable is not set; the message names the config key and the variable."""


def api_key(llm: LLMConfig, where: str) -> str:
    """The key from the environment variable `llm.api_key_env` names (NO_KEY when it names none)."""
    if llm.api_key_env is None:
        return NO_KEY
    value = os.environ.get(llm.api_key_env, "")
    if not value:
        raise MissingApiKey(
            f"{where}.api_key_env: the environment variable {llm.api_key_env} is not set; export it where the "
            "flow runs (the key itself never goes in the config)"
        )
    return value


def check_api_keys(generation: GenerationConfig) -> None:
    """Fail before anything starts when an endpoint's key variable is missing (no LLM runs on your own data)."""
    if generation.preference_data:
        return
    for where, llm in generation.llm_slots():
        if llm.provider == "openai":
            api_key(llm, where)
