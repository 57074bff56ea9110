"""Delayed messages: ``send(..., delay=)`` / ``deliver_at=``.

A delayed message is stored durably in the ``scheduled`` database under
(due time ms u64 BE, sequence u64 BE) and is appended to its topic — and so
becomes visible to consumers — only once due.  There is no daemon: consumers
and queues promote due messages before they read (one write transaction for
all due messages), and a waiting consumer bounds its wait by the next due
time, so a due message is delivered within milliseconds of its time.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite._headers import HeadersArg, normalize_headers
from mqlite._storage import log as _log
from mqlite._storage import schedule as _schedule
from mqlite.config import (
    MAX_DELAY_S,
    MAX_I64,
    require_int,
    require_seconds,
    require_unix_time,
    validate_topic_name,
)
from mqlite.errors import MqliteError, PartitionNotFoundError
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["next_due_in", "next_due_ms", "promote_due", "schedule_send", "scheduled_counts"]


class ScheduledMessage(msgspec.Struct, array_like=True):
    topic: str
    partition: int  # -1 = choose when promoted
    key: bytes | None
    value: bytes | None  # None: a null value (distinct from b"")
    headers: list[tuple[str, bytes]] | None
    timestamp_ms: int  # -1 = the promotion time
    dedup_id: bytes | None = None


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(ScheduledMessage)


class _TopicOnly(msgspec.Struct, array_like=True):
    topic: str  # the first field of ScheduledMessage; the rest is skipped


_dec_topic = msgspec.msgpack.Decoder(_TopicOnly)


def scheduled_counts(txn: Any, dbs: dict[str, Any]) -> dict[str, int]:
    """Delayed messages not yet promoted, per target topic, read in ``txn``.

    Undecodable entries are counted under ``""`` (promotion sets them aside).
    """
    out: dict[str, int] = {}
    for v in _schedule.pending_values(txn, dbs):
        try:
            t = _dec_topic.decode(v).topic
        except msgspec.DecodeError:
            t = ""
        out[t] = out.get(t, 0) + 1
    return out
_log_failure = logging.getLogger("mqlite.scheduler")


def _as_bytes(v: Any, what: str) -> bytes:
    if isinstance(v, str):
        raise TypeError(f"{what} must be bytes-like, not str; encode it first")
    try:
        return bytes(memoryview(v))
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(v).__name__}") from None


def schedule_send(engine: Engine, topic: str, value: Any, *, key: Any = None,
                  headers: HeadersArg = None, partition: int | None = None,
                  timestamp_ms: int | None = None, dedup_id: Any = None,
                  delay: float | None = None, deliver_at: float | None = None) -> RecordMetadata:
    """Store a message to be appended to ``topic`` when due.

    Returns metadata with ``offset == -1`` (the offset is assigned when the
    message is appended) and ``partition == -1`` unless one was given.
    """
    if delay is not None and deliver_at is not None:
        raise ValueError("give delay= or deliver_at=, not both")
    now = time.time()
    if delay is not None:
        require_seconds(delay, "delay", maximum=MAX_DELAY_S, allow_zero=True)
        due = now + delay
    else:
        due = require_unix_time(deliver_at, "deliver_at", now=now, max_ahead=MAX_DELAY_S)
    if not math.isfinite(due) or due * 1000 >= 1 << 63:
        raise ValueError("delay / deliver_at must be finite")
    validate_topic_name(topic)
    rec = engine.topic_fresh(topic)
    if partition is not None:
        engine.choose_partition(rec, key, partition)
    ts = -1 if timestamp_ms is None else require_int(timestamp_ms, "timestamp_ms", minimum=0, maximum=MAX_I64)
    hdrs = normalize_headers(headers)
    val = None if value is None else _as_bytes(value, "value")
    kb = None if key is None else _as_bytes(key, "key")
    # Validate size and encodability now, not when it is due.
    engine.encode(rec, [val], None if kb is None else [kb], None if hdrs is None else [hdrs], 0)
    did = None
    if dedup_id is not None:
        engine.dedup_key(topic, dedup_id)  # the same checks as a direct send (type, 1-256 bytes)
        did = dedup_id.encode() if isinstance(dedup_id, str) else bytes(dedup_id)
    msg = ScheduledMessage(topic, -1 if partition is None else partition, kb, val, hdrs, ts, did)
    due_ms = int(due * 1000)
    raw = _enc.encode(msg)
    with engine.write() as txn:
        engine.topic(txn, topic)
        engine.check_space(engine.env, txn, len(raw))  # a delayed send is a send
        _schedule.put(txn, engine.env.dbs, due_ms, raw)
        engine.touched(topic, rec.pids)  # its readers recompute their next due time
    return RecordMetadata(topic, -1 if partition is None else partition, -1,
                          due_ms if ts < 0 else ts)


def next_due_in(txn: Any, dbs: dict[str, Any]) -> int | None:
    """Due time (ms) of the earliest scheduled message, read in ``txn``; ``None`` if none."""
    return _schedule.next_due(txn, dbs)


def next_due_ms(engine: Engine) -> int | None:
    """Due time of the earliest scheduled message, or ``None``."""
    with engine.read() as txn:
        return next_due_in(txn, engine.env.dbs)


def promote_due(engine: Engine, now_ms: int | None = None, limit: int = 10_000) -> int:
    """Append every due scheduled message to its topic; return how many moved.

    Messages whose topic was deleted meanwhile are dropped.  One transaction.
    Each append is admitted before it writes (:meth:`Engine.admit_move`: its bytes
    were counted when it was scheduled, so it is refused only where it would not
    fit the map, or under writemap where the disk has no blocks for it); a refusal
    raises and promotes nothing.
    """
    env = engine.env
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    nd = next_due_ms(engine)
    if nd is None or nd > now:
        return 0
    with engine.write() as txn:
        due = _schedule.take_due(txn, env.dbs, now, limit)
        for raw in due:
            try:
                msg = _dec.decode(raw)
                rec = _log.get_topic(txn, env.dbs, msg.topic)
                if rec is None:
                    continue  # the topic was deleted meanwhile: the message goes with it
                ts = now if msg.timestamp_ms < 0 else msg.timestamp_ms
                dkey = None
                if msg.dedup_id is not None:
                    dkey = engine.dedup_key(msg.topic, msg.dedup_id)
                    if engine.dedup_hit(txn, dkey, now) is not None:
                        continue
                try:
                    part = engine.choose_partition(rec, msg.key,
                                                    None if msg.partition < 0 else msg.partition)
                except PartitionNotFoundError:
                    part = 0
                batches = engine.encode(rec, [msg.value],
                                        None if msg.key is None else [msg.key],
                                        None if msg.headers is None else [msg.headers], ts,
                                        capped=False)
            except (msgspec.DecodeError, TypeError, ValueError, MqliteError) as exc:
                # One bad message must not block every consumer of the broker: keep it
                # where it is never due, with the reason (mqlite verify lists it).
                reason = f"{type(exc).__name__}: {exc}"
                _schedule.set_aside(txn, env.dbs, raw, reason)
                _log_failure.error("delayed message set aside, not promoted: %s", reason)
                continue
            engine.admit_move(txn, sum(map(len, batches)))
            off, _ = engine.append_in(txn, rec, part, batches)
            if dkey is not None:
                engine.dedup_store(txn, dkey, rec, part, off, ts)
    return len(due)
