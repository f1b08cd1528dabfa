"""The docs cover the code: every hook, every config key, the README quick start.

As in Datasette's ``tests/test_docs.py``: adding a hook or a config key without
documenting it, or removing it from the docs, fails here.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec.inspect as mi
import pytest

from eventrouter import config as config_module
from eventrouter.bus import hookspecs
from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import Config, SinkConfig
from eventrouter.sinks.sqlite import SQLiteSink

ROOT = Path(__file__).resolve().parents[2]

FIRST_CURL = (
    "curl -X POST localhost:8000/track -H 'Content-Type: application/json' -d "
    """'{"event_type":"page_view","properties":{"path":"/home"},"""
    """"timestamp":"2025-05-28T09:47:35+05:30","user_id":"u1","session_id":"s1"}'"""
)
READ_BACK_CURL = (
    'curl -H "Authorization: Bearer $EVENTROUTER_ADMIN_TOKEN" localhost:8000/api/v1/events'
)


def read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (whose comments start with ``#`` too)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


# -- hooks -----------------------------------------------------------------------------


def hook_signatures() -> dict[str, str]:
    """``{"eventrouter_write_batch": "eventrouter_write_batch(commands)", ...}``."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {
        name: f"{name}({', '.join(inspect.signature(function).parameters)})"
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, marker)
    }


HOOKS = hook_signatures()
HOOK_HEADING = re.compile(r"^### (eventrouter_\w+)\(.*\)$", re.MULTILINE)


def test_hookspecs_are_found():
    assert "eventrouter_write_batch" in HOOKS
    assert HOOKS["eventrouter_write_batch"] == "eventrouter_write_batch(commands)"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_with_its_parameters(name):
    headings = prose(read("docs/plugins.md")).splitlines()
    assert f"### {HOOKS[name]}" in headings, f"docs/plugins.md needs '### {HOOKS[name]}'"


def test_no_documented_hook_is_missing_from_hookspecs():
    documented = HOOK_HEADING.findall(prose(read("docs/plugins.md")))
    assert documented, "docs/plugins.md documents no hooks"
    assert set(documented) <= set(HOOKS)
    assert len(documented) == len(set(documented)), "a hook is documented twice"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hookspec_has_a_docstring(name):
    assert inspect.getdoc(getattr(hookspecs, name)), f"hookspec {name} has no docstring"


# -- configuration keys ----------------------------------------------------------------

#: Struct fields that are not TOML keys: the file's own path, and the sink type's own
#: keys (documented per sink type, below).
NOT_KEYS = {(Config, "path"), (SinkConfig, "options")}


def struct_keys(struct: mi.StructType, prefix: str = "") -> Iterator[str]:
    """Dotted names of a Struct's fields and of every nested field.

    A table is ``server.port``; a ``dict[str, Struct]`` is ``sinks.<name>.type``; a
    ``list[Struct]`` (an array of tables) is ``sources[].name``.
    """
    for field in struct.fields:
        if (struct.cls, field.name) in NOT_KEYS:
            continue
        key = f"{prefix}{field.encode_name}"
        yield key
        yield from nested_keys(field.type, key)


def nested_keys(type_: mi.Type, key: str) -> Iterator[str]:
    if isinstance(type_, mi.StructType):
        yield from struct_keys(type_, f"{key}.")
    elif isinstance(type_, mi.ListType):
        yield from nested_keys(type_.item_type, f"{key}[]")
    elif isinstance(type_, mi.DictType):
        yield from nested_keys(type_.value_type, f"{key}.<name>")
    elif isinstance(type_, mi.UnionType):
        for member in type_.types:
            yield from nested_keys(member, key)


CONFIG_KEYS = sorted(struct_keys(mi.type_info(Config)))
SQLITE_KEYS = sorted(struct_keys(mi.type_info(SQLiteSink.Options), "sinks.<name>."))
#: The own keys of every built-in sink type (the queue publisher is configured in [queue]).
SINK_TYPE_KEYS = sorted(
    {
        key
        for name, cls in Bus(
            config_module.parse({}, None, {}),
            make_plugin_manager(config_module.parse({}, None, {})),
        )
        .sink_types()
        .items()
        if name != "queue"
        for key in struct_keys(mi.type_info(cls.Options), "sinks.<name>.")
    }
)


def documented_keys(text: str) -> set[str]:
    """Every backticked name in a heading or a table row."""
    names: set[str] = set()
    for line in prose(text).splitlines():
        if line.startswith("#") or line.lstrip().startswith("|"):
            names.update(re.findall(r"`([^`]+)`", line))
    return names


def test_config_keys_are_found():
    for key in ("server.port", "sources[].write_key", "sinks.<name>.batch.max_events"):
        assert key in CONFIG_KEYS
    assert SQLITE_KEYS == [
        "sinks.<name>.indexes",
        "sinks.<name>.rollup_paths",
        "sinks.<name>.synchronous",
        "sinks.<name>.unique_users",
        "sinks.<name>.url",
    ]


@pytest.mark.parametrize("key", CONFIG_KEYS + SINK_TYPE_KEYS)
def test_every_config_key_is_documented(key):
    assert key in documented_keys(read("docs/configuration.md")), (
        f"docs/configuration.md needs `{key}` in a heading or a table cell"
    )


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_every_configuration_example_is_valid():
    blocks = toml_blocks(read("docs/configuration.md"))
    assert len(blocks) >= 2
    for block in blocks:
        # Variables without a default get a distinct value each, long enough for the
        # admin token's minimum length; defaults are exercised.
        env = {
            name: f"value-of-{name}-0123456789abcdef" for name in re.findall(r"\$\{(\w+)\}", block)
        }
        config = config_module.parse(tomllib.loads(block), "example.toml", env)
        Bus(config, make_plugin_manager(config))  # validates each sink's own keys too


@pytest.mark.parametrize("env", [{}, {"EVENTROUTER_DATA_DIR": "/srv/eventrouter"}])
def test_documented_embedded_default_equals_the_real_one(env):
    [block] = [
        b
        for b in toml_blocks(read("docs/configuration.md"))
        if "EVENTROUTER_DATA_DIR" in b and "[sinks.local]" in b
    ]
    documented = config_module.parse(tomllib.loads(block), "example.toml", env)
    assert documented.sinks == config_module.parse({}, None, env).sinks


# -- README and links ------------------------------------------------------------------


def test_readme_has_the_quick_start():
    readme = read("README.md")
    assert "make run" in readme
    assert "make test" in readme
    assert FIRST_CURL in readme
    assert READ_BACK_CURL in readme


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


DOC_PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_relative_links_resolve(page):
    text = read(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        assert file.is_file(), f"{page}: broken link {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", prose(file.read_text("utf-8")), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page}: no anchor #{anchor}"


# -- citations ------------------------------------------------------------------------------

#: Documents that live outside this repository: the code and the docs must not send a
#: reader to them (what they decided is written down here, in docs/architecture.md).
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|design card|\.\./shared/(?!tools/runtime-deps)")
CITING = ("*.py", "*.md", "*.cfg", "*.toml", "*.html", "*.js", "*.lua", "Makefile", "*.txt")
SKIPPED = {".venv", ".git", "node_modules", "build", "results", ".ruff_cache", ".pytest_cache"}


def repository_files() -> Iterator[Path]:
    for pattern in CITING:
        for path in ROOT.rglob(pattern):
            parts = set(path.relative_to(ROOT).parts)
            if not parts & SKIPPED and "egg-info" not in str(path) and path.is_file():
                yield path


def test_code_and_docs_cite_nothing_outside_the_repository():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in sorted(set(repository_files()))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
