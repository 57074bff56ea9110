"""The commit ring's C core (csrc/combine.h) through its binding: every state transition."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from mqlite import _core


def ring(tmp_path: Path, nslots: int = 4, slot_bytes: int = 128) -> _core.Combiner:
    return _core.Combiner(str(tmp_path / "ring.shm"), nslots, slot_bytes)


def dead_pid() -> int:
    p = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    assert p.pid is not None
    return p.pid


def test_a_slot_goes_free_claimed_filled_done_free(tmp_path: Path) -> None:
    r = ring(tmp_path)
    i = r.claim(os.getpid())
    assert r.word(i)[1] == _core.CLAIMED
    t = r.fill(i, b"payload")
    assert r.word(i) == (t, _core.FILLED)
    assert r.collect() == [(i, t)]
    assert r.payload(i) == b"payload"
    r.set_result(i, 7, 1, 2, 3)
    assert r.done(i, t)
    assert not r.done(i, t)  # a second (stale) committer's CAS fails
    assert r.result(i) == (7, 1, 2, 3)
    assert r.release(i, t)
    assert r.word(i) == (t, _core.FREE)
    assert r.collect() == []


def test_tickets_increase_and_collect_orders_by_ticket(tmp_path: Path) -> None:
    r = ring(tmp_path)
    slots = [r.claim(os.getpid()) for _ in range(4)]
    assert len(set(slots)) == 4 and r.claim(os.getpid()) == -1  # all busy
    tickets = [r.fill(i, b"x") for i in reversed(slots)]
    assert tickets == sorted(tickets)
    assert [t for _, t in r.collect()] == tickets
    assert [t for _, t in r.collect(2)] == tickets[:2]


def test_stale_done_cannot_touch_a_reused_slot(tmp_path: Path) -> None:
    r = ring(tmp_path, nslots=1)
    i = r.claim(os.getpid())
    t1 = r.fill(i, b"a")
    assert r.done(i, t1) and r.release(i, t1)
    assert r.claim(os.getpid()) == i
    t2 = r.fill(i, b"b")
    assert not r.done(i, t1)  # the old ticket's committer is late: no effect
    assert not r.release(i, t1)
    assert r.word(i) == (t2, _core.FILLED)


def test_withdraw_and_unclaim(tmp_path: Path) -> None:
    r = ring(tmp_path, nslots=1)
    i = r.claim(os.getpid())
    r.unclaim(i)
    assert r.word(i)[1] == _core.FREE
    i = r.claim(os.getpid())
    t = r.fill(i, b"a")
    assert r.withdraw(i, t)
    assert r.word(i) == (t, _core.FREE)
    i = r.claim(os.getpid())
    t = r.fill(i, b"a")
    assert r.done(i, t)
    assert not r.withdraw(i, t)  # already committed: the owner must take the result


def test_reclaim_frees_claimed_and_done_slots_of_dead_owners_only(tmp_path: Path) -> None:
    r = ring(tmp_path, nslots=3)
    gone = dead_pid()
    a = r.claim(gone)
    b = r.claim(gone)
    tb = r.fill(b, b"b")
    c = r.claim(gone)
    tc = r.fill(c, b"c")
    assert r.done(c, tc)
    assert r.claim(os.getpid()) in (a, c)  # full: claim reclaims dead owners' slots
    # a (CLAIMED) and c (DONE) of the dead owner were freed; b (FILLED) stays for a
    # committer: its owner got no answer, so committing it is allowed.
    assert r.word(b) == (tb, _core.FILLED)
    assert sorted((r.word(a)[1], r.word(c)[1])) == [_core.FREE, _core.CLAIMED]
    assert r.claim(os.getpid()) in (a, c)
    assert r.claim(os.getpid()) == -1  # b is FILLED, the others ours (alive)


def test_claim_puts_its_owner_in_the_word(tmp_path: Path) -> None:
    """A claim names its owner in the CAS itself: a reclaimer running between the CAS
    and the owner field's store must not read the slot's previous, dead owner."""
    r = ring(tmp_path, nslots=1)
    gone = dead_pid()
    i = r.claim(gone)
    t = r.fill(i, b"x")
    assert r.done(i, t) and r.release(i, t)  # FREE; the owner field still says `gone`
    assert r.claim(os.getpid()) == i
    assert r.word(i) == (os.getpid(), _core.CLAIMED)
    assert r.reclaim() == 0
    assert r.word(i) == (os.getpid(), _core.CLAIMED)


def test_file_is_private_and_layout_checked(tmp_path: Path) -> None:
    r = ring(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "ring.shm").st_mode)
    assert mode == 0o600
    r2 = ring(tmp_path)  # same layout: shares the slots
    i = r.claim(os.getpid())
    t = r2.fill(i, b"shared")
    assert r.word(i) == (t, _core.FILLED)
    with pytest.raises(ValueError, match="not a commit ring of this layout"):
        _core.Combiner(str(tmp_path / "ring.shm"), 8, 128)
    (tmp_path / "junk.shm").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError):
        _core.Combiner(str(tmp_path / "junk.shm"), 4, 128)
    os.symlink(tmp_path / "ring.shm", tmp_path / "link.shm")
    with pytest.raises(OSError):
        _core.Combiner(str(tmp_path / "link.shm"), 4, 128)


def test_bounds(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _core.Combiner(str(tmp_path / "a"), 0, 128)
    with pytest.raises(ValueError):
        _core.Combiner(str(tmp_path / "b"), 4, 100)
    r = ring(tmp_path)
    i = r.claim(os.getpid())
    with pytest.raises(ValueError, match="does not fit"):
        r.fill(i, b"x" * 129)
    with pytest.raises(ValueError, match="out of range"):
        r.word(4)
    with pytest.raises(TypeError):
        r.fill(i, "text")  # type: ignore[arg-type]
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.word(0)


def test_lock_is_exclusive_across_open_files(tmp_path: Path) -> None:
    r1 = ring(tmp_path)
    r2 = ring(tmp_path)
    assert r1.trylock()
    assert not r2.trylock()
    r1.unlock()
    assert r2.trylock()
    r2.unlock()


def test_wait_returns_when_the_slot_moves_on(tmp_path: Path) -> None:
    r = ring(tmp_path)
    i = r.claim(os.getpid())
    t = r.fill(i, b"x")
    assert not r.wait(i, t, 0.001)  # still FILLED: times out
    assert r.done(i, t)
    r.wake(i)
    assert r.wait(i, t, 5.0)  # DONE: returns at once


def test_a_ring_from_an_earlier_boot_starts_empty(tmp_path: Path) -> None:
    """After an OS crash the ring's slots were never answered (their senders died with
    the OS) and may be torn on disk: a file with another boot id is reset."""
    r = ring(tmp_path)
    i = r.claim(os.getpid())
    t = r.fill(i, b"in flight when the power went")
    r.close()
    path = tmp_path / "ring.shm"
    with open(path, "r+b") as f:
        f.seek(24)
        f.write(b"\x5a" * 16)  # another boot's id
    r2 = ring(tmp_path)
    assert r2.collect() == []
    assert all(r2.word(k)[1] == _core.FREE for k in range(r2.nslots))
    j = r2.claim(os.getpid())
    assert r2.fill(j, b"new") > t  # tickets never go back
    r3 = ring(tmp_path)  # same boot now: nothing is reset
    assert r3.collect() == [(j, r2.word(j)[0])]
