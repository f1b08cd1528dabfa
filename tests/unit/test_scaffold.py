"""``eventrouter new-plugin`` (router_core/scaffold.py): what it writes, and what it
refuses. The generated packages' own tests run, installed in a fresh venv, in
tests/integration/test_new_plugin.py."""

from __future__ import annotations

import configparser
import fnmatch
import tomllib
from pathlib import Path

import pytest

from eventrouter import cli, scaffold

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "router_core" / "templates" / "new_plugin"


@pytest.mark.parametrize("kind", scaffold.KINDS)
def test_a_package_is_written_with_its_entry_point(tmp_path, kind):
    root, files = scaffold.new_plugin("jsonl_v2", kind, tmp_path)
    assert root == tmp_path / "eventrouter-jsonl-v2"
    test_file = "tests/test_conformance.py" if kind == "sink" else "tests/test_stage.py"
    assert sorted(str(f.relative_to(root)) for f in files) == sorted(
        ["pyproject.toml", "README.md", "eventrouter_jsonl_v2/__init__.py", test_file]
    )
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "eventrouter-jsonl-v2"
    assert project["project"]["entry-points"]["eventrouter"] == {"jsonl_v2": "eventrouter_jsonl_v2"}
    assert project["tool"]["setuptools"]["packages"] == ["eventrouter_jsonl_v2"]
    for path in files:
        text = path.read_text()
        assert "{{" not in text, f"{path}: a placeholder left"
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    module = (root / "eventrouter_jsonl_v2" / "__init__.py").read_text()
    assert "class JsonlV2Options(msgspec.Struct" in module
    if kind == "sink":
        assert 'return {"jsonl_v2": JsonlV2Sink}' in module
        assert "SinkConformance(" in (root / test_file).read_text()
    else:
        assert 'plugin_options(bus.config, "jsonl_v2", JsonlV2Options)' in module


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a/b",
        "..",
        ".",
        "",
        "Jsonl",
        "1sink",
        "my-sink",
        "my sink",
        "x" * 41,
        "sink\n",
        "é",
        "class",
    ],
)
def test_a_name_that_is_not_a_plain_identifier_is_refused(tmp_path, name):
    with pytest.raises(scaffold.ScaffoldError, match="plugin name"):
        scaffold.new_plugin(name, "sink", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_existing_package_directory_is_never_overwritten(tmp_path):
    (tmp_path / "eventrouter-jsonl").mkdir()
    (tmp_path / "eventrouter-jsonl" / "mine.py").write_text("kept")
    with pytest.raises(scaffold.ScaffoldError, match="exists already"):
        scaffold.new_plugin("jsonl", "stage", tmp_path)
    assert [p.name for p in (tmp_path / "eventrouter-jsonl").iterdir()] == ["mine.py"]


def test_the_command_refuses_an_installed_plugin_s_name(tmp_path, capsys):
    assert cli.main(["new-plugin", "sqlite", "--kind", "sink", "--dir", str(tmp_path)]) == 2
    assert "plugin name 'sqlite' is taken by an installed plugin" in capsys.readouterr().err


def test_the_command_prints_what_it_wrote_and_what_to_do_next(tmp_path, capsys):
    assert cli.main(["new-plugin", "drop_bots", "--kind", "stage", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"created stage plugin 'drop_bots' in {tmp_path / 'eventrouter-drop-bots'}" in out
    assert "eventrouter_drop_bots/__init__.py" in out
    assert "pip install -e '.[test]' && pytest" in out


def test_every_template_is_package_data():
    """A wheel holds what setup.cfg's package_data lists (the smoke stage runs
    new-plugin from an installed wheel)."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    patterns = parser["options.package_data"]["eventrouter"].split()
    templates = [str(p.relative_to(ROOT / "router_core")) for p in TEMPLATES.rglob("*.tmpl")]
    assert templates
    assert all(any(fnmatch.fnmatch(t, pattern) for pattern in patterns) for t in templates)
    used = {template for files in scaffold.FILES.values() for template in files}
    assert used == {str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*") if p.is_file()}
