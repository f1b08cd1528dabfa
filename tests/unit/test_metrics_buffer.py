"""The request path's counts held in memory (``Metrics(buffered=True)``, the mode of
``eventrouter serve``'s workers): once flushed, the exposition is exactly what writing
each observation at once gives, with the same names, labels, buckets and sums."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventrouter import metrics
from eventrouter.metrics import Metrics


@dataclass
class Command:
    kind: str
    source: str


#: (route, method, status, seconds): on every bucket edge, between, above the last
TIMINGS = [
    ("/v1/track", "POST", "2xx", seconds)
    for seconds in (0.0, 0.0004, 0.0005, 0.0006, 0.003, 0.01, 0.7, 10, 11.5, 3600)
] + [("/v1/batch", "POST", "4xx", 0.002), ("unmatched", "GET", "4xx", 0.0001)]
#: label values an attacker may choose reach the tallies as they would the metrics
HOSTILE = 'we"b\\\n{source="x"}'


def feed(m: Metrics) -> None:
    for route, method, status, seconds in TIMINGS:
        m.request_done(route, method, status, seconds)
    m.accepted([Command("track", "web")])
    m.accepted([Command("track", "web"), Command("identify", HOSTILE), Command("track", "web")])
    m.rejected("missing_field")
    m.rejected("missing_field", 3)
    m.rejected("invalid_write_key")


def samples(m: Metrics) -> dict:
    found = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):  # when the series began: not a count
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_flushed_tallies_expose_what_direct_writes_expose():
    direct = Metrics(buffered=False)
    feed(direct)

    async def on_a_loop() -> Metrics:
        held = Metrics(buffered=True)
        feed(held)
        assert samples(held) == samples(Metrics(buffered=False))  # nothing written yet
        held.flush()
        return held

    held = asyncio.run(on_a_loop())
    assert samples(held) == samples(direct)
    bucket = ("eventrouter_http_request_duration_seconds_bucket",)
    le = {k[1]: v for k, v in samples(held).items() if k[:1] == bucket}
    track = (("le", "0.0005"), ("method", "POST"), ("route", "/v1/track"), ("status", "2xx"))
    assert le[track] == 3  # 0.0, 0.0004 and 0.0005 itself: a bound is inclusive
    accepted = samples(held)[
        "eventrouter_events_accepted_total", (("source", HOSTILE), ("type", "identify"))
    ]
    assert accepted == 1


def test_the_timer_flushes_without_a_scrape():
    async def on_a_loop() -> float:
        held = Metrics(buffered=True)
        held.accepted([Command("track", "web")])
        await asyncio.sleep(metrics.FLUSH_INTERVAL * 2)  # the loop runs the flush
        return samples(held)["eventrouter_events_received_total", ()]

    assert asyncio.run(on_a_loop()) == 1


def test_counts_from_outside_the_loop_are_written_at_once():
    held = Metrics(buffered=True)
    held.accepted([Command("track", "web")])  # no running loop here

    async def on_a_loop() -> None:
        held.accepted([Command("track", "web")])  # held: the loop's thread
        other = threading.Thread(target=held.rejected, args=("missing_field",))
        other.start()
        other.join()  # another thread: written at once, never racing the loop's tallies
        found = samples(held)
        assert found["eventrouter_events_received_total", ()] == 2
        assert found["eventrouter_events_rejected_total", (("reason", "missing_field"),)] == 1
        held.flush()

    asyncio.run(on_a_loop())
    assert samples(held)["eventrouter_events_received_total", ()] == 3
