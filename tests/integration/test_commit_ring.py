"""Cross-process commit combining (issue 14): outcomes seen through the public API.

Several processes send one message at a time (``send``, ``send_batch``,
``producer``) through the commit ring; every message must be stored exactly
once, where its returned metadata says, in each sender's order.  Offset
commits ride the ring too and stay fenced.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as _q
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _procs_ring as children
import pytest

import mqlite
from mqlite import CommitFailedError, TopicPartition

CTX = multiprocessing.get_context("forkserver")
# preloads: FORKSERVER_PRELOAD in tests/conftest.py (one list for every suite)

#: An entry of mqlite._engine._RING_HANDLERS.
_Handler = Callable[[Any, Any, bytes], tuple[int, int, int, int]]


@pytest.mark.parametrize("mode", ["sync", "lazy"])
def test_many_processes_each_message_once_where_its_send_said(tmp_broker_dir: Path,
                                                              mode: str) -> None:
    b = mqlite.open(tmp_broker_dir, durability=mode)
    b.create_topic("t", partitions=2)
    n_procs, per = 6, 40
    barrier = CTX.Barrier(n_procs)
    out = CTX.Queue()
    procs = [CTX.Process(target=children.sender,
                         args=(str(tmp_broker_dir), mode, f"s{k}", per, barrier, out),
                         daemon=True) for k in range(n_procs)]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            results.append(out.get(timeout=120))
    except _q.Empty:
        pytest.fail(f"senders did not report: {results}")
    finally:
        for p in procs:
            p.join(30)
    assert all(r[0] == "ok" for r in results), results
    said = {mid: (p, o) for r in results for mid, p, o in r[2]}
    assert len(said) == n_procs * per
    stored: dict[str, tuple[int, int]] = {}
    for part in range(2):
        for m in b._engine.read_partition("t", part, 0, 100_000):
            mid = bytes(m.value or b"").decode()
            assert mid not in stored, f"{mid} stored twice"
            stored[mid] = (m.partition, m.offset)
    assert stored == said
    for r in results:  # each sender's messages in its order (within a partition)
        offs: dict[int, list[int]] = {}
        for _mid, p, o in r[2]:
            offs.setdefault(p, []).append(o)
        assert all(v == sorted(v) for v in offs.values())
    b.close()


@pytest.fixture
def broker(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    b = mqlite.open(tmp_broker_dir, durability="sync")
    b.create_topic("t", partitions=2)
    yield b
    b.close()


def test_ring_file_per_durability_mode(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none"):
        pass
    assert not any(n.startswith("commit-") for n in os.listdir(tmp_broker_dir))
    with mqlite.open(tmp_broker_dir, durability="lazy"):
        pass
    assert "commit-lazy.shm" in os.listdir(tmp_broker_dir)
    st = os.stat(tmp_broker_dir / "commit-lazy.shm")
    assert st.st_mode & 0o777 == 0o600


def test_send_paths_through_the_ring(broker: mqlite.Broker) -> None:
    assert broker._engine.env.combiner is not None
    a = broker.send("t", b"a", partition=1)
    assert (a.partition, a.offset) == (1, 0)
    d1 = broker.send("t", b"d", dedup_id="x")
    d2 = broker.send("t", b"d", dedup_id="x")
    assert d1 == d2
    bm = broker.send_batch("t", [b"b1", b"b2"], partition=1)
    assert [(bm[i].partition, bm[i].offset) for i in range(2)] == [(1, 1), (1, 2)]
    with broker.producer() as prod:
        futs = [prod.send("t", f"p{i}".encode(), partition=0) for i in range(5)]
        mds = [f.result(10) for f in futs]
    assert [m.offset for m in mds] == sorted(m.offset for m in mds)
    assert [bytes(m.value or b"") for m in broker._engine.read_partition("t", 1, 0, 10)] == [
        b"a", b"b1", b"b2"]
    broker.delete_topic("t")
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.send("t", b"gone")


def test_offset_commits_through_the_ring_stay_fenced(broker: mqlite.Broker) -> None:
    c = broker.consumer("t", group="g", commit="manual")
    broker.send_batch("t", [b"a", b"b"], partition=0)
    while not c.poll(timeout=0.5):
        pass
    tp0 = TopicPartition("t", 0)
    c.commit({tp0: 2})
    assert c.committed(tp0) == 2
    other = broker.consumer("t", group="h", commit="manual")
    with pytest.raises(CommitFailedError):
        other.commit({tp0: 1})  # owns nothing in its group yet
    c.close()
    other.close()


def test_queue_acks_through_the_ring(broker: mqlite.Broker,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mqlite import _engine

    calls: list[str] = []
    handlers = dict(_engine._RING_HANDLERS)
    for kind, fn in handlers.items():
        def spy(e: object, txn: object, p: bytes, fn: _Handler = fn) -> tuple[int, int, int, int]:
            calls.append(str(p[0]))
            return fn(e, txn, p)
        monkeypatch.setitem(_engine._RING_HANDLERS, kind, spy)
    q = broker.queue("t", group="q", visibility_timeout=30)
    broker.send_batch("t", [b"a", b"b", b"c"], partition=0)
    broker.send("t", b"d", partition=1)
    got: list[mqlite.Delivery] = []
    while len(got) < 4:
        got += q.receive(10, timeout=0.5)
    assert q.ack(got[:2]) == 2
    assert "2" in calls
    with pytest.raises(mqlite.StaleDeliveryError):
        q.ack(got[:3])  # two already acked: the ring writes nothing, the solo path reports
    assert q.ack(got[3:]) == 1
    assert q.pending() == []
    q.close()
