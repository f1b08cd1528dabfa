"""The hash-checked locks in requirements/ agree with setup.cfg, and the lock check that
`make test` runs (`.ci/lock --check`) fails when they do not."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import VENV_BIN

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def requirements(value: str) -> list[Requirement]:
    lines = (line.strip() for line in value.splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def pins(lock: str) -> dict[str, Version]:
    """``{name: version}`` of a lock; every pin carries at least one sha256 hash."""
    text = (LOCKS / f"{lock}.txt").read_text()
    found: dict[str, Version] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = PIN.match(block)
        if match:
            assert "--hash=sha256:" in block, f"{lock}.txt: {match.group(1)} has no hash"
            found[canonicalize_name(match.group(1))] = Version(match.group(3))
    assert found, f"{lock}.txt pins nothing"
    return found


def assert_satisfied(wanted: list[Requirement], lock: str) -> None:
    pinned = pins(lock)
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"setup.cfg asks for {requirement}; {lock}.txt has no {name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"setup.cfg asks for {requirement}; {lock}.txt pins {pinned[name]}"
        )


def test_every_runtime_requirement_is_pinned_in_the_runtime_lock():
    assert_satisfied(requirements(setup_cfg()["options"]["install_requires"]), "runtime")


@pytest.mark.parametrize("lock,extras", [("parquet", ["parquet"]), ("test", ["test", "parquet"])])
def test_every_extra_is_pinned_in_its_lock(lock, extras):
    extras_section = setup_cfg()["options.extras_require"]
    wanted = [r for extra in extras for r in requirements(extras_section[extra])]
    assert_satisfied(wanted + requirements(setup_cfg()["options"]["install_requires"]), lock)


@pytest.mark.parametrize("lock", ["build", "parquet", "test"])
def test_a_package_has_one_version_in_every_lock(lock):
    """What the tests ran is what `make run` and the image install."""
    runtime = pins("runtime")
    other = pins(lock)
    differ = {n: (runtime[n], other[n]) for n in runtime.keys() & other.keys()}
    assert {n: v for n, v in differ.items() if v[0] != v[1]} == {}


def test_the_parquet_extra_stays_out_of_the_runtime_lock():
    assert "pyarrow" not in pins("runtime")
    assert "pyarrow" in pins("parquet")


@pytest.mark.slow
def test_the_lock_check_fails_when_setup_cfg_moves_on(tmp_path):
    """`.ci/lock --check` (uv, from PyPI's index) passes on the repository as committed,
    and fails naming the lock when setup.cfg asks for something the lock does not hold."""
    # What the build backend reads to learn the metadata: the config, and each package
    # folder setup.cfg lists (their __init__.py files are enough).
    inits = [
        path.relative_to(ROOT)
        for folder in ("router_core", "admin", "plugins", "sinks", "snippet")
        for path in (ROOT / folder).rglob("__init__.py")
    ]
    for name in ("setup.cfg", "pyproject.toml", "README.md", *inits):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(LOCKS, tmp_path / "requirements")
    (tmp_path / ".ci").mkdir()
    shutil.copy2(ROOT / ".ci" / "lock", tmp_path / ".ci" / "lock")
    env = {**os.environ, "UV": str(VENV_BIN / "uv")}

    def check() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(tmp_path / ".ci" / "lock"), "--check"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    agreed = check()
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert "requirements/ matches setup.cfg" in agreed.stdout

    cfg = tmp_path / "setup.cfg"
    cfg.write_text(cfg.read_text().replace("    tqdm>=4.66\n", "    tqdm>=4.66\n    six>=1.16\n"))
    disagreed = check()
    assert disagreed.returncode == 1, disagreed.stdout + disagreed.stderr
    assert "requirements/runtime.txt (committed)" in disagreed.stdout
    assert "setup.cfg and requirements/ disagree; run `make lock`" in disagreed.stderr
