"""Stored group state: its codec, and the transitions on it.

Contract
--------
Group state lives in the ``groups`` database (one msgpack value per group,
:class:`GroupState`) and changes only inside write transactions:

* ``members``: id, pid, subscription, lock-file name (which also names the
  member's *incarnation*), instance id, ``departed_ms`` for a static member
  whose process is gone but whose slot is kept;
* ``generation``: bumped by every join, leave, expiry or subscription change;
* ``assignment``: the target computed by the group's assignor in the same
  transaction that changed the membership (deterministic, so any member
  could recompute it);
* ``owners``: who *actually* owns each partition now;
* ``dead_letter_topics``: subscribed topic -> the dead-letter topic its
  failures go to, as the App's stream subscribers declare it
  (``Broker.set_group_dead_letter_topic``, D87).  Informational: nothing in
  the engine reads it to route messages; membership transitions carry it
  over untouched.  Added after the first release with a default, so records
  written before it decode (as ``{}``) and code written before it ignores it
  (msgspec skips unknown fields) -- but such code, rewriting the record on a
  join or leave, drops it until the next subscriber start records it again.

Ownership handover.  A partition changes owner only inside a write
transaction, and only when it is free: it never had an owner, or its owner
released it, or its owner was removed from the group (left, died, expired).
Every transaction that frees partitions or changes the membership also
*grants* each free partition to the member whose target contains it
(:func:`grant_free`), so a handover costs one transaction, written by the
member that releases (or by the member that reaps a dead one); the new owner
learns of it at its next ``poll()`` (woken through the topics' wake-up words)
and only reads.

Every function here works on a decoded :class:`GroupState` inside the
caller's transaction (``txn``): no commits, no files, no threads, no
wake-ups.  :func:`rebalance` reads the topics' partition counts in ``txn``;
the rest are pure.  Offsets of a deleted topic are dropped with it (a
delete-topic hook registered at import).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite._engine import on_topic_delete
from mqlite._storage import groups as _groups
from mqlite._storage import log as _log
from mqlite._storage import offsets as _offsets
from mqlite.assignors import assign
from mqlite.errors import GroupError
from mqlite.types import TopicPartition

if TYPE_CHECKING:
    from mqlite._engine import Engine

#: member id -> (lock name probed, verdict: "dead", "expired" or "departed")
Verdicts = dict[str, tuple[str, str]]


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
    dead_letter_topics: dict[str, str] = {}


_enc = msgspec.msgpack.Encoder()
_dec_state = msgspec.msgpack.Decoder(GroupState)


def _okey(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _tp_of(key: str) -> TopicPartition:
    topic, _, part = key.rpartition(":")
    return TopicPartition(topic, int(part))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- stored state ----------------------------------------------------------------------------

def _raw_group(txn: Any, dbs: dict[str, Any], group: str) -> bytes | None:
    return _groups.get(txn, dbs, group)


def _decode_group(group: str, raw: bytes | None) -> GroupState | None:
    if raw is None:
        return None
    try:
        return _dec_state.decode(raw)
    except msgspec.DecodeError as exc:
        raise GroupError(f"state of group {group!r} is unreadable: {exc}") from None


def load_group(txn: Any, dbs: dict[str, Any], group: str) -> GroupState | None:
    """The stored state of ``group`` (``None`` if it never had members)."""
    return _decode_group(group, _raw_group(txn, dbs, group))


#: group -> (stored bytes, their decoded state), for load_group_shared (at most 256 groups)
_shared: dict[str, tuple[bytes, GroupState]] = {}
_SHARED_MAX = 256


def load_group_shared(txn: Any, dbs: dict[str, Any], group: str) -> GroupState | None:
    """As :func:`load_group`, for callers that only read the state: **never modify it**.

    The state is decoded again only when its stored bytes changed since the last
    call for ``group`` (a membership change); otherwise the same instance is
    returned.  The commit ring's committer fences every member's offset commit
    against the group state (D62): decoding it per commit cost ~30,000 instructions.
    """
    raw = _raw_group(txn, dbs, group)
    if raw is None:
        return None
    hit = _shared.get(group)
    if hit is not None and hit[0] == raw:
        return hit[1]
    state = _decode_group(group, raw)
    if state is not None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[group] = (raw, state)
    return state


def store_group(txn: Any, dbs: dict[str, Any], group: str, state: GroupState) -> None:
    """Write ``state``.  An empty group keeps its record so the generation never goes back."""
    _groups.put(txn, dbs, group, _enc.encode(state))


read_offset = _offsets.read
write_offset = _offsets.write


def _partition_counts(txn: Any, dbs: dict[str, Any], topics: Iterable[str]) -> dict[str, int]:
    out = {}
    for t in topics:
        rec = _log.get_topic(txn, dbs, t)
        if rec is not None:
            out[t] = len(rec.pids)
    return out


# -- state transitions (all inside one write transaction) --------------------------------------

def rebalance(engine: Engine, txn: Any, state: GroupState) -> None:
    """Recompute the target assignment, bump the generation and grant free partitions."""
    subs = {mid: m.topics for mid, m in state.members.items()}
    topics = sorted({t for m in state.members.values() for t in m.topics})
    counts = _partition_counts(txn, engine.env.dbs, topics)
    # Kafka's member order: static members (by instance id) before dynamic ones
    result = assign(state.assignor, subs, counts, state.assignment,
                    instance_ids={mid: m.instance_id for mid, m in state.members.items()})
    state.assignment = {mid: [(t, p) for t, p in tps] for mid, tps in result.items()}
    state.owners = {k: v for k, v in state.owners.items() if v in state.members}
    state.generation += 1
    grant_free(state)


def grant_free(state: GroupState) -> bool:
    """Give every free partition to the (present) member whose target contains it.

    A partition is free when nobody owns it or its owner is no longer a
    member.  Departed static members get nothing: they are not running.
    Returns True when ``owners`` changed.
    """
    changed = False
    for mid in sorted(state.members):
        if state.members[mid].departed_ms:
            continue
        for t, p in state.assignment.get(mid, ()):
            k = _okey(t, p)
            holder = state.owners.get(k)
            if holder is None or holder not in state.members:
                state.owners[k] = mid
                changed = True
    return changed


def _release_all(state: GroupState, member_id: str) -> None:
    state.owners = {k: v for k, v in state.owners.items() if v != member_id}


def remove_member(engine: Engine, txn: Any, state: GroupState, member_id: str) -> None:
    """Remove ``member_id`` (its partitions become free) and rebalance."""
    if state.members.pop(member_id, None) is None:
        return
    state.assignment.pop(member_id, None)
    _release_all(state, member_id)
    if state.members:
        rebalance(engine, txn, state)
    else:
        state.generation += 1
        state.assignment = {}
        state.owners = {}


def apply_verdicts_to_state(engine: Engine, txn: Any, state: GroupState, verdicts: Verdicts,
                            now_ms: int) -> tuple[bool, list[str]]:
    """The state part of reaping: act on ``verdicts`` in ``state`` (inside ``txn``).

    Each verdict applies only if the member still has the lock file that was
    probed: a static member that restarted in between (same member id, new
    lock) is left alone.  A dead static member is marked departed (its
    partitions are freed but stay assigned to it); a departed one is removed
    once its ``session_timeout`` has passed; everything else is removed.
    Returns (state changed, lock files of the removed members).
    """
    changed = membership = False
    gone: list[str] = []
    for mid, (lock, verdict) in sorted(verdicts.items()):
        m = state.members.get(mid)
        if m is None or m.lock != lock:
            continue
        if verdict == "dead" and m.instance_id is not None and not m.departed_ms:
            m.departed_ms = now_ms
            _release_all(state, mid)
            grant_free(state)
            changed = True
            continue
        if verdict == "departed" and now_ms - m.departed_ms < m.session_timeout_ms:
            continue
        state.members.pop(mid)
        state.assignment.pop(mid, None)
        _release_all(state, mid)
        gone.append(lock)
        changed = membership = True
    if membership:
        if state.members:
            rebalance(engine, txn, state)
        else:
            state.generation += 1
            state.assignment = {}
            state.owners = {}
    return changed, gone


def _drop_topic_offsets(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: remove committed offsets of the topic's partitions."""
    _offsets.drop_partitions(txn, dbs, rec.pids)


def _register_hooks() -> None:
    on_topic_delete(_drop_topic_offsets)


_register_hooks()
