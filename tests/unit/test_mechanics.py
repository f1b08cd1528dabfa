"""The framework's sink mechanics on their own: the retry policy, the bounded buffer,
the group-commit batcher, the worker consumer's limits, and the edge retrying a sink's
write per its ``retry`` block (router_core/bus/retry.py, buffer.py, batcher.py,
outlet.py). A sink that hangs under load is tests/integration/test_sink_buffer.py.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from types import SimpleNamespace

import msgspec
import pytest

from eventrouter import config
from eventrouter.bus.batcher import Batcher, BatchPolicy, Pending
from eventrouter.bus.buffer import Buffer, BufferFull
from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.outlet import Outlet
from eventrouter.bus.retry import RetryPolicy
from eventrouter.bus.sink import Sink
from eventrouter.config import BufferConfig, QueueConfig, RetryConfig, SinkConfig
from eventrouter.events.commands import Command
from eventrouter.queue.worker import consumer_policy, consumer_prefetch
from tests.helpers import HANG_GUARD


# -- the retry policy -----------------------------------------------------------------------
def pauses(config: RetryConfig, error: BaseException | None = None, seed: int = 7) -> list:
    """Every pause the policy gives one write that keeps failing, all at time 0."""
    backoff = RetryPolicy(config, rng=random.Random(seed)).backoff()
    found = []
    while (pause := backoff.failed(error or OSError("down"), now=0.0)) is not None:
        found.append(pause)
    return found


def test_without_jitter_the_pauses_double_up_to_max_backoff():
    config = RetryConfig(attempts=7, initial_backoff=0.1, max_backoff=1.0, jitter="none")
    assert pauses(config) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("seed", range(20))
def test_full_jitter_draws_each_pause_below_its_exponential_value(seed):
    config = RetryConfig(attempts=9, initial_backoff=0.1, max_backoff=1.0, jitter="full")
    found = pauses(config, seed=seed)
    assert len(found) == 8  # attempts - 1
    for n, pause in enumerate(found):
        assert 0 <= pause <= min(1.0, 0.1 * 2**n)


@pytest.mark.parametrize("seed", range(20))
def test_decorrelated_jitter_stays_between_the_first_pause_and_three_times_the_last(seed):
    config = RetryConfig(attempts=9, initial_backoff=0.1, max_backoff=2.0, jitter="decorrelated")
    previous = 0.1
    for pause in pauses(config, seed=seed):
        assert 0.1 <= pause <= min(2.0, 3 * previous)
        previous = pause


def test_max_duration_counts_from_the_first_failure():
    config = RetryConfig(
        attempts=100, initial_backoff=1.0, max_backoff=1.0, max_duration=3.0, jitter="none"
    )
    backoff = RetryPolicy(config).backoff()
    # A first attempt that failed slowly (a timeout at t=100) is still retried...
    assert backoff.failed(TimeoutError(), now=100.0) == 1.0
    assert backoff.failed(TimeoutError(), now=101.0) == 1.0
    assert backoff.failed(TimeoutError(), now=102.0) == 1.0
    # ...until a pause would end more than 3 s after that first failure.
    assert backoff.failed(TimeoutError(), now=102.5) is None
    assert backoff.attempts == 4


def test_one_attempt_means_no_retry_and_huge_attempts_do_not_overflow():
    assert pauses(RetryConfig(attempts=1)) == []
    config = RetryConfig(attempts=2000, max_backoff=5.0, max_duration=10**9, jitter="none")
    found = pauses(config)
    assert len(found) == 1999
    assert found[-1] == 5.0


class Permanent(Exception):
    retryable = False


class Throttled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("429")
        self.retry_after = retry_after


def test_errors_that_say_they_are_permanent_are_not_retried():
    config = RetryConfig(attempts=5, jitter="none")
    assert pauses(config, Permanent()) == []
    instance = OSError("refused for good")
    instance.retryable = False
    assert pauses(config, instance) == []
    assert len(pauses(config, OSError("down"))) == 4


def test_a_sink_classifies_errors_and_a_classifier_that_raises_means_retry():
    config = RetryConfig(attempts=3, jitter="none")
    only_os_errors = RetryPolicy(config, lambda error: isinstance(error, OSError))
    assert only_os_errors.backoff().failed(ValueError()) is None
    assert only_os_errors.backoff().failed(OSError()) == 0.1

    def broken(error: BaseException) -> bool:
        raise RuntimeError("bug in the classifier")

    assert RetryPolicy(config, broken).backoff().failed(ValueError()) == 0.1


def test_retry_after_sets_the_least_pause_within_max_duration():
    config = RetryConfig(attempts=5, initial_backoff=0.1, max_duration=10.0, jitter="none")
    backoff = RetryPolicy(config).backoff()
    assert backoff.failed(Throttled(2.0), now=0.0) == 2.0
    assert backoff.failed(Throttled(0.0), now=2.0) == 0.2
    assert backoff.failed(Throttled(30.0), now=3.0) is None  # past max_duration


def test_the_sink_base_class_classifies_by_the_retryable_attribute():
    sink = Sink("s", SinkConfig(type="t"), None)
    assert sink.is_retryable(OSError()) is True
    assert sink.is_retryable(Permanent()) is False


# -- the buffer -----------------------------------------------------------------------------
def test_the_buffer_refuses_what_does_not_fit_and_lets_one_oversized_batch_in():
    buffer = Buffer(BufferConfig(max_events=10, max_bytes=1000))
    assert buffer.try_take(6, 100)
    assert not buffer.try_take(5, 100)  # 11 events
    assert buffer.try_take(4, 100)
    buffer.give_back(10, 200)
    assert buffer.try_take(50, 5000)  # empty: a batch larger than the buffer gets in
    assert not buffer.try_take(1, 1)
    buffer.give_back(50, 5000)
    assert buffer.try_take(1, 600) and not buffer.try_take(1, 600)  # bytes
    assert buffer.peak_events == 50


def test_blocked_takers_get_room_in_arrival_order_or_fail_at_their_deadline():
    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        buffer = Buffer(BufferConfig(max_events=10))
        assert buffer.try_take(10, 0)
        order: list[str] = []

        async def taker(name: str, events: int, deadline: float) -> None:
            try:
                await buffer.take(events, 0, deadline)
                order.append(name)
            except BufferFull as exc:
                order.append(f"{name} refused: {exc}")

        far = loop.time() + 3600
        tasks = [
            asyncio.create_task(taker("first", 6, far)),
            asyncio.create_task(taker("second", 4, far)),
            asyncio.create_task(taker("late", 1, loop.time())),  # no time to wait
        ]
        await asyncio.sleep(0)
        assert not buffer.try_take(1, 0)  # waiters come first
        buffer.give_back(10, 0)
        await asyncio.gather(*tasks)
        assert buffer.events == 10
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["first", "second"]  # 6 + 4: all the room given back
    assert order[2].startswith("late refused: buffer full (10 of 10 events pending")
    assert "no room came in time" in order[2]


# -- the batcher ----------------------------------------------------------------------------
def test_batch_policy_limits():
    policy = BatchPolicy(max_events=10, max_bytes=100)
    assert policy.full(10, 0) and policy.full(1, 100) and not policy.full(9, 99)
    assert policy.fits(10, 100) and not policy.fits(11, 0) and not policy.fits(1, 101)
    assert not BatchPolicy(max_events=10).full(9, 10**9)


def test_writes_that_arrive_during_a_write_are_grouped_within_max_events():
    async def scenario() -> tuple:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        groups: list[list[int]] = []
        left: list[int] = []

        async def write(group: list[Pending]) -> BaseException | None:
            groups.append([len(item.commands) for item in group])
            if len(groups) == 1:
                await gate.wait()
            return None if len(groups) < 3 else RuntimeError("store down")

        batcher = Batcher("t", BatchPolicy(max_events=7), write, lambda i: left.append(i.events))
        futures = []
        for _ in range(5):
            futures.append(loop.create_future())
            batcher.add(Pending([None] * 3, 3, 0, futures[-1], loop.time()))
            await asyncio.sleep(0)  # the first write starts with the first batch alone
        futures[4].cancel()  # its request gave up before its group was taken
        gate.set()
        await batcher.close()
        outcomes = [
            "cancelled" if f.cancelled() else repr(f.exception()) if f.exception() else "ok"
            for f in futures
        ]
        return groups, outcomes, left

    groups, outcomes, left = asyncio.run(scenario())
    assert groups == [[3], [3, 3], [3]]  # 3+3 fits in 7 events, 3+3+3 does not
    assert outcomes == ["ok", "ok", "ok", "RuntimeError('store down')", "cancelled"]
    assert sorted(left) == [3] * 5  # every batch gave its room back, the dropped one too


class GatedWriter:
    """A plain ``write`` for a dedicated writer thread: the first call waits for
    :attr:`gate`, the third raises a permanent error."""

    dedicated_writer = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[int]] = []

    def write(self, commands: Sequence[int]) -> None:
        self.calls.append(list(commands))
        if len(self.calls) == 1 and not self.gate.wait(HANG_GUARD):
            raise TimeoutError("never released")
        if len(self.calls) == 3:
            raise Permanent("store said no")


def _retryable(error: BaseException) -> bool:
    return not isinstance(error, Permanent)


def dedicated_outlet(plugin: GatedWriter, max_events: int = 7) -> Outlet:
    impl = SimpleNamespace(function=plugin.write, argnames=("commands",), plugin=plugin)
    return Outlet(
        "sink:t",
        impl,
        acknowledging=True,
        batch=BatchPolicy(max_events=max_events),
        buffer=BufferConfig(),
        retry=RetryPolicy(RetryConfig(attempts=3, initial_backoff=0.001), _retryable),
        write_timeout=HANG_GUARD,
        executor=lambda: None,
    )


async def until(condition, polls: int = 6000) -> None:
    """Wait (a bounded number of loop turns) for ``condition()``; fail if it never holds."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def test_a_dedicated_writer_thread_groups_what_arrived_during_a_write():
    async def scenario() -> tuple:
        plugin = GatedWriter()
        outlet = dedicated_outlet(plugin)
        submits = [asyncio.create_task(outlet.submit([0, 0, 0], HANG_GUARD))]
        await until(lambda: len(plugin.calls) == 1)  # the first write holds the thread
        for n in range(1, 5):
            submits.append(asyncio.create_task(outlet.submit([n] * 3, HANG_GUARD)))
        await until(lambda: outlet.batcher.pending_events == 12)
        submits[4].cancel()  # its request gave up before its group was taken
        plugin.gate.set()
        outcomes = await asyncio.gather(*submits, return_exceptions=True)
        await outlet.close()
        return plugin.calls, outcomes, outlet.stats()

    calls, outcomes, stats = asyncio.run(scenario())
    # 3+3 fits in 7 events, 3+3+3 does not; the third write fails for good (Permanent
    # is not retried), the cancelled batch is never written.
    assert calls == [[0, 0, 0], [1, 1, 1, 2, 2, 2], [3, 3, 3]]
    assert outcomes[:3] == [None, None, None]
    assert repr(outcomes[3]) == "Permanent('store said no')"
    assert isinstance(outcomes[4], asyncio.CancelledError)
    assert (stats["writes"], stats["buffered_events"]) == (3, 0)  # every room given back


class FailsOnce(GatedWriter):
    def write(self, commands: Sequence[int]) -> None:
        self.calls.append(list(commands))
        if len(self.calls) == 1:
            raise ConnectionError("store away")


def test_a_dedicated_writer_retries_on_its_thread():
    async def scenario() -> tuple:
        plugin = FailsOnce()
        outlet = dedicated_outlet(plugin)
        await outlet.submit([7], HANG_GUARD)
        await outlet.close()
        return plugin.calls, outlet.retries

    calls, retries = asyncio.run(scenario())
    assert (calls, retries) == ([[7], [7]], 1)


def test_stopping_gives_up_a_hung_dedicated_writer_and_fails_what_waits():
    async def scenario() -> tuple:
        plugin = GatedWriter()
        outlet = dedicated_outlet(plugin, max_events=1)
        first = asyncio.create_task(outlet.submit([1], HANG_GUARD))
        await until(lambda: len(plugin.calls) == 1)
        second = asyncio.create_task(outlet.submit([2], HANG_GUARD))
        await until(lambda: outlet.batcher.pending_events == 1)
        closing = asyncio.create_task(outlet.close())
        await asyncio.sleep(0)
        still_closing = not closing.done()  # the hung write holds it
        outlet.cancel()  # what the bus does once its grace period is over
        await closing
        second_error = await asyncio.gather(second, return_exceptions=True)
        plugin.gate.set()  # let the thread end
        first_outcome = await asyncio.gather(first, return_exceptions=True)
        return still_closing, second_error[0], first_outcome[0], plugin.calls

    still_closing, second_error, first_outcome, calls = asyncio.run(scenario())
    assert still_closing
    assert repr(second_error) == "RuntimeError('sink:t stopped')"
    assert first_outcome is None  # its write finished after all: answered 200
    assert calls == [[1]]  # the batch that waited was never written


# -- the worker consumer's limits -----------------------------------------------------------
def sink(**blocks) -> SinkConfig:
    return config.convert({"type": "x", **blocks}, SinkConfig, "test.toml")


def test_the_consumer_cuts_batches_by_batch_and_never_past_the_buffer():
    policy = consumer_policy(sink(batch={"max_events": 500, "timeout": 0.2}))
    assert (policy.max_events, policy.max_bytes, policy.timeout) == (500, None, 0.2)
    policy = consumer_policy(
        sink(batch={"max_events": 500, "max_bytes": 10**6}, buffer={"max_events": 200})
    )
    assert (policy.max_events, policy.max_bytes) == (200, 10**6)
    policy = consumer_policy(sink(batch={"max_bytes": 10**6}, buffer={"max_bytes": 5000}))
    assert policy.max_bytes == 5000


def test_the_buffer_caps_the_consumers_prefetch():
    queue = QueueConfig(url="amqp://x//", prefetch=64, max_events_per_message=1000)
    assert consumer_prefetch(sink(), queue) == 64  # 100,000 events: 100 messages
    assert consumer_prefetch(sink(buffer={"max_events": 5000}), queue) == 5
    assert consumer_prefetch(sink(buffer={"max_events": 10}), queue) == 1


# -- the edge retries a sink's write --------------------------------------------------------
class Flaky(Sink):
    """Fails ``failures`` times with the configured error, then stores in memory."""

    class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        failures: int = 2
        permanent: bool = False

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[list[str]] = []
        self.stored: list[str] = []

    def write(self, commands: Sequence[Command]) -> None:
        self.calls.append([c.message_id for c in commands])
        if len(self.calls) <= self.options.failures:
            raise (Permanent if self.options.permanent else ConnectionError)("store said no")
        self.stored.extend(c.message_id for c in commands)


class FlakyPlugin:
    @hookimpl
    def eventrouter_sink_types(self):
        return {"flaky": Flaky}


FAST = {"attempts": 3, "initial_backoff": "10ms", "max_duration": "5s"}


def test_the_edge_retries_a_failed_write_and_answers_200(start_server):
    server = start_server(
        {"sinks": {"s": {"type": "flaky", "retry": FAST}}}, plugins=[FlakyPlugin()]
    )
    response = server.post("/v1/track", {"userId": "u", "event": "E", "messageId": "m1"})
    assert response.status_code == 200, response.text
    sink = server.app.bus.sinks["s"]
    assert sink.calls == [["m1"]] * 3  # the same batch each time
    assert sink.stored == ["m1"]
    stats = server.components()["sink:s"]["stats"]
    assert (stats["retries"], stats["failures"]) == (2, 0)
    assert 'eventrouter_sink_retries_total{sink="sink:s"} 2.0' in server.client.get("/metrics").text


def test_a_permanent_error_is_not_retried(start_server):
    sinks = {"s": {"type": "flaky", "permanent": True, "retry": FAST}}
    server = start_server({"sinks": sinks}, plugins=[FlakyPlugin()])
    response = server.post("/v1/track", {"userId": "u", "event": "E", "messageId": "m1"})
    assert response.status_code == 503
    assert "sink:s: Permanent" in response.json()["message"]
    assert server.app.bus.sinks["s"].calls == [["m1"]]


def test_when_the_retries_are_spent_the_request_gets_503(start_server):
    sinks = {"s": {"type": "flaky", "failures": 10, "retry": FAST}}
    server = start_server({"sinks": sinks}, plugins=[FlakyPlugin()])
    response = server.post("/v1/track", {"userId": "u", "event": "E", "messageId": "m1"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "sink:s: ConnectionError" in response.json()["message"]
    assert len(server.app.bus.sinks["s"].calls) == 3
    assert server.components()["sink:s"]["stats"]["retries"] == 2
