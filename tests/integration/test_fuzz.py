"""Bad input, generated: over 10,000 bodies and headers sent to a real ``eventrouter
serve`` (gunicorn, two workers) on 127.0.0.1. Whatever arrives, the answer is never a
5xx, every rejection is a 4xx JSON ``{"code", "message"}``, and no worker dies.

Hypothesis runs derandomized with no example database, so CI sends the same requests
every time. The requests share one keep-alive connection.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from eventrouter.scan import PURE_ENV
from tests.helpers import ServeProcess

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

WRITE_KEY = "fuzz-key"
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
WORKERS = 2
SINGLE_PATHS = [f"/v1/{p}" for p in ("track", "identify", "page", "screen", "group", "alias")]
SHORT_PATHS = [f"/v1/{p}" for p in "tipsga"]
BATCH_PATHS = ["/v1/batch", "/v1/import", "/v1/b"]
PATHS = ["/track", *SINGLE_PATHS, *SHORT_PATHS, *BATCH_PATHS]
KINDS = ["track", "identify", "page", "screen", "group", "alias"]
KIND = dict(zip(SINGLE_PATHS + SHORT_PATHS, 2 * KINDS, strict=True))

#: Requests each test sends, PER_EXAMPLE to a hypothesis example (drawing several cases
#: per example spreads hypothesis's own cost per example). The total is asserted at the
#: end: hypothesis may stop early once it has tried all that a small strategy can make.
PER_EXAMPLE = 4
BUDGET = {
    "random_json": 2000,
    "wrong_types": 2000,
    "nesting": 700,
    "huge_numbers": 800,
    "raw_bytes": 1800,
    "gzip": 1200,
    "headers": 1600,
}
sent: Counter[str] = Counter()
#: The plan in force: the valid bodies keep it, generated ones often break it (a 400).
PLAN = """
on_violation = "reject"
[events.fuzz]
type = "object"
properties.a = { type = "integer" }
additionalProperties = { type = ["string", "number", "boolean", "null"] }
[identify]
properties.plan = { enum = ["free", "pro"] }
[group]
type = "object"
"""


def fuzz_settings(name: str):
    return settings(
        max_examples=BUDGET[name] // PER_EXAMPLE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def serve(tmp_path_factory, env: dict[str, str] | None = None) -> ServeProcess:
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "eventrouter.toml"
    # A tracking plan in force (docs/data-quality.md): every generated body is checked
    # against it, and the catalogue walks every one of them.
    (root / "plan.toml").write_text(PLAN)
    config.write_text(
        f'[[sources]]\nname = "fuzz"\nwrite_key = "{WRITE_KEY}"\n\n'
        f'[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///{root}/events.db"\n\n'
        '[plugins.options.quality]\nplans = { fuzz = "plan.toml" }\ncatalogue = true\n'
    )
    return ServeProcess(root, "--config", str(config), env=env, workers=WORKERS).wait_ready()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = serve(tmp_path_factory)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def pure_server(tmp_path_factory):
    """The same server with the body scanner's pure-Python code alone (eventrouter.scan):
    the suites that reach the scans run against both."""
    process = serve(tmp_path_factory, {PURE_ENV: "1"})
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def pure_client(pure_server):
    with httpx.Client(base_url=pure_server.url, timeout=30) as client:
        yield client


#: The suites that reach the body scanner run with each implementation: ``client``
#: (compiled, where it was built) and ``pure_client`` (EVENTROUTER_PURE_PYTHON=1).
both_scanners = pytest.mark.parametrize("client_name", ["client", "pure_client"])


@pytest.fixture
def scanned(request, client_name):
    return request.getfixturevalue(client_name)


def send(
    client: httpx.Client,
    name: str,
    path: str,
    body: bytes,
    headers: dict[str, Any] | None = None,
) -> httpx.Response:
    """POST ``body`` as is and check what any client may rely on."""
    all_headers = {"Content-Type": "application/json", "Authorization": BASIC, **(headers or {})}
    response = client.post(path, content=body, headers=all_headers)
    sent[name] += 1
    assert_clear_answer(response, body)
    return response


def assert_clear_answer(response: httpx.Response, body: bytes) -> None:
    where = f"{response.request.method} {response.request.url.path} {body[:300]!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json"), where
    answer = response.json()
    if response.status_code == 200:
        assert answer["success"] is True, where
        return
    assert 400 <= response.status_code < 500, f"{where} -> {response.status_code}"
    assert isinstance(answer["code"], str) and answer["code"], (where, answer)
    assert isinstance(answer["message"], str) and answer["message"], (where, answer)


# -- strategies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def valid_body(path: str) -> dict[str, Any]:
    """A body that the path accepts."""
    if path == "/track":
        return {"event_type": "fuzz", "user_id": "u1", "properties": {"a": 1}}
    if path in BATCH_PATHS:
        return {"batch": [{"type": "track", "userId": "u1", "event": "fuzz"}]}
    body: dict[str, Any] = {"userId": "u1", "context": {"page": {"path": "/"}}}
    body.update(
        {
            "track": {"event": "fuzz", "properties": {"a": 1}},
            "identify": {"traits": {"plan": "pro"}},
            "page": {"name": "Home", "properties": {}},
            "screen": {"name": "Home"},
            "group": {"groupId": "g1", "traits": {}},
            "alias": {"previousId": "p1"},
        }[KIND[path]]
    )
    return body


FIELDS = [
    "type",
    "event",
    "event_type",
    "userId",
    "user_id",
    "anonymousId",
    "anonymous_id",
    "messageId",
    "message_id",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "properties",
    "traits",
    "context",
    "integrations",
    "sessionId",
    "session_id",
    "writeKey",
    "write_key",
    "name",
    "category",
    "batch",
]


def cases(*strategies: st.SearchStrategy) -> st.SearchStrategy[list[tuple]]:
    return st.lists(st.tuples(*strategies), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE)


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def nested(depth: int, kind: str) -> str:
    """``depth`` levels of objects, arrays or both, as JSON text."""
    opening = {"object": '{"a":', "array": "[", "mixed": '{"a":['}[kind]
    closing = {"object": "}", "array": "]", "mixed": "]}"}[kind]
    levels = depth if kind != "mixed" else depth // 2
    return opening * levels + "1" + closing * levels


# -- the suites ----------------------------------------------------------------------------


@both_scanners
@given(cases(st.sampled_from(PATHS), json_values))
@fuzz_settings("random_json")
def test_random_json(scanned, drawn):
    for path, value in drawn:
        send(scanned, "random_json", path, encode(value))


@given(cases(st.sampled_from(PATHS), st.sampled_from(FIELDS), json_values, st.booleans()))
@fuzz_settings("wrong_types")
def test_wrong_types_in_every_field(client, drawn):
    for path, field, value, in_item in drawn:
        body = valid_body(path)
        if path in BATCH_PATHS and in_item:
            body["batch"][0][field] = value
        else:
            body[field] = value
        send(client, "wrong_types", path, encode(body))


@both_scanners
@given(
    cases(
        st.sampled_from(PATHS),
        st.integers(min_value=1, max_value=150) | st.sampled_from([63, 64, 65, 1000, 20_000]),
        st.sampled_from(["object", "array", "mixed"]),
        st.sampled_from(["top", "properties", "item", "unknown_field"]),
    )
)
@fuzz_settings("nesting")
def test_deep_nesting(scanned, drawn):
    for path, depth, kind, where in drawn:
        inner = nested(depth, kind)
        if where == "top":
            text, around = inner, 0
        elif where == "item" and path in BATCH_PATHS:
            item = f'{{"type":"track","userId":"u","event":"e","properties":{inner}}}'
            text, around = f'{{"batch":[{item}]}}', 3
        else:
            body = encode(valid_body(path)).decode()
            key = "properties" if where == "properties" else "zz"
            text, around = body[:-1] + f',"{key}":{inner}}}', 1
        levels = (depth if kind != "mixed" else 2 * (depth // 2)) + around
        code = send(scanned, "nesting", path, text.encode()).json().get("code")
        if levels > 64:
            assert code in ("too_deep", "payload_too_large"), (levels, text[:200])
        else:
            assert code != "too_deep", (levels, text[:200])


HUGE = ["1e400", "-1e400", "1e-400", str(2**70), str(-(2**64)), "1" * 400, "1.5e308", "-0"]


@both_scanners
@given(cases(st.sampled_from(PATHS), st.sampled_from(FIELDS), st.sampled_from(HUGE)))
@fuzz_settings("huge_numbers")
def test_huge_numbers(scanned, drawn):
    for path, field, number in drawn:
        body = valid_body(path)
        body[field] = "@@"
        text = encode(body).replace(b'"@@"', number.encode())
        send(scanned, "huge_numbers", path, text)


def mangled(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=200),
        st.integers(1, len(valid)).map(lambda n: valid[:n]),  # truncated
        st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda t: valid[: t[0]] + t[1] + valid[t[0] + 1 :]  # bytes replaced
        ),
        st.sampled_from(
            [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\\u0000", b"\\ud800"]
        ).map(lambda bad: valid.replace(b"u1", b"u" + bad)),  # invalid UTF-8, NUL, surrogates
    )


@given(st.lists(st.sampled_from(PATHS), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE), st.data())
@fuzz_settings("raw_bytes")
def test_raw_bytes(client, paths, data):
    for path in paths:
        send(client, "raw_bytes", path, data.draw(mangled(encode(valid_body(path)))))


def gzipped(packed: bytes, valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(packed),
        st.integers(1, len(packed) - 1).map(lambda n: packed[:n]),  # truncated
        st.tuples(st.integers(0, len(packed) - 1), st.integers(1, 255)).map(
            lambda t: packed[: t[0]] + bytes([packed[t[0]] ^ t[1]]) + packed[t[0] + 1 :]
        ),  # one byte corrupted
        st.binary(min_size=1, max_size=100),  # not gzip at all
        st.just(packed + b"trailing garbage"),
        st.just(gzip.compress(packed)),  # twice
        mangled(valid).map(gzip.compress),  # gzip of bad JSON
    )


ENCODINGS = ["gzip", "GZIP", "gzip, gzip", "deflate", "br", "x-gzip", "identity"]


@given(st.lists(st.sampled_from(PATHS), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE), st.data())
@fuzz_settings("gzip")
def test_gzip(client, paths, data):
    for path in paths:
        valid = encode(valid_body(path))
        body = data.draw(gzipped(gzip.compress(valid), valid))
        encoding = data.draw(st.sampled_from(ENCODINGS))
        send(client, "gzip", path, body, {"Content-Encoding": encoding})


header_names = st.sampled_from(
    [
        "Content-Type",
        "Authorization",
        "Content-Encoding",
        "X-Forwarded-For",
        "X-Request-ID",
        "X-Pad",
    ]
)
header_values = st.one_of(
    # Bytes a header value may hold (no control characters; none at either end).
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F)),
    st.sampled_from(
        [
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "",
            ";",
            "Basic",
            "Basic !!!",
            "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
            "Basic " + base64.b64encode(b"unknown-key:").decode(),
            "Bearer x",
        ]
    ).map(str.encode),
    st.integers(1, 64 * 1024).map(lambda n: b"x" * n),  # oversize
)


@given(cases(st.sampled_from(PATHS), st.dictionaries(header_names, header_values, max_size=3)))
@fuzz_settings("headers")
def test_headers(client, drawn):
    for path, headers in drawn:
        send(client, "headers", path, encode(valid_body(path)), headers)


def batch_with_keys(n: int) -> bytes:
    """A valid batch whose batch-level ``context`` has ``n`` keys."""
    keys = ",".join(f'"k{i}":1' for i in range(n))
    return (
        f'{{"batch":[{{"type":"track","userId":"u","event":"e"}}],"context":{{{keys}}}}}'.encode()
    )


@both_scanners
def test_more_than_10000_keys_is_400(scanned):
    response = send(scanned, "keys", "/v1/batch", batch_with_keys(10_001))
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_keys"
    assert send(scanned, "keys", "/v1/batch", batch_with_keys(10_000)).status_code == 200


@both_scanners
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/track", "/v1/b"])
@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a":', "}")])
def test_100000_levels_deep_is_refused_not_a_crash(scanned, path, opening, closing):
    body = (opening * 100_000 + "1" + closing * 100_000).encode()
    response = send(scanned, "deep", path, body)
    assert response.status_code in (400, 413)
    limit = 500 * 1024 if path in BATCH_PATHS else 32 * 1024
    expected = "payload_too_large" if len(body) > limit else "too_deep"
    assert response.json()["code"] == expected


def test_the_plan_is_in_force(client):
    body = {"userId": "u1", "event": "fuzz", "properties": {"a": "one"}}
    response = send(client, "plan", "/v1/track", encode(body))
    assert response.status_code == 400 and response.json()["code"] == "violation"


@pytest.mark.parametrize("which", ["server", "pure_server"])
def test_the_server_survived_every_request(request, which):
    if set(BUDGET) - set(sent):
        pytest.skip("only part of the module ran")
    server = request.getfixturevalue(which)
    client = request.getfixturevalue("client" if which == "server" else "pure_client")
    total = sum(sent.values())
    assert total >= 10_000, sent
    assert server.process.poll() is None, "eventrouter serve exited"
    assert client.get("/health").status_code == 200
    log = server.log()
    assert len(re.findall(r"Booting worker with pid", log)) == WORKERS, log[-3000:]
    for sign in ("Worker exited", "WORKER TIMEOUT", "unhandled error", "Traceback"):
        assert sign not in log, log[-3000:]
