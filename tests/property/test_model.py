"""Model-based test: a Hypothesis state machine against a simple in-memory model.

One process, one broker, topic ``t`` with two partitions.  Rules: send,
send_batch, stream group members joining and leaving (``commit="manual"``),
poll, commit, a queue group's receive / ack / nack (including a stale ack),
and closing and reopening the broker.  The model holds each partition's log,
each group's committed offsets and the current member's positions, and the
queue group's cursor, pending deliveries (with delivery counts) and acks.
After every step the broker must agree: offsets, delivered values, committed
offsets, delivery counts, queue lag and pending counts.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import mqlite
from mqlite import StaleDeliveryError

TOPIC = "t"
PARTS = 2
GROUPS = ("ga", "gb")
QGROUP = "qg"


@dataclass
class QModel:
    cursor: list[int] = field(default_factory=lambda: [0] * PARTS)
    # (partition, offset) -> [delivery count, held?]
    pending: dict[tuple[int, int], list[Any]] = field(default_factory=dict)
    acked: set[tuple[int, int]] = field(default_factory=set)


class BrokerModel(RuleBasedStateMachine):
    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mqlite-model-"))
        self.tmp.chmod(0o700)
        self.path = self.tmp / "broker"
        self.log: list[list[bytes]] = [[] for _ in range(PARTS)]
        self.committed: dict[str, list[int]] = {g: [0] * PARTS for g in GROUPS}
        self.pos: dict[str, list[int]] = {}  # positions of the live member of a group
        self.consumers: dict[str, Any] = {}
        self.q = QModel()
        self.queue: Any = None
        self.broker: Any = None
        self.n = 0

    @initialize()
    def open_broker(self) -> None:
        self.broker = mqlite.open(self.path, durability="none")
        self.broker.create_topic(TOPIC, partitions=PARTS)
        self.queue = self.broker.queue(TOPIC, QGROUP, visibility_timeout=600.0)

    def teardown(self) -> None:
        try:
            for c in self.consumers.values():
                c.close()
            if self.queue is not None:
                self.queue.close()
            if self.broker is not None:
                self.broker.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _value(self) -> bytes:
        self.n += 1
        return b"m%d" % self.n

    # -- producing ------------------------------------------------------------------------
    @rule(p=st.integers(0, PARTS - 1))
    def send(self, p: int) -> None:
        v = self._value()
        md = self.broker.send(TOPIC, v, partition=p)
        assert (md.partition, md.offset) == (p, len(self.log[p]))
        self.log[p].append(v)

    @rule(p=st.integers(0, PARTS - 1), k=st.integers(1, 8))
    def send_batch(self, p: int, k: int) -> None:
        vs = [self._value() for _ in range(k)]
        md = self.broker.send_batch(TOPIC, vs, partition=p)
        assert [(md[i].partition, md[i].offset) for i in range(k)] == [
            (p, len(self.log[p]) + i) for i in range(k)]
        self.log[p].extend(vs)

    # -- stream groups --------------------------------------------------------------------
    @rule(g=st.sampled_from(GROUPS))
    def join(self, g: str) -> None:
        if g in self.consumers:
            return
        self.consumers[g] = self.broker.consumer(TOPIC, group=g, commit="manual")
        self.pos[g] = list(self.committed[g])

    @rule(g=st.sampled_from(GROUPS), go=st.integers(0, 2))
    def leave(self, g: str, go: int) -> None:
        if go:  # a third of the time: members should live long enough to read far
            return
        c = self.consumers.pop(g, None)
        if c is not None:
            c.close()  # manual commit policy: closing commits nothing
            del self.pos[g]

    @rule(g=st.sampled_from(GROUPS), k=st.integers(1, 20))
    def poll(self, g: str, k: int) -> None:
        c = self.consumers.get(g)
        if c is None:
            return
        available = sum(len(self.log[p]) - self.pos[g][p] for p in range(PARTS))
        msgs = c.poll(max_records=k, timeout=2.0 if available else 0.001)
        assert len(msgs) <= k
        if available:
            assert msgs, f"group {g} got nothing with {available} messages available"
        for m in msgs:
            p = m.partition
            assert m.offset == self.pos[g][p], (g, p, m.offset, self.pos[g][p])
            assert m.value == self.log[p][m.offset]
            self.pos[g][p] += 1

    @rule(g=st.sampled_from(GROUPS))
    def commit(self, g: str) -> None:
        c = self.consumers.get(g)
        if c is None:
            return
        c.commit()
        # Positions of partitions the member has not read yet equal the committed ones.
        self.committed[g] = list(self.pos[g])

    # -- queue group ------------------------------------------------------------------------
    @rule(target=deliveries, k=st.integers(1, 6))
    def receive(self, k: int) -> Any:
        q = self.q
        avail = sum(1 for c in q.pending.values() if not c[1]) + sum(
            len(self.log[p]) - q.cursor[p] for p in range(PARTS))
        ds = self.queue.receive(max_messages=k, timeout=2.0 if avail else 0.001)
        assert len(ds) <= k
        if avail:
            assert ds, f"queue got nothing with {avail} messages available"
        for d in ds:
            po = (d.partition, d.offset)
            assert d.value == self.log[d.partition][d.offset]
            if po in q.pending:
                count, held = q.pending[po]
                assert not held, f"{po} delivered while held by another delivery"
                assert d.delivery_count == count + 1
                q.pending[po] = [count + 1, True]
            else:
                assert po not in q.acked, f"acked message {po} delivered again"
                assert d.offset == q.cursor[d.partition], (po, q.cursor)
                assert d.delivery_count == 1
                q.cursor[d.partition] += 1
                q.pending[po] = [1, True]
        return ds

    @rule(ds=consumes(deliveries), data=st.data())
    def ack(self, ds: list[Any], data: st.DataObject) -> None:
        if not ds:
            return
        pick = data.draw(st.lists(st.sampled_from(ds), unique_by=id, min_size=1))
        fresh = [d for d in pick if self._current(d)]
        stale = [d for d in pick if not self._current(d)]
        if stale:
            with pytest.raises(StaleDeliveryError):
                self.queue.ack(pick)
        else:
            assert self.queue.ack(pick) == len(pick)
        for d in fresh:
            po = (d.partition, d.offset)
            del self.q.pending[po]
            self.q.acked.add(po)

    @rule(ds=consumes(deliveries))
    def ack_all(self, ds: list[Any]) -> None:
        fresh = [d for d in ds if self._current(d)]
        if fresh:
            assert self.queue.ack(fresh) == len(fresh)
        for d in fresh:
            po = (d.partition, d.offset)
            del self.q.pending[po]
            self.q.acked.add(po)

    @rule(ds=consumes(deliveries), data=st.data())
    def nack(self, ds: list[Any], data: st.DataObject) -> None:
        fresh = [d for d in ds if self._current(d)]
        if not fresh:
            return
        pick = data.draw(st.lists(st.sampled_from(fresh), unique_by=id, min_size=1))
        self.queue.nack(pick, delay=0.0)
        for d in pick:
            self.q.pending[(d.partition, d.offset)][1] = False

    def _current(self, d: Any) -> bool:
        """Whether ``d`` is the live delivery of its message (not acked, nacked or released)."""
        entry = self.q.pending.get((d.partition, d.offset))
        return entry is not None and entry[1] and entry[0] == d.delivery_count and \
            d._r.queue is self.queue

    # -- restart --------------------------------------------------------------------------
    @precondition(lambda self: self.broker is not None)
    @rule(go=st.integers(0, 3))
    def reopen(self, go: int) -> None:
        if go:  # a quarter of the time: reopening is the costliest step
            return
        for g in list(self.consumers):
            self.consumers.pop(g).close()
            del self.pos[g]
        self.queue.close()  # held messages become visible again at once
        for c in self.q.pending.values():
            c[1] = False
        self.broker.close()
        self.broker = mqlite.open(self.path, durability="none")
        self.queue = self.broker.queue(TOPIC, QGROUP, visibility_timeout=600.0)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def offsets_and_commits_agree(self) -> None:
        if self.broker is None:
            return
        d = self.broker.describe_topic(TOPIC)
        assert [p.end_offset for p in d.partitions] == [len(x) for x in self.log]
        for g in GROUPS:
            got = self.broker.committed_offsets(g, TOPIC)
            assert [got.get(p, 0) for p in range(PARTS)] == self.committed[g], g

    @invariant()
    def queue_counts_agree(self) -> None:
        if self.queue is None:
            return
        q = self.q
        unreceived = sum(len(self.log[p]) - q.cursor[p] for p in range(PARTS))
        assert self.queue.lag() == len(q.pending) + unreceived
        pend = {(e["partition"], e["offset"]): e["delivery_count"]
                for e in self.queue.pending()}
        assert pend == {po: c[0] for po, c in q.pending.items()}


# ~5 s in the CI profile; HYPOTHESIS_PROFILE=slow runs a tenth of its example budget.
_DEFAULT = settings.default
assert _DEFAULT is not None  # a profile is always loaded (conftest)
_EXAMPLES = 50 if _DEFAULT.max_examples <= 100 else _DEFAULT.max_examples // 10
BrokerModel.TestCase.settings = settings(max_examples=_EXAMPLES, stateful_step_count=40,
                                         deadline=None)
TestBrokerModel = BrokerModel.TestCase
