"""Tracking plans: per source, a JSON Schema for each event name, for identify traits and
for group traits, and what to do with an event that breaks one.

A plan is a TOML file::

    on_violation = "drop"        # allow | drop | reject
    unplanned = "allow"          # allow | violation: track events the plan does not list

    [events."Order Completed"]   # the JSON Schema of the event's properties
    type = "object"
    required = ["order_id"]

    [identify]                   # the JSON Schema of identify traits
    [group]                      # the JSON Schema of group traits

or a directory holding ``plan.toml`` (the same keys, every one optional),
``events/NAME.json`` (one schema per event name: the file name without ``.json``),
``identify.json`` and ``group.json``. Page, screen and alias calls are not checked.

Each schema is compiled once per plan version (the SHA-256 of the plan's files) with
``jsonschema-rs``, the fastest of the validators measured (``bench/quality.py``). A
``$ref`` may point inside the schema only: remote references are refused when the plan
is loaded, so a plan never makes the router fetch a URL. Validation reads the one
free-form field it checks (``properties`` or ``traits``), decoded once per event; a
valid event costs one ``is_valid`` call, the errors are listed only for an invalid one.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec

from eventrouter.config import ConfigError, Duration, plugin_options
from eventrouter.events.commands import Command

ALLOW = "allow"
DROP = "drop"
REJECT = "reject"
POLICIES = (ALLOW, DROP, REJECT)
#: ``unplanned``: an event name the plan does not list passes, or is a violation.
VIOLATION = "violation"
UNPLANNED_POLICIES = (ALLOW, VIOLATION)
#: The rule named by a violation for an event the plan does not list.
UNPLANNED_RULE = "unplanned"

#: At most this many violations are kept per event.
MAX_VIOLATIONS = 10
#: How an offending value appears in a violation's message: never the value itself.
MASK = "[value]"
PLAN_FILE = "plan.toml"
EVENTS_DIR = "events"
IDENTIFY = "identify"
GROUP = "group"

#: The plugin's name: its options are ``[plugins.options.quality]``.
PLUGIN = "quality"


class QualityOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Source name → plan (a TOML file or a directory), relative to the config file.
    plans: dict[str, str] = {}
    #: Seconds between looks at the plans' files.
    reload_interval: Duration = Duration(2.0)
    #: Count every event's paths and types into the event catalogue.
    catalogue: bool = False
    #: The share of events the catalogue counts (1.0: every one).
    catalogue_sample: float = 1.0
    #: Seconds between writes of the catalogue and violation counts to the store.
    flush: Duration = Duration(10.0)


def options_of(config: Any) -> QualityOptions:
    options = plugin_options(config, PLUGIN, QualityOptions)
    prefix = f"plugins.options.{PLUGIN}"
    if not 0.0 < options.catalogue_sample <= 1.0:
        raise ConfigError(config.path, f"{prefix}.catalogue_sample", "must be > 0 and <= 1")
    if options.reload_interval <= 0 or options.flush <= 0:
        raise ConfigError(config.path, prefix, "reload_interval and flush must be > 0")
    known = {s.name for s in config.sources} or {"default"}
    for source in options.plans:
        if source not in known:
            raise ConfigError(
                config.path,
                f"{prefix}.plans.{source}",
                f"no source named {source!r} (sources: {', '.join(sorted(known))})",
            )
    return options


def plan_locations(config: Any, options: QualityOptions) -> dict[str, Path]:
    base = Path(config.path).parent if config.path else Path.cwd()
    return {source: base / where for source, where in options.plans.items()}


class PlanError(ConfigError):
    """A plan that cannot be loaded: the message names its file and the key."""


class Violation(msgspec.Struct, frozen=True):
    """One broken rule: ``path`` is where in the event (``properties.total``), ``rule``
    the JSON Schema keyword (``type``, ``required``, ...), ``message`` what it says."""

    path: str
    rule: str
    message: str

    def describe(self) -> str:
        return f"{self.path}: {self.rule}: {self.message}"


def _refuse_remote(uri: str) -> Any:
    raise ValueError(f"remote $ref {uri!r} is not allowed in a tracking plan")


def _compile(schema: Any, file: str, key: str) -> Any:
    if not isinstance(schema, dict | bool):
        raise PlanError(file, key, "a JSON Schema must be an object (or true/false)")
    try:
        return jsonschema_rs.validator_for(schema, retriever=_refuse_remote, mask=MASK)
    except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlanError(file, key, f"not a valid JSON Schema: {first}") from None


def _json_path(column: str, parts: Any) -> str:
    return ".".join([column, *(str(p) for p in parts)])


class Plan:
    """One source's plan, compiled."""

    def __init__(
        self,
        source: str,
        location: str,
        on_violation: str,
        unplanned: str,
        events: Mapping[str, Any],
        identify: Any | None,
        group: Any | None,
        version: str,
        schemas: Mapping[str, Any],
    ) -> None:
        self.source = source
        self.location = location
        self.on_violation = on_violation
        self.unplanned = unplanned
        self.events = dict(events)
        self.identify = identify
        self.group = group
        #: SHA-256 (hex, 12 characters) of the plan's files: a plan is compiled once per version.
        self.version = version
        #: The schemas as written (``events.NAME``, ``identify``, ``group``), for the docs page.
        self.schemas = dict(schemas)

    def check(self, command: Command) -> list[Violation] | None:
        """The rules ``command`` breaks, or None when it keeps them all (or is not checked)."""
        kind = command.kind
        if kind == "track":
            validator = self.events.get(command.event)
            if validator is None:
                if self.unplanned == VIOLATION:
                    return [
                        Violation("event", UNPLANNED_RULE, "the event is not in the tracking plan")
                    ]
                return None
            column = "properties"
        elif kind == IDENTIFY:
            validator, column = self.identify, "traits"
        elif kind == GROUP:
            validator, column = self.group, "traits"
        else:
            return None
        if validator is None:
            return None
        data = getattr(command, column)
        if validator.is_valid(data):
            return None
        found = []
        for error in validator.iter_errors(data):
            parts = list(error.instance_path)
            rule = error.kind.name
            if rule == "required":
                parts.append(error.kind.property)
            found.append(Violation(_json_path(column, parts), rule, error.message[:300]))
            if len(found) >= MAX_VIOLATIONS:
                break
        return found


def _policy(value: Any, allowed: tuple[str, ...], file: str, key: str) -> str:
    if value not in allowed:
        raise PlanError(file, key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def read_plan(source: str, location: Path) -> Plan:
    """Load and compile the plan at ``location`` (a TOML file or a directory).

    :raises PlanError: naming the file and key of the first problem.
    """
    digest = hashlib.sha256()
    schemas: dict[str, Any] = {}
    where = str(location)
    if location.is_dir():
        settings_file = location / PLAN_FILE
        settings: dict[str, Any] = {}
        if settings_file.is_file():
            text = settings_file.read_bytes()
            digest.update(b"plan.toml\0" + text + b"\0")
            settings = _toml(text, str(settings_file))
        events_dir = location / EVENTS_DIR
        for key in (IDENTIFY, GROUP):
            path = location / f"{key}.json"
            if path.is_file():
                text = path.read_bytes()
                digest.update(f"{key}\0".encode() + text + b"\0")
                schemas[key] = _json(text, str(path))
        events = dict(settings.pop("events", {}) or {})
        if events_dir.is_dir():
            for path in sorted(events_dir.glob("*.json")):
                text = path.read_bytes()
                digest.update(f"events/{path.name}\0".encode() + text + b"\0")
                events[path.name[: -len(".json")]] = _json(text, str(path))
        for key in (IDENTIFY, GROUP):
            if key in settings:
                schemas.setdefault(key, settings.pop(key))
        file = str(settings_file)
    elif location.is_file():
        text = location.read_bytes()
        digest.update(text)
        settings = _toml(text, where)
        events = settings.pop("events", {}) or {}
        for key in (IDENTIFY, GROUP):
            if key in settings:
                schemas[key] = settings.pop(key)
        file = where
    else:
        raise PlanError(where, "", "no such file or directory")
    on_violation = _policy(settings.pop("on_violation", ALLOW), POLICIES, file, "on_violation")
    unplanned = _policy(settings.pop("unplanned", ALLOW), UNPLANNED_POLICIES, file, "unplanned")
    for key in settings:
        raise PlanError(file, key, "unknown key (on_violation, unplanned, events, identify, group)")
    if not isinstance(events, dict):
        raise PlanError(file, "events", "must be a table of event name = JSON Schema")
    compiled = {}
    for name, schema in events.items():
        compiled[name] = _compile(schema, file, f"events.{name}")
        schemas[f"events.{name}"] = schema
    identify = _compile(schemas[IDENTIFY], file, IDENTIFY) if IDENTIFY in schemas else None
    group = _compile(schemas[GROUP], file, GROUP) if GROUP in schemas else None
    return Plan(
        source,
        where,
        on_violation,
        unplanned,
        compiled,
        identify,
        group,
        digest.hexdigest()[:12],
        schemas,
    )


def _toml(text: bytes, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(file, "", f"not valid TOML: {exc}") from None


def _json(text: bytes, file: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise PlanError(file, "", f"not valid JSON: {exc}") from None


def plan_files(location: Path) -> tuple[tuple[str, float, int], ...]:
    """What a reload compares: every file of the plan with its mtime and size (cheap: a
    ``stat`` each; the contents' hash, the version, decides whether to recompile)."""
    paths = [location]
    if location.is_dir():
        paths = [location / PLAN_FILE, location / "identify.json", location / "group.json"]
        events = location / EVENTS_DIR
        if events.is_dir():
            paths.extend(sorted(events.glob("*.json")))
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_mtime, stat.st_size))
    return tuple(found)
