"""Batch handlers (``batch=True``), ``commit_interval`` and ``None`` replies to requests."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest

import mqlite
from mqlite.app import TestApp


class Item(msgspec.Struct):
    id: int


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_batch_handler_gets_typed_lists_in_order_and_commits(kind: str) -> None:
    app = mqlite.App("unused")
    got: list[list[Item]] = []

    if kind == "sync":
        @app.subscriber("t", group="g", batch=True, max_records=7)
        def h(items: list[Item]) -> None:
            got.append(items)
    else:
        @app.subscriber("t", group="g", batch=True, max_records=7)
        async def ah(items: list[Item]) -> None:
            await asyncio.sleep(0)
            got.append(items)

    with TestApp(app) as t:
        for i in range(50):
            t.publish("t", {"id": i})
        t.wait_idle()
        assert [x.id for b in got for x in b] == list(range(50))
        assert all(1 <= len(b) <= 7 for b in got)
        assert all(isinstance(x, Item) for b in got for x in b)
        assert app.broker.committed_offsets("g", "t") == {0: 50}


def test_batch_handler_retries_the_batch_then_dead_letters_each_message() -> None:
    app = mqlite.App("unused")
    calls: list[list[int]] = []

    @app.subscriber("t", group="g", batch=True, max_records=100, retries=2, backoff=0.01,
                    dead_letter="t.dlq")
    def h(items: list[dict]) -> None:
        calls.append([x["id"] for x in items])
        if any(x["id"] == 3 for x in items):
            raise RuntimeError("boom")

    with TestApp(app) as t:
        t.publish("t", b"not json")  # undecodable: dead-lettered alone, left out of the list
        for i in range(5):
            t.publish("t", {"id": i})
        t.wait_idle()
        # whole list tried 1 + retries times (a fetch may split the five: each part apart)
        assert sorted(i for c in calls for i in c if i == 3) == [3, 3, 3]
        dls = t.dead_letters("t.dlq")
        reasons = [d.reason for d in dls]
        assert "invalid payload" in reasons
        assert any(r == "retries exhausted" for r in reasons)
        assert app.broker.committed_offsets("g", "t") == {0: 6}


def test_batch_handler_reject_is_permanent() -> None:
    app = mqlite.App("unused")
    n = {"calls": 0}

    @app.subscriber("t", group="g", batch=True, retries=5, dead_letter="t.dlq")
    def h(items: list[int]) -> None:
        n["calls"] += 1
        raise mqlite.Reject("no")

    with TestApp(app) as t:
        t.publish("t", 1)
        t.wait_idle()
        assert n["calls"] == 1 and len(t.dead_letters("t.dlq")) == 1


@pytest.mark.parametrize("kwargs, err", [
    ({"mode": "queue"}, ValueError), ({"exactly_once": True}, ValueError),
    ({"ack": "manual"}, ValueError), ({"idempotency_key": str}, ValueError),
    ({"max_records": 0}, ValueError), ({"commit_interval": -1}, ValueError),
    ({"commit_interval": "1"}, TypeError),
])
def test_batch_handler_bad_options(kwargs: dict, err: type) -> None:
    app = mqlite.App("unused")
    with pytest.raises(err):
        app.subscriber("t", batch=True, **kwargs)(lambda items: None)


def test_batch_handler_signatures_and_publisher_refused() -> None:
    app = mqlite.App("unused")
    with pytest.raises(TypeError, match="list"):
        @app.subscriber("t", batch=True)
        def h1(item: int) -> None: ...
    with pytest.raises(TypeError, match="ctx"):
        @app.subscriber("t", batch=True)
        def h2(items: list[int], ctx: mqlite.Context) -> None: ...
    with pytest.raises(ValueError, match="not both"):
        app.subscriber("t", batch=10, max_records=20)(lambda x: None)

    @app.subscriber("t", batch=True)
    @app.publisher("out")
    def h3(items: list[int]) -> int:
        return 1

    with pytest.raises(ValueError, match="publisher"), TestApp(app):
        pass


def test_commit_interval_still_commits_when_caught_up_and_at_stop(tmp_broker_dir) -> None:
    app = mqlite.App("unused")
    gate = threading.Event()

    @app.subscriber("t", group="g", commit_interval=60, partitions=2)
    def h(x: int) -> None:
        gate.wait(30)

    with TestApp(app, path=str(tmp_broker_dir)) as t:
        for i in range(20):
            t.publish("t", i, partition=i % 2)
        gate.set()
        t.wait_idle()  # caught up: committed long before 60 s
        assert app.broker.committed_offsets("g", "t") == {0: 10, 1: 10}
        for i in range(4):
            t.publish("t", i, partition=0)
        t.wait_idle()
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert b.committed_offsets("g", "t") == {0: 14, 1: 10}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_request_to_a_handler_returning_none_gets_a_none_reply(kind: str) -> None:
    app = mqlite.App("unused")

    if kind == "sync":
        @app.subscriber("cmd")
        def h(x: object) -> None:
            return None
    else:
        @app.subscriber("cmd")
        async def ah(x: object) -> None:
            return None

    @app.subscriber("cmd2")
    def h2(x: object, ctx: mqlite.Context) -> None:  # the per-message (not lean) path
        return None

    with TestApp(app) as t:
        assert app.request_sync("cmd", {"a": 1}, timeout=30) is None
        assert asyncio.run(app.request("cmd", {"a": 2}, timeout=30)) is None
        assert app.request_sync("cmd2", 3, timeout=30) is None
        t.wait_idle()


def test_async_subscribers_fetch_on_the_loop_with_no_thread_per_subscriber() -> None:
    app = mqlite.App("unused")
    n = 12
    got: dict[int, list[int]] = {i: [] for i in range(n)}

    def register(i: int) -> None:
        @app.subscriber(f"t{i}", group=f"g{i}", name=f"h{i}")
        async def h(x: int) -> None:
            got[i].append(x)

    for i in range(n):
        register(i)
    with TestApp(app) as t:
        names = [th.name for th in threading.enumerate()]
        assert not [x for x in names if x.startswith("mqlite-fetch-")], names
        # besides the process's group watcher thread (the group layer's, D41), a fixed few:
        # the loop, its doorbell listener, aio / I/O workers; not one per waiting poll
        assert len([x for x in names if not x.startswith("mqlite-group-")]) < 8, names
        for i in range(n):
            t.publish(f"t{i}", i)
        t.wait_idle()
        assert got == {i: [i] for i in range(n)}


def test_a_backend_without_an_asyncio_consumer_falls_back_to_a_thread(monkeypatch) -> None:
    from mqlite.app import runner
    from mqlite.app.backend import ThreadedAsyncConsumer

    def threaded(backend, topics, group, **kw):  # a backend with no async_stream_consumer
        return ThreadedAsyncConsumer(backend.stream_consumer(topics, group, **kw))

    monkeypatch.setattr(runner, "async_stream_consumer", threaded)
    app = mqlite.App("unused")
    got: list[int] = []

    @app.subscriber("t", group="g")
    async def h(x: int) -> None:
        got.append(x)

    with TestApp(app) as t:
        for i in range(30):
            t.publish("t", i)
        t.wait_idle()
        assert got == list(range(30))
        assert app.broker.committed_offsets("g", "t") == {0: 30}
