"""Deduplication ids (``dedup_id=``), inside caller-supplied write transactions.

Layout of the ``dedup`` database (docs/format.md)::

    b"k" + topic + 0x00 + id                  -> msgpack (expires_ms, partition, offset, ts_ms)
    b"h" + topic + 0x00 + blake2b-256(id)     -> same, when the plain key would pass LMDB's
                                                 511-byte key limit with the expiry prefix
    b"x" + expires_ms (u64 BE) + key          -> b""   (expiry index, oldest first)

A hit is only honoured while ``expires_ms >= now``; expired ids are swept a
few at a time by every store, oldest first, so the database stays bounded by
the ids sent within one dedup window.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["dedup_key", "lookup", "store"]

_DEDUP = msgspec.msgpack.Decoder(tuple[int, int, int, int])
_DEDUP_ENC = msgspec.msgpack.Encoder()
_KEY_MAX = 511 - 9  # LMDB's key limit minus the expiry index prefix
_SWEEP = 16


def dedup_key(topic: str, dedup_id: str | bytes) -> bytes:
    """The stored key of ``dedup_id`` on ``topic``.

    Raises
    ------
    TypeError
        ``dedup_id`` is not ``str`` or bytes.
    ValueError
        It is empty or longer than 256 bytes (UTF-8).
    """
    if isinstance(dedup_id, str):
        raw = dedup_id.encode()
    elif isinstance(dedup_id, (bytes, bytearray)):
        raw = bytes(dedup_id)
    else:
        raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    if not raw or len(raw) > 256:
        raise ValueError("dedup_id must be 1-256 bytes")
    key = b"k" + topic.encode() + b"\x00" + raw
    if len(key) > _KEY_MAX:
        key = b"h" + topic.encode() + b"\x00" + hashlib.blake2b(raw, digest_size=32).digest()
    return key


def lookup(txn: Any, dbs: dict[str, Any], dkey: bytes,
           now_ms: int) -> tuple[int, int, int, int] | None:
    """``(expires_ms, partition, offset, timestamp_ms)`` of a live id, else ``None``."""
    raw = txn.get(dkey, db=dbs["dedup"])
    if raw is None:
        return None
    hit = _DEDUP.decode(raw)
    if hit[0] < now_ms:
        return None
    return hit


def store(txn: Any, dbs: dict[str, Any], dkey: bytes, partition: int, offset: int,
          timestamp_ms: int, now_ms: int, window_ms: int) -> None:
    """Remember ``dkey`` -> where its message went, for ``window_ms``; sweep a few expired."""
    db = dbs["dedup"]
    expires = now_ms + window_ms
    txn.put(dkey, _DEDUP_ENC.encode((expires, partition, offset, timestamp_ms)), db=db)
    txn.put(b"x" + expires.to_bytes(8, "big") + dkey, b"", db=db)
    _sweep(txn, db, now_ms, _SWEEP)


def _sweep(txn: Any, db: Any, now_ms: int, limit: int) -> None:
    """Forget up to ``limit`` expired ids (oldest first, by the expiry index)."""
    cur = txn.cursor(db=db)
    if not cur.set_range(b"x"):
        return
    for _ in range(limit):
        k = cur.key()
        if not k or k[:1] != b"x" or int.from_bytes(k[1:9], "big") >= now_ms:
            return
        dkey = bytes(k[9:])
        raw = txn.get(dkey, db=db)
        if raw is not None and _DEDUP.decode(raw)[0] < now_ms:
            txn.delete(dkey, db=db)
        if not cur.delete():
            return
