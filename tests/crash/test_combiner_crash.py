"""A commit-ring leader SIGKILLed at each step of its protocol (issue 14, part 2).

Set-up per step: this process hands one send to the ring (slot FILLED, as a
sender waiting for the lock would), then a child sends and so leads the ring:
it takes both slots into one transaction and kills itself at the step.  Then
this process sends once more, leads, and must recover exactly:

* ``comb_before_commit``: the transaction aborted; both slots are still FILLED
  and are appended once, by the recovering leader.
* ``comb_after_commit``: committed, no slot DONE; the recovering leader finds
  both tickets in the ticket table and hands out the stored results: nothing
  is appended twice.
* ``comb_mid_done``: the first slot (ours) DONE, the dead child's not; again
  nothing is appended twice.

Every message must be in the log exactly once, where its result says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import _procs_torture as procs
import pytest

import mqlite
from mqlite import _core
from mqlite._storage import tickets

MODES = ["sync", "lazy"]


def _hand_over(broker: mqlite.Broker, topic: str, value: bytes) -> tuple[int, int]:
    """Fill a ring slot with one send of ``value``, as a waiting sender does."""
    eng = broker._engine
    rec = eng.topic_fresh(topic)
    ts = 1_700_000_000_000
    batch = _core.encode_batches((value,), None, None, ts,
                                 max_message_bytes=rec.config["max_message_bytes"])[0]
    payload = eng.ring_payload(topic, 0, ts, rec.config["max_message_bytes"], [batch], None)
    comb = eng.env.combiner
    idx = comb.claim(os.getpid())
    assert idx >= 0
    return idx, comb.fill(idx, payload)


def _values(broker: mqlite.Broker, topic: str) -> list[tuple[int, bytes]]:
    reader = broker.consumer(topic)
    out: list[tuple[int, bytes]] = []
    while True:
        msgs = reader.poll(1000, timeout=0.05)
        if not msgs:
            break
        out += [(m.offset, bytes(m.value or b"")) for m in msgs]
    reader.close()
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", procs.COMBINER_POINTS)
def test_leader_killed_at_each_step(children: Any, tmp_path: Path, mode: str,
                                    point: str) -> None:
    path = tmp_path / "broker"
    broker = mqlite.open(path, durability=mode)
    broker.create_topic("t")
    comb = broker._engine.env.combiner
    assert comb is not None
    mine, ticket = _hand_over(broker, "t", b"waiting")
    log = tmp_path / "leader.log"
    p = children.start("leader", procs.lead_and_die, str(path), mode, "t", b"leader", point,
                       str(log))
    p.join(60)
    text = log.read_text()
    assert p.exitcode == -9, text
    assert f" {point}" in text and "E " not in text, text

    state = comb.word(mine)[1]
    with broker._engine.read() as txn:
        recorded = tickets.lookup(txn, broker._engine.env.dbs, ticket)
    if point == "comb_before_commit":
        assert state == _core.FILLED and recorded is None
    elif point == "comb_after_commit":
        assert state == _core.FILLED and recorded is not None
    else:
        assert state == _core.DONE and recorded is not None

    md = broker.send("t", b"after")  # leads, recovers
    assert comb.word(mine) == (ticket, _core.DONE)
    status, part, off, _ts = comb.result(mine)
    assert status == 0 and part == 0
    assert comb.release(mine, ticket)

    got = _values(broker, "t")
    values = [v for _, v in got]
    assert sorted(values) == sorted([b"waiting", b"leader", b"after"]), got
    assert (off, b"waiting") in got
    assert (md.offset, b"after") in got
    assert [o for o, _ in got] == list(range(3))  # dense, nothing appended twice
    # The dead leader's slot was finished too and is reclaimed (owner gone).
    comb.reclaim()
    assert all(comb.word(i)[1] == _core.FREE for i in range(comb.nslots))
    # (a send finding the ring idle would commit alone and prune nothing, D43)
    handed, t2 = _hand_over(broker, "t", b"handed")
    broker.send("t", b"later")  # leads the handed slot: prunes the finished tickets
    assert comb.word(handed) == (t2, _core.DONE) and comb.release(handed, t2)
    with broker._engine.read() as txn:
        assert tickets.lookup(txn, broker._engine.env.dbs, ticket) is None
    broker.close()


def test_sender_killed_after_handing_over_is_committed_at_most_once(
        children: Any, tmp_path: Path) -> None:
    """A FILLED slot whose owner died is committed by the next leader, once."""
    path = tmp_path / "broker"
    broker = mqlite.open(path, durability="sync")
    broker.create_topic("t")
    comb = broker._engine.env.combiner
    mine, ticket = _hand_over(broker, "t", b"orphan")
    # Pretend the owner died: give the slot to a pid that no longer exists.
    p = children.start("gone", os.getpid)
    p.join(30)
    assert comb.withdraw(mine, ticket)
    idx = comb.claim(p.pid)
    assert idx >= 0
    eng = broker._engine
    rec = eng.topic_fresh("t")
    batch = _core.encode_batches((b"orphan",), None, None, 1,
                                 max_message_bytes=rec.config["max_message_bytes"])[0]
    t2 = comb.fill(idx, eng.ring_payload("t", 0, 1, rec.config["max_message_bytes"], [batch],
                                          None))
    broker.send("t", b"next")
    assert comb.word(idx) == (t2, _core.DONE)
    assert comb.reclaim() >= 1
    assert comb.word(idx)[1] == _core.FREE
    broker.send("t", b"third")
    assert [v for _, v in _values(broker, "t")] == [b"orphan", b"next", b"third"]
    broker.close()
