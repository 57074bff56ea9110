"""The process's one stream-group watcher thread (docs/decisions.md D41).

Multi-process behaviour (heartbeats keeping idle members alive, a SIGKILLed
process reaped, through its pidfd) is in
tests/integration/test_group_watcher_procs.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from _polling import wait_until

import mqlite
from mqlite.groups import watcher as group_watcher


def _group_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("mqlite-group"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_thread_for_every_member_of_every_group_and_handle(tmp_path: Path) -> None:
    b1 = mqlite.open(tmp_path / "a", durability="none")
    b2 = mqlite.open(tmp_path / "b", durability="none")
    for b in (b1, b2):
        b.create_topic("t", partitions=4)
    wait_until(lambda: group_watcher.watcher_threads() == 0, 30.0, "earlier tests' watcher gone")
    fds = _fds()
    cs = [b1.consumer("t", group=f"g{i % 3}") for i in range(30)]
    cs += [b2.consumer("t", group="g0") for _ in range(10)]
    for _ in range(2):
        for c in cs:
            c.poll(timeout=0)
    assert _group_threads() == ["mqlite-group-watcher"]
    assert group_watcher.watcher_threads() == 1
    # every member joined and is judged alive by the others' shared ticks
    for b, groups in ((b1, ("g0", "g1", "g2")), (b2, ("g0",))):
        for g in groups:
            d = b.describe_group(g)
            assert d.members and all(m.status == "alive" for m in d.members), d
    for c in cs[:-1]:
        c.close()
    assert _group_threads() == ["mqlite-group-watcher"]  # one member left
    cs[-1].close()
    wait_until(lambda: group_watcher.watcher_threads() == 0 and not _group_threads(), 30.0,
               "the watcher thread ends after the last member")
    wait_until(lambda: _fds() <= fds, 30.0, "every descriptor of the watcher returned")
    b1.close()
    b2.close()


def test_a_member_that_stops_polling_is_expired_by_a_local_peer(tmp_broker_dir: Path) -> None:
    """Two members in one process: the one past its max_poll_interval stops heartbeating
    and the other one's group tick expires it (the shared tick judges local members too)."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", partitions=2)
        idle = b.consumer("t", group="g", session_timeout=0.3, max_poll_interval=0.2)
        busy = b.consumer("t", group="g", session_timeout=0.3)
        for _ in range(3):
            idle.poll(timeout=0)
            busy.poll(timeout=0)

        def expired() -> bool:
            busy.poll(timeout=0.01)
            return [m.pid for m in b.describe_group("g").members] == [os.getpid()]

        wait_until(expired, 30.0, "the idle member expired")
        assert len(busy.assignment()) == 2 or wait_until(
            lambda: (busy.poll(timeout=0.01), len(busy.assignment()) == 2)[1], 30.0, "takeover")
        idle.close()
        busy.close()


def test_a_lone_member_does_not_expire_itself(tmp_broker_dir: Path) -> None:
    """As with a thread per member: a process's only member of a group is not judged by its
    own process (another process's members would expire it)."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t", group="g", session_timeout=0.2, max_poll_interval=0.1)
        c.poll(timeout=0)
        gen = b.describe_group("g").generation
        threading.Event().wait(1.0)  # five session timeouts without a heartbeat
        d = b.describe_group("g")
        assert [m.status for m in d.members] == ["expired"] and d.generation == gen
        c.close()


def test_members_that_join_and_leave_between_ticks_leave_no_descriptor(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group joined and left before the watcher's next tick (it ticks once an hour here)
    still has its descriptors closed (found by test_closing_only_the_broker_frees_...)."""
    monkeypatch.setattr(group_watcher, "_WATCH_INTERVAL", 3600.0)
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        keep = b.consumer("t", group="keep")
        keep.poll(timeout=0)  # the thread runs (and sleeps) throughout
        fds = _fds()
        for i in range(20):
            c = b.consumer("t", group=f"g{i}")
            c.poll(timeout=0)
            c.close()
        wait_until(lambda: _fds() <= fds, 30.0, "every group's descriptors closed")
        assert group_watcher.watcher_threads() == 1
        keep.close()
