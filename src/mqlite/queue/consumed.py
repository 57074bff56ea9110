"""What the queue groups of a topic still need: ``cleanup="consumed"`` and topic deletion.

Owns :func:`consumed_floor` (the lowest offset of a partition some queue group
still needs: its cursor, or a lower offset still pending), the deletion of
batches every group acknowledged, and the topic-deletion hook that forgets a
topic's queue groups, cursors, pending entries and dead-letter marks.

Callers: the engine (hooks registered at import: ``on_consumed_floor``,
``on_topic_delete``), ``receive`` and ``settle`` (after messages leave).
Changes: the topic's log head (retention) and, on deletion, the queue state
of the topic, always inside the caller's write transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqlite._engine import now_ms, on_consumed_floor, on_topic_delete
from mqlite._storage import log as _log
from mqlite._storage import pending as _pending
from mqlite._storage import queues as _queues

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["cleanup_consumed", "consumed_floor"]


def consumed_floor(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord, pid: int) -> int | None:
    """Lowest offset of partition ``pid`` that some queue group of the topic still needs."""
    floor: int | None = None
    for qg in _queues.groups_of(txn, dbs, rec.name):
        low = _pending.lowest_pending(txn, dbs, qg, pid, _queues.cursor(txn, dbs, qg, pid))
        floor = low if floor is None else min(floor, low)
    return floor


def cleanup_consumed(engine: Engine, txn: Any, topic: str) -> bool:
    """``cleanup="consumed"``: delete batches every queue group acknowledged."""
    rec = engine.topic(txn, topic)
    if rec.config.get("cleanup") != "consumed":
        return False
    env = engine.env
    cfg = rec.topic_config()
    now = now_ms()
    deleted = False
    for pid in rec.pids:
        floor = consumed_floor(txn, env.dbs, rec, pid)
        if floor is None:
            continue
        st = _log.load_state_w(txn, env, pid)
        if _log.apply_retention(txn, env.dbs, pid, st, cfg, now, floor):
            _log.store_state(txn, env.dbs, pid, st)
            deleted = True
    if deleted:
        env.space_freed()  # a cached "store full" verdict no longer holds
    return deleted


def _drop_topic_queues(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: forget queue groups, cursors, pending entries and DLQ marks."""
    _queues.drop_topic(txn, dbs, rec.name)
    _pending.drop_topic(txn, dbs, rec.name)


def _register_hooks() -> None:
    on_topic_delete(_drop_topic_queues)
    on_consumed_floor(consumed_floor)


_register_hooks()
