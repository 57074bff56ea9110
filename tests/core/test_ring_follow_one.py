"""D65: ``_core.ring_follow_one``, ``Engine.ring_submit(follow=True)`` for one payload
in compiled code (a group member's offset commit, an ack).

It must keep the Python path's protocol: follow a recent sender's commit, else
lead through ``engine._lead``; ``None`` with nothing handed over when the payload
does not fit or no slot is free; the slot withdrawn when the wait or the lead
raises; the lost-ring error when the slot left FILLED without becoming DONE.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import _core
from mqlite import _engine as _engmod

LATELY = 60_000_000_000
SLOW_COMMIT_NS = 500_000_000
NSLOTS = 8


class Lost(Exception):
    pass


class Leader:
    """A stand-in engine whose ``_lead`` commits the slots given (or does ``how``)."""

    def __init__(self, comb: _core.Combiner, how: str = "commit") -> None:
        self.comb = comb
        self.how = how
        self.leads = 0

    def _lead(self, comb: Any, mine: list[int], done: list[tuple[int, int]]) -> None:
        self.leads += 1
        for i, (ticket, _state) in zip(mine, done):
            if self.how == "raise":
                raise RuntimeError("the commit failed")
            if self.how == "lose":
                assert comb.withdraw(i, ticket)  # as a truncated file: neither FILLED nor DONE
                continue
            comb.set_result(i, 0, 7, 8, 9)
            assert comb.done(i, ticket)
            comb.wake(i)


def ring(tmp_path: Path) -> _core.Combiner:
    return _core.Combiner(str(tmp_path / "ring.shm"), NSLOTS, 128)


def call(eng: Any, r: _core.Combiner, payload: bytes = b"offsets",
         window_ns: int = LATELY) -> Any:
    return _core.ring_follow_one(eng, r, payload, threading.Lock(), window_ns,
                                 1_000_000_000, 0.002, 2, Lost)


def all_free(r: _core.Combiner) -> bool:
    got = [r.claim(os.getpid()) for _ in range(NSLOTS)]
    for i in got:
        if i >= 0:
            r.unclaim(i)
    return r.filled() == 0 and all(i >= 0 for i in got)


def test_alone_it_leads_its_own_commit(tmp_path: Path) -> None:
    r = ring(tmp_path)  # no send seen: no follow
    eng = Leader(r)
    assert call(eng, r) == (0, 7, 8, 9)
    assert eng.leads == 1
    assert all_free(r)


def test_it_rides_a_senders_commit(tmp_path: Path) -> None:
    r = ring(tmp_path)
    r.note_commit(1, SLOW_COMMIT_NS)
    r.note_send()  # a send filled lately: follow
    eng = Leader(r)

    def sender_commit() -> None:
        other = Leader(r)
        while r.filled() == 0:
            pass
        assert r.trylock()
        try:
            (i, _t), = r.collect()
            ticket, _state = r.word(i)
            other._lead(r, [i], [(ticket, _core.DONE)])
        finally:
            r.unlock()

    th = threading.Thread(target=sender_commit)
    th.start()
    assert call(eng, r) == (0, 7, 8, 9)
    th.join(10)
    assert eng.leads == 0  # it waited for the other committer
    assert all_free(r)


def test_no_room_hands_nothing_over(tmp_path: Path) -> None:
    r = ring(tmp_path)
    eng = Leader(r)
    assert call(eng, r, b"x" * (r.slot_bytes + 1)) is None
    held = [r.claim(os.getpid()) for _ in range(NSLOTS)]
    assert call(eng, r) is None
    for i in held:
        r.unclaim(i)
    assert eng.leads == 0 and all_free(r)


def test_a_failed_lead_withdraws_the_slot(tmp_path: Path) -> None:
    r = ring(tmp_path)
    eng = Leader(r, "raise")
    with pytest.raises(RuntimeError, match="commit failed"):
        call(eng, r)
    assert all_free(r)


def test_a_lost_slot_raises_the_lost_error(tmp_path: Path) -> None:
    r = ring(tmp_path)
    eng = Leader(r, "lose")
    with pytest.raises(Lost, match="was truncated"):
        call(eng, r)
    assert all_free(r)


@pytest.mark.parametrize("bad", [{"max_ns": -1}, {"max_ns": 2_000_000_000},
                                 {"wait_s": -1.0}, {"hand_over": 10**6}])
def test_bad_arguments(tmp_path: Path, bad: dict[str, Any]) -> None:
    r = ring(tmp_path)
    args: dict[str, Any] = {"max_ns": 1, "wait_s": 0.002, "hand_over": 2}
    args.update(bad)
    with pytest.raises(ValueError):
        _core.ring_follow_one(Leader(r), r, b"x", threading.Lock(), -1, args["max_ns"],
                              args["wait_s"], args["hand_over"], Lost)
    assert all_free(r)


def test_group_commits_take_the_compiled_path(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = _core.ring_follow_one

    def spy(eng: Any, comb: Any, payload: bytes, *rest: Any) -> Any:
        calls.append(payload)
        return real(eng, comb, payload, *rest)

    monkeypatch.setattr(_core, "ring_follow_one", spy)
    b = mqlite.open(tmp_path / "b", durability="sync")
    try:
        b.create_topic("t")
        b.send("t", b"a")
        c = b.consumer("t", group="g", commit="manual", auto_offset_reset="earliest")
        assert [m.value for m in c.poll(10, timeout=5)] == [b"a"]
        c.commit()
        assert len(calls) == 1
        assert c.committed(mqlite.TopicPartition("t", 0)) == 1
        c.close()
    finally:
        b.close()
    assert _engmod.FOLLOW_MAX_NS <= 1_000_000_000  # what the engine passes is accepted
