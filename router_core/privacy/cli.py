"""``eventrouter privacy``: delete a user's data, and suppress or unsuppress ids.

- ``delete --user-id ID [--follow ID ...] [--follow-all] [--sink NAME] [--dry-run]
  [--suppress] [--wait S]``: every SQL store, or the ``--sink`` ones
  (:mod:`eventrouter.privacy.erasure`). Only the user id's own data goes, unless linked ids
  (aliased older ids, anonymous ids) are named with ``--follow`` or all of them with
  ``--follow-all``; every run prints the linked ids it found, and flags those whose
  link crosses sources. No confirmation token: the operator has the shell;
- ``suppress`` / ``unsuppress`` (``--user-id ID`` or ``--anonymous-id ID``) and
  ``list``: the admin store's suppression list (:mod:`eventrouter.privacy.suppressions`).

Exit status: 0 done; 1 a store failed (the others were still handled) or, for
``unsuppress``, the id was not suppressed; 2 a config error (or no SQL store).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from eventrouter import config as config_module
from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import Config, ConfigError

# The store modules (SQLAlchemy and the drivers) load only when a privacy command runs:
# every other command imports this module to build its parser.
if TYPE_CHECKING:
    from eventrouter.privacy.erasure import Deletion, LinkedId
    from eventrouter.privacy.suppressions import SuppressionList

USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"


def suppression_list(config: Config, bus: Bus) -> SuppressionList:
    """The admin store's suppression list.

    :raises ConfigError: no queryable store is configured, or it keeps no admin tables."""
    from eventrouter.privacy.suppressions import SuppressionList

    sink = bus.store_sink()
    if sink is None:
        raise ConfigError(
            config.path,
            "admin.store",
            "the suppression list lives in the admin store, and no SQL sink is configured",
        )
    store = sink.store()
    if store.admin_tables() is None:
        raise ConfigError(
            config.path,
            "admin.store",
            f"the suppression list lives in the admin store, and sink {sink.name!r} "
            f"(type {sink.config.type!r}) keeps no admin tables",
        )
    return SuppressionList(store)


def deletion_lines(deletion: Deletion) -> list[str]:
    """The lines ``privacy delete`` prints (and the dashboard shows)."""
    from eventrouter.privacy import erasure

    sources = ", ".join(deletion.sources) or "none stored"
    lines = [f"user {deletion.user_id!r}: own events from source(s): {sources}"]
    followed = deletion.followed
    if deletion.linked:
        lines.append(
            f"{len(deletion.linked)} linked id(s), {len(followed)} followed"
            + ("" if followed else " (name them with --follow ID, or --follow-all)")
        )
    else:
        lines.append("no linked ids")
    lines += [f"  {line}" for line in map(describe_link, deletion.linked)]
    if deletion.not_linked:
        shown = ", ".join(map(repr, deletion.not_linked))
        lines.append(f"not linked to {deletion.user_id!r}, not followed: {shown}")
    for store in deletion.stores:
        head = f"{store.sink} ({store.type}): "
        if store.status in (erasure.SKIPPED, erasure.FAILED):
            lines.append(f"{head}{store.status}: {store.detail}")
            continue
        counts = f"{store.events} event(s)"
        if store.identity_rows:
            counts += f", {store.users} user row(s), {store.identities} identity row(s)"
        line = f"{head}{store.status} {counts}"
        if store.detail:
            line += f"; {store.detail}"
        lines.append(line)
    return lines


def describe_link(link: LinkedId) -> str:
    """One linked id: followed or not, its kind, how it is linked, what it takes."""
    mark = "[x]" if link.followed else "[ ]"
    line = f"{mark} {link.kind} {link.id!r}: {'; '.join(link.how)}; "
    line += f"{link.event_count} more event(s)"
    if link.sources:
        line += f" from {', '.join(link.sources)}"
    if link.cross_source:
        line += " - CROSSES SOURCES"
        if link.link_sources:
            line += f" (linked from {', '.join(link.link_sources)})"
    return line


def _load(args: argparse.Namespace) -> tuple[Config, Bus]:
    config = config_module.load(args.config)
    return config, Bus(config, make_plugin_manager(config))


def _id(args: argparse.Namespace) -> tuple[str, str]:
    if args.user_id is not None:
        return USER_ID, args.user_id
    return ANONYMOUS_ID, args.anonymous_id


def cmd_delete(args: argparse.Namespace) -> int:
    from eventrouter.privacy import erasure

    config, bus = _load(args)
    for name in args.sink or ():
        if name not in bus.sinks:
            raise ConfigError(config.path, "sinks", f"no sink named {name!r}")
    if args.suppress and not args.dry_run:
        # First: events arriving while the stores are cleaned are dropped from now on.
        with suppression_list(config, bus) as suppressions:
            suppressions.add(USER_ID, args.user_id, "deleted")
        print(f"suppressed user_id {args.user_id!r}")
    deletion = erasure.delete_user(
        bus.sinks,
        args.user_id,
        follow=args.follow or (),
        follow_all=args.follow_all,
        only=args.sink,
        dry_run=args.dry_run,
        wait=args.wait,
    )
    if args.json:
        sys.stdout.write(msgspec.json.encode(deletion).decode() + "\n")
    else:
        print("\n".join(deletion_lines(deletion)))
    if deletion.failed:
        return 1
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    config, bus = _load(args)
    kind, ident = _id(args)
    with suppression_list(config, bus) as suppressions:
        added = suppressions.add(kind, ident, args.reason or "")
    state = "suppressed" if added else "already suppressed"
    print(f"{kind} {ident!r}: {state}; new events are dropped within {config.privacy.refresh:g}s")
    return 0


def cmd_unsuppress(args: argparse.Namespace) -> int:
    config, bus = _load(args)
    kind, ident = _id(args)
    with suppression_list(config, bus) as suppressions:
        removed = suppressions.remove(kind, ident)
    print(f"{kind} {ident!r}: {'unsuppressed' if removed else 'was not suppressed'}")
    return 0 if removed else 1


def cmd_list(args: argparse.Namespace) -> int:
    config, bus = _load(args)
    with suppression_list(config, bus) as suppressions:
        rows = suppressions.list()
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    for row in rows:
        since = row.suppressed_at.strftime("%Y-%m-%d %H:%M:%S")
        reason = f"  {row.reason}" if row.reason else ""
        print(f"{since}  {row.kind:<12}  {row.id}{reason}")
    print(f"{len(rows)} suppressed id(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    from eventrouter.privacy.suppressions import InvalidId

    try:
        return args.privacy_func(args)
    except InvalidId as exc:
        print(f"eventrouter: {exc}", file=sys.stderr)
        return 2
    except ConfigError:
        raise
    except Exception as exc:  # the admin store is unreachable, or refused the change
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        print(f"eventrouter: the admin store failed: {detail}", file=sys.stderr)
        return 1


def add_parser(commands: Any) -> None:
    """The ``privacy`` subcommand, added to the CLI's subparsers."""
    privacy = commands.add_parser(
        "privacy", help="delete a user's data; suppress ids (docs/privacy.md)"
    )
    actions = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")

    delete = actions.add_parser(
        "delete", help="delete a user's events and identity rows from the SQL stores"
    )
    delete.add_argument("--user-id", required=True, metavar="ID")
    follow = delete.add_mutually_exclusive_group()
    follow.add_argument(
        "--follow",
        action="append",
        metavar="ID",
        help="also delete the events of this linked id (repeatable; --dry-run lists them)",
    )
    follow.add_argument(
        "--follow-all", action="store_true", help="also delete those of every linked id"
    )
    delete.add_argument(
        "--sink", action="append", metavar="NAME", help="only this sink (repeatable)"
    )
    delete.add_argument(
        "--dry-run", action="store_true", help="count, list the linked ids, delete nothing"
    )
    delete.add_argument(
        "--suppress", action="store_true", help="suppress the user id first (as Segment does)"
    )
    delete.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a ClickHouse delete mutation (default: 60)",
    )
    delete.add_argument("--json", action="store_true", help="print JSON")
    common(delete)
    delete.set_defaults(func=run, privacy_func=cmd_delete)

    for name, func, help_text in (
        ("suppress", cmd_suppress, "drop every new event of an id (before any sink)"),
        ("unsuppress", cmd_unsuppress, "accept an id's events again"),
    ):
        action = actions.add_parser(name, help=help_text)
        who = action.add_mutually_exclusive_group(required=True)
        who.add_argument("--user-id", metavar="ID")
        who.add_argument("--anonymous-id", metavar="ID")
        if name == "suppress":
            action.add_argument("--reason", help="a note kept with the suppression")
        common(action)
        action.set_defaults(func=run, privacy_func=func)

    listing = actions.add_parser("list", help="list the suppressed ids")
    listing.add_argument("--json", action="store_true", help="print JSON")
    common(listing)
    listing.set_defaults(func=run, privacy_func=cmd_list)
