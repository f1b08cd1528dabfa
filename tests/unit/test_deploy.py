"""The container deployment files, checked statically: ``deploy/Dockerfile``,
``deploy/docker-compose.yml``, ``deploy/eventrouter.toml``, ``deploy/.env.example``, the
compose copy of the nginx edge config, and ``.dockerignore``.

No Docker engine runs on this machine (nor in CI), so nothing here builds an image or
starts a container. What can be checked without one is: every image is pinned, every
stateful service keeps its data in a named volume, every eventrouter command parses with
eventrouter's real CLI parser, every ``EVENTROUTER_*`` variable is a documented one.
The mounted config through the real ``eventrouter config check``, and the mounted nginx
config through the real ``nginx -t``: tests/integration/test_deploy_commands.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from eventrouter.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
CONFIG = DEPLOY / "eventrouter.toml"
ENV_EXAMPLE = DEPLOY / ".env.example"
COMPOSE_EDGE_CONF = DEPLOY / "nginx-compose" / "eventrouter-edge.conf"
EDGE_CONF = DEPLOY / "nginx" / "eventrouter-edge.conf"

#: The services that run the eventrouter image.
EVENTROUTER_SERVICES = {"api", "worker", "migrate"}
#: Services that keep state, and the directory of it inside their container.
STATEFUL = {
    "postgres": "/var/lib/postgresql/data",
    "clickhouse": "/var/lib/clickhouse",
    "rabbitmq": "/var/lib/rabbitmq",
    "redis": "/data",
    "minio": "/data",
    "api": "/var/lib/eventrouter",
    "worker": "/var/lib/eventrouter",
}
#: The only differences between the shipped edge config and the compose copy.
EDGE_SUBSTITUTIONS = [
    (
        "server 127.0.0.1:8000 max_fails=3 fail_timeout=10s;",
        "server api:8000 max_fails=3 fail_timeout=10s;",
    ),
    ("error_log logs/error.log warn;", "error_log /dev/stderr warn;"),
    ("access_log logs/access.log eventrouter_edge;", "access_log /dev/stdout eventrouter_edge;"),
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def documented_env_vars() -> set[str]:
    """The names in docs/configuration.md's table of environment variables."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))


def as_argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


# -- compose ---------------------------------------------------------------------------


def test_compose_has_every_service(services):
    expected = {
        "api",
        "worker",
        "migrate",
        "rabbitmq",
        "postgres",
        "clickhouse",
        "redis",
        "minio",
        "minio-setup",
        "nginx",
    }
    assert expected <= set(services)


def test_every_image_is_pinned_to_a_tag(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
    pinned = {name: services[name]["image"] for name in services}
    assert pinned["rabbitmq"].startswith("rabbitmq:3.13")
    assert pinned["rabbitmq"].endswith("-management")
    assert pinned["postgres"].startswith("postgres:15")
    assert pinned["redis"].startswith("redis:7")
    assert pinned["nginx"].startswith("nginx:1.27")
    assert pinned["clickhouse"].startswith("clickhouse/clickhouse-server:")
    assert re.match(r"^minio/minio:RELEASE\.", pinned["minio"])
    assert re.match(r"^minio/mc:RELEASE\.", pinned["minio-setup"])


def test_eventrouter_services_build_the_image(services):
    for name in EVENTROUTER_SERVICES:
        build = services[name]["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_stateful_services_use_named_volumes(compose, services, name):
    declared = set(compose.get("volumes") or {})
    mounts = {}
    for volume in services[name].get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    source = mounts.get(STATEFUL[name])
    assert source, f"{name}: nothing mounted at {STATEFUL[name]}"
    assert not source.startswith((".", "/")), f"{name}: {source} is a bind mount"
    assert source in declared, f"{name}: volume {source!r} not declared at top level"


def test_every_service_restarts_and_has_a_healthcheck(services):
    one_shots = {"migrate", "minio-setup"}
    for name, service in services.items():
        if name in one_shots:
            assert service["restart"] == "no"
            continue
        assert service["restart"] in {"unless-stopped", "always"}, name
        if name != "api":  # api: the image's HEALTHCHECK on /health
            assert service["healthcheck"]["test"], name


def test_depends_on_names_defined_services(services):
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency!r}"
            assert condition["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition["condition"] == "service_healthy":
                has_check = "healthcheck" in services[dependency]
                assert has_check or dependency == "api", f"{dependency} has no healthcheck"
    for name in ("api", "worker"):
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", sorted(EVENTROUTER_SERVICES))
def test_eventrouter_commands_parse_with_the_cli(services, name):
    argv = as_argv(services[name]["command"])
    args = build_parser().parse_args(argv)
    assert args.command == {"api": "serve", "worker": "worker", "migrate": "migrate"}[name]
    if name == "api":
        assert args.host == "0.0.0.0"
    if name == "worker":
        assert (args.metrics_port, args.metrics_host) == (9101, "0.0.0.0")


def test_only_documented_eventrouter_env_vars(services):
    documented = documented_env_vars()
    assert {"EVENTROUTER_CONFIG", "EVENTROUTER_ADMIN_TOKEN", "EVENTROUTER_PORT"} <= documented
    used = set(re.findall(r"EVENTROUTER_[A-Z_]+", COMPOSE_FILE.read_text()))
    used |= set(re.findall(r"EVENTROUTER_[A-Z_]+", DOCKERFILE.read_text()))
    used |= {n for n in env_example() if n.startswith("EVENTROUTER_")}
    assert used, "no EVENTROUTER_* variable used"
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    for name in EVENTROUTER_SERVICES:
        env = services[name]["environment"]
        assert env["EVENTROUTER_CONFIG"] == "/etc/eventrouter/eventrouter.toml"
        mounted = [v for v in services[name]["volumes"] if v.startswith("./eventrouter.toml:")]
        assert mounted == ["./eventrouter.toml:/etc/eventrouter/eventrouter.toml:ro"]


def test_secrets_come_from_the_env_file(services):
    """Every ``${VAR...}`` in the compose file is in .env.example, and the secrets use
    ``:?`` so that compose refuses to start without them."""
    lines = COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    example = env_example()
    references = re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:?[?-])?", text)
    for name, operator in references:
        assert name in example, f"${{{name}}} is not in deploy/.env.example"
        if "PASSWORD" in name or "TOKEN" in name or "WRITE_KEY" in name:
            assert operator == ":?", f"${{{name}}} should be ${{{name}:?...}}"
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "TOKEN" in key:
                assert str(value).startswith("${"), f"{key} is written in the file"


def test_config_points_at_compose_services(services):
    import tomllib

    config = tomllib.loads(CONFIG.read_text())
    hosts = {
        re.match(r"^[a-z+]+://(?:[^@/]*@)?([^:/]+)", url).group(1)
        for url in [
            config["queue"]["url"],
            config["dedup"]["url"],
            *(s.get("url") or s.get("endpoint_url") for s in config["sinks"].values()),
        ]
    }
    assert hosts == {"rabbitmq", "redis", "postgres", "clickhouse", "minio"}
    assert hosts <= set(services)
    assert config["admin"]["store"] in config["sinks"]
    # the nginx edge's fixed address is the one trusted proxy
    nginx_address = services["nginx"]["networks"]["eventrouter"]["ipv4_address"]
    assert config["server"]["trusted_proxies"] == [nginx_address]


# -- nginx -----------------------------------------------------------------------------


def test_compose_edge_config_is_the_shipped_one_with_its_upstream_changed(services):
    mounted = [v.split(":")[0] for v in services["nginx"]["volumes"] if v.endswith(".conf:ro")]
    assert mounted == ["./nginx-compose/eventrouter-edge.conf"]
    assert (COMPOSE_FILE.parent / mounted[0]).resolve() == COMPOSE_EDGE_CONF
    expected = EDGE_CONF.read_text()
    for shipped, compose_line in EDGE_SUBSTITUTIONS:
        assert expected.count(shipped) == 1, f"{EDGE_CONF} changed: {shipped!r}"
        expected = expected.replace(shipped, compose_line)
    copy = COMPOSE_EDGE_CONF.read_text()
    body = "\n".join(line for line in copy.splitlines() if not line.startswith("# "))
    # The copy is the shipped file, behind a header of comments.
    assert copy.endswith(expected), "deploy/nginx-compose/eventrouter-edge.conf is stale"
    assert "api:8000" in body


# -- Dockerfile and .dockerignore ------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_and_pinned():
    froms = [args.split()[0] for op, args in dockerfile_instructions() if op == "FROM"]
    assert len(froms) >= 2
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), image
    assert froms[-1] == "python:3.11-slim-bookworm"
    runs = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    assert "pip wheel" in runs


def test_dockerfile_installs_only_from_the_hash_checked_locks():
    """The image gets the set CI tested: every pip install is a lock of requirements/
    with --require-hashes, or eventrouter's own wheel with --no-deps."""
    runs = [args for op, args in dockerfile_instructions() if op == "RUN"]
    installs = [part.strip() for run in runs for part in run.split("&&") if "pip install" in part]
    assert len(installs) >= 3, installs
    for command in installs:
        locked = "--require-hashes" in command and re.search(r'-r "?requirements/', command)
        own_wheel = "--no-deps" in command and "eventrouter-*.whl" in command
        assert locked or own_wheel, command
    lock_args = [args for op, args in dockerfile_instructions() if op == "ARG"]
    assert "LOCK=runtime" in lock_args
    for lock in ("runtime", "parquet", "build"):  # the default, --build-arg LOCK=parquet
        assert (ROOT / "requirements" / f"{lock}.txt").is_file(), lock


def test_dockerfile_runs_as_a_non_root_user():
    users = [args for op, args in final_stage() if op == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_runtime_settings():
    stage = final_stage()
    ops = {op for op, _ in stage}
    assert {"WORKDIR", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "ENV"} <= ops
    assert [args for op, args in stage if op == "EXPOSE"] == ["8000"]
    env = " ".join(args for op, args in stage if op == "ENV")
    for setting in (
        "EVENTROUTER_CONFIG=/etc/eventrouter/eventrouter.toml",
        "EVENTROUTER_DATA_DIR=/var/lib/eventrouter",
        "PYTHONUNBUFFERED=1",
    ):
        assert setting in env
    healthcheck = next(args for op, args in stage if op == "HEALTHCHECK")
    assert "/health" in healthcheck and "python" in healthcheck
    assert "curl" not in healthcheck


def test_dockerfile_entrypoint_and_cmd_parse_with_the_cli():
    import json

    stage = final_stage()
    entrypoint = json.loads(next(args for op, args in stage if op == "ENTRYPOINT"))
    cmd = json.loads(next(args for op, args in stage if op == "CMD"))
    assert entrypoint == ["eventrouter"]
    assert cmd == ["serve", "--host", "0.0.0.0"]
    args = build_parser().parse_args(cmd)
    assert (args.command, args.host) == ("serve", "0.0.0.0")


def test_dockerignore_keeps_local_state_out():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", "tests/artifacts", "bench/results", "eventrouter-data"):
        assert needed in patterns, needed
    # what the build needs stays in the context
    for kept in ("README.md", "setup.cfg", "pyproject.toml", "router_core"):
        assert kept not in patterns
