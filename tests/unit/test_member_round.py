"""A group member's per-round shortcuts keep their results (D65).

The commit through the ring builds its payload from a head cached per
incarnation and checks ownership against a set cached per ``owned`` list;
a draining call makes its first attempt without a closure.  Each must give
exactly what the uncached form gave.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import _engine
from mqlite._storage.env import MapExhaustedError
from mqlite.groups import member as _member
from mqlite.types import TopicPartition


@pytest.fixture
def broker(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    b = mqlite.open(tmp_broker_dir, durability="sync")
    b.create_topic("t", partitions=2)
    yield b
    b.close()


def _member_of(broker: mqlite.Broker) -> Any:
    c = broker.consumer("t", group="g", commit="manual")
    while len(c.assignment()) < 2:
        c.poll(timeout=0.2)
    return c, c._group


def _captured(g: Any, todo: dict[TopicPartition, int]) -> bytes:
    seen: list[bytes] = []

    def submit(comb: Any, payloads: list[bytes], *, follow: bool = False) -> Any:
        assert follow
        seen.extend(payloads)
        return [(_engine.RING_OK, 0, 0, 0)]

    real = g.engine.ring_submit
    g.engine.ring_submit = submit
    try:
        assert g._commit_by_ring(todo)
    finally:
        g.engine.ring_submit = real
    assert len(seen) == 1
    return seen[0]


def _expected(g: Any, todo: dict[TopicPartition, int]) -> bytes:
    return bytes((_member.RING_KIND_OFFSETS,)) + _member._ring_enc.encode(_member._RingOffsets(
        g.group, g.member_id, g._lock_name,
        [(tp.topic, tp.partition, off, g._pids.get(tp, -1)) for tp, off in todo.items()]))


def test_ring_payload_is_the_struct_encoding(broker: mqlite.Broker) -> None:
    c, g = _member_of(broker)
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    for todo in ({tp0: 5}, {tp1: 2**63 - 1, tp0: 0}):
        got = _captured(g, todo)
        assert got == _expected(g, todo)
        op = _member._ring_dec.decode(got[1:])
        assert (op.group, op.member_id, op.lock) == ("g", g.member_id, g._lock_name)
    # another incarnation (a lock taken over, a rejoin): the head follows it
    g._lock_name = "other-lock"
    assert _captured(g, {tp0: 7}) == _expected(g, {tp0: 7})
    g.member_id = "m-other"
    assert _captured(g, {tp1: 8}) == _expected(g, {tp1: 8})
    c.close()


def test_ring_commit_follows_a_replaced_owned_list(broker: mqlite.Broker) -> None:
    c, g = _member_of(broker)
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert g._held() == {tp0, tp1}
    g.owned = [tp0]  # as _sync replaces it after a revocation
    assert g._commit_by_ring({tp0: 1}, fenced_ok=True) in (True, False)
    assert not g._commit_by_ring({tp1: 1})  # not owned any more: never through the ring
    g.owned = [tp0, tp1]
    c.close()


def test_draining_retries_after_a_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    @_engine.draining
    def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) < 3:
            raise MapExhaustedError("pinned")
        return n * 2

    assert flaky(21) == 42
    assert calls == [21, 21, 21]
    monkeypatch.setattr(_engine, "DRAIN_RETRY_S", 0.01)

    @_engine.draining
    def stuck() -> None:
        calls.append(0)
        raise MapExhaustedError("pinned")

    calls.clear()
    with pytest.raises(MapExhaustedError):
        stuck()
    assert len(calls) >= 2
    calls.clear()
    with pytest.raises(MapExhaustedError):
        _engine.retry_draining(stuck.__wrapped__)  # type: ignore[attr-defined]
    assert len(calls) >= 2
