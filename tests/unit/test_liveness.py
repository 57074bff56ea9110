"""The liveness service (``mqlite._liveness``): kernel locks shared by groups and queues.

Real processes, synchronised through pipes (a child reports its lock file name
on stdout once it holds the lock, then blocks reading stdin); no sleeps.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqlite import _liveness as lv
from mqlite.errors import GroupError

# Holds a MemberLock, prints its name, waits for stdin to close.
_HOLDER = """
import sys
from mqlite._liveness import MemberLock
lock = MemberLock.create(sys.argv[1], "t", file_mode=0o600, dir_mode=0o700)
print(lock.name, flush=True)
sys.stdin.read()
"""

# Holds a MemberLock, forks; the child reports whether it still holds it, then both
# block.  Prints: "<lock name> <child pid> <held>".
_FORKER = """
import os, sys
from mqlite._liveness import MemberLock
lock = MemberLock.create(sys.argv[1], "f", file_mode=0o600, dir_mode=0o700)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, b"%d" % lock.held)
    os.close(w)
    sys.stdin.read()
    os._exit(0)
os.close(w)
held = os.read(r, 16).decode()
print(lock.name, pid, held, flush=True)
sys.stdin.read()
"""


def _spawn(code: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = _spawn(_HOLDER, tmp_path)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    try:
        yield proc, os.path.join(lv.members_dir(str(tmp_path)), name)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_lock_of_a_live_process_is_alive_and_of_a_killed_one_dead(holder, tmp_path) -> None:
    proc, path = holder
    assert lv.probe_alive(path)
    assert lv.status(path, 60_000, _now_ms()) == "alive"
    prober = lv.Prober(lv.members_dir(str(tmp_path)))
    try:
        name = os.path.basename(path)
        assert prober.status(name, 60_000, _now_ms()) == "alive"
        assert prober.status(name, 60_000, _now_ms()) == "alive"  # cached descriptor
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not lv.probe_alive(path)
        assert lv.status(path, 60_000, _now_ms()) == "dead"
        assert prober.status(name, 60_000, _now_ms()) == "dead"
        assert prober.status(name, None, _now_ms()) == "dead"
    finally:
        prober.close()


def test_probing_does_not_make_the_lock_look_held_to_another_prober(holder, tmp_path) -> None:
    proc, path = holder
    a, b = lv.Prober(os.path.dirname(path)), lv.Prober(os.path.dirname(path))
    try:
        name = os.path.basename(path)
        proc.kill()
        proc.wait()
        assert a.status(name, None, _now_ms()) == "dead"
        assert b.status(name, None, _now_ms()) == "dead"  # a's probe left no lock behind
        assert a.status(name, None, _now_ms()) == "dead"
    finally:
        a.close()
        b.close()


def test_a_missing_lock_file_is_dead(tmp_path) -> None:
    d = lv.ensure_members_dir(str(tmp_path), 0o700)
    assert lv.status(os.path.join(d, "gone-1-x.lock"), 1000, _now_ms()) == "dead"
    prober = lv.Prober(d)
    try:
        assert prober.status("gone-1-x.lock", 1000, _now_ms()) == "dead"
    finally:
        prober.close()


def test_old_heartbeat_is_expired_and_a_heartbeat_revives_it(holder) -> None:
    _, path = holder
    old = time.time_ns() - 30 * 1_000_000_000
    os.utime(path, ns=(old, old))
    now = _now_ms()
    assert lv.status(path, 10_000, now) == "expired"
    assert lv.status(path, 60_000, now) == "alive"
    assert lv.status(path, None, now) == "alive"  # no timeout: never expires
    prober = lv.Prober(os.path.dirname(path))
    try:
        assert prober.status(os.path.basename(path), 10_000, now) == "expired"
    finally:
        prober.close()


def test_own_lock_heartbeat_and_close(tmp_path) -> None:
    lock = lv.MemberLock.create(str(tmp_path), "own", file_mode=0o600, dir_mode=0o700)
    try:
        assert lock.held
        assert lv.lock_pid(lock.name) == os.getpid()
        assert lock.name.startswith(f"own-{os.getpid()}-") and lock.name.endswith(".lock")
        assert stat.S_IMODE(os.stat(lock.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(lv.members_dir(str(tmp_path))).st_mode) == 0o700
        old = time.time_ns() - 30 * 1_000_000_000
        os.utime(lock.path, ns=(old, old))
        assert lv.status(lock.path, 10_000, _now_ms()) == "expired"
        lock.heartbeat()
        assert lv.status(lock.path, 10_000, _now_ms()) == "alive"
    finally:
        lock.close()
    assert not lock.held and not os.path.exists(lock.path)
    lock.close()  # idempotent
    lock.heartbeat()  # no-op once closed


def test_members_dir_that_is_a_symlink_is_refused(tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "members")
    with pytest.raises(GroupError, match="symlink"):
        lv.ensure_members_dir(str(tmp_path), 0o700)
    with pytest.raises(GroupError, match="symlink"):
        lv.MemberLock.create(str(tmp_path), "x", file_mode=0o600, dir_mode=0o700)


def test_lock_pid_of_names() -> None:
    assert lv.lock_pid("abc-def-123-0a1b2c3d.lock") == 123
    assert lv.lock_pid("q-owner-77-deadbeef.lock") == 77
    assert lv.lock_pid("q-owner.lock") is None
    assert lv.lock_pid("x-notapid-y.lock") is None


def test_forked_child_does_not_keep_the_parents_lock_alive(tmp_path) -> None:
    proc = _spawn(_FORKER, tmp_path)
    assert proc.stdout is not None and proc.stdin is not None
    child = 0
    try:
        name, child_s, held = proc.stdout.readline().split()
        child = int(child_s)
        assert held == "0", "the forked child still held an inherited lock"
        d = lv.members_dir(str(tmp_path))
        assert lv.probe_alive(os.path.join(d, name))
        proc.kill()
        proc.wait()
        os.kill(child, 0)  # the child is still running ...
        # ... and yet the parent's lock is free: the at-fork hook closed it there.
        assert lv.status(os.path.join(d, name), 60_000, _now_ms()) == "dead"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.stdin.close()
        proc.stdout.close()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this system")
def test_prober_wakes_when_a_tracked_peer_exits(holder) -> None:
    proc, path = holder
    prober = lv.Prober(os.path.dirname(path))
    try:
        name = os.path.basename(path)
        prober.track([name], [proc.pid])
        assert prober.status(name, None, _now_ms()) == "alive"
        assert not prober.wait(0)
        proc.kill()
        # Returns as soon as the pidfd fires; the timeout only bounds a failure.
        assert prober.wait(30.0)
        assert prober.status(name, None, _now_ms()) == "dead"
        assert not prober.wait(0)  # an exited pidfd fires once only
        prober.track([], [])
        assert not prober.fds and not prober.pidfds
    finally:
        prober.close()


def test_wake_ends_a_wait_at_once(tmp_path) -> None:
    prober = lv.Prober(lv.ensure_members_dir(str(tmp_path), 0o700))
    try:
        prober.wake()
        t = time.monotonic()
        assert not prober.wait(30.0)
        assert time.monotonic() - t < 10.0  # far below the 30 s timeout
    finally:
        prober.close()
    prober.close()  # idempotent
    prober.wake()  # after close: ignored, no descriptor touched
