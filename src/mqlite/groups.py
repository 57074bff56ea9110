"""Consumer groups without a coordinator.

Group state lives in the ``groups`` database (one msgpack value per group)
and changes only inside write transactions:

* ``members``: id, pid, subscription, lock-file name, instance id;
* ``generation``: bumped by every join, leave or expiry;
* ``assignment``: the target computed by the group's assignor in the same
  transaction that changed the membership (deterministic, so any member
  could recompute it);
* ``owners``: who *actually* owns each partition now.  A member takes a
  partition only when it is free (no owner, or the owner left or died), and
  releases it — after committing per its policy — when the assignment moves
  it away.  A partition is therefore never owned by two members at once,
  and with ``cooperative-sticky`` only moved partitions change hands.

Liveness comes from the kernel: each member holds an exclusive ``flock`` on
its own file under ``members/``; the kernel drops it when the process dies,
so a crashed member is noticed by the other members' watcher threads within
milliseconds.  A hung but alive member stops refreshing its file's mtime
(heartbeat) and is expired after ``session_timeout``.  Offset commits are
fenced by ownership: committing a partition this member does not own raises
:class:`CommitFailedError`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite._storage import log as _log
from mqlite._storage.keys import group_pid_key
from mqlite.assignors import ASSIGNORS, EAGER, assign
from mqlite.config import require_positive_number, validate_group_name
from mqlite.errors import CommitFailedError, GroupError, MqliteError
from mqlite.types import TopicPartition

if TYPE_CHECKING:
    from mqlite.broker import Broker
    from mqlite.consumer import Consumer

__all__ = ["GroupMember", "MemberInfo", "GroupDescription", "describe_group", "list_groups"]

_WATCH_INTERVAL = 0.02


class MemberState(msgspec.Struct):
    member_id: str
    pid: int
    topics: list[str]
    lock: str
    session_timeout_ms: int
    joined_ms: int
    instance_id: str | None = None
    departed_ms: int = 0


class GroupState(msgspec.Struct):
    generation: int = 0
    assignor: str = "range"
    members: dict[str, MemberState] = {}
    assignment: dict[str, list[tuple[str, int]]] = {}
    owners: dict[str, str] = {}


class OffsetValue(msgspec.Struct, array_like=True):
    offset: int
    member_id: str
    generation: int
    timestamp_ms: int
    metadata: str = ""


_enc = msgspec.msgpack.Encoder()
_dec_state = msgspec.msgpack.Decoder(GroupState)
_dec_offset = msgspec.msgpack.Decoder(OffsetValue)


def _okey(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def load_group(txn: Any, dbs: dict[str, Any], group: str) -> GroupState | None:
    raw = txn.get(group.encode(), db=dbs["groups"])
    if raw is None:
        return None
    try:
        return _dec_state.decode(raw)
    except msgspec.DecodeError as exc:
        raise GroupError(f"state of group {group!r} is unreadable: {exc}") from None


def store_group(txn: Any, dbs: dict[str, Any], group: str, state: GroupState) -> None:
    if state.members:
        txn.put(group.encode(), _enc.encode(state), db=dbs["groups"])
    else:
        txn.delete(group.encode(), db=dbs["groups"])


def read_offset(txn: Any, dbs: dict[str, Any], group: str, pid: int) -> OffsetValue | None:
    raw = txn.get(group_pid_key(group, pid), db=dbs["offsets"])
    return None if raw is None else _dec_offset.decode(raw)


def write_offset(txn: Any, dbs: dict[str, Any], group: str, pid: int, value: OffsetValue) -> None:
    txn.put(group_pid_key(group, pid), _enc.encode(value), db=dbs["offsets"])


# -- liveness --------------------------------------------------------------------------------

def members_dir(broker_path: str) -> str:
    return os.path.join(broker_path, "members")


def _ensure_members_dir(broker_path: str, mode: int) -> str:
    d = members_dir(broker_path)
    try:
        os.mkdir(d, mode)
    except FileExistsError:
        pass
    if os.path.islink(d):
        raise GroupError(f"{d} is a symlink; refusing to use it")
    return d


def probe_alive(path: str) -> bool:
    """True while some process holds the member's lock file (it is alive)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (the heartbeat still expires it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _heartbeat_age_ms(path: str, now_ms: int) -> int:
    try:
        return now_ms - int(os.stat(path).st_mtime * 1000)
    except FileNotFoundError:
        return 1 << 62


def member_status(broker_path: str, m: MemberState, now_ms: int) -> str:
    """``"alive"``, ``"dead"`` (lock free) or ``"expired"`` (heartbeat too old)."""
    path = os.path.join(members_dir(broker_path), m.lock)
    if not probe_alive(path):
        return "dead"
    if _heartbeat_age_ms(path, now_ms) > m.session_timeout_ms:
        return "expired"
    return "alive"


def _partition_counts(broker: Broker, txn: Any, topics: Iterable[str]) -> dict[str, int]:
    out = {}
    for t in topics:
        rec = _log.get_topic(txn, broker._env.dbs, t)
        if rec is not None:
            out[t] = len(rec.pids)
    return out


def rebalance(broker: Broker, txn: Any, state: GroupState) -> None:
    """Recompute the target assignment and bump the generation (in ``txn``)."""
    subs = {mid: m.topics for mid, m in state.members.items()}
    topics = sorted({t for m in state.members.values() for t in m.topics})
    counts = _partition_counts(broker, txn, topics)
    previous = {mid: [tuple(tp) for tp in tps] for mid, tps in state.assignment.items()}
    result = assign(state.assignor, subs, counts, previous)
    state.assignment = {mid: [(t, p) for t, p in tps] for mid, tps in result.items()}
    # Owners that left the group no longer own anything.
    state.owners = {k: v for k, v in state.owners.items() if v in state.members}
    state.generation += 1


def remove_member(broker: Broker, txn: Any, state: GroupState, member_id: str) -> None:
    m = state.members.pop(member_id, None)
    if m is None:
        return
    state.assignment.pop(member_id, None)
    state.owners = {k: v for k, v in state.owners.items() if v != member_id}
    if state.members:
        rebalance(broker, txn, state)
    else:
        state.generation += 1
        state.assignment = {}


def reap(broker: Broker, group: str, *, exclude: str | None = None) -> bool:
    """Remove dead or expired members of ``group``; True when the group changed.

    Static members (``instance_id``) whose process died keep their
    partitions for ``session_timeout`` before they are removed.
    """
    env = broker._env
    now = _now_ms()
    with env.read_txn() as txn:
        state = load_group(txn, env.dbs, group)
    if state is None:
        return False
    verdicts = {}
    for mid, m in state.members.items():
        if mid == exclude:
            continue
        st = member_status(env.path, m, now)
        if st != "alive":
            verdicts[mid] = st
        elif m.departed_ms:
            verdicts[mid] = "returned"
    if not verdicts:
        return False
    changed = False
    with broker._write() as txn:
        state = load_group(txn, env.dbs, group)
        if state is None:
            return False
        for mid, verdict in verdicts.items():
            m = state.members.get(mid)
            if m is None:
                continue
            if m.instance_id is not None and verdict == "dead":
                if not m.departed_ms:
                    m.departed_ms = now
                    changed = True
                    continue
                if now - m.departed_ms < m.session_timeout_ms:
                    continue
            elif verdict == "returned":
                continue
            remove_member(broker, txn, state, mid)
            _unlink_quiet(os.path.join(members_dir(env.path), m.lock))
            changed = True
        if changed:
            store_group(txn, env.dbs, group, state)
    if changed:
        _notify_group(broker, state)
    return changed


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _notify_group(broker: Broker, state: GroupState | None) -> None:
    topics = set()
    if state is not None:
        for m in state.members.values():
            topics.update(m.topics)
    broker._env.notify_topics(topics)


# -- the member --------------------------------------------------------------------------

class GroupMember:
    """Group membership of one :class:`~mqlite.Consumer` (internal).

    Parameters (forwarded from ``broker.consumer(..., group=...)``)
    ----------
    instance_id
        Static membership: a member restarting with the same id within
        ``session_timeout`` gets its partitions back without a rebalance.
    assignor
        ``"range"`` (default), ``"roundrobin"`` or ``"cooperative-sticky"``.
    session_timeout
        Seconds without a heartbeat after which a live but hung member is
        expired (default 10).  A crashed member is detected at once.
    max_poll_interval
        Seconds between polls after which this member stops heartbeating and
        lets itself expire (default 300), as Kafka's ``max.poll.interval.ms``.
    on_assign, on_revoke
        Called with a list of :class:`TopicPartition` when partitions are
        taken / released (before releasing, after committing).
    """

    def __init__(self, consumer: Consumer, group: str, *, instance_id: str | None = None,
                 assignor: str = "range", session_timeout: float = 10.0,
                 max_poll_interval: float = 300.0,
                 on_assign: Callable[[list[TopicPartition]], Any] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], Any] | None = None) -> None:
        validate_group_name(group)
        if assignor not in ASSIGNORS:
            raise ValueError(f"assignor must be one of {sorted(ASSIGNORS)}, got {assignor!r}")
        require_positive_number(session_timeout, "session_timeout", allow_zero=False)
        require_positive_number(max_poll_interval, "max_poll_interval", allow_zero=False)
        if instance_id is not None:
            if not isinstance(instance_id, str) or not instance_id or len(instance_id) > 200:
                raise ValueError("instance_id must be a non-empty str of at most 200 characters")
        for cb, name in ((on_assign, "on_assign"), (on_revoke, "on_revoke")):
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable")
        self.consumer = consumer
        self.broker = consumer._broker
        self.env = self.broker._env
        self.group = group
        self.instance_id = instance_id
        self.assignor = assignor
        self.session_timeout_ms = int(session_timeout * 1000)
        self.max_poll_interval = max_poll_interval
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.member_id: str | None = None
        self.topics: list[str] = []
        self.owned: list[TopicPartition] = []
        self.generation_seen = -1
        self.pending = False
        self._lock_fd = -1
        self._lock_name = ""
        self._last_poll = time.monotonic()
        self._committed: dict[TopicPartition, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- join / leave ------------------------------------------------------------------
    def _gkey(self) -> str:
        return hashlib.sha1(self.group.encode()).hexdigest()[:12]

    def _take_lock(self, member_id: str) -> None:
        d = _ensure_members_dir(self.env.path, 0o770 if self.env.shared_group else 0o700)
        tag = hashlib.sha1(member_id.encode()).hexdigest()[:16]
        name = f"{self._gkey()}-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        path = os.path.join(d, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.env.file_mode)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        self._lock_name = name
        _live_members.add(self)

    def _drop_lock(self) -> None:
        if self._lock_fd >= 0:
            if os.getpid() == self._pid:
                _unlink_quiet(os.path.join(members_dir(self.env.path), self._lock_name))
            os.close(self._lock_fd)
            self._lock_fd = -1

    def subscribe(self, topics: list[str]) -> None:
        """Join the group (or change this member's subscription)."""
        self.topics = list(topics)
        if self.member_id is None:
            self._join()
        else:
            with self.broker._write() as txn:
                state = load_group(txn, self.env.dbs, self.group)
                if state is None or self.member_id not in state.members:
                    raise GroupError("this member was removed from the group; poll() rejoins")
                state.members[self.member_id].topics = list(topics)
                rebalance(self.broker, txn, state)
                store_group(txn, self.env.dbs, self.group, state)
            _notify_group(self.broker, state)
        self._start_watcher()

    def _join(self) -> None:
        member_id = (f"static-{self.instance_id}" if self.instance_id is not None
                     else f"m-{uuid.uuid4().hex}")
        self._take_lock(member_id)
        try:
            now = _now_ms()
            with self.broker._write() as txn:
                state = load_group(txn, self.env.dbs, self.group) or GroupState(
                    assignor=self.assignor)
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
                if old is not None:
                    if not old.departed_ms and member_status(self.env.path, old, now) == "alive":
                        raise GroupError(
                            f"instance_id {self.instance_id!r} is in use by live pid {old.pid} "
                            f"in group {self.group!r}")
                    _unlink_quiet(os.path.join(members_dir(self.env.path), old.lock))
                    same = sorted(old.topics) == sorted(self.topics)
                    state.members[member_id] = me
                    if not same:
                        rebalance(self.broker, txn, state)
                else:
                    state.members[member_id] = me
                    rebalance(self.broker, txn, state)
                store_group(txn, self.env.dbs, self.group, state)
        except BaseException:
            self._drop_lock()
            raise
        self.member_id = member_id
        self.generation_seen = -1
        self.owned = []
        self.pending = True
        _notify_group(self.broker, state)

    def _leave(self) -> None:
        if self.member_id is None:
            return
        try:
            with self.broker._write() as txn:
                state = load_group(txn, self.env.dbs, self.group)
                if state is not None and self.member_id in state.members:
                    if self.instance_id is not None:
                        # Static members keep their slot for session_timeout.
                        state.members[self.member_id].departed_ms = _now_ms()
                        state.owners = {k: v for k, v in state.owners.items()
                                        if v != self.member_id}
                    else:
                        remove_member(self.broker, txn, state, self.member_id)
                    store_group(txn, self.env.dbs, self.group, state)
            _notify_group(self.broker, state)
        finally:
            self.member_id = None
            self.owned = []
            self._drop_lock()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if os.getpid() != self._pid:
            return  # a forked child never leaves on its parent's behalf
        try:
            if self.consumer._commit_policy != "manual" and self.owned:
                self._auto_commit()
            if self.owned and self.on_revoke is not None:
                self.on_revoke(list(self.owned))
        finally:
            self._leave()

    # -- watcher thread ----------------------------------------------------------------
    def _start_watcher(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name=f"mqlite-group-{self.group}")
            self._thread.start()

    def _watch(self) -> None:
        beat_every = max(0.05, self.session_timeout_ms / 3000.0)
        last_beat = 0.0
        while not self._stop.wait(_WATCH_INTERVAL):
            if os.getpid() != self._pid or self.consumer._broker.closed:
                return
            try:
                t = time.monotonic()
                if t - last_beat >= beat_every and t - self._last_poll < self.max_poll_interval:
                    self._heartbeat()
                    last_beat = t
                reap(self.broker, self.group, exclude=self.member_id)
            except MqliteError:
                continue
            except OSError:
                continue

    def _heartbeat(self) -> None:
        if self._lock_fd >= 0:
            try:
                os.utime(self._lock_fd)
            except OSError:
                pass

    # -- assignment sync -------------------------------------------------------------------
    def assignment(self) -> list[TopicPartition]:
        return list(self.owned)

    def wait_budget(self) -> float:
        """How long poll may block: short while partitions are still being handed over."""
        return 0.005 if self.pending else 3600.0

    def before_fetch(self) -> None:
        self._last_poll = time.monotonic()
        if self.member_id is None:
            self._join()
            self._start_watcher()
        if self.consumer._commit_policy == "after":
            self._auto_commit()
        with self.env.read_txn() as txn:
            state = load_group(txn, self.env.dbs, self.group)
        if (state is not None and state.generation == self.generation_seen
                and not self.pending and self.member_id in state.members):
            return
        self._sync(state)

    def after_fetch(self, msgs: list[Any]) -> None:
        if self.consumer._commit_policy == "before":
            self._auto_commit()

    def _sync(self, state: GroupState | None) -> None:
        if state is None or self.member_id not in state.members:
            # Removed (expired or the group was deleted): drop everything, rejoin.
            if self.owned and self.on_revoke is not None:
                self.on_revoke(list(self.owned))
            for tp in self.owned:
                self.consumer._positions.pop(tp, None)
            self.owned = []
            self._drop_lock()
            self.member_id = None
            self._join()
            with self.env.read_txn() as txn:
                state = load_group(txn, self.env.dbs, self.group)
            if state is None:
                return
        me = self.member_id
        target = {TopicPartition(t, p) for t, p in state.assignment.get(me, [])}
        owned = set(self.owned)
        release = owned - target
        if (state.assignor in EAGER and state.generation != self.generation_seen and owned
                and self.generation_seen >= 0):
            release = set(owned)
        if release:
            rel = sorted(release)
            if self.consumer._commit_policy != "manual":
                self._auto_commit(only=rel)
            if self.on_revoke is not None:
                self.on_revoke(rel)
            with self.broker._write() as txn:
                st2 = load_group(txn, self.env.dbs, self.group)
                if st2 is not None:
                    for tp in rel:
                        k = _okey(tp.topic, tp.partition)
                        if st2.owners.get(k) == me:
                            del st2.owners[k]
                    store_group(txn, self.env.dbs, self.group, st2)
            for tp in rel:
                self.consumer._positions.pop(tp, None)
                self._committed.pop(tp, None)
            owned -= release
            _notify_group(self.broker, st2)
        acquired: list[TopicPartition] = []
        want = target - owned
        if want:
            with self.broker._write() as txn:
                st3 = load_group(txn, self.env.dbs, self.group)
                if st3 is not None and me in st3.members:
                    for tp in sorted(want):
                        k = _okey(tp.topic, tp.partition)
                        holder = st3.owners.get(k)
                        if holder is None or holder == me or holder not in st3.members:
                            st3.owners[k] = me
                            acquired.append(tp)
                    if acquired:
                        store_group(txn, self.env.dbs, self.group, st3)
            for tp in acquired:
                self.consumer._positions[tp] = -1
            owned |= set(acquired)
        self.owned = sorted(owned)
        self.pending = bool(target - owned)
        self.generation_seen = state.generation
        if acquired and self.on_assign is not None:
            self.on_assign(sorted(acquired))

    # -- offsets ---------------------------------------------------------------------------
    def committed_in(self, txn: Any, tp: TopicPartition) -> int:
        rec = self.broker._topic(txn, tp.topic)
        v = read_offset(txn, self.env.dbs, self.group, rec.pids[tp.partition])
        return -1 if v is None else v.offset

    def committed(self, tp: TopicPartition) -> int | None:
        with self.env.read_txn() as txn:
            off = self.committed_in(txn, tp)
        return None if off < 0 else off

    def _auto_commit(self, only: list[TopicPartition] | None = None) -> None:
        pos = self.consumer._positions
        todo = {tp: pos[tp] for tp in (only if only is not None else self.owned)
                if pos.get(tp, -1) >= 0 and self._committed.get(tp) != pos[tp]}
        if not todo:
            return
        try:
            self._commit_offsets(todo)
        except CommitFailedError:
            pass  # the partition moved: its new owner redelivers (at-least-once)

    def commit(self, offsets: Any = None) -> None:
        from mqlite._core import Message

        if offsets is None:
            pos = self.consumer._positions
            todo = {tp: pos[tp] for tp in self.owned if pos.get(tp, -1) >= 0}
        elif isinstance(offsets, Message):
            todo = {TopicPartition(offsets.topic, offsets.partition): offsets.offset + 1}
        elif isinstance(offsets, dict):
            todo = {}
            for tp, off in offsets.items():
                if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                    raise ValueError(f"offset for {tp} must be an int >= 0, got {off!r}")
                todo[TopicPartition(*tp)] = off
        else:
            raise TypeError("commit() takes None, a Message or {TopicPartition: offset}")
        if todo:
            self._commit_offsets(todo)

    def _commit_offsets(self, todo: dict[TopicPartition, int], txn: Any = None) -> None:
        if txn is None:
            with self.broker._write() as txn:
                self.commit_in(txn, todo)
        else:
            self.commit_in(txn, todo)
        self._committed.update(todo)

    def commit_in(self, txn: Any, todo: dict[TopicPartition, int]) -> None:
        """Write fenced offsets inside ``txn`` (raises CommitFailedError)."""
        state = load_group(txn, self.env.dbs, self.group)
        me = self.member_id
        if state is None or me is None or me not in state.members:
            raise CommitFailedError(
                f"member is no longer in group {self.group!r}; poll() to rejoin")
        now = _now_ms()
        for tp, off in todo.items():
            if state.owners.get(_okey(tp.topic, tp.partition)) != me:
                raise CommitFailedError(
                    f"cannot commit {tp.topic}[{tp.partition}]: this member no longer owns it "
                    f"(group {self.group!r} generation {state.generation}); poll() again")
            rec = self.broker._topic(txn, tp.topic)
            write_offset(txn, self.env.dbs, self.group, rec.pids[tp.partition],
                         OffsetValue(off, me, state.generation, now))


# -- inspection ------------------------------------------------------------------------------

class MemberInfo(msgspec.Struct, frozen=True):
    member_id: str
    pid: int
    instance_id: str | None
    topics: list[str]
    assigned: list[TopicPartition]
    owned: list[TopicPartition]
    last_heartbeat_ms: int | None
    status: str


class PartitionLag(msgspec.Struct, frozen=True):
    partition: TopicPartition
    committed: int | None
    end_offset: int
    lag: int
    owner: str | None


class GroupDescription(msgspec.Struct, frozen=True):
    group: str
    generation: int
    assignor: str
    members: list[MemberInfo]
    partitions: list[PartitionLag]


def list_groups(broker: Broker) -> list[str]:
    with broker._env.read_txn() as txn:
        cur = txn.cursor(db=broker._env.dbs["groups"])
        return [bytes(k).decode() for k in cur.iternext(keys=True, values=False)]


def describe_group(broker: Broker, group: str) -> GroupDescription:
    """Members, generation, committed offsets and lag of a consumer group."""
    validate_group_name(group)
    env = broker._env
    now = _now_ms()
    with env.read_txn() as txn:
        state = load_group(txn, env.dbs, group) or GroupState()
        members = []
        for mid, m in sorted(state.members.items()):
            path = os.path.join(members_dir(env.path), m.lock)
            try:
                hb: int | None = int(os.stat(path).st_mtime * 1000)
            except FileNotFoundError:
                hb = None
            owned = sorted(TopicPartition(*k.rsplit(":", 1)[:1], int(k.rsplit(":", 1)[1]))
                           for k, v in state.owners.items() if v == mid)
            members.append(MemberInfo(
                member_id=mid, pid=m.pid, instance_id=m.instance_id, topics=list(m.topics),
                assigned=[TopicPartition(t, p) for t, p in state.assignment.get(mid, [])],
                owned=owned, last_heartbeat_ms=hb,
                status="departed" if m.departed_ms else member_status(env.path, m, now)))
        topics = sorted({t for m in state.members.values() for t in m.topics})
        parts = []
        for t in topics:
            rec = _log.get_topic(txn, env.dbs, t)
            if rec is None:
                continue
            for i, pid in enumerate(rec.pids):
                st = _log.load_state(txn, env.dbs, pid)
                v = read_offset(txn, env.dbs, group, pid)
                committed = None if v is None else v.offset
                base = st.start if committed is None else max(committed, st.start)
                parts.append(PartitionLag(
                    partition=TopicPartition(t, i), committed=committed, end_offset=st.next,
                    lag=st.next - base, owner=state.owners.get(_okey(t, i))))
    return GroupDescription(group=group, generation=state.generation, assignor=state.assignor,
                            members=members, partitions=parts)


def _drop_topic_offsets(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: remove committed offsets of the topic's partitions."""
    pids = {pid.to_bytes(4, "big") for pid in rec.pids}
    cur = txn.cursor(db=dbs["offsets"])
    doomed = [bytes(k) for k in cur.iternext(keys=True, values=False) if bytes(k)[-4:] in pids]
    for k in doomed:
        txn.delete(k, db=dbs["offsets"])


def _register_hooks() -> None:
    from mqlite import broker as _broker

    if _drop_topic_offsets not in _broker._TOPIC_DELETE_HOOKS:
        _broker._TOPIC_DELETE_HOOKS.append(_drop_topic_offsets)


_register_hooks()


_live_members: weakref.WeakSet[GroupMember] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The kernel lock is shared with the parent through the inherited file
    # description; the child must not keep a dead parent "alive" by holding it.
    for m in list(_live_members):
        if m._lock_fd >= 0:
            try:
                os.close(m._lock_fd)
            except OSError:
                pass
            m._lock_fd = -1


os.register_at_fork(after_in_child=_after_fork_in_child)
