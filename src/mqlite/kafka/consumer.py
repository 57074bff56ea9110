"""The Kafka backend's consumer: :class:`KafkaConsumer` (``broker.consumer()``).

The same contract as :class:`mqlite.Consumer` over one
``confluent_kafka.Consumer``:

* ``group=None``: the consumer assigns itself every partition of its topics
  (or the ones given to :meth:`assign`) and commits nothing.
* ``group=...``: Kafka's group protocol assigns partitions (``assignor``
  maps to ``partition.assignment.strategy``); librdkafka's auto-commit is off
  and mqlite applies the commit policy itself: ``"after"`` commits, at the
  next ``poll`` (and on revoke and close), what the previous poll returned;
  ``"before"`` commits before returning the messages; ``"manual"`` only on
  :meth:`commit`.  Commits are synchronous, so ``committed()`` reads them back.
* Positions are kept here too, so :meth:`position`, :meth:`lag` and
  ``tx.commit_offsets(consumer)`` answer before the first fetch, as the
  embedded consumer does.

Records come back as :class:`mqlite.Message` (headers as ``(str, bytes)``
pairs; a null header value reads as ``b""``).  :meth:`poll` returns as soon
as one record is there, with whatever else librdkafka already fetched, up to
``max_records``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self, overload

from confluent_kafka import OFFSET_STORED, Consumer, KafkaException
from confluent_kafka import TopicPartition as KTP

from mqlite._core import Message, messages_from_kafka
from mqlite.config import MAX_I64, require_int, require_positive_number, validate_topic_name
from mqlite.errors import (
    ClosedError,
    CommitFailedError,
    OffsetOutOfRangeError,
)
from mqlite.kafka._client import REQUEST_TIMEOUT, Cluster
from mqlite.kafka._errors import _BY_CODE, to_mqlite
from mqlite.types import OffsetAndTimestamp, TopicPartition, TopicPartitionLike

__all__ = ["KafkaConsumer"]

_RESETS = {"earliest": "earliest", "latest": "latest", "none": "error"}
_COMMITS = ("after", "before", "manual")
_ASSIGNORS = {"range": "range", "roundrobin": "roundrobin",
              "cooperative-sticky": "cooperative-sticky"}
#: Longest single wait inside poll(), so that wakeup() is seen (seconds).
_WAIT_SLICE = 0.2


def _tp(tp: object) -> TopicPartition:
    if isinstance(tp, tuple) and len(tp) == 2:
        validate_topic_name(tp[0])
        require_int(tp[1], "partition", minimum=0)
        return TopicPartition(tp[0], tp[1])
    raise TypeError(f"expected a TopicPartition, not {type(tp).__name__}")


def _headers(raw: Any) -> list[tuple[str, bytes]] | None:
    if not raw:
        return None
    return [(k, b"" if v is None else v) for k, v in raw]


class KafkaConsumer:
    """Reads messages from Kafka partitions; see the module docstring for the contract.

    Not thread-safe (as :class:`mqlite.Consumer`): one thread polls;
    :meth:`wakeup` may come from any thread.

    Parameters
    ----------
    cluster
        The connection of the broker handle (``KafkaBroker.consumer`` passes it).
    topics, group, auto_offset_reset, commit, max_poll_records
        As :meth:`mqlite.Broker.consumer`.
    instance_id
        Kafka static membership (``group.instance.id``).
    assignor
        ``"range"`` (default), ``"roundrobin"`` or ``"cooperative-sticky"``.
    session_timeout
        Seconds (not ms) without a heartbeat before the group coordinator
        expires this member: Kafka's ``session.timeout.ms`` / 1000; > 0 and at
        most 3600, default 10 (the heartbeat interval is a third of it, at
        most 3 s).
    max_poll_interval
        Seconds between polls before this member leaves the group
        (``max.poll.interval.ms`` / 1000); > 0 and at most 86400, default 300.
    on_assign, on_revoke
        Called inside :meth:`poll` with a sorted list of :class:`TopicPartition`.
    """

    def __init__(self, cluster: Cluster, topics: str | Iterable[str] | None = None, *,
                 group: str | None = None, auto_offset_reset: str = "earliest",
                 commit: str = "after", max_poll_records: int = 500,
                 instance_id: str | None = None, assignor: str | None = None,
                 session_timeout: float | None = None, max_poll_interval: float | None = None,
                 on_assign: Callable[[list[TopicPartition]], Any] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], Any] | None = None) -> None:
        if auto_offset_reset not in _RESETS:
            raise ValueError(f"auto_offset_reset must be one of {tuple(_RESETS)}, "
                             f"got {auto_offset_reset!r}")
        if commit not in _COMMITS:
            raise ValueError(f"commit must be one of {_COMMITS}, got {commit!r}")
        require_int(max_poll_records, "max_poll_records", minimum=1)
        group_only = {"instance_id": instance_id, "assignor": assignor,
                      "session_timeout": session_timeout, "max_poll_interval": max_poll_interval,
                      "on_assign": on_assign, "on_revoke": on_revoke}
        if group is None and any(v is not None for v in group_only.values()):
            given = sorted(k for k, v in group_only.items() if v is not None)
            raise TypeError(f"{', '.join(given)} need group=")
        if group is not None and (not isinstance(group, str) or not group):
            raise TypeError("group must be a non-empty str")
        if assignor is not None and assignor not in _ASSIGNORS:
            raise ValueError(f"assignor must be one of {tuple(_ASSIGNORS)}, got {assignor!r}")
        session = 10.0 if session_timeout is None else session_timeout
        require_positive_number(session, "session_timeout", allow_zero=False)
        if session > 3600:
            raise ValueError(f"session_timeout is in seconds (at most 3600), got {session}")
        interval = 300.0 if max_poll_interval is None else max_poll_interval
        require_positive_number(interval, "max_poll_interval", allow_zero=False)
        if interval > 86400:
            raise ValueError(f"max_poll_interval is in seconds (at most 86400), got {interval}")
        self._cluster = cluster
        self.group = group
        self._reset = auto_offset_reset
        self._commit_policy = commit
        self._max_poll = max_poll_records
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._topics: list[str] = []
        self._manual: list[TopicPartition] | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset to hand out
        self._returned: dict[TopicPartition, int] = {}  # handed out, not committed yet
        self._assigned: list[TopicPartition] = []
        self._closed = False
        self._woken = threading.Event()
        # librdkafka's group metadata (for transactional offset commits), fetched by the
        # polling thread after each rebalance: consumer_group_metadata() called while
        # another thread is inside poll() never returns (confluent-kafka 2.16)
        self._gm: Any = None
        self._incremental = (assignor == "cooperative-sticky" or cluster.options.get(
            "partition.assignment.strategy") == "cooperative-sticky")
        forced: dict[str, Any] = {
            "group.id": group if group is not None else f"mqlite-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": _RESETS[auto_offset_reset],
        }
        overrides: dict[str, Any] = {
            "session.timeout.ms": int(session * 1000),
            "heartbeat.interval.ms": max(1, min(3000, int(session * 1000 / 3))),
            "max.poll.interval.ms": max(int(interval * 1000), int(session * 1000)),
            "isolation.level": "read_committed",
        }
        if instance_id is not None:
            forced["group.instance.id"] = instance_id
        if assignor is not None:
            forced["partition.assignment.strategy"] = _ASSIGNORS[assignor]
        if session_timeout is not None:
            forced["session.timeout.ms"] = overrides.pop("session.timeout.ms")
            forced["heartbeat.interval.ms"] = overrides.pop("heartbeat.interval.ms")
        if max_poll_interval is not None:
            forced["max.poll.interval.ms"] = overrides.pop("max.poll.interval.ms")
        try:
            self._c = Consumer(cluster.client_config(forced, **overrides))
        except KafkaException as exc:
            raise to_mqlite(exc, "create a Kafka consumer") from exc
        if topics is not None:
            try:
                self.subscribe(topics)
            except BaseException:
                self._c.close()
                self._closed = True
                raise

    # -- subscription --------------------------------------------------------------------------
    def subscribe(self, topics: str | Iterable[str]) -> None:
        """Subscribe to topics (replacing any previous subscription or assignment).

        Raises :class:`TopicNotFoundError` for a topic that does not exist.
        """
        self._check_open()
        names = [topics] if isinstance(topics, str) else list(topics)
        out: list[str] = []
        for t in names:
            validate_topic_name(t)
            self._cluster.partitions_for(t, fresh=True)
            if t not in out:
                out.append(t)
        self._topics = out
        self._manual = None
        self._positions.clear()
        self._returned.clear()
        if self.group is not None:
            self._c.subscribe(out, on_assign=self._assigned_cb, on_revoke=self._revoked_cb,
                              on_lost=self._lost_cb)
        else:
            self._assign_all([TopicPartition(t, p) for t in out
                              for p in range(self._cluster.partitions_for(t))])

    def subscription(self) -> list[str]:
        return list(self._topics)

    def assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        """Read exactly these partitions (no group coordination)."""
        self._check_open()
        if self.group is not None:
            raise ValueError("assign() is for consumers without group=; groups assign partitions")
        tps = [_tp(tp) for tp in partitions]
        for tp in tps:
            self._cluster.check_partition(tp.topic, tp.partition)
        self._manual = tps
        self._topics = sorted({tp.topic for tp in tps})
        self._positions = {tp: p for tp, p in self._positions.items() if tp in tps}
        self._assign_all(tps)

    def _assign_all(self, tps: list[TopicPartition]) -> None:
        # Resolve "earliest"/"latest" to offsets here (one watermark request per
        # partition): librdkafka's own logical-offset lookup delayed the first fetch by
        # ~0.5 s on the test broker, and position() then answers exactly what is read.
        todo = [tp for tp in tps if tp not in self._positions]
        if todo and self._reset in ("earliest", "latest"):
            for tp, (lo, hi) in self._cluster.watermarks(todo).items():
                self._positions[tp] = lo if self._reset == "earliest" else hi
        self._assigned = list(tps)
        self._c.assign([KTP(tp.topic, tp.partition, self._positions.get(tp, OFFSET_STORED))
                        for tp in tps])

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer currently reads."""
        return list(self._assigned)

    # rebalance callbacks: run inside librdkafka's poll, on this consumer's thread
    def _assigned_cb(self, _c: Any, parts: list[KTP]) -> None:
        self._gm = None
        tps = sorted(TopicPartition(p.topic, p.partition) for p in parts)
        if self._c_incremental():
            self._assigned = sorted(set(self._assigned) | set(tps))
        else:
            self._assigned = tps
        for tp in tps:
            self._positions.pop(tp, None)
            self._returned.pop(tp, None)
        if self._reset == "latest" and tps:
            # Pin "latest" now: librdkafka resolves it at its first fetch, so a message
            # sent after position() answered could be skipped (a race the embedded
            # backend does not have).
            start = {tp: self.position(tp) for tp in tps}
            self._positions.update(start)
            pinned = [KTP(tp.topic, tp.partition, o) for tp, o in start.items()]
            if self._incremental:
                self._c.incremental_assign(pinned)
            else:
                self._c.assign(pinned)
        if self._on_assign is not None:
            self._on_assign(tps)

    def _revoked_cb(self, _c: Any, parts: list[KTP]) -> None:
        self._gm = None
        tps = sorted(TopicPartition(p.topic, p.partition) for p in parts)
        if self._commit_policy == "after":
            self._commit_returned(only=set(tps))
        if self._on_revoke is not None:
            self._on_revoke(tps)
        gone = set(tps)
        self._assigned = [tp for tp in self._assigned if tp not in gone]
        for tp in gone:
            self._positions.pop(tp, None)
            self._returned.pop(tp, None)

    def _lost_cb(self, _c: Any, parts: list[KTP]) -> None:
        self._gm = None
        gone = {TopicPartition(p.topic, p.partition) for p in parts}
        if self._on_revoke is not None:
            self._on_revoke(sorted(gone))
        self._assigned = [tp for tp in self._assigned if tp not in gone]
        for tp in gone:
            self._positions.pop(tp, None)
            self._returned.pop(tp, None)

    def _c_incremental(self) -> bool:
        return self._incremental

    # -- positions -----------------------------------------------------------------------------
    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._assigned:
            raise ValueError(f"{tp} is not assigned to this consumer")

    def position(self, tp: TopicPartitionLike) -> int:
        """The offset of the next message :meth:`poll` returns for ``tp``."""
        tp = _tp(tp)
        self._check_open()
        self._check_assigned(tp)
        pos = self._positions.get(tp)
        if pos is not None:
            return pos
        lo, hi = self._cluster.watermarks([tp])[tp]
        if self.group is not None:
            c = self.committed(tp)
            if c is not None and lo <= c <= hi:
                return c
            if c is not None and self._reset == "none":
                raise OffsetOutOfRangeError(
                    f"committed offset {c} of {tp.topic}[{tp.partition}] is outside the log "
                    f"[{lo}, {hi}); seek() to a valid offset", {tp: c})
        if self._reset == "none":
            raise OffsetOutOfRangeError(
                f"no committed offset for {tp.topic}[{tp.partition}] and "
                "auto_offset_reset='none'; seek() first", {tp: -1})
        return hi if self._reset == "latest" else lo

    def positions(self) -> dict[TopicPartition, int]:
        """Positions (next offset to return) of partitions read or sought so far."""
        return dict(self._positions)

    def seek(self, tp: TopicPartitionLike, offset: int) -> None:
        """Make the next :meth:`poll` of ``tp`` start at ``offset``."""
        tp = _tp(tp)
        require_int(offset, "offset", minimum=0, maximum=MAX_I64)
        self._check_open()
        self._check_assigned(tp)
        self._positions[tp] = offset
        self._returned.pop(tp, None)
        try:
            self._c.seek(KTP(tp.topic, tp.partition, offset))
        except KafkaException:
            # not fetching yet (just assigned): restart the partition at the offset instead
            self._c.incremental_unassign([KTP(tp.topic, tp.partition)])
            self._c.incremental_assign([KTP(tp.topic, tp.partition, offset)])

    def seek_to_beginning(self, *tps: TopicPartitionLike) -> None:
        """Seek the given (default: all assigned) partitions to their log start."""
        for tp, (lo, _) in self._cluster.watermarks([_tp(t) for t in tps]
                                                    or self.assignment()).items():
            self.seek(tp, lo)

    def seek_to_end(self, *tps: TopicPartitionLike) -> None:
        """Seek the given (default: all assigned) partitions to their end."""
        for tp, (_, hi) in self._cluster.watermarks([_tp(t) for t in tps]
                                                    or self.assignment()).items():
            self.seek(tp, hi)

    def beginning_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """First stored offset of each partition."""
        return {tp: lo for tp, (lo, _) in self._cluster.watermarks(map(_tp, tps)).items()}

    def end_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """The log end (high watermark) of each partition."""
        return {tp: hi for tp, (_, hi) in self._cluster.watermarks(map(_tp, tps)).items()}

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the first offset whose timestamp is >= the given ms.

        ``None`` where there is none.  The returned ``timestamp_ms`` is the
        requested one (confluent-kafka does not expose the record's).
        """
        req = []
        for tp, ts in timestamps.items():
            tp = _tp(tp)
            require_int(ts, "timestamp", minimum=0)
            self._cluster.check_partition(tp.topic, tp.partition)
            req.append(KTP(tp.topic, tp.partition, ts))
        try:
            res = self._c.offsets_for_times(req, timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            raise to_mqlite(exc, "offsets_for_times") from exc
        asked = {TopicPartition(k.topic, k.partition): k.offset for k in req}
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for r in res:
            tp = TopicPartition(r.topic, r.partition)
            out[tp] = None if r.offset < 0 else OffsetAndTimestamp(r.offset, asked[tp])
        return out

    def lag(self) -> dict[TopicPartition, int]:
        """Messages between the current position and the end, per assigned partition."""
        ends = self._cluster.watermarks(self.assignment())
        return {tp: hi - self.position(tp) for tp, (_, hi) in ends.items()}

    # -- polling -------------------------------------------------------------------------------
    def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[Message]:
        """Return up to ``max_records`` messages, waiting up to ``timeout`` seconds for one.

        In a group this also takes part in rebalances (``on_assign`` /
        ``on_revoke`` run here) and applies the commit policy.

        Raises
        ------
        ClosedError, TopicNotFoundError (a subscribed topic was deleted),
        OffsetOutOfRangeError (``auto_offset_reset="none"``), BackendError
        """
        self._check_open()
        if max_records is None:
            max_records = self._max_poll
        require_int(max_records, "max_records", minimum=1)
        require_positive_number(timeout, "timeout")
        if self._returned and self.group is not None and self._commit_policy == "after":
            self._commit_returned()
        deadline = time.monotonic() + timeout
        c = self._c
        raw: list[Any] = c.consume(max_records, 0)  # what is already fetched: no wait
        while not raw and not self._woken.is_set() and not self._closed:
            first = c.poll(max(0.0, min(_WAIT_SLICE, deadline - time.monotonic())))
            if first is not None:
                raw.append(first)
                if max_records > 1:
                    raw.extend(c.consume(max_records - 1, 0))
                break
            if time.monotonic() >= deadline:
                break
        self._woken.clear()
        if self._closed:
            return []
        if self._gm is None and self.group is not None:
            self._gm = c.consumer_group_metadata()  # this thread, between polls: see __init__
        out = self._convert(raw)
        if out and self.group is not None and self._commit_policy == "before":
            self._commit_returned()
        return out

    def _convert(self, raw: list[Any]) -> list[Message]:
        out: list[Message] = []
        last: dict[tuple[str, int], int] = {}
        i, n = 0, len(raw)
        while i < n:
            i = messages_from_kafka(raw, i, out, last)  # stops at an error message
            if i < n:
                self._raise_for(raw[i])
                i += 1
        positions = self._positions
        returned = self._returned
        for (topic, part), off in last.items():
            tp = TopicPartition(topic, part)
            positions[tp] = returned[tp] = off + 1
        return out

    def _raise_for(self, m: Any) -> None:
        err = m.error()
        if err.code() in _BY_CODE or err.fatal():
            exc = to_mqlite(err, f"poll {m.topic()}[{m.partition()}]")
            if isinstance(exc, OffsetOutOfRangeError):
                tp = TopicPartition(m.topic(), m.partition())
                exc.offsets = {tp: self._positions.get(tp, -1)}
            raise exc
        # otherwise informational (end of partition, transient broker errors): skipped

    def __iter__(self) -> Iterator[Message]:
        """Yield messages forever (until :meth:`close`), polling in 1 s waits."""
        while not self._closed:
            try:
                batch = self.poll(timeout=1.0)
            except ClosedError:
                return
            yield from batch

    # -- commits (groups) ----------------------------------------------------------------------
    def _commit_returned(self, only: set[TopicPartition] | None = None) -> None:
        todo = {tp: o for tp, o in self._returned.items() if only is None or tp in only}
        if not todo:
            return
        try:
            self._commit(todo)
        except CommitFailedError:
            pass  # this member lost them: the new owner gets the messages again
        for tp in todo:
            self._returned.pop(tp, None)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            self._c.commit(offsets=[KTP(tp.topic, tp.partition, o) for tp, o in offsets.items()],
                           asynchronous=False)
        except KafkaException as exc:
            raise to_mqlite(exc, f"commit for group {self.group!r}") from exc

    def commit(self, offsets: Any = None) -> None:
        """Commit positions (default: everything returned so far) for the group.

        ``offsets`` may be a :class:`~mqlite.Message` (commit up to and
        including it) or a mapping ``{TopicPartition: next_offset}``.
        Synchronous: done when this returns.

        Raises
        ------
        CommitFailedError
            This member no longer owns a partition (a rebalance moved it).
        ValueError
            The consumer has no ``group=``.
        """
        self._check_open()
        if self.group is None:
            raise ValueError("commit() needs a consumer created with group=")
        if offsets is None:
            todo = {tp: p for tp, p in self._positions.items() if tp in self._assigned}
            if todo:
                self._commit(todo)
            self._returned.clear()
            return
        if isinstance(offsets, Message):
            todo = {TopicPartition(offsets.topic, offsets.partition): offsets.offset + 1}
        elif isinstance(offsets, Mapping):
            todo = {_tp(tp): require_int(o, "offset", minimum=0, maximum=MAX_I64)
                    for tp, o in offsets.items()}
        else:
            raise TypeError("offsets must be None, a Message or {TopicPartition: offset}")
        self._commit(todo)
        for tp, o in todo.items():
            if self._returned.get(tp, -1) <= o:
                self._returned.pop(tp, None)

    @overload
    def committed(self, tp: TopicPartitionLike) -> int | None: ...

    @overload
    def committed(self, tp: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    def committed(self, tp: TopicPartitionLike | list[TopicPartition]
                  ) -> int | None | dict[TopicPartition, int | None]:
        """The group's committed offset(s): the next offset the group will read.

        ``None`` where the group has committed nothing (or the partition does
        not exist).  One :class:`TopicPartition` or a ``list`` of them.
        """
        if self.group is None:
            raise ValueError("committed() needs a consumer created with group=")
        self._check_open()
        many = isinstance(tp, list)
        tps = [_tp(t) for t in tp] if isinstance(tp, list) else [_tp(tp)]
        try:
            res = self._c.committed([KTP(t.topic, t.partition) for t in tps],
                                    timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            raise to_mqlite(exc, f"committed offsets of group {self.group!r}") from exc
        out: dict[TopicPartition, int | None] = {}
        for r in res:
            out[TopicPartition(r.topic, r.partition)] = (
                r.offset if r.error is None and r.offset >= 0 else None)
        return out if many else out.get(tps[0])

    def group_metadata(self) -> Any:
        """librdkafka's group metadata, for ``send_offsets_to_transaction`` (Kafka only)."""
        self._check_open()
        if self.group is None:
            raise ValueError("transactional offset commits need a consumer created with group=")
        gm = self._gm
        if gm is None:  # not polled since the last rebalance: no poll() runs concurrently
            gm = self._gm = self._c.consumer_group_metadata()
        return gm

    # -- lifecycle -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this consumer is closed")
        if self._cluster.closed:
            raise ClosedError("the broker of this consumer is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def wakeup(self) -> None:
        """Make a blocked :meth:`poll` return within 0.2 s.  Any thread.

        librdkafka has no wake-up call, so ``poll`` waits in slices of at most
        0.2 s and checks for this between them.
        """
        self._woken.set()

    def close(self) -> None:
        """Commit per policy (``"after"``: what was returned), leave the group, stop.

        Idempotent.
        """
        if self._closed:
            return
        try:
            if self.group is not None and self._commit_policy == "after" and \
                    not self._cluster.closed:
                self._commit_returned()
        finally:
            self._closed = True
            self._c.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<mqlite.kafka.KafkaConsumer {self._cluster.bootstrap} group={self.group!r} "
                f"{'closed' if self._closed else 'open'}>")

