"""The notification webhook: its URL, read where it is kept only when a message is sent, and the POST.

The URL is a credential, so the config names only where it is kept (`runtime.notify_webhook_env`,
`runtime.notify_webhook_block`; conf/runtime.py), and it is read here on the machine that sends
(the worker running the flow), never earlier. Nothing here puts the URL in a log line, an
exception message or a return value other than `Webhook.url`: what is logged is `Webhook.source`
("$NAME", "Prefect Secret block 'name'"), and delivery errors are described by their kind and
HTTP status only (requests' own messages carry the URL, whose path is the secret part).
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, Field

from alignflow.conf.runtime import RuntimeConfig

ATTEMPTS = 3


class WebhookUnavailable(RuntimeError):
    """The webhook's URL could not be read where the config says it is kept (the message never holds the URL)."""


class Webhook(BaseModel):
    source: str = Field(description="Where the URL is kept, safe to log: `$NAME` or `Prefect Secret block 'name'`.")
    url: str = Field(repr=False)  # kept out of repr(), so a logged or printed Webhook does not show it


def _from_block(name: str) -> Any:
    from prefect.blocks.system import Secret

    # _sync: this runs in flow code or a state hook, never awaited; a hook of an async flow would otherwise
    # get a coroutine back.
    return Secret.load(name, _sync=True).get()


def resolve_webhook(runtime: RuntimeConfig) -> Webhook | None:
    """The webhook to POST to, read now; None when the config names none. Raises WebhookUnavailable."""
    source = runtime.webhook_source()
    if source is None:
        return None
    if runtime.notify_webhook_env:
        value: Any = os.environ.get(runtime.notify_webhook_env, "")
        if not value.strip():
            raise WebhookUnavailable(f"the environment variable {runtime.notify_webhook_env} is not set on this worker")
    else:
        try:
            value = _from_block(str(runtime.notify_webhook_block))
        except Exception as exc:  # noqa: BLE001 (no such block, no API): said without the block's value
            raise WebhookUnavailable(f"cannot load {source}: {type(exc).__name__}") from None
    if not isinstance(value, str) or not value.strip().startswith(("http://", "https://")):
        raise WebhookUnavailable(f"{source} does not hold an http(s) URL")
    return Webhook(source=source, url=value.strip())


def describe_error(exc: BaseException) -> str:
    """An error of a POST without the URL: its kind, and the HTTP status when there was an answer."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status is not None else "")


class DeliveryFailed(RuntimeError):
    """A POST that did not succeed after its attempts; the message says why without the URL."""


def post(webhook: Webhook, body: dict[str, Any], attempts: int = ATTEMPTS, timeout: float = 10.0) -> None:
    """POST JSON; retried on connection errors and 5xx, with a short back-off. Raises DeliveryFailed."""
    import requests

    for attempt in range(1, attempts + 1):
        try:
            response = requests.post(webhook.url, json=body, timeout=timeout)
            if response.status_code < 400:
                return
            reason = f"HTTP {response.status_code}"
            if response.status_code < 500:  # the receiver refused this message: another try would be refused too
                raise DeliveryFailed(f"{webhook.source}: {reason}")
        except requests.ConnectionError as exc:
            reason = describe_error(exc)
        except requests.RequestException as exc:  # a read time-out: not tried again, the message may have arrived
            raise DeliveryFailed(f"{webhook.source}: {describe_error(exc)}") from None
        if attempt == attempts:
            raise DeliveryFailed(f"{webhook.source}: {reason} after {attempts} attempts")
        time.sleep(attempt)
