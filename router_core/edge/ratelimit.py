"""Rate limits per source: a token bucket of events, in Redis or in this process.

Each source has a bucket of ``burst`` tokens that refills at ``events_per_second``; a
request takes one token per event it carries (a batch of 2500 takes 2500), so a limit
means the same whether a client batches or not. A request whose events do not fit is
refused whole with ``429 rate_limited`` and ``Retry-After``: the Segment SDKs retry a
batch as a whole, so accepting part of one would store the rest twice.

A batch larger than ``burst`` could never fit. Rather than refuse it forever, it is
let through when the bucket is full, and the bucket goes that far into debt: the next
requests wait until the debt is paid, so the average rate still holds.

Where the buckets live:

- ``[rate_limits] url`` (or, without it, ``[dedup] url``) set: in Redis, one hash per
  source, updated by one Lua script (one round trip, atomic across every process and
  machine, timed by the Redis server's clock so the machines' clocks do not matter).
  If Redis fails or is slower than ``timeout`` the request is let through (a limiter
  outage must not lose events), Redis is left alone for ``RETRY_INTERVAL``, a warning
  is logged at most every ``WARN_INTERVAL`` and ``/health`` shows it.
- otherwise: in this process's memory. Each gunicorn worker has its own buckets, so
  with N workers a source may get up to N times its limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from eventrouter import metrics
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.config import Config, RateLimit
from eventrouter.edge.buckets import REDIS_ERRORS, TAKE_SCRIPT, RedisScripts, TokenBucket
from eventrouter.errors import APIError
from eventrouter.health import ComponentHealth
from eventrouter.redact import redact_url

log = logging.getLogger("eventrouter.edge.ratelimit")

#: Plugin name of the per-process limiter (its /health component is ``rate_limits``).
PLUGIN_NAME = "ratelimit"
#: Seconds between repeated warnings while Redis is unreachable.
WARN_INTERVAL = 10.0
#: Seconds to skip Redis after a failure, so an outage costs requests nothing.
RETRY_INTERVAL = 1.0


class RateLimiter:
    """Every source's limit, checked before a request's events are dispatched.

    Registered on the bus as a plugin for its ``/health`` component and shutdown."""

    def __init__(
        self,
        limits: dict[str, RateLimit],
        default: RateLimit | None,
        *,
        url: str | None = None,
        prefix: str = "eventrouter:ratelimit",
        timeout: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.default = default
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.admitted = 0
        self.limited = 0
        self.errors = 0
        self.last_error: str | None = None
        self._skip_until = 0.0
        self._warned_at = float("-inf")
        self._redis = RedisScripts(url, timeout) if url else None

    @classmethod
    def from_config(cls, config: Config) -> RateLimiter | None:
        """The limiter ``config`` asks for; None when no source has a limit."""
        settings = config.rate_limits
        default = settings.default if settings is not None else None
        limits = {s.name: s.rate_limit for s in config.sources if s.rate_limit is not None}
        if default is None and not limits:
            return None
        url = settings.url if settings is not None else None
        if url is None and config.dedup is not None:
            url = config.dedup.url
        if settings is None:
            return cls(limits, default, url=url)
        return cls(
            limits, default, url=url, prefix=settings.prefix, timeout=float(settings.timeout)
        )

    def limit_of(self, source: str) -> RateLimit | None:
        return self.limits.get(source, self.default)

    @property
    def backend(self) -> str:
        return "redis" if self.url else "memory"

    # -- the check ----------------------------------------------------------------------
    async def admit(self, source: str, events: int) -> None:
        """Take ``events`` tokens from ``source``'s bucket.

        :raises APIError: 429 ``rate_limited``, with ``Retry-After``, when they do not fit."""
        limit = self.limit_of(source)
        if limit is None:
            return
        if self.url is None:
            wait = self._take_here(source, limit, events)
        else:
            wait = await self._take_in_redis(source, limit, events)
        if not wait:
            self.admitted += events
            return
        self.limited += events
        m = metrics.get()
        m.child(m.rate_limited, source).inc(events)
        m.rejected("rate_limited", events)
        retry_after = max(1, math.ceil(wait))
        what = "1 event" if events == 1 else f"a batch of {events} events"
        error = APIError(
            429,
            "rate_limited",
            f"source {source!r} is over its rate limit of {limit.events_per_second:g} "
            f"events/s (burst {limit.capacity}): {what} refused, retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )
        error.counted = True
        raise error

    def _take_here(self, source: str, limit: RateLimit, events: int) -> float:
        now = self.clock()
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(limit, now)
        return bucket.take(events, now)

    async def _take_in_redis(self, source: str, limit: RateLimit, events: int) -> float:
        """Seconds to wait (0.0: taken); 0.0 too when Redis fails: fail open."""
        if time.monotonic() < self._skip_until or self._redis is None:
            return 0.0
        try:
            allowed, wait = await self._redis.run(
                TAKE_SCRIPT,
                keys=[f"{self.prefix}:{source}"],
                args=[repr(limit.events_per_second), limit.capacity, events],
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return 0.0
        return 0.0 if int(allowed) else float(wait)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        detail = str(exc) or "no answer within the timeout"
        self.last_error = f"{type(exc).__name__}: {detail}"
        now = time.monotonic()
        self._skip_until = now + RETRY_INTERVAL
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "rate limits not applied (requests let through), Redis unavailable at %s: %s",
                redact_url(self.url or ""),
                self.last_error,
            )

    # -- plugin hooks -------------------------------------------------------------------
    @hookimpl
    async def eventrouter_health(self) -> ComponentHealth:
        component = ComponentHealth(
            name="rate_limits",
            up=True,
            required=False,  # without Redis requests pass unlimited; nothing is lost
            stats={
                "backend": self.backend,
                "admitted": self.admitted,
                "limited": self.limited,
                "errors": self.errors,
            },
        )
        if self.url is None:
            component.detail = "per process (in memory)"
            return component
        where = redact_url(self.url)
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            component.up = False
            detail = str(exc) or "no answer within the timeout"
            component.detail = (
                f"{where}: {type(exc).__name__}: {detail}; requests are let through unlimited"
            )
            return component
        component.detail = where + (f"; last error: {self.last_error}" if self.last_error else "")
        return component

    @hookimpl
    async def eventrouter_shutdown(self) -> None:
        if self._redis is not None:
            await self._redis.close()
