"""A write transaction that changed nothing must not vouch for the write-path cache.

LMDB does not spend a transaction id on a write transaction that commits with
nothing written (an empty ``receive``, an offset commit with nothing new, a
ring round whose slots were all refused): the next writer, in any process,
commits under that same id.  The write-path cache (partition states as of this
process's last commit, docs/decisions.md D51) counted the empty commit as its
own, so this process's next write transaction looked "fresh" (its id one past
the cached one) although another process had committed in between: the next
send appended at a stale offset and overwrote the other process's message.
The kill -9 torture found it (two sends returned the same offset; the first
one's message was gone).  The other process is driven through a pipe, step by
step (no sleeps).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import _procs_send
import pytest
from _children import stop_child

import mqlite

_CTX = multiprocessing.get_context("spawn")


class _Sender:
    """Another process that sends on request (``_procs_send.serve``)."""

    def __init__(self, path: str) -> None:
        self.conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_procs_send.serve, args=(path, child), daemon=True)
        self.proc.start()
        child.close()

    def send(self, topic: str, value: bytes) -> int:
        self.conn.send((topic, value))
        assert self.conn.poll(60), "the sender process did not answer within 60 s"
        offset = self.conn.recv()
        assert isinstance(offset, int)
        return offset

    def close(self) -> None:
        stop_child(self.conn, self.proc)


@pytest.fixture
def world(tmp_broker_dir: Path) -> Iterator[tuple[mqlite.Broker, _Sender]]:
    b = mqlite.open(tmp_broker_dir)
    b.create_topic("t", partitions=1)
    b.create_topic("idle", partitions=1)
    other = _Sender(str(tmp_broker_dir))
    try:
        yield b, other
    finally:
        other.close()
        b.close()


def _last_txnid(b: mqlite.Broker) -> int:
    return int(b._engine.env.handle().info()["last_txnid"])


def _empty_receive(b: mqlite.Broker, q: mqlite.Queue) -> None:
    """A ``receive`` with nothing to deliver: a write transaction that writes nothing."""
    assert q.receive(max_messages=1, timeout=0) == []  # may store its bookkeeping
    before = _last_txnid(b)
    assert q.receive(max_messages=1, timeout=0) == []
    assert _last_txnid(b) == before, "the scenario needs a receive that commits nothing"


@pytest.mark.parametrize("api", ["send", "send_batch", "producer"])
def test_send_after_an_empty_commit_sees_another_process_commit(
        world: tuple[mqlite.Broker, _Sender], api: str) -> None:
    b, other = world
    q = b.queue("idle", "g")
    try:
        assert b.send("t", b"mine-0", partition=0).offset == 0  # the cache is warm
        _empty_receive(b, q)
        assert other.send("t", b"theirs") == 1  # commits under the id it did not use
        if api == "send":
            off = b.send("t", b"mine-1", partition=0).offset
        elif api == "send_batch":
            off = b.send_batch("t", [b"mine-1"], partition=0)[0].offset
        else:
            with b.producer(linger_ms=0) as p:
                off = p.send("t", b"mine-1", partition=0).result(timeout=30).offset
        assert off == 2, f"the send returned offset {off}, where the other process's is"
        got = {r.offset: r.value for r in b.read("t", 0, 0, max_records=10)}
        assert got == {0: b"mine-0", 1: b"theirs", 2: b"mine-1"}
    finally:
        q.close()
