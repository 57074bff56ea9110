"""One consumer's membership of a group: join, leave, sync ownership, commit.

Contract
--------
:class:`GroupMember` is driven by its :class:`~mqlite.Consumer` (``poll()``
calls :meth:`~GroupMember.before_fetch` and :meth:`~GroupMember.after_fetch`;
``commit``/``committed``/``close`` forward here) from one thread at a time,
plus the process's one group watcher thread (:mod:`mqlite.groups.watcher`),
which only heartbeats it and reaps others.  Every change to the group goes through one
write transaction on the stored state (:mod:`mqlite.groups.state`).

A member releases a partition in its own ``poll()``: first ``on_revoke``,
then one transaction that commits its position (per the commit policy) and
frees it.  Hence no two members ever own a partition at the same time; with
the eager assignors (``range``, ``roundrobin``) a member releases everything
it owns on every generation change (Kafka's eager protocol), with
``cooperative-sticky`` only the partitions that moved.

Static members (``instance_id``) keep their slot when their process exits:
the partitions stay assigned to them (nobody else consumes them) for
``session_timeout``; a restart within that time takes them back without a
rebalance, otherwise the member is removed and its partitions move.

Offset commits are fenced: an offset is written only when the ``owners`` map
names this member and the member record names this incarnation (its lock
file), otherwise :class:`CommitFailedError`.  Ownership is a stronger fence
than a generation number alone: a member keeps committing the partitions it
still owns across generations, and nothing it no longer owns.  Each stored
offset records the member id and the generation it was written in.

A member used in a forked child raises :class:`GroupError`: the child does
not hold the lock (:mod:`mqlite._liveness` closes it there).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeGuard

import msgspec

from mqlite._core import Message, register_ring_offsets, self_pid
from mqlite._engine import RING_OK, RING_RETRY, draining, on_ring_kind, retry_draining
from mqlite._liveness import MemberLock, members_dir, unlink_quiet
from mqlite._storage.offsets import OffsetValue
from mqlite.assignors import ASSIGNORS, EAGER
from mqlite.config import (
    MAX_I64,
    MAX_POLL_INTERVAL_S,
    MAX_SESSION_TIMEOUT_S,
    require_seconds,
    validate_group_name,
)
from mqlite.errors import (
    CommitFailedError,
    GroupError,
    PartitionNotFoundError,
    TopicNotFoundError,
)
from mqlite.groups.state import (
    GroupState,
    MemberState,
    _decode_group,
    _now_ms,
    _okey,
    _raw_group,
    _release_all,
    _tp_of,
    grant_free,
    load_group,
    load_group_shared,
    read_offset,
    rebalance,
    remove_member,
    store_group,
    write_offset,
)
from mqlite.groups.watcher import GroupWatch, _notify_group, member_status
from mqlite.groups.watcher import join as _join_watcher
from mqlite.groups.watcher import leave as _leave_watcher
from mqlite.types import TopicPartition

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["GroupMember"]

#: Longest a poll() waits while a partition it was assigned is still held by
#: another member (the release wakes it earlier; this only bounds a lost wake-up).
_PENDING_WAIT = 0.25
#: Longest a poll() waits otherwise before re-reading the group state.
_IDLE_WAIT = 1.0


class GroupMember:
    """Group membership of one :class:`~mqlite.Consumer` (internal).

    Parameters (forwarded from ``broker.consumer(..., group=...)``)
    ----------
    engine
        The engine of the consumer's broker.
    positions
        The consumer's position map (next offset per owned partition), shared
        by reference: the member drops revoked partitions from it, resets new
        ones to ``-1`` (resolve from the committed offset) and commits from it.
        The consumer mutates it in place and never replaces it.
    commit_policy
        The consumer's ``commit=`` policy: ``"after"``, ``"before"`` or ``"manual"``.
    group
        Group name (same rules as topic names).
    pids
        The consumer's map of partition ids its positions belong to, shared by
        reference (the consumer changes it, this member only reads it): an offset
        commit of a partition whose id in the transaction differs (its topic was
        deleted and created again since the consumer read it) raises
        :class:`CommitFailedError`, or is dropped when automatic (D91).
    instance_id
        Static membership: a member restarting with the same id within
        ``session_timeout`` gets its partitions back without a rebalance.
    assignor
        ``"range"`` (default), ``"roundrobin"`` or ``"cooperative-sticky"``.
        All members of a group must use the same one.
    session_timeout
        Seconds (not milliseconds) without a heartbeat after which a live but
        hung member is expired (default 10; ``0 < session_timeout <= 3600``).
        A crashed member is detected at once.  Heartbeats are sent every
        ``session_timeout / 3`` seconds (at least every 50 ms) by a thread.
    max_poll_interval
        Seconds (not milliseconds) between polls after which this member stops
        heartbeating and so lets itself expire (default 300; at most 86,400),
        as Kafka's ``max.poll.interval.ms``.
    on_assign, on_revoke
        Called in ``poll()`` (or ``close()``) with a sorted list of
        :class:`TopicPartition`: ``on_assign`` after the partitions became
        this member's, ``on_revoke`` before they are released (before the
        automatic commit, so a manual commit in it still succeeds).  An
        expired member gets ``on_revoke`` for everything it held.

    Raises
    ------
    TypeError, ValueError
        Bad option types or values.
    """

    def __init__(self, engine: Engine, positions: dict[TopicPartition, int],
                 commit_policy: str, group: str, *,
                 pids: dict[TopicPartition, int] | None = None,
                 instance_id: str | None = None,
                 assignor: str = "range", session_timeout: float = 10.0,
                 max_poll_interval: float = 300.0,
                 on_assign: Callable[[list[TopicPartition]], Any] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], Any] | None = None) -> None:
        validate_group_name(group)
        if not isinstance(assignor, str):
            raise TypeError(f"assignor must be str, not {type(assignor).__name__}")
        if assignor not in ASSIGNORS:
            raise ValueError(f"assignor must be one of {sorted(ASSIGNORS)}, got {assignor!r}")
        require_seconds(session_timeout, "session_timeout", maximum=MAX_SESSION_TIMEOUT_S)
        require_seconds(max_poll_interval, "max_poll_interval", maximum=MAX_POLL_INTERVAL_S)
        if instance_id is not None:
            if not isinstance(instance_id, str):
                raise TypeError(f"instance_id must be str, not {type(instance_id).__name__}")
            if not instance_id or len(instance_id) > 200 or "\x00" in instance_id:
                raise ValueError("instance_id must be a non-empty str of at most 200 characters")
        for cb, name in ((on_assign, "on_assign"), (on_revoke, "on_revoke")):
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable")
        self.engine = engine
        self._positions = positions
        self._pids: dict[TopicPartition, int] = {} if pids is None else pids
        self._commit_policy = commit_policy
        self.env = self.engine.env
        self.group = group
        self.instance_id = instance_id
        self.assignor = assignor
        self.session_timeout_ms = max(1, int(session_timeout * 1000))
        self.max_poll_interval = float(max_poll_interval)
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.member_id: str | None = None
        self.topics: list[str] = []
        self.owned: list[TopicPartition] = []
        self.generation_seen = -1
        self.pending = False
        self._raw: bytes | None = None
        self._lock: MemberLock | None = None
        self._lock_name = ""
        self._last_poll = time.monotonic()
        self._last_beat = 0.0
        self._beat_every = max(0.05, self.session_timeout_ms / 3000.0)
        self._committed: dict[TopicPartition, int] = {}
        self._watch: GroupWatch | None = None  # the process's group watcher serves it
        self._pid = os.getpid()
        # caches of the commit through the ring (_held, _ring_head)
        self._held_of: list[TopicPartition] | None = None
        self._held_set: frozenset[TopicPartition] = frozenset()
        self._head_key: tuple[str | None, str] | None = None
        self._head = b""

    # -- join / leave ----------------------------------------------------------------------
    def _gkey(self) -> str:
        return hashlib.sha1(self.group.encode()).hexdigest()[:12]

    def _check_fork(self) -> None:
        if self_pid() != self._pid:  # the at-fork hook's pid: no system call per poll
            raise GroupError(
                f"this consumer of group {self.group!r} was created in process {self._pid}; "
                "a forked child cannot use its parent's membership: create a new consumer "
                "in the child")

    def _take_lock(self, member_id: str) -> None:
        tag = hashlib.sha1(member_id.encode()).hexdigest()[:16]
        self._lock = MemberLock.create(
            self.env.path, f"{self._gkey()}-{tag}", file_mode=self.env.file_mode,
            dir_mode=0o770 if self.env.shared_group else 0o700)
        self._lock_name = self._lock.name

    def _drop_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # unlinks only in the process that created it
            self._lock = None

    def subscribe(self, topics: list[str]) -> None:
        """Join the group, or change this member's subscription (a rebalance)."""
        self._check_fork()
        self.topics = list(topics)
        if self.member_id is not None:
            with self.engine.write() as txn:
                state = load_group(txn, self.env.dbs, self.group)
                mine = self._is_mine(state)
                if state is not None and mine:
                    state.members[self.member_id].topics = list(topics)
                    rebalance(self.engine, txn, state)
                    store_group(txn, self.env.dbs, self.group, state)
            if mine:
                _notify_group(self.engine, state)
            # else: removed meanwhile; the next poll() notices and rejoins.
        else:
            self._join()
        self._start_watcher()

    def _is_mine(self, state: GroupState | None) -> TypeGuard[GroupState]:
        """True when ``state`` lists this member with this incarnation's lock file."""
        if state is None or self.member_id is None:
            return False
        m = state.members.get(self.member_id)
        return m is not None and m.lock == self._lock_name

    def _join(self) -> None:
        member_id = (f"static-{self.instance_id}" if self.instance_id is not None
                     else f"m-{uuid.uuid4().hex}")
        self._take_lock(member_id)
        try:
            state = retry_draining(lambda: self._join_in_txn(member_id))
        except BaseException:
            self._drop_lock()
            raise
        self.member_id = member_id
        self.generation_seen = -1
        self.owned = []
        self.pending = True
        self._raw = None
        _notify_group(self.engine, state)

    def _join_in_txn(self, member_id: str) -> GroupState:
        """The join's write transaction (retried as a draining write: joining a group
        that exists is always admitted); the group state stored."""
        now = _now_ms()
        with self.engine.write() as txn:
            state = load_group(txn, self.env.dbs, self.group)
            if state is None:  # a new group adds state; joining one may drain it
                self.engine.admit_growth(txn)
                state = GroupState(assignor=self.assignor)
            if not state.members:
                state.assignor = self.assignor
            elif state.assignor != self.assignor:
                raise GroupError(
                    f"group {self.group!r} uses assignor {state.assignor!r}; "
                    f"this consumer asked for {self.assignor!r}")
            me = MemberState(member_id=member_id, pid=os.getpid(), topics=list(self.topics),
                             lock=self._lock_name, session_timeout_ms=self.session_timeout_ms,
                             joined_ms=now, instance_id=self.instance_id)
            old = state.members.get(member_id)
            status = "dead"
            if old is not None and not old.departed_ms:
                status = member_status(self.env.path, old, now)
                if status == "alive":
                    raise GroupError(
                        f"instance_id {self.instance_id!r} is in use by live pid {old.pid} "
                        f"in group {self.group!r}; close that consumer or use another id")
            if old is not None and status == "dead":
                # A static member coming back (or replacing a crashed
                # incarnation not yet noticed): same slot, same assignment.
                unlink_quiet(os.path.join(members_dir(self.env.path), old.lock))
                state.members[member_id] = me
                if sorted(old.topics) != sorted(self.topics):
                    rebalance(self.engine, txn, state)
                else:
                    grant_free(state)
            else:
                if old is not None:  # expired but alive: fence it out, start afresh
                    unlink_quiet(os.path.join(members_dir(self.env.path), old.lock))
                    _release_all(state, member_id)
                state.members[member_id] = me
                rebalance(self.engine, txn, state)
            store_group(txn, self.env.dbs, self.group, state)
        return state

    def _leave(self, commit: bool) -> None:
        """Leave in one transaction: commit owned positions (if ``commit``) and release."""
        if self.member_id is None:
            return
        me = self.member_id
        try:
            state = retry_draining(lambda: self._leave_in_txn(me, commit))
            if state is not None:
                _notify_group(self.engine, state)
        finally:
            self.member_id = None
            self.owned = []
            self._drop_lock()

    def _leave_in_txn(self, me: str, commit: bool) -> GroupState | None:
        """The leave's write transaction; the group state stored, or ``None`` if not ours."""
        with self.engine.write() as txn:
            state = load_group(txn, self.env.dbs, self.group)
            if not self._is_mine(state):
                return None
            if commit:
                self._commit_owned(txn, state, self._dirty(self.owned))
            if self.instance_id is not None:
                # Static members keep their slot (and assignment) for session_timeout.
                state.members[me].departed_ms = _now_ms()
                _release_all(state, me)
                grant_free(state)
            else:
                remove_member(self.engine, txn, state, me)
            store_group(txn, self.env.dbs, self.group, state)
        return state

    def close(self) -> None:
        """Leave the group: ``on_revoke``, commit per policy, release, stop the watcher.

        In a forked child this does nothing to the group (the parent is still
        the member).  With the broker already closed it only drops the lock,
        so the other members reap this member at once.
        """
        self.stop_watching()
        if os.getpid() != self._pid:
            return
        if self.engine.closed:
            self.member_id = None
            self.owned = []
            self._drop_lock()
            return
        try:
            if self.owned and self.on_revoke is not None:
                self.on_revoke(list(self.owned))
        finally:
            self._leave(commit=self._commit_policy != "manual")

    # -- the group watcher -----------------------------------------------------------------
    def _start_watcher(self) -> None:
        if self._watch is None:
            self._watch = _join_watcher(self)

    def stop_watching(self, timeout: float = 2.0) -> None:
        """Leave the process's group watcher: no more heartbeats (waits up to ``timeout`` s
        for a tick of the group in progress).  Idempotent."""
        gw, self._watch = self._watch, None
        if gw is not None:
            _leave_watcher(gw, self, timeout)

    def beat_if_due(self, now: float) -> None:
        """Heartbeat when one is due and ``poll()`` was called within ``max_poll_interval``
        (the watcher thread; ``now`` is ``time.monotonic()``)."""
        if now - self._last_beat >= self._beat_every and (
                now - self._last_poll < self.max_poll_interval):
            self._heartbeat()

    def _heartbeat(self) -> None:
        """Refresh the lock file's mtime (no LMDB write, so no fsync)."""
        self._last_beat = time.monotonic()
        if self._lock is not None:
            self._lock.heartbeat()

    # -- assignment sync (poll thread) -------------------------------------------------------
    def assignment(self) -> list[TopicPartition]:
        """Partitions this member owns now."""
        return list(self.owned)

    def partition_recreated(self, tp: TopicPartition) -> None:
        """The consumer found ``tp`` under a new partition id (its topic was deleted and
        created again) and dropped its position: forget what was committed of the old
        one, so that the next commit of ``tp`` is written (D91)."""
        self._committed.pop(tp, None)

    def wait_budget(self) -> float:
        """How long poll may block before re-reading the group state.

        Group changes wake pollers through the topics' wake-up words, so
        this bounds only the cost of a lost wake-up.
        """
        return _PENDING_WAIT if self.pending else _IDLE_WAIT

    def before_fetch(self, writes: bool = True) -> bool:
        """Called by ``poll()`` before fetching: join, commit (``after``), sync ownership.

        ``writes=False`` (an event loop's round, ``mqlite.aio``): when the
        round would write (join, rebalance, an automatic commit, or a
        ``commit="before"`` policy) return ``False`` without doing any of it,
        so the caller reruns it off the loop; ``True`` when it only read.
        """
        self._check_fork()
        if not writes and (self.member_id is None or self.pending
                           or self._commit_policy == "before"):
            return False
        self._last_poll = now = time.monotonic()
        if now - self._last_beat >= self._beat_every:
            self._heartbeat()  # heartbeats ride on poll() too, not only on the watcher
        if self.member_id is None:
            self._join()
            self._start_watcher()
        with self.env.read_txn() as txn:
            raw = _raw_group(txn, self.env.dbs, self.group)
        if raw is not None and raw == self._raw and not self.pending:
            # (policy checked here: a draining call per poll costs a wrapper's frames)
            return self._commit_policy != "after" or self._auto_commit(writes)
        state = _decode_group(self.group, raw)
        if (state is not None and state.generation == self.generation_seen
                and not self.pending and self._is_mine(state)):
            self._raw = raw
            return self._commit_policy != "after" or self._auto_commit(writes)
        if not writes:
            return False
        self._raw = raw
        self._sync(state)
        return True

    @draining
    def after_fetch(self, msgs: list[Any]) -> None:
        """Called by ``poll()`` with the fetched messages (commit policy ``before``).

        With ``commit="before"`` the new positions are committed before the
        messages are returned; messages of partitions whose commit was fenced
        (this member lost them) are dropped from ``msgs``, so they are never
        delivered twice.
        """
        if self._commit_policy != "before" or not msgs:
            return
        todo = self._dirty(self.owned)
        if not todo:
            return
        with self.engine.write() as txn:
            state = load_group(txn, self.env.dbs, self.group)
            failed = self._commit_owned(txn, state, todo)
        if failed:
            msgs[:] = [m for m in msgs if TopicPartition(m.topic, m.partition) not in failed]
            for tp in failed:
                self._positions.pop(tp, None)

    def _dirty(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        pos = self._positions
        return {tp: pos[tp] for tp in tps
                if pos.get(tp, -1) >= 0 and self._committed.get(tp) != pos[tp]}

    @draining
    def _auto_commit(self, writes: bool = True) -> bool:
        if self._commit_policy != "after":
            return True
        todo = self._dirty(self.owned)
        if todo and not writes:
            return False
        if todo and self._commit_by_ring(todo, fenced_ok=True):
            self._committed.update(todo)
        elif todo:
            with self.engine.write() as txn:
                state = load_group(txn, self.env.dbs, self.group)
                self._commit_owned(txn, state, todo)
            # A fenced partition is not an error here: its new owner redelivers.
        return True

    def _lost(self) -> None:
        """This member was removed (expired) or replaced: give up everything, forget the id."""
        owned, self.owned = self.owned, []
        try:
            if owned and self.on_revoke is not None:
                self.on_revoke(list(owned))
        finally:
            for tp in owned:
                self._positions.pop(tp, None)
            self._committed.clear()
            self._drop_lock()
            self.member_id = None
            self._raw = None

    def _sync(self, state: GroupState | None) -> None:
        policy = self._commit_policy
        for _ in range(16):
            if state is None or not self._is_mine(state):
                self._lost()
                self._join()
                with self.env.read_txn() as txn:
                    raw = _raw_group(txn, self.env.dbs, self.group)
                state = _decode_group(self.group, raw)
                self._raw = raw
                continue
            me = self.member_id or ""
            target = {TopicPartition(t, p) for t, p in state.assignment.get(me, ())}
            owned = set(self.owned)
            if (state.assignor in EAGER and state.generation != self.generation_seen
                    and self.generation_seen >= 0):
                release = set(owned)
            else:
                release = owned - target
            granted = {_tp_of(k) for k, v in state.owners.items() if v == me}
            orphans = granted - target - owned
            free = {tp for tp in target
                    if state.owners.get(_okey(tp.topic, tp.partition)) not in state.members}
            todo: dict[TopicPartition, int] = {}
            if policy != "manual":
                todo = self._dirty(release if policy == "before" else owned)
            if release and self.on_revoke is not None:
                self.on_revoke(sorted(release))
            st = state
            if release or orphans or free or todo:
                with self.engine.write() as txn:
                    st2 = load_group(txn, self.env.dbs, self.group)
                    if self._is_mine(st2):
                        self._commit_owned(txn, st2, todo)
                        for tp in release | orphans:
                            k = _okey(tp.topic, tp.partition)
                            if st2.owners.get(k) == me:
                                del st2.owners[k]
                        grant_free(st2)
                        store_group(txn, self.env.dbs, self.group, st2)
                if st2 is None or not self._is_mine(st2):
                    self.owned = sorted(owned - release)
                    for tp in release:
                        self._positions.pop(tp, None)
                    state = st2
                    continue
                st = st2
                if release or orphans or free:
                    _notify_group(self.engine, st)
            for tp in release:
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)
            kept = owned - release
            mine_now = {_tp_of(k) for k, v in st.owners.items() if v == me}
            target_now = {TopicPartition(t, p) for t, p in st.assignment.get(me, ())}
            new_owned = (kept & mine_now) | (mine_now & target_now)
            acquired = sorted(new_owned - kept)
            for tp in acquired:
                self._positions[tp] = -1
                self._committed.pop(tp, None)
            self.owned = sorted(new_owned)
            self.pending = bool(target_now - new_owned)
            self.generation_seen = state.generation
            if acquired and self.on_assign is not None:
                self.on_assign(acquired)
            if st.generation == state.generation:
                return
            state = st

    # -- offsets -----------------------------------------------------------------------------
    def _pid_of(self, txn: Any, tp: TopicPartition) -> int:
        rec = self.engine.topic(txn, tp.topic)
        if not 0 <= tp.partition < len(rec.pids):
            raise PartitionNotFoundError(
                f"{tp.topic!r} has partitions 0..{len(rec.pids) - 1}, not {tp.partition}")
        return rec.pids[tp.partition]

    def committed_in(self, txn: Any, tp: TopicPartition) -> int:
        """The group's committed offset of ``tp`` in ``txn`` (-1 if none)."""
        v = read_offset(txn, self.env.dbs, self.group, self._pid_of(txn, tp))
        return -1 if v is None else v.offset

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (``None`` if none)."""
        return self.committed_many([tp])[tp]

    def committed_many(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Committed offsets of ``tps`` read in one transaction.

        ``None`` when the group has committed nothing there, or when the
        partition does not exist (Kafka's ``committed()`` returns null for an
        unknown partition; issue 10).
        """
        out: dict[TopicPartition, int | None] = {}
        with self.env.read_txn() as txn:
            for tp in tps:
                try:
                    off = self.committed_in(txn, tp)
                except (TopicNotFoundError, PartitionNotFoundError):
                    off = -1
                out[tp] = None if off < 0 else off
        return out

    @draining
    def commit(self, offsets: Any = None) -> None:
        """Commit offsets (fenced).

        Parameters
        ----------
        offsets
            ``None``: the positions of every owned partition; a
            :class:`~mqlite.Message`: up to and including it; a mapping
            ``{TopicPartition: next_offset}``.

        Raises
        ------
        CommitFailedError
            A partition is not owned by this member (any more); nothing is
            committed.
        TypeError, ValueError
            Bad ``offsets``.
        """
        self._check_fork()
        if offsets is None:
            pos = self._positions
            todo = {tp: pos[tp] for tp in self.owned if pos.get(tp, -1) >= 0}
        elif isinstance(offsets, Message):
            todo = {TopicPartition(offsets.topic, offsets.partition): offsets.offset + 1}
        elif isinstance(offsets, dict):
            todo = {}
            for tp, off in offsets.items():
                if not isinstance(tp, tuple) or len(tp) != 2:
                    raise TypeError(f"offset keys must be TopicPartition, not {tp!r}")
                if not isinstance(off, int) or isinstance(off, bool):
                    raise TypeError(f"offset for {tp} must be int, not {type(off).__name__}")
                if not 0 <= off <= MAX_I64:
                    raise ValueError(f"offset for {tp} must be in 0..2**63-1, got {off}")
                todo[TopicPartition(*tp)] = off
        else:
            raise TypeError("commit() takes None, a Message or {TopicPartition: offset}")
        if not todo:
            return
        done = self._committed
        if all(done.get(tp) == off for tp, off in todo.items()):
            # Nothing new: write nothing (no write lock, no fsync), but keep the fence,
            # so a member that lost a partition still learns it here (issue 14).
            with self.env.read_txn() as txn:
                self.check_fence(txn, todo)
            return
        if not self._commit_by_ring(todo):
            with self.engine.write() as txn:
                self.commit_in(txn, todo)
        self._committed.update(todo)

    def _commit_by_ring(self, todo: dict[TopicPartition, int], fenced_ok: bool = False) -> bool:
        """Commit ``todo`` through the cross-process commit ring (one slot, all or nothing).

        ``True`` when committed.  ``False`` when it must be done alone: no ring,
        a partition not owned by this member (locally or in the stored state:
        the write transaction then reports or skips it exactly), or no free
        slot.  With ``fenced_ok`` (automatic commits) nothing is raised here.
        """
        comb = self.env.combiner
        if comb is None or self.member_id is None:
            return False
        held = self._held()
        for tp in todo:
            if tp not in held:
                return False
        pids = self._pids
        payload = self._ring_head() + _ring_enc.encode(
            [(tp.topic, tp.partition, off, pids.get(tp, -1)) for tp, off in todo.items()])
        res = self.engine.ring_submit(comb, [payload], follow=True)
        return res is not None and res[0][0] == RING_OK

    def _held(self) -> frozenset[TopicPartition]:
        """``self.owned`` as a set, rebuilt only when the list was replaced (``owned``
        is never changed in place: every change assigns a new list)."""
        owned = self.owned
        if self._held_of is not owned:
            self._held_set = frozenset(owned)
            self._held_of = owned
        return self._held_set

    def _ring_head(self) -> bytes:
        """The ring payload up to its offsets: the kind byte, then the msgpack array
        of :class:`_RingOffsets` without its last field (group, member id, lock), built
        once per incarnation.  ``head + encode(offsets)`` is ``encode(_RingOffsets)``."""
        key = (self.member_id, self._lock_name)
        if self._head_key != key:
            enc = _ring_enc.encode
            self._head = b"".join((bytes((RING_KIND_OFFSETS, 0x94)), enc(self.group),
                                   enc(self.member_id), enc(self._lock_name)))
            self._head_key = key
        return self._head

    def _fence(self, state: GroupState | None) -> str | None:
        """Why this member may not commit (``None`` when it may)."""
        if self.member_id is None or state is None or self.member_id not in state.members:
            return f"this member is no longer in group {self.group!r} (expired or closed)"
        if state.members[self.member_id].lock != self._lock_name:
            return (f"instance_id {self.instance_id!r} was taken over by another process "
                    f"in group {self.group!r}")
        return None

    def commit_in(self, txn: Any, todo: dict[TopicPartition, int]) -> None:
        """Write fenced offsets inside ``txn``; all or nothing.

        Raises
        ------
        CommitFailedError
            This member (incarnation) does not own one of the partitions.
        """
        self._write_offsets(txn, self.check_fence(txn, todo), todo)

    def check_fence(self, txn: Any, todo: dict[TopicPartition, int]) -> GroupState:
        """The group state in ``txn`` when this member may commit every partition of ``todo``.

        Raises
        ------
        CommitFailedError
            This member (incarnation) does not own one of the partitions.
        """
        state = load_group(txn, self.env.dbs, self.group)
        why = self._fence(state)
        if state is None or why is not None:
            raise CommitFailedError(f"{why}; poll() to rejoin")
        held = set(self.owned)
        for tp in todo:
            if tp not in held or state.owners.get(_okey(tp.topic, tp.partition)) != self.member_id:
                raise CommitFailedError(
                    f"cannot commit {tp.topic}[{tp.partition}]: this member does not own it "
                    f"(group {self.group!r}, generation {state.generation}); poll() again")
            if self._recreated(txn, tp):
                raise CommitFailedError(
                    f"cannot commit {tp.topic}[{tp.partition}]: topic {tp.topic!r} was deleted "
                    "and created again since this consumer read it, and an offset of the old "
                    "partition means nothing in the new one; poll() again (it starts the new "
                    "partition by auto_offset_reset)")
        return state

    def _recreated(self, txn: Any, tp: TopicPartition) -> bool:
        """Whether ``tp``'s id in ``txn`` is not the one the consumer's position of it
        belongs to (False when the consumer never read ``tp``: nothing to compare)."""
        want = self._pids.get(tp)
        return want is not None and self._pid_of(txn, tp) != want

    def _commit_owned(self, txn: Any, state: GroupState | None,
                      todo: dict[TopicPartition, int]) -> set[TopicPartition]:
        """Commit the owned part of ``todo`` in ``txn``; return the fenced partitions."""
        if not todo:
            return set()
        if state is None or self._fence(state) is not None:
            return set(todo)
        # A partition deleted since it was assigned has nothing left to commit to:
        # skip it, so that poll(), a rebalance and close() (leaving the group) do
        # not fail on it (API fuzz, issue 10).  An explicit commit() still raises.
        # Nor does one deleted and created again since the consumer read it: an offset of
        # the old partition is dropped, never written onto the new one (D91).
        gone = {tp for tp in todo if not self._exists(txn, tp) or self._recreated(txn, tp)}
        ok = {tp: off for tp, off in todo.items()
              if tp not in gone
              and state.owners.get(_okey(tp.topic, tp.partition)) == self.member_id}
        self._write_offsets(txn, state, ok)
        self._committed.update(ok)
        return set(todo) - set(ok) - gone

    def _exists(self, txn: Any, tp: TopicPartition) -> bool:
        try:
            self._pid_of(txn, tp)
        except (TopicNotFoundError, PartitionNotFoundError):
            return False
        return True

    def _write_offsets(self, txn: Any, state: GroupState, todo: dict[TopicPartition, int]) -> None:
        now = _now_ms()
        me = self.member_id or ""
        for tp, off in todo.items():
            write_offset(txn, self.env.dbs, self.group, self._pid_of(txn, tp),
                         OffsetValue(off, me, state.generation, now))


# -- offset commits through the commit ring (docs/decisions.md D27) -----------------------------

#: Commit-ring slot kind of a fenced offset commit (see mqlite._engine.on_ring_kind).
RING_KIND_OFFSETS = 1


class _RingOffsets(msgspec.Struct, array_like=True):
    group: str
    member_id: str
    lock: str
    #: (topic, partition, offset, partition id the offset was read from; -1: unknown)
    offsets: list[tuple[str, int, int, int]]


_ring_enc = msgspec.msgpack.Encoder()
_ring_dec = msgspec.msgpack.Decoder(_RingOffsets)


def _apply_ring_offsets(engine: Engine, txn: Any, payload: bytes) -> tuple[int, int, int, int]:
    """Inside the committer's transaction: the fenced commit of one member, all or nothing.

    The same checks as :meth:`GroupMember.check_fence` on the stored state (this
    incarnation's lock, ownership of every partition, the partition exists and has the
    id the offset was read from, D91);
    anything else is ``RING_RETRY`` with nothing written, and the member then
    commits alone, which raises or skips exactly as without the ring.
    """
    try:
        op = _ring_dec.decode(payload[1:])
    except msgspec.DecodeError:
        return (RING_RETRY, 0, 0, 0)
    dbs = engine.env.dbs
    state = load_group_shared(txn, dbs, op.group)  # read only
    if state is None:
        return (RING_RETRY, 0, 0, 0)
    m = state.members.get(op.member_id)
    if m is None or m.lock != op.lock:
        return (RING_RETRY, 0, 0, 0)
    pids = []
    for topic, part, _off, want in op.offsets:
        if state.owners.get(_okey(topic, part)) != op.member_id:
            return (RING_RETRY, 0, 0, 0)
        try:
            rec = engine.topic(txn, topic)
        except TopicNotFoundError:
            return (RING_RETRY, 0, 0, 0)
        if not 0 <= part < len(rec.pids) or want not in (-1, rec.pids[part]):
            return (RING_RETRY, 0, 0, 0)  # a re-created partition: the member raises or drops
        pids.append(rec.pids[part])
    now = _now_ms()
    for pid, (_t, _p, off, _w) in zip(pids, op.offsets):
        write_offset(txn, dbs, op.group, pid,
                     OffsetValue(off, op.member_id, state.generation, now))
    return (RING_OK, 0, 0, 0)


on_ring_kind(RING_KIND_OFFSETS, _apply_ring_offsets)
# The committer applies these slots in compiled code (RingApply.take, D73), with the
# same fencing and writes; _apply_ring_offsets stays the reference and the fallback
# for any payload or check the compiled path does not take.
register_ring_offsets(RING_KIND_OFFSETS, load_group_shared)
