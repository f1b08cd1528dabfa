"""The compiled modules (``eventrouter._scan``, router_core/_scan.c, and
``eventrouter.sinks._native``, sinks/_native.c) are optional: setup.py builds them where
a C compiler is, and a build without one still succeeds, leaving them out (eventrouter.scan
and the ClickHouse sink then run their pure-Python code). Both builds run here, in a
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
    """What ``setup.py build_ext`` reads: setup.py, setup.cfg, the core's and the sinks'
    folders."""
    tree = tmp_path_factory.mktemp("build")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for folder in ("router_core", "sinks"):
        shutil.copytree(
            ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("*.so", "__pycache__")
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


def run_built(path: Path, name: str, call: str) -> str:
    """What ``module.<call>`` prints, the module ``name`` loaded from the built ``path``
    in a fresh interpreter."""
    probe = (
        "import importlib.util; "
        f"spec = importlib.util.spec_from_file_location({name!r}, {str(path)!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        f"print(module.{call})"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return ran.stdout.strip()


def test_the_extension_builds_where_a_compiler_is(source):
    result = build(source)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (source / "out" / "eventrouter").glob("_scan.*.so")
    assert run_built(built, "eventrouter._scan", "scan_body(b'{\"a\":[1e400]}', 2, 1)") == (
        "(True, True)"
    )
    (native,) = (source / "out" / "eventrouter" / "sinks").glob("_native.*.so")
    ran = run_built(native, "eventrouter.sinks._native", "string_column([b'ab', b'']).hex()")
    assert ran == "0261620" + "0"  # length 2, "ab", then length 0


def test_a_failed_compile_leaves_the_module_out_and_the_build_succeeds(source):
    shutil.rmtree(source / "out", ignore_errors=True)
    shutil.rmtree(source / "tmp", ignore_errors=True)
    result = build(source, CC="false", LDSHARED="false")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("eventrouter._scan", "eventrouter.sinks._native"):
        assert name in result.stdout + result.stderr  # the warning names each
    assert not list(source.rglob("*.so"))
