"""D60: the commit ring's leading hint (bit 1 of the header's holder word).

``mq_comb_trylock`` sets it once the combining lock is taken, ``mq_comb_unlock``
clears it before the lock goes; a sender whose slot is FILLED waits instead of
trying the lock while it is set, and tries after a wait that timed out.  The
kernel's lock stays the only truth: a hint left by a leader killed with -9 costs
each sender at most one bounded wait.  These tests pin the transitions, that
every way out of a lead clears it, and that a stale one does not stop senders.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import _core
from mqlite import _engine as _engmod

_HOLDER_OFF = 44
_GATHERING, _LEADING = 1, 2


def _holder_word(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(_HOLDER_OFF)
        return int.from_bytes(f.read(4), sys.byteorder)


def _set_holder_word(path: Path, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(_HOLDER_OFF)
        f.write(value.to_bytes(4, sys.byteorder))


def _ring_file(b: mqlite.Broker) -> Path:
    return Path(b._engine.env.combiner.path)


def _busy(b: mqlite.Broker) -> int:
    """Fill a slot no live process owns with an operation the committer refuses: the
    ring is busy (a send goes through a slot, not the idle-ring path)."""
    comb = b._engine.env.combiner
    idx = comb.claim(99999999)
    assert idx >= 0
    comb.fill(idx, b"\x09")
    return int(idx)


def test_trylock_sets_and_unlock_clears_the_hint(tmp_path: Path) -> None:
    path = tmp_path / "ring.shm"
    r = _core.Combiner(str(path), 8, 128)
    other = _core.Combiner(str(path), 8, 128)  # another open file description
    try:
        assert not r.held() and _holder_word(path) == 0
        assert r.trylock()
        assert r.held() and other.held() and _holder_word(path) == _LEADING
        assert not r.gathering()
        assert not other.trylock()  # a failed trylock leaves the holder's hint alone
        assert _holder_word(path) == _LEADING
        r.unlock()
        assert not r.held() and not other.held() and _holder_word(path) == 0
        assert other.trylock()
        assert r.held()
        other.unlock()
        assert not r.held()
    finally:
        other.close()
        r.close()


def test_a_version_1_gatherer_flag_reads_as_held(tmp_path: Path) -> None:
    """A holder built before D60 sets only bit 0 (as 1) while it gathers."""
    path = tmp_path / "ring.shm"
    r = _core.Combiner(str(path), 8, 128)
    try:
        _set_holder_word(path, _GATHERING)
        assert r.held() and r.gathering()
    finally:
        r.close()


def test_a_gather_keeps_the_leading_bit(tmp_path: Path) -> None:
    """The lock holder's gather clears a gathering bit a dead holder left, and only it."""
    path = tmp_path / "ring.shm"
    r = _core.Combiner(str(path), 8, 128)
    try:
        assert r.trylock()
        _set_holder_word(path, _LEADING | _GATHERING)  # a holder killed in its gather
        r.gather(1000)
        assert _holder_word(path) == _LEADING and r.held() and not r.gathering()
        r.unlock()
        assert _holder_word(path) == 0
    finally:
        r.close()


@pytest.mark.parametrize("step", ["_ring_commit", "_take_ring"])
def test_the_hint_is_cleared_when_the_lead_raises(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  step: str) -> None:
    """An exception inside ``Engine._lead`` (the compiled sender's lead) unlocks, and
    the unlock clears the hint: the next sender leads at once."""
    path = tmp_path / "b"

    class Boom(Exception):
        pass

    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        _busy(b)
        seen: list[bool] = []

        def boom(self: Any, txn: Any, *args: Any) -> None:
            seen.append(comb.held())
            if step == "_ring_commit":
                self.env.abort(txn)  # as a commit that failed leaves it
            raise Boom

        monkeypatch.setattr(_engmod.Engine, step, boom)
        with pytest.raises(Boom):
            b.send("t", b"lost")
        assert seen == [True]  # the leader's hint was set while it led
        assert not comb.held() and _holder_word(_ring_file(b)) == 0
        monkeypatch.undo()
        b.send("t", b"after")
        assert not comb.held()
        assert [m.value for m in b._engine.read_partition("t")] == [b"0", b"after"]


_SENDER = """
import sys, mqlite
name, n = sys.argv[2], int(sys.argv[3])
b = mqlite.open(sys.argv[1], durability="sync")
if sys.argv[4] == "warm":
    b.send("t", ("%s-warm" % name).encode())  # later sends take the compiled path (D56)
print("ready", flush=True)
sys.stdin.readline()
for k in range(n):
    b.send("t", ("%s-%d" % (name, k)).encode())
b.close()
print("done", flush=True)
"""


def _start_sender(path: Path, name: str, n: int, warm: bool) -> subprocess.Popen[str]:
    """A child that sends ``name-0`` .. ``name-(n-1)`` once :func:`_go` tells it to."""
    p = subprocess.Popen([sys.executable, "-c", _SENDER, str(path), name, str(n),
                          "warm" if warm else "cold"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _go(senders: list[subprocess.Popen[str]]) -> None:
    """Let the senders send; each must be done within a generous bound (a sender that
    never tried the lock again on a stale hint would hang, and fail here)."""
    for p in senders:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    try:
        for p in senders:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "done"
    finally:
        for p in senders:
            if p.poll() is None:
                p.kill()
                p.wait(60)


@pytest.mark.parametrize("warm", [True, False], ids=["compiled", "first-send"])
def test_a_stale_hint_costs_a_bounded_wait(tmp_path: Path, warm: bool) -> None:
    """A hint set with nobody holding the lock (its leader died between set and clear):
    a sender whose slot waits tries the lock after one timed-out wait, leads, and its
    unlock clears the hint.  A process's first send takes the Python ring path
    (``Engine.ring_submit``), later ones the compiled one."""
    path = tmp_path / "b"
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        sender = _start_sender(path, "s", 3, warm)
        _busy(b)
        _set_holder_word(_ring_file(b), _LEADING)
        assert comb.held()
        _go([sender])
        assert not comb.held()
        values = [m.value for m in b._engine.read_partition("t")]
        assert values == [b"0"] + [b"s-warm"] * warm + [b"s-0", b"s-1", b"s-2"]


_STUCK_LEADER = """
import sys, mqlite
from mqlite import _engine
b = mqlite.open(sys.argv[1], durability="sync")
b.send("t", b"warm")
comb = b._engine.env.combiner
idx = comb.claim(99999999)                 # keep the ring busy: no solo commit
comb.fill(idx, b"\\x09")                    # an unknown kind: the committer refuses it

def stuck(self, txn):                      # the lead's commit step: report, then hang
    print("leading" if comb.held() else "no hint", flush=True)
    sys.stdin.readline()                   # SIGKILLed here, the hint set

_engine.Engine._ring_commit = stuck
b.send("t", b"dead-leader")
print("returned", flush=True)
"""


def test_a_leader_killed_with_its_hint_set(tmp_path: Path) -> None:
    """A leader SIGKILLed inside its lead (hint set, lock dropped by the kernel): the
    warm senders of three other processes all complete; the dead leader's
    message is stored at most once; the hint is clear afterwards."""
    path = tmp_path / "b"
    n = 40
    names = ("a", "b", "c")
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        senders = [_start_sender(path, name, n, warm=True) for name in names]
        leader = subprocess.Popen([sys.executable, "-c", _STUCK_LEADER, str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert leader.stdin is not None and leader.stdout is not None
        try:
            assert leader.stdout.readline().strip() == "leading"
            assert comb.held()
        finally:
            leader.kill()
            assert leader.wait(60) == -signal.SIGKILL
            leader.stdin.close()
            leader.stdout.close()
        assert comb.held()  # stale: nobody holds the lock, the hint stays
        assert comb.filled() >= 2  # the junk slot and the dead leader's: the ring is busy
        _go(senders)
        assert not comb.held()
        values = [m.value or b"" for m in b._engine.read_partition("t")]
        warm = [b"%s-warm" % s.encode() for s in names]
        assert values[0] == b"0" and sorted(values[1:5]) == sorted(warm + [b"warm"])
        assert values.count(b"dead-leader") <= 1
        rest = [v for v in values[5:] if v != b"dead-leader"]
        assert sorted(rest) == sorted(b"%s-%d" % (s.encode(), k) for s in names
                                      for k in range(n))
        for s in names:  # each sender's order
            mine = [v for v in rest if v.startswith(s.encode() + b"-")]
            assert mine == [b"%s-%d" % (s.encode(), k) for k in range(n)]
        comb.reclaim()
        assert comb.filled() == 0
