"""Token buckets, in this process or in Redis: what the per-source rate limits
(:mod:`eventrouter.edge.ratelimit`) and the sign-in throttle
(:mod:`eventrouter.edge.throttle`) count with.

A bucket holds up to ``capacity`` tokens and refills at ``rate`` tokens a second. In
Redis, a bucket is a hash (``tokens``, ``at``) updated by a Lua script in one round trip,
timed by the Redis server's clock so that the machines' clocks do not matter; a bucket
that has refilled expires, since a full bucket is the same as none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio

from eventrouter.config import RateLimit

#: What a Redis call may raise when the server is down, hung or refusing.
REDIS_ERRORS = (redis.RedisError, OSError, TimeoutError)

#: KEYS[1]: the bucket. ARGV: rate (tokens/s), capacity, tokens wanted.
#: Returns {1, "0"} when taken, else {0, seconds to wait} (a string: Redis would truncate
#: a Lua number to an integer).
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local need = math.min(wanted, capacity)
local allowed = 0
local wait = 0
if tokens >= need then
  tokens = tokens - wanted
  allowed = 1
else
  wait = (need - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.17g', now))
-- Once refilled the bucket is the same as no bucket: let Redis forget it.
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.6f', wait)}
"""

#: The sign-in throttle: KEYS = the buckets (the client's, the global one); ARGV = a
#: rate and a capacity per key, then the mode: ``check`` (read only) answers the seconds
#: until every bucket holds a token ("0": none is empty); ``charge`` takes one token
#: from each, into debt if need be, so that failures arriving together are all paid for.
THROTTLE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local charge = ARGV[#ARGV] == 'charge'
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    tokens = capacity
    at = now
  end
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  if charge then
    tokens = tokens - 1
    redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
               'at', string.format('%.17g', now))
    redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / rate * 1000) + 1000)
  elseif tokens < 1 then
    wait = math.max(wait, (1 - tokens) / rate)
  end
end
return string.format('%.6f', wait)
"""


class TokenBucket:
    """One bucket in this process; ``now`` is a monotonic clock reading."""

    __slots__ = ("at", "capacity", "rate", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.events_per_second
        self.capacity = limit.capacity
        self.tokens = float(self.capacity)
        self.at = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now

    def take(self, wanted: int, now: float) -> float:
        """Take ``wanted`` tokens: 0.0 when taken, else the seconds until they would fit.

        More than ``capacity`` is taken from a full bucket, which goes into debt."""
        self._refill(now)
        need = min(wanted, self.capacity)
        if self.tokens >= need:
            self.tokens -= wanted
            return 0.0
        return (need - self.tokens) / self.rate

    def wait(self, now: float) -> float:
        """Seconds until the bucket holds a whole token (0.0: it does); takes nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def charge(self, now: float) -> None:
        """Take one token whatever is left: an empty bucket goes into debt."""
        self._refill(now)
        self.tokens -= 1


class RedisScripts:
    """Lua scripts on one Redis: a ``redis.asyncio`` client per event loop (it binds its
    connections to the loop that opened them: one per process under ``serve``; tests may
    run several)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}

    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            self._loop = loop
            self._scripts = {}
        return self._client

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` (EVALSHA, loading it once) within ``timeout``.

        :raises redis.RedisError, OSError, TimeoutError: Redis failed or did not answer."""
        client = self.client()
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = client.register_script(script)
        async with asyncio.timeout(self.timeout):
            return await registered(keys=keys, args=args, client=client)

    async def ping(self) -> None:
        async with asyncio.timeout(self.timeout):
            await self.client().ping()

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
