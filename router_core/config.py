"""Configuration: one TOML file, validated at start with errors naming the file and key.

Loading is two pure steps after reading the file: :func:`parse` checks the shared
schema below; :meth:`Bus.build_sinks <eventrouter.bus.bus.Bus>` checks each sink's own keys
against its type's ``Options`` (which needs the plugins). Neither does any I/O beyond
reading the file. String values may reference environment variables as ``${NAME}`` or
``${NAME:-default}`` (the default when NAME is unset or empty; ``$$`` is a literal ``$``),
so secrets stay out of the file.
The reference for every key is ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from eventrouter.columns import JSON_COLUMNS

ENV_CONFIG = "EVENTROUTER_CONFIG"
ENV_ADMIN_TOKEN = "EVENTROUTER_ADMIN_TOKEN"
ENV_DATA_DIR = "EVENTROUTER_DATA_DIR"
ENV_PORT = "EVENTROUTER_PORT"
ENV_SCRUB_SALT = "EVENTROUTER_SCRUB_SALT"
DEFAULT_DATA_DIR = "./eventrouter-data"
#: The shortest admin token accepted (characters). ``secrets.token_urlsafe(24)``, which
#: ``serve`` generates, is 32.
MIN_ADMIN_TOKEN_LENGTH = 24


class ConfigError(Exception):
    """A configuration problem, naming the file and the key."""

    def __init__(self, file: str | None, key: str, message: str) -> None:
        self.file = file or "<defaults>"
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


T = TypeVar("T")


class Duration(float):
    """Seconds; written as a number or a string with a unit: ``500ms``, ``1s``, ``5m``, ``24h``."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Duration:
    if isinstance(value, bool):
        raise TypeError("expected a duration such as 500ms, 1s, 5m or 24h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as 500ms, 1s, 5m or 24h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return Duration(seconds)


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Duration:
        return parse_duration(obj)
    raise NotImplementedError


PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
SinkName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")]


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RateLimit(_Strict):
    """A token bucket: ``events_per_second`` refill, ``burst`` capacity (in events)."""

    events_per_second: Annotated[float, msgspec.Meta(gt=0)]
    #: Default: one second's worth (at least 1).
    burst: PositiveInt | None = None

    @property
    def capacity(self) -> int:
        return self.burst or max(1, math.ceil(self.events_per_second))


IPMode = Literal["keep", "truncate", "drop"]


class SourceConfig(_Strict):
    """A source: who may send, identified by its writeKey."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    write_key: Annotated[str, msgspec.Meta(min_length=1)]
    #: Events this source may send; default: ``[rate_limits] default`` (or unlimited).
    rate_limit: RateLimit | None = None
    #: ``context.ip`` of this source's events: ``keep``, ``truncate`` (IPv4 /24, IPv6
    #: /48) or ``drop``; default: ``[privacy] ip``.
    ip: IPMode | None = None


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    #: gunicorn worker processes; default: the number of CPUs.
    workers: PositiveInt | None = None
    #: Peers (addresses or CIDR networks) whose X-Forwarded-For is believed.
    trusted_proxies: list[str] = []
    #: Origins allowed by CORS; ``["*"]`` allows any.
    cors_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: How long a request waits for its acknowledging sinks before answering 503.
    dispatch_timeout: Duration = Duration(10.0)
    #: How long a fire-and-forget observer may take per batch before it is counted as hung.
    observer_timeout: Duration = Duration(30.0)
    #: ``text`` for people, ``json`` (one object per line, with request ids) for log
    #: pipelines; EVENTROUTER_LOG_FORMAT overrides it.
    log_format: Literal["text", "json"] = "text"
    #: Ingestion bodies nesting objects and arrays deeper than this answer 400 too_deep.
    #: At most 512: the JSON decoder recurses once per level, and Python's recursion
    #: limit is about 1000.
    max_json_depth: Annotated[int, msgspec.Meta(ge=1, le=512)] = 64
    #: Ingestion bodies with an object of more keys than this answer 400 too_many_keys.
    max_json_keys: PositiveInt = 10_000
    #: Who sees ``/health``'s components: ``token`` (the admin token or a dashboard
    #: session; everyone else gets the status only) or ``public``.
    health_details: Literal["token", "public"] = "token"
    #: ``/metrics``: ``public``, ``token`` (the admin token as a bearer) or ``off``.
    metrics: Literal["public", "token", "off"] = "public"
    #: ``host:port``: serve ``/metrics`` on this listener only (``eventrouter serve``
    #: binds it beside the main one); the main port then answers it 404.
    metrics_bind: str | None = None
    #: Answer ``POST`` to the ingestion routes from the HTTP protocol, without the ASGI
    #: and Falcon layers (:mod:`eventrouter.edge.fastpath`; the same checks and
    #: responses). Taken only while the app has no plugin middleware or routes of its own
    #: over those paths; ``false`` sends every request through Falcon.
    fast_path: bool = True


class FailureLimit(_Strict):
    """A token bucket of failed sign-ins: ``burst`` failures at once, then
    ``per_minute`` more each minute."""

    burst: PositiveInt
    per_minute: Annotated[float, msgspec.Meta(gt=0)]

    def as_rate_limit(self) -> RateLimit:
        return RateLimit(events_per_second=self.per_minute / 60.0, burst=self.burst)


class ThrottleConfig(_Strict):
    """``[admin.throttle]``: failed sign-ins and wrong bearer tokens, per client address
    and in total, before further attempts answer 429."""

    client: FailureLimit = msgspec.field(
        default_factory=lambda: FailureLimit(burst=10, per_minute=5)
    )
    global_: FailureLimit = msgspec.field(
        name="global", default_factory=lambda: FailureLimit(burst=100, per_minute=60)
    )
    #: ``redis://host:6379/db``: buckets shared by every process and machine. Default:
    #: ``[rate_limits] url``, else ``[dedup] url``, else per process.
    url: str | None = None
    #: Prefix of the Redis keys.
    prefix: Annotated[str, msgspec.Meta(min_length=1)] = "eventrouter:throttle"


class AdminConfig(_Strict):
    #: Bearer token for /api/v1 and the dashboard; EVENTROUTER_ADMIN_TOKEN overrides it.
    token: str | None = None
    #: The sink whose store the query API and dashboard read; default: the first SQL sink.
    store: str | None = None
    #: Directories searched before the built-in templates (operator overrides).
    templates: list[str] = []
    #: ``Secure`` on the dashboard's cookies: ``auto`` (when the browser came over https,
    #: directly or per a trusted proxy's X-Forwarded-Proto), ``always`` or ``never``.
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    throttle: ThrottleConfig = msgspec.field(default_factory=ThrottleConfig)


class BatchConfig(_Strict):
    """``sinks.NAME.batch``: how pending events are cut into writes (group commit,
    ``eventrouter.bus.batcher``): a write is made as soon as one limit is reached."""

    #: Most events in one write (a request's events are never split, so one request
    #: larger than this is a write of its own).
    max_events: PositiveInt = 10_000
    #: Most bytes in one write, counted as the MessagePack encoding of the commands (what
    #: a broker message carries); unset: no limit, and nothing is measured.
    max_bytes: PositiveInt | None = None
    #: Longest the oldest pending event waits for more before the write is made.
    timeout: Duration = Duration(0.0)


class BufferConfig(_Strict):
    """``sinks.NAME.buffer``: the most a sink may hold accepted but not yet written
    (``eventrouter.bus.buffer``)."""

    #: Where pending events wait: in the process's memory (the only kind).
    type: Literal["memory"] = "memory"
    max_events: PositiveInt = 100_000
    #: Most bytes pending (MessagePack size of the commands); unset: no byte limit.
    max_bytes: PositiveInt | None = None
    #: When a batch does not fit: ``block`` (the request waits for room, up to
    #: ``server.dispatch_timeout``) or ``reject`` (503 with Retry-After at once). An
    #: observer (``acknowledgements = false``) never holds a request: it skips the batch.
    when_full: Literal["block", "reject"] = "block"


class RetryConfig(_Strict):
    """``sinks.NAME.retry``: how a failed write is tried again (``eventrouter.bus.retry``)."""

    #: Tries per write, the first included.
    attempts: PositiveInt = 5
    #: The pause after the first failure; it doubles after each further one.
    initial_backoff: Duration = Duration(0.1)
    #: The longest single pause.
    max_backoff: Duration = Duration(10.0)
    #: No retry starts whose pause would end more than this after the first failure.
    max_duration: Duration = Duration(30.0)
    #: ``full``: each pause is drawn between 0 and its exponential value; ``decorrelated``:
    #: between ``initial_backoff`` and three times the previous pause; ``none``: exactly
    #: the exponential value.
    jitter: Literal["full", "decorrelated", "none"] = "full"


class SinkConfig(msgspec.Struct, kw_only=True):
    """The keys every sink shares; the rest of its table is its type's own ``Options``."""

    type: Annotated[str, msgspec.Meta(min_length=1)]
    #: When true the client's 200 waits for this sink; its failure answers 503.
    acknowledgements: bool = True
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    buffer: BufferConfig = msgspec.field(default_factory=BufferConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    options: dict[str, Any] = {}


SHARED_SINK_KEYS = frozenset({"type", "acknowledgements", "batch", "buffer", "retry"})


QUEUE_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "kafka")
#: librdkafka properties eventrouter sets itself: its promises rest on them.
KAFKA_RESERVED = frozenset(
    {"bootstrap.servers", "acks", "enable.idempotence", "enable.auto.commit", "group.id"}
)


class KafkaConfig(_Strict):
    """``[queue.kafka]``: topics, TLS and SASL of a ``kafka://`` queue (docs/queue.md)."""

    #: Partitions of the events topic (created if missing); the parallelism of a sink.
    partitions: PositiveInt = 6
    #: Replicas of each topic eventrouter creates; unset: the broker's default.
    replication_factor: PositiveInt | None = None
    #: How long the events topic keeps events (``eventrouter replay --from`` reaches back
    #: this far); dead-letter topics keep theirs until replayed (no time limit).
    retention: Duration = Duration(7 * 86400.0)
    #: Create missing topics (off where the operator creates them, e.g. MSK with ACLs).
    create_topics: bool = True
    #: Most bytes one record's value holds: below the broker's ``message.max.bytes``
    #: (1 MB by default on Kafka, Redpanda and MSK), or a large group is refused.
    max_record_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 900_000
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    #: PEM files: the CA that signed the brokers' certificates, and a client certificate.
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    #: Extra librdkafka properties for the producer and the consumers (not those in
    #: ``KAFKA_RESERVED``): ``{ "max.poll.interval.ms" = 600000 }``.
    producer: dict[str, str | int | float | bool] = {}
    consumer: dict[str, str | int | float | bool] = {}


class SpoolConfig(_Strict):
    """``[queue.spool]``: where the edge keeps accepted events while the broker is
    unreachable (``router_core/queue/spool.py``)."""

    #: Off: while the broker is unreachable, requests answer 503 instead.
    enabled: bool = True
    #: Default: ``$EVENTROUTER_DATA_DIR/spool``. One directory per server process below it.
    dir: str | None = None
    #: Most bytes one server process spools; past it, requests answer 503 + Retry-After.
    max_bytes: PositiveInt = 256 * 1024 * 1024

    def root(self) -> Path:
        data_dir = os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
        return Path(self.dir) if self.dir else Path(data_dir) / "spool"


QueueURL = Annotated[str, msgspec.Meta(min_length=1)]


class QueueConfig(_Strict):
    """``[queue]``: the broker between the edge and the workers (absent = embedded mode)."""

    #: ``amqp://user:pass@host:5672/vhost`` (RabbitMQ) or ``redis://host:6379/db``; for a
    #: RabbitMQ cluster, a list of its nodes' URLs (:attr:`urls`), tried in turn.
    url: QueueURL | Annotated[list[QueueURL], msgspec.Meta(min_length=1)]
    #: With several URLs, the order a new connection tries them in: ``round-robin`` (the
    #: node that answered last first, then the next ones in the list) or ``shuffle`` (a
    #: fresh random order each time, spreading connections over the nodes).
    failover_strategy: Literal["round-robin", "shuffle"] = "round-robin"
    #: Prefix of every exchange and queue name (several deployments can share a broker).
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = "eventrouter"
    #: Publisher threads per server process, each with its own connection and channel.
    publishers: PositiveInt = 1
    #: Most events one AMQP message carries; a group commit larger than this is split.
    max_events_per_message: PositiveInt = 1000
    #: Extra time a publisher waits for more events before publishing (0: publish what
    #: is queued now; the confirm round trip itself gathers the next group).
    linger: Duration = Duration(0.0)
    #: How long the edge waits for the broker's confirm before answering 503.
    confirm_timeout: Duration = Duration(5.0)
    #: TCP connect timeout to the broker (edge and worker).
    connect_timeout: Duration = Duration(2.0)
    #: Worker: unacknowledged messages the broker hands one consumer at a time.
    prefetch: PositiveInt = 64
    #: Worker: how long one sink write may take before it counts as failed.
    write_timeout: Duration = Duration(60.0)
    #: RabbitMQ queue type of the per-sink queues (``quorum`` replicates across a cluster).
    queue_type: Literal["classic", "quorum"] = "classic"
    #: Redis transport only: a message left unacknowledged this long (its worker died) is
    #: delivered again. Keep it above the longest a worker may hold a batch (its writes,
    #: up to ``write_timeout`` each, and retries), or a slow batch is delivered twice.
    visibility_timeout: Duration = Duration(300.0)
    #: The edge's local spool while the broker is unreachable.
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    #: ``kafka://`` only: topics, TLS, SASL.
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)

    @property
    def urls(self) -> list[str]:
        """The broker's URLs: ``url`` as a list (one URL, or each node of a cluster)."""
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @property
    def transport(self) -> str:
        """``amqp``, ``redis`` or ``kafka``."""
        return _transport(self.urls[0])


def _transport(url: str) -> str:
    scheme = url.split(":", 1)[0]
    if scheme == "kafka":
        return "kafka"
    return "redis" if scheme.startswith("redis") else "amqp"


def kafka_servers(url: str) -> list[str]:
    """The ``host:port`` list of a ``kafka://host:port[,host:port]`` URL (no I/O).

    :raises ValueError: naming what is wrong with it.
    """
    rest = url.split("://", 1)[1].rstrip("/")
    if "@" in rest:
        raise ValueError("credentials go in [queue.kafka] sasl_username and sasl_password")
    if "/" in rest or "?" in rest:
        raise ValueError("kafka:// takes host:port[,host:port] and nothing after it")
    servers = [s.strip() for s in rest.split(",")]
    for number, server in enumerate(servers, 1):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            # Not quoted: a mistyped URL may hold a secret where the port should be.
            raise ValueError(f"server {number} of the list is not host:port")
    return servers


def require_kafka_queue(config: Config) -> None:
    """What reads Kafka's retained log (``eventrouter replay --from``) needs: a kafka://
    ``[queue]``. No I/O, and nothing of confluent-kafka imported.

    :raises ConfigError: naming ``queue.url`` and why other brokers cannot."""
    if config.queue is None or config.queue.transport != "kafka":
        raise ConfigError(
            config.path,
            "queue.url",
            "replay --from reads the retained log of a kafka:// queue; RabbitMQ and Redis "
            "remove a message once a worker took it (see docs/queue.md)",
        )


def check_kafka(queue: QueueConfig, file: str | None) -> None:
    """``[queue]`` with a kafka:// URL: the URL and ``[queue.kafka]`` agree (no I/O)."""
    try:
        kafka_servers(queue.url)
    except ValueError as exc:
        raise ConfigError(file, "queue.url", str(exc)) from None
    kafka = queue.kafka
    for table in ("producer", "consumer"):
        for key in getattr(kafka, table):
            if key in KAFKA_RESERVED:
                raise ConfigError(
                    file, f"queue.kafka.{table}.{key}", "set by eventrouter; it cannot be changed"
                )
    if kafka.security_protocol.startswith("sasl"):
        for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
            if not getattr(kafka, key):
                raise ConfigError(
                    file, f"queue.kafka.{key}", f"required with {kafka.security_protocol}"
                )
    elif kafka.sasl_mechanism or kafka.sasl_username:
        raise ConfigError(
            file,
            "queue.kafka.security_protocol",
            "SASL credentials are set: use sasl_ssl (or sasl_plaintext)",
        )


class DedupConfig(_Strict):
    """``[dedup]``: drop a ``messageId`` already stored within ``window`` (Redis)."""

    #: ``redis://host:6379/db``.
    url: Annotated[str, msgspec.Meta(min_length=1)]
    #: How long a stored messageId is remembered.
    window: Duration = Duration(86400.0)
    #: Prefix of the Redis keys.
    prefix: Annotated[str, msgspec.Meta(min_length=1)] = "eventrouter:dedup"
    #: Redis connect and read timeout; past it, dedup is skipped for the batch (the
    #: stores' own idempotency still applies) rather than holding events up.
    timeout: Duration = Duration(0.5)


class RateLimitsConfig(_Strict):
    """``[rate_limits]``: where the token buckets live, and the limit of sources without
    their own ``rate_limit`` (open ingestion's ``default`` source too)."""

    #: ``redis://host:6379/db``: one bucket per source shared by every process and
    #: machine. Default: ``[dedup] url`` when dedup is configured, else per process.
    url: str | None = None
    default: RateLimit | None = None
    #: Prefix of the Redis keys.
    prefix: Annotated[str, msgspec.Meta(min_length=1)] = "eventrouter:ratelimit"
    #: Redis connect and read timeout; past it the request is let through (fail open).
    timeout: Duration = Duration(0.25)


class PluginsConfig(_Strict):
    #: Plugin names (as `eventrouter plugins` lists them) not to load.
    disabled: list[str] = []
    #: Where pipeline stages run, by plugin name, lower first: ``{ "scrub:paths" = 50 }``
    #: overrides that plugin's own ``stage_order`` (docs/plugins.md, "Pipeline stages").
    stage_order: dict[str, int] = {}
    #: A plugin's own keys, by plugin name (``[plugins.options.NAME]``), for a plugin
    #: that is not a sink (a pipeline stage): it converts them into its ``Options``
    #: Struct with :func:`plugin_options` when it starts.
    options: dict[str, dict[str, Any]] = {}


class ScrubConfig(_Strict):
    """``[privacy.scrub]``: JSON paths removed or hashed on the edge, before any sink."""

    #: Paths removed: ``properties.password``, ``context.traits.*``.
    drop: list[str] = []
    #: Paths whose value is replaced by the hex HMAC-SHA256 of it, keyed by ``salt``.
    hash: list[str] = []
    #: The hash key; EVENTROUTER_SCRUB_SALT overrides it. Required with ``hash`` paths.
    salt: str | None = None


class PrivacyConfig(_Strict):
    """``[privacy]``: IP anonymisation, PII scrubbing, suppression (docs/privacy.md)."""

    #: ``context.ip`` of every source without its own ``ip`` (and of open ingestion).
    ip: IPMode = "keep"
    #: How often each process re-reads the suppression list from the admin store.
    refresh: Duration = Duration(5.0)
    scrub: ScrubConfig = msgspec.field(default_factory=ScrubConfig)


class Config(_Strict):
    sources: list[SourceConfig] = []
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    sinks: dict[SinkName, SinkConfig] = {}
    queue: QueueConfig | None = None
    dedup: DedupConfig | None = None
    rate_limits: RateLimitsConfig | None = None
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)
    #: A directory whose ``*.py`` files are loaded as plugins, each under its file's
    #: name (docs/plugins.md, "Single-file plugins"); relative to the config file's
    #: directory. ``--plugins-dir`` on ``serve`` and ``worker`` sets it too.
    plugins_dir: str | None = None
    #: The file this came from (not a TOML key).
    path: str | None = None


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, key: str, file: str | None, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if default is not None and not value:  # shell ``:-``: unset or empty
                return default
            if value is None:
                raise ConfigError(file, key, f"environment variable {name} is not set")
            return value

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else k, file, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]", file, env) for i, v in enumerate(value)]
    return value


_AT = re.compile(r"\s*- at `\$\.?([^`]*)`$")


def convert(obj: Any, type_: Any, file: str | None, prefix: str = "") -> Any:
    """``msgspec.convert`` with errors turned into :class:`ConfigError` naming the key."""
    try:
        return msgspec.convert(obj, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.search(text)
        path = match.group(1) if match else ""
        message = _AT.sub("", text)
        if missing := re.match(r"Object missing required field `([^`]+)`", message):
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
            message = "required key is missing"
        elif unknown := re.match(r"Object contains unknown field `([^`]+)`", message):
            path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
            message = "unknown key"
        key = ".".join(p for p in (prefix, path) if p)
        raise ConfigError(file, key, message) from None


def plugin_options(config: Config, name: str, options_type: type[T]) -> T:
    """``[plugins.options.NAME]`` of ``config`` as ``options_type`` (a msgspec Struct;
    an absent table gives its defaults). A bad key raises :class:`ConfigError` naming
    ``plugins.options.NAME.KEY``; call it from ``eventrouter_startup``, where the
    failure stops the start naming the plugin (docs/plugins.md, "Stage options")."""
    return convert(
        config.plugins.options.get(name, {}), options_type, config.path, f"plugins.options.{name}"
    )


def default_sinks(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    data_dir = env.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return {"local": {"type": "sqlite", "url": f"sqlite:///{data_dir}/events.db"}}


def _env_port(value: str, file: str | None) -> int:
    """``EVENTROUTER_PORT`` as a port number, 0-65535."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(file, ENV_PORT, f"{value!r} is not a port number (0-65535)")
    return port


#: The JSON columns a ``[privacy.scrub]`` path may start with.
SCRUB_COLUMNS = JSON_COLUMNS


def split_scrub_path(path: str) -> tuple[str, tuple[str, ...]]:
    """``"context.traits.email"`` → ``("context", ("traits", "email"))``.

    :raises ValueError: not a column followed by at least one non-empty key."""
    column, *segments = path.split(".")
    if column not in SCRUB_COLUMNS or not segments or not all(segments):
        raise ValueError(
            f"{path!r} is not a path such as properties.email, traits.phone or "
            "context.traits.email (properties, traits or context, then keys or *)"
        )
    return column, tuple(segments)


def _check_scrub(scrub: ScrubConfig, file: str | None, env: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for action in ("drop", "hash"):
        for i, path in enumerate(getattr(scrub, action)):
            key = f"privacy.scrub.{action}[{i}]"
            try:
                split_scrub_path(path)
            except ValueError as exc:
                raise ConfigError(file, key, str(exc)) from None
            if path in seen:
                raise ConfigError(file, key, f"{path!r} is listed in {seen[path]} already")
            seen[path] = f"privacy.scrub.{action}"
    if salt := env.get(ENV_SCRUB_SALT):
        scrub.salt = salt
    if scrub.hash and not scrub.salt:
        raise ConfigError(
            file,
            "privacy.scrub.salt",
            f"required with privacy.scrub.hash (or set {ENV_SCRUB_SALT}): an unsalted "
            "hash of an email address or phone number is reversed by trying them all",
        )


def _check_buffer(table: Any, file: str | None, key: str) -> None:
    """Clear errors for the buffer settings of earlier releases, before the schema's."""
    if not isinstance(table, dict):
        return
    kind = table.get("type", "memory")
    if kind != "memory":
        raise ConfigError(file, f"{key}.type", f'{kind!r} is not a buffer type (only "memory")')
    if table.get("when_full") == "drop_newest":
        raise ConfigError(
            file,
            f"{key}.when_full",
            '"drop_newest" is not supported: use "block" (the request waits for room) or '
            '"reject" (503 at once); a sink with acknowledgements = false skips batches '
            "while its buffer is full either way",
        )


def parse(
    raw: dict[str, Any], file: str | None = None, env: dict[str, str] | None = None
) -> Config:
    """Validate a decoded TOML document. Pure: no I/O."""
    env = dict(os.environ) if env is None else env
    if "path" in raw:  # ``Config.path`` records the file; it is not a key of it
        raise ConfigError(file, "path", "unknown key")
    raw = _interpolate(raw, "", file, env)
    sinks_raw = raw.pop("sinks", None)
    if sinks_raw is None or sinks_raw == {}:
        sinks_raw = default_sinks(env)
    if not isinstance(sinks_raw, dict):
        raise ConfigError(file, "sinks", "expected a table of [sinks.NAME] tables")
    config = convert(raw, Config, file)
    sinks: dict[str, SinkConfig] = {}
    for name, table in sinks_raw.items():
        convert(name, SinkName, file, f"sinks.{name}")
        if not isinstance(table, dict):
            raise ConfigError(file, f"sinks.{name}", "expected a table")
        shared = {k: v for k, v in table.items() if k in SHARED_SINK_KEYS}
        _check_buffer(shared.get("buffer"), file, f"sinks.{name}.buffer")
        sink = convert(shared, SinkConfig, file, f"sinks.{name}")
        if sink.retry.max_backoff < sink.retry.initial_backoff:
            raise ConfigError(
                file,
                f"sinks.{name}.retry.max_backoff",
                f"{sink.retry.max_backoff:g}s is shorter than initial_backoff "
                f"({sink.retry.initial_backoff:g}s)",
            )
        sink.options = {k: v for k, v in table.items() if k not in SHARED_SINK_KEYS}
        sinks[name] = sink
    config.sinks = sinks
    config.path = file
    if config.plugins_dir and file and not os.path.isabs(config.plugins_dir):
        config.plugins_dir = os.path.join(
            os.path.dirname(os.path.abspath(file)), config.plugins_dir
        )
    names = [s.name for s in config.sources]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(file, f"sources[{i}].name", f"duplicate source name {name!r}")
    keys = [s.write_key for s in config.sources]
    for i, key in enumerate(keys):
        if keys.index(key) != i:
            raise ConfigError(file, f"sources[{i}].write_key", "duplicate write_key")
    if config.admin.store is not None and config.admin.store not in sinks:
        raise ConfigError(file, "admin.store", f"no sink named {config.admin.store!r}")
    if config.queue is not None:
        _check_queue_urls(config.queue, file)
    if config.dedup is not None and not config.dedup.url.startswith(("redis://", "rediss://")):
        raise ConfigError(file, "dedup.url", "expected a redis:// URL")
    limits_url = config.rate_limits.url if config.rate_limits is not None else None
    if limits_url is not None and not limits_url.startswith(("redis://", "rediss://")):
        raise ConfigError(file, "rate_limits.url", "expected a redis:// URL")
    admin_token_key = "admin.token"
    if token := env.get(ENV_ADMIN_TOKEN):
        config.admin.token = token
        admin_token_key = ENV_ADMIN_TOKEN
    if config.admin.token and len(config.admin.token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(
            file,
            admin_token_key,
            f"the admin token is {len(config.admin.token)} characters long; at least "
            f"{MIN_ADMIN_TOKEN_LENGTH} are required (generate one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(24))')",
        )
    throttle_url = config.admin.throttle.url
    if throttle_url is not None and not throttle_url.startswith(("redis://", "rediss://")):
        raise ConfigError(file, "admin.throttle.url", "expected a redis:// URL")
    if port := env.get(ENV_PORT):
        config.server.port = _env_port(port, file)
    check_metrics_bind(config, file)
    for i, network in enumerate(config.server.trusted_proxies):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                file, f"server.trusted_proxies[{i}]", f"{network!r} is not an address or network"
            ) from None
    _check_scrub(config.privacy.scrub, file, env)
    return config


def parse_bind(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` or ``"[::1]:9100"`` → (host, port).

    :raises ValueError: not ``host:port`` with a port 1-65535."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (such as 127.0.0.1:9100)")
    return host, int(port)


def check_metrics_bind(config: Config, file: str | None = None) -> None:
    """``server.metrics_bind`` is ``host:port`` on a port of its own, and not with
    ``metrics = "off"``. Run again after ``--port`` changes ``server.port``.

    :raises ConfigError: naming ``server.metrics_bind``."""
    server = config.server
    if server.metrics_bind is None:
        return
    try:
        _, port = parse_bind(server.metrics_bind)
    except ValueError as exc:
        raise ConfigError(file, "server.metrics_bind", str(exc)) from None
    if port == server.port:
        raise ConfigError(
            file, "server.metrics_bind", f"port {port} is server.port: give /metrics its own port"
        )
    if server.metrics == "off":
        raise ConfigError(file, "server.metrics_bind", 'set, but server.metrics is "off"')


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Read and validate the config file (``path``, else ``$EVENTROUTER_CONFIG``, else defaults)."""
    env = dict(os.environ) if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    if path is None:
        return parse({}, None, env)
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}") from None
    return parse(raw, file, env)


def ensure_admin_token(config: Config) -> bool:
    """Give ``config`` an admin token when it has none; True when one was generated
    (the caller shows it once: nobody could use the query API otherwise)."""
    if config.admin.token:
        return False
    config.admin.token = secrets.token_urlsafe(24)  # 32 characters
    return True


def _check_queue_urls(queue: QueueConfig, file: str | None) -> None:
    """Every ``queue.url`` has a broker scheme; a list names nodes of one RabbitMQ cluster."""
    listed = not isinstance(queue.url, str)
    for i, url in enumerate(queue.urls):
        key = f"queue.url[{i}]" if listed else "queue.url"
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in QUEUE_SCHEMES:
            raise ConfigError(
                file,
                key,
                "expected an amqp://, redis:// or kafka:// URL"
                + (f", not a {scheme}:// one" if scheme else " (it has no scheme)"),
            )
        if _transport(url) != queue.transport:
            raise ConfigError(
                file,
                key,
                f"a {_transport(url)} URL in a list of {queue.transport} URLs: every URL "
                "names a node of the same broker",
            )
    if listed and queue.transport == "redis" and len(queue.urls) > 1:
        raise ConfigError(
            file,
            "queue.url",
            "a list of Redis URLs is not supported: a list names the nodes of a RabbitMQ "
            "cluster; give Redis one URL",
        )
    if len(set(queue.urls)) != len(queue.urls):
        raise ConfigError(file, "queue.url", "the same URL is listed twice")
    if queue.transport == "kafka":
        if listed:
            raise ConfigError(
                file,
                "queue.url",
                "a kafka:// queue takes one URL listing its bootstrap servers "
                "(kafka://HOST:PORT,HOST:PORT), not a list",
            )
        check_kafka(queue, file)


def throttle_redis_url(config: Config) -> str | None:
    """Where the sign-in throttle's buckets live: ``[admin.throttle] url``, else the
    rate limits' Redis, else the dedup Redis, else None (in each process)."""
    if config.admin.throttle.url:
        return config.admin.throttle.url
    if config.rate_limits is not None and config.rate_limits.url:
        return config.rate_limits.url
    return config.dedup.url if config.dedup is not None else None
