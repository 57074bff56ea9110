"""Queue mode in one process: receive/ack, visibility, tokens, nack/backoff, DLQ,
cleanup="consumed", threads, inspection and argument checking."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from _values import value

import mqlite
from mqlite import Backoff, StaleDeliveryError


@pytest.fixture
def broker(tmp_broker_dir):
    b = mqlite.open(tmp_broker_dir, durability="none")
    yield b
    b.close()


def _fill(broker, topic, n, partitions=1, **cfg):
    broker.create_topic(topic, partitions=partitions, **cfg)
    if n:
        broker.send_batch(topic, [b"%d" % i for i in range(n)])


# -- basics ---------------------------------------------------------------------------------

def test_receive_returns_deliveries_that_are_messages(broker):
    broker.create_topic("t")
    broker.send("t", b"v", key=b"k", headers=[("h", b"1")], timestamp_ms=1234)
    with broker.queue("t", "g") as q:  # group positional
        (d,) = q.receive(10, timeout=0)
        assert isinstance(d, mqlite.Message) and isinstance(d, mqlite.Delivery)
        assert (d.topic, d.partition, d.offset, d.timestamp_ms) == ("t", 0, 0, 1234)
        assert (d.key, d.value, d.headers) == (b"k", b"v", [("h", b"1")])
        assert d.delivery_count == 1
        assert d.visible_at_ms > time.time() * 1000
        assert "delivery_count=1" in repr(d)
        d.ack()
        assert q.lag() == 0 and q.pending() == []


def test_group_by_keyword_and_every_group_gets_every_message(broker):
    _fill(broker, "t", 30)
    a = broker.queue("t", group="a")
    b = broker.queue("t", "b")
    got_a = a.receive(100, timeout=0)
    got_b = b.receive(100, timeout=0)
    assert [d.value for d in got_a] == [d.value for d in got_b] == [b"%d" % i for i in range(30)]
    assert a.ack(got_a) == 30 and b.ack(got_b) == 30
    assert a.receive(10, timeout=0) == [] and a.lag() == 0
    a.close()
    b.close()


def test_competing_consumers_never_share_a_message(broker):
    _fill(broker, "t", 100, partitions=3)
    q1 = broker.queue("t", group="g")
    q2 = broker.queue("t", group="g")
    seen = []
    while True:
        ds = q1.receive(7, timeout=0) + q2.receive(5, timeout=0)
        if not ds:
            break
        seen += [(d.partition, d.offset) for d in ds]
        q1.ack([d for d in ds if d._queue is q1])
        q2.ack([d for d in ds if d._queue is q2])
    assert len(seen) == len(set(seen)) == 100
    q1.close()
    q2.close()


def test_ack_many_counts_and_stale_ack_changes_nothing(broker):
    _fill(broker, "t", 10)
    q = broker.queue("t", group="g")
    ds = q.receive(10, timeout=0)
    assert q.ack(ds[:4]) == 4
    with pytest.raises(StaleDeliveryError):
        ds[0].ack()
    with pytest.raises(StaleDeliveryError) as ei:
        q.ack(ds[2:6])  # two already acked, two valid
    assert ei.value.stale == ds[2:4] and ei.value.settled == 2
    assert q.lag() == 4
    assert q.ack([]) == 0
    q.close()


def test_visibility_timeout_redelivers_with_count_and_old_token_is_stale(broker):
    _fill(broker, "t", 3)
    q = broker.queue("t", group="g", visibility_timeout=0.2)
    first = q.receive(10, timeout=0)
    assert q.receive(10, timeout=0) == []  # invisible while held
    again = q.receive(10, timeout=2.0)  # waits for the deadline, no polling needed
    assert [d.offset for d in again] == [0, 1, 2]
    assert all(d.delivery_count == 2 for d in again)
    before = q.pending()
    for op in (lambda d: d.ack(), lambda d: d.nack(), lambda d: d.extend(5),
               lambda d: d.dead_letter()):
        with pytest.raises(StaleDeliveryError):
            op(first[0])
    assert q.pending() == before  # the late settles changed nothing
    q.ack(again)
    assert q.lag() == 0
    q.close()


def test_partial_redelivery_takes_part_of_a_range_and_stales_the_rest(broker):
    _fill(broker, "t", 10)
    q = broker.queue("t", group="g", visibility_timeout=0.1)
    old = q.receive(10, timeout=0)
    time.sleep(0.15)
    # Long visibility from here on: a loaded box must not let these expire again.
    part = q.receive(4, timeout=0, visibility_timeout=60)
    assert [d.offset for d in part] == [0, 1, 2, 3]
    with pytest.raises(StaleDeliveryError):
        old[7].ack()  # expired and handed back: not this consumer's any more
    rest = q.receive(10, timeout=0, visibility_timeout=60)
    assert [d.offset for d in rest] == [4, 5, 6, 7, 8, 9]
    assert {d.delivery_count for d in part + rest} == {2}
    q.ack(part + rest)
    assert q.lag() == 0
    q.close()


def test_per_receive_visibility_timeout_and_extend(broker):
    """A receive's own visibility timeout sets its deliveries' deadline, and extend moves
    the deadline of the ones extended: judged by the stored deadlines and by what a
    blocking receive gets when the first deadline passes, not by a fixed sleep (a stalled
    machine only delays every step)."""
    _fill(broker, "t", 4)
    q = broker.queue("t", group="g", visibility_timeout=30)
    t0 = time.time_ns() // 1_000_000
    ds = q.receive(4, timeout=0, visibility_timeout=1.0)
    t1 = time.time_ns() // 1_000_000
    assert [d.offset for d in ds] == [0, 1, 2, 3]
    ds[0].extend(30.0)  # only this one and the next stay hidden
    q.extend(ds[1:2], 30.0)
    t2 = time.time_ns() // 1_000_000
    vis = {p["offset"]: p["visible_at_ms"] for p in q.pending()}
    assert t0 + 1000 <= vis[2] == vis[3] <= t1 + 1000  # the receive's 1 s, not the queue's 30
    assert t1 + 30_000 <= vis[0] <= t2 + 30_000  # moved by extend, counted from the extend
    assert t1 + 30_000 <= vis[1] <= t2 + 30_000
    again = q.receive(10, timeout=25.0)  # waits for the first deadline, that of 2 and 3
    got = time.time_ns() // 1_000_000
    assert [d.offset for d in again] == [2, 3]
    assert got >= vis[2] and all(d.delivery_count == 2 for d in again)
    ds[0].ack()  # still valid: their deadline was moved
    ds[1].ack()
    q.ack(again)
    assert q.lag() == 0
    q.close()


def test_nack_default_backoff_and_delay_override(broker):
    _fill(broker, "t", 2)
    q = broker.queue("t", group="g", retry_backoff=Backoff.fixed(2.0))
    a, b = q.receive(2, timeout=0)
    t0 = time.monotonic()
    a.nack()  # backoff: visible after 2 s
    b.nack(delay=0)  # override: at once
    (d,) = q.receive(10, timeout=0)
    assert d.offset == 1 and d.delivery_count == 2
    (e,) = q.receive(10, timeout=30.0)
    assert e.offset == 0 and e.delivery_count == 2
    assert time.monotonic() - t0 >= 1.95  # not before its backoff (no upper bound: load)
    q.ack([d, e])
    q.close()


def test_nack_without_backoff_redelivers_at_once_and_records_error(broker):
    _fill(broker, "t", 1)
    q = broker.queue("t", group="g")
    (d,) = q.receive(1, timeout=0)
    d.nack(error="db down")
    (p,) = q.pending()
    assert p["last_error"] == "db down" and p["owner"] is None and p["delivery_count"] == 1
    (d2,) = q.receive(1, timeout=0)
    assert d2.delivery_count == 2
    d2.ack()
    q.close()


def test_backoff_policies():
    assert Backoff.fixed(2.5).delay(1) == Backoff.fixed(2.5).delay(9) == 2.5
    e = Backoff.exponential(base=0.5, cap=3.0, jitter=0.0)
    assert [e.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert Backoff.exponential(base=1, cap=10, jitter=0, multiplier=3).delay(3) == 9
    j = Backoff.exponential(base=1.0, cap=8.0, jitter=0.5)
    rng = random.Random(1)
    ds = [j.delay(4, rng) for _ in range(500)]
    assert all(4.0 <= x <= 8.0 for x in ds) and max(ds) - min(ds) > 2.0
    assert Backoff(kind="exponential", base=1, cap=1e9, jitter=0).delay(10_000) == 1e9
    with pytest.raises(ValueError):
        Backoff(kind="linear")
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
    with pytest.raises(TypeError):
        Backoff(base="1")  # type: ignore[arg-type]  # checks the TypeError


# -- dead letters -----------------------------------------------------------------------------

def test_poison_message_dead_lettered_after_exactly_max_deliveries(broker):
    broker.create_topic("t", partitions=2)
    broker.send("t", b"ok", partition=0)
    broker.send("t", b"poison", key=b"p", partition=1, headers=[("trace", b"t1")])
    q = broker.queue("t", group="g", max_deliveries=3, dead_letter_topic="t.dlq")
    counts = []
    t_start = int(time.time() * 1000)
    for _ in range(10):
        ds = q.receive(10, timeout=0)
        if not ds:
            break
        for d in ds:
            if d.value == b"poison":
                counts.append(d.delivery_count)
                d.nack(error=f"attempt {d.delivery_count} failed")
            else:
                d.ack()
    assert counts == [1, 2, 3]
    assert q.lag() == 0
    (dl,) = broker.dead_letters("t.dlq")
    h = dict(dl.message.headers)
    assert dl.message.value == b"poison" and dl.message.key == b"p" and h["trace"] == b"t1"
    assert h["x-original-topic"] == b"t" and h["x-original-partition"] == b"1"
    assert h["x-original-offset"] == b"0" and h["x-delivery-count"] == b"3"
    assert h["x-last-error"] == b"attempt 3 failed"
    assert h["x-original-group"] == b"g"
    assert h["x-dead-letter-reason"] == b"max deliveries exceeded"
    assert t_start <= int(h["x-first-delivery-ms"]) <= int(h["x-last-delivery-ms"])
    assert int(h["x-last-delivery-ms"]) <= int(h["x-dead-lettered-ms"])
    assert (dl.original_topic, dl.original_partition, dl.original_offset) == ("t", 1, 0)
    assert dl.delivery_count == 3 and dl.last_error == "attempt 3 failed"
    # redrive: back to the original topic and partition, without the x- headers
    assert broker.redrive("t.dlq") == 1
    assert broker.dead_letters("t.dlq") == []
    assert broker.redrive("t.dlq") == 0  # never twice
    (d,) = q.receive(10, timeout=0)
    assert (d.value, d.partition, d.delivery_count) == (b"poison", 1, 1)
    assert d.headers == [("trace", b"t1")]
    d.ack()
    q.close()


def test_timeouts_count_towards_max_deliveries(broker):
    _fill(broker, "t", 1)
    q = broker.queue("t", group="g", visibility_timeout=0.05, max_deliveries=2,
                     dead_letter_topic="dlq")
    assert q.receive(1, timeout=0)[0].delivery_count == 1
    assert q.receive(1, timeout=30)[0].delivery_count == 2  # once visible again
    time.sleep(0.1)
    assert q.receive(1, timeout=0) == []  # third time due: moved instead
    (dl,) = broker.dead_letters("dlq")
    assert dl.last_error == "visibility timeout expired" and dl.delivery_count == 2
    q.close()


def test_dead_letter_now_and_without_dlq_topic_drops(broker):
    _fill(broker, "t", 3)
    q = broker.queue("t", group="g", dead_letter_topic="dlq")
    a, b, c = q.receive(3, timeout=0)
    b.dead_letter(reason="bad schema")
    (dl,) = broker.dead_letters("dlq")
    assert dl.reason == "bad schema" and dl.original_offset == 1 and dl.delivery_count == 1
    q.ack([a, c])
    q.close()
    _fill(broker, "u", 1)
    q2 = broker.queue("u", group="g", max_deliveries=1)
    (d,) = q2.receive(1, timeout=0)
    d.nack()
    assert q2.receive(1, timeout=0) == [] and q2.lag() == 0
    q2.close()


def test_dlq_list_redrive_filtered_and_purge(broker):
    _fill(broker, "t", 6)
    q = broker.queue("t", group="g", dead_letter_topic="dlq")
    ds = q.receive(6, timeout=0)
    q.dead_letter(ds, reason="x")
    assert [dl.original_offset for dl in broker.dead_letters("dlq")] == list(range(6))
    assert [dl.original_offset for dl in broker.dead_letters("dlq", limit=2)] == [0, 1]
    assert broker.redrive("dlq", where=lambda dl: dl.original_offset % 2 == 0) == 3
    assert [dl.original_offset for dl in broker.dead_letters("dlq")] == [1, 3, 5]
    assert broker.redrive("dlq", limit=1, to_topic="other") == 0  # "other" does not exist
    broker.create_topic("other")
    assert broker.redrive("dlq", limit=1, to_topic="other") == 1
    assert broker.read("other")[0].value == b"1"
    assert broker.purge_dead_letters("dlq", where=lambda dl: dl.original_offset == 5) == 1
    assert [dl.original_offset for dl in broker.dead_letters("dlq")] == [3]
    assert broker.purge_dead_letters("dlq") == 1
    assert broker.dead_letters("dlq") == []
    redriven = q.receive(10, timeout=0)
    assert sorted(d.value for d in redriven) == [b"0", b"2", b"4"]
    q.ack(redriven)
    q.close()


def test_redrive_limit_counts_only_letters_it_can_redrive(broker):
    """Letters whose original topic was deleted stay in place and do not use up
    ``limit``: ``limit=N`` redrives N letters when N others can go."""
    _fill(broker, "gone", 3)
    _fill(broker, "t", 3)
    for topic in ("gone", "t"):
        q = broker.queue(topic, group="g", dead_letter_topic="dlq")
        q.dead_letter(q.receive(3, timeout=0), reason="x")
        q.close()
    broker.delete_topic("gone")
    assert broker.redrive("dlq", limit=2) == 2  # the three of "gone" come first
    assert [dl.original_topic for dl in broker.dead_letters("dlq")] == ["gone"] * 3 + ["t"]
    assert broker.redrive("dlq") == 1
    assert [dl.original_topic for dl in broker.dead_letters("dlq")] == ["gone"] * 3


# -- durability, liveness, threads --------------------------------------------------------

def test_pending_state_survives_reopen(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        _fill(b, "t", 5)
        q = b.queue("t", group="g", visibility_timeout=30)
        ds = q.receive(5, timeout=0)
        ds[0].ack()
        ds[1].nack(delay=0, error="e1")
        q.close()  # releases what it held: visible at once, counts kept
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        q = b.queue("t", group="g")
        ds = q.receive(10, timeout=0)
        assert sorted((d.offset, d.delivery_count) for d in ds) == [(1, 2), (2, 2), (3, 2),
                                                                    (4, 2)]
        q.ack(ds)
        assert q.lag() == 0
        q.close()


def test_closed_queue_and_closed_broker(tmp_broker_dir):
    b = mqlite.open(tmp_broker_dir, durability="none")
    _fill(b, "t", 2)
    q = b.queue("t", group="g")
    (d,) = q.receive(1, timeout=0)
    q.close()
    q.close()  # idempotent
    with pytest.raises(mqlite.ClosedError):
        q.receive(1, timeout=0)
    with pytest.raises(mqlite.ClosedError):
        d.ack()
    q2 = b.queue("t", group="g")
    b.close()
    with pytest.raises(mqlite.ClosedError):
        q2.receive(1, timeout=0)
    q2.close()


def test_threads_share_a_queue_each_message_acked_once(broker):
    n = 6000
    _fill(broker, "t", n, partitions=2)
    q = broker.queue("t", group="g")
    acked: list[list[bytes]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            own = q if i % 2 else broker.queue("t", group="g")
            while True:
                ds = own.receive(37, timeout=0.2)
                if not ds:
                    break
                own.ack(ds)
                acked[i].extend(d.value for d in ds)
            if own is not q:
                own.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    flat = [v for a in acked for v in a]
    assert not [v for v, c in Counter(flat).items() if c > 1]
    assert len(flat) == n
    q.close()


def test_blocking_receive_wakes_on_send_and_idles_without_cpu(broker):
    broker.create_topic("t")
    q = broker.queue("t", group="g")
    cpu0 = time.process_time()
    t0 = time.monotonic()
    assert q.receive(1, timeout=1.0) == []
    waited = time.monotonic() - t0
    cpu = time.process_time() - cpu0  # all threads, including the liveness watcher
    assert waited >= 0.95
    assert cpu < 0.1, f"an idle blocking receive burned {cpu:.3f} s of CPU in {waited:.2f} s"
    got: list[float] = []

    def consumer() -> None:
        ds = q.receive(1, timeout=30.0)
        got.append(time.monotonic())
        q.ack(ds)

    th = threading.Thread(target=consumer)
    th.start()
    time.sleep(0.2)  # most likely blocked by now; if not, it finds the message at once
    sent = time.monotonic()
    broker.send("t", b"x")
    th.join(60)
    # woken by the send, not at the 30 s timeout (no tight bound: load delays wake-ups)
    assert got and got[0] - sent < 10.0
    q.close()


def test_waiting_receiver_wakes_for_a_shortened_deadline(broker):
    _fill(broker, "t", 1)
    holder = broker.queue("t", group="g", visibility_timeout=30)
    waiter = broker.queue("t", group="g")
    (held,) = holder.receive(1, timeout=0)
    res: list[list[mqlite.Delivery]] = []
    th = threading.Thread(target=lambda: res.append(waiter.receive(1, timeout=30.0)))
    th.start()
    time.sleep(0.2)  # the waiter now sleeps towards the 30 s visibility deadline
    t0 = time.monotonic()
    held.extend(0.2)  # a shorter deadline wakes the waiter, which re-reads it
    th.join(60)
    assert res[0][0].delivery_count == 2
    # at the new deadline, not at the old one or the receive's timeout (30 s; no tight
    # bound: load delays wake-ups)
    assert 0.15 < time.monotonic() - t0 < 10.0
    waiter.ack(res[0])
    holder.close()
    waiter.close()


# -- cleanup="consumed", stream + queue independence, topic deletion -------------------------

def test_cleanup_consumed_deletes_batches_all_queue_groups_acked(broker):
    broker.create_topic("t", cleanup="consumed")
    for i in range(5):
        broker.send_batch("t", [b"%d-%d" % (i, j) for j in range(10)])
    a = broker.queue("t", group="a")
    b = broker.queue("t", group="b")
    a.ack(a.receive(50, timeout=0))
    assert broker.describe_topic("t").partitions[0].start_offset == 0  # b still needs all
    ds = b.receive(25, timeout=0)
    b.ack(ds[:15])  # batches 0 done by both; batch 1 half acked by b
    assert broker.describe_topic("t").partitions[0].start_offset == 10
    b.ack(ds[15:])
    assert broker.describe_topic("t").partitions[0].start_offset == 20
    rest = b.receive(50, timeout=0)
    b.ack(rest[1:])
    assert broker.describe_topic("t").partitions[0].start_offset == 20  # 20 pending in b
    b.ack(rest[:1])
    p = broker.describe_topic("t").partitions[0]
    assert p.start_offset >= 40 and p.end_offset == 50
    a.close()
    b.close()


def test_stream_groups_and_queue_groups_are_independent(broker):
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"%d" % i for i in range(20)], keys=[b"%d" % i for i in range(20)])
    q = broker.queue("t", group="same")
    c = broker.consumer("t", group="same")
    qs = q.receive(100, timeout=0)
    got: list[mqlite.Message] = []
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        got += c.poll(timeout=0.5)
    assert len(qs) == 20 and len(got) == 20
    c.commit()
    q.ack(qs)
    ends = {p.partition: p.end_offset for p in broker.describe_topic("t").partitions}
    assert broker.committed_offsets("same", "t") == ends
    assert "same" in broker.groups()
    assert q.lag() == 0
    c.close()
    q.close()


def test_delete_topic_drops_queue_state(broker):
    _fill(broker, "t", 3)
    q = broker.queue("t", group="g")
    q.receive(2, timeout=0)
    q.close()
    broker.delete_topic("t")
    _fill(broker, "t", 1)
    q = broker.queue("t", group="g")
    assert q.pending() == [] and q.lag() == 1
    q.close()


def test_transaction_ack(broker):
    _fill(broker, "t", 2)
    broker.create_topic("out")
    q = broker.queue("t", group="g")
    ds = q.receive(2, timeout=0)
    with broker.transaction() as tx:
        tx.send("out", b"done")
        tx.ack(ds)
    assert q.lag() == 0 and broker.read("out")[0].value == b"done"
    with pytest.raises(StaleDeliveryError), broker.transaction() as tx:
        tx.send("out", b"again")
        tx.ack(ds[:1])
    assert len(broker.read("out")) == 1
    q.close()


# -- arguments ------------------------------------------------------------------------------

def test_argument_errors(broker):
    _fill(broker, "t", 2)
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.queue("missing", group="g")
    with pytest.raises(ValueError):
        broker.queue("t", group="bad/name")
    with pytest.raises(ValueError):
        broker.queue("t", group="g", visibility_timeout=-1)
    with pytest.raises(ValueError):
        broker.queue("t", group="g", visibility_timeout=float("inf"))
    with pytest.raises(TypeError):
        broker.queue("t", group="g", max_deliveries=1.5)
    with pytest.raises(ValueError):
        broker.queue("t", group="g", max_deliveries=0)
    with pytest.raises(ValueError):
        broker.queue("t", group="g", dead_letter_topic="t")
    with pytest.raises(TypeError):
        broker.queue("t", group="g", retry_backoff="1s")
    q = broker.queue("t", group="g")
    other = broker.queue("t", group="h")
    with pytest.raises(ValueError):
        q.receive(0)
    with pytest.raises(TypeError):
        q.receive(1.5)
    with pytest.raises(ValueError):
        q.receive(1, timeout=-1)
    ds = q.receive(2, timeout=0)
    with pytest.raises(TypeError):
        q.ack([broker.read("t")[0]])
    with pytest.raises(TypeError):
        q.ack(b"nope")
    with pytest.raises(ValueError):
        other.ack(ds)
    with pytest.raises(ValueError):
        ds[0].nack(delay=-1)
    with pytest.raises(TypeError):
        ds[0].nack(error=5)
    with pytest.raises(ValueError):
        ds[0].extend(-1)
    with pytest.raises(TypeError):
        ds[0].dead_letter(reason=b"x")
    assert q.ack(ds) == 2  # nothing above changed anything
    q.close()
    other.close()


# -- an empty receive writes nothing (D57) -------------------------------------------------

def _txnid(broker):
    # LMDB's last transaction id (as benchmarks/bench_commit_ring.py reads it)
    return int(broker._engine.env.handle().info()["last_txnid"])


def _count_write_txns(broker, monkeypatch):
    env = broker._engine.env
    real = env.write_txn
    begun = []

    def write_txn(*args, **kwargs):
        begun.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(env, "write_txn", write_txn)
    return begun


def test_an_idle_queue_receive_begins_no_write_transaction(tmp_broker_dir, monkeypatch):
    """Regression: every ``receive`` began a write transaction (the broker's write lock,
    against every other writer) and committed it even when it found nothing.  Now a queue
    whose last round took nothing looks in a read transaction first, and everything the
    write would have taken is still taken at once: new messages, expired and nacked
    deliveries, moves to the dead-letter topic, due delayed messages."""
    b = mqlite.open(tmp_broker_dir, durability="sync")
    b.create_topic("t")
    q = b.queue("t", "g", max_deliveries=2, dead_letter_topic="dlq")
    assert q.receive(1, timeout=0) == []  # the first round of a queue takes at once
    begun = _count_write_txns(b, monkeypatch)
    tid = _txnid(b)
    for _ in range(20):
        assert q.receive(5, timeout=0) == []
    assert q.receive(5, timeout=0.05) == []  # waits, looks again after the wait: the same
    assert begun == [] and _txnid(b) == tid
    # New messages.
    b.send_batch("t", [b"a", b"b"])
    ds = q.receive(5, timeout=0)
    assert [d.value for d in ds] == [b"a", b"b"]
    # A busy queue takes at once (no extra read), an idle one does not write.
    n = len(begun)
    assert q.receive(5, timeout=0) == []
    assert q.receive(5, timeout=0) == [] and len(begun) == n + 1
    # A nack at once is due at once; an expired delivery is due at its deadline.
    ds[0].nack(delay=0.0)
    ds[1].extend(0.0)
    again = q.receive(5, timeout=0)
    assert sorted(value(d) for d in again) == [b"a", b"b"]
    assert all(d.delivery_count == 2 for d in again)
    # At max deliveries, a due entry moves to the dead-letter topic in the receive.
    q.nack(again, delay=0.0)  # nack at max deliveries moves them itself
    assert sorted(dl.message.value for dl in b.dead_letters("dlq")) == [b"a", b"b"]
    b.send("t", b"c")
    [c] = q.receive(1, timeout=0, visibility_timeout=0.0)  # due as soon as it is taken
    [c] = q.receive(1, timeout=0, visibility_timeout=0.2)
    assert c.value == b"c" and c.delivery_count == 2
    assert q.receive(1, timeout=0) == []  # idle again (a stall of 0.2 s: this one moves it)
    for p in q.pending():  # wait for its deadline; the next receive looks, then moves it
        time.sleep(max(0.0, (p["visible_at_ms"] - time.time_ns() // 1_000_000) / 1000 + 0.01))
    assert q.receive(1, timeout=0) == []
    assert sorted(dl.message.value for dl in b.dead_letters("dlq")) == [b"a", b"b", b"c"]
    assert q.pending() == []
    # A delayed message is promoted and taken when due.
    b.send("t", b"later", delay=0.05)
    got = q.receive(1, timeout=30.0)
    assert [d.value for d in got] == [b"later"]
    q.close()
    b.close()
