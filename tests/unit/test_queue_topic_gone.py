"""A ``Queue`` whose topic was deleted since it was opened (D80).

Its group's record, cursors, pending entries and wake-up word went with the topic.
Like SQS's ``QueueDoesNotExist`` on a deleted queue's handle (and RabbitMQ closing a
deleted queue's consumer with 404, Kafka's UnknownTopicOrPartition), every receive,
settle and inspection of that consumer raises :class:`mqlite.TopicNotFoundError`
saying to open a new queue consumer, also when a topic of the same name exists again:
the consumer never takes a message of the new topic, never writes the new topic's
group state, and a delivery of the old topic is never acked into the new one.  The
topic's identity is its first partition id (ids are never reused).

The cross-process cases drive a child through a pipe and events (no sleeps).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _children import stop_child
from _polling import queue_word
from _queue_waits import until_asleep

import mqlite
import mqlite.aio
from mqlite._storage import queues as _queues

WAIT_S = 30.0
WOKEN_S = 10.0
GONE = "open a new queue consumer"


def _records(broker: Any) -> dict[str, bytes | None]:
    """Every stored queue-group record, by name."""
    env = broker._engine.live_env()
    with broker._engine.read() as txn:
        return {qg: _queues.get_record(txn, env.dbs, qg)
                for qg, _, _ in _queues.all_groups(txn, env.dbs)}


def _calls(q: Any, ds: list[Any], broker: Any) -> dict[str, Callable[[], object]]:
    def in_transaction() -> None:
        with broker.transaction() as tx:
            tx.ack(ds)

    return {
        "receive": lambda: q.receive(1, timeout=0),
        "receive_step": lambda: q.receive_step(1),
        "Delivery.ack": lambda: ds[0].ack(),
        "ack": lambda: q.ack(ds),
        "nack": lambda: q.nack(ds),
        "extend": lambda: q.extend(ds, 1.0),
        "dead_letter": lambda: q.dead_letter(ds),
        "transaction ack": in_transaction,
        "lag": q.lag,
        "pending": q.pending,
    }


@pytest.mark.parametrize("again", [True, False], ids=["recreated", "deleted"])
def test_every_call_of_a_queue_whose_topic_was_deleted_raises(broker: Any, again: bool) -> None:
    broker.create_topic("t")
    broker.send("t", b"old")
    q = broker.queue("t", "g", visibility_timeout=WAIT_S)
    ds = q.receive(1, timeout=WAIT_S)
    assert [d.value for d in ds] == [b"old"]
    broker.delete_topic("t")
    if again:
        broker.create_topic("t")
        broker.send("t", b"new")  # offset 0 again, as "old" had
    for name, call in _calls(q, ds, broker).items():
        with pytest.raises(mqlite.TopicNotFoundError) as err:
            call()
        assert GONE in str(err.value) and "'t'" in str(err.value), name
        assert ("created again" in str(err.value)) == again, name
    q.close()  # releases nothing, writes nothing
    assert _records(broker) == {}
    if again:
        # the new topic's message was never taken: a new consumer gets its first delivery
        q2 = broker.queue("t", "g")
        got = q2.receive(1, timeout=WAIT_S)
        assert [(d.value, d.delivery_count) for d in got] == [(b"new", 1)]
        q2.close()


def test_an_old_delivery_is_never_acked_into_the_new_topic(broker: Any) -> None:
    """A delivery of the old topic given to a consumer of the new one (same group name,
    same offset) is stale: the new message stays pending."""
    broker.create_topic("t")
    broker.send("t", b"old")
    q = broker.queue("t", "g")
    old = q.receive(1, timeout=WAIT_S)
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.send("t", b"new")
    q2 = broker.queue("t", "g", visibility_timeout=WAIT_S)
    new = q2.receive(1, timeout=WAIT_S)
    assert [(d.offset, d.value) for d in new] == [(old[0].offset, b"new")]
    before = q2.pending()
    with pytest.raises(mqlite.StaleDeliveryError):
        q2.ack(old)
    with pytest.raises(mqlite.StaleDeliveryError):
        q2.nack(old)
    with pytest.raises(mqlite.TopicNotFoundError):
        q.ack(new)  # the new topic's delivery through the old consumer
    assert q2.pending() == before and q2.lag() == 1
    assert q2.ack(new) == 1
    q.close()
    q2.close()


def test_a_queue_opened_on_the_new_topic_works_beside_the_old_one(broker: Any) -> None:
    """The old consumer's close does not touch the new topic's group record."""
    broker.create_topic("t")
    q = broker.queue("t", "g")
    broker.delete_topic("t")
    broker.create_topic("t")
    q2 = broker.queue("t", "g")
    records = _records(broker)
    q.close()
    assert _records(broker) == records
    broker.send("t", b"x")
    assert [d.value for d in q2.receive(1, timeout=WAIT_S)] == [b"x"]
    q2.close()


def test_a_receiver_asleep_when_its_topic_is_deleted_and_created_again_raises(
        broker: Any, tmp_broker_dir: Path) -> None:
    """Woken by the deletion (every receiver of its group, D67), it raises at once, and
    the message sent to the new topic meanwhile is left for a new consumer."""
    import threading

    broker.create_topic("t")
    q = broker.queue("t", "g")
    out: list[tuple[str, float]] = []

    def receive() -> None:
        t0 = time.monotonic()
        try:
            got = q.receive(1, timeout=WAIT_S)
            out.append((f"got {[d.value for d in got]}", time.monotonic() - t0))
        except mqlite.MqliteError as exc:
            out.append((type(exc).__name__ + (" gone" if GONE in str(exc) else ""),
                        time.monotonic() - t0))

    t = threading.Thread(target=receive)
    t.start()
    until_asleep(tmp_broker_dir, [queue_word(broker, "t", "g")], 1)
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.send("t", b"new")
    t.join(WAIT_S + 10)
    assert [o for o, _ in out] == ["TopicNotFoundError gone"]
    assert out[0][1] < WOKEN_S, out
    q.close()
    q2 = broker.queue("t", "g")
    assert [(d.value, d.delivery_count) for d in q2.receive(1, timeout=WAIT_S)] == [(b"new", 1)]
    q2.close()


# -- across processes ----------------------------------------------------------------------

def _old_consumer(path: str, conn: Any, asleep: Any) -> None:
    """A consumer of group "g" in its own process: takes "old", then runs the parent's
    commands (``"ack"``, ``"nack"``, ``"receive"``: its outcome is sent back) until
    ``None``.  ``asleep`` is set just before a blocking receive."""
    with mqlite.open(path, durability="none") as b:
        q = b.queue("t", "g", visibility_timeout=WAIT_S * 4)
        ds = q.receive(1, timeout=WAIT_S)
        conn.send([d.value for d in ds])
        while (cmd := conn.recv()) is not None:
            try:
                if cmd == "ack":
                    ds[0].ack()
                elif cmd == "nack":
                    q.nack(ds)
                else:
                    asleep.set()
                    got = q.receive(1, timeout=WAIT_S)
                    conn.send(("returned", [d.value for d in got]))
                    continue
                conn.send(("settled", []))
            except mqlite.MqliteError as exc:
                conn.send((type(exc).__name__, str(exc)))
        q.close()


@pytest.fixture
def child(broker: Any, tmp_broker_dir: Path) -> Any:
    broker.create_topic("t")
    broker.send("t", b"old")
    ctx = mp.get_context("spawn")
    conn, child_end = ctx.Pipe()
    asleep = ctx.Event()
    proc = ctx.Process(target=_old_consumer, args=(str(tmp_broker_dir), child_end, asleep))
    proc.start()
    child_end.close()
    try:
        assert conn.poll(60), "the child did not take its message"
        assert conn.recv() == [b"old"]
        yield conn, asleep
    finally:
        stop_child(conn, proc)


def _ask(conn: Any, cmd: str) -> tuple[str, Any]:
    conn.send(cmd)
    assert conn.poll(WAIT_S + 30), f"no answer to {cmd!r}"
    result: tuple[str, Any] = conn.recv()
    return result


def test_another_process_cannot_settle_or_receive_after_delete_and_create(
        broker: Any, child: Any) -> None:
    conn, _ = child
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.send("t", b"new")
    for cmd in ("ack", "nack", "receive"):
        kind, text = _ask(conn, cmd)
        assert kind == "TopicNotFoundError" and GONE in text, (cmd, kind, text)
    q = broker.queue("t", "g")
    assert [(d.value, d.delivery_count) for d in q.receive(1, timeout=WAIT_S)] == [(b"new", 1)]
    q.close()


def test_a_receiver_in_another_process_asleep_at_the_deletion_raises(
        broker: Any, child: Any, tmp_broker_dir: Path) -> None:
    conn, asleep = child
    conn.send("receive")
    assert asleep.wait(60)
    until_asleep(tmp_broker_dir, [queue_word(broker, "t", "g")], 1)
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.send("t", b"new")
    assert conn.poll(WOKEN_S), "the sleeping receiver was not ended by the deletion"
    kind, text = conn.recv()
    assert kind == "TopicNotFoundError" and GONE in text, (kind, text)
    q = broker.queue("t", "g")
    assert [d.value for d in q.receive(1, timeout=WAIT_S)] == [b"new"]
    q.close()


# -- mqlite.aio ----------------------------------------------------------------------------

def test_an_async_queue_whose_topic_was_recreated_raises(tmp_broker_dir: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            await b.send("t", b"old")
            q = b.queue("t", "g", visibility_timeout=WAIT_S)
            ds = await q.receive(1, timeout=WAIT_S)
            await b.delete_topic("t")
            await b.create_topic("t")
            await b.send("t", b"new")
            for call in (lambda: q.receive(1, timeout=0.01), lambda: ds[0].ack(),
                         lambda: q.ack(ds), lambda: q.nack(ds), q.lag):
                with pytest.raises(mqlite.TopicNotFoundError, match=GONE):
                    await call()
            await q.close()
            q2 = b.queue("t", "g")
            got = await q2.receive(1, timeout=WAIT_S)
            assert [(d.value, d.delivery_count) for d in got] == [(b"new", 1)]
            await q2.close()

    asyncio.run(main())
