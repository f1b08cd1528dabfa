"""The Native columns of the ClickHouse sink: the compiled loops (sinks/_native.c,
``eventrouter.sinks._native``) and the pure-Python code give the same bytes for every
input, and both are the format: a String value is its length as a LEB128 varint and its
bytes; DateTime64(3) an Int64 of milliseconds and DateTime a UInt32 of seconds since
1970 (floored), little-endian, after a null map when Nullable.

Hypothesis generates the values (any text but lone surrogates, bytes, raw JSON, lengths
around the varint's 128 and 16,384 boundaries; datetimes from year 1 to 9999, at the
edges of a millisecond) and runs derandomized, so CI checks the same inputs. What the
server stores from them is tests/integration/test_clickhouse.py's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventrouter.sinks import clickhouse as sink_module

pytestmark = pytest.mark.skipif(
    sink_module._native is None, reason="eventrouter.sinks._native was not built"
)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@contextmanager
def pure_python() -> Iterator[None]:
    """The sink's functions with the compiled module out of the way."""
    compiled, sink_module._native = sink_module._native, None
    try:
        yield
    finally:
        sink_module._native = compiled


def varint(number: int) -> bytes:
    out = b""
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            return out + bytes([low])
        out += bytes([low | 0x80])


def expected_strings(values: list) -> bytes:
    """The Native String column, written the slow, obvious way."""
    out = b""
    for value in values:
        data = value.encode() if isinstance(value, str) else bytes(value)
        out += varint(len(data)) + data
    return out


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
#: Lengths that need one, two and three varint bytes (127/128, 16,383/16,384).
LONG = st.sampled_from([127, 128, 16_383, 16_384, 70_000]).map(lambda n: "x" * n)
BYTES = st.binary(max_size=40)
RAW = st.builds(lambda text: msgspec.Raw(msgspec.json.encode({"v": text})), TEXT)


@SETTINGS
@given(st.lists(st.one_of(TEXT, LONG), max_size=30))
def test_text_columns_agree(values):
    compiled = sink_module._text_column(values)
    few = sink_module._few_values_column(values)
    with pure_python():
        assert sink_module._text_column(values) == compiled
        assert sink_module._few_values_column(values) == few == compiled
    assert compiled == expected_strings(values)


@SETTINGS
@given(st.lists(st.one_of(BYTES, RAW, LONG.map(str.encode)), max_size=30))
def test_byte_and_raw_json_columns_agree(values):
    compiled = sink_module._string_column(values)
    with pure_python():
        assert sink_module._string_column(values) == compiled
    assert compiled == expected_strings(values)


def test_text_that_is_no_utf8_or_no_text_is_refused_alike():
    """A lone surrogate cannot be UTF-8: both raise UnicodeEncodeError, as the driver's
    str.encode() does; a value that is neither text nor bytes is a TypeError."""
    for bad, error in ((["ok", "\udc80"], UnicodeEncodeError), ([b"ok", 5], TypeError)):
        with pytest.raises(error):
            sink_module._native.string_column(bad)
        with pure_python(), pytest.raises(error):
            (sink_module._text_column if isinstance(bad[0], str) else sink_module._string_column)(
                bad
            )


MOMENT = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999)
).map(lambda moment: moment.replace(tzinfo=UTC))
#: Around 1970 and the ends of UInt32 seconds, where floor division and ranges matter.
EDGE = st.sampled_from(
    [
        EPOCH,
        EPOCH - timedelta(microseconds=1),
        EPOCH + timedelta(microseconds=999),
        EPOCH + timedelta(seconds=2**32 - 1, microseconds=999_999),
        EPOCH + timedelta(seconds=2**32),
    ]
)


def expected_times(values: list, datetime64: bool, nullable: bool) -> bytes:
    unit = timedelta(milliseconds=1) if datetime64 else timedelta(seconds=1)
    form = "<q" if datetime64 else "<I"
    nulls = bytes(value is None for value in values) if nullable else b""
    return nulls + b"".join(
        struct.pack(form, 0 if value is None else (value - EPOCH) // unit) for value in values
    )


def python_times(values: list, datetime64: bool, nullable: bool) -> bytes:
    """What the sink's pure-Python code writes for these datetimes."""
    unit = timedelta(milliseconds=1) if datetime64 else timedelta(seconds=1)
    numbers = [None if value is None else (value - EPOCH) // unit for value in values]
    if nullable:
        return sink_module._nullable_time_column(numbers, datetime64)
    return sink_module._time_column(numbers, datetime64)


@SETTINGS
@given(
    st.lists(st.one_of(MOMENT, EDGE, st.none()), max_size=30),
    st.booleans(),
    st.booleans(),
)
def test_time_columns_agree_or_leave_the_value_to_python(values, datetime64, nullable):
    """The C loop writes exactly the Python code's bytes; where it cannot (a None in a
    column without nulls, a second outside UInt32), it answers None, and the Python code
    then raises as it always did."""
    compiled = sink_module._native.time_column(values, datetime64, nullable)
    try:
        python = python_times(values, datetime64, nullable)
    except (TypeError, OverflowError):
        assert compiled is None
        return
    assert compiled is not None
    assert compiled == python == expected_times(values, datetime64, nullable)


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 1, 1),  # naive
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))),  # another offset
        "2026-01-01T00:00:00Z",
    ],
)
def test_a_time_that_is_no_utc_datetime_is_left_to_python(value):
    assert sink_module._native.time_column([EPOCH, value], True, False) is None
