"""Delayed messages (``send(..., delay=)``), inside caller-supplied transactions.

Layout (docs/format.md)::

    scheduled:  due_ms (u64 BE) + seq (u64 BE)   -> the message (msgpack, opaque here)
    meta:       b"scheduled_seq"                 -> u64 BE, the last seq handed out

Keys sort by due time, then by the durable sequence number taken in the same
transaction, so keys never collide across processes and messages due in the
same millisecond keep their send order.

A message that cannot be promoted (undecodable, or invalid for its topic) is
*set aside* under the due time 2**64 - 1, which is never due, as msgpack
``[reason, original value]``, so it never blocks the messages behind it;
:func:`set_aside_entries` lists them (``mqlite verify`` reports them).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["next_due", "pending_values", "put", "set_aside", "set_aside_entries", "take_due"]

_SEQ_KEY = b"scheduled_seq"
_NEVER = (1 << 64) - 1
_NEVER_KEY = _NEVER.to_bytes(8, "big")
_enc = msgspec.msgpack.Encoder()
_dec_aside = msgspec.msgpack.Decoder(tuple[str, bytes])


def _next_seq(txn: Any, dbs: dict[str, Any]) -> int:
    meta = dbs["meta"]
    raw = txn.get(_SEQ_KEY, db=meta)
    seq = (0 if raw is None else int.from_bytes(raw, "big")) + 1
    txn.put(_SEQ_KEY, seq.to_bytes(8, "big"), db=meta)
    return seq


def put(txn: Any, dbs: dict[str, Any], due_ms: int, value: bytes) -> None:
    """Store ``value`` to be taken by :func:`take_due` once ``due_ms`` has passed."""
    seq = _next_seq(txn, dbs)
    txn.put(due_ms.to_bytes(8, "big") + seq.to_bytes(8, "big"), value, db=dbs["scheduled"])


def next_due(txn: Any, dbs: dict[str, Any]) -> int | None:
    """Due time (ms) of the earliest stored message; ``None`` when there is none."""
    cur = txn.cursor(db=dbs["scheduled"])
    if not cur.first():
        return None
    due = int.from_bytes(bytes(cur.key()[:8]), "big")
    return None if due == _NEVER else due


def pending_values(txn: Any, dbs: dict[str, Any]) -> list[Any]:
    """The stored values of every message not yet promoted (set-aside ones excluded),
    due-time order; buffers valid while ``txn`` is open."""
    cur = txn.cursor(db=dbs["scheduled"])
    out = []
    for k, v in cur.iternext(keys=True, values=True):
        if bytes(k[:8]) == _NEVER_KEY:
            break
        out.append(v)
    return out


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


def set_aside(txn: Any, dbs: dict[str, Any], value: bytes, reason: str) -> None:
    """Keep a message that cannot be promoted where it is never due, with the reason."""
    seq = _next_seq(txn, dbs)
    txn.put(_NEVER_KEY + seq.to_bytes(8, "big"), _enc.encode((reason, value)),
            db=dbs["scheduled"])


def set_aside_entries(txn: Any, dbs: dict[str, Any], limit: int = 1000) -> list[tuple[str, bytes]]:
    """``(reason, original value)`` of the messages set aside, oldest first."""
    cur = txn.cursor(db=dbs["scheduled"])
    out: list[tuple[str, bytes]] = []
    if not cur.set_range(_NEVER_KEY):
        return out
    for k, v in cur:
        if bytes(k[:8]) != _NEVER_KEY or len(out) >= limit:
            break
        try:
            out.append(_dec_aside.decode(v))
        except msgspec.DecodeError:
            out.append(("unreadable set-aside record", bytes(v)))
    return out
