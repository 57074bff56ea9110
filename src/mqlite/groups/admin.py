"""Inspecting groups from outside: describe, list, committed offsets.

Contract
--------
Read-only: every function here runs in one read transaction and changes
nothing (no reaping: a crashed member not yet reaped is reported ``"dead"``).
Member status comes from an uncached probe of the liveness service
(:func:`~mqlite.groups.watcher.member_status`).  Names are validated
(``ValueError``); an unknown group is described as empty.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

from mqlite._liveness import members_dir
from mqlite._storage import groups as _groups
from mqlite._storage import log as _log
from mqlite._storage import offsets as _offsets
from mqlite.config import validate_group_name, validate_topic_name
from mqlite.groups.state import GroupState, _now_ms, _okey, _tp_of, load_group, read_offset
from mqlite.groups.watcher import member_status
from mqlite.types import TopicPartition

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = [
    "GroupDescription",
    "MemberInfo",
    "PartitionLag",
    "committed_offsets",
    "describe_group",
    "list_groups",
]


class MemberInfo(msgspec.Struct, frozen=True):
    """One member of a group, as :func:`describe_group` sees it.

    ``status`` is ``"alive"``, ``"dead"`` (crashed, not yet reaped),
    ``"expired"`` (heartbeat older than its session timeout) or
    ``"departed"`` (a static member whose process is gone, slot kept).
    ``assigned`` is the target assignment, ``owned`` what it holds now
    (they differ while partitions are handed over).
    """

    member_id: str
    pid: int
    instance_id: str | None
    topics: list[str]
    assigned: list[TopicPartition]
    owned: list[TopicPartition]
    last_heartbeat_ms: int | None
    status: str


class PartitionLag(msgspec.Struct, frozen=True):
    """Committed offset, log end, lag and current owner of one partition."""

    partition: TopicPartition
    committed: int | None
    end_offset: int
    lag: int
    owner: str | None


class GroupDescription(msgspec.Struct, frozen=True):
    """A consumer group: generation, assignor, state, members and per-partition lag.

    ``state`` is ``"empty"`` (no members), ``"stable"`` (every present
    member owns exactly its assignment) or ``"rebalancing"``.
    ``partitions`` covers the subscribed topics and every partition with a
    committed offset.
    """

    group: str
    generation: int
    assignor: str
    state: str
    members: list[MemberInfo]
    partitions: list[PartitionLag]


def list_groups(engine: Engine) -> list[str]:
    """Names of every group record (stream groups, and queue groups prefixed ``~``)."""
    with engine.read() as txn:
        return _groups.names(txn, engine.env.dbs)


def describe_group(engine: Engine, group: str) -> GroupDescription:
    """Members, generation, committed offsets and lag of a consumer group.

    Raises ``ValueError`` for an invalid group name; an unknown group is
    described as empty (generation 0, no members, no partitions).
    """
    validate_group_name(group)
    env = engine.env
    now = _now_ms()
    with env.read_txn() as txn:
        state = load_group(txn, env.dbs, group) or GroupState()
        owned_by: dict[str, list[TopicPartition]] = {}
        for k, v in state.owners.items():
            owned_by.setdefault(v, []).append(_tp_of(k))
        members = []
        stable = True
        for mid, m in sorted(state.members.items()):
            path = os.path.join(members_dir(env.path), m.lock)
            try:
                hb: int | None = os.stat(path).st_mtime_ns // 1_000_000
            except FileNotFoundError:
                hb = None
            assigned = sorted(TopicPartition(t, p) for t, p in state.assignment.get(mid, ()))
            owned = sorted(owned_by.get(mid, []))
            if not m.departed_ms and assigned != owned:
                stable = False
            members.append(MemberInfo(
                member_id=mid, pid=m.pid, instance_id=m.instance_id, topics=list(m.topics),
                assigned=assigned, owned=owned, last_heartbeat_ms=hb,
                status="departed" if m.departed_ms else member_status(env.path, m, now)))
        wanted = {t for m in state.members.values() for t in m.topics}
        with_offsets = _offsets.partitions_with_offsets(txn, env.dbs, group)
        parts = []
        for t in _log.list_topics(txn, env.dbs):
            rec = _log.get_topic(txn, env.dbs, t)
            if rec is None:
                continue
            subscribed = t in wanted
            for i, pid in enumerate(rec.pids):
                if not subscribed and pid not in with_offsets:
                    continue
                st = _log.load_state(txn, env.dbs, pid)
                off = read_offset(txn, env.dbs, group, pid)
                committed = None if off is None else off.offset
                base = st.start if committed is None else min(max(committed, st.start), st.next)
                parts.append(PartitionLag(
                    partition=TopicPartition(t, i), committed=committed, end_offset=st.next,
                    lag=st.next - base, owner=state.owners.get(_okey(t, i))))
    kind = "empty" if not state.members else ("stable" if stable else "rebalancing")
    return GroupDescription(group=group, generation=state.generation, assignor=state.assignor,
                            state=kind, members=members, partitions=parts)


def committed_offsets(engine: Engine, group: str, topic: str) -> dict[int, int]:
    """Committed offsets of ``group`` on each partition of ``topic`` (absent = none).

    Raises ``ValueError`` for a bad name, :class:`TopicNotFoundError` for an
    unknown topic.
    """
    validate_group_name(group)
    validate_topic_name(topic)
    env = engine.live_env()
    out = {}
    with engine.read() as txn:
        rec = engine.topic(txn, topic)
        for i, pid in enumerate(rec.pids):
            v = read_offset(txn, env.dbs, group, pid)
            if v is not None:
                out[i] = v.offset
    return out
