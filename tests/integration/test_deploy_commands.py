"""The container deployment files, run through the real tools that a container would
run them with: the mounted config (with deploy/.env.example's values) through
``eventrouter config check`` in a subprocess, and the compose copy of the nginx edge
config through Debian's ``nginx -t`` (which `make services` installs). The static checks
of the same files: tests/unit/test_deploy.py.
"""

from __future__ import annotations

import re
import shutil

from tests.cdn_support import make_prefix, nginx_test
from tests.helpers import run_eventrouter
from tests.unit.test_deploy import (  # noqa: F401 - fixtures
    COMPOSE_EDGE_CONF,
    CONFIG,
    compose,
    env_example,
    services,
)

# ruff: noqa: F811 - pytest fixtures are parameters


def test_mounted_config_passes_config_check(services):
    env = env_example()
    # What the api container sees: its environment block, with .env substituted.
    container_env = {}
    for key, value in services["api"]["environment"].items():
        container_env[key] = re.sub(
            r"\$\{([A-Z_][A-Z0-9_]*)(?::[?-][^}]*)?\}", lambda m: env[m.group(1)], str(value)
        )
    for key, value in container_env.items():
        assert "${" not in value, key
    checked = run_eventrouter("config", "check", str(CONFIG), env=container_env)
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "sinks:   postgres (postgres), clickhouse (clickhouse), archive (s3)" in out
    assert "queue:   amqp://eventrouter:***@rabbitmq:5672/eventrouter" in out
    assert "dedup:   redis://:***@redis:6379/1, window 86400s" in out
    assert env["RABBITMQ_PASSWORD"] not in out


def test_compose_edge_config_passes_nginx_t(tmp_path):
    """``nginx -t`` resolves upstream host names, and ``api`` exists only on the compose
    network: the check runs on the copy with ``api`` as 127.0.0.1."""
    text = COMPOSE_EDGE_CONF.read_text().replace("server api:8000", "server 127.0.0.1:8000")
    prefix = make_prefix()
    try:
        conf = prefix / "eventrouter-edge.conf"
        conf.write_text(text)
        checked = nginx_test(conf, prefix)
        assert checked.returncode == 0, checked.stderr
        assert "test is successful" in checked.stderr
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
