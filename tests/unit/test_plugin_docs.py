"""docs/plugins.md runs as written: every code block on the page is checked here.

- A ``python`` block whose first line names a file (``# eventrouter_jsonl/__init__.py``)
  is written to that path in a temporary package first, so later blocks can import it.
- Every ``python`` block is then run in page order: a package file is imported, a test
  file (``# tests/test_x.py``) and any other block are executed as a module of their
  own, and every ``test_*`` function a block defines is called (with ``tmp_path``). A
  block whose first line is ``# fragment: ...`` is only compiled, and so is one whose
  tests start processes (:data:`PROCESS_BLOCKS`): an integration test runs those.
- ``toml`` blocks parse; those that are an operator's config (not ``[project...]``)
  pass the config schema. ``ini`` blocks parse, and the built-in entry points match
  ``setup.cfg``. The ``console`` listing of ``eventrouter plugins`` is what the command
  prints. ``text`` blocks are output shown for reading. A block with no language fails:
  say what it is.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import re
import runpy
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventrouter import cli
from eventrouter import config as config_module

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"
BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
FILE_HEADER = re.compile(r"^# ([\w./-]+\.py)$")
KNOWN = {"python", "toml", "ini", "console", "text"}


@dataclass
class Block:
    language: str
    code: str
    line: int

    @property
    def file(self) -> str | None:
        match = FILE_HEADER.match(self.code.splitlines()[0]) if self.code else None
        return match.group(1) if match else None

    @property
    def fragment(self) -> bool:
        return self.code.startswith("# fragment:")

    @property
    def where(self) -> str:
        return f"docs/plugins.md:{self.line}"


def blocks(language: str | None = None) -> list[Block]:
    text = PAGE.read_text(encoding="utf-8")
    found = [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in BLOCK.finditer(text)
    ]
    return [b for b in found if language is None or b.language == language]


def test_every_block_says_what_it_is():
    unknown = [f"{b.where}: ```{b.language}" for b in blocks() if b.language not in KNOWN]
    assert not unknown, f"use one of {sorted(KNOWN)}: {unknown}"


def _call_tests(namespace: dict, block: Block, tmp_path_factory) -> list[str]:
    called = []
    for name, function in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(function):
            parameters = inspect.signature(function).parameters
            kwargs = {"tmp_path": tmp_path_factory.mktemp(name)} if "tmp_path" in parameters else {}
            assert set(parameters) <= {"tmp_path"}, f"{block.where}: {name} needs {parameters}"
            function(**kwargs)
            called.append(name)
    return called


#: Blocks whose tests start processes (the conformance kit's concurrent writers): here
#: they are only compiled; tests/integration/test_plugin_docs_processes.py runs them.
PROCESS_BLOCKS = {"tests/test_conformance.py"}


def test_every_python_block_runs(tmp_path, tmp_path_factory, monkeypatch):
    tests_called = run_page(tmp_path, tmp_path_factory, monkeypatch, processes=False)
    # The testing recipe is a real test, and it ran.
    assert "test_an_event_reaches_the_file" in tests_called


def run_page(tmp_path, tmp_path_factory, monkeypatch, *, processes: bool) -> list[str]:
    """Write the page's files, run its blocks in order, and call the ``test_``
    functions of the blocks in :data:`PROCESS_BLOCKS` (``processes``) or of every other
    block (not ``processes``; those blocks are then only compiled). The names called."""
    python = blocks("python")
    package = tmp_path / "package"
    written: dict[str, Block] = {}
    for block in python:
        if block.file is None:
            continue
        assert block.file not in written, f"{block.where}: {block.file} written twice"
        written[block.file] = block
        path = package / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code)
    monkeypatch.syspath_prepend(str(package))
    work = tmp_path / "cwd"  # blocks that write files in the working directory
    work.mkdir()
    monkeypatch.chdir(work)
    modules = {name for name in sys.modules}
    tests_called: list[str] = []
    try:
        for block in python:
            starts_processes = block.file in PROCESS_BLOCKS
            if block.fragment or (starts_processes and not processes):
                compile(block.code, block.where, "exec")
                continue
            if block.file is not None and not block.file.startswith("tests/"):
                module = block.file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                namespace = vars(importlib.import_module(module))
            elif block.file is not None:
                namespace = runpy.run_path(str(package / block.file), run_name=block.file)
            else:
                namespace = {"__name__": f"docs_block_{block.line}"}
                exec(compile(block.code, block.where, "exec"), namespace)
            if starts_processes == processes:
                tests_called += _call_tests(namespace, block, tmp_path_factory)
    finally:
        for name in set(sys.modules) - modules:  # the page's packages, for other tests
            if name.split(".")[0] in {p.split("/")[0].removesuffix(".py") for p in written}:
                del sys.modules[name]
    return tests_called


def test_the_plugin_under_test_may_also_be_installed():
    """The recipe passes a module that an entry point registers too (``pip install
    -e .``): it is registered once, not refused under a second name."""
    from eventrouter.app import create_app
    from eventrouter.sinks import sqlite

    app = create_app(config_module.parse({}), plugins=[sqlite])
    names = [name for name, plugin in app.bus.pm.list_name_plugin() if plugin is sqlite]
    assert names == ["sqlite"]


@pytest.mark.parametrize("block", blocks("toml"), ids=lambda b: str(b.line))
def test_toml_blocks_parse(block):
    data = tomllib.loads(block.code)
    if "project" not in data:  # an operator's config file
        config_module.parse(data, file=block.where)


@pytest.mark.parametrize("block", blocks("ini"), ids=lambda b: str(b.line))
def test_ini_blocks_parse(block):
    configparser.ConfigParser().read_string(block.code)


def _entry_points(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    value = parser["options.entry_points"]["eventrouter"]
    return dict(line.replace(" ", "").split("=") for line in value.strip().splitlines())


def test_the_builtin_entry_points_are_setup_cfg_s():
    shown = _entry_points(blocks("ini")[0].code)
    assert shown == _entry_points((ROOT / "setup.cfg").read_text())


def test_the_plugins_listing_is_what_the_command_prints(capsys):
    listing = next(b for b in blocks("console") if b.code.startswith("$ eventrouter plugins\n"))
    assert cli.main(["plugins"]) == 0
    printed = capsys.readouterr().out
    assert listing.code.split("\n", 1)[1] == printed
