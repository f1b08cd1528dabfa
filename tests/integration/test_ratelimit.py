"""Rate limits per source: a token bucket of events, in this process or in Redis.

A request over its source's limit is refused whole with ``429 rate_limited`` and
``Retry-After``; other sources are not affected; the bucket refills; with Redis the
limit holds across gunicorn workers; Redis down lets everything through and says so in
``/health``. Waits poll a tiny refill rate with ``eventually``; the bucket arithmetic is
checked with an injected clock.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from eventrouter.config import ConfigError, RateLimit
from eventrouter.edge.ratelimit import RateLimiter, TokenBucket
from eventrouter.errors import APIError
from tests.helpers import ADMIN_TOKEN, HANG_GUARD, LiveServer, ServeProcess, eventually, make_config
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

REDIS_PORT = 6379
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/3"
#: Never refills within a test: one token per ~17 minutes.
FROZEN = 0.001
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def sources(web: dict | None, ios: dict | None = None) -> list[dict]:
    entries = [{"name": "web", "write_key": "wk-web"}, {"name": "ios", "write_key": "wk-ios"}]
    for entry, limit in zip(entries, (web, ios), strict=True):
        if limit is not None:
            entry["rate_limit"] = limit
    return entries


def track(server: LiveServer, key: str = "wk-web", message_id: str | None = None):
    body = {"event": "Clicked", "userId": "u1", "messageId": message_id or uuid.uuid4().hex}
    return server.post("/v1/track", body, auth=(key, ""))


def batch(server: LiveServer, ids: list[str], key: str = "wk-web"):
    items = [{"type": "track", "event": "Bulk", "userId": "u1", "messageId": i} for i in ids]
    return server.post("/v1/batch", {"batch": items}, auth=(key, ""))


def assert_rate_limited(response: httpx.Response, source: str) -> int:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "rate_limited"
    assert repr(source) in body["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def metric(server: LiveServer, line_start: str) -> float:
    text = server.client.get("/metrics").text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    servers: list[LiveServer] = []

    def start(raw: dict) -> LiveServer:
        server = LiveServer(make_config(tmp_path, raw)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test:ratelimit:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


# -- the bucket, with an injected clock --------------------------------------------------------
def test_bucket_spends_its_burst_then_refills_at_the_rate():
    bucket = TokenBucket(RateLimit(events_per_second=2, burst=4), now=100.0)
    assert [bucket.take(1, 100.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1, 100.0) == pytest.approx(0.5)  # one token comes in 1/2 s
    assert bucket.take(1, 100.5) == 0.0
    assert bucket.take(3, 100.5) == pytest.approx(1.5)
    assert bucket.take(3, 102.0) == 0.0
    assert bucket.take(1, 1000.0) == 0.0  # a long pause refills to the burst, no more
    assert bucket.tokens == 3


def test_a_batch_larger_than_the_burst_passes_a_full_bucket_and_leaves_a_debt():
    bucket = TokenBucket(RateLimit(events_per_second=10, burst=100), now=0.0)
    assert bucket.take(2500, 0.0) == 0.0  # never refused forever
    assert bucket.tokens == -2400
    assert bucket.take(1, 0.0) == pytest.approx(240.1)  # the debt is paid at the rate
    assert bucket.take(2500, 240.0) == pytest.approx(10.0)  # waits for a full bucket


def test_burst_defaults_to_one_seconds_worth():
    assert RateLimit(events_per_second=250).capacity == 250
    assert RateLimit(events_per_second=0.2).capacity == 1


def test_limiter_refuses_with_retry_after_and_keeps_sources_apart():
    now = [0.0]
    limiter = RateLimiter(
        {"web": RateLimit(events_per_second=1, burst=2)},
        RateLimit(events_per_second=5, burst=5),
        clock=lambda: now[0],
    )
    admit = lambda source, n: asyncio.run(limiter.admit(source, n))  # noqa: E731
    admit("web", 2)
    with pytest.raises(APIError) as refused:
        admit("web", 1)
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "1"}
    admit("ios", 5)  # the default limit, a bucket of its own
    now[0] = 1.0
    admit("web", 1)
    assert (limiter.admitted, limiter.limited) == (8, 1)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"sources": sources({"events_per_second": 0})}, "sources[0].rate_limit.events_per_second"),
        ({"sources": sources({"events_per_second": 1, "burst": 0})}, "sources[0].rate_limit.burst"),
        ({"sources": sources({"burst": 5})}, "sources[0].rate_limit.events_per_second"),
        ({"sources": sources({"per_minute": 5})}, "sources[0].rate_limit.per_minute"),
        ({"rate_limits": {"url": "http://127.0.0.1:6379"}}, "rate_limits.url"),
        ({"rate_limits": {"default": {"events_per_second": -1}}}, "rate_limits.default"),
    ],
)
def test_bad_rate_limit_config_names_the_key(tmp_path, raw, key):
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, raw)
    assert error.value.key.startswith(key), error.value


def test_rate_limits_use_the_dedup_redis_unless_they_have_their_own(tmp_path):
    limit = {"events_per_second": 1}
    dedup = {"url": "redis://127.0.0.1:6379/1"}
    limiter = RateLimiter.from_config(make_config(tmp_path, {"sources": sources(limit)}))
    assert limiter.backend == "memory"
    shared = RateLimiter.from_config(
        make_config(tmp_path, {"sources": sources(limit), "dedup": dedup})
    )
    assert shared.url == dedup["url"]
    own = RateLimiter.from_config(
        make_config(
            tmp_path,
            {"sources": sources(limit), "dedup": dedup, "rate_limits": {"url": REDIS_URL}},
        )
    )
    assert own.url == REDIS_URL
    assert RateLimiter.from_config(make_config(tmp_path, {"sources": sources(None)})) is None


# -- in this process, over HTTP --------------------------------------------------------------
def test_over_the_limit_is_429_with_retry_after_naming_the_source(start_server):
    server = start_server({"sources": sources({"events_per_second": FROZEN, "burst": 3})})
    limited = 'eventrouter_rate_limited_events_total{source="web"}'
    rejected = 'eventrouter_events_rejected_total{reason="rate_limited"}'
    before = metric(server, limited), metric(server, rejected)  # this process's counters
    accepted = [uuid.uuid4().hex for _ in range(3)]
    for message_id in accepted:
        assert track(server, message_id=message_id).status_code == 200
    refused = track(server, message_id="refused-1")
    assert assert_rate_limited(refused, "web") > 60  # a token comes in ~17 minutes
    assert refused.headers["Content-Type"].startswith("application/json")
    # the other source has no limit of its own and no default: unaffected
    for _ in range(5):
        assert track(server, key="wk-ios").status_code == 200
    stored = {e["message_id"] for e in server.events(source="web")}
    assert stored == set(accepted)
    assert (metric(server, limited), metric(server, rejected)) == (before[0] + 1, before[1] + 1)


def test_a_batch_over_the_remaining_tokens_is_refused_whole(start_server):
    server = start_server({"sources": sources({"events_per_second": FROZEN, "burst": 10})})
    limited = 'eventrouter_rate_limited_events_total{source="web"}'
    before = metric(server, limited)
    assert batch(server, ["first-1", "first-2", "first-3", "first-4"]).status_code == 200
    too_many = [f"second-{i}" for i in range(7)]  # 6 tokens are left
    assert_rate_limited(batch(server, too_many), "web")
    assert {e["message_id"] for e in server.events(event="Bulk")} == {
        "first-1",
        "first-2",
        "first-3",
        "first-4",
    }
    assert batch(server, too_many[:6]).status_code == 200  # exactly what is left fits
    assert len(server.events(event="Bulk")) == 10
    assert metric(server, limited) == before + 7  # events, not requests


def test_each_source_has_its_own_bucket_and_limit(start_server):
    server = start_server(
        {
            "sources": sources(
                {"events_per_second": FROZEN, "burst": 1}, {"events_per_second": FROZEN, "burst": 2}
            )
        }
    )
    assert track(server).status_code == 200
    assert_rate_limited(track(server), "web")
    assert track(server, key="wk-ios").status_code == 200
    assert track(server, key="wk-ios").status_code == 200
    assert_rate_limited(track(server, key="wk-ios"), "ios")


def test_the_bucket_refills(start_server):
    server = start_server({"sources": sources({"events_per_second": 20, "burst": 1})})
    while track(server).status_code == 200:  # at most a few: one token per 50 ms
        pass
    eventually(lambda: track(server).status_code == 200, "a refilled token accepted")


def test_legacy_track_and_body_write_key_are_limited_too(start_server):
    server = start_server({"sources": sources({"events_per_second": FROZEN, "burst": 1})})
    legacy = {"event_type": "page_view", "user_id": "u1", "write_key": "wk-web"}
    assert server.post("/track", legacy).status_code == 200
    assert_rate_limited(server.post("/track", legacy), "web")
    body = {"event": "Clicked", "userId": "u1", "writeKey": "wk-web"}
    assert_rate_limited(server.post("/v1/t", body), "web")


def test_open_ingestion_takes_the_default_limit(start_server):
    server = start_server({"rate_limits": {"default": {"events_per_second": FROZEN, "burst": 2}}})
    body = {"event": "Clicked", "userId": "u1"}
    assert server.post("/v1/track", body).status_code == 200
    assert server.post("/v1/track", body).status_code == 200
    assert_rate_limited(server.post("/v1/track", body), "default")
    health = server.health().json()["components"]["rate_limits"]
    assert health["status"] == "up"
    assert health["stats"]["backend"] == "memory"
    assert health["stats"]["limited"] == 1


def test_no_limit_configured_means_no_limiter(start_server):
    server = start_server({"sources": sources(None)})
    for _ in range(20):
        assert track(server).status_code == 200
    assert "rate_limits" not in server.health().json()["components"]


# -- in Redis ----------------------------------------------------------------------------------
def test_redis_bucket_limits_and_refills(start_server, redis_prefix):
    server = start_server(
        {
            "sources": sources({"events_per_second": FROZEN, "burst": 3}),
            "rate_limits": {"url": REDIS_URL, "prefix": redis_prefix},
        }
    )
    assert [track(server).status_code for _ in range(4)] == [200, 200, 200, 429]
    tokens = redis.Redis.from_url(REDIS_URL).hget(f"{redis_prefix}:web", "tokens")
    assert float(tokens) < 1
    health = server.health().json()["components"]["rate_limits"]
    assert health["status"] == "up"
    assert health["stats"]["backend"] == "redis"

    fast = start_server(
        {
            "sources": sources({"events_per_second": 20, "burst": 1}),
            "rate_limits": {"url": REDIS_URL, "prefix": f"{redis_prefix}:fast"},
        }
    )
    while track(fast).status_code == 200:
        pass
    eventually(lambda: track(fast).status_code == 200, "a refilled Redis token accepted")


def test_redis_limit_holds_across_two_gunicorn_workers(tmp_path, redis_prefix):
    config = tmp_path / "limits.toml"
    config.write_text(
        f"""
[rate_limits]
url = "{REDIS_URL}"
prefix = "{redis_prefix}"

[sinks.local]
type = "sqlite"
url = "sqlite:///{tmp_path}/events.db"

[[sources]]
name = "web"
write_key = "wk-web"
rate_limit = {{ events_per_second = {FROZEN}, burst = 10 }}
""",
        encoding="utf-8",
    )
    serve = ServeProcess(tmp_path, "--config", str(config), workers=2).wait_ready()
    try:

        def post(i: int) -> int:
            # A new connection each: the two workers take them as the kernel hands them out.
            body = {"event": "Clicked", "userId": "u1", "messageId": f"gunicorn-{i}"}
            return httpx.post(
                f"{serve.url}/v1/track", json=body, auth=("wk-web", ""), timeout=HANG_GUARD
            ).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(post, range(30)))
        assert sorted(statuses) == [200] * 10 + [429] * 20
        stored = httpx.get(f"{serve.url}/api/v1/events", headers=BEARER, timeout=HANG_GUARD)
        assert len(stored.json()["events"]) == 10
        metrics = httpx.get(f"{serve.url}/metrics", timeout=HANG_GUARD).text
        assert 'eventrouter_rate_limited_events_total{source="web"} 20.0' in metrics
    finally:
        serve.stop()
        print(serve.log())


def test_redis_down_lets_everything_through_and_health_says_so(start_server, redis_prefix, caplog):
    proxy = TcpProxy(REDIS_PORT).start()
    try:
        server = start_server(
            {
                "sources": sources({"events_per_second": FROZEN, "burst": 2}),
                "rate_limits": {"url": f"redis://127.0.0.1:{proxy.port}/3", "prefix": redis_prefix},
            }
        )
        assert [track(server).status_code for _ in range(3)] == [200, 200, 429]
        proxy.stop()
        with caplog.at_level(logging.WARNING, logger="eventrouter.edge.ratelimit"):
            statuses = [track(server).status_code for _ in range(10)]
        assert statuses == [200] * 10  # fail open: no event lost to the limiter
        assert len(server.events(source="web")) == 12
        warnings = [
            r.getMessage() for r in caplog.records if "rate limits not applied" in r.message
        ]
        assert len(warnings) == 1  # logged once, not once per request
        health = server.health()
        assert health.status_code == 200  # not a required component
        component = health.json()["components"]["rate_limits"]
        assert component["status"] == "down"
        assert component["required"] is False
        assert "let through" in component["detail"]
        assert component["stats"]["errors"] >= 1

        proxy.start()
        eventually(
            lambda: server.health().json()["components"]["rate_limits"]["status"] == "up",
            "the limiter's Redis reachable again",
        )
        eventually(lambda: track(server).status_code == 429, "the limit applied again")
    finally:
        proxy.stop()


def test_a_hung_redis_is_bounded_by_the_timeout(start_server, redis_prefix):
    proxy = TcpProxy(REDIS_PORT).start()
    try:
        server = start_server(
            {
                "sources": sources({"events_per_second": FROZEN, "burst": 1}),
                "rate_limits": {
                    "url": f"redis://127.0.0.1:{proxy.port}/3",
                    "prefix": redis_prefix,
                    "timeout": "100ms",
                },
            }
        )
        assert track(server).status_code == 200
        proxy.freeze()
        assert [track(server).status_code for _ in range(3)] == [200, 200, 200]
        component = server.health().json()["components"]["rate_limits"]
        assert component["status"] == "down"
    finally:
        proxy.stop()


def test_documented_keys_parse(tmp_path):
    """The shape docs/configuration.md shows."""
    config = make_config(
        tmp_path,
        {
            "sources": [
                {
                    "name": "web",
                    "write_key": "k",
                    "rate_limit": {"events_per_second": 1000, "burst": 2000},
                }
            ],
            "rate_limits": {"url": REDIS_URL, "default": {"events_per_second": 100}},
        },
    )
    assert config.sources[0].rate_limit == RateLimit(events_per_second=1000, burst=2000)
    assert config.rate_limits.default.capacity == 100
