"""The process's one group watcher thread (docs/decisions.md D41), with real processes.

Every stream-group member of a process, of every group, is heartbeated and
watched by one thread (``mqlite-group-watcher``).  These tests check, across
processes, what the per-member threads guaranteed before: idle members stay
alive on the watcher's heartbeats alone; a SIGKILLed process's members are
reaped and their partitions reassigned; the exit is noticed through the
process's pidfd, not only the periodic probe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _child_env import HERE, child_env
from _polling import wait_until

import mqlite
from mqlite.groups import watcher as group_watcher

SESSION = 0.6  # seconds: the children's members expire after this without heartbeats


class _Children:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, path: Path, n: int, session: float) -> tuple[subprocess.Popen[str],
                                                                  dict[str, Any]]:
        p = subprocess.Popen([sys.executable, "-m", "_procs_group_watcher", str(path), str(n),
                              str(session)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=child_env(), cwd=str(HERE))
        self.procs.append(p)
        assert p.stdout is not None and p.stderr is not None
        line = p.stdout.readline()  # blocks until the child is ready (or dies: "")
        assert line.startswith("ready "), (line, p.stderr.read() if p.poll() is not None
                                           else "")
        return p, json.loads(line[6:])

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def children() -> Any:
    c = _Children()
    yield c
    c.cleanup()


def _holds_pidfd(pid: int) -> bool:
    """True when this process has a pidfd open on ``pid`` (read from /proc/self/fdinfo)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                if f"Pid:\t{pid}\n" in f.read():
                    return True
        except OSError:
            continue  # closed meanwhile
    return False


def _pids(broker: mqlite.Broker, group: str) -> list[int]:
    return sorted(m.pid for m in broker.describe_group(group).members)


def test_idle_members_live_on_the_shared_heartbeat_and_a_killed_process_is_reaped(
        tmp_broker_dir: Path, children: _Children) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("t", partitions=8)
        a, info_a = children.start(tmp_broker_dir, 3, SESSION)
        b, info_b = children.start(tmp_broker_dir, 3, SESSION)
        for info in (info_a, info_b):
            group_threads = [t for t in info["threads"] if t.startswith("mqlite-group")]
            assert group_threads == ["mqlite-group-watcher"], info["threads"]
        pa, pb = info_a["pid"], info_b["pid"]
        assert _pids(broker, "g") == sorted([pa] * 3 + [pb] * 3)
        gen = broker.describe_group("g").generation
        # Five session timeouts with no poll anywhere: only the watcher threads'
        # heartbeats keep the 8 members alive (without them each would expire).
        end = time.monotonic() + 5 * SESSION
        while time.monotonic() < end:
            for group, n in (("g", 6), ("h", 2)):
                d = broker.describe_group(group)
                assert len(d.members) == n, d
                assert all(m.status == "alive" for m in d.members), d
            assert broker.describe_group("g").generation == gen
            threading.Event().wait(0.05)
        # SIGKILL one process: the other's watcher reaps its members (crash, not expiry:
        # the lock is free at once) and their partitions go to the survivors.
        b.send_signal(signal.SIGKILL)
        b.wait(30)
        wait_until(lambda: _pids(broker, "g") == [pa] * 3 and _pids(broker, "h") == [pa],
                   30.0, "the killed process's members reaped")
        d = broker.describe_group("g")
        assert sorted(tp.partition for m in d.members for tp in m.assigned) == list(range(8))
        assert not [n for n in os.listdir(tmp_broker_dir / "members") if f"-{pb}-" in n]
        # The survivor leaves cleanly: nothing of either process is left in the groups.
        assert a.stdin is not None and a.stdout is not None
        a.stdin.write("stop\n")
        a.stdin.flush()
        assert a.stdout.readline().strip() == "bye"
        assert a.wait(30) == 0
        assert broker.describe_group("g").members == []
        assert broker.describe_group("h").members == []


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_a_killed_process_is_noticed_through_its_pidfd(
        tmp_broker_dir: Path, children: _Children, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's watcher ticks once an hour, so only the child's pidfd can wake it:
    the child's members are still reaped at once after its SIGKILL."""
    monkeypatch.setattr(group_watcher, "_WATCH_INTERVAL", 3600.0)
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("t", partitions=4)
        child, info = children.start(tmp_broker_dir, 2, 30.0)
        mine = broker.consumer("t", group="g", session_timeout=30.0)
        mine.poll(timeout=0.01)  # joins; the watcher starts and holds the child's pidfd
        wait_until(lambda: _holds_pidfd(child.pid), 30.0, "the watcher holds the child's pidfd")
        assert _pids(broker, "g") == sorted([child.pid] * 2 + [os.getpid()])
        t0 = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        wait_until(lambda: _pids(broker, "g") == [os.getpid()], 30.0, "reaped via the pidfd")
        assert time.monotonic() - t0 < 30.0
        mine.close()
        assert info["pid"] == child.pid
