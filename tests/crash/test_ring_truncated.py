"""Truncating a commit ring file (``commit-*.shm``) under a live process (D35).

Without a guard the next access to a page past the new end of the file killed
the process with SIGBUS.  The ring's mapping is registered with the SIGBUS
guard (csrc/guard.h, MQ_GUARD_REGROW): the file is grown back with zeros, the
process stops handing operations to the ring (its header no longer matches)
and commits alone, and a sender whose slot was zeroed while it waited gets a
``StorageError`` saying its records may or may not have been stored.  Each
victim runs in a child process (a bus error fails the test instead of killing
pytest); parent and child synchronise over its stdin/stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_RING = """
import os, sys
from mqlite import _core
r = _core.Combiner(sys.argv[1], 64, 65536 - 64)
i = r.claim(os.getpid())
if i == 0:                                # slot 0 shares the header's page: take another
    i = r.claim(os.getpid())
t = r.fill(i, b"x" * 100)
print("ready", flush=True)
sys.stdin.readline()                      # the parent truncated the file
assert r.word(i) == (0, _core.FREE)       # zeros: FREE(0)
intact = r.intact()
j = r.claim(os.getpid())                  # none when the header is gone
assert (j >= 0) == intact
assert r.gather(1000) == 0
print("alive", _core.guard_faults(), int(intact), flush=True)
"""

_BROKER = """
import sys, mqlite
b = mqlite.open(sys.argv[1], durability="sync")
b.create_topic("t")
b.send("t", b"before")                    # through the ring (this process leads)
print("ready", flush=True)
sys.stdin.readline()                      # the parent truncated commit-sync.shm
md = b.send("t", b"after")                # commits alone now
assert md.offset == 1, md
assert b.send_batch("t", [b"a", b"b"]).ranges[0].base_offset == 2
assert [m.value for m in b._engine.read_partition("t")] == [b"before", b"after", b"a", b"b"]
b.close()
print("alive", flush=True)
"""

_WAITER = """
import sys, threading, mqlite
b = mqlite.open(sys.argv[1], durability="sync")
b.create_topic("t")
env = b._engine.env
comb = env.combiner
got = []
def send():
    try:
        b.send("t", b"waits")
        got.append("returned")
    except mqlite.StorageError as exc:
        got.append(str(exc))
with env.comb_lock:                       # no thread of ours can lead: the sender waits
    th = threading.Thread(target=send)
    th.start()
    while comb.filled() == 0:             # its slot is FILLED (it then waits 2 ms at a time)
        comb.gather(0)
    print("ready", flush=True)
    sys.stdin.readline()                  # the parent truncated commit-sync.shm
    th.join(60)
assert not th.is_alive()
print("alive", got[0].replace(chr(10), " "), flush=True)
"""


def _run_and_truncate(code: str, arg: str, victim: Path, cut: int) -> str:
    p = subprocess.Popen([sys.executable, "-c", code, arg], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        os.truncate(victim, cut)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, f"child died (signal {-p.returncode}): {err[-2000:]}"
    return out


@pytest.mark.parametrize("cut", [0, 100])
def test_truncated_ring_file_is_grown_back_not_a_sigbus(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "ring.shm"
    out = _run_and_truncate(_RING, str(path), path, cut)
    assert out.startswith("alive")
    faults, intact = map(int, out.split()[1:])
    assert faults >= 1
    assert intact == (cut >= 16)  # the header's magic, version and layout survive a cut at 100
    assert os.path.getsize(path) == 64 + 64 * 65536


def test_broker_commits_alone_after_its_ring_was_truncated(tmp_broker_dir: Path) -> None:
    out = _run_and_truncate(_BROKER, str(tmp_broker_dir), tmp_broker_dir / "commit-sync.shm", 0)
    assert out.strip() == "alive"


def test_a_sender_waiting_in_a_truncated_ring_hears_of_an_unknown_outcome(
        tmp_broker_dir: Path) -> None:
    out = _run_and_truncate(_WAITER, str(tmp_broker_dir), tmp_broker_dir / "commit-sync.shm", 0)
    assert out.startswith("alive")
    assert "may or may not have been stored" in out
