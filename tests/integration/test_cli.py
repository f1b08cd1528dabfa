"""The `eventrouter` command line: plugins, config check."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_eventrouter

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

PLUGIN_SETUP = """\
[metadata]
name = eventrouter-webhooky
version = 1.2.3

[options]
py_modules = webhooky_plugin

[options.entry_points]
eventrouter =
    webhooky = webhooky_plugin
"""

PLUGIN_MODULE = '''\
"""A tiny third-party sink package."""
import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink


class WebhookySink(Sink):
    class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        url: str

    def write(self, commands):
        pass


@hookimpl
def eventrouter_sink_types():
    return {"webhooky": WebhookySink}
'''


run = run_eventrouter


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A real distribution with an `eventrouter` entry point, pip-installed into a target dir."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    source.mkdir()
    (source / "setup.cfg").write_text(PLUGIN_SETUP)
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (source / "webhooky_plugin.py").write_text(PLUGIN_MODULE)
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    return site


def test_plugins_lists_builtin_sinks_with_their_distribution():
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["sqlite"]["distribution"] == "eventrouter"
    assert plugins["sqlite"]["sink_types"] == ["sqlite"]
    assert "eventrouter_sink_types" in plugins["sqlite"]["hooks"]


def test_third_party_distribution_is_discovered_by_its_entry_point(plugin_site):
    env = {"PYTHONPATH": str(plugin_site)}
    result = run("plugins", env=env)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("webhooky"))
    assert "eventrouter-webhooky" in line
    assert "1.2.3" in line
    assert "sink types: webhooky" in line

    config = plugin_site.parent / "hook.toml"
    config.write_text('[sinks.hooks]\ntype = "webhooky"\nurl = "http://127.0.0.1:9/x"\n')
    result = run("config", "check", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "hooks (webhooky)" in result.stdout
    # Without the package on the path the same config names the missing type.
    result = run("config", "check", str(config))
    assert result.returncode == 2
    assert "sinks.hooks.type: unknown sink type 'webhooky'" in result.stderr


def test_config_check_accepts_a_valid_file(tmp_path):
    config = tmp_path / "eventrouter.toml"
    config.write_text(
        textwrap.dedent(
            """
            [[sources]]
            name = "web"
            write_key = "${WEB_KEY}"

            [server]
            port = 9000
            trusted_proxies = ["10.0.0.0/8"]

            [sinks.local]
            type = "sqlite"
            url = "sqlite:///data/events.db"
            batch = { max_events = 5000, timeout = "5ms" }
            """
        )
    )
    result = run("config", "check", str(config), env={"WEB_KEY": "secret"})
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK" in result.stdout
    assert "sources: web" in result.stdout
    assert "local (sqlite)" in result.stdout
    assert "limits:  none (no source is rate-limited)" in result.stdout
    assert "privacy: context.ip keep" in result.stdout
    assert "privacy: scrub: drop none; hash none" in result.stdout


def test_config_check_shows_rate_limits_and_privacy(tmp_path):
    config = tmp_path / "eventrouter.toml"
    config.write_text(
        textwrap.dedent(
            """
            [[sources]]
            name = "web"
            write_key = "wk-web"
            ip = "drop"
            rate_limit = { events_per_second = 50, burst = 200 }

            [[sources]]
            name = "ios"
            write_key = "wk-ios"

            [rate_limits]
            default = { events_per_second = 10 }

            [privacy]
            ip = "truncate"
            scrub = { drop = ["properties.password"], hash = ["traits.email"], salt = "s" }
            """
        )
    )
    result = run("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "limits:  web: 50 events/s, burst 200" in out
    assert "limits:  every other source: 10 events/s, burst 10" in out
    assert "limits:  buckets: per process" in out
    assert "privacy: context.ip truncate (web drop)" in out
    assert "privacy: scrub: drop properties.password; hash traits.email" in out
    assert "wk-web" not in out and "salt" not in out  # no secrets printed


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[server]\nport = 'x'\n", {}, "server.port: Expected `int`, got `str`"),
        ("[server]\nprot = 1\n", {}, "server.prot: unknown key"),
        ("[[sources]]\nname = 'web'\n", {}, "sources[0].write_key: required key is missing"),
        (
            "[[sources]]\nname='a'\nwrite_key='${NOPE}'\n",
            {},
            "sources[0].write_key: environment variable NOPE is not set",
        ),
        (
            "[sinks.a]\ntype='sqlite'\nurl='sqlite:///x.db'\nbatch={timeout='fast'}\n",
            {},
            "sinks.a.batch.timeout: 'fast' is not a duration",
        ),
        (
            "[sinks.a]\ntype='sqlite'\nurl='sqlite:///x.db'\nsynchronous='often'\n",
            {},
            "sinks.a.synchronous: Invalid enum value 'often'",
        ),
        ("[sinks.a]\ntype='sqlite'\n", {}, "sinks.a.url: required key is missing"),
        ("[admin]\nstore = 'warehouse'\n", {}, "admin.store: no sink named 'warehouse'"),
        ("[server\n", {}, "invalid TOML"),
        ("[server]\ntrusted_proxies = ['nope']\n", {}, "server.trusted_proxies[0]: 'nope' is not"),
    ],
)
def test_config_check_names_file_and_key(tmp_path, text, env, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run("config", "check", str(config), env=env)
    assert result.returncode == 2
    assert f"{config}: " in result.stderr
    assert expected in result.stderr


def test_config_from_environment_variable_and_missing_file(tmp_path):
    result = run("config", "check", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "missing.toml: cannot read" in result.stderr
