"""Deleting a user's data from every store that holds it (a GDPR erasure request).

By default only the user id's own data goes: every event whose ``user_id`` is the
user id, every alias event naming it as ``previous_id``, and on PostgreSQL its
``users`` row and its ``identities`` rows. Nothing is followed on its own: anyone who
can send an event can send ``{"type": "alias", "userId": "mallory", "previousId":
"victim"}``, and a deletion request for ``mallory`` must not erase ``victim``.

Linked ids are found first, in every store, before anything is deleted, and reported
(:class:`LinkedId`), one step from the user id:

- ``previous_id``: the ``previous_id`` of an alias call the user made, or a
  ``previous_id`` link in PostgreSQL's ``identities``. Following it deletes what it
  would for a user id (its events, its alias events, its ``users`` and ``identities``
  rows) and, as it may be an anonymous id, the events with no ``user_id`` that carry
  it as ``anonymous_id``;
- ``anonymous_id``: an ``anonymous_id`` seen on the user's events, or an
  ``anonymous_id`` link in ``identities``. Following it deletes the events with no
  ``user_id`` that carry it (the user's activity before they signed in); an event that
  another user id made with it (a shared device) stays.

Each is followed only when the caller names it (``follow``) or asks for all of them
(``follow_all``). Each report carries how the id is linked, how many events following
it would add (per store), the sources involved, and ``cross_source`` when the link
crosses sources: the linked id's events come from a source none of the user's own
events come from, or the alias call that links it came from a source none of the
user's other events come from (a public browser writeKey linking to a backend
user, say).

Each store does its part through its eraser (``Store.eraser()``,
:class:`eventrouter.store.interface.Eraser`): a store that deletes in the background
(ClickHouse's mutations) is waited for up to ``wait`` seconds and reported ``pending``
after that; a store that cannot delete one user's rows (S3's immutable archive) is
reported as skipped, with its reason (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import msgspec

from eventrouter.bus.sink import Sink
from eventrouter.store.interface import (
    DELETED,
    FAILED,
    PENDING,
    SKIPPED,
    WOULD_DELETE,
    CannotErase,
    Eraser,
)

__all__ = [
    "ANONYMOUS_ID",
    "DELETED",
    "FAILED",
    "PENDING",
    "PREVIOUS_ID",
    "SKIPPED",
    "WOULD_DELETE",
    "Deletion",
    "LinkedId",
    "StoreDeletion",
    "delete_user",
]

#: Kinds of linked id.
PREVIOUS_ID = "previous_id"
ANONYMOUS_ID = "anonymous_id"

#: Ids per ``IN (...)`` list when counting what anonymous ids would take.
CHUNK = 500


class StoreDeletion(msgspec.Struct, kw_only=True):
    sink: str
    type: str
    status: str
    #: Event rows deleted (or, in a dry run, that would be).
    events: int = 0
    #: ``users`` and ``identities`` rows (PostgreSQL).
    users: int = 0
    identities: int = 0
    detail: str = ""
    #: The store keeps ``users`` and ``identities`` rows, which are counted above.
    identity_rows: bool = False


class LinkedId(msgspec.Struct, kw_only=True):
    """An id linked to the user, followed only when asked."""

    id: str
    #: :data:`PREVIOUS_ID` (aliased from it) or :data:`ANONYMOUS_ID` (seen with the user).
    kind: str
    #: How it is linked, one phrase per kind of evidence.
    how: list[str] = []
    #: Per store: the events following it would delete besides the user's own ones.
    events: dict[str, int] = {}
    #: The sources of those events.
    sources: list[str] = []
    #: The sources of the events that link it (the alias calls, or the user's events
    #: that carry the anonymous id); none for a link found only in ``identities``.
    link_sources: list[str] = []
    #: The link crosses sources (see the module's docstring).
    cross_source: bool = False
    followed: bool = False

    @property
    def event_count(self) -> int:
        """What following it takes in the store that holds most of it (stores usually
        hold copies of the same events: a sum would count each several times)."""
        return max(self.events.values(), default=0)


class Deletion(msgspec.Struct, kw_only=True):
    user_id: str
    #: The user ids deleted: the user id and the followed ``previous_id`` links.
    user_ids: list[str]
    #: The anonymous ids whose events with no ``user_id`` are deleted: the followed
    #: links (a followed ``previous_id`` may be an anonymous id too).
    anonymous_ids: list[str]
    dry_run: bool
    stores: list[StoreDeletion]
    #: The sources of the user id's own events.
    sources: list[str] = []
    #: Every id linked to the user, followed or not, ``previous_id`` links first.
    linked: list[LinkedId] = []
    #: Ids asked to be followed that are not linked to the user: not followed.
    not_linked: list[str] = []

    @property
    def failed(self) -> bool:
        return any(store.status == FAILED for store in self.stores)

    @property
    def events(self) -> int:
        return sum(store.events for store in self.stores)

    @property
    def followed(self) -> list[str]:
        return [link.id for link in self.linked if link.followed]


class _Links:
    """What one store says about the user's links: found before anything is deleted."""

    def __init__(self) -> None:
        #: Sources of the user's own events.
        self.sources: set[str] = set()
        #: ``(kind, id)`` → how it is linked, the sources of the events that link it,
        #: and (aliased ids) the sources of the user's other events.
        self.how: dict[tuple[str, str], list[str]] = {}
        self.link_sources: dict[tuple[str, str], set[str]] = {}
        self.other_sources: dict[tuple[str, str], set[str]] = {}

    def add(self, kind: str, ident: str, how: str, sources: Iterable[str] = ()) -> None:
        key = (kind, ident)
        self.how.setdefault(key, []).append(how)
        self.link_sources.setdefault(key, set()).update(sources)


def delete_user(
    sinks: dict[str, Sink],
    user_id: str,
    *,
    follow: Collection[str] = (),
    follow_all: bool = False,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    wait: float = 60.0,
) -> Deletion:
    """Delete ``user_id``'s events and identity rows from ``sinks`` (or ``only`` these),
    and those of the linked ids named in ``follow`` (every linked id: ``follow_all``).

    Blocking. A store that fails is reported as ``failed`` and the others go on. An id
    in ``follow`` that is not linked to the user is not followed (``not_linked``): a
    second run after a deletion finds the links gone with the user's events.
    """
    if not user_id:
        raise ValueError("user_id: must not be empty")
    chosen = [(name, sinks[name]) for name in (only or sinks)]
    results: dict[str, StoreDeletion] = {}
    stores: list[_Store] = []
    for name, sink in chosen:
        try:
            eraser = _eraser(sink)
        except CannotErase as exc:
            results[name] = StoreDeletion(
                sink=name, type=sink.config.type, status=SKIPPED, detail=str(exc)
            )
            continue
        stores.append(_Store(name, sink.config.type, eraser))
    found: dict[str, _Links] = {}
    takes: dict[str, dict[tuple[str, str], dict[str, int]]] = {}

    def each_store(step: Callable[[_Store], Any]) -> None:
        """``step`` for every store that has not failed yet; a failure is its result."""
        for store in stores:
            if store.name in results:
                continue
            try:
                step(store)
            except Exception as exc:
                results[store.name] = store.failed(exc)

    def discover(store: _Store) -> None:
        found[store.name] = store.links(user_id)

    def count(store: _Store) -> None:
        takes[store.name] = store.takes(user_id, keys)

    try:
        # The links, in every store, before any delete: the user's own alias calls,
        # which carry them, go with the user's events.
        each_store(discover)
        keys = {key for links in found.values() for key in links.how}
        # An id both aliased and seen as an anonymous id is reported once, as aliased
        # (following it takes the events of both).
        keys = {(k, i) for k, i in keys if k == PREVIOUS_ID or (PREVIOUS_ID, i) not in keys}
        each_store(count)
        linked = _merge(found, takes, keys)
        wanted = set(follow)
        for link in linked:
            link.followed = follow_all or link.id in wanted
        followed = [link for link in linked if link.followed]
        user_ids = {user_id} | {link.id for link in followed if link.kind == PREVIOUS_ID}
        anonymous_ids = {link.id for link in followed}

        def erase(store: _Store) -> None:
            results[store.name] = store.delete(user_ids, anonymous_ids, dry_run, wait)

        each_store(erase)
    finally:
        for store in stores:
            store.close()
    return Deletion(
        user_id=user_id,
        user_ids=sorted(user_ids),
        anonymous_ids=sorted(anonymous_ids),
        dry_run=dry_run,
        stores=[results[name] for name, _ in chosen],
        sources=sorted({s for links in found.values() for s in links.sources}),
        linked=linked,
        not_linked=sorted(wanted - {link.id for link in linked}),
    )


def _eraser(sink: Sink) -> Eraser:
    """:raises CannotErase: ``sink`` keeps no store, or its store cannot erase."""
    store = sink.store()
    if store is None:
        raise CannotErase("this sink type cannot delete")
    return store.eraser()


def _merge(
    found: dict[str, _Links],
    takes: dict[str, dict[tuple[str, str], dict[str, int]]],
    keys: set[tuple[str, str]],
) -> list[LinkedId]:
    """One :class:`LinkedId` per linked id, from every store's findings."""
    own = {s for links in found.values() for s in links.sources}
    linked = []
    for kind, ident in sorted(keys):
        key = (kind, ident)
        how: list[str] = []
        link_sources: set[str] = set()
        alias_sources: set[str] = set()
        other: set[str] = set()
        for links in found.values():
            for other_key in (key, (ANONYMOUS_ID, ident)) if kind == PREVIOUS_ID else (key,):
                for phrase in links.how.get(other_key, ()):
                    if phrase not in how:
                        how.append(phrase)
                link_sources |= links.link_sources.get(other_key, set())
            if kind == PREVIOUS_ID:
                alias_sources |= links.link_sources.get(key, set())
                other |= links.other_sources.get(key, set())
        counts = {name: sum(take.get(key, {}).values()) for name, take in takes.items()}
        sources = {s for take in takes.values() for s in take.get(key, {})}
        # Its events come from a source the user's own events do not come from; or the
        # alias that links it came from a source none of the user's other events did.
        cross = bool(sources - own) or bool(other and alias_sources - other)
        linked.append(
            LinkedId(
                id=ident,
                kind=kind,
                how=how,
                events=counts,
                sources=sorted(sources),
                link_sources=sorted(link_sources),
                cross_source=cross,
            )
        )
    # Aliased ids first (following one takes a user id's data), then anonymous ids.
    return sorted(linked, key=lambda link: (link.kind != PREVIOUS_ID, link.id))


class _Store:
    """One store's part of a deletion, through its eraser; the rules of what links a
    user and what following a link takes are here, the same for every store."""

    def __init__(self, name: str, type_: str, eraser: Eraser) -> None:
        self.name = name
        self.type = type_
        self.eraser = eraser

    def close(self) -> None:
        self.eraser.close()

    def failed(self, exc: Exception) -> StoreDeletion:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        return StoreDeletion(sink=self.name, type=self.type, status=FAILED, detail=detail)

    # -- the links ------------------------------------------------------------------------
    def links(self, user_id: str) -> _Links:
        """The ids linked to ``user_id`` in this store, and the sources involved."""
        found = _Links()
        rows = self.eraser.user_events(user_id)
        identities = self.eraser.identity_links(user_id)
        anonymous: dict[str, tuple[int, set[str]]] = {}
        aliases: dict[str, tuple[int, set[str]]] = {}
        for source, anonymous_id, previous_id, n in rows:
            found.sources.add(source)
            for ids, ident in ((anonymous, anonymous_id), (aliases, previous_id)):
                if ident and ident != user_id:
                    count, sources = ids.get(ident, (0, set()))
                    ids[ident] = (count + n, sources | {source})
        for ident, (n, sources) in sorted(anonymous.items()):
            found.add(ANONYMOUS_ID, ident, f"anonymous id on {n} of the user's events", sources)
        for ident, (n, sources) in sorted(aliases.items()):
            found.add(PREVIOUS_ID, ident, f"aliased to the user ({n} alias call(s))", sources)
            found.other_sources[(PREVIOUS_ID, ident)] = {
                source for source, _, previous_id, _ in rows if previous_id != ident
            }
        for kind, ident in identities:
            if kind in (PREVIOUS_ID, ANONYMOUS_ID) and ident != user_id:
                found.add(kind, ident, f"{_article(kind)} {kind} link in the identities table")
        return found

    def takes(
        self, user_id: str, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, int]]:
        """Per linked id: the events following it would delete, besides the user's own
        ones, counted per source."""
        taken: dict[tuple[str, str], dict[str, int]] = {}
        if not keys:
            return taken
        # Every linked id may be an anonymous id: an aliased one often is.
        anonymous = self._anonymous_takes(user_id, sorted({ident for _, ident in keys}))
        for kind, ident in keys:
            if kind == ANONYMOUS_ID:
                taken[(kind, ident)] = anonymous.get(ident, {})
            else:
                taken[(kind, ident)] = self.eraser.linked_events(user_id, ident)
        return taken

    def _anonymous_takes(self, user_id: str, ids: list[str]) -> dict[str, dict[str, int]]:
        """Events with no ``user_id`` that carry one of ``ids`` as ``anonymous_id``."""
        found: dict[str, dict[str, int]] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            for ident, source, n in self.eraser.anonymous_events(user_id, chunk):
                found.setdefault(ident, {})[source] = n
        return found

    # -- deleting -------------------------------------------------------------------------
    def delete(
        self, user_ids: set[str], anonymous_ids: set[str], dry_run: bool, wait: float
    ) -> StoreDeletion:
        erased = self.eraser.delete(user_ids, anonymous_ids, dry_run=dry_run, wait=wait)
        return StoreDeletion(
            sink=self.name,
            type=self.type,
            status=erased.status,
            events=erased.events,
            users=erased.users,
            identities=erased.identities,
            detail=erased.detail,
            identity_rows=self.eraser.identity_rows,
        )


def _article(kind: str) -> str:
    return "an" if kind == ANONYMOUS_ID else "a"
