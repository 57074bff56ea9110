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
from collections.abc import Callable
from typing import TYPE_CHECKING

from mqlite import _liveness
from mqlite._liveness import members_dir, unlink_quiet
from mqlite.groups.state import (
    GroupState,
    MemberState,
    Verdicts,
    _now_ms,
    apply_verdicts_to_state,
    load_group,
    store_group,
)

if TYPE_CHECKING:
    from mqlite._engine import Engine



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
