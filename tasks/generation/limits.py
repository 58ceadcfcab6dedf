"""How many endpoint requests are in flight at once, and what a request does when a server pushes back.

- `concurrency_shares`: generation.max_concurrency split among the stage's endpoint LLMs (each
  one's step runs in its own process, so the total is shared out before they start).
- `AdaptiveLimit`: one per endpoint LLM, in its step's process. At most its share in flight; a
  server that is overloaded (HTTP 429 or 503, or a time-out) halves it, and a 429/503 holds
  every new request until its Retry-After has passed; successes grow it back by one per round
  of requests. This is additive increase, multiplicative decrease, as TCP does: a server that
  slows down or pushes back gets fewer requests, never a flood of retries.
- `retry_delay`: which failures are retried and after how long. The OpenAI client's own policy
  (408, 409, 429, 5xx, time-outs and dropped connections; `x-should-retry` wins; 0.5 s doubling
  to 8 s, with jitter; a Retry-After of up to two minutes is honoured, a longer one is not retried).

Light on purpose (no openai at import): pipeline.py reads the shares before distilabel starts.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from alignflow.conf.generation import LLMConfig

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0  # as the OpenAI client: a server asking for longer is not retried
OVERLOAD_STATUS = (429, 503)


def concurrency_shares(llms: list[LLMConfig], total: int) -> list[int | None]:
    """Requests each LLM may have in flight (None for local models): equal shares of `total`, each at
    most its own max_concurrency, and what a capped one leaves goes to the others (at least 1 each)."""
    shares: list[int | None] = [None] * len(llms)
    endpoints = [i for i, llm in enumerate(llms) if llm.provider == "openai"]
    budget, left = total, len(endpoints)
    for i in sorted(endpoints, key=lambda i: llms[i].max_concurrency or math.inf):  # the smallest caps first
        fair = max(1, budget // left)
        shares[i] = min(llms[i].max_concurrency or fair, fair)
        budget, left = budget - shares[i], left - 1
    return shares


class AdaptiveLimit:
    """At most `limit` requests in flight, fewer while the server is overloaded (see the module doc).

    Use `async with limit.slot() as epoch:` around one request, then `succeeded()` or
    `overloaded(epoch, pause_s)`. The epoch makes one overload episode cut the limit once: the
    requests sent before a cut all meet the same overloaded server, and count as one signal.
    """

    def __init__(self, limit: int) -> None:
        self.limit = self.current = max(1, limit)
        self.in_flight = 0
        self.peak = 0  # the most requests in flight at once (the stage's figures, tests)
        self.cuts = 0
        self._epoch = 0
        self._successes = 0
        self._resume_at = 0.0  # time.monotonic(): no new request before it (a Retry-After)
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        await self._acquire()
        try:
            yield self._epoch
        finally:
            self.in_flight -= 1
            self._wake()

    def succeeded(self) -> None:
        self._successes += 1
        if self.current < self.limit and self._successes >= self.current:  # one more per round of requests
            self.current, self._successes = self.current + 1, 0
            self._wake()

    def overloaded(self, epoch: int, pause_s: float | None = None) -> None:
        """The server pushed back on a request sent in `epoch`: halve the limit once per episode, and
        send nothing new for `pause_s` (its Retry-After, or the backoff)."""
        if epoch == self._epoch:
            self.current, self._successes, self._epoch = max(1, self.current // 2), 0, self._epoch + 1
            self.cuts += 1
        if pause_s:
            self._resume_at = max(self._resume_at, time.monotonic() + pause_s)

    async def _acquire(self) -> None:
        if not self._waiters and self.in_flight < self.current and time.monotonic() >= self._resume_at:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled: give it back
                self.in_flight -= 1
                self._wake()
            raise

    def _take(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def _wake(self) -> None:
        """Hand free slots to the waiters in order; while paused, come back when the pause ends."""
        while self._waiters and self.in_flight < self.current:
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(pause, self._resume)
                return
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _resume(self) -> None:
        self._timer = None
        self._wake()


def retry_delay(exc: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying a request that failed with `exc` after `attempt` retries, or
    None when the failure is not worth retrying (a 400, 401, 404, an unparsable body, ...)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        should = exc.response.headers.get("x-should-retry")
        retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
        if should == "false" or (should != "true" and not retryable):
            return None
        after = retry_after(exc.response.headers)
        if after:
            return after if after <= MAX_RETRY_AFTER_S else None
    elif not isinstance(exc, openai.APIConnectionError):  # time-outs are connection errors too
        return None
    return min(MAX_DELAY_S, INITIAL_DELAY_S * 2**attempt) * (1 - 0.25 * random.random())


def retry_after(headers) -> float | None:
    """The server's Retry-After in seconds (retry-after-ms, or retry-after in seconds or as an HTTP date)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except (TypeError, ValueError, OverflowError):
        return None


def is_overload(exc: BaseException) -> bool:
    """The server said it has too much to do (429, 503) or did not answer in time."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in OVERLOAD_STATUS
    return isinstance(exc, openai.APITimeoutError)
