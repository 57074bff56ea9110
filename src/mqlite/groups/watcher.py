"""Who is alive: probing peers, reaping the dead, the member's watcher thread.

Contract
--------
Liveness comes from the kernel, through the shared liveness service
(:mod:`mqlite._liveness`): each member holds an exclusive ``flock`` on its own
file under ``<broker>/members/``; the kernel drops it when the process dies.
Every member runs a watcher thread (:class:`_Watcher`) that probes the other
members' locks every ``PROBE_INTERVAL`` (50 ms; and at once when a peer's
``pidfd`` reports its exit), so a crashed member is removed, and its
partitions granted to their new owners, within milliseconds.  The watcher
also refreshes its own lock file's mtime (the heartbeat; no LMDB write, so
no fsync) while ``poll()`` was called within ``max_poll_interval``; a hung
member whose mtime is older than its ``session_timeout`` is expired.  An
expired member learns it at its next ``poll()``: ``on_revoke`` for
everything, then it rejoins as a new member.

:func:`find_suspects` only reads (probes); :func:`apply_verdicts` acts in one
write transaction (the state part is
:func:`~mqlite.groups.state.apply_verdicts_to_state`), then removes the lock
files of removed members and wakes the group's pollers.  Only the watcher
thread calls into :class:`_Watcher`; it reads its member's timing fields and
calls ``GroupMember._heartbeat``, nothing else of the member.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

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
    from mqlite.groups.member import GroupMember

#: Seconds between two liveness probes of the watcher thread (the one period of
#: :mod:`mqlite._liveness`, shared with queue groups).
_WATCH_INTERVAL = PROBE_INTERVAL
#: A watcher that is not the designated reaper waits this long before reaping itself.
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
    engine.env.notify_topics(topics)


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


class _Watcher:
    """The body of a member's watcher thread: heartbeat, probe peers, reap.

    Probing is cheap: one read transaction, and when the group record is
    unchanged no decoding; peers are probed through the liveness service's
    :class:`~mqlite._liveness.Prober` (one cached descriptor per peer lock
    file: one ``flock`` and one ``fstat`` per probe), which also sleeps on the
    peers' ``pidfd``s, so a crash wakes the watcher at once instead of at the
    next ``PROBE_INTERVAL`` tick.  Only the designated reaper (the alive member
    with the smallest id) reaps at once; the others wait ``_REAP_GRACE`` first,
    so a crash does not queue every member on the write lock.
    """

    def __init__(self, member: GroupMember) -> None:
        self.m = member
        self.raw: bytes | None = None
        self.state: GroupState | None = None
        self.prober = Prober(members_dir(member.env.path))
        self.suspect_since: dict[str, float] = {}
        self.last_error: Exception | None = None  # kept for debugging; the loop goes on

    def close(self) -> None:
        self.prober.close()

    def run(self) -> None:
        m = self.m
        while not m._stop.is_set():
            if os.getpid() != m._pid or m.engine.closed:
                return
            t = time.monotonic()
            if t - m._last_beat >= m._beat_every and t - m._last_poll < m.max_poll_interval:
                m._heartbeat()
            try:
                self.tick()
            except (MqliteError, OSError):
                pass  # transient (engine closing, file races): the next tick retries
            except Exception as exc:  # noqa: BLE001 - a dead watcher would stop liveness
                self.last_error = exc
            self.prober.wait(_WATCH_INTERVAL)

    def _probe(self, ms: MemberState, now_ms: int) -> str:
        return self.prober.status(ms.lock, ms.session_timeout_ms, now_ms)

    def _track(self, state: GroupState) -> None:
        self.prober.track((ms.lock for ms in state.members.values()),
                          (ms.pid for ms in state.members.values() if not ms.departed_ms))

    def tick(self) -> None:
        m = self.m
        env = m.env
        with env.read_txn() as txn:
            raw = _raw_group(txn, env.dbs, m.group)
        if raw is None:
            return
        if raw != self.raw:
            self.state = _decode_group(m.group, raw)
            self.raw = raw
            if self.state is not None:
                self._track(self.state)
        state = self.state
        if state is None:
            return
        me = m.member_id
        verdicts = find_suspects(m.engine, state, _now_ms(), exclude=me, probe=self._probe)
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
        designated = me is not None and (not healthy or me == min(healthy))
        if (designated or now - first >= _REAP_GRACE) and apply_verdicts(
                m.engine, m.group, verdicts):
            self.raw = None  # re-read (and re-track) next tick
