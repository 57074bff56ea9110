"""Who is alive: probing peers, reaping the dead, the process's one group watcher thread.

Contract
--------
Liveness comes from the kernel, through the shared liveness service
(:mod:`mqlite._liveness`): each member holds an exclusive ``flock`` on its own
file under ``<broker>/members/``; the kernel drops it when the process dies.
**One watcher thread per process** (``mqlite-group-watcher``, :func:`join`)
serves every stream-group member of the process, of every group and broker
handle: every :data:`_WATCH_INTERVAL` (50 ms; and at once when a peer's
``pidfd`` reports its exit) it refreshes the lock file's mtime of each member
that is due a heartbeat (no LMDB write, so no fsync; only while the member's
``poll()`` was called within ``max_poll_interval``), then runs one tick per
group (:class:`GroupWatch`): it probes the group's members' locks, so a
crashed member is removed, and its partitions granted to their new owners,
within milliseconds; a hung member whose mtime is older than its
``session_timeout`` is expired.  An expired member learns it at its next
``poll()``: ``on_revoke`` for everything, then it rejoins as a new member.

A group's tick probes every member of the group except, when this process has
exactly one member of it, that member itself; with two or more local members
each is probed (a local member that stopped polling is expired by its local
peers, as when each member had a thread of its own).  It acts at once when a
local member is the designated reaper (the alive member with the smallest
id), otherwise after ``_REAP_GRACE``, so a crash does not queue every process
on the write lock.  The thread starts with the first member and ends, closing
its descriptors, after the last one leaves.

:func:`find_suspects` only reads (probes); :func:`apply_verdicts` acts in one
write transaction (the state part is
:func:`~mqlite.groups.state.apply_verdicts_to_state`), then removes the lock
files of removed members and wakes the group's pollers.  The watcher reads a
member's ``member_id``, ``engine`` and ``group`` and calls its
``beat_if_due``, nothing else of it.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from mqlite import _liveness
from mqlite._liveness import PROBE_INTERVAL, Prober, members_dir, unlink_quiet
from mqlite.errors import MqliteError
from mqlite.groups.state import (
    GroupState,
    MemberState,
    Verdicts,
    _decode_group,
    _now_ms,
    _raw_group,
    apply_verdicts_to_state,
    load_group,
    store_group,
)

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["GroupWatch", "apply_verdicts", "find_suspects", "join", "leave", "member_status",
           "watcher_threads"]

#: Seconds between two ticks of the group watcher (the one probe period of
#: :mod:`mqlite._liveness`, shared with queue groups).  Read at every wait.
_WATCH_INTERVAL = PROBE_INTERVAL
#: A group whose designated reaper is in another process is reaped from here only after
#: its suspects stayed suspect this long (seconds).
_REAP_GRACE = 0.1

def member_status(broker_path: str, m: MemberState, now_ms: int) -> str:
    """``"alive"``, ``"dead"`` (lock free or file gone) or ``"expired"`` (heartbeat too old)."""
    return _liveness.status(os.path.join(members_dir(broker_path), m.lock),
                            m.session_timeout_ms, now_ms)


def _notify_group(engine: Engine, state: GroupState | None) -> None:
    """Wake the pollers of the group's topics (call after the commit)."""
    topics: set[str] = set()
    if state is not None:
        for m in state.members.values():
            topics.update(m.topics)
    engine.wake_readers(sorted(topics))  # also members waiting on one partition (D64)


def find_suspects(engine: Engine, state: GroupState, now_ms: int, *,
                  exclude: str | None = None,
                  probe: Callable[[MemberState, int], str] | None = None) -> Verdicts:
    """Members of ``state`` to act on: ``"dead"``, ``"expired"`` or ``"departed"`` (timed out).

    A departed static member is not probed (its process is gone); it is a
    suspect only once its ``session_timeout`` has passed.
    """
    path = engine.env.path
    out: Verdicts = {}
    for mid, m in state.members.items():
        if mid == exclude:
            continue
        if m.departed_ms:
            if now_ms - m.departed_ms >= m.session_timeout_ms:
                out[mid] = (m.lock, "departed")
            continue
        st = probe(m, now_ms) if probe is not None else member_status(path, m, now_ms)
        if st != "alive":
            out[mid] = (m.lock, st)
    return out


def apply_verdicts(engine: Engine, group: str, verdicts: Verdicts) -> bool:
    """Act on suspects in one write transaction; True when the group changed.

    See :func:`~mqlite.groups.state.apply_verdicts_to_state` for what each
    verdict does.  After the commit, the lock files of removed members are
    unlinked and the group's pollers woken.
    """
    env = engine.env
    with engine.write() as txn:
        state = load_group(txn, env.dbs, group)
        if state is None:
            return False
        changed, gone = apply_verdicts_to_state(engine, txn, state, verdicts, _now_ms())
        if changed:
            store_group(txn, env.dbs, group, state)
    for lock in gone:
        unlink_quiet(os.path.join(members_dir(env.path), lock))
    if changed:
        _notify_group(engine, state)
    return changed


# -- the process's one group watcher thread ----------------------------------------------------

class _Member(Protocol):
    """What the watcher uses of a :class:`~mqlite.groups.member.GroupMember`."""

    member_id: str | None
    engine: Engine
    group: str

    def beat_if_due(self, now: float) -> None: ...


class GroupWatch:
    """What the watcher knows of one group of one engine, and that group's local members.

    Ticked by the watcher thread only, under :attr:`lock` (which :func:`leave`
    takes to wait for a tick in progress).  Probing is cheap: one read
    transaction, and when the group record is unchanged no decoding; peers are
    probed through a :class:`~mqlite._liveness.Prober` (one cached descriptor
    per peer lock file: one ``flock`` and one ``fstat`` per probe).  The
    peers' processes are watched through the thread's pidfds (:attr:`pids`).
    """

    def __init__(self, engine: Engine, group: str) -> None:
        self.engine = engine
        self.group = group
        self.members: list[_Member] = []  # under the watcher's guard
        self.lock = threading.Lock()
        self.raw: bytes | None = None
        self.state: GroupState | None = None
        self.prober = Prober(members_dir(engine.env.path))
        self.pids: set[int] = set()  # processes of the group's live members
        self.suspect_since: dict[str, float] = {}
        self.last_error: Exception | None = None  # kept for debugging; the loop goes on

    def close(self) -> None:
        self.prober.close()

    def _probe(self, ms: MemberState, now_ms: int) -> str:
        return self.prober.status(ms.lock, ms.session_timeout_ms, now_ms)

    def _track(self, state: GroupState) -> None:
        self.prober.track((ms.lock for ms in state.members.values()), ())
        self.pids = {ms.pid for ms in state.members.values() if not ms.departed_ms}

    def tick(self, members: list[_Member]) -> None:
        """Probe the group's members and act on the suspects (module docstring)."""
        engine = self.engine
        env = engine.env
        with env.read_txn() as txn:
            raw = _raw_group(txn, env.dbs, self.group)
        if raw is None:
            return
        if raw != self.raw:
            self.state = _decode_group(self.group, raw)
            self.raw = raw
            if self.state is not None:
                self._track(self.state)
        state = self.state
        if state is None:
            return
        mine = {m.member_id for m in members} - {None}
        # One local member leaves itself out (nobody else here would judge it, as
        # before: a lone member does not expire itself); several judge each other.
        exclude = next(iter(mine)) if len(mine) == 1 else None
        verdicts = find_suspects(engine, state, _now_ms(), exclude=exclude, probe=self._probe)
        now = time.monotonic()
        if not verdicts:
            self.suspect_since.clear()
            return
        for mid in list(self.suspect_since):
            if mid not in verdicts:
                del self.suspect_since[mid]
        first = min(self.suspect_since.setdefault(mid, now) for mid in verdicts)
        healthy = [mid for mid, ms in state.members.items()
                   if mid not in verdicts and not ms.departed_ms]
        designated = bool(mine) and (not healthy or min(healthy) in mine)
        if (designated or now - first >= _REAP_GRACE) and apply_verdicts(
                engine, self.group, verdicts):
            self.raw = None  # re-read (and re-track) next tick


class _Ticker:
    """The process's one group watcher thread and the groups it serves."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.groups: dict[tuple[int, str], GroupWatch] = {}  # (id(engine), group)
        self.thread: threading.Thread | None = None
        self.wake_w = -1
        self.last_error: Exception | None = None

    def join(self, member: _Member) -> GroupWatch:
        key = (id(member.engine), member.group)  # the watch holds the engine: ids stay unique
        with self.guard:
            gw = self.groups.get(key)
            if gw is None:
                gw = GroupWatch(member.engine, member.group)
                self.groups[key] = gw
            gw.members.append(member)
            if self.thread is None:
                r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                t = threading.Thread(target=self._run, args=(r,), daemon=True,
                                     name="mqlite-group-watcher")
                try:
                    t.start()
                except BaseException:
                    gw.members.remove(member)
                    os.close(r)
                    os.close(self.wake_w)
                    self.wake_w = -1
                    raise
                self.thread = t
            else:
                self._wake()  # tick the new member's group now
        return gw

    def leave(self, gw: GroupWatch, member: _Member, timeout: float) -> None:
        with self.guard:
            if member not in gw.members:
                return
            gw.members.remove(member)
            dropped = not gw.members and self.groups.get((id(gw.engine), gw.group)) is gw
            if dropped:
                del self.groups[(id(gw.engine), gw.group)]
            self._wake()
        if threading.current_thread() is not self.thread and gw.lock.acquire(timeout=timeout):
            try:  # a tick in progress (that may still have used it) is over
                if dropped:
                    # Closed here, not only by the thread: it may have joined and left
                    # between two of the thread's ticks, never seen by it (idempotent).
                    gw.close()
            finally:
                gw.lock.release()

    def _wake(self) -> None:
        if self.wake_w >= 0:
            try:
                os.write(self.wake_w, b"\0")
            except OSError:
                pass  # pipe full: a wake-up is pending already

    def _run(self, wake_r: int) -> None:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        pidfds: dict[int, int] = {}
        fired: set[int] = set()  # pids whose pidfd reported an exit (watched once)
        live: dict[tuple[int, str], GroupWatch] = {}
        try:
            while True:
                with self.guard:
                    groups = dict(self.groups)
                    if not groups:
                        self.thread = None
                        _close_quiet(self.wake_w)
                        self.wake_w = -1
                        return
                    due = [m for gw in groups.values() for m in gw.members]
                for k, gw in live.items():
                    if groups.get(k) is not gw:
                        gw.close()
                live = groups
                try:
                    now = time.monotonic()
                    for m in due:  # heartbeats first: a slow tick must not delay them
                        m.beat_if_due(now)
                    for k, gw in groups.items():
                        self._tick(k, gw)
                    self._track(poller, pidfds, fired, groups)
                except Exception as exc:  # noqa: BLE001 - a dead watcher would stop liveness
                    self.last_error = exc  # (descriptor limit...): the next tick retries
                for fd, _ in poller.poll(_WATCH_INTERVAL * 1000):
                    if fd == wake_r:
                        try:
                            os.read(fd, 512)
                        except OSError:
                            pass
                        continue
                    poller.unregister(fd)  # an exited process's pidfd stays readable
                    fired.update(p for p, f in pidfds.items() if f == fd)
        finally:
            with self.guard:
                if self.thread is threading.current_thread():  # ended by an error
                    self.thread = None
                    _close_quiet(self.wake_w)  # the next member starts afresh
                    self.wake_w = -1
                    live.update(self.groups)
                    self.groups.clear()
            for gw in live.values():
                gw.close()
            for fd in pidfds.values():
                _close_quiet(fd)
            _close_quiet(wake_r)

    def _tick(self, key: tuple[int, str], gw: GroupWatch) -> None:
        with gw.lock:
            with self.guard:
                members = list(gw.members)
                if not members or self.groups.get(key) is not gw:
                    return  # left meanwhile
                if gw.engine.closed:  # the broker closed under its members: stop watching
                    del self.groups[key]
                    gw.members.clear()
                    return
            try:
                gw.tick(members)
            except (MqliteError, OSError):
                pass  # transient (engine closing, file races): the next tick retries
            except Exception as exc:  # noqa: BLE001 - a dead watcher would stop liveness
                gw.last_error = exc

    @staticmethod
    def _track(poller: select.poll, pidfds: dict[int, int], fired: set[int],
               groups: dict[tuple[int, str], GroupWatch]) -> None:
        """Hold one pidfd per process that has a live member of a watched group (a hint
        that wakes the thread at a crash: the lock probe decides)."""
        want: set[int] = set()
        for gw in groups.values():
            want.update(gw.pids)
        want.discard(os.getpid())
        for pid in [p for p in pidfds if p not in want]:
            fd = pidfds.pop(pid)
            if pid in fired:
                fired.discard(pid)
            else:
                poller.unregister(fd)
            _close_quiet(fd)
        if not hasattr(os, "pidfd_open"):
            return
        for pid in want - set(pidfds):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already, or not visible here: the lock probe decides
            pidfds[pid] = fd
            poller.register(fd, select.POLLIN)


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_ticker = _Ticker()


def join(member: _Member) -> GroupWatch:
    """Have the process's group watcher heartbeat ``member`` and watch its group.

    Starts the thread with the first member.  Returns the group's
    :class:`GroupWatch`, to pass to :func:`leave`.

    Raises
    ------
    OSError
        The thread's wake-up pipe cannot be created (descriptor limit).
    RuntimeError
        The thread cannot be started.
    """
    return _ticker.join(member)


def leave(gw: GroupWatch, member: _Member, timeout: float = 2.0) -> None:
    """Stop heartbeating ``member``; wait up to ``timeout`` s for a tick of its group in
    progress.  Idempotent; called from the watcher thread itself it does not wait.

    The thread closes the group's descriptors once it has no local member, and
    ends after the last member of the process left.
    """
    _ticker.leave(gw, member, timeout)


def watcher_threads() -> int:
    """1 while the process's group watcher thread runs, else 0 (for tests and stats)."""
    return int(_ticker.thread is not None)


def _after_fork_in_child() -> None:
    # The thread does not exist in the child and the members are the parent's (a member
    # used in a child raises GroupError); start afresh.  The parent's descriptors are
    # close-on-exec and hold no lock (probes release theirs at once).
    global _ticker
    _ticker = _Ticker()


os.register_at_fork(after_in_child=_after_fork_in_child)
