"""Request coalescing: the requests of one event-loop turn share one bus dispatch, and
each request sees the group's outcome (router_core/edge/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest
from falcon.testing import ASGIConductor

from eventrouter.app import create_app
from eventrouter.edge.coalesce import Coalescer
from eventrouter.errors import APIError
from eventrouter.logs import request_id
from eventrouter.store.query import EventFilter
from tests.helpers import make_config


class Recorder:
    """A dispatch that records each group and fails while ``error`` is set."""

    def __init__(self) -> None:
        self.groups: list[list] = []
        self.contexts: list[str | None] = []
        self.error: BaseException | None = None

    async def __call__(self, commands) -> None:
        self.groups.append(list(commands))
        self.contexts.append(request_id.get())
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error


async def _submit_all(coalescer: Coalescer, batches: list[list], ids=None) -> list:
    async def one(index: int, batch: list):
        if ids is not None:
            request_id.set(ids[index])
        try:
            await coalescer.submit(batch)
        except Exception as exc:
            return exc
        return "ok"

    return await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))


def test_requests_of_one_turn_share_one_dispatch():
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    batches = [[f"e{i}"] for i in range(10)] + [["b1", "b2", "b3"]]
    outcomes = asyncio.run(_submit_all(coalescer, batches, ids=[f"r{i}" for i in range(11)]))
    assert outcomes == ["ok"] * 11
    assert recorder.groups == [[e for batch in batches for e in batch]]
    assert (coalescer.groups, coalescer.requests) == (1, 11)
    # the group's work is logged under every request id it carries
    assert recorder.contexts == [",".join(f"r{i}" for i in range(11))]


def test_a_refused_group_fails_every_request_with_its_own_copy():
    recorder = Recorder()
    recorder.error = APIError(503, "unavailable", "sink: down", headers={"Retry-After": "5"})
    outcomes = asyncio.run(_submit_all(Coalescer(recorder), [[1], [2], [3]]))
    assert [type(o) for o in outcomes] == [APIError] * 3
    assert len({id(o) for o in outcomes}) == 3  # one exception object per request
    assert all(o.status == 503 and o.headers == {"Retry-After": "5"} for o in outcomes)
    assert len(recorder.groups) == 1


def test_a_group_is_cut_at_max_events():
    """Cut when it reaches max_events, or before a request would take it past them; a
    request alone larger than max_events is a group of its own."""
    recorder = Recorder()
    coalescer = Coalescer(recorder, max_events=5)
    batches = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17, 18]]
    assert asyncio.run(_submit_all(coalescer, batches)) == ["ok"] * 6
    assert recorder.groups == [
        [1, 2, 3, 4, 5],
        [6],
        [7, 8, 9, 10, 11],
        [12],
        [13, 14, 15, 16, 17, 18],
    ]


def test_a_cancelled_request_does_not_break_its_group():
    recorder = Recorder()
    coalescer = Coalescer(recorder)

    async def scenario():
        kept = asyncio.create_task(coalescer.submit(["kept"]))
        gone = asyncio.create_task(coalescer.submit(["gone"]))
        await asyncio.sleep(0)  # both submitted; the group is scheduled
        gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
    # the cancelled request's event was already in the group: it is dispatched anyway
    assert recorder.groups == [["kept", "gone"]]


def test_concurrent_requests_to_the_app_share_dispatches(tmp_path):
    """40 concurrent single-event requests through the ASGI app: each answered 200 and
    stored once, in fewer dispatches than requests (what the grouping is for)."""
    app = create_app(make_config(tmp_path))

    async def scenario() -> list[int]:
        async with ASGIConductor(app) as conductor:
            results = await asyncio.gather(
                *(
                    conductor.simulate_post("/v1/track", json={"userId": f"u{i}", "event": "E"})
                    for i in range(40)
                )
            )
            return [r.status_code for r in results]

    assert asyncio.run(scenario()) == [200] * 40
    groups = app.ingestor.groups
    assert groups.requests == 40
    assert groups.groups < 40
    page = app.store.query(EventFilter(), limit=100)
    assert sorted(e["user_id"] for e in page.events) == sorted(f"u{i}" for i in range(40))
