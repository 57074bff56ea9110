"""Read-only snapshots of broker state: :func:`broker_stats` and :func:`queue_stats`.

Contract
--------
Everything here reads in ONE read transaction and changes nothing: no group
is joined, no member is reaped, no cursor moves, so a monitor (``mqlite
metrics``, ``mqlite top``, a dashboard) never disturbs the consumers it
watches.  The one thing read outside the transaction is liveness: each
member's lock file is probed (one ``open`` + ``flock`` per member), exactly
as ``describe_group`` does.

The snapshot types live in :mod:`mqlite.types`; storage layouts stay in
``_storage`` (this module calls its read helpers); group and queue records
are decoded by the packages that own their codecs (``groups.state``,
``queue.policy``, ``scheduler``).

Callers: ``Broker.stats`` / ``Broker.queue_stats`` (the public API), and
through them ``mqlite.metrics`` and the CLI.
"""

from __future__ import annotations

import heapq
import os
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mqlite import _liveness, scheduler
from mqlite._storage import groups as _sgroups
from mqlite._storage import log as _log
from mqlite._storage import offsets as _offsets
from mqlite._storage import pending as _pending
from mqlite._storage import queues as _queues
from mqlite.config import validate_group_name, validate_topic_name
from mqlite.groups.state import GroupState, load_group
from mqlite.queue.policy import load_meta
from mqlite.types import BrokerStats, GroupLag, GroupStats, PartitionStats, QueueStats

if TYPE_CHECKING:
    from mqlite._engine import Engine
    from mqlite._storage.log import TopicRecord

__all__ = ["broker_stats", "queue_pending", "queue_stats"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Catalog:
    """The topic records of one catalog version, and where each partition id belongs.

    Immutable once built; shared by every snapshot of the same version (a
    scrape of 10,000 partitions spends ~15 ms building it, and the catalog
    changes only on create / delete / alter topic, each of which bumps the
    version).
    """

    __slots__ = ("topics", "version", "where")

    def __init__(self, version: int, records: list[TopicRecord]) -> None:
        self.version = version
        self.topics: dict[str, TopicRecord] = {r.name: r for r in records}
        self.where: dict[int, tuple[str, int]] = {
            pid: (t, i) for t, rec in self.topics.items() for i, pid in enumerate(rec.pids)}


# One catalog per open environment, dropped with it (keyed weakly by the Env object).
_catalogs: weakref.WeakKeyDictionary[Any, _Catalog] = weakref.WeakKeyDictionary()


def _catalog(env: Any, txn: Any) -> _Catalog:
    """The catalog as seen by ``txn``: the cached one when its version is current."""
    ver = _log.topics_version(txn, env.dbs)
    cat = _catalogs.get(env)
    if cat is None or cat.version != ver:
        cat = _Catalog(ver, _log.iter_topics(txn, env.dbs))
        _catalogs[env] = cat
    return cat


class _Snapshot:
    """Topic records and partition states of one read transaction, loaded once."""

    def __init__(self, txn: Any, env: Any) -> None:
        self.txn = txn
        self.dbs = dbs = env.dbs
        cat = _catalog(env, txn)
        self.topics: dict[str, TopicRecord] = cat.topics
        self.where: dict[int, tuple[str, int]] = cat.where
        self.states: dict[int, tuple[int, int, int]] = _log.load_all_states(txn, dbs)
        self._committed: dict[str, dict[int, int]] | None = None
        self._dlq: dict[str, int] = {}

    def committed(self, group: str) -> dict[int, int]:
        """``{partition id: committed offset}`` of stream group ``group`` (all groups'
        offsets are read in one cursor pass, on first use)."""
        if self._committed is None:
            self._committed = _offsets.committed_all(self.txn, self.dbs)
        return self._committed.get(group, {})

    def dlq_depth(self, topic: str) -> int:
        """Dead letters in ``topic`` not yet redriven or purged (0: no such topic);
        counted once per snapshot."""
        n = self._dlq.get(topic)
        if n is None:
            n = 0
            rec = self.topics.get(topic)
            for pid in rec.pids if rec is not None else ():
                start, end, _ = self.state(pid)
                n += _pending.dlq_depth(self.txn, self.dbs, topic, pid, start, end)
            self._dlq[topic] = n
        return n

    def state(self, pid: int) -> tuple[int, int, int]:
        """(start offset, end offset, bytes) of partition id ``pid``."""
        st = self.states.get(pid)
        if st is None:  # the catalog names a partition without state: load_state raises
            full = _log.load_state(self.txn, self.dbs, pid)
            st = self.states[pid] = (full.start, full.next, full.bytes)
        return st


def _group_stats(snap: _Snapshot, mdir: str, name: str, gstate: GroupState,
                 now: int) -> GroupStats:
    live = 0
    for m in gstate.members.values():
        if m.departed_ms:
            continue
        if _liveness.status(os.path.join(mdir, m.lock), m.session_timeout_ms, now) == "alive":
            live += 1
    wanted = {t for m in gstate.members.values() for t in m.topics}
    committed = snap.committed(name)
    pids = {pid for pid in committed if pid in snap.where}
    for t in wanted:
        rec = snap.topics.get(t)
        if rec is not None:
            pids.update(rec.pids)
    rows = []
    where = snap.where
    states = snap.states
    for pid in pids:
        t, i = where[pid]
        start, end, _ = states.get(pid) or snap.state(pid)
        off = committed.get(pid)
        base = start if off is None else min(max(off, start), end)
        rows.append((t, i, off, end, end - base))
    rows.sort()
    lag = [GroupLag(topic=t, partition=i, committed=off, end_offset=end, lag=n)
           for t, i, off, end, n in rows]
    dlqs = dict(sorted(gstate.dead_letter_topics.items()))
    return GroupStats(group=name, generation=gstate.generation, members=live,
                      stored_members=len(gstate.members), topics=sorted(wanted), lag=lag,
                      dead_letter_topics=dlqs,
                      dead_letters=sum(snap.dlq_depth(t) for t in set(dlqs.values())))


def _queue_stats(snap: _Snapshot, mdir: str, qg: str, topic: str, group: str, now: int,
                 *, detail: bool) -> QueueStats | None:
    txn, dbs = snap.txn, snap.dbs
    meta = load_meta(txn, dbs, qg)
    rec = snap.topics.get(topic)
    if meta is None or rec is None:
        return None
    due, held, delayed, oldest = _pending.queue_counts(txn, dbs, qg, now)
    fresh = cursors = 0
    oldest_ready: int | None = None
    for i, pid in enumerate(rec.pids):
        start, end, _ = snap.state(pid)
        cur = _queues.cursor(txn, dbs, qg, pid)
        cursors += cur
        head = max(cur, start)
        if head < end:
            fresh += end - head
            if detail:
                msgs: list[Any] = []
                _log.read_records(txn, dbs, pid, head, 1, msgs, topic, i, end)
                if msgs and (oldest_ready is None or msgs[0].timestamp_ms < oldest_ready):
                    oldest_ready = msgs[0].timestamp_ms
    consumers = sum(1 for lock in meta.consumers.values()
                    if _liveness.probe_alive(os.path.join(mdir, lock)))
    pol = meta.policy
    dlq = None if pol is None else pol.dead_letter_topic
    return QueueStats(
        topic=topic, group=group, ready=fresh + due, inflight=held, delayed=delayed,
        consumed=max(0, cursors - due - held - delayed), consumers=consumers,
        dead_letter_topic=dlq, max_deliveries=None if pol is None else pol.max_deliveries,
        oldest_pending_ms=None if oldest < 0 else oldest,
        oldest_ready_timestamp_ms=oldest_ready,
        dead_letters=0 if dlq is None else snap.dlq_depth(dlq))


def broker_stats(engine: Engine, dead_letter_topics: Iterable[str] = ()) -> BrokerStats:
    """A consistent snapshot of every topic, group, queue, delayed message and DLQ.

    The dead-letter topics of queue groups are known from their policies, those
    of stream groups from their records (``GroupStats.dead_letter_topics``: an
    App's stream subscribers record theirs); ``dead_letter_topics`` names more:
    their depth is reported too, 0 while they do not exist.

    One read transaction; nothing is joined or changed (see the module
    docstring).  Cost: one pass over the topic catalog, one state read per
    partition, the offsets of each stream group, the pending entries of each
    queue group (one entry per delivery range, not per message) and the
    delayed messages not yet due.

    Raises
    ------
    ValueError
        A name in ``dead_letter_topics`` is not a valid topic name.
    ClosedError
        The broker handle is closed.
    CorruptRecordError, GroupError
        A stored record is unreadable.
    """
    extra = sorted(set(_topic_names(dead_letter_topics)))
    env = engine.live_env()
    now = _now_ms()
    mdir = _liveness.members_dir(env.path)
    with env.read_txn() as txn:
        dbs = env.dbs
        snap = _Snapshot(txn, env)
        parts = []
        states = snap.states
        for t, rec in snap.topics.items():
            for i, pid in enumerate(rec.pids):
                start, end, size = states.get(pid) or snap.state(pid)
                parts.append(PartitionStats(topic=t, partition=i, start_offset=start,
                                            end_offset=end, bytes=size))
        queues = []
        for qg, topic, group in _queues.all_groups(txn, dbs):
            q = _queue_stats(snap, mdir, qg, topic, group, now, detail=False)
            if q is not None:
                queues.append(q)
        groups = []
        for name in sorted(_stream_group_names(txn, dbs)):
            gst = load_group(txn, dbs, name)
            if gst is not None:
                groups.append(_group_stats(snap, mdir, name, gst, now))
        dead = {q.dead_letter_topic: q.dead_letters for q in queues
                if q.dead_letter_topic is not None}
        for g in groups:
            for t in g.dead_letter_topics.values():
                dead[t] = snap.dlq_depth(t)
        for t in extra:
            if t not in dead:
                dead[t] = snap.dlq_depth(t)
        scheduled = scheduler.scheduled_counts(txn, dbs)
    return BrokerStats(taken_ms=now, partitions=parts, groups=groups, queues=queues,
                       scheduled=scheduled, dead_letters=dict(sorted(dead.items())))


def _topic_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError("dead_letter_topics must be an iterable of topic names, not one "
                        f"string: wrap it in a list ([{names!r}])")
    out = list(names)
    for t in out:
        validate_topic_name(t)
    return out


def _stream_group_names(txn: Any, dbs: dict[str, Any]) -> list[str]:
    return [g for g in _sgroups.names(txn, dbs) if not g.startswith("~")]


def queue_stats(engine: Engine, topic: str, group: str) -> QueueStats | None:
    """Depths of one queue group, plus the oldest ready message's timestamp.

    ``None`` when the group has never had a consumer or a stored policy.

    Raises
    ------
    ValueError
        Bad topic or group name.
    TopicNotFoundError
        ``topic`` does not exist.
    """
    validate_topic_name(topic)
    validate_group_name(group)
    env = engine.live_env()
    now = _now_ms()
    with env.read_txn() as txn:
        engine.topic(txn, topic)
        snap = _Snapshot(txn, env)
        return _queue_stats(snap, _liveness.members_dir(env.path),
                            _queues.group_name(topic, group), topic, group, now, detail=True)


def queue_pending(engine: Engine, topic: str, group: str, limit: int = 1000
                  ) -> list[dict[str, Any]]:
    """Unsettled messages of one queue group, one dict per message, without joining it.

    The same dicts as ``Queue.pending()`` (``partition``, ``offset``,
    ``delivery_count``, ``visible_at_ms``, ``owner`` — the consumer's owner id,
    ``None`` once released —, ``first_delivery_ms``, ``last_delivery_ms``,
    ``last_error``), in partition then offset order, at most ``limit`` (1 to
    100,000).  One read transaction; nothing is changed.

    Raises
    ------
    ValueError
        Bad topic or group name, or ``limit`` out of bounds.
    TopicNotFoundError
        ``topic`` does not exist.
    """
    validate_topic_name(topic)
    validate_group_name(group)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
        raise ValueError(f"limit is a message count from 1 to 100000, got {limit!r}")
    env = engine.live_env()
    with env.read_txn() as txn:
        rec = engine.topic(txn, topic)
        part_of = {pid: i for i, pid in enumerate(rec.pids)}
        entries = _pending.scan(txn, env.dbs, _pending.prefix(_queues.group_name(topic, group)))

    def each() -> Iterator[tuple[int, int, Any]]:
        for e in entries:
            part = part_of.get(e.pid, -1)
            for off in e.offsets():
                yield part, off, e

    out = []
    for part, off, e in heapq.nsmallest(limit, each(), key=lambda x: (x[0], x[1])):
        out.append({"partition": part, "offset": off, "delivery_count": e.count,
                    "visible_at_ms": e.visible,
                    "owner": e.owner.rstrip(b"\x00").decode("utf-8", "replace") or None,
                    "first_delivery_ms": e.first_ms, "last_delivery_ms": e.last_ms,
                    "last_error": e.error or None})
    return out
