"""`runtime`: where state lives, which services to use, and who hears about a run's outcome.

A notification webhook URL is a credential (a Slack or Teams incoming webhook posts as its owner),
so it is never part of the config, which is written to MLflow params and `config/resolved.yaml`:
the config names where the URL is kept (an environment variable or a Prefect Secret block), and
the URL is read only when a message is sent, on the machine that sends it (flows/webhook.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from alignflow.conf.base import Section
from alignflow.conf.generation import ENV_VAR_NAME

NotifyEvent = Literal["failed", "crashed", "promoted", "not_promoted"]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)
# Prefect's own rule for block document names (lowercase letters, digits, dashes).
BLOCK_NAME = r"^[a-z0-9][a-z0-9-]*$"

PLAIN_WEBHOOK = (
    "runtime.notify_webhook: a webhook URL is a credential and is never written in the config (the config is "
    "recorded in MLflow and config/resolved.yaml). Keep it in an environment variable on the worker and set "
    "runtime.notify_webhook_env: THAT_VARIABLE, or in a Prefect Secret block and set "
    "runtime.notify_webhook_block: BLOCK_NAME"
)


class RuntimeConfig(Section):
    home: Path | None = Field(None, description="State directory (default: $ALIGNFLOW_HOME or ./.alignflow).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in the state directory).")
    ray_address: str | None = Field(
        None, description="Join this Ray cluster (`auto`, `ray://host:10001`); None starts a local one."
    )
    seed: int = 0
    notify_webhook_env: str | None = Field(
        None,
        description="NAME of the environment variable holding the webhook URL that notifications are POSTed to "
        "(a JSON message with a Slack/Teams-style `text`), read on the worker when a message is sent.",
    )
    notify_webhook_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the webhook URL (loaded when a message is sent). "
        "Neither this nor notify_webhook_env: no notification.",
    )
    notify_on: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        description="Which outcomes send a message: failed, crashed (the flow run's state), promoted, not_promoted "
        "(the gate's decision, with the win rate's interval and the model version's link).",
    )
    mlflow_ui_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="MLflow UI base URL for the links in Prefect artifacts (None: $ALIGNFLOW_MLFLOW_UI_URL, else "
        "the tracking URI when it is an http(s) server).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_webhook_url(cls, data: Any) -> Any:
        # The former key: a URL here would be written to MLflow and resolved.yaml in plain text. Refused with
        # what to set instead (null, as older profiles carry, is dropped). The error never echoes the value.
        if isinstance(data, dict) and "notify_webhook" in data:
            data = dict(data)
            if data.pop("notify_webhook") is not None:
                raise ValueError(PLAIN_WEBHOOK)
        return data

    @model_validator(mode="after")
    def _webhook_names(self) -> RuntimeConfig:
        # Checked here, not with a field pattern: a field error echoes its input, and what lands by mistake
        # in these keys is usually the URL itself.
        env, block = self.notify_webhook_env, self.notify_webhook_block
        if env is not None and not re.fullmatch(ENV_VAR_NAME, env):
            raise ValueError(
                "runtime.notify_webhook_env must be the NAME of an environment variable (letters, digits, _) "
                "holding the webhook URL, never the URL itself"
            )
        if block is not None and not re.fullmatch(BLOCK_NAME, block):
            raise ValueError(
                "runtime.notify_webhook_block must be the name of a Prefect Secret block (lowercase letters, "
                "digits, -) holding the webhook URL, never the URL itself"
            )
        if env is not None and block is not None:
            raise ValueError("runtime.notify_webhook_env and runtime.notify_webhook_block: set one, not both")
        return self

    def webhook_source(self) -> str | None:
        """Where the webhook URL is kept, in words safe to log (never the URL); None: no webhook."""
        if self.notify_webhook_env:
            return f"${self.notify_webhook_env}"
        if self.notify_webhook_block:
            return f"Prefect Secret block {self.notify_webhook_block!r}"
        return None
