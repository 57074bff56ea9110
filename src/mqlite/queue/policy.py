"""A queue group's record and its retry / dead-letter policy.

Owns :class:`QueuePolicy` and :class:`QueueMeta` (the group record stored by
``_storage.queues``: live consumers, a lower bound of the earliest
``visible_at`` of the group's pending entries, the policy), their msgpack codec,
and the rules that validate and merge policies: the group's first consumer
sets it, later ones adopt it or fail with :class:`QueueConfigConflictError`,
:func:`set_queue_policy` changes it.

Callers: ``Broker.queue_policy`` / ``Broker.set_queue_policy`` (the public
functions) and the other modules of this package (record load/store).
Changes: the ``groups`` record of one queue group, in the caller's transaction
or in one write transaction of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from mqlite._storage import queues as _queues
from mqlite.config import (
    UNSET,
    require_int,
    require_seconds,
    validate_group_name,
    validate_topic_name,
)
from mqlite.config import Unset as _Unset

#: Largest ``max_deliveries``: a delivery count is stored as a u32.
MAX_DELIVERIES = (1 << 32) - 1
from mqlite.errors import QueueConfigConflictError
from mqlite.retry import Backoff, resolve_backoff

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["FOREVER", "QueueMeta", "QueuePolicy", "given_policy", "load_meta", "merge_policy",
           "queue_policy", "seconds_ms", "set_queue_policy", "store_meta"]

FOREVER = (1 << 63) - 1


def seconds_ms(value: float, name: str, *, allow_zero: bool, maximum: float) -> int:
    require_seconds(value, name, maximum=maximum, allow_zero=allow_zero)
    return int(value * 1000)


class QueuePolicy(msgspec.Struct, frozen=True):
    """A queue group's retry and dead-letter policy, stored with the group.

    Attributes
    ----------
    max_deliveries
        A message delivered this many times that is nacked or times out again
        is dead-lettered; ``None`` = retry forever.
    dead_letter_topic
        Where dead letters go; ``None`` = they are dropped.
    retry_backoff
        Delay before a nacked message is visible again; ``None`` = at once.
    """

    max_deliveries: int | None = None
    dead_letter_topic: str | None = None
    retry_backoff: Backoff | None = None


class QueueMeta(msgspec.Struct):
    topic: str
    consumers: dict[str, str] = {}  # owner id -> lock file name
    min_visible_ms: int = FOREVER  # <= the visible_at of every pending entry
    # None only in groups written before policies were stored: the next consumer sets it
    policy: QueuePolicy | None = None


_enc = msgspec.msgpack.Encoder()
_dec_meta = msgspec.msgpack.Decoder(QueueMeta)


def load_meta(txn: Any, dbs: dict[str, Any], qg: str) -> QueueMeta | None:
    """The record of queue group ``qg`` (``_storage.queues.group_name``), or ``None``."""
    raw = _queues.get_record(txn, dbs, qg)
    return None if raw is None else _dec_meta.decode(raw)


def store_meta(txn: Any, dbs: dict[str, Any], qg: str, meta: QueueMeta) -> None:
    _queues.put_record(txn, dbs, qg, _enc.encode(meta))


def given_policy(topic: str, max_deliveries: int | None | _Unset,
                 dead_letter_topic: str | None | _Unset,
                 retry_backoff: Backoff | float | None | _Unset) -> dict[str, Any]:
    """The policy fields a caller gave explicitly, validated (``UNSET`` ones left out)."""
    given: dict[str, Any] = {}
    if max_deliveries is not UNSET:
        require_int(max_deliveries, "max_deliveries", minimum=1, maximum=MAX_DELIVERIES,
                    allow_none=True)
        given["max_deliveries"] = max_deliveries
    if dead_letter_topic is not UNSET:
        if dead_letter_topic is not None:
            validate_topic_name(dead_letter_topic, "dead_letter_topic")
            if dead_letter_topic == topic:
                raise ValueError("dead_letter_topic must differ from the queue's topic")
        given["dead_letter_topic"] = dead_letter_topic
    if retry_backoff is not UNSET:
        given["retry_backoff"] = resolve_backoff(retry_backoff)
    return given


def merge_policy(stored: QueuePolicy | None, given: dict[str, Any], topic: str, group: str,
                 *, alter: bool) -> QueuePolicy:
    """The group's policy after a consumer (``alter=False``) or an admin call joins.

    The first consumer's explicit values (defaults for the rest) become the
    group's policy; later consumers adopt it and may repeat its values, but a
    differing value raises :class:`QueueConfigConflictError`.
    """
    if stored is None or alter:
        return msgspec.structs.replace(stored or QueuePolicy(), **given)
    diff = {k: v for k, v in given.items() if getattr(stored, k) != v}
    if diff:
        have = ", ".join(f"{k}={getattr(stored, k)!r}" for k in _POLICY_FIELDS)
        want = ", ".join(f"{k}={v!r}" for k, v in diff.items())
        raise QueueConfigConflictError(
            f"queue group {group!r} of topic {topic!r} has the stored policy {have}; this "
            f"consumer asked for {want}.  The retry/dead-letter policy belongs to the group: "
            f"pass the stored values or leave them out to adopt them, or change the group's "
            f"policy with broker.set_queue_policy({topic!r}, {group!r}, ...)")
    return stored


_POLICY_FIELDS = ("max_deliveries", "dead_letter_topic", "retry_backoff")


def queue_policy(engine: Engine, topic: str, group: str) -> QueuePolicy | None:
    """The stored policy of a queue group (``None``: the group has none yet)."""
    validate_topic_name(topic)
    validate_group_name(group)
    env = engine.live_env()
    with env.read_txn() as txn:
        meta = load_meta(txn, env.dbs, _queues.group_name(topic, group))
    return None if meta is None else meta.policy


def set_queue_policy(engine: Engine, topic: str, group: str, *,
                     max_deliveries: int | None | _Unset = UNSET,
                     dead_letter_topic: str | None | _Unset = UNSET,
                     retry_backoff: Backoff | float | None | _Unset = UNSET) -> QueuePolicy:
    """Set (or change) a queue group's retry/dead-letter policy; returns the stored policy.

    Options left out keep their stored value (or the default ``None`` for a
    group without a policy).  The group need not have consumers yet; live
    consumers apply the change at their next ``receive()``.
    """
    validate_topic_name(topic)
    validate_group_name(group)
    given = given_policy(topic, max_deliveries, dead_letter_topic, retry_backoff)
    engine.topic_fresh(topic)
    if given.get("dead_letter_topic") is not None:
        engine.create_topic(given["dead_letter_topic"], exist_ok=True)
    qg = _queues.group_name(topic, group)
    env = engine.live_env()
    with engine.write() as txn:
        meta = load_meta(txn, env.dbs, qg)
        if meta is None:
            meta = QueueMeta(topic=topic, consumers={}, min_visible_ms=0)
        meta.policy = policy = merge_policy(meta.policy, given, topic, group, alter=True)
        store_meta(txn, env.dbs, qg, meta)
    return policy
