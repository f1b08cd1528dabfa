"""The ``s3`` sink: an archive of gzip NDJSON (or Parquet) objects in S3 or any
S3-compatible store (MinIO, Ceph, moto), under Hive-style keys::

    {prefix}/source={source}/dt=YYYY-MM-DD/hour=HH/{uuid}.ndjson.gz

partitioned by each event's ``timestamp`` in UTC. Each line is one event with exactly
the stored columns (:data:`eventrouter.columns.STORED_COLUMNS`).

Durability: :meth:`S3Sink.write` returns only once every object holding the batch is
uploaded; nothing acknowledged is ever held in memory. The framework gathers concurrent
requests into one write (group commit, per ``batch``: up to ``batch.timeout`` and
``batch.max_events``; ``eventrouter.bus.outlet``) and retries a failed one (per
``retry``). A batch that spans several partitions becomes one object per partition
(more when one exceeds ``batch.max_bytes`` of NDJSON).

The object name is a UUIDv5 of the source and the message ids it holds, so a batch
written again (a retry after a partial failure, a redelivery of the same messages)
overwrites its own objects instead of archiving the events twice, and the same ids from
another source (a messageId is unique per source only) never name the same object.

Operator's guide: ``docs/s3.md``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.columns import JSON_COLUMNS, TIME_COLUMNS
from eventrouter.config import Duration, SinkConfig
from eventrouter.events.commands import STORED_COLUMNS, Command
from eventrouter.health import ComponentHealth
from eventrouter.store.interface import CannotErase, Eraser, Store

log = logging.getLogger("eventrouter.sinks.s3")

try:
    # ISA-L's deflate (python-isal): the same format as zlib's, several times faster.
    from isal import isal_zlib
except ImportError:  # a platform without its wheels: the standard zlib does the same job
    isal_zlib = None

#: How ``compression_level`` (1 fastest ... 9 smallest, zlib's scale) maps onto ISA-L's
#: levels: 1-5 run ISA-L (about zlib 3's size, several times faster), 6-9 the standard
#: zlib at that level, as before ISA-L (smaller objects, at zlib's speed). ISA-L's level 0
#: is left out (no faster than its level 1 here, and a third larger), and so is its level
#: 3 (slower than zlib 3, and not always smaller than its level 1).
#: Measured in bench/README.md#sink-write-throughput; docs/s3.md#compression.
ISAL_LEVELS = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2}


@dataclass(frozen=True)
class Deflate:
    """A deflate implementation and the level to run it at. ``module`` is
    :mod:`isal.isal_zlib` or :mod:`zlib` (the same API: ``compressobj``, ``crc32``, the
    flush modes)."""

    module: Any
    level: int

    @property
    def name(self) -> str:
        return "ISA-L" if self.module is not zlib else "zlib"


def deflate_for(compression_level: int, isal: Any = isal_zlib) -> Deflate:
    """The deflate of an NDJSON object at ``compression_level`` (1-9): ISA-L when it is
    installed and the level is 5 or less (:data:`ISAL_LEVELS`), else the standard zlib at
    that level. Either way the object is the same standard gzip."""
    if isal is not None and compression_level in ISAL_LEVELS:
        return Deflate(isal, ISAL_LEVELS[compression_level])
    return Deflate(zlib, compression_level)


#: ISA-L's CRC-32 when installed: an order of magnitude faster than zlib's, and it runs
#: in the encoding thread (:meth:`ParallelGzip.add`).
_crc32 = (isal_zlib or zlib).crc32

MiB = 1024 * 1024
#: S3's smallest part of a multipart upload (all but the last).
MIN_PART_SIZE = 5 * MiB
#: Events encoded (and compressed on the pool) per piece of an object.
PIECE_EVENTS = 2000
#: Timeouts of the health probe (seconds); it is never retried.
HEALTH_TIMEOUT = 2.0
#: The span of a partition (``hour=HH``).
HOUR = timedelta(hours=1)
#: The namespace of the object names (UUIDv5 of the source and message ids an object holds).
OBJECT_NAMESPACE = uuid.UUID("5f0c8a52-4c3e-4d7b-9a8e-0e6f1b2c3d4e")

#: S3 bucket naming rules (also MinIO's).
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class S3Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sinks.NAME]`` keys of ``type = "s3"``; see docs/s3.md."""

    bucket: Annotated[str, msgspec.Meta(pattern=BUCKET_NAME)]
    #: Key prefix; slashes at either end are ignored, ``""`` writes at the bucket's root.
    prefix: str = "events"
    #: ``https://...`` of an S3-compatible store; unset: AWS S3 of ``region``.
    endpoint_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$")] | None = None
    region: Annotated[str, msgspec.Meta(min_length=1)] = "us-east-1"
    #: A profile of ~/.aws/config; unset: the standard chain (env vars, profile, role).
    profile: str | None = None
    #: ``path`` for stores without virtual-host buckets (MinIO behind one hostname).
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    format: Literal["ndjson", "parquet"] = "ndjson"
    #: gzip level of NDJSON objects, 1 (fastest) to 9 (smallest); see :func:`deflate_for`.
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 3
    #: Codec of Parquet objects.
    parquet_compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    #: Objects of at least this many bytes (compressed) go up as multipart uploads.
    multipart_threshold: Annotated[int, msgspec.Meta(ge=1)] = 16 * MiB
    #: Part size of multipart uploads (S3: 5 MiB to 5 GiB).
    multipart_chunksize: Annotated[int, msgspec.Meta(ge=MIN_PART_SIZE, le=5 * 1024 * MiB)] = (
        16 * MiB
    )
    #: Uploads in flight at once per write: objects, and parts of one multipart object.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    #: ``STANDARD_IA``, ``GLACIER_IR``, ...; unset: the bucket's default (STANDARD).
    storage_class: str | None = None
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    #: KMS key for ``server_side_encryption = "aws:kms"``; unset: the AWS-managed key.
    kms_key_id: str | None = None
    #: Attempts of each S3 request by botocore (standard retry mode) within one write.
    request_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    connect_timeout: Duration = Duration(5.0)
    read_timeout: Duration = Duration(60.0)


class S3WriteError(Exception):
    """An object of the batch could not be uploaded."""


# -- what goes in an object ---------------------------------------------------------------
#: One line of an NDJSON object: the stored columns, in order, nulls included.
StoredEvent = msgspec.defstruct("StoredEvent", [(column, Any) for column in STORED_COLUMNS])
_encoder = msgspec.json.Encoder()


#: The time columns close :meth:`Command.values`; ``timestamp`` and ``received_at`` are
#: never None.
_FIRST_TIME = STORED_COLUMNS.index("timestamp")
assert STORED_COLUMNS[_FIRST_TIME:] == TIME_COLUMNS


def stored_event(command: Command) -> Any:
    """The line of one command, times in UTC: commands carry UTC already, unless a plugin
    replaced a time with one at another offset. (Spelled out: this runs per event.)"""
    values = command.values()
    timestamp, original, sent_at, received_at = values[_FIRST_TIME:]
    if (
        timestamp.tzinfo is not UTC
        or received_at.tzinfo is not UTC
        or (original is not None and original.tzinfo is not UTC)
        or (sent_at is not None and sent_at.tzinfo is not UTC)
    ):
        times = (None if value is None else utc(value) for value in values[_FIRST_TIME:])
        values = (*values[:_FIRST_TIME], *times)
    return StoredEvent(*values)


def stored_events(commands: Sequence[Command]) -> list[Any]:
    """:func:`stored_event` of each command. The lines are built first and their times
    checked after, in one loop over the structs (cheaper than per event, per command);
    should any time not be in UTC (a plugin set it), every line is built again by
    :func:`stored_event`, which converts."""
    events = [StoredEvent(*command.values()) for command in commands]
    for event in events:
        if (
            event.timestamp.tzinfo is not UTC
            or event.received_at.tzinfo is not UTC
            or (event.original_timestamp is not None and event.original_timestamp.tzinfo is not UTC)
            or (event.sent_at is not None and event.sent_at.tzinfo is not UTC)
        ):
            return [stored_event(command) for command in commands]
    return events


def ndjson_lines(commands: Sequence[Command]) -> bytes:
    """One JSON object per command, each ended by ``\\n``: exactly the stored columns,
    times in RFC 3339 UTC (``2025-05-28T04:17:35.250000Z``).

    The JSON columns are the raw text the client sent, copied into the line as it is
    (msgspec writes a :class:`msgspec.Raw` by concatenation). Such a text may hold a
    line break between its tokens (never inside a string, where JSON escapes it): then
    the breaks become spaces, which is the same JSON, so each event stays one line."""
    data = _encoder.encode_lines(stored_events(commands))
    if not one_line_each(data, len(commands)) or b"\r" in data:
        lines = (_encoder.encode(stored_event(command)) for command in commands)
        data = b"".join(line.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n" for line in lines)
    return data


def one_line_each(data: bytes, lines: int) -> bool:
    """Whether ``data`` holds exactly ``lines`` line breaks, the last one at its end.

    ``bytes.find`` of one byte is a ``memchr``, faster per byte than ``bytes.count`` (a
    byte-by-byte loop), and the lines are long (about a kilobyte): one call per line cost
    half as much as counting every byte (bench/README.md#sink-write-throughput)."""
    find = data.find
    at = -1
    for _ in range(lines):
        at = find(b"\n", at + 1)
        if at < 0:
            return False
    return at == len(data) - 1


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive time is taken to be UTC already (as ``eventrouter.events.normalise``)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass
class Partition:
    source: str
    day: date
    hour: int
    commands: list[Command] = field(default_factory=list)

    def key(self, prefix: str, name: str) -> str:
        """The Hive-style key of an object of this partition. The source is
        percent-encoded as Hive escapes partition values (``/``, ``=``, spaces...)."""
        path = (
            f"source={quote(self.source, safe='')}/dt={self.day.isoformat()}/hour={self.hour:02d}/"
            f"{name}"
        )
        return f"{prefix}/{path}" if prefix else path


def partitions(commands: Sequence[Command]) -> list[Partition]:
    """The commands by (source, UTC day, UTC hour) of their ``timestamp``, each in arrival
    order.

    Runs per event: an event of the same source and hour as the one before (most of them)
    is placed by two comparisons of its time with that hour's bounds, without building a
    key to look up."""
    found: dict[tuple[str, date, int], Partition] = {}
    source = None
    start = end = datetime.min.replace(tzinfo=UTC)  # no hour yet
    current: list[Command] = []
    for command in commands:
        timestamp = command.timestamp
        if timestamp.tzinfo is not UTC:
            timestamp = utc(timestamp)
        if start <= timestamp < end and command.source == source:
            current.append(command)
            continue
        source = command.source
        start = timestamp.replace(minute=0, second=0, microsecond=0)
        try:
            end = start + HOUR
        except OverflowError:  # the last hour of year 9999: no fast path for it
            end = start
        where = (source, start.date(), start.hour)
        partition = found.get(where)
        if partition is None:
            partition = found[where] = Partition(*where)
        current = partition.commands
        current.append(command)
    return list(found.values())


def object_name(source: str, message_ids: Sequence[str]) -> str:
    """Deterministic: the same events, written again, land in the same object. The name
    is of the JSON array ``[source, *message_ids]``, which no other source or list of
    ids encodes to, whatever characters they hold (an id may hold a newline)."""
    return str(uuid.uuid5(OBJECT_NAMESPACE, _encoder.encode([source, *message_ids]).decode()))


class ParallelGzip:
    """One gzip member, compressed piece by piece on a thread pool, as pigz does.

    Each piece is a raw deflate stream primed with the previous piece's last 32 KiB (so
    the ratio is that of one stream) and ended with a sync flush; the pieces, an empty
    final block and the gzip header and trailer make one member that every gzip reader
    takes (some, Athena's among them, stop at the end of the first member of a file).
    ISA-L and zlib release the GIL, so pieces compress while the next one is encoded.
    """

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
    WINDOW = 32 * 1024

    def __init__(self, deflate: Deflate, pool: ThreadPoolExecutor) -> None:
        self.deflate = deflate
        self.pool = pool
        self.pieces: list[Future[bytes]] = []
        self.crc = 0
        self.size = 0
        self._tail = b""

    def add(self, data: bytes) -> None:
        self.pieces.append(self.pool.submit(self._deflate, data, self._tail))
        self.crc = _crc32(data, self.crc)
        self.size += len(data)
        self._tail = data[-self.WINDOW :]

    def _deflate(self, data: bytes, primer: bytes) -> bytes:
        z, level = self.deflate.module, self.deflate.level
        if primer:
            compressor = z.compressobj(level, z.DEFLATED, -15, zdict=primer)
        else:
            compressor = z.compressobj(level, z.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(z.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The gzip member (waits for the pieces)."""
        final = zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
        trailer = struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF)
        return b"".join([self.HEADER, *(piece.result() for piece in self.pieces), final, trailer])


@dataclass
class PlannedObject:
    """An object to upload: its key, its event count, and how to produce its body (run
    in an upload thread, so that the next object is encoded meanwhile)."""

    key: str
    events: int
    body: Callable[[], bytes]


def ndjson_objects(
    partition: Partition,
    prefix: str,
    deflate: Deflate,
    max_bytes: int | None,
    pool: ThreadPoolExecutor,
) -> Iterator[PlannedObject]:
    """The gzip NDJSON objects of one partition: one, or several of at most ``max_bytes``
    of NDJSON each (cut between events; an event larger than that gets an object of its
    own)."""
    limit = max_bytes or float("inf")
    ids: list[str] = []
    gz = ParallelGzip(deflate, pool)

    def close() -> PlannedObject:
        key = partition.key(prefix, f"{object_name(partition.source, ids)}.ndjson.gz")
        return PlannedObject(key, len(ids), gz.finish)

    commands = partition.commands
    for start in range(0, len(commands), PIECE_EVENTS):
        piece = commands[start : start + PIECE_EVENTS]
        data = ndjson_lines(piece)
        done = 0  # events of ``piece`` placed in an object
        while data:
            room = limit - gz.size
            if len(data) <= room:
                gz.add(data)
                ids.extend(c.message_id for c in piece[done:])
                break
            cut = data.rfind(b"\n", 0, int(room)) + 1  # after the last whole line that fits
            if cut == 0:
                if gz.size:  # nothing more fits: the next object takes it
                    yield close()
                    ids, gz = [], ParallelGzip(deflate, pool)
                    continue
                cut = data.index(b"\n") + 1  # one event larger than max_bytes: alone
            count = data.count(b"\n", 0, cut)
            gz.add(data[:cut])
            ids.extend(c.message_id for c in piece[done : done + count])
            done += count
            data = data[cut:]
            yield close()
            ids, gz = [], ParallelGzip(deflate, pool)
    if ids:
        yield close()


def parquet_body(commands: Sequence[Command], compression: str) -> bytes:
    """One Parquet file of ``commands``: the stored columns, JSON objects as JSON text
    (their schemas differ from event to event), times as ``timestamp[us, tz=UTC]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*(command.values() for command in commands), strict=True))
    arrays = []
    fields = []
    for name, values in zip(STORED_COLUMNS, columns, strict=True):
        if name in JSON_COLUMNS:
            values = [None if v is None else _encoder.encode(v) for v in values]
            kind = pa.string()  # from UTF-8 bytes
        elif name in TIME_COLUMNS:
            kind = pa.timestamp("us", tz="UTC")  # pyarrow converts aware times to UTC
        else:
            kind = pa.string()
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(name, kind, nullable=name not in ("message_id", "type")))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    # An Arrow buffer, not a Python file object: Arrow's thread pool and Python file
    # objects can hang or abort the interpreter at exit (apache/arrow#50482).
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    return sink.getvalue().to_pybytes()


# -- the sink -------------------------------------------------------------------------------
class S3Sink(Sink):
    """Archive every event to S3; see the module docstring and docs/s3.md."""

    Options = S3Options

    def store(self) -> S3Store:
        return S3Store()

    def __init__(self, name: str, config: SinkConfig, options: S3Options) -> None:
        super().__init__(name, config, options)
        self.prefix = options.prefix.strip("/")
        self.extension = "ndjson.gz" if options.format == "ndjson" else "parquet"
        self.deflate = deflate_for(options.compression_level)
        self._client: Any = None
        self._probe: Any = None
        self._transfer: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._uploads: ThreadPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self.objects = 0
        self.multipart_objects = 0
        self.uploaded_events = 0
        self.uploaded_bytes = 0
        self.failed_writes = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, bus: Any) -> None:
        options = self.options
        if options.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise RuntimeError(
                f"sinks.{self.name}.format = 'parquet' needs pyarrow, which is not installed: "
                "pip install 'eventrouter[parquet]' (or use format = 'ndjson')"
            )
        await asyncio.to_thread(self._open)
        self._pool = ThreadPoolExecutor(
            max(2, os.cpu_count() or 2), thread_name_prefix=f"s3-gzip-{self.name}"
        )
        self._uploads = ThreadPoolExecutor(
            options.max_concurrency, thread_name_prefix=f"s3-upload-{self.name}"
        )
        where = options.endpoint_url or f"AWS S3 ({options.region})"
        log.info(
            "%s: archiving to s3://%s/%s at %s as %s%s",
            self.name,
            options.bucket,
            self.prefix,
            where,
            self.extension,
            f" ({self.deflate.name} level {self.deflate.level})"
            if options.format == "ndjson"
            else "",
        )

    def _open(self) -> None:
        # Imported here, not at the top: every eventrouter process loads this plugin, and
        # boto3 takes a noticeable part of a second to import.
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        options = self.options
        session = boto3.session.Session(profile_name=options.profile)
        common = {
            "region_name": options.region,
            "s3": {"addressing_style": options.addressing_style},
        }
        self._client = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            config=BotoConfig(
                retries={"mode": "standard", "total_max_attempts": options.request_attempts},
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                max_pool_connections=4 * options.max_concurrency,
                **common,
            ),
        )
        self._probe = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            config=BotoConfig(
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=HEALTH_TIMEOUT,
                read_timeout=HEALTH_TIMEOUT,
                **common,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=options.multipart_threshold,
            multipart_chunksize=options.multipart_chunksize,
            max_concurrency=options.max_concurrency,
        )
        try:
            self._probe.head_bucket(Bucket=options.bucket)
        except Exception as exc:  # the store may come back: writes fail (and retry) until then
            log.warning("%s: bucket %s is not reachable yet: %s", self.name, options.bucket, exc)

    async def stop(self) -> None:
        # The framework has written what it held by now; an upload that timed out may
        # still run in its thread, and the pools wait for it.
        for pool in (self._uploads, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._uploads = self._pool = None
        for client in (self._client, self._probe):
            if client is not None:
                client.close()
        self._client = self._probe = None

    # -- the write path ----------------------------------------------------------------
    async def write(self, commands: Sequence[Command]) -> None:
        """Upload ``commands`` (one group of requests, or a worker's batch); return once
        every object holding them is stored."""
        if self._uploads is None:
            raise RuntimeError(f"sink {self.name} is not running")
        try:
            await asyncio.to_thread(self._upload, commands)
        except Exception as exc:
            with self._stats_lock:
                self.failed_writes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            raise

    # -- uploads, in a thread ----------------------------------------------------------
    def _upload(self, commands: Sequence[Command]) -> None:
        """Upload ``commands`` as one object per partition (or more, by ``max_bytes``);
        return once every one is stored, else raise the first failure. Object names are
        deterministic, so a retry overwrites what an earlier attempt stored."""
        futures = [
            (planned, self._uploads.submit(self._put, planned)) for planned in self._plan(commands)
        ]
        errors = []
        for planned, future in futures:
            try:
                future.result()
            except Exception as exc:
                errors.append((planned, exc))
        if errors:
            planned, exc = errors[0]
            raise S3WriteError(
                f"{len(errors)} of {len(futures)} objects not uploaded; "
                f"s3://{self.options.bucket}/{planned.key}: {type(exc).__name__}: {exc}"
            ) from exc

    def _plan(self, commands: Sequence[Command]) -> Iterator[PlannedObject]:
        """The objects of a batch. NDJSON is encoded here, piece by piece, while the pool
        compresses the pieces already encoded and earlier objects upload."""
        options = self.options
        for partition in partitions(commands):
            if options.format == "ndjson":
                yield from ndjson_objects(
                    partition,
                    self.prefix,
                    self.deflate,
                    self.config.batch.max_bytes,
                    self._pool,
                )
            else:
                ids = [c.message_id for c in partition.commands]
                key = partition.key(self.prefix, f"{object_name(partition.source, ids)}.parquet")
                compression = options.parquet_compression

                def body(batch: list[Command] = partition.commands, codec: str = compression):
                    return parquet_body(batch, codec)

                yield PlannedObject(key, len(ids), body)

    def _put(self, planned: PlannedObject) -> None:
        body = planned.body()
        options = self.options
        extra: dict[str, Any] = {
            "ContentType": "application/gzip"
            if options.format == "ndjson"
            else "application/vnd.apache.parquet",
            "Metadata": {"events": str(planned.events)},
        }
        if options.storage_class:
            extra["StorageClass"] = options.storage_class
        if options.server_side_encryption:
            extra["ServerSideEncryption"] = options.server_side_encryption
            if options.kms_key_id:
                extra["SSEKMSKeyId"] = options.kms_key_id
        multipart = len(body) >= options.multipart_threshold
        if multipart:
            # boto3's managed transfer: parts of ``multipart_chunksize`` in parallel, each
            # retried on its own by botocore, the upload aborted if it fails for good.
            self._client.upload_fileobj(
                io.BytesIO(body),
                options.bucket,
                planned.key,
                ExtraArgs=extra,
                Config=self._transfer,
            )
        else:
            self._client.put_object(Bucket=options.bucket, Key=planned.key, Body=body, **extra)
        log.debug(
            "%s: uploaded s3://%s/%s (%d events, %d bytes%s)",
            self.name,
            options.bucket,
            planned.key,
            planned.events,
            len(body),
            ", multipart" if multipart else "",
        )
        with self._stats_lock:
            self.objects += 1
            self.multipart_objects += multipart
            self.uploaded_events += planned.events
            self.uploaded_bytes += len(body)

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        stats = {
            "objects": self.objects,
            "multipart_objects": self.multipart_objects,
            "uploaded_events": self.uploaded_events,
            "uploaded_bytes": self.uploaded_bytes,
            "failed_writes": self.failed_writes,
        }
        return self.probed_health(
            lambda: self._probe.head_bucket(Bucket=self.options.bucket),
            stats,
            last_error=self.last_error,
            where=f"s3://{self.options.bucket}: ",
            not_running="not running" if self._probe is None else None,
        )


class S3Store(Store):
    """What the archive tells the core: it cannot be queried (no query dialect), and it
    cannot erase one user's events (docs/privacy.md#s3-archives)."""

    #: Why, as ``eventrouter privacy delete`` reports the sink skipped.
    CANNOT_ERASE = (
        "S3 objects are immutable batches: the user's events stay in the archive "
        "(docs/privacy.md#s3-archives)"
    )

    def eraser(self) -> Eraser:
        """Deleting one user would mean downloading, filtering and rewriting every object
        that holds their events, each a batch of many users' events: not done here."""
        raise CannotErase(self.CANNOT_ERASE)


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"s3": S3Sink}
