"""The write gate (csrc/wgate.h, D42): one process at a time inside LMDB's write lock.

LMDB's write lock is a robust pthread mutex.  A waiter woken by an unlock and
SIGKILLed before it takes the lock can leave the other sleepers asleep with
the lock free (the kill -9 torture stalled every writer that way, behind one
sleeping commit-ring leader).  The gate is an ``flock`` on ``data.mdb`` taken
before LMDB's lock, so writers of other processes wait in the kernel, which
hands a dead holder's lock on by itself.  Checked with real processes:

* a writer of another process waits on the gate (a blocked flock in
  ``/proc/locks``), not in LMDB's mutex, while a transaction is open;
* SIGKILLing the holder lets it through at once, and its send is stored.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import _procs_torture as procs
import pytest

import mqlite
from mqlite import _core

TIMEOUT_S = 60.0


def _gate_waiters(path: Path) -> set[int]:
    """Pids blocked on an flock of ``path`` (the ``->`` lines of /proc/locks)."""
    ino = os.stat(path).st_ino
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if "->" in f and f[f.index("->") + 1] == "FLOCK":
            rest = f[f.index("->") + 1:]  # FLOCK ADVISORY WRITE <pid> <maj:min:inode> ...
            if int(rest[4].rsplit(":", 1)[1]) == ino:
                pids.add(int(rest[3]))
    return pids


@pytest.mark.parametrize("mode", ["sync", "none"])
def test_writer_waits_on_the_gate_and_passes_when_the_holder_dies(
        children: Any, tmp_path: Path, mode: str) -> None:
    path = tmp_path / "b"
    with mqlite.open(path, durability=mode) as b:
        b.create_topic("t")
        b.send("t", b"before")
    ready, out = tmp_path / "ready", tmp_path / "out"
    holder = children.start("holder", procs.hold_write, str(path), str(ready), mode)
    children.wait_until(ready.exists, TIMEOUT_S, "the holder to begin its write")
    sender = children.start("sender", procs.send_after_gate, str(path), "t", str(out), mode)
    children.wait_until(lambda: sender.pid in _gate_waiters(path / "data.mdb"), TIMEOUT_S,
                        "the sender to wait on the write gate")
    assert not out.exists()  # it cannot pass while the holder is inside
    children.kill("holder")
    assert holder.exitcode == -9
    sender.join(TIMEOUT_S)
    assert sender.exitcode == 0, "the sender did not get through after the holder died"
    assert out.read_text() == "1"
    got: list[bytes | None] = []
    with mqlite.open(path, durability=mode) as b, \
            b.consumer("t", auto_offset_reset="earliest") as c:
        deadline = time.monotonic() + TIMEOUT_S
        while len(got) < 2 and time.monotonic() < deadline:
            got += [m.value for m in c.poll(timeout=0.5)]
    assert got == [b"before", b"after"]


def test_threads_of_one_process_share_the_gate(tmp_path: Path) -> None:
    """The first thread in takes the flock, the last one out drops it."""
    f = tmp_path / "data.mdb"
    f.write_bytes(b"")
    gate, other = _core.WriteGate(f), _core.WriteGate(f)  # two descriptions: two "processes"
    gate.enter()
    gate.enter()  # a second thread of the same process
    assert gate.inside == 2
    gate.leave()
    assert _held_by_other(f)  # still held: one thread is inside
    gate.leave()
    assert gate.inside == 0 and not _held_by_other(f)
    other.enter()
    assert other.inside == 1
    other.leave()
    gate.close()
    gate.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        gate.enter()
    with pytest.raises(FileNotFoundError):
        _core.WriteGate(tmp_path / "missing")


def _held_by_other(f: Path) -> bool:
    import fcntl
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
