"""A plain prototype of durable ingestion, for comparison only: not eventrouter.

What issue 3 calls "a plain prototype of group commit with kombu confirms": ``POST
/v1/track`` and ``POST /v1/batch`` validate the body with msgspec against the Segment
shapes of ``eventrouter.events.model`` (a batch in one typed decode), then hand the *raw
request body* to a publisher thread, which publishes everything queued since its last
publish as one persistent message and waits for RabbitMQ's confirm before the requests
are answered ``200``. It does none of the rest of eventrouter's work: no normalisation
(message ids, receivedAt, clock skew, context.ip), no per-item rejection, no limits
beyond msgspec's, no metrics, no spool, no request ids, no retry of a lost connection
(a failed publish answers 503). bench/prototype.py serves it like bench/bare_app.py and
compares it with the bare endpoint and eventrouter's queue mode in the same run.

The broker and the queue's name prefix come from ``PROTOTYPE_BROKER`` and
``PROTOTYPE_PREFIX``; the queue is ``{prefix}.events``, bound to the fanout exchange
``{prefix}``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading

import falcon
import falcon.asgi
import msgspec
from kombu import Connection, Exchange, Producer, Queue

from eventrouter.events import model

SUCCESS = b'{"success":true}'
BROKER = os.environ.get("PROTOTYPE_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PREFIX = os.environ.get("PROTOTYPE_PREFIX", "prototype")


class Batch(msgspec.Struct, kw_only=True):
    batch: list[model.AnyMessage]


BATCH = msgspec.json.Decoder(Batch)
TRACK = msgspec.json.Decoder(model.Track)  # the prototype validates into dicts, as it always did


class Publisher:
    """One thread per process: joins the queued bodies, publishes, waits for the confirm."""

    def __init__(self) -> None:
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def publish(self, body: bytes) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            threading.Thread(target=self._run, name="prototype-publisher", daemon=True).start()
        future = self.loop.create_future()
        self.pending.put((body, future))
        await future

    def _run(self) -> None:
        # ``confirm_publish``: py-amqp puts the channel in confirm mode and
        # ``publish`` returns only once the broker confirmed the message (without it,
        # ``publish`` returns as soon as the bytes are written to the socket).
        with Connection(BROKER, transport_options={"confirm_publish": True}) as connection:
            channel = connection.channel()
            exchange = Exchange(PREFIX, "fanout", durable=True)
            Queue(f"{PREFIX}.events", exchange, durable=True)(channel).declare()
            producer = Producer(channel, exchange=exchange)
            while True:
                group = [self.pending.get()]
                while True:
                    try:
                        group.append(self.pending.get_nowait())
                    except queue.Empty:
                        break
                error = None
                try:
                    body = b"\n".join(body for body, _ in group)
                    producer.publish(body, delivery_mode=2, timeout=10, retry=False)
                except Exception as exc:  # answered 503 below
                    error = exc
                self.loop.call_soon_threadsafe(self._resolve, group, error)

    @staticmethod
    def _resolve(group: list, error: BaseException | None) -> None:
        for _, future in group:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(falcon.HTTPServiceUnavailable(description=str(error)))


publisher = Publisher()


class Ingest:
    def __init__(self, decoder: msgspec.json.Decoder) -> None:
        self.decoder = decoder

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await req.stream.read()
        try:
            self.decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise falcon.HTTPBadRequest(description=str(exc)) from None
        await publisher.publish(body)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = SUCCESS


app = falcon.asgi.App()
app.add_route("/v1/track", Ingest(TRACK))
app.add_route("/v1/batch", Ingest(BATCH))
