"""Retries of failed writes: one policy for every sink, built from its ``retry`` block.

A :class:`RetryPolicy` says whether an error is worth another attempt and how long to
pause first; it never sleeps or calls anything itself, so the edge's group-commit
writer (an asyncio task, :mod:`eventrouter.bus.outlet`) and the worker's consumers
(threads with a stop flag, :mod:`eventrouter.queue.worker`) drive the same policy from
their own loops. A sink never retries a write on its own: in either role the bus or the
worker does it, once, with this policy.

The pauses grow exponentially from ``initial_backoff``, capped at ``max_backoff``, with
jitter so that many writers that failed together (one database restart) do not come
back together: ``full`` draws each pause between 0 and its exponential value,
``decorrelated`` between ``initial_backoff`` and three times the previous pause.

Which errors are retried is the sink's to say (:meth:`eventrouter.bus.sink.Sink.is_retryable`):
by default every error is, except one whose class or instance sets ``retryable =
False`` (a webhook's ``400``: sending it again cannot succeed). An error may also carry
``retry_after`` (seconds, e.g. from an HTTP ``Retry-After`` header): the next pause is
then at least that long.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from eventrouter.config import RetryConfig

#: Whether an error deserves another attempt.
Classifier = Callable[[BaseException], bool]


def retryable_by_default(error: BaseException) -> bool:
    """True unless the error (its class or the instance) sets ``retryable = False``."""
    return bool(getattr(error, "retryable", True))


class RetryPolicy:
    """The retry rules of one sink: ``attempts``, ``initial_backoff``, ``max_backoff``,
    ``max_duration``, ``jitter``, and which errors are retryable."""

    def __init__(
        self,
        config: RetryConfig,
        classify: Classifier = retryable_by_default,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.classify = classify
        self._random = rng or random.Random()

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retry: for plugins that are not configured sinks."""
        return cls(RetryConfig(attempts=1))

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may pass on another attempt (a classifier that raises: yes)."""
        try:
            return bool(self.classify(error))
        except Exception:
            return True

    def backoff(self) -> Backoff:
        """The retry state of one write, to be told about each of its failures."""
        return Backoff(self)


class Backoff:
    """The retries of one write. After each failed attempt, :meth:`failed` gives the
    pause before the next one, or None: give up. ``max_duration`` is counted from the
    first failure, not the first attempt, so a write that failed slowly (a timeout
    longer than ``max_duration``) is still retried."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        #: Attempts made so far (failed ones, once :meth:`failed` was told of them).
        self.attempts = 0
        self._first_failure: float | None = None
        self._previous = 0.0

    def failed(self, error: BaseException, now: float | None = None) -> float | None:
        """Record one failed attempt; the seconds to pause before the next, or None.

        :param now: ``time.monotonic()`` (given by tests to check ``max_duration``)."""
        self.attempts += 1
        policy = self.policy
        config = policy.config
        if self.attempts >= config.attempts or not policy.retryable(error):
            return None
        now = time.monotonic() if now is None else now
        if self._first_failure is None:
            self._first_failure = now
        pause = self._pause()
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > pause:
            pause = float(hint)
        if now + pause > self._first_failure + config.max_duration:
            return None
        return pause

    def _pause(self) -> float:
        config = self.policy.config
        # The exponent is capped: 2**60 pauses are past any max_backoff, and a float
        # cannot hold 2**1100.
        exponent = min(self.attempts - 1, 60)
        ceiling = min(config.max_backoff, config.initial_backoff * 2**exponent)
        jitter = config.jitter
        if jitter == "none":
            return ceiling
        draw = self.policy._random.uniform
        if jitter == "full":
            return draw(0.0, ceiling)
        # decorrelated: between the first pause and three times the last one, capped
        previous = self._previous or config.initial_backoff
        self._previous = min(config.max_backoff, draw(config.initial_backoff, 3 * previous))
        return self._previous
