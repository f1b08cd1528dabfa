"""Auth hardening (issue 18, item 8), as a client and an operator see it:

- failed sign-ins and wrong bearer tokens are throttled per client (behind trusted
  proxies, the browser's address) and in total: ``429`` with ``Retry-After``, the token
  not even compared; the right token is never charged; the buckets are shared through
  Redis, and a Redis outage falls back to each process's own;
- an admin token shorter than 24 characters stops the start, naming the setting;
- signing out revokes that session only (in this process at once, in another one
  through the admin store), closes its live tail, and a new token refuses every old
  cookie;
- ``admin.secure_cookies``;
- ``/health`` answers its status to anyone and its components to the token, a session,
  or everyone if configured; ``/metrics`` public, behind the token, off, or on a
  listener of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from eventrouter import config as config_module
from eventrouter.app import create_app
from eventrouter.config import MIN_ADMIN_TOKEN_LENGTH, ConfigError, RateLimit
from eventrouter.edge.auth import AdminAuth
from eventrouter.edge.buckets import TokenBucket
from eventrouter.edge.sessions import REFRESH_INTERVAL, RevokedSessions
from eventrouter.edge.throttle import Throttle, client_key
from eventrouter.sinks.postgres_store import PostgresStore
from tests.admin_support import open_tail, receive_until, refused_status, sign_in
from tests.helpers import (
    ADMIN_BEARER,
    ADMIN_TOKEN,
    HANG_GUARD,
    LiveServer,
    ServeProcess,
    eventually,
    free_port,
    make_config,
    run_eventrouter,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

SESSION = "eventrouter_session"
REDIS_URL = "redis://127.0.0.1:6379/3"
#: Never refills within a test: one failure per ~17 hours.
FROZEN = 0.001
WIDE = {"burst": 10_000, "per_minute": 60_000}
WRONG = {"Authorization": "Bearer " + "x" * 32}


def throttled(client: dict, everyone: dict | None = None, **extra) -> dict:
    """A config whose loopback peer is a trusted proxy: ``X-Forwarded-For`` picks the
    client, as an nginx edge in front would."""
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "admin": {"throttle": {"client": client, "global": everyone or WIDE, **extra}},
    }


def frozen(burst: int) -> dict:
    return {"burst": burst, "per_minute": FROZEN}


def from_client(ip: str, **headers: str) -> dict:
    return {"X-Forwarded-For": ip, **headers}


def login(server: LiveServer, token: str, ip: str) -> httpx.Response:
    """The sign-in form, submitted from ``ip`` (a fresh browser each time)."""
    with httpx.Client(base_url=server.url, headers=from_client(ip)) as client:
        form = client.get("/admin/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        return client.post("/admin/login", data={"csrf_token": csrf, "token": token})


def assert_throttled(response: httpx.Response) -> int:
    assert response.status_code == 429, (response.status_code, response.text)
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def sign_out(base_url: str, cookie: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, cookies={SESSION: cookie}) as client:
        page = client.get("/admin/events")
        assert page.status_code == 200, page.status_code
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        return client.post("/admin/logout", data={"csrf_token": csrf})


def with_session(server: LiveServer, path: str, cookie: str, **kwargs) -> httpx.Response:
    """``GET path`` from a browser holding the session cookie ``cookie``."""
    with httpx.Client(base_url=server.url, cookies={SESSION: cookie}) as client:
        return client.get(path, **kwargs)


def signed_in(base_url: str, cookie: str) -> bool:
    with httpx.Client(base_url=base_url, cookies={SESSION: cookie}) as client:
        return client.get("/admin/events").status_code == 200


def connections_by_worker(url: str, cookies: dict) -> list[list[httpx.Client]]:
    """Kept-alive connections grouped by the gunicorn worker that holds each: every
    connection posts an event, then asks ``/health`` when its worker last committed
    (each worker commits its own events, at its own moments)."""
    clients: list[httpx.Client] = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:

        def open_one(_: int) -> httpx.Client:
            client = httpx.Client(base_url=url, cookies=cookies, timeout=HANG_GUARD)
            body = {"userId": "u", "event": "Which Worker", "messageId": uuid.uuid4().hex}
            assert client.post("/v1/track", json=body).status_code == 200
            return client

        with ThreadPoolExecutor(max_workers=8) as pool:  # together: both workers take some
            clients += pool.map(open_one, range(8))
        groups: dict[float, list[httpx.Client]] = {}
        for client in clients:
            stats = client.get("/health", headers=ADMIN_BEARER).json()["components"]
            groups.setdefault(stats["sink:local"]["stats"]["last_success_at"], []).append(client)
        if len(groups) == 2:
            return list(groups.values())
    pytest.fail("the connections never reached both workers")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test-throttle:{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


# -- the sign-in throttle --------------------------------------------------------------------
def test_failed_sign_ins_are_throttled_per_client_then_not_even_compared(start_server):
    server = start_server(throttled(frozen(3)))
    for _ in range(3):
        refused = login(server, "wrong-token-" + "x" * 20, "198.51.100.7")
        assert refused.status_code == 401
        assert "That admin token is not valid." in refused.text
    retry_after = assert_throttled(login(server, "wrong-token-" + "x" * 20, "198.51.100.7"))
    assert retry_after > 3600  # one failure back every ~17 hours
    page = login(server, ADMIN_TOKEN, "198.51.100.7")  # the right token, not compared
    assert_throttled(page)
    assert "Too many failed sign-ins" in page.text
    assert SESSION not in page.cookies
    # another client is not affected, and signs in at once
    other = login(server, ADMIN_TOKEN, "203.0.113.9")
    assert other.status_code == 303 and other.cookies[SESSION]


def test_the_right_token_is_never_charged(start_server):
    server = start_server(throttled(frozen(2)))
    assert login(server, "wrong-token-" + "x" * 20, "198.51.100.7").status_code == 401
    for _ in range(5):  # successes, sign-in form and bearer: none costs a failure
        assert login(server, ADMIN_TOKEN, "198.51.100.7").status_code == 303
        response = server.client.get(
            "/api/v1/events", headers=from_client("198.51.100.7", **ADMIN_BEARER)
        )
        assert response.status_code == 200
    assert login(server, "wrong-token-" + "x" * 20, "198.51.100.7").status_code == 401
    assert_throttled(login(server, "wrong-token-" + "x" * 20, "198.51.100.7"))


def test_wrong_bearer_tokens_share_the_bucket_and_sessions_are_never_throttled(start_server):
    server = start_server(throttled(frozen(3)))
    cookie = sign_in(server.url)  # before: from 127.0.0.1
    ip = "198.51.100.7"
    wrong = from_client(ip, **WRONG)
    assert server.client.get("/api/v1/events", headers=wrong).status_code == 401
    assert server.client.get("/admin/events", headers=wrong).status_code == 401
    empty = from_client(ip, Authorization="Bearer")  # an empty bearer is a wrong one
    assert server.client.get("/health", headers=empty).status_code == 401
    for path in ("/api/v1/events", "/admin/events", "/health"):
        response = server.client.get(path, headers=wrong)
        assert_throttled(response)
        assert response.json()["code"] == "too_many_attempts"
        right = server.client.get(path, headers=from_client(ip, **ADMIN_BEARER))
        assert_throttled(right)  # not compared while throttled
    assert_throttled(login(server, ADMIN_TOKEN, ip))  # the sign-in form too
    # a signed-in browser at that address goes on working
    session = with_session(server, "/admin/events", cookie, headers=from_client(ip))
    assert session.status_code == 200
    # another client's right token is answered at once
    other = server.client.get("/api/v1/events", headers=from_client("192.0.2.1", **ADMIN_BEARER))
    assert other.status_code == 200
    metrics = server.client.get("/metrics").text
    assert re.search(r'eventrouter_admin_auth_failures_total\{outcome="throttled"\} [1-9]', metrics)
    assert re.search(r'eventrouter_admin_auth_failures_total\{outcome="refused"\} [1-9]', metrics)


def test_x_forwarded_for_is_believed_from_trusted_proxies_only(start_server):
    """Without trusted proxies a client cannot dodge its bucket by naming another
    address: the peer is the client."""
    server = start_server({"admin": {"throttle": {"client": frozen(2), "global": WIDE}}})
    for i in range(2):
        headers = {"X-Forwarded-For": f"203.0.113.{i}", **WRONG}
        assert server.client.get("/api/v1/events", headers=headers).status_code == 401
    headers = {"X-Forwarded-For": "203.0.113.99", **WRONG}
    assert_throttled(server.client.get("/api/v1/events", headers=headers))


def test_the_global_bucket_bounds_guessing_from_many_addresses(start_server):
    server = start_server(throttled(frozen(100), frozen(3)))
    for i in range(3):
        assert login(server, "wrong-token-" + "x" * 20, f"203.0.113.{i}").status_code == 401
    assert_throttled(login(server, "wrong-token-" + "x" * 20, "198.51.100.50"))
    assert_throttled(login(server, ADMIN_TOKEN, "198.51.100.51"))  # locked for all...
    response = server.client.get("/api/v1/events", headers=from_client("198.51.100.52", **WRONG))
    assert_throttled(response)


def handshake_status(url: str, headers: dict) -> int:
    """101 when the live tail's socket opens, else the refusing status."""
    ws_url = url.replace("http://", "ws://") + "/admin/live/ws"
    try:
        with connect(ws_url, additional_headers=headers, origin=url, open_timeout=HANG_GUARD):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_the_live_tail_handshake_is_throttled_too(start_server):
    server = start_server({"admin": {"throttle": {"client": frozen(1), "global": WIDE}}})
    assert handshake_status(server.url, ADMIN_BEARER) == 101
    assert handshake_status(server.url, WRONG) == 403  # charged: the bucket is empty now
    assert handshake_status(server.url, ADMIN_BEARER) == 403  # refused before accept
    assert_throttled(server.client.get("/api/v1/events", headers=ADMIN_BEARER))


def test_concurrent_failures_are_all_charged():
    """Failures that arrive together put the bucket into debt: a burst of parallel
    guesses buys no more than the same guesses one by one."""
    now = [0.0]
    throttle = Throttle(
        RateLimit(events_per_second=1.0, burst=2),
        RateLimit(events_per_second=100.0, burst=10_000),
        clock=lambda: now[0],
    )

    async def burst() -> None:
        assert await throttle.retry_after("198.51.100.7") == 0
        await asyncio.gather(*(throttle.failed("198.51.100.7") for _ in range(10)))

    asyncio.run(burst())
    # 2 tokens, 10 failures: 8 in debt, so a whole token is back after 9 s
    assert asyncio.run(throttle.retry_after("198.51.100.7")) == 9
    now[0] = 9.0
    assert asyncio.run(throttle.retry_after("198.51.100.7")) == 0
    assert asyncio.run(throttle.retry_after("198.51.100.8")) == 0  # another client


def test_bucket_wait_and_charge():
    bucket = TokenBucket(RateLimit(events_per_second=0.5, burst=2), now=0.0)
    assert bucket.wait(0.0) == 0.0
    bucket.charge(0.0)
    bucket.charge(0.0)
    assert bucket.wait(0.0) == pytest.approx(2.0)  # one token per 2 s
    bucket.charge(0.0)  # into debt
    assert bucket.tokens == -1
    assert bucket.wait(1.0) == pytest.approx(3.0)
    assert bucket.wait(4.0) == 0.0


def test_client_buckets_are_bounded(monkeypatch):
    monkeypatch.setattr("eventrouter.edge.throttle.MAX_CLIENTS", 100)
    throttle = Throttle(
        RateLimit(events_per_second=FROZEN, burst=1), RateLimit(events_per_second=1e6, burst=10**9)
    )

    async def many() -> None:
        for i in range(5000):
            await throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")

    asyncio.run(many())
    assert len(throttle._clients) == 100


def test_ipv6_clients_count_by_their_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:198.51.100.7") == client_key("198.51.100.7") == "198.51.100.7"
    assert client_key(None) == client_key("not an address") == "unknown"


def test_redis_buckets_are_shared_by_every_process(start_server, redis_prefix):
    raw = throttled(frozen(3), url=REDIS_URL, prefix=redis_prefix)
    first, second = start_server(raw), start_server(raw)  # two processes' worth of state
    for server in (first, second, first):
        response = server.client.get("/api/v1/events", headers=from_client("198.51.100.7", **WRONG))
        assert response.status_code == 401
    assert_throttled(
        second.client.get("/admin/events", headers=from_client("198.51.100.7", **WRONG))
    )
    stored = redis.Redis.from_url(REDIS_URL).hget(f"{redis_prefix}:client:198.51.100.7", "tokens")
    assert float(stored) < 1


def test_redis_down_falls_back_to_this_processs_buckets(start_server, caplog):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    server = start_server(throttled(frozen(2), url=closed))
    with caplog.at_level("WARNING", logger="eventrouter.throttle"):
        for _ in range(2):
            response = server.client.get(
                "/api/v1/events", headers=from_client("198.51.100.7", **WRONG)
            )
            assert response.status_code == 401
        assert_throttled(
            server.client.get("/api/v1/events", headers=from_client("198.51.100.7", **WRONG))
        )
    assert "counting in this process meanwhile" in caplog.text


def test_the_throttle_holds_across_gunicorn_workers_with_redis(tmp_path, redis_prefix):
    config = tmp_path / "throttle.toml"
    config.write_text(
        f"""
[admin.throttle]
url = "{REDIS_URL}"
prefix = "{redis_prefix}"
client = {{ burst = 5, per_minute = {FROZEN} }}

[sinks.local]
type = "sqlite"
url = "sqlite:///{tmp_path}/events.db"
""",
        encoding="utf-8",
    )
    serve = ServeProcess(tmp_path, "--config", str(config), workers=2).wait_ready()
    clients: list[httpx.Client] = []
    try:
        one, other = connections_by_worker(serve.url, {})
        clients = one + other
        # alternately on a connection of each worker: one budget of 5 for both
        statuses = [
            (one if i % 2 else other)[0].get("/api/v1/events", headers=WRONG).status_code
            for i in range(12)
        ]
        assert statuses == [401] * 5 + [429] * 7, statuses
    finally:
        for client in clients:
            client.close()
        serve.stop()


# -- the admin token's length ---------------------------------------------------------------
def test_a_short_admin_token_stops_the_start_naming_the_setting(tmp_path):
    short = "s" * (MIN_ADMIN_TOKEN_LENGTH - 1)
    with pytest.raises(ConfigError) as from_file:
        make_config(tmp_path, {"admin": {"token": short}})
    assert from_file.value.key == "admin.token"
    assert "at least 24" in from_file.value.message
    assert short not in str(from_file.value)  # the value itself is never echoed
    with pytest.raises(ConfigError) as from_env:
        make_config(tmp_path, {}, EVENTROUTER_ADMIN_TOKEN=short)
    assert from_env.value.key == "EVENTROUTER_ADMIN_TOKEN"
    exact = "e" * MIN_ADMIN_TOKEN_LENGTH
    assert make_config(tmp_path, {"admin": {"token": exact}}).admin.token == exact
    generated = config_module.parse({}, None, {})
    assert config_module.ensure_admin_token(generated)
    assert len(generated.admin.token) >= MIN_ADMIN_TOKEN_LENGTH


def test_config_check_and_serve_report_a_short_token(tmp_path):
    path = tmp_path / "short.toml"
    path.write_text('[admin]\ntoken = "sixteen-chars-xx"\n', encoding="utf-8")
    checked = run_eventrouter("config", "check", str(path))
    assert checked.returncode == 2
    assert f"{path}: admin.token: the admin token is 16 characters long" in checked.stderr
    assert "sixteen-chars-xx" not in checked.stderr
    env = {"EVENTROUTER_ADMIN_TOKEN": "too-short", "EVENTROUTER_DATA_DIR": str(tmp_path / "d")}
    serve = run_eventrouter("serve", "--port", str(free_port()), env=env)
    assert serve.returncode == 2
    assert "EVENTROUTER_ADMIN_TOKEN: the admin token is 9 characters long" in serve.stderr
    fine = tmp_path / "fine.toml"
    fine.write_text(f'[admin]\ntoken = "{ADMIN_TOKEN}"\n', encoding="utf-8")
    ok = run_eventrouter("config", "check", str(fine))
    assert ok.returncode == 0, ok.stderr
    assert "sign-in throttle: 10 failures then 5/min per client" in ok.stdout
    assert "buckets: per process" in ok.stdout
    assert ADMIN_TOKEN not in ok.stdout


# -- sessions: sign-out, rotation, the live tail ------------------------------------------------
def test_signing_out_revokes_that_session_only(server):
    first, second = sign_in(server.url), sign_in(server.url)
    assert first != second
    response = sign_out(server.url, first)
    assert response.status_code == 303
    # a copy of the signed-out cookie is refused everywhere a session is accepted
    assert not signed_in(server.url, first)
    api = with_session(server, "/api/v1/events", first)
    assert api.status_code == 401
    health = with_session(server, "/health", first)
    assert health.json() == {"status": "ok"}  # a stranger's view
    assert refused_status(server.url, first) == 403
    # the other session goes on: signing out is per session, not everyone's
    assert signed_in(server.url, second)
    assert "components" in with_session(server, "/health", second).json()


def test_signing_out_closes_that_sessions_live_tail(server):
    doomed, kept = sign_in(server.url), sign_in(server.url)
    with open_tail(server.url, doomed) as closing, open_tail(server.url, kept) as staying:
        receive_until(closing, lambda m: "live-controls" in m, "the tail's controls")
        receive_until(staying, lambda m: "live-controls" in m, "the tail's controls")
        assert sign_out(server.url, doomed).status_code == 303
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # rows and controls until the server closes it
                closing.recv(timeout=HANG_GUARD)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # the other session's tail still streams
        body = {"userId": "u-tail", "event": "Still Here", "messageId": uuid.uuid4().hex}
        assert server.post("/v1/track", body).status_code == 200
        receive_until(staying, lambda m: body["messageId"] in m, "the event on the other tail")


def test_signing_out_reaches_the_other_processes_through_the_store(tmp_path):
    """Two app instances on one admin store stand for two gunicorn workers (or two
    machines): each keeps its own copy of the revoked ids, read from the store."""
    config = make_config(tmp_path)
    one, other = LiveServer(config).start(), LiveServer(make_config(tmp_path)).start()
    try:
        cookie = sign_in(one.url)
        assert signed_in(other.url, cookie)  # one token, one signing key: no session store
        with open_tail(other.url, cookie) as tail:
            receive_until(tail, lambda m: "live-controls" in m, "the tail's controls")
            assert sign_out(one.url, cookie).status_code == 303
            assert not signed_in(one.url, cookie)  # at once where it signed out
            eventually(lambda: not signed_in(other.url, cookie), "the other process refuses it")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    tail.recv(timeout=REFRESH_INTERVAL + HANG_GUARD)
            assert closed.value.rcvd.code == 4401
    finally:
        one.stop()
        other.stop()


def test_signing_out_holds_across_gunicorn_workers(tmp_path):
    serve = ServeProcess(tmp_path, workers=2).wait_ready()
    clients: list[httpx.Client] = []
    try:
        cookie, kept = sign_in(serve.url), sign_in(serve.url)
        here, there = connections_by_worker(serve.url, {SESSION: cookie})
        clients = here + there
        for client in clients:
            assert client.get("/admin/events").status_code == 200  # valid in both workers
        page = here[0].get("/admin/events")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        assert here[0].post("/admin/logout", data={"csrf_token": csrf}).status_code == 303
        here[0].cookies.set(SESSION, cookie)  # a copy kept from before the sign-out
        # the worker that signed it out refuses it at once; the other within 2 seconds
        assert all(c.get("/admin/events").status_code == 303 for c in here)
        eventually(
            lambda: all(c.get("/admin/events").status_code == 303 for c in there),
            "the other worker refuses the signed-out session",
        )
        for client in clients:  # another session is not affected, in either worker
            client.cookies.set(SESSION, kept)
            assert client.get("/admin/events").status_code == 200
    finally:
        for client in clients:
            client.close()
        serve.stop()


def test_a_new_token_refuses_every_old_cookie_and_the_restart_closes_the_tail(tmp_path):
    first = LiveServer(make_config(tmp_path)).start()
    try:
        cookie = sign_in(first.url)
        with open_tail(first.url, cookie) as tail:
            receive_until(tail, lambda m: "live-controls" in m, "the tail's controls")
            first.stop()  # the restart...
            with pytest.raises(ConnectionClosed):
                while True:
                    tail.recv(timeout=HANG_GUARD)
    finally:
        first.stop()
    rotated = "rotated-admin-token-0123456789abcdef"
    second = LiveServer(make_config(tmp_path, {"admin": {"token": rotated}})).start()
    try:
        assert not signed_in(second.url, cookie)
        assert with_session(second, "/api/v1/events", cookie).status_code == 401
        assert refused_status(second.url, cookie) == 403
        fresh = second.client.get("/api/v1/events", headers={"Authorization": f"Bearer {rotated}"})
        assert fresh.status_code == 200
    finally:
        second.stop()


def test_a_process_that_cannot_read_the_signed_out_ids_refuses_sessions():
    """Fail closed: it cannot tell a signed-out session from another."""
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    auth = AdminAuth(ADMIN_TOKEN, revoked=RevokedSessions(PostgresStore(closed)))
    _, session = auth.new_session_cookie()
    assert auth.current(session)  # not started (no lifespan): its own sign-outs only
    auth.revoked.start()
    try:
        assert auth.revoked.unread
        assert not auth.current(session)
    finally:
        auth.revoked.stop()


def test_a_cookie_without_a_session_id_is_refused(tmp_path):
    """A cookie signed before sessions had ids could never be signed out: refused."""
    app = create_app(make_config(tmp_path))
    legacy = app.dashboard.auth._serializer.dumps({"csrf": "x" * 32})
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/admin/events", cookies={SESSION: legacy}).status_code == 303


# -- admin.secure_cookies ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # (direct http, https through the trusted proxy, a spoofed proto from elsewhere)
        ("auto", (False, True, False)),
        ("always", (True, True, True)),
        ("never", (False, False, False)),
    ],
)
def test_secure_cookies(tmp_path, mode, expected):
    config = make_config(
        tmp_path,
        {"server": {"trusted_proxies": ["10.0.0.0/8"]}, "admin": {"secure_cookies": mode}},
    )
    client = falcon.testing.TestClient(create_app(config))
    proto = {"X-Forwarded-Proto": "https"}
    cases = [({}, "127.0.0.1"), (proto, "10.1.2.3"), (proto, "192.0.2.1")]
    seen = []
    for headers, peer in cases:
        form = client.simulate_get("/admin/login", headers=headers, remote_addr=peer)
        login_cookie = form.cookies["eventrouter_login_csrf"]
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        signed = client.simulate_post(
            "/admin/login",
            body=f"csrf_token={csrf}&token={ADMIN_TOKEN}",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
            cookies={"eventrouter_login_csrf": login_cookie.value},
            remote_addr=peer,
        )
        assert signed.status_code == 303
        assert login_cookie.secure == signed.cookies[SESSION].secure
        seen.append(signed.cookies[SESSION].secure)
    assert tuple(seen) == expected


def test_secure_cookies_must_be_one_of_three(tmp_path):
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, {"admin": {"secure_cookies": "yes"}})
    assert error.value.key == "admin.secure_cookies"


# -- /health ---------------------------------------------------------------------------------
def test_health_shows_its_components_to_the_token_and_a_session_only(server):
    public = server.client.get("/health")
    assert public.status_code == 200
    assert public.json() == {"status": "ok"}
    assert server.health().json()["components"]["sink:local"]["status"] == "up"
    cookie = sign_in(server.url)
    as_browser = with_session(server, "/health", cookie).json()
    assert "sink:local" in as_browser["components"]
    assert server.client.get("/health", headers=WRONG).status_code == 401


def test_health_details_can_be_public(start_server):
    server = start_server({"server": {"health_details": "public"}})
    body = server.client.get("/health").json()
    assert body["components"]["sink:local"]["status"] == "up"
    # nothing checks a token there, so a wrong one is no failed attempt either
    assert server.client.get("/health", headers=WRONG).status_code == 200


# -- /metrics ---------------------------------------------------------------------------------
def test_metrics_behind_the_token(start_server):
    server = start_server({"server": {"metrics": "token"}})
    anonymous = server.client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert server.client.get("/metrics", headers=WRONG).status_code == 401
    scraped = server.client.get("/metrics", headers=ADMIN_BEARER)
    assert scraped.status_code == 200
    assert "eventrouter_events_received_total" in scraped.text


def test_metrics_off(start_server):
    server = start_server({"server": {"metrics": "off"}})
    assert server.client.get("/metrics").status_code == 404
    assert server.client.get("/metrics", headers=ADMIN_BEARER).status_code == 404


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"metrics_bind": "9100"}, "is not host:port"),
        ({"metrics_bind": "127.0.0.1:0"}, "is not host:port"),
        ({"metrics_bind": "127.0.0.1:8000"}, "give /metrics its own port"),
        ({"metrics_bind": "127.0.0.1:9100", "metrics": "off"}, '"off"'),
    ],
)
def test_a_bad_metrics_bind_names_the_key(tmp_path, server, message):
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, {"server": server})
    assert error.value.key == "server.metrics_bind"
    assert message in error.value.message


def test_metrics_on_a_listener_of_its_own(tmp_path):
    """Two gunicorn workers accept on both addresses; the metrics one answers /metrics
    only (every worker's counts added up), the main one everything but /metrics."""
    metrics_port = free_port()
    config = tmp_path / "metrics.toml"
    config.write_text(
        f'[server]\nmetrics_bind = "127.0.0.1:{metrics_port}"\n'
        f'[[sources]]\nname = "web"\nwrite_key = "wk"\n'
        f'[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/events.db"\n',
        encoding="utf-8",
    )
    serve = ServeProcess(tmp_path, "--config", str(config), workers=2).wait_ready()
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        for i in range(10):
            with httpx.Client() as client:  # a new connection each: both workers take some
                response = client.post(
                    f"{serve.url}/v1/track", json={"userId": f"u{i}", "event": "E"}, auth=("wk", "")
                )
                assert response.status_code == 200, response.text
        assert httpx.get(f"{serve.url}/metrics", timeout=HANG_GUARD).status_code == 404
        counted = 'eventrouter_events_accepted_total{source="web",type="track"} 10.0'

        def scraped() -> str:
            response = httpx.get(f"{metrics_url}/metrics", timeout=HANG_GUARD)
            assert response.status_code == 200
            return response.text

        # each worker's request counts reach the shared files within metrics.FLUSH_INTERVAL
        eventually(lambda: counted in scraped(), "both workers' accepted events")
        for path in ("/health", "/admin/login", "/api/v1/events", "/v1/track"):
            assert httpx.get(f"{metrics_url}{path}", timeout=HANG_GUARD).status_code == 404, path
        refused = httpx.post(f"{metrics_url}/v1/track", json={"userId": "u", "event": "E"})
        assert refused.status_code == 404  # no ingestion through the metrics port
    finally:
        serve.stop()


def test_serve_refuses_a_port_that_is_the_metrics_port(tmp_path):
    port = free_port()
    config = tmp_path / "clash.toml"
    config.write_text(f'[server]\nmetrics_bind = "127.0.0.1:{port}"\n', encoding="utf-8")
    result = run_eventrouter(
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        env={"EVENTROUTER_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert result.returncode == 2
    assert "server.metrics_bind" in result.stderr
