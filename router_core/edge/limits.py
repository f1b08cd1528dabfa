"""Structure limits on a JSON request body: nesting depth and keys per object.

The check reads the raw bytes before any decoder sees them, so a body nested 100,000
levels deep is refused here instead of reaching msgspec, whose decoder recurses once per
level (past Python's recursion limit it raises ``RecursionError``). Nothing here
recurses either.

Cost: counting a few bytes (a ``memchr``-speed scan) settles almost every body: a body
with no more ``{`` and ``[`` than ``max_depth`` cannot be nested deeper, and one with no
more ``:`` than ``max_keys`` cannot hold an object with more keys. Only bodies past
those bounds (large batches) are scanned exactly, with regular expressions and
``bytes.translate`` rather than a Python loop per byte.

The depth counts every object and array from the top of the request body: a single
event's ``properties`` object is at level 2, a batch item's at level 4.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from eventrouter import scan
from eventrouter.errors import InvalidEvent

#: Every byte but the six the shape of a body is read from: ``" { } [ ] :``.
_NOT_SHAPE = bytes(b for b in range(256) if b not in b'"{}[]:')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_RUNS = re.compile(rb"\[+|\]+")
_OPEN = ord("[")
#: Past this many brackets, a round that removes under 1/16 of them hands over to a walk
#: over runs of brackets (a chain-like rest has few runs and would need many rounds).
_WALK_FROM = 4096


@functools.cache
def _innermost_object(max_keys: int) -> re.Pattern[bytes]:
    """An object holding only the colons of its own keys, at most ``max_keys`` of them."""
    return re.compile(rb"\{:{0,%d}\}" % max_keys)


@functools.cache
def _crowded(max_keys: int) -> re.Pattern[bytes]:
    """An object with more than ``max_keys`` colons directly inside it."""
    return re.compile(rb"\{:{%d}" % (max_keys + 1))


def check_structure(body: bytes, max_depth: int, max_keys: int, *, within: int = 0) -> None:
    """400 ``too_deep`` or ``too_many_keys`` when ``body`` nests objects and arrays more
    than ``max_depth`` levels deep, or has an object with more than ``max_keys`` keys.

    ``within``: ``body`` is a part of a request body, that many levels down (a batch
    item: 2); the error names the request body's limit."""
    depth = max_depth - within
    if scan.within_limits(body, depth, max_keys):  # the compiled pass: certainly within
        return
    brackets, colons = _openings_and_colons(body)
    deep = brackets > depth
    wide = colons > max_keys
    if not (deep or wide):
        return
    shape = body_shape(body)
    if deep and nesting(shape.replace(b":", b""), depth) > depth:
        raise too_deep(max_depth)
    if wide and shape.count(b":") > max_keys and _crowded_object(shape, depth, max_keys):
        raise InvalidEvent("too_many_keys", f"body: an object has more than {max_keys} keys")


def too_deep(max_depth: int) -> InvalidEvent:
    """The 400 for a body nested deeper than ``max_depth``."""
    return InvalidEvent(
        "too_deep", f"body: objects and arrays nested deeper than {max_depth} levels"
    )


#: A batch item sits this many levels down in a ``/v1/batch`` body: the body's object,
#: then the ``batch`` array.
ITEM_LEVEL = 2


def check_batch_structure(body: bytes, items: Sequence[Any], max_depth: int, max_keys: int) -> None:
    """:func:`check_structure` for a batch body whose ``items`` (the ``batch`` array's
    elements, undecoded: ``msgspec.Raw``) are known, at a fraction of its cost.

    A batch of 100 events has far more brackets than ``max_depth`` and so never passes
    the counting shortcut as a whole; each of its items does. The body is within the
    limits exactly when every item is, two levels down, and so is the rest of the body
    (its own object, the ``batch`` array, ``context`` and any other key): the rest has
    ``body's count - the items' counts`` brackets and colons, which bound its depth and
    its keys per object. Only an item, or a rest, past those bounds is scanned exactly.
    """
    if scan.within_limits(body, max_depth, max_keys):  # the compiled pass: certainly within
        return
    brackets, colons = _openings_and_colons(body)
    if brackets <= max_depth and colons <= max_keys:
        return
    for raw in items:
        item = bytes(raw)
        item_brackets, item_colons = _openings_and_colons(item)
        if item_brackets > max_depth - ITEM_LEVEL or item_colons > max_keys:
            check_structure(item, max_depth, max_keys, within=ITEM_LEVEL)
        brackets -= item_brackets
        colons -= item_colons
    if brackets > max_depth or colons > max_keys:
        check_structure(body, max_depth, max_keys)


#: Every byte but ``{ [ :``.
_NOT_OPENING_OR_COLON = bytes(b for b in range(256) if b not in b"{[:")


def _openings_and_colons(data: bytes) -> tuple[int, int]:
    """How many ``{`` and ``[`` and how many ``:`` ``data`` holds, strings included: in one
    pass (three ``bytes.count`` calls cost three times as much on an 800-byte item)."""
    kept = data.translate(None, _NOT_OPENING_OR_COLON)
    colons = kept.count(b":")
    return len(kept) - colons, colons


def body_shape(body: bytes) -> bytes:
    """The brackets and colons of ``body`` that are outside strings, in order.

    Escaped backslashes and then escaped quotes are dropped first, so every ``"`` left
    opens or closes a string. Of those quotes, two that end up side by side can be
    dropped as a pair: either they delimit a string with no bracket or colon in it, or
    they close one string and open the next with nothing that counts between them, which
    merges the two without changing what is inside a string. The few quotes left then
    alternate, and splitting on them leaves the outside at the even places. For invalid
    JSON the pairing may differ from the decoder's, but only after the point where the
    decoder stops with an error.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = body.translate(None, _NOT_SHAPE).replace(b'""', b"")
    if b'"' in shape:
        shape = b"".join(shape.split(b'"')[::2])
    return shape


def nesting(brackets: bytes, max_depth: int) -> int:
    """How deep ``brackets`` (a sequence of ``{ } [ ]``) nest: exactly when they are
    balanced and at most ``max_depth`` deep, else a number over ``max_depth``, or at
    least the depth a decoder reaches before it fails on the unbalanced input.

    Objects and arrays count alike, so every bracket becomes ``[`` or ``]``. Each round
    removes the pairs that were innermost when it began, with one byte replacement
    rather than a loop per byte: a balanced sequence is gone after as many rounds as it
    is deep. After ``r`` rounds, a run of ``n`` opening brackets left means a depth of
    at least ``r + n``. When a round removes little (long chains of single children,
    which few runs describe), the rest is walked run by run instead.
    """
    brackets = brackets.translate(_SQUARE)
    for rounds in range(max_depth + 1):
        if not brackets:
            return rounds
        if b"[" * (max_depth + 1 - rounds) in brackets:
            return max_depth + 1
        reduced = brackets.replace(b"[]", b"")
        if len(reduced) == len(brackets):
            # Nothing left to pair: the rest reads ``]]]...[[[``. A decoder stops at the
            # first unpaired ``]``; without one it opens every ``[`` before it fails.
            return rounds if b"]" in brackets else rounds + len(brackets)
        if len(reduced) > _WALK_FROM and (len(brackets) - len(reduced)) * 16 < len(brackets):
            return rounds + 1 + _deepest_run(reduced)
        brackets = reduced
    return max_depth + 1


def _deepest_run(brackets: bytes) -> int:
    """The deepest point of ``brackets`` (``[`` and ``]`` only), up to the first ``]``
    that closes nothing, where a decoder stops."""
    depth = deepest = 0
    for run in _RUNS.findall(brackets):
        if run[0] == _OPEN:
            depth += len(run)
            deepest = max(deepest, depth)
        else:
            depth -= len(run)
            if depth < 0:
                break
    return deepest


def _crowded_object(shape: bytes, max_depth: int, max_keys: int) -> bool:
    """True when an object of ``shape`` (brackets and colons) has more than ``max_keys``
    keys. Innermost containers within the limit are removed, level by level, until none
    is left or the ones left cannot be removed: then each remaining innermost object has
    its colons side by side. A body within ``max_depth`` needs at most that many rounds;
    one that needs more is not valid JSON, which the decoder refuses."""
    innermost = _innermost_object(max_keys)
    for _ in range(max_depth + 1):
        reduced = innermost.sub(b"x", shape.replace(b"[]", b"x"))
        if len(reduced) == len(shape):
            break
        shape = reduced.replace(b"x", b"")
    return _crowded(max_keys).search(shape) is not None
