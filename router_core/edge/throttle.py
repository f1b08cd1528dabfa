"""The sign-in throttle: failed sign-ins and wrong bearer tokens, per client and in total.

Every attempt to prove the admin token (the sign-in form, a bearer token on the query
API, the dashboard, ``/health`` or ``/metrics``) is first checked against two token
buckets of *failures* (``[admin.throttle]``): the client address's (behind
``server.trusted_proxies``, the browser's; an IPv6 address counts by its /64, which one
client usually holds whole) and one for everyone. While either is empty the attempt
answers ``429`` with ``Retry-After`` and the token is not even compared: a throttled
guess learns nothing, whether it was right or wrong. A failure takes one token from
each bucket, into debt if several failures arrive together, so a burst of concurrent
guesses is paid for in full. A success takes nothing: signing in with the right token
is never slowed, and a valid session cookie is never throttled.

Where the buckets live: in Redis when ``[admin.throttle] url``, ``[rate_limits] url`` or
``[dedup] url`` names one (one Lua script, atomic across every gunicorn worker and
machine); otherwise in each process, so with N gunicorn workers a client may fail up to
N times the limit. If Redis fails, this process's own buckets take over until it
answers again: the throttle never fails open.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from eventrouter import metrics
from eventrouter.config import Config, RateLimit, throttle_redis_url
from eventrouter.edge.buckets import REDIS_ERRORS, THROTTLE_SCRIPT, RedisScripts, TokenBucket
from eventrouter.redact import redact_url

log = logging.getLogger("eventrouter.throttle")

#: Client buckets one process keeps; past it, the least recently failed one goes.
MAX_CLIENTS = 10_000
#: Seconds to use the process's own buckets after a Redis failure.
RETRY_INTERVAL = 1.0
#: Seconds between repeated warnings while Redis is unreachable.
WARN_INTERVAL = 10.0
REDIS_TIMEOUT = 0.25
GLOBAL = "global"


def client_key(address: str | None) -> str:
    """The bucket of a client address: IPv4 as is, IPv6 by its /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"  # not an address (a unix socket): one bucket for all of them
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Throttle:
    """The failure buckets of one server process (or their Redis copies)."""

    def __init__(
        self,
        client: RateLimit,
        everyone: RateLimit,
        *,
        url: str | None = None,
        prefix: str = "eventrouter:throttle",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.everyone = everyone
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global = TokenBucket(everyone, clock())
        self._redis = RedisScripts(url, REDIS_TIMEOUT) if url else None
        self._skip_until = 0.0
        self._warned_at = float("-inf")
        #: Attempts refused with 429, failures counted (this process).
        self.throttled = 0
        self.failures = 0

    @classmethod
    def from_config(cls, config: Config) -> Throttle:
        settings = config.admin.throttle
        return cls(
            settings.client.as_rate_limit(),
            settings.global_.as_rate_limit(),
            url=throttle_redis_url(config),
            prefix=settings.prefix,
        )

    @property
    def backend(self) -> str:
        return "redis" if self.url else "memory"

    async def retry_after(self, address: str | None) -> int:
        """0 when an attempt from ``address`` may be checked, else the whole seconds to
        wait (``Retry-After``), counted as throttled."""
        key = client_key(address)
        wait = await self._in_redis(key, "check")
        if wait is None:
            wait = self._wait_here(key, self.clock())
        if wait <= 0:
            return 0
        self.throttled += 1
        m = metrics.get()
        m.child(m.admin_auth_failures, "throttled").inc()
        return max(1, math.ceil(wait))

    async def failed(self, address: str | None) -> None:
        """Charge one failure to ``address``'s bucket and to the global one."""
        self.failures += 1
        m = metrics.get()
        m.child(m.admin_auth_failures, "refused").inc()
        key = client_key(address)
        if await self._in_redis(key, "charge") is None:
            self._charge_here(key, self.clock())

    # -- in this process --------------------------------------------------------------
    def _wait_here(self, key: str, now: float) -> float:
        bucket = self._clients.get(key)  # a client that never failed has no bucket
        client_wait = bucket.wait(now) if bucket is not None else 0.0
        return max(client_wait, self._global.wait(now))

    def _charge_here(self, key: str, now: float) -> None:
        bucket = self._clients.get(key)
        if bucket is None:
            if len(self._clients) >= MAX_CLIENTS:
                # The least recently failed goes: the global bucket still bounds what a
                # client whose bucket was forgotten can try.
                self._clients.popitem(last=False)
            bucket = self._clients[key] = TokenBucket(self.client, now)
        else:
            self._clients.move_to_end(key)
        bucket.charge(now)
        self._global.charge(now)

    # -- in Redis ----------------------------------------------------------------------
    async def _in_redis(self, key: str, mode: str) -> float | None:
        """Seconds to wait (``check``) or 0.0 (``charge``); None when Redis is not used
        or failed (the caller falls back on this process's buckets)."""
        if self._redis is None or time.monotonic() < self._skip_until:
            return None
        limits = (self.client, self.everyone)
        args: list = []
        for limit in limits:
            args += [repr(limit.events_per_second), limit.capacity]
        try:
            wait = await self._redis.run(
                THROTTLE_SCRIPT,
                keys=[f"{self.prefix}:client:{key}", f"{self.prefix}:{GLOBAL}"],
                args=[*args, mode],
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        return float(wait)

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._skip_until = now + RETRY_INTERVAL
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "sign-in throttle: Redis unavailable at %s (%s: %s); counting in this "
                "process meanwhile",
                redact_url(self.url or ""),
                type(exc).__name__,
                str(exc) or "no answer within the timeout",
            )

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
