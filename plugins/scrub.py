"""PII scrubbing: configured JSON paths are removed or hashed before any sink sees them.

``[privacy.scrub]`` lists paths such as ``properties.email``, ``traits.phone`` or
``context.traits.email``: a column (``properties``, ``traits`` or ``context``), then
keys. A ``*`` key matches every key of an object and every item of an array
(``properties.products.*.email``). Paths under ``drop`` are removed; values under
``hash`` are replaced by the hex HMAC-SHA256 of the value keyed by ``salt``: the same
value always gives the same hash (joins and counts still work), and without the salt
nobody can test guesses against it. A string is hashed as it is; any other value as its
JSON text. A ``null`` stays ``null``.

The stage runs on the edge only (``sink=None``): the broker, the dead-letter queues and
every sink get the scrubbed event, never the original. It does nothing in the worker:
hashing a hash again would change it. Commands are immutable and share their dicts, so
a changed command is a new one whose changed dicts are copies, down the changed path.

A column arrives as the raw JSON text the client sent (``command.properties_json``); it
is decoded only when it may hold a configured path: when its paths all start with a
named key (not ``*``), a text without a backslash (no key spelt with escapes) in which
none of those names occurs in quotes cannot, and is passed on untouched, undecoded.

The stage fails closed (``fail_closed``): the paths are checked when the config is
loaded, so scrubbing fails only on something unforeseen (a bug, an event shaped as no
test imagined, memory); the batch is then refused with a 503 rather than stored or
published unscrubbed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.config import ScrubConfig, split_scrub_path
from eventrouter.events.commands import Command
from eventrouter.health import ComponentHealth

#: Plugin name of the per-process instance registered at start-up.
PLUGIN_NAME = "scrub:paths"
WILDCARD = "*"
DROP = "drop"
HASH = "hash"

_canonical = msgspec.json.Encoder(order="sorted")
_encoder = msgspec.json.Encoder()


@hookimpl
def eventrouter_startup(bus: Any) -> None:
    """Register a :class:`Scrubber` on this bus when ``[privacy.scrub]`` lists paths."""
    scrub = bus.config.privacy.scrub
    if scrub.drop or scrub.hash:
        bus.add_plugin(Scrubber(scrub), PLUGIN_NAME)


class Scrubber:
    #: After every stage but suppress (docs/plugins.md, "Pipeline stages and their
    #: order"): no enrichment stage can add back a path it removed.
    stage_order = 900
    #: A privacy stage: if it raises or times out, the batch is refused, never passed on
    #: unscrubbed (eventrouter.bus.bus.fails_closed).
    fail_closed = True

    def __init__(self, config: ScrubConfig) -> None:
        self.key = (config.salt or "").encode()
        #: column → [(segments, action)]
        self.rules: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for action in (DROP, HASH):
            for path in getattr(config, action):
                column, segments = split_scrub_path(path)
                self.rules.setdefault(column, []).append((segments, action))
        #: column → the first keys of its paths, quoted as in JSON text (b'"email"'),
        #: or None when a path starts with ``*`` (then every text is decoded).
        self.first_keys: dict[str, tuple[bytes, ...] | None] = {}
        for column, rules in self.rules.items():
            heads = {segments[0] for segments, _ in rules}
            self.first_keys[column] = (
                None if WILDCARD in heads else tuple(_encoder.encode(h) for h in sorted(heads))
            )
        self.events = 0
        self.scrubbed = 0

    def digest(self, value: Any) -> str:
        data = value.encode() if isinstance(value, str) else _canonical.encode(value)
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def scrub(self, command: Command) -> Command:
        """``command`` with every configured path dropped or hashed (itself if none)."""
        changes: dict[str, Any] = {}
        for column, rules in self.rules.items():
            keys = self.first_keys[column]
            if keys is not None:
                text = getattr(command, f"{column}_json", None)
                if text is None:
                    continue  # this type has no such column
                data = bytes(text)
                if b"\\" not in data and not any(key in data for key in keys):
                    continue  # no configured path can be in it: left undecoded
            value = getattr(command, column, None)
            if not isinstance(value, dict) or not value:
                continue
            new = value
            for segments, action in rules:
                new = self._apply(new, segments, action)
            if new is not value:
                changes[column] = new
        if not changes:
            return command
        return msgspec.structs.replace(command, **changes)

    def _apply(self, node: Any, segments: tuple[str, ...], action: str) -> Any:
        """``node`` with the path applied: the same object when nothing matched, else a
        copy (only the containers on the changed path are copied)."""
        head, rest = segments[0], segments[1:]
        if isinstance(node, dict):
            keys = list(node) if head == WILDCARD else [head] if head in node else []
        elif isinstance(node, list) and head == WILDCARD:
            keys = range(len(node))
        else:
            return node
        copy = None
        for key in keys:
            child = node[key]
            if rest:
                new = self._apply(child, rest, action)
                if new is child:
                    continue
            elif action == HASH:
                if child is None:
                    continue
                new = self.digest(child)
            else:
                new = _REMOVED
            if copy is None:
                copy = dict(node) if isinstance(node, dict) else list(node)
            copy[key] = new
            self.scrubbed += 1
        if copy is None:
            return node
        if isinstance(copy, dict):
            return {k: v for k, v in copy.items() if v is not _REMOVED}
        return [v for v in copy if v is not _REMOVED]

    @hookimpl
    async def eventrouter_process_batch(
        self, commands: Sequence[Command], sink: str | None
    ) -> Sequence[Command] | None:
        if sink is not None:
            return None  # a worker: the edge scrubbed these before publishing them
        self.events += len(commands)
        scrubbed = [self.scrub(c) for c in commands]
        if all(new is old for new, old in zip(scrubbed, commands, strict=True)):
            return None
        return scrubbed

    @hookimpl
    def eventrouter_health(self) -> ComponentHealth:
        return ComponentHealth(
            name="scrub",
            up=True,
            stats={"events": self.events, "values": self.scrubbed},
        )


_REMOVED = object()
