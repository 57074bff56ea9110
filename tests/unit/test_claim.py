"""Exclusive event-id claims: ``tx.claim``, ``tx.record_processed``, ``broker.claim``.

The contract: of any number of transactions claiming one (scope, id), at most
one commits until the claim expires; the others raise
``AlreadyProcessedError`` and apply nothing.  ``is_processed`` is a hint.
Expiry uses ``mqlite.transaction._wall_ms``, replaced here by a fake clock so
no test sleeps.
"""

from __future__ import annotations

import pickle
import threading

import pytest

import mqlite
from mqlite import TopicPartition
from mqlite import transaction as _tx


@pytest.fixture
def broker(open_broker):
    b = open_broker(durability="none")
    b.create_topic("in", partitions=2)
    b.create_topic("out")
    return b


@pytest.fixture
def clock(monkeypatch):
    """A settable wall clock in ms, used for every claim's expiry."""
    now = [1_800_000_000_000]
    monkeypatch.setattr(_tx, "_wall_ms", lambda: now[0])
    return now


def _all(b, topic):
    return [m.value for m in b.consumer(topic).poll(max_records=10_000, timeout=0)]


def _claim_rows(b):
    """(records, index entries) of claims in the dedup db."""
    env = b._engine.env
    with env.read_txn() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=env.dbs["dedup"])]
    return (sum(k[:1] == b"p" for k in keys), sum(k[:1] == b"q" for k in keys))


def test_second_claim_of_a_committed_id_fails_early_with_details(broker, clock):
    with broker.transaction() as tx:
        tx.claim("order-1", scope="billing", ttl=60)
        tx.send("out", b"charged")
    with pytest.raises(mqlite.AlreadyProcessedError) as ei, broker.transaction() as tx:
        f = tx.send("out", b"charged again")
        tx.claim("order-1", scope="billing", ttl=60)
    err = ei.value
    assert isinstance(err, mqlite.MqliteError)
    assert (err.event_id, err.scope) == ("order-1", "billing")
    assert err.claimed_ms == clock[0] and err.expires_ms == clock[0] + 60_000
    assert "order-1" in str(err) and "billing" in str(err)
    assert f.cancelled()
    assert _all(broker, "out") == [b"charged"]


def test_concurrent_transactions_only_one_commits_nothing_of_the_loser(broker):
    """Both pass the early check (nothing committed yet); the commit-time check decides."""
    for i in range(4):
        broker.send("in", b"%d" % i, partition=0)
    broker.send("in", b"job", partition=1)
    c = broker.consumer("in", group="g", commit="manual")
    assert len(c.poll(max_records=4, timeout=1)) >= 1
    q = broker.queue("in", "workers", visibility_timeout=30)
    (d,) = q.receive(max_messages=1, timeout=1)
    first, second = broker.transaction(), broker.transaction()
    first.claim("evt")
    second.claim("evt")
    f1 = first.send("out", b"first")
    f2 = second.send("out", b"second")
    second.commit_offsets(c)
    second.ack(d)
    first.commit()
    with pytest.raises(mqlite.AlreadyProcessedError) as ei:
        second.commit()
    assert ei.value.expires_ms is not None
    assert f1.result().offset == 0
    assert isinstance(f2.exception(), mqlite.AlreadyProcessedError)
    assert _all(broker, "out") == [b"first"]
    assert c.committed(TopicPartition("in", 0)) is None  # the loser's offsets not committed
    assert [p["offset"] for p in q.pending()] == [d.offset]  # and its ack not applied
    with pytest.raises(mqlite.ClosedError):
        second.send("out", b"x")
    c.close()
    q.close()


def test_legacy_check_then_record_pattern_is_now_exclusive(broker):
    """``if not tx.is_processed(id): ...; tx.record_processed(id)`` in two
    interleaved transactions: both see "not processed" (a hint), one commits."""
    t1, t2 = broker.transaction(), broker.transaction()
    assert not t1.is_processed("e") and not t2.is_processed("e")
    for t, v in ((t1, b"one"), (t2, b"two")):
        t.send("out", v)
        t.record_processed("e")
    t2.commit()
    with pytest.raises(mqlite.AlreadyProcessedError):
        t1.commit()
    assert _all(broker, "out") == [b"two"]
    assert broker.is_processed("e")


def test_same_id_twice_in_one_transaction_raises_at_the_call(broker):
    with broker.transaction() as tx:
        tx.claim("a")
        tx.send("out", b"a")
        with pytest.raises(mqlite.AlreadyProcessedError) as ei:
            tx.record_processed("a")
        assert ei.value.expires_ms is None
        tx.claim("b")  # the transaction is still usable
        assert tx.is_processed("a") and tx.is_processed("b")
    assert _all(broker, "out") == [b"a"]
    assert broker.is_processed("a") and broker.is_processed("b")


def test_scopes_are_independent_and_ids_may_be_bytes(broker):
    with broker.transaction() as tx:
        tx.claim(b"\x00\xffid", scope="email")
        tx.claim(b"\x00\xffid", scope="sms")
        tx.claim("\x00\xffid".encode("latin-1") + b"x", scope="email")
    assert broker.is_processed(b"\x00\xffid", scope="email")
    assert not broker.is_processed(b"\x00\xffid")
    assert not broker.claim(b"\x00\xffid", scope="sms")
    assert broker.claim(b"\x00\xffid", scope="push")


def test_expired_claim_can_be_claimed_again(broker, clock):
    assert broker.claim("e", ttl=1.5)
    clock[0] += 1_500
    assert broker.is_processed("e")  # expires at exactly +1.5 s: still live
    assert not broker.claim("e")
    clock[0] += 1
    assert not broker.is_processed("e")
    with broker.transaction() as tx:
        tx.claim("e", ttl=10)
        tx.send("out", b"again")
    assert _all(broker, "out") == [b"again"]
    assert _claim_rows(broker) == (1, 1)  # the old index entry went with the old claim


def test_expired_claims_are_swept(broker, clock):
    with broker.transaction() as tx:
        for i in range(100):
            tx.claim(f"old-{i}", ttl=1)
    assert _claim_rows(broker) == (100, 100)
    clock[0] += 2_000
    assert broker.claim("new-0", ttl=60)  # sweeps 16 expired claims
    assert _claim_rows(broker) == (85, 85)
    with broker.transaction() as tx:  # 16 per claim: 5 claims sweep 80 more
        for i in range(1, 6):
            tx.claim(f"new-{i}", ttl=60)
    assert _claim_rows(broker) == (4 + 6, 4 + 6)
    assert broker.claim("new-6", ttl=60)
    assert _claim_rows(broker) == (7, 7)
    assert not broker.is_processed("old-7")
    assert all(broker.is_processed(f"new-{i}") for i in range(7))


def test_sweep_keeps_a_reclaimed_id(broker, clock):
    """An index entry left by a replaced claim never deletes the live record."""
    from mqlite._storage import processed

    env = broker._engine.env
    assert broker.claim("x", ttl=1)
    key = _tx._claim_key("x", "default")
    with broker._engine.write() as txn:  # an extra, stale index entry for "x"
        txn.put(b"q" + (clock[0] - 5).to_bytes(8, "big") + key, b"", db=env.dbs["dedup"])
    clock[0] += 10
    with broker._engine.write() as txn:
        assert processed.sweep(txn, env.dbs, clock[0] - 2, limit=100) == 1
    assert broker.is_processed("x")
    assert _claim_rows(broker) == (1, 1)


def test_broker_claim_first_wins_and_release(broker):
    assert broker.claim("mail-1", scope="email")
    assert not broker.claim("mail-1", scope="email")
    with broker.transaction() as tx:
        assert tx.is_processed("mail-1", scope="email")
        tx.release("mail-1", scope="email")
        assert not tx.is_processed("mail-1", scope="email")
        tx.release("never-claimed")
    assert not broker.is_processed("mail-1", scope="email")
    assert _claim_rows(broker) == (0, 0)
    assert broker.claim("mail-1", scope="email")


def test_release_and_claim_again_in_one_transaction(broker):
    assert broker.claim("k", ttl=5)
    with broker.transaction() as tx:
        tx.release("k")
        tx.claim("k", ttl=60)
    assert broker.is_processed("k")
    assert not broker.claim("k")


def test_threads_claiming_one_id_exactly_one_wins(broker):
    n = 8
    barrier = threading.Barrier(n)
    wins: list[bool] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(timeout=30)
        won = broker.claim("shared")
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(wins) == [False] * (n - 1) + [True]


def test_values_of_older_versions_are_read(broker, clock):
    """Claims stored before the claim API were 8 bytes (expires only)."""
    env = broker._engine.env
    key = _tx._claim_key("legacy", "default")
    with broker._engine.write() as txn:
        txn.put(key, (clock[0] + 1000).to_bytes(8, "big"), db=env.dbs["dedup"])
    assert broker.is_processed("legacy")
    with pytest.raises(mqlite.AlreadyProcessedError) as ei, broker.transaction() as tx:
        tx.claim("legacy")
    assert ei.value.claimed_ms is None and ei.value.expires_ms == clock[0] + 1000
    clock[0] += 2000
    assert broker.claim("legacy")


@pytest.mark.parametrize("call", ["tx", "broker"])
@pytest.mark.parametrize(("args", "exc", "match"), [
    ((12,), TypeError, "event_id must be str or bytes"),
    ((None,), TypeError, "event_id"),
    (("",), ValueError, "1-256 bytes"),
    (("x" * 257,), ValueError, "1-256 bytes"),
    (("e", 5), TypeError, "scope must be str"),
    (("e", ""), ValueError, "scope"),
    (("e", "a\x00b"), ValueError, "without NUL"),
    (("e", "é" * 51), ValueError, "1-100 bytes"),
])
def test_bad_ids_and_scopes(broker, call, args, exc, match):
    with pytest.raises(exc, match=match):
        if call == "broker":
            broker.claim(*args)
        else:
            with broker.transaction() as tx:
                tx.claim(*args)
    assert _claim_rows(broker) == (0, 0)


@pytest.mark.parametrize(("ttl", "exc", "match"), [
    ("60", TypeError, "number of seconds"),
    (True, TypeError, "number of seconds"),
    (None, TypeError, "number of seconds"),
    (0, ValueError, "in seconds"),
    (-1, ValueError, "in seconds"),
    (0.0001, ValueError, "in seconds"),
    (float("nan"), ValueError, "in seconds"),
    (float("inf"), ValueError, "in seconds"),
    (86_400_000, ValueError, "milliseconds"),  # one day, in ms
])
def test_bad_ttl_names_the_unit(broker, ttl, exc, match):
    with pytest.raises(exc, match=match):
        broker.claim("e", ttl=ttl)
    with pytest.raises(exc, match=match), broker.transaction() as tx:
        tx.claim("e", ttl=ttl)
    assert not broker.is_processed("e")


def test_ttl_bounds_accepted(broker, clock):
    assert broker.claim("short", ttl=0.001)
    assert broker.claim("long", ttl=_tx.MAX_CLAIM_TTL)
    with pytest.raises(mqlite.AlreadyProcessedError) as ei:
        broker.transaction().claim("long")
    assert ei.value.expires_ms == clock[0] + 366 * 86_400_000


def test_default_ttl_is_seven_days_everywhere():
    import inspect

    assert _tx.DEFAULT_CLAIM_TTL == 7 * 86_400
    for fn in (mqlite.Broker.claim, mqlite.Transaction.claim, mqlite.Transaction.record_processed,
               _tx.claim):
        assert inspect.signature(fn).parameters["ttl"].default == _tx.DEFAULT_CLAIM_TTL, fn


def test_closed_broker_and_finished_transaction(open_broker, tmp_broker_dir):
    b = open_broker(durability="none")
    tx = b.transaction()
    tx.claim("e")
    tx.commit()
    for op in (lambda: tx.claim("f"), lambda: tx.release("e"), lambda: tx.record_processed("g")):
        with pytest.raises(mqlite.ClosedError):
            op()
    b.close()
    with pytest.raises(mqlite.ClosedError):
        b.claim("e")
    with pytest.raises(mqlite.ClosedError):
        b.is_processed("e")


def test_error_pickles_and_is_exported():
    err = mqlite.AlreadyProcessedError(b"id", "s", claimed_ms=1, expires_ms=2)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, mqlite.AlreadyProcessedError)
    assert (back.event_id, back.scope, back.claimed_ms, back.expires_ms) == (b"id", "s", 1, 2)
    assert str(back) == str(err)
    assert "AlreadyProcessedError" in mqlite.__all__
    assert not err.retriable
