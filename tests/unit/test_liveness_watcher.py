"""The process's one liveness watcher thread (``mqlite._liveness.watch``, D32).

Peers are real processes holding a ``q-`` lock, synchronised through pipes (a
child prints its lock file name once it holds the lock, then blocks reading
stdin); waits are on events with generous timeouts, never sleeps for order.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqlite
from mqlite import _liveness as lv

_HOLDER = """
import sys
from mqlite._liveness import MemberLock
lock = MemberLock.create(sys.argv[1], "q-peer", file_mode=0o600, dir_mode=0o700)
print(lock.name, flush=True)
sys.stdin.read()
"""


class Peer:
    """Another process holding a queue consumer's lock file in ``path``/members."""

    def __init__(self, path: Path) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDER), str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        self.name = self.p.stdout.readline().strip()
        assert self.name.startswith("q-peer-")

    def kill(self) -> None:
        self.p.kill()
        self.p.wait(30)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(30)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


class Reaper:
    """A subscriber that records the dead lock files it finds and removes them."""

    def __init__(self, path: Path) -> None:
        self.mdir = lv.members_dir(str(path))
        self.found: list[str] = []
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        for name in sorted(os.listdir(self.mdir)):
            if name.startswith("q-peer-") and lv.status(os.path.join(self.mdir, name), None,
                                                        0) == "dead":
                self.found.append(name)
                lv.unlink_quiet(os.path.join(self.mdir, name))
                self.event.set()


def _watcher() -> threading.Thread | None:
    return lv._hub.thread


def _settle() -> None:
    """Wait for watcher threads of earlier tests that are still ending."""
    for t in threading.enumerate():
        if t.name == "mqlite-liveness" and t is not lv._hub.thread:
            t.join(30)


def _voluntary_switches(t: threading.Thread) -> int:
    with open(f"/proc/self/task/{t.native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_many_subscribers_share_one_thread_that_ends_with_the_last(tmp_path: Path) -> None:
    lv.ensure_members_dir(str(tmp_path), 0o700)
    _settle()
    assert lv.watcher_threads() == 0
    fds = len(os.listdir("/proc/self/fd"))
    watches = [lv.watch(str(tmp_path), "q-", lambda: None) for _ in range(200)]
    assert lv.watcher_threads() == 1
    assert [t.name for t in threading.enumerate()].count("mqlite-liveness") == 1
    t = _watcher()
    assert t is not None
    for w in watches:
        w.close()
    w.close()  # idempotent
    t.join(30)
    assert not t.is_alive() and lv.watcher_threads() == 0
    assert len(os.listdir("/proc/self/fd")) == fds  # pipe, inotify, probe fds all closed


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_a_peer_that_joins_later_and_dies_wakes_the_watcher_without_a_timed_tick(
        tmp_path: Path, peers: list[Peer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The period is an hour: only inotify (the peer's lock file appears) and the peer's
    pidfd (it exits) can wake the watcher."""
    monkeypatch.setattr(lv, "PROBE_INTERVAL", 3600.0)
    lv.ensure_members_dir(str(tmp_path), 0o700)
    reaper = Reaper(tmp_path)
    w = lv.watch(str(tmp_path), "q-", reaper)
    try:
        peers.append(Peer(tmp_path))
        # the watcher lists the new file and opens the peer's pidfd: no reap (it is alive)
        pid = peers[0].p.pid
        assert _wait_for(lambda: (run := lv._hub.run) is not None and pid in run.pidfds)
        assert reaper.calls == 0
        peers[0].kill()
        assert reaper.event.wait(30)
        assert reaper.found == [peers[0].name]
    finally:
        w.close()


def test_without_pidfds_a_dead_peer_is_found_by_the_periodic_probe(
        tmp_path: Path, peers: list[Peer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer whose pidfd cannot be opened (another pid namespace) is still probed every
    PROBE_INTERVAL, and a dead one is reaped once, not every tick."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    peers.append(Peer(tmp_path))
    reaper = Reaper(tmp_path)
    w = lv.watch(str(tmp_path), "q-", reaper)
    try:
        peers[0].kill()
        assert reaper.event.wait(30)
        assert reaper.found == [peers[0].name]
    finally:
        w.close()


def test_a_dead_lock_nobody_removes_runs_the_reaps_once(tmp_path: Path,
                                                        peers: list[Peer]) -> None:
    peers.append(Peer(tmp_path))
    peers[0].kill()  # its lock file stays: no subscriber here removes it
    called = threading.Event()
    calls: list[int] = []

    def reap() -> None:
        calls.append(1)
        called.set()

    w = lv.watch(str(tmp_path), "q-", reap)
    try:
        assert called.wait(30)
        t = _watcher()
        assert t is not None
        # it goes idle again: a handful of ticks, not one reap per tick
        n0 = _voluntary_switches(t)
        time.sleep(0.5)
        assert len(calls) == 1
        assert _voluntary_switches(t) - n0 <= 3
    finally:
        w.close()


def test_a_failing_reap_is_retried_until_it_succeeds(tmp_path: Path, peers: list[Peer]) -> None:
    peers.append(Peer(tmp_path))
    calls: list[int] = []
    done = threading.Event()

    def reap() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        done.set()

    w = lv.watch(str(tmp_path), "q-", reap)
    try:
        peers[0].kill()
        assert done.wait(30)
    finally:
        w.close()
    assert len(calls) == 3


def test_idle_watcher_sleeps_without_ticking(tmp_path: Path) -> None:
    """No peers: the watcher sleeps until a lock file of another process appears (it
    would wake 20 times a second if it polled)."""
    b = mqlite.open(tmp_path, durability="none")
    try:
        b.create_topic("t")
        qs = [b.queue("t", group=f"g{i}") for i in range(20)]
        t = _watcher()
        assert t is not None
        time.sleep(0.2)  # let it settle after the consumers' own lock files appeared
        n0 = _voluntary_switches(t)
        time.sleep(1.0)
        assert _voluntary_switches(t) - n0 <= 2
        for q in qs:
            q.close()
    finally:
        b.close()


def test_closing_a_queue_in_a_forked_child_does_not_wait(tmp_path: Path) -> None:
    b = mqlite.open(tmp_path, durability="none")
    try:
        b.create_topic("t")
        q = b.queue("t", group="g")
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                t0 = time.monotonic()
                q.close()  # the parent's subscription: not this process's watcher
                code = 0 if time.monotonic() - t0 < 0.5 and lv.watcher_threads() == 0 else 2
            finally:
                os.write(wfd, bytes([code]))
                os._exit(0)
        os.close(wfd)
        got = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert got == b"\0"
        assert lv.watcher_threads() == 1
        q.close()
    finally:
        b.close()


class _ReleasingTime:
    """Stands in for ``time`` in ``mqlite._liveness``: its first ``sleep`` releases a
    prober's shared lock (the prober finishing its two system calls)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_creating_a_lock_retries_while_a_prober_holds_the_fresh_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's watcher may probe a lock file between its creation and the
    owner's flock (found by the kill -9 torture test): the owner retries."""
    path = tmp_path / "fresh.lock"
    owner = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    prober = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(prober, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the probe, mid-way
        clock = _ReleasingTime(prober)
        monkeypatch.setattr(lv, "time", clock)
        lv._lock_new(owner)
        assert clock.sleeps == 1
        assert lv.lock_held(prober)  # the owner holds it now
        # a prober that never lets go: the owner gives up after its attempts
        other = tmp_path / "stuck.lock"
        stuck = os.open(other, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        holder = os.open(other, os.O_RDONLY)
        try:
            fcntl.flock(holder, fcntl.LOCK_SH | fcntl.LOCK_NB)
            monkeypatch.setattr(lv, "time", _ReleasingTime(-1))
            monkeypatch.setattr(lv, "_LOCK_ATTEMPTS", 3)
            with pytest.raises(BlockingIOError):
                lv._lock_new(stuck)
        finally:
            os.close(holder)
            os.close(stuck)
    finally:
        os.close(prober)
        os.close(owner)
