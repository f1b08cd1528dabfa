"""The body scanner (eventrouter.scan): the compiled pass (router_core/_scan.c) and the
pure-Python code give the same answers on every input, valid JSON or not.

- ``may_overflow``: the compiled answer is exactly :func:`scan.may_overflow_py`'s;
- the structure limits: the compiled pass only certifies ("certainly within"); a body it
  certifies passes the exact check (eventrouter.edge.limits), every well-formed body
  within the limits is certified (or the fast path would never run), and the checks refuse
  the same bodies with the same code and message whichever implementation runs.

Hypothesis generates JSON text (deep nesting, many keys, strings of escaped quotes and
backslashes, numbers at the edges of what a float holds) and breaks it (truncated,
bytes changed, invalid UTF-8). It runs derandomized, so CI checks the same inputs.
"""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventrouter import scan
from eventrouter.edge import limits
from eventrouter.errors import InvalidEvent
from eventrouter.events.model import BATCH_DECODER
from tests.ingest_support import post_raw, running

pytestmark = pytest.mark.skipif(not scan.available(), reason="eventrouter._scan was not built")

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# -- JSON text, generated ----------------------------------------------------------------
#: Characters that matter to the scans: the shape, escapes, number characters, e/E.
TRICKY = '"\\{}[]:,eE0123456789+-. \t\n/u\u2028é'
#: Numbers at the edges: 1-4 digits or 199-201 (a run of 200 number characters may be a
#: number no float holds), a fraction, an exponent of up to four digits.
NUMBER = st.builds(
    lambda sign, digits, fraction, exponent: sign + digits + fraction + exponent,
    st.sampled_from(["", "-"]),
    st.sampled_from(["0", "7", "12", "9999", "1" * 199, "2" * 200, "3" * 201]),
    st.sampled_from(["", ".5", ".0001"]),
    st.sampled_from(["", "e5", "E+30", "e-99", "e400", "E0000", "e+308", "e1234"]),
)
STRING = st.text(
    alphabet=st.sampled_from(TRICKY) | st.characters(blacklist_categories=("Cs",)), max_size=12
).map(lambda text: json.dumps(text, ensure_ascii=False))
SCALAR = st.one_of(NUMBER, STRING, st.sampled_from(["true", "false", "null", "1e400", '"1e400"']))
SPACE = st.sampled_from(["", "", " ", "\n  ", "\t"])


def _container(children):
    array = st.lists(st.tuples(SPACE, children), max_size=5).map(
        lambda items: "[" + ",".join(space + item for space, item in items) + "]"
    )
    obj = st.lists(st.tuples(STRING, SPACE, children), max_size=6).map(
        lambda items: "{" + ",".join(f"{key}:{space}{value}" for key, space, value in items) + "}"
    )
    return array | obj


JSON_TEXT = st.recursive(SCALAR, _container, max_leaves=40)
#: A chain nested ``depth`` levels, arrays and objects mixed.
CHAIN = st.lists(st.booleans(), min_size=1, max_size=80).map(
    lambda kinds: (
        "".join('{"k":' if k else "[" for k in kinds)
        + "1"
        + "".join("}" if k else "]" for k in reversed(kinds))
    )
)


@st.composite
def broken(draw, text=JSON_TEXT | CHAIN) -> bytes:
    """JSON text as bytes, sometimes broken: truncated, a byte changed or inserted
    (invalid UTF-8 among them)."""
    data = draw(text).encode()
    how = draw(st.sampled_from(["as is", "as is", "truncated", "changed", "inserted"]))
    if how == "as is" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncated":
        return data[:at]
    byte = draw(st.sampled_from(list(b'"\\{}[]:,eE09+-. \xff\xc3\x80')) | st.integers(0, 255))
    if how == "changed":
        return data[:at] + bytes([byte]) + data[at + 1 :]
    return data[:at] + bytes([byte]) + data[at:]


#: server.max_json_depth and server.max_json_keys (the config allows 1 and up).
LIMITS = st.tuples(st.integers(1, 12), st.integers(1, 8))


def refusal(check, *args) -> tuple[str, str] | None:
    """(code, message) ``check(*args)`` refuses with, or None."""
    try:
        check(*args)
    except InvalidEvent as exc:
        return exc.code, exc.message
    return None


def with_scanner(compiled: bool, check, *args):
    before = scan.COMPILED
    scan.use(compiled)
    try:
        return refusal(check, *args)
    finally:
        scan.use(before)


# -- the overflow question ---------------------------------------------------------------
@SETTINGS
@given(broken())
def test_may_overflow_is_the_pure_answer_on_any_input(data):
    expected = scan.may_overflow_py(data)
    assert scan._compiled.may_overflow(data) is expected
    assert scan._compiled.scan_body(data, 64, 10_000)[1] is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"a":1e400}', True),
        (b'{"a":1E+308}', True),  # a false alarm: the strict decoder settles it
        (b'{"a":1e99}', False),
        (b'{"a":"x1e400"}', False),  # after a letter: not a number
        (b'{"a":"1e400"}', False),  # after a quote, as scan.py defines it
        (b'{"a":" 1e400"}', True),  # in a string, after a space: a false alarm
        (b'{"id":"5b3f2c1e-0000"}', False),
        (b"[" + b"1" * 199 + b"]", False),
        (b"[" + b"1" * 200 + b"]", True),
        (b'"' + b"9" * 200 + b'"', True),
        (b"1e000", True),
        (b"1e00", False),
        (b"e000", False),
        (b"", False),
    ],
)
def test_may_overflow_at_the_edges(text, expected):
    assert scan.may_overflow_py(text) is expected
    assert scan._compiled.may_overflow(text) is expected


# -- the structure limits ----------------------------------------------------------------
@SETTINGS
@given(broken(), LIMITS)
def test_a_certified_body_passes_the_exact_check(data, bounds):
    max_depth, max_keys = bounds
    within, _ = scan._compiled.scan_body(data, max_depth, max_keys)
    if within:
        assert with_scanner(False, limits.check_structure, data, max_depth, max_keys) is None


@SETTINGS
@given(broken(), LIMITS, st.sampled_from([0, 2]))
def test_check_structure_refuses_alike_with_either_scanner(data, bounds, within):
    max_depth, max_keys = bounds
    args = (data, max_depth, max_keys, within)
    compiled = with_scanner(True, lambda *a: limits.check_structure(*a[:3], within=a[3]), *args)
    pure = with_scanner(False, lambda *a: limits.check_structure(*a[:3], within=a[3]), *args)
    assert compiled == pure


def shape_of(value) -> tuple[int, int]:
    """(deepest level, most keys in one object) of a decoded value, without recursion."""
    deepest = keys = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if isinstance(node, dict):
                keys = max(keys, len(node))
                stack.extend((child, level + 1) for child in node.values())
            else:
                stack.extend((child, level + 1) for child in node)
    return deepest, keys


@SETTINGS
@given(JSON_TEXT | CHAIN)
def test_every_well_formed_body_within_the_limits_is_certified(text):
    """Otherwise the compiled pass would be a slower way to the same Python check."""
    data = text.encode()
    depth, keys = shape_of(json.loads(data))
    # A duplicate key counts twice in the checks (as a colon), once in the decoded value.
    assert scan._compiled.scan_body(data, depth, max(keys, text.count(":")))[0]
    if depth:
        assert not scan._compiled.scan_body(data, depth - 1, 10_000)[0]


@st.composite
def batch_bodies(draw) -> bytes:
    items = draw(st.lists(JSON_TEXT | CHAIN, min_size=1, max_size=5))
    context = draw(st.none() | JSON_TEXT)
    body = '{"batch":[' + ",".join(items) + "]"
    if context is not None:
        body += ',"context":{"c":' + context + "}"
    return (body + "}").encode()


@SETTINGS
@given(batch_bodies(), LIMITS)
def test_the_batch_path_refuses_alike_with_either_scanner(body, bounds):
    """As BatchResource runs it: the one pass, then the exact check when not certain."""
    max_depth, max_keys = bounds
    try:
        items = BATCH_DECODER.decode(body).batch
    except (msgspec.MsgspecError, RecursionError):
        return  # refused before the batch check: test_check_structure_... covers it

    def batch_path(*args):
        within, overflow = scan.scan_body(args[0], args[2], args[3])
        assert overflow is scan.may_overflow_py(body)
        if not within:
            limits.check_batch_structure(*args)

    args = (body, items, max_depth, max_keys)
    assert with_scanner(True, batch_path, *args) == with_scanner(False, batch_path, *args)


def test_nesting_far_past_the_limit_and_past_the_c_stack_buffer():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert scan._compiled.scan_body(deep, 64, 10) == (False, False)
    assert scan._compiled.scan_body(deep, 100_000, 10) == (True, False)  # heap-allocated
    assert scan._compiled.scan_body(b"[" * 300 + b"]" * 300, 300, 0) == (True, False)
    assert scan._compiled.scan_body(b"[" * 300 + b"]" * 300, 299, 0) == (False, False)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1]',  # brackets of different kinds
        b'{"a":1',  # unbalanced
        b'"open',  # a string left open
        b'["a":1]',  # a colon in an array
        b"1:2",  # a colon outside any object
        b'{"a":1}\\',  # a backslash outside a string
        b'{"a\\":1}',  # the quote is escaped: the string stays open
    ],
)
def test_a_malformed_shape_is_never_certified(text):
    assert scan._compiled.scan_body(text, 64, 100)[0] is False


def test_escaped_quotes_and_backslashes_inside_strings():
    text = rb'{"a\\":"\"[{","b\\\\\"":"\\","c":"\\\"}"}'
    assert json.loads(text)
    assert scan._compiled.scan_body(text, 1, 3) == (True, False)
    assert scan._compiled.scan_body(text, 1, 2) == (False, False)  # three keys


@pytest.mark.parametrize(
    "data",
    [b'{"a":[1]}', bytearray(b'{"a":[1]}'), memoryview(b'{"a":[1]}'), msgspec.Raw(b'{"a":[1]}')],
    ids=["bytes", "bytearray", "memoryview", "Raw"],
)
def test_any_bytes_like_object(data):
    assert scan._compiled.scan_body(data, 2, 1) == (True, False)
    assert scan._compiled.may_overflow(data) is False


def test_what_is_not_bytes_is_a_type_error():
    with pytest.raises(TypeError):
        scan._compiled.may_overflow("text")
    with pytest.raises(TypeError):
        scan._compiled.scan_body(b"{}", 1)


def test_the_environment_variable_chooses_the_pure_code(monkeypatch):
    import importlib

    try:
        monkeypatch.setenv(scan.PURE_ENV, "1")
        assert importlib.reload(scan).COMPILED is False
        assert scan.may_overflow is scan.may_overflow_py
        monkeypatch.delenv(scan.PURE_ENV)
        assert importlib.reload(scan).COMPILED is True
        assert scan.may_overflow is scan._compiled.may_overflow
    finally:
        monkeypatch.delenv(scan.PURE_ENV, raising=False)
        importlib.reload(scan)


# -- what a client sees ------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("scan"), {"server": {"max_json_depth": 8}}) as live:
        yield live


def answer(server, compiled: bool, path: str, body: bytes) -> tuple[int, bytes]:
    before = scan.COMPILED
    scan.use(compiled)
    try:
        response = post_raw(server, path, body, {"Content-Type": "application/json"})
    finally:
        scan.use(before)
    return response.status_code, response.content


def event_text(draw, value: str) -> str:
    field = draw(st.sampled_from(["properties", "context", "zz", "traits"]))
    return f'{{"type":"track","userId":"u","event":"e","{field}":{value}}}'


@st.composite
def request_bodies(draw) -> tuple[str, bytes]:
    """A single event or a batch whose free-form parts are generated JSON, often broken."""
    value = draw(JSON_TEXT | CHAIN)
    if draw(st.booleans()):
        text = event_text(draw, value)
        path = "/v1/track"
    else:
        items = [event_text(draw, value), event_text(draw, draw(SCALAR))]
        text = '{"batch":[' + ",".join(items) + "]}"
        path = "/v1/batch"
    data = text.encode()
    if draw(st.integers(0, 3)) == 0:
        data = draw(broken(st.just(text)))
    return path, data


@settings(SETTINGS, max_examples=80)
@given(request_bodies())
def test_every_answer_is_the_same_with_either_scanner(server, case):
    """Status and body, byte for byte: each 400 keeps its code and message."""
    path, body = case
    assert answer(server, True, path, body) == answer(server, False, path, body)
