"""The same behaviour and errors through ``mqlite`` and ``mqlite.aio`` (parametrised by ``api``).

Each test body is a coroutine run once with the synchronous broker (behind an
awaitable proxy, tests/aio/conftest.py) and once with :mod:`mqlite.aio`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import mqlite
from mqlite import TopicPartition


def test_topics_send_poll_commit(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("orders", partitions=2)
        assert await b.topics() == ["orders"]
        desc = await b.describe_topic("orders")
        assert len(desc.partitions) == 2
        md = await b.send("orders", b"v0", key=b"k", headers=[("h", b"x")])
        assert (md.topic, md.offset) == ("orders", 0)
        batch = await b.send_batch("orders", [b"a", b"b", b"c"], partition=md.partition)
        assert len(batch) == 3
        c = b.consumer("orders", group="g")
        got = await c.poll(max_records=10, timeout=1.0)
        assert [m.value for m in got] == [b"v0", b"a", b"b", b"c"]
        assert got[0].headers == [("h", b"x")]
        await c.commit()
        tp = TopicPartition("orders", md.partition)
        assert await c.committed(tp) == 4
        assert await c.committed([tp]) == {tp: 4}
        assert await c.position(tp) == 4
        assert (await c.lag())[tp] == 0
        c.seek(tp, 1)
        again = await c.poll(max_records=10, timeout=1.0)
        assert [m.offset for m in again] == [1, 2, 3]
        desc_g = await b.describe_group("g")
        assert desc_g.group == "g"
        await c.close()
        assert c.closed

    run(body)


def test_poll_times_out_empty(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t")
        c = b.consumer("t")
        assert await c.poll(timeout=0.05) == []
        await c.close()

    run(body)


def test_errors_are_the_same(run: Any) -> None:
    async def body(b: Any) -> None:
        with pytest.raises(mqlite.TopicNotFoundError):
            await b.send("missing", b"v")
        await b.create_topic("t")
        with pytest.raises(mqlite.TopicExistsError):
            await b.create_topic("t")
        with pytest.raises(TypeError):
            await b.send("t", "not bytes")
        with pytest.raises(mqlite.InvalidTopicError):
            await b.create_topic("bad/name")
        c = b.consumer("t")
        with pytest.raises(ValueError):
            await c.poll(max_records=0)
        with pytest.raises(ValueError):
            await c.poll(timeout=-1)
        with pytest.raises(ValueError):
            await c.commit()  # no group
        await c.close()
        with pytest.raises(mqlite.ClosedError):
            await c.poll(timeout=0.01)
        with pytest.raises(mqlite.TopicNotFoundError):
            b.consumer("missing")

    run(body)


def test_iteration_yields_in_order(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t")
        for i in range(5):
            await b.send("t", b"%d" % i)
        c = b.consumer("t")
        seen = []
        async for m in c:
            seen.append(m.value)
            if len(seen) == 5:
                break
        assert seen == [b"0", b"1", b"2", b"3", b"4"]
        await c.close()

    run(body)


def test_queue_receive_ack_nack_dead_letter(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("jobs")
        for i in range(4):
            await b.send("jobs", b"j%d" % i)
        q = b.queue("jobs", "workers", max_deliveries=2, dead_letter_topic="jobs.dlq")
        ds = await q.receive(max_messages=10, timeout=1.0)
        assert [d.value for d in ds] == [b"j0", b"j1", b"j2", b"j3"]
        assert all(d.delivery_count == 1 for d in ds)
        await ds[0].ack()
        with pytest.raises(mqlite.StaleDeliveryError):
            await ds[0].ack()
        await ds[1].nack(delay=0.0)
        await ds[2].extend(60.0)
        await ds[3].dead_letter("bad")
        again = await q.receive(max_messages=10, timeout=1.0)
        assert [(d.value, d.delivery_count) for d in again] == [(b"j1", 2)]
        await again[0].nack(delay=0.0)  # second delivery was the last: dead-lettered
        dead = await b.dead_letters("jobs.dlq")
        assert sorted(x.message.value for x in dead) == [b"j1", b"j3"]
        assert await q.receive(max_messages=10, timeout=0.05) == []
        assert await q.lag() == 1  # j2, extended
        await q.close()

    run(body)


def test_queue_batch_ack(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("jobs")
        await b.send_batch("jobs", [b"%d" % i for i in range(50)])
        q = b.queue("jobs", "w")
        ds = await q.receive(max_messages=100, timeout=1.0)
        assert len(ds) == 50
        assert await q.ack(ds) == 50
        assert await q.lag() == 0
        await q.close()

    run(body)


def test_producer_sends_resolve_at_commit(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t", partitions=1)
        p = b.producer()
        mds = [await p.send("t", b"%d" % i) for i in range(20)]
        assert [md.offset for md in mds] == list(range(20))
        c = b.consumer("t")
        assert len(await c.poll(max_records=100, timeout=1.0)) == 20
        with pytest.raises(TypeError):
            await p.send("t", "str")
        await p.close()
        await c.close()

    run(body)


def test_transaction_is_atomic(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("in")
        await b.create_topic("out")
        await b.send("in", b"x")
        c = b.consumer("in", group="g", commit="manual")
        msgs = await c.poll(timeout=1.0)
        assert len(msgs) == 1
        with pytest.raises(RuntimeError):
            async with b.transaction() as tx:
                tx.send("out", b"never")
                raise RuntimeError("boom")
        async with b.transaction() as tx:
            tx.send("out", b"y")
            tx.commit_offsets(c)
        assert await c.committed(TopicPartition("in", 0)) == 1
        r = b.consumer("out")
        assert [m.value for m in await r.poll(timeout=1.0)] == [b"y"]
        await c.close()
        await r.close()

    run(body)


def test_exchanges_publish(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("audit")
        await b.create_topic("us")
        await b.declare_exchange("events", "topic")
        assert await b.exchanges() == ["events"]
        await b.bind("events", "audit", routing_key="order.#")
        await b.bind("events", "us", routing_key="order.us.*")
        mds = await b.publish("events", "order.us.created", b"v")
        assert sorted(md.topic for md in mds) == ["audit", "us"]
        assert await b.publish("events", "user.x", b"v") == []
        with pytest.raises(mqlite.UnroutableError):
            await b.publish("events", "user.x", b"v", mandatory=True)
        await b.unbind("events", "us", routing_key="order.us.*")
        assert [md.topic for md in await b.publish("events", "order.us.x", b"v")] == ["audit"]

    run(body)


def test_delayed_send_becomes_visible(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t")
        md = await b.send("t", b"later", delay=0.2)
        assert md.offset == -1
        c = b.consumer("t")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await c.poll(timeout=10.0)
        assert [m.value for m in got] == [b"later"]
        assert loop.time() - t0 < 9.0
        await c.close()

    run(body)


def test_claims(run: Any) -> None:
    async def body(b: Any) -> None:
        assert await b.claim("e1") is True
        assert await b.claim("e1") is False
        assert await b.is_processed("e1") is True

    run(body)


def test_closed_broker_refuses(run: Any) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t")
        await b.close()
        with pytest.raises(mqlite.ClosedError):
            await b.send("t", b"v")
        with pytest.raises(mqlite.ClosedError):
            await b.topics()

    run(body)


@pytest.mark.parametrize("policy", ["after", "before", "manual"])
def test_group_commit_policies(run: Any, policy: str) -> None:
    async def body(b: Any) -> None:
        await b.create_topic("t")
        await b.send_batch("t", [b"a", b"b"])
        c = b.consumer("t", group="g", commit=policy)
        assert [m.value for m in await c.poll(timeout=1.0)] == [b"a", b"b"]
        tp = TopicPartition("t", 0)
        if policy == "before":
            assert await c.committed(tp) == 2
        await b.send("t", b"c")
        assert [m.value for m in await c.poll(timeout=1.0)] == [b"c"]
        if policy == "after":
            assert await c.committed(tp) == 2  # the second poll committed the first's
        if policy == "manual":
            assert await c.committed(tp) is None
            await c.commit()
        await c.close()
        assert (await b.committed_offsets("g", "t"))[0] == 3

    run(body)
