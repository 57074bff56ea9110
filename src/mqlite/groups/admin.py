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

import datetime as _dt
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from mqlite._liveness import members_dir
from mqlite._storage import groups as _groups
from mqlite._storage import log as _log
from mqlite._storage import offsets as _offsets
from mqlite.config import MAX_I64, validate_group_name, validate_topic_name
from mqlite.errors import GroupActiveError
from mqlite.groups.state import (
    GroupState,
    _now_ms,
    _okey,
    _tp_of,
    load_group,
    read_offset,
    store_group,
    write_offset,
)
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
    "missing_stream_group",
    "reset_offsets",
    "set_dead_letter_topic",
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
    committed offset.  ``dead_letter_topics`` maps a subscribed topic to the
    dead-letter topic its failures go to, as recorded by
    :func:`set_dead_letter_topic` (an App's stream subscriber with
    ``dead_letter=``); empty when none was recorded.
    """

    group: str
    generation: int
    assignor: str
    state: str
    members: list[MemberInfo]
    partitions: list[PartitionLag]
    dead_letter_topics: dict[str, str] = {}


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
                            state=kind, members=members, partitions=parts,
                            dead_letter_topics=dict(sorted(state.dead_letter_topics.items())))


def _dlq_topics(topics: object) -> list[str]:
    if isinstance(topics, str):
        topics = [topics]
    if isinstance(topics, bytes) or not isinstance(topics, Iterable):
        raise TypeError(f"topics must be a topic name or a list of them, not "
                        f"{type(topics).__name__}")
    out = list(topics)
    if not out:
        raise ValueError("topics is empty: name the subscribed topic(s) whose failures go to "
                         "the dead-letter topic")
    for t in out:
        validate_topic_name(t)
    return sorted(set(out))


def set_dead_letter_topic(engine: Engine, group: str, topics: object,
                          dead_letter_topic: str | None) -> dict[str, str]:
    """Record that stream group ``group``'s failures from ``topics`` go to ``dead_letter_topic``.

    ``None`` forgets the entries of ``topics``.  Entries of other topics are
    kept (each subscriber of a group records its own topics): per subscribed
    topic, the last call wins.  Informational only -- nothing routes by it;
    :func:`describe_group`, ``Broker.stats()`` and the operator tools show it.
    The topics need not exist.  A group with no record gets an empty one (it is
    then listed, as after :func:`reset_offsets`), unless the call only forgets.
    Writes only when something changes (one read transaction otherwise).

    Returns
    -------
    dict[str, str]
        The group's whole map now stored (subscribed topic -> dead-letter topic).

    Raises
    ------
    TypeError, ValueError
        Bad group or topic names, or no topics.
    StorageFullError
        A new group record above the storage high-water mark.
    """
    validate_group_name(group)
    names = _dlq_topics(topics)
    if dead_letter_topic is not None:
        if not isinstance(dead_letter_topic, str):
            raise TypeError(f"dead_letter_topic must be a topic name or None, not "
                            f"{type(dead_letter_topic).__name__}")
        validate_topic_name(dead_letter_topic)

    def change(state: GroupState | None) -> dict[str, str] | None:
        """The new map, or None when the stored one already says this."""
        old = {} if state is None else state.dead_letter_topics
        new = dict(old)
        for t in names:
            if dead_letter_topic is None:
                new.pop(t, None)
            else:
                new[t] = dead_letter_topic
        return None if new == old and state is not None or not new and state is None else new

    env = engine.live_env()
    with env.read_txn() as txn:
        state = load_group(txn, env.dbs, group)
        if change(state) is None:
            return dict(sorted((state or GroupState()).dead_letter_topics.items()))
    with engine.write("record a dead-letter topic") as txn:
        state = load_group(txn, env.dbs, group)
        new = change(state)
        if new is None:
            return dict(sorted((state or GroupState()).dead_letter_topics.items()))
        if state is None:
            engine.admit_growth(txn)
            state = GroupState()
        state.dead_letter_topics = dict(sorted(new.items()))
        store_group(txn, env.dbs, group, state)
        return dict(state.dead_letter_topics)


def missing_stream_group(group: str, path: str, d: GroupDescription, stream_groups: list[str],
                         queue_topics: list[str]) -> str | None:
    """Why ``group`` cannot be shown as a stream group, or ``None`` when it is one.

    For the operator tools (``mqlite group``, the console's ``/groups/G``):
    :func:`describe_group` describes an unknown name as an empty group, which
    looks like a stream group that exists.  A stream group exists when it has a
    group record (``stream_groups``: ``Broker.groups()``), a member or a
    committed offset (``d``).  Otherwise the text says what to do instead:
    for a queue group of ``queue_topics``, the ``mqlite queue`` command; for a
    name nobody uses, ``mqlite groups`` (``path`` is the broker directory).
    Pure: reads nothing, raises nothing.
    """
    if group in stream_groups or d.members or d.partitions:
        return None
    if queue_topics:
        where = ", ".join(f"`mqlite queue {path} {t} {group}`" for t in sorted(queue_topics))
        return (f"'{group}' is a queue group (of topic {', '.join(sorted(queue_topics))}), "
                f"not a stream group: see {where}")
    return f"no group '{group}' on this broker; `mqlite groups {path}` lists them"


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


#: ``member_id`` stored with offsets written by :func:`reset_offsets`.
RESET_MEMBER = "admin:reset-offsets"


def _reset_target(to: object) -> tuple[str, int]:
    """(kind, value) of a reset target, validated before any storage call."""
    if isinstance(to, str):
        if to in ("earliest", "latest"):
            return to, 0
        raise ValueError(f"to must be 'earliest', 'latest', an offset (int >= 0) or a "
                         f"timezone-aware datetime, got {to!r}")
    if isinstance(to, bool):
        raise TypeError("to must be 'earliest', 'latest', an int offset or a datetime, not bool")
    if isinstance(to, int):
        if not 0 <= to <= MAX_I64:
            raise ValueError(f"to= offset must be in 0..2**63-1, got {to}")
        return "offset", to
    if isinstance(to, _dt.datetime):
        if to.tzinfo is None:
            raise ValueError("to= datetime must be timezone-aware (e.g. "
                             "datetime(2026, 1, 1, tzinfo=timezone.utc)); a naive one is "
                             "ambiguous")
        return "time", int(to.timestamp() * 1000)
    raise TypeError(f"to must be 'earliest', 'latest', an int offset or a datetime, "
                    f"not {type(to).__name__}")


def reset_offsets(engine: Engine, group: str, topic: str, to: object, *,
                  partitions: list[int] | None = None, force: bool = False) -> dict[int, int]:
    """Set ``group``'s committed offsets on ``topic`` (one write transaction).

    ``to`` is ``"earliest"`` (log start), ``"latest"`` (log end), an offset
    (clamped to the stored range, as Kafka's reset does) or a timezone-aware
    datetime (the first message at or after it; the log end when none is).
    Returns the new committed offset per partition.  A group that never had
    members gets an empty group record, so it is listed (Kafka likewise
    lets an offset reset create a group).

    Raises
    ------
    GroupActiveError
        A member of the group is alive (unless ``force``).
    TopicNotFoundError, PartitionNotFoundError, TypeError, ValueError
    """
    from mqlite.errors import PartitionNotFoundError

    validate_group_name(group)
    validate_topic_name(topic)
    kind, value = _reset_target(to)
    env = engine.live_env()
    now = _now_ms()
    out: dict[int, int] = {}
    with engine.write("reset offsets") as txn:
        rec = engine.topic(txn, topic)
        state = load_group(txn, env.dbs, group)
        if state is None:  # offsets set ahead of the group's first member: list it
            state = GroupState()
            store_group(txn, env.dbs, group, state)
        live = [mid for mid, m in state.members.items() if not m.departed_ms
                and member_status(env.path, m, now) == "alive"]
        if live and not force:
            raise GroupActiveError(
                f"group {group!r} has {len(live)} live member(s) ({', '.join(sorted(live))}); "
                "stop its consumers first, or force it (--force / force=True): live members "
                "keep reading from their own positions and may commit over the reset")
        parts = range(len(rec.pids)) if partitions is None else partitions
        for i in parts:
            if not isinstance(i, int) or not 0 <= i < len(rec.pids):
                raise PartitionNotFoundError(
                    f"topic {topic!r} has partitions 0..{len(rec.pids) - 1}, not {i!r}")
            pid = rec.pids[i]
            st = _log.load_state(txn, env.dbs, pid)
            if kind == "earliest":
                off = st.start
            elif kind == "latest":
                off = st.next
            elif kind == "offset":
                off = min(max(value, st.start), st.next)
            else:
                hit = _log.find_offset_for_time(txn, env.dbs, pid, st, value, topic, i)
                off = st.next if hit is None else hit[0]
            write_offset(txn, env.dbs, group, pid,
                         _offsets.OffsetValue(off, RESET_MEMBER, state.generation, now))
            out[i] = off
    return out
