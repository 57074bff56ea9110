"""Log consumers (Kafka-style stream mode).

A :class:`Consumer` reads the partitions it is assigned, in offset order per
partition, from positions it keeps in memory.  Without ``group`` it reads
every partition of its topics (or the ones passed to :meth:`Consumer.assign`)
and commits nothing.  With ``group`` the partitions are shared among the
group's live members and positions are committed (see ``mqlite.groups``).

Blocking ``poll`` never sleep-polls: it waits on the topic's shared-memory
wake-up word (futex) with a timeout, then re-reads committed state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Self, overload

from mqlite import _core, scheduler
from mqlite._lifecycle import UseGuard, guarded, guarded_loop_step
from mqlite._storage import log as _log
from mqlite.config import MAX_I64, require_int, require_positive_number, validate_topic_name
from mqlite.errors import (
    ClosedError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    TopicNotFoundError,
)
from mqlite.types import OffsetAndTimestamp, TopicPartition, TopicPartitionLike

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["Consumer", "PollStep"]

_RESETS = ("earliest", "latest", "none")
_COMMITS = ("after", "before", "manual")


class PollStep(NamedTuple):
    """One round of :meth:`Consumer.poll_step`.

    Attributes
    ----------
    messages
        What the round fetched (return them when ``done``).
    done
        ``True``: the poll is over, return ``messages`` (empty only when a
        ``close()`` interrupted it).  ``False``: nothing yet; wait.
    slot, seq
        Wait until wake-up word ``slot`` no longer holds ``seq`` (or, when ``slots``
        is set, until any of those words moves) ...
    wait
        ... or at most this many seconds (``inf``: only the caller's timeout),
        then run another round.
    needs_writes
        The round needs a write (``writes=False`` was passed): run it again
        with ``writes=True`` off the event loop.
    """

    messages: list[_core.Message]
    done: bool
    slot: int
    seq: int
    wait: float
    needs_writes: bool
    #: All the words to wait on, with their values, when there are several (D64): the
    #: wait ends when any of them moves.  Empty: ``slot`` alone.  ``slot`` and ``seq``
    #: are their first.
    slots: tuple[int, ...] = ()
    seqs: tuple[int, ...] = ()


#: A consumer waits on at most this many partition or topic words at once (D64); more,
#: and it waits on the word every append bumps (csrc/notify.h MQ_NOTIFY_WAIT_ANY_MAX).
_WAIT_ANY_MAX = 16


class _Ahead(NamedTuple):
    """A batch :meth:`Consumer.read_ahead` read and kept for the next fetch."""

    max_records: int
    tps: list[TopicPartition]  # the assignment it was read under
    positions: list[int]  # the position of each of tps then (-1: not resolved yet)
    moves: list[tuple[TopicPartition, int]]  # (partition, its position after the batch)
    messages: list[_core.Message]
    due: int | None  # the next delayed message's due ms, read in the same transaction


class _Drained(NamedTuple):
    """What a poll round that read to the end of every partition it reads saw (D68).

    The next round skips its read when its wake-up words still hold ``seqs`` and
    nothing local changed: such a read would return nothing and move nothing.
    """

    slots: tuple[int, ...]  # the wake-up words the round loaded before reading
    seqs: tuple[int, ...]  # their values then
    source: object  # the list the reads were named by: the group's owned, assign()'s, or
    #                 the subscription (each replaced, never changed in place, on a change)
    # The positions after the round (all resolved); or, noted late (an event loop's
    # round, D79), the consumer's call count (``UseGuard.calls``) then: the positions
    # are still those while the next round is the only call since.
    positions: dict[TopicPartition, int] | int
    due: int | None  # the next delayed message's due ms, read in the same transaction
    reads: bool  # the round read partitions (a read of none leaves the rotation alone)


#: ``_Drained`` from a tuple of its fields, with no Python frame (``tuple.__new__``).
_new_drained = tuple.__new__


def _normalize_topics(topics: str | Iterable[str] | None) -> list[str]:
    if topics is None:
        return []
    if isinstance(topics, str):
        topics = [topics]
    elif isinstance(topics, (bytes, bytearray, memoryview)):
        raise TypeError(f"topics must be a str or an iterable of str, not {type(topics).__name__}")
    out = []
    for t in topics:
        validate_topic_name(t)
        if t not in out:
            out.append(t)
    return out


def _tp(tp: object) -> TopicPartition:
    if isinstance(tp, TopicPartition):
        if not isinstance(tp.topic, str):  # a name of another type never reaches storage
            raise TypeError(f"TopicPartition.topic must be str, not {type(tp.topic).__name__}")
        return tp
    if isinstance(tp, tuple) and len(tp) == 2:
        validate_topic_name(tp[0])
        require_int(tp[1], "partition", minimum=0)
        return TopicPartition(tp[0], tp[1])
    raise TypeError(f"expected a TopicPartition, not {type(tp).__name__}")


class Consumer:
    """Reads messages from the partitions of one or more topics.

    Not thread-safe: use a consumer from one thread at a time (create one per
    thread); a second thread calling it while another is inside a call gets
    :class:`~mqlite.ConcurrentAccessError`.  :meth:`wakeup` and :meth:`close`
    may be called from any thread and from signal handlers.

    Parameters
    ----------
    engine
        The engine of the broker to read from (``Broker.consumer`` passes it).
    topics
        A topic name or names to subscribe to (``None``: use :meth:`assign`).
    group
        Consumer group; ``None`` reads every partition with no group state.
    auto_offset_reset
        Where to start when there is no committed offset or the position
        fell below the log start (retention): ``"earliest"`` (default),
        ``"latest"`` or ``"none"`` (raise :class:`OffsetOutOfRangeError`).
    commit
        Group commit policy: ``"after"`` (at-least-once, default: a poll
        commits what the previous poll returned), ``"before"`` (at-most-once:
        positions are committed before messages are returned) or
        ``"manual"``.
    max_poll_records
        Default ``max_records`` for :meth:`poll` (>= 1).
    instance_id, assignor, session_timeout, max_poll_interval, on_assign, on_revoke
        Group membership options (only with ``group=``; ``None`` keeps the
        group default): static membership id; ``"range"``,
        ``"roundrobin"`` or ``"cooperative-sticky"``; seconds without a
        heartbeat before a hung member expires (default 10, at most 1 hour);
        seconds between polls before this member lets itself expire
        (default 300, at most 1 day); callbacks with a sorted list of
        :class:`TopicPartition`.  See :class:`mqlite.groups.GroupMember`.
    """

    def __init__(self, engine: Engine, topics: str | Iterable[str] | None = None, *,
                 group: str | None = None, auto_offset_reset: str = "earliest",
                 commit: str = "after", max_poll_records: int = 500,
                 instance_id: str | None = None, assignor: str | None = None,
                 session_timeout: float | None = None, max_poll_interval: float | None = None,
                 on_assign: Callable[[list[TopicPartition]], Any] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], Any] | None = None) -> None:
        given = {"instance_id": instance_id, "assignor": assignor,
                 "session_timeout": session_timeout, "max_poll_interval": max_poll_interval,
                 "on_assign": on_assign, "on_revoke": on_revoke}
        group_options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if auto_offset_reset not in _RESETS:
            raise ValueError(
                f"auto_offset_reset must be one of {_RESETS}, got {auto_offset_reset!r}")
        if commit not in _COMMITS:
            raise ValueError(f"commit must be one of {_COMMITS}, got {commit!r}")
        require_int(max_poll_records, "max_poll_records", minimum=1)
        self._engine = engine
        self._env = engine.live_env()
        self._reset = auto_offset_reset
        self._commit_policy = commit
        self._max_poll = max_poll_records
        self._topics: list[str] = []
        self._manual: list[TopicPartition] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._rotation = 0
        self._ahead: _Ahead | None = None  # a batch read ahead (read_ahead), not yet returned
        self._drained: _Drained | None = None  # the last round read everything (D68)
        self._closed = False
        self._group: Any = None
        self._waiting_on = 0  # the wake-up word poll() waits on (for wakeup())
        # The id of each partition poll rounds read: poll() waits on the partitions'
        # words once it knows them all (D64).  Also the id its position belongs to: a
        # read that finds another id (the topic was deleted and created again; ids are
        # never reused) drops the position (_rebind), and a commit checks it (D91).
        self._pids: dict[TopicPartition, int] = {}
        # _wait_slots' results: of the subscription (None: not computed since it changed),
        # and (assignment, words) for the partitions' words
        self._topic_words: tuple[int, ...] | None = None
        self._part_words: tuple[list[TopicPartition], tuple[int, ...]] | None = None
        self._life = UseGuard("consumer", self._wake_waiter, exclusive=True)
        self.group = group
        if group is not None:
            from mqlite.groups import GroupMember

            self._group = GroupMember(self._engine, self._positions, commit, group,
                                      pids=self._pids, **group_options)
        elif group_options:
            raise TypeError(f"{', '.join(sorted(group_options))} need group=")
        if topics is not None:
            self.subscribe(topics)
        try:
            engine.adopt(self)  # broker.close() closes this consumer
        except BaseException:
            self.close()
            raise

    # -- subscription ------------------------------------------------------------------------
    @guarded
    def subscribe(self, topics: str | Iterable[str]) -> None:
        """Subscribe to topics (replacing any previous subscription or assignment).

        Raises :class:`TopicNotFoundError` for a topic that does not exist.
        """
        self._check_open()
        names = _normalize_topics(topics)
        for t in names:
            self._engine.topic_fresh(t)
        self._topics = names
        self._topic_words = self._part_words = None  # _wait_slots computes them again
        self._manual = None
        if self._group is not None:
            self._group.subscribe(names)
        else:
            self._sync_positions(self._all_partitions())

    def subscription(self) -> list[str]:
        return list(self._topics)

    @guarded
    def assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        """Read exactly these partitions (no group coordination)."""
        self._check_open()
        if self._group is not None:
            raise ValueError("assign() is for consumers without group=; groups assign partitions")
        tps = [_tp(tp) for tp in partitions]
        for tp in tps:
            n = self._engine.partitions_for(tp.topic)
            if tp.partition >= n:
                raise PartitionNotFoundError(
                    f"{tp.topic!r} has partitions 0..{n - 1}, not {tp.partition}")
        self._manual = tps
        self._topics = sorted({tp.topic for tp in tps})
        self._topic_words = self._part_words = None  # _wait_slots computes them again
        self._sync_positions(tps)

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer currently reads."""
        if self._group is not None:
            return self._group.assignment()
        if self._manual is not None:
            return list(self._manual)
        return list(self._positions)

    def _reading(self) -> list[TopicPartition]:
        """:meth:`assignment` for the poll's own reads, without the copy for a group
        member (whose ``owned`` list is replaced on every change, never changed in place)."""
        if self._group is not None:
            return self._group.owned
        return self.assignment()

    def _all_partitions(self) -> list[TopicPartition]:
        out: list[TopicPartition] = []
        for t in self._topics:
            n = self._engine.partitions_for(t)
            out.extend(TopicPartition(t, p) for p in range(n))
        return out

    def _sync_positions(self, tps: list[TopicPartition]) -> None:
        keep = {tp: self._positions.get(tp, -1) for tp in tps}
        self._positions.clear()  # in place: the group member shares this map
        self._positions.update(keep)

    # -- positions -----------------------------------------------------------------------------
    def _resolve_position(self, txn: Any, tp: TopicPartition, st: _log.PartitionState) -> int:
        pos = self._positions.get(tp, -1)
        if pos < 0 and self._group is not None:
            pos = self._group.committed_in(txn, tp)
        if pos < 0 or pos < st.start or pos > st.next:
            if pos >= 0 and self._reset == "none":
                raise OffsetOutOfRangeError(
                    f"position {pos} of {tp.topic}[{tp.partition}] is outside the log "
                    f"[{st.start}, {st.next}); seek() to a valid offset", {tp: pos})
            if pos < 0 and self._reset == "none":
                raise OffsetOutOfRangeError(
                    f"no committed offset for {tp.topic}[{tp.partition}] and "
                    "auto_offset_reset='none'; seek() first", {tp: pos})
            # Past the end too (a seek too far, or the topic was recreated):
            # like Kafka, reset by policy; clamping to the end would skip data.
            pos = st.next if self._reset == "latest" else st.start
        self._positions[tp] = pos
        return pos

    @guarded
    def position(self, tp: TopicPartitionLike) -> int:
        """The offset of the next message :meth:`poll` returns for ``tp``."""
        tp = _tp(tp)
        self._check_assigned(tp)
        with self._env.read_txn() as txn:
            pid, _ = self._pid(txn, tp)
            self._rebind(tp, pid)
            st = _log.load_state(txn, self._env.dbs, pid)
            return self._resolve_position(txn, tp, st)

    @guarded
    def seek(self, tp: TopicPartitionLike, offset: int) -> None:
        """Make the next :meth:`poll` of ``tp`` start at ``offset``.

        An offset below the log start or past the end is handled by
        ``auto_offset_reset`` at the next poll.  The offset is one of the partition as
        it is now: if its topic is deleted and created again before the next poll, that
        poll drops it and starts the new partition by ``auto_offset_reset`` (D91).
        """
        tp = _tp(tp)
        require_int(offset, "offset", minimum=0, maximum=MAX_I64)
        self._check_assigned(tp)
        try:
            with self._env.read_txn() as txn:
                pid, _ = self._pid(txn, tp)
        except (TopicNotFoundError, PartitionNotFoundError):
            # no partition now: the offset is for whichever the next poll finds
            if self._pids.pop(tp, None) is not None:
                self._part_words = None
        else:
            self._rebind(tp, pid)
        self._positions[tp] = offset

    @guarded
    def rewind(self, tp: TopicPartitionLike, offset: int) -> None:
        """Put ``tp``'s position back to ``offset``, an offset this consumer read and did
        not hand out (``mqlite.aio`` puts back what a cancelled poll fetched).

        Unlike :meth:`seek` it reads nothing: the offset stays one of the partition id
        it was read from, so if the topic was deleted and created again since, the next
        poll drops it (D91).

        Raises
        ------
        ValueError
            ``tp`` is not assigned to this consumer (any more).
        """
        tp = _tp(tp)
        require_int(offset, "offset", minimum=0, maximum=MAX_I64)
        self._check_assigned(tp)
        self._positions[tp] = offset

    @guarded
    def seek_to_beginning(self, *tps: TopicPartitionLike) -> None:
        """Seek the given (default: all assigned) partitions to their log start."""
        targets = [_tp(t) for t in tps] or self.assignment()
        for tp, off in self.beginning_offsets(targets).items():
            self._check_assigned(tp)
            self._positions[tp] = off

    @guarded
    def seek_to_end(self, *tps: TopicPartitionLike) -> None:
        """Seek the given (default: all assigned) partitions to their end."""
        targets = [_tp(t) for t in tps] or self.assignment()
        for tp, off in self.end_offsets(targets).items():
            self._check_assigned(tp)
            self._positions[tp] = off

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._positions and tp not in self.assignment():
            raise ValueError(f"{tp} is not assigned to this consumer")

    def _pid(self, txn: Any, tp: TopicPartition,
             rec: _log.TopicRecord | None = None) -> tuple[int, _log.TopicRecord]:
        """The id of partition ``tp`` and its topic's record (``rec``: the record of
        ``tp.topic`` already read in ``txn``)."""
        if rec is None:
            rec = self._engine.topic(txn, tp.topic)
        if not 0 <= tp.partition < len(rec.pids):
            raise PartitionNotFoundError(
                f"{tp.topic!r} has partitions 0..{len(rec.pids) - 1}, not {tp.partition}")
        return rec.pids[tp.partition], rec

    def _offsets(self, tps: Iterable[TopicPartitionLike], end: bool) -> dict[TopicPartition, int]:
        out = {}
        with self._env.read_txn() as txn:
            for tp in tps:
                tp = _tp(tp)
                pid, _ = self._pid(txn, tp)
                if tp in self._positions:
                    self._rebind(tp, pid)
                st = _log.load_state(txn, self._env.dbs, pid)
                out[tp] = st.next if end else st.start
        return out

    def beginning_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """First stored offset of each partition."""
        return self._offsets(tps, end=False)

    def end_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """Offset the next message of each partition will get (the log end)."""
        return self._offsets(tps, end=True)

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the first offset whose timestamp is >= the given ms.

        ``None`` for a partition with no such message.
        """
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        with self._env.read_txn() as txn:
            for tp, ts in timestamps.items():
                tp = _tp(tp)
                require_int(ts, "timestamp", minimum=0)
                pid, _ = self._pid(txn, tp)
                st = _log.load_state(txn, self._env.dbs, pid)
                hit = _log.find_offset_for_time(txn, self._env.dbs, pid, st, ts, tp.topic,
                                                tp.partition)
                out[tp] = None if hit is None else OffsetAndTimestamp(*hit)
        return out

    @guarded
    def lag(self) -> dict[TopicPartition, int]:
        """Messages between the current position and the end, per assigned partition."""
        out = {}
        with self._env.read_txn() as txn:
            for tp in self.assignment():
                pid, _ = self._pid(txn, tp)
                self._rebind(tp, pid)
                st = _log.load_state(txn, self._env.dbs, pid)
                out[tp] = st.next - self._resolve_position(txn, tp, st)
        return out

    # -- polling ------------------------------------------------------------------------------
    def _fetch(self, max_records: int) -> tuple[list[_core.Message], int | None]:
        """Read from the assigned partitions; also return the next delayed message's due ms.

        The due time comes from the same read transaction, so polling costs no
        extra transaction for delayed-message support.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and self._starts_at(ahead, max_records):
            self._rotation += 1
            for tp, nxt in ahead.moves:
                self._positions[tp] = nxt
            return ahead.messages, ahead.due
        env = self._env
        tps = self._reading()
        out: list[_core.Message] = []
        with env.read_txn() as txn:
            due = scheduler.next_due_in(txn, env.dbs)
            if not tps:
                return out, due
            advanced = self._read(txn, tps, None, max_records, out)
            self._rotation += 1
        # Positions move only once every read succeeded: if a later partition raises
        # (a corrupt batch), messages read before it were never returned and must not
        # count as consumed (a commit would skip them).
        for tp, nxt in advanced:
            self._positions[tp] = nxt
        return out, due

    def _read(self, txn: Any, tps: list[TopicPartition], positions: list[int] | None,
              max_records: int, out: list[_core.Message],
              ) -> list[tuple[TopicPartition, int]]:
        """Read up to ``max_records`` into ``out`` from ``tps``, round-robin from the
        current rotation; ``(partition, next position)`` of each partition read.

        ``positions=None``: from the consumer's positions, resolving unset or
        out-of-range ones (a poll).  Else from ``positions`` (one per ``tps``),
        without changing anything: the read stops at the first partition whose
        position needs resolving (a read-ahead leaves that to the poll; a poll
        returns "up to" ``max_records``, so fewer partitions are as valid).
        """
        dbs = self._env.dbs
        n = len(tps)
        start = self._rotation % n
        moves: list[tuple[TopicPartition, int]] = []
        rec: _log.TopicRecord | None = None  # one catalog check per topic and read
        for i in range(n):
            tp = tps[(start + i) % n]
            pid, rec = self._pid(txn, tp, rec if rec is not None and rec.name == tp.topic
                                 else None)
            if self._pids.get(tp) != pid:
                if positions is not None:
                    break  # read ahead: the positions are not of this id; the poll rebinds
                self._rebind(tp, pid)
            st = _log.load_state(txn, dbs, pid)
            if positions is None:
                pos = self._resolve_position(txn, tp, st)
            else:
                pos = positions[(start + i) % n]
                if pos < 0 or pos < st.start or pos > st.next:
                    break
            if pos >= st.next:
                continue
            nxt = _log.read_records(txn, dbs, pid, pos, max_records - len(out), out,
                                    tp.topic, tp.partition, st.next)
            moves.append((tp, nxt))
            if len(out) >= max_records:
                break
        return moves

    def _rebind(self, tp: TopicPartition, pid: int) -> None:
        """Partition ``tp`` has id ``pid`` now, not the one its position belongs to (D91).

        The first id learnt only binds.  Another id means the topic was deleted and
        created again (ids are never reused): the position (read or sought in the old
        partition) is dropped, so the next read resolves it as for a new partition
        (the group's committed offset of the new id, which is none, then
        ``auto_offset_reset``), a batch read ahead is dropped, and the group member
        forgets what it committed of the old one.  Commits check the id (GroupMember).
        Does nothing when ``tp`` already has ``pid``; the poll checks that inline.
        """
        old = self._pids.get(tp)
        if old == pid:
            return  # the id its position belongs to
        self._pids[tp] = pid
        self._part_words = None  # wait on the new partition's word
        if old is not None and tp in self._positions:
            self._positions[tp] = -1
            self._ahead = None
            if self._group is not None:
                self._group.partition_recreated(tp)

    def _starts_at(self, ahead: _Ahead, max_records: int) -> bool:
        """Whether a fetch of ``max_records`` now starts where ``ahead`` was read."""
        tps = self.assignment()
        if max_records != ahead.max_records or tps != ahead.tps:
            return False
        positions = self._positions
        return [positions.get(tp, -1) for tp in tps] == ahead.positions

    def read_ahead(self, max_records: int | None = None) -> bool:
        """Read the batch the next ``poll(max_records)`` would return, without consuming it.

        For ``mqlite.aio``: called on the event loop while a worker thread
        runs :meth:`commit` on this consumer, so the next poll's read overlaps
        the commit's fsync.  It only reads (positions, assignment, storage)
        and keeps the batch aside; the next fetch returns it only when it is
        still exactly what that fetch would start from (same ``max_records``,
        assignment and positions: a seek, a rebalance or a put-back discards
        it).  Messages that arrived after this read are returned by a later
        poll, as with any read.  Any thread; may run beside a thread inside a
        call (:meth:`UseGuard.enter_beside`).

        Returns
        -------
        bool
            Whether a batch was kept (False: nothing to read before the first
            position the next poll must resolve, a close under way, or any
            error, which the next poll then meets itself).
        """
        if max_records is None:
            max_records = self._max_poll
        require_int(max_records, "max_records", minimum=1)
        if self._closed or self._ahead is not None or not self._life.enter_beside():
            return False
        try:
            ahead = self._read_ahead(max_records)
        except Exception:  # noqa: BLE001 - a speculative read: the next poll meets the error
            return False
        finally:
            self._life.exit_beside()
        self._ahead = ahead
        return ahead is not None

    def _read_ahead(self, max_records: int) -> _Ahead | None:
        env = self._env
        tps = self.assignment()
        if not tps:
            return None
        positions = [self._positions.get(tp, -1) for tp in tps]
        out: list[_core.Message] = []
        with env.read_txn() as txn:
            due = scheduler.next_due_in(txn, env.dbs)
            moves = self._read(txn, tps, positions, max_records, out)
        if not out:
            return None
        return _Ahead(max_records, tps, positions, moves, out, due)

    def _wait_slots(self) -> tuple[int, ...]:
        """The wake-up words a poll round loads before it reads, and then waits on.

        A consumer whose reads are all named by its assignment (``assign``, or a group
        member with partitions of every subscribed topic) waits on its partitions'
        words (D64), so appends to other partitions do not wake it: a group whose
        members read one or a few partitions each wakes one member per message
        instead of all.  It learns
        the partitions' ids from the rounds that read them; until it knows them all, or
        when it reads more than ``_WAIT_ANY_MAX``, it waits on its topics' words (a
        subscribed topic that does not exist yet is waited for there), or on the word
        every append bumps.  Appends bump a partition's word before its topic's; group
        changes, a topic's deletion or new partitions and a delayed message being
        scheduled bump every partition's word of the topic.
        """
        if self._manual is None and self._group is None:
            words = self._topic_words  # they change only with the subscription
            if words is None:
                words = self._topic_words = self._words_of_topics()
            return words
        tps = self._reading()
        cached = self._part_words
        if cached is not None and cached[0] == tps:
            return cached[1]
        pids = self._pids
        if 0 < len(tps) <= _WAIT_ANY_MAX and all(tp in pids for tp in tps) and (
                self._manual is not None
                or len({tp.topic for tp in tps}) == len(self._topics)):
            env = self._env
            words = tuple(dict.fromkeys(env.partition_slot(pids[tp]) for tp in tps))
            self._part_words = (tps, words)  # until the assignment or an id changes
            return words
        return self._words_of_topics()

    def _words_of_topics(self) -> tuple[int, ...]:
        topics = self._topics
        if len(topics) == 1:
            return (self._env.topic_slot(topics[0]),)
        if 0 < len(topics) <= _WAIT_ANY_MAX:
            return tuple(dict.fromkeys(self._env.topic_slot(t) for t in topics))
        return (0,)

    @guarded
    def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[_core.Message]:
        """Return up to ``max_records`` messages, waiting up to ``timeout`` seconds for some.

        Returns as soon as any message is available (an empty list after
        ``timeout``, or at once after :meth:`wakeup` or :meth:`close` from
        another thread or a signal handler).  Within a partition messages come in offset order;
        partitions are served round-robin.  Waiting uses the cross-process
        wake-up (no sleep-polling).  In a group this also heartbeats,
        rebalances and applies the commit policy.

        Raises
        ------
        ClosedError, TopicNotFoundError (a subscribed topic was deleted),
        OffsetOutOfRangeError (``auto_offset_reset="none"``),
        CorruptRecordError (a stored batch failed its CRC)
        """
        self._check_open()
        if max_records is None:
            max_records = self._max_poll
        require_int(max_records, "max_records", minimum=1)
        require_positive_number(timeout, "timeout")
        deadline = time.monotonic() + timeout
        notifier = self._env.notifier
        while True:
            step = self._step(max_records, True)
            if step.done:
                return step.messages
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._life.woken():
                return []
            if step.slots:
                notifier.wait_any(step.slots, step.seqs, min(remaining, step.wait))
            else:
                notifier.wait(step.slot, step.seq, min(remaining, step.wait))
            if self._life.woken():
                return []

    @guarded
    def poll_step(self, max_records: int | None = None, *, writes: bool = True) -> PollStep:
        """One non-blocking round of :meth:`poll`, for event loops (``mqlite.aio``).

        Fetches like ``poll(timeout=0)`` and, when nothing is there, says what
        to wait on: the caller waits until wake-up word ``slot`` differs from
        ``seq`` (or ``wait`` seconds pass), then calls again.

        Parameters
        ----------
        writes
            ``False``: never write (the caller runs on an event loop thread,
            where an fsync must not happen, and rebalance callbacks must not
            run).  A round that would have to write (a group join,
            rebalance or automatic commit, a ``commit="before"`` policy,
            promoting due delayed messages) then changes nothing and returns
            ``needs_writes=True``: run it again with ``writes=True`` off the
            loop.

        Raises
        ------
        As :meth:`poll`.
        """
        return self._checked_step(max_records, writes)

    def _loop_step_checked(self, max_records: int | None) -> PollStep:
        """``poll_step(max_records, writes=False)`` for an event loop's wake-up path.

        The same round, result and errors (``None``: ``max_poll_records``).
        ``mqlite.aio`` calls it after every wake-up.  As :attr:`loop_step` this
        runs only when an argument or the state needs a check: the compiled
        wrapper (:func:`~mqlite._lifecycle.guarded_loop_step`, D79) enters the
        guard and runs the round itself otherwise, with no Python frame.

        Raises
        ------
        As :meth:`poll_step`.
        """
        return self._checked_step(max_records, False, True)

    def _checked_step(self, max_records: int | None, writes: bool,
                      late: bool = False) -> PollStep:
        """:meth:`_step` after the checks of :meth:`poll_step` (open, ``max_records``
        an int >= 1 or ``None`` for ``max_poll_records``); inside the caller's guard."""
        self._check_open()
        if max_records is None:
            max_records = self._max_poll
        require_int(max_records, "max_records", minimum=1)
        return self._step(max_records, writes, late)

    def _step(self, max_records: int, writes: bool, late: bool = False) -> PollStep:
        """One round: load the wake-up words, run the group's part, read (or skip the read:
        :meth:`_skip`), promote due delayed messages, and say what to wait on.

        ``late``: a round that returns messages notes that it drained its partitions
        without :meth:`_note_drained`'s checks and copy of the positions; the next round
        makes them, and only if no other call came in between (D79).  For an event
        loop's wake-up path: that work moves from the poll's return to the next round,
        which runs before the next wait.
        """
        group = self._group
        moved = False
        notifier = self._env.notifier
        while True:
            # Load the wake-up words before reading any state (group or log), so
            # a change committed in between is never slept through.
            slots = self._wait_slots()
            slot = self._waiting_on = slots[0]
            seq = notifier.load(slot)
            seqs = (seq,) if len(slots) == 1 else tuple(notifier.load(s) for s in slots)
            if group is not None and not group.before_fetch(writes):
                return PollStep([], False, slot, seq, 0.0, True)
            drained, self._drained = self._drained, None  # used by this round or never
            if drained is not None:
                skipped = self._skip(drained, slots, seqs)
                if skipped is not None:
                    return skipped
            ahead = self._ahead
            msgs, due_ms = self._fetch(max_records)
            wait = math.inf
            if due_ms is not None:
                due = (due_ms - time.time_ns() // 1_000_000) / 1000.0
                if due <= 0:
                    if not writes:
                        if not msgs:
                            return PollStep([], False, slot, seq, 0.0, True)
                    elif scheduler.promote_due(self._engine) and not msgs:
                        continue  # read what was just made visible
                wait = due + 0.001
            # Whether this round read every partition it reads to its end, from storage
            # (not a batch read ahead): if so, the next round may skip its read (D68).
            # (A due time already passed is checked again by the next round: it reads.)
            drained_now = len(msgs) < max_records and (ahead is None or msgs is not ahead.messages)
            if msgs:
                if self._life.close_requested and self._commit_policy != "before":
                    # close() interrupted this poll: hand nothing out, so that the
                    # close's commit does not cover messages nobody processed
                    for m in reversed(msgs):
                        self._positions[TopicPartition(m.topic, m.partition)] = m.offset
                    return PollStep([], True, slot, seq, 0.0, False)
                if group is not None:
                    group.after_fetch(msgs)
                if drained_now:
                    if late:
                        # (_source() inlined, and the tuple made without the named
                        # tuple's Python __new__: this is the wake-up's path)
                        self._drained = _new_drained(_Drained, (
                            slots, seqs, group.owned if group is not None
                            else self._manual if self._manual is not None else self._topics,
                            self._life.calls, due_ms, True))
                    else:
                        self._note_drained(slots, seqs, due_ms)
                return PollStep(msgs, True, slot, seq, 0.0, False)
            if not moved and (group is not None or self._manual is not None) \
                    and self._wait_slots() != slots:
                # This round changed the words to wait on (a new assignment, partition ids
                # learnt or changed by a topic's re-creation, D64): load those, then read
                # again.  Once: a group that keeps moving wakes every partition's word.
                moved = True
                continue
            if drained_now:
                self._note_drained(slots, seqs, due_ms)
            if group is not None:
                wait = min(wait, group.wait_budget())
            if len(slots) == 1:
                return PollStep(msgs, False, slot, seq, wait, False)
            return PollStep(msgs, False, slot, seq, wait, False, slots, seqs)

    loop_step = guarded_loop_step(_step, _loop_step_checked)

    def _source(self) -> object:
        """The list this consumer's reads are named by; replaced (never changed in place)
        by every change of what it reads: the group member's ``owned``, the ``assign()``
        list, or the subscription."""
        if self._group is not None:
            return self._group.owned
        return self._manual if self._manual is not None else self._topics

    def _note_drained(self, slots: tuple[int, ...], seqs: tuple[int, ...],
                      due_ms: int | None) -> None:
        """Remember that this round's read, begun after loading ``seqs``, reached the end of
        every partition it reads (D68).  Not when a position is unresolved (a partition
        dropped by a fenced ``commit="before"``, or one not read): a read would resolve it."""
        pos = self._positions
        source = self._source()
        tps = self._reading()
        for tp in tps:
            if pos.get(tp, -1) < 0:
                return
        self._drained = _Drained(slots, seqs, source, dict(pos), due_ms, bool(tps))

    def _skip(self, drained: _Drained, slots: tuple[int, ...],
              seqs: tuple[int, ...]) -> PollStep | None:
        """The round's result without reading, when a read would find nothing (D68).

        ``drained`` is what the previous round saw when its read reached the end of every
        partition.  Every append bumps the word of the partition it wrote (and the topic's)
        after its commit, and this round loaded its words before any read, so words still
        holding the values loaded before that read mean no record was appended since to
        what it reads (nor was a topic deleted, re-created or given partitions, a delayed
        message scheduled to it, or the group changed: those bump the words too).  Then a
        read returns nothing and moves nothing, provided nothing local changed either: the
        same assignment (``_source``), the same positions (a seek, a put-back or a
        rebalance changes them), no batch read ahead, and no delayed message due by the due
        time that read saw.  The PollStep is the one an empty read returns.  ``None``:
        read.
        """
        if (seqs != drained.seqs or slots != drained.slots or self._ahead is not None
                or drained.source is not self._source()):
            return None
        positions = drained.positions
        reads = drained.reads
        if type(positions) is int:
            # Noted late (D79): the positions are the noting round's only if this round's
            # own entry is the one call since (a seek, put-back, commit or rebalance
            # callback in between counts too); then make _note_drained's check.
            if self._life.calls != positions + 1:
                return None
            pos = self._positions
            tps = self._reading()
            for tp in tps:
                if pos.get(tp, -1) < 0:
                    return None
            reads = bool(tps)
        elif positions != self._positions:
            return None
        wait = math.inf
        due_ms = drained.due
        if due_ms is not None:
            due = (due_ms - time.time_ns() // 1_000_000) / 1000.0
            if due <= 0:
                return None  # due now: the read promotes it
            wait = due + 0.001
        if reads:
            self._rotation += 1  # as the read would (the next one starts where it would)
        if self._group is not None:
            wait = min(wait, self._group.wait_budget())
        if len(slots) == 1:
            return PollStep([], False, slots[0], seqs[0], wait, False)
        return PollStep([], False, slots[0], seqs[0], wait, False, slots, seqs)

    def __iter__(self) -> Iterator[_core.Message]:
        """Yield messages forever (until :meth:`close`), polling in 1 s waits."""
        while not self._closed:
            try:
                batch = self.poll(timeout=1.0)
            except ClosedError:
                return
            yield from batch

    # -- commits (groups) ------------------------------------------------------------------
    @guarded
    def commit(self, offsets: Any = None) -> None:
        """Commit positions (default: everything returned so far) for the group.

        ``offsets`` may be a :class:`~mqlite.Message` (commit up to and
        including it) or a mapping ``{TopicPartition: next_offset}`` (offsets
        in 0..2**63-1).
        Raises :class:`CommitFailedError` for partitions this member no
        longer owns; ``ValueError`` without a group or for an offset out of
        that range (nothing is committed then).
        """
        self._check_open()
        if self._group is None:
            raise ValueError("commit() needs a consumer created with group=")
        self._group.commit(offsets)

    @overload
    def committed(self, tp: TopicPartitionLike) -> int | None: ...

    @overload
    def committed(self, tp: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    def committed(self, tp: TopicPartitionLike | list[TopicPartition]
                  ) -> int | None | dict[TopicPartition, int | None]:
        """The group's committed offset(s): the next offset the group will read.

        Parameters
        ----------
        tp
            One :class:`TopicPartition` (or ``(topic, partition)`` tuple), or a
            ``list`` of them (confluent-kafka's form).

        Returns
        -------
        int or None, or dict[TopicPartition, int | None]
            For one partition its offset, ``None`` when the group has committed
            nothing there yet or the partition does not exist (as Kafka's
            ``KafkaConsumer.committed``); for a list, a dict of those, read in
            one transaction.

        Raises
        ------
        ValueError
            The consumer has no ``group=``.
        TypeError
            ``tp`` is not a TopicPartition or a list of them.
        """
        if self._group is None:
            raise ValueError("committed() needs a consumer created with group=")
        if isinstance(tp, list):
            return self._group.committed_many([_tp(t) for t in tp])
        return self._group.committed(_tp(tp))

    def positions(self) -> dict[TopicPartition, int]:
        """Current in-memory positions (next offset to return) of resolved partitions."""
        return {tp: p for tp, p in self._positions.items() if p >= 0}

    # -- lifecycle ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this consumer is closed")
        if self._engine.closed:
            raise ClosedError("the broker of this consumer is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def wakeup(self) -> None:
        """Make a blocked :meth:`poll` return now.  Any thread; signal-handler safe.

        The poll running now stops waiting and returns what it has (usually an
        empty list; no exception, unlike Kafka's ``WakeupException``).  When no
        poll is running, the next poll returns without waiting instead.  Polls
        after that block normally.
        """
        self._life.wakeup()

    def _wake_waiter(self) -> None:
        self._env.wake(self._waiting_on)

    _CLOSE_RANK = 1  # after producers

    def close(self) -> None:
        """Leave the group (committing per policy) and stop.  Idempotent; any thread.

        A :meth:`poll` blocked in another thread returns at once (with an
        empty list; messages it had read are not handed out nor committed)
        and this returns once the consumer is closed.  From a signal handler
        or a callback that interrupted this consumer's own call on the same
        thread, the close happens when that call returns.
        """
        if self._closed:
            return
        if not self._life.request_close():
            return  # deferred to the end of the interrupted call
        try:
            self._close_now()
        finally:
            self._life.closed_done()

    def _close_now(self) -> None:
        if self._closed:
            return
        try:
            if self._group is not None:
                self._group.close()  # with the broker closed it only drops the lock
        finally:
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
