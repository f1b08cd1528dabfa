"""The lock check that `make test` runs (`.ci/lock --check`): uv compiles setup.cfg
again from PyPI's index (so it needs the network) and the check fails, naming the lock,
when setup.cfg asks for something the committed locks do not hold. What the locks pin:
tests/unit/test_lock.py."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.helpers import VENV_BIN
from tests.unit.test_lock import LOCKS, ROOT


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
