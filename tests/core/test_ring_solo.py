"""D43: a send that finds the commit ring idle commits alone, the short way.

With no slot FILLED and the last commit having found nobody else waiting, a
``send`` takes the combining lock and commits through the single-send path:
no slot, no ticket entry.  Senders that arrive meanwhile are handed the lock.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mqlite
from mqlite import _core
from mqlite._storage import tickets


def _ticket_entries(b: mqlite.Broker) -> int:
    eng = b._engine
    with eng.read() as txn:
        return sum(1 for k, _v in txn.cursor(db=eng.env.dbs["meta"])
                   if bytes(k).startswith(b"comb"))


def _fill(b: mqlite.Broker, topic: str, value: bytes) -> tuple[int, int]:
    eng = b._engine
    rec = eng.topic_fresh(topic)
    maxb = rec.config["max_message_bytes"]
    batch = _core.encode_batches((value,), None, None, 1000, max_message_bytes=maxb)[0]
    comb = eng.env.combiner
    i = comb.claim(os.getpid())
    assert i >= 0
    return i, comb.fill(i, eng.ring_payload(topic, 0, 1000, maxb, [batch], None))


@pytest.mark.parametrize("mode", ["sync", "lazy"])
def test_a_lone_send_commits_without_a_slot_or_ticket(tmp_path: Path, mode: str) -> None:
    with mqlite.open(tmp_path / "b", durability=mode) as b:
        b.create_topic("t", partitions=2)
        comb = b._engine.env.combiner
        assert comb is not None
        lm = b._engine.env.handle()
        b.send("t", b"m0", key=b"k")  # the first send fills the topic cache (general path)
        before = _ticket_entries(b)
        fills = comb.hints()[2]  # fill_seq: +1 per slot filled
        for n in range(1, 20):
            tx = lm.info()["last_txnid"]
            md = b.send("t", f"m{n}".encode(), key=b"k")
            assert lm.info()["last_txnid"] == tx + 1  # one commit per send
            assert md.topic == "t" and md.offset == n
        assert comb.hints()[2] == fills  # none went through a slot
        assert _ticket_entries(b) == before
        assert all(comb.word(i)[1] == _core.FREE for i in range(comb.nslots))
        assert comb.since_send() < 10**9  # it still tells followers a sender is active
        c = b.consumer("t")
        got = [m.value for m in c.poll(100, timeout=5)]
        c.close()
        assert got == [f"m{n}".encode() for n in range(20)]


def test_a_send_beside_a_waiting_slot_leads_it_through_the_ring(tmp_path: Path) -> None:
    with mqlite.open(tmp_path / "b", durability="sync") as b:
        b.create_topic("t")
        comb = b._engine.env.combiner
        i, t = _fill(b, "t", b"waiting")
        lm = b._engine.env.handle()
        tx = lm.info()["last_txnid"]
        md = b.send("t", b"leader")
        assert lm.info()["last_txnid"] == tx + 1  # both in one commit
        assert comb.word(i) == (t, _core.DONE)
        status, part, off, _ts = comb.result(i)
        assert (status, part, off) == (0, 0, 0) and md.offset == 1
        assert comb.release(i, t)
        with b._engine.read() as txn:
            assert tickets.lookup(txn, b._engine.env.dbs, t) is not None
        # the last commit found two senders: the next send expects company and leads
        # through the ring (its own slot), so arrivals during its begin join it
        assert comb.hints()[0] == 2
        fills = comb.hints()[2]
        b.send("t", b"next")
        assert comb.hints()[2] == fills + 1  # through a slot of its own
        assert comb.hints()[0] == 1  # alone again: the send after that goes solo
        tx = lm.info()["last_txnid"]
        b.send("t", b"solo")
        assert lm.info()["last_txnid"] == tx + 1
        assert comb.hints()[2] == fills + 1
