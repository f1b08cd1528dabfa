"""The byte scans the edge runs over every request body, compiled where it can be.

Two questions are asked of every body before or beside its decode:

- is it within the structure limits (``server.max_json_depth``, ``server.max_json_keys``)?
  The exact check, and every refusal with its message, is :mod:`eventrouter.edge.limits`;
- may it hold a number no float holds (``1e400``)? :func:`may_overflow_py` below; a yes
  sends the body through msgspec's strict decoder (:class:`eventrouter.events.model.RawDecoder`).

``eventrouter._scan`` (router_core/_scan.c, built by setup.py when a C compiler is
there, skipped when not) answers both in one pass over the bytes, at about 11 instructions
a byte where the pure-Python scans cost about 45 (bench/README.md, "The edge's per-event
steps, counted"). For the structure it gives a certificate, not a verdict: "certainly
within the limits" for a well-formed shape within them, "not certain" for anything else,
and then the pure-Python check runs and decides. For the numbers it gives exactly
:func:`may_overflow_py`'s answer. Without the module, or with ``EVENTROUTER_PURE_PYTHON=1``
in the environment, the pure-Python code runs alone: the same answers, more CPU.

Callers use this module's functions through the module (``scan.may_overflow(data)``), so
that :func:`use` can switch the implementation for tests.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from eventrouter import _scan as _compiled
except ImportError:  # built without a C compiler: the pure-Python code alone
    _compiled = None

#: The environment variable that makes the edge use the pure-Python code alone.
PURE_ENV = "EVENTROUTER_PURE_PYTHON"

#: Bytes of a body mapped for :func:`may_overflow_py`: what may precede a number in JSON
#: (``: , [`` and whitespace) to ``d``; what a number's digits are made of (digits,
#: signs, the decimal point) to ``0``; ``e`` and ``E`` to ``e``; everything else to ``x``.
_NUMBER_SHAPE = bytes(
    ord("d")
    if chr(b) in ":,[ \t\n\r"
    else ord("0")
    if chr(b) in "0123456789+-."
    else ord("e")
    if chr(b) in "eE"
    else ord("x")
    for b in range(256)
)
#: A run of number characters this long may be a number no float holds even with an
#: exponent of two digits (``1`` and 210 digits ``e99`` is past 1.8e308), or an integer
#: msgspec refuses: checked by the strict decoder.
_LONG_DIGITS = b"0" * 200
_ZERO, _DELIMITER = ord("0"), ord("d")


def may_overflow_py(data: Any) -> bool:
    """Whether ``data`` may hold a number that msgspec refuses as out of range: one with
    an exponent of three digits or more (``1e400``), or of 200 digits. ``False`` is
    certain; ``True`` may be a false alarm (such text inside a string), which the
    strict decoder then settles.

    One ``bytes.translate`` and ``memmem`` searches: an exponent is found as ``e000`` in
    the mapped text and counts only when the run of number characters before it starts
    right after a delimiter, so hex ids (``...c2e-0000...``) and version strings do not
    raise the alarm. router_core/_scan.c gives the same answer in its one pass."""
    shape = bytes(data).translate(_NUMBER_SHAPE)
    at = shape.find(b"0e000")  # an exponent follows a digit: most texts stop here
    while at != -1:
        at += 1
        start = at
        while start > 0 and shape[start - 1] == _ZERO:
            start -= 1
        if start < at and (start == 0 or shape[start - 1] == _DELIMITER):
            return True
        at = shape.find(b"0e000", at)
    return _LONG_DIGITS in shape


def _never_certain(data: Any, max_depth: int, max_keys: int) -> bool:
    return False


def _scan_body_py(data: Any, max_depth: int, max_keys: int) -> tuple[bool, bool]:
    return False, may_overflow_py(data)


def _within_compiled(data: Any, max_depth: int, max_keys: int) -> bool:
    return _compiled.scan_body(data, max_depth, max_keys)[0]


#: Whether the compiled scanner is in use (False: built without it, or switched off).
COMPILED = False


def use(compiled: bool) -> None:
    """Use the compiled scanner (``True``; ValueError when it was not built) or the
    pure-Python code (``False``) from now on, in this process. Tests switch with it; a
    server chooses once, at import, by :data:`PURE_ENV`."""
    global COMPILED, may_overflow, scan_body, within_limits
    if compiled and _compiled is None:
        raise ValueError("eventrouter._scan was not built (no C compiler at install time?)")
    COMPILED = compiled
    if compiled:
        may_overflow = _compiled.may_overflow
        scan_body = _compiled.scan_body
        within_limits = _within_compiled
    else:
        may_overflow = may_overflow_py
        scan_body = _scan_body_py
        within_limits = _never_certain


def available() -> bool:
    """Whether the compiled scanner was built and imports."""
    return _compiled is not None


#: ``may_overflow(data) -> bool``: :func:`may_overflow_py`'s answer.
may_overflow = may_overflow_py
#: ``scan_body(data, max_depth, max_keys) -> (within, may_overflow)``: ``within`` True
#: when ``data`` is certainly within the structure limits (False: not certain; run
#: :mod:`eventrouter.edge.limits`' check), ``may_overflow`` as :func:`may_overflow`.
scan_body = _scan_body_py
#: ``within_limits(data, max_depth, max_keys) -> bool``: ``scan_body``'s first answer.
within_limits = _never_certain

use(_compiled is not None and os.environ.get(PURE_ENV, "") in ("", "0"))
