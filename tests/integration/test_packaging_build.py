"""The compiled scanner (``eventrouter._scan``, router_core/_scan.c) is optional: setup.py
builds it where a C compiler is, and a build without one still succeeds, leaving the
module out (eventrouter.scan then runs its pure-Python code). Both builds run here, in a
copy of what the build reads, with the venv's locked setuptools and no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_packaging import ROOT


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What ``setup.py build_ext`` reads: setup.py, setup.cfg and the core's folder."""
    tree = tmp_path_factory.mktemp("build")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "router_core",
        tree / "router_core",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    return tree


def build(tree: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", "out", "--build-temp", "tmp"],
        cwd=tree,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_extension_builds_where_a_compiler_is(source):
    result = build(source)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (source / "out" / "eventrouter").glob("_scan.*.so")
    probe = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('eventrouter._scan', {str(built)!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(module.scan_body(b'{\"a\":[1e400]}', 2, 1))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "(True, True)"


def test_a_failed_compile_leaves_the_module_out_and_the_build_succeeds(source):
    shutil.rmtree(source / "out", ignore_errors=True)
    shutil.rmtree(source / "tmp", ignore_errors=True)
    result = build(source, CC="false", LDSHARED="false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "eventrouter._scan" in result.stdout + result.stderr  # the warning names it
    assert not list(source.rglob("_scan.*.so"))
