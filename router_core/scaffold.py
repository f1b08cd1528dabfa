"""``eventrouter new-plugin NAME --kind sink|stage``: a ready plugin package.

The package is ``DIR/eventrouter-NAME/`` (underscores of NAME become hyphens there
and in the distribution's name, as pip normalises it): a ``pyproject.toml`` whose ``eventrouter``
entry point ``NAME`` names the module ``eventrouter_NAME``, that module (a working sink
type ``NAME`` or pipeline stage, with its ``Options`` Struct), tests (the conformance kit
for a sink, a small stage test) and a README. It passes its own tests as generated
(``tests/integration/test_new_plugin.py`` installs one into a fresh venv and runs them).

The templates are package data (``router_core/templates/new_plugin``, listed in
``setup.cfg``); ``{{key}}`` placeholders are replaced by plain string substitution, so
the templates hold Python and TOML as they will be written.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

from eventrouter import __version__

KINDS = ("sink", "stage")
#: A plugin name: an identifier of lowercase ASCII letters, digits and underscores,
#: starting with a letter; it becomes the entry point, the sink type, part of the module
#: and of the directory, so nothing else (no ``/``, ``..``, ``-`` or space) may pass.
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

#: What each kind's package holds: template -> path in the package.
FILES = {
    "sink": {
        "common/pyproject.toml.tmpl": "pyproject.toml",
        "sink/README.md.tmpl": "README.md",
        "sink/module.py.tmpl": "{module}/__init__.py",
        "sink/test_module.py.tmpl": "tests/test_conformance.py",
    },
    "stage": {
        "common/pyproject.toml.tmpl": "pyproject.toml",
        "stage/README.md.tmpl": "README.md",
        "stage/module.py.tmpl": "{module}/__init__.py",
        "stage/test_module.py.tmpl": "tests/test_stage.py",
    },
}
DESCRIPTIONS = {
    "sink": "An eventrouter sink type: {name}",
    "stage": "An eventrouter pipeline stage: {name}",
}


class ScaffoldError(ValueError):
    """A name, kind or directory ``new-plugin`` refuses; the message says why."""


def check_name(name: str, taken: set[str] = frozenset()) -> str:
    """``name`` if it can name a plugin package, else :class:`ScaffoldError`."""
    if not NAME.fullmatch(name):
        raise ScaffoldError(
            f"plugin name {name!r}: use 1 to 40 lowercase letters, digits and underscores, "
            "starting with a letter (it becomes the entry point, the sink type and the "
            "module eventrouter_NAME)"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"plugin name {name!r} is a Python keyword")
    if name in taken:
        raise ScaffoldError(f"plugin name {name!r} is taken by an installed plugin")
    return name


def render(template: str, values: dict[str, str]) -> str:
    text = resources.files("eventrouter").joinpath("templates", "new_plugin", template)
    rendered = text.read_text(encoding="utf-8")
    for key, value in values.items():
        rendered = rendered.replace("{{" + key + "}}", value)
    if leftover := re.search(r"\{\{\w+\}\}", rendered):
        raise AssertionError(f"template {template}: no value for {leftover.group(0)}")
    return rendered


def new_plugin(
    name: str, kind: str, directory: Path, taken: set[str] = frozenset()
) -> tuple[Path, list[Path]]:
    """Write the package of plugin ``name`` under ``directory``; its root and files.

    :raises ScaffoldError: a bad name or kind, or a package directory that exists
        already (nothing is overwritten).
    """
    check_name(name, taken)
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    module = f"eventrouter_{name}"
    distribution = f"eventrouter-{name.replace('_', '-')}"  # as pip normalises it
    root = Path(directory) / distribution
    try:
        root.mkdir(parents=True)
    except FileExistsError:
        raise ScaffoldError(f"{root} exists already: choose another --dir or name") from None
    values = {
        "name": name,
        "module": module,
        "distribution": distribution,
        "class_name": "".join(part.capitalize() for part in name.split("_") if part),
        "description": DESCRIPTIONS[kind].format(name=name),
        "eventrouter_version": __version__,
    }
    rendered = {
        root / target.format(module=module): render(template, values)
        for template, target in FILES[kind].items()
    }
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root, list(rendered)
