"""Async queue-mode subscribers and ``concurrency > 1`` on ``mqlite.aio`` (D40).

No fetch thread: the fetch loop is a task on the App's loop, and jobs run
inline (``concurrency=1``) or as tasks beside it.  Every semantic of the
threaded runtime holds: acks, retries, dead letters, contiguous commits,
graceful shutdown.
"""

from __future__ import annotations

import asyncio
import threading

import mqlite
from mqlite.app import TestApp


def _fetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mqlite-fetch-")]


def test_async_queue_and_concurrent_subscribers_fetch_on_the_loop() -> None:
    app = mqlite.App("unused", partitions=4)
    got: dict[str, list[int]] = {"q1": [], "q4": [], "s4": []}
    running = {"q4": 0, "s4": 0}
    peak = {"q4": 0, "s4": 0}

    async def work(name: str, x: int) -> None:
        if name in running:
            running[name] += 1
            peak[name] = max(peak[name], running[name])
            await asyncio.sleep(0.01)
            running[name] -= 1
        got[name].append(x)

    @app.subscriber("jobs1", group="q1", mode="queue")
    async def q1(x: int, ctx: mqlite.Context) -> None:
        assert isinstance(ctx.message, mqlite.Delivery)
        await work("q1", x)

    @app.subscriber("jobs4", group="q4", mode="queue", concurrency=4, batch=8)
    async def q4(x: int) -> None:
        await work("q4", x)

    @app.subscriber("events", group="s4", concurrency=4)
    async def s4(x: int) -> None:
        await work("s4", x)

    with TestApp(app) as t:
        assert _fetch_threads() == []
        for i in range(40):
            t.publish("jobs1", i)
            t.publish("jobs4", i)
            t.publish("events", i, partition=i % 4)
        t.wait_idle()
        assert _fetch_threads() == []
        assert sorted(got["q1"]) == sorted(got["q4"]) == sorted(got["s4"]) == list(range(40))
        assert peak["q4"] > 1 and peak["s4"] > 1  # jobs ran side by side on the loop
        assert app.broker.committed_offsets("s4", "events") == {p: 10 for p in range(4)}
        assert app.broker.queue("jobs4", "q4").lag() == 0


def test_async_queue_retries_with_attempts_then_dead_letters() -> None:
    app = mqlite.App("unused")
    attempts: dict[int, list[int]] = {}

    @app.subscriber("jobs", group="w", mode="queue", concurrency=3, retries=2, backoff=0.01,
                    dead_letter="jobs.dlq")
    async def h(x: int, ctx: mqlite.Context) -> None:
        attempts.setdefault(x, []).append(ctx.attempt)
        await asyncio.sleep(0)
        if x == 1 and ctx.attempt == 1:
            raise RuntimeError("transient once")
        if x == 2:
            raise RuntimeError("always")
        if x == 3:
            raise mqlite.Reject("bad job")

    with TestApp(app) as t:
        for x in range(6):
            t.publish("jobs", x)
        t.wait_idle()
        assert attempts[1] == [1, 2]
        assert attempts[2] == [1, 2, 3]  # retries=2: three attempts, then the DLQ
        assert attempts[3] == [1]  # permanent: straight to the DLQ
        assert all(attempts[x] == [1] for x in (0, 4, 5))
        letters = {int(d.message.value): d for d in app.dead_letters("jobs.dlq")}
        assert sorted(letters) == [2, 3]
        assert letters[2].delivery_count == 3 and letters[3].delivery_count == 1


def test_async_queue_stop_finishes_in_flight_jobs_and_releases_the_rest(tmp_broker_dir) -> None:
    app = mqlite.App(tmp_broker_dir, durability="none")
    started: list[int] = []
    finished: list[int] = []
    four_in = threading.Event()
    release: list[asyncio.Event] = []

    @app.subscriber("jobs", group="w", mode="queue", concurrency=4, batch=16)
    async def h(x: int) -> None:
        if not release:
            release.append(asyncio.Event())
        started.append(x)
        if len(started) == 4:
            four_in.set()
        await release[0].wait()
        finished.append(x)

    app.start()
    for x in range(16):
        app.publish("jobs", x)
    assert four_in.wait(30)
    (runner,) = app._runners
    stop_requested = threading.Event()
    request_stop = runner.request_stop

    def request_and_tell() -> None:
        request_stop()
        stop_requested.set()
    runner.request_stop = request_and_tell  # type: ignore[method-assign]
    stopper = threading.Thread(target=app.stop)
    stopper.start()
    assert stop_requested.wait(30)  # no job starts another message from here on
    app._event_loop().call_soon_threadsafe(release[0].set)
    stopper.join(60)
    assert not stopper.is_alive()
    assert sorted(finished) == sorted(started) and len(started) == 4
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        q = b.queue("jobs", "w")
        rest = [int(d.value or b"") for d in q.receive(max_messages=100, timeout=5)]
        assert sorted(rest + finished) == list(range(16))  # none lost, none twice
        q.close()


def test_stop_releases_the_aio_handle_of_a_callers_broker_and_leaves_it_open(
        tmp_broker_dir) -> None:
    def aio_threads() -> list[str]:
        return [t.name for t in threading.enumerate()
                if t.name.startswith("mqlite-aio") and t.is_alive()]

    assert aio_threads() == []
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        app = mqlite.App(b)
        got: list[int] = []

        @app.subscriber("t", group="g")
        async def h(x: int) -> None:
            got.append(x)

        @app.subscriber("jobs", group="w", mode="queue")
        async def q(x: int) -> None:
            got.append(-x)

        with app:
            app.publish("t", 1)
            app.publish("jobs", 2)
            app.wait_idle()
            # the aio handle's workers run (the doorbell is an io_uring wait where the
            # kernel has one, else a "mqlite-aio-bell" thread: D41)
            assert aio_threads()
        assert sorted(got) == [-2, 1]
        for th in threading.enumerate():  # AsyncBroker.detach(): doorbell and workers end
            if th.name.startswith("mqlite-aio"):
                th.join(30)
        assert aio_threads() == []
        assert not b.closed
        b.send("t", b"3")  # the caller's broker is still open and usable
        assert b.committed_offsets("g", "t") == {0: 1}
