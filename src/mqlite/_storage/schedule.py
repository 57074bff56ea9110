"""Delayed messages (``send(..., delay=)``), inside caller-supplied transactions.

Layout (docs/format.md)::

    scheduled:  due_ms (u64 BE) + seq (u64 BE)   -> the message (msgpack, opaque here)
    meta:       b"scheduled_seq"                 -> u64 BE, the last seq handed out

Keys sort by due time, then by the durable sequence number taken in the same
transaction, so keys never collide across processes and messages due in the
same millisecond keep their send order.
"""

from __future__ import annotations

from typing import Any

__all__ = ["next_due", "put", "take_due"]

_SEQ_KEY = b"scheduled_seq"


def put(txn: Any, dbs: dict[str, Any], due_ms: int, value: bytes) -> None:
    """Store ``value`` to be taken by :func:`take_due` once ``due_ms`` has passed."""
    meta = dbs["meta"]
    raw = txn.get(_SEQ_KEY, db=meta)
    seq = (0 if raw is None else int.from_bytes(raw, "big")) + 1
    txn.put(_SEQ_KEY, seq.to_bytes(8, "big"), db=meta)
    txn.put(due_ms.to_bytes(8, "big") + seq.to_bytes(8, "big"), value, db=dbs["scheduled"])


def next_due(txn: Any, dbs: dict[str, Any]) -> int | None:
    """Due time (ms) of the earliest stored message; ``None`` when there is none."""
    cur = txn.cursor(db=dbs["scheduled"])
    if not cur.first():
        return None
    return int.from_bytes(bytes(cur.key()[:8]), "big")


def take_due(txn: Any, dbs: dict[str, Any], now_ms: int, limit: int) -> list[bytes]:
    """Remove and return (oldest first) up to ``limit`` messages due at ``now_ms``."""
    cur = txn.cursor(db=dbs["scheduled"])
    out: list[bytes] = []
    while len(out) < limit and cur.first():
        if int.from_bytes(bytes(cur.key()[:8]), "big") > now_ms:
            break
        out.append(bytes(cur.value()))
        cur.delete()
    return out
