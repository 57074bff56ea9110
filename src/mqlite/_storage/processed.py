"""Processed-event claims, inside caller-supplied transactions.

A claim says "event ``id`` of ``scope`` was handled; do not handle it again
before ``expires``".  Claims live in the ``dedup`` database beside the
send-dedup records (docs/format.md):

* ``p`` + scope (UTF-8) + 0x00 + id  ->  expires ms (u64 BE) + claimed ms (u64 BE)
* ``q`` + expires ms (u64 BE) + the ``p…`` key  ->  empty (expiry index)

Values written before claims had an index are 8 bytes (expires only); they
are read as "claimed at an unknown time".

Exclusivity is the caller's contract, not this module's: :func:`put` checks
nothing, so callers run :func:`lookup` and :func:`put` in the **same write
transaction**.  LMDB has one writer at a time, so nothing can claim the id
between the two.  A check made in a read transaction before the write one
(:func:`read_live`) is only a hint.

Expired claims are forgotten by :func:`sweep`, which walks the expiry index
oldest first; callers sweep a few entries per claim so the database stays
bounded by the claims made within one TTL.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import lmdb

from mqlite._storage.env import Env, lmdb_error

__all__ = [
    "MAX_ID_BYTES",
    "MAX_SCOPE_BYTES",
    "Claim",
    "claim_key",
    "delete",
    "lookup",
    "put",
    "read_live",
    "sweep",
]

#: Bounds keep the index key (1 + 8 + 1 + scope + 1 + id) under LMDB's 511-byte limit.
MAX_ID_BYTES = 256
MAX_SCOPE_BYTES = 100

_RECORD = b"p"
_INDEX = b"q"
_VALUE = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
_DB = "dedup"


class Claim(NamedTuple):
    """A stored claim: when it expires and when it was made (``-1`` = unknown), wall ms."""

    expires_ms: int
    claimed_ms: int


def claim_key(scope: bytes, event_id: bytes) -> bytes:
    """Key of one claim; the caller has checked the bounds and that ``scope`` has no NUL."""
    return _RECORD + scope + b"\x00" + event_id


def _decode(raw: Any) -> Claim:
    data = bytes(raw)
    if len(data) >= _VALUE.size:
        return Claim(*_VALUE.unpack_from(data))
    return Claim(_U64.unpack_from(data)[0], -1)


def lookup(txn: Any, dbs: dict[str, Any], key: bytes, now_ms: int) -> Claim | None:
    """The live (not yet expired at ``now_ms``) claim under ``key``, else ``None``."""
    raw = txn.get(key, db=dbs[_DB])
    if raw is None:
        return None
    claim = _decode(raw)
    return claim if claim.expires_ms >= now_ms else None


def put(txn: Any, dbs: dict[str, Any], key: bytes, now_ms: int, expires_ms: int) -> None:
    """Store a claim under ``key`` (replacing an expired one and its index entry)."""
    db = dbs[_DB]
    old = txn.get(key, db=db)
    if old is not None:
        txn.delete(_INDEX + _U64.pack(_decode(old).expires_ms) + key, db=db)
    txn.put(key, _VALUE.pack(expires_ms, now_ms), db=db)
    txn.put(_INDEX + _U64.pack(expires_ms) + key, b"", db=db)


def delete(txn: Any, dbs: dict[str, Any], key: bytes) -> bool:
    """Forget the claim under ``key`` (live or expired); whether there was one."""
    db = dbs[_DB]
    old = txn.get(key, db=db)
    if old is None:
        return False
    txn.delete(_INDEX + _U64.pack(_decode(old).expires_ms) + key, db=db)
    txn.delete(key, db=db)
    return True


def sweep(txn: Any, dbs: dict[str, Any], now_ms: int, limit: int) -> int:
    """Forget up to ``limit`` claims that expired before ``now_ms``, oldest first.

    Returns how many index entries were removed.  A claim whose record was
    replaced meanwhile (its index entry names an older expiry) keeps its record.
    """
    db = dbs[_DB]
    cur = txn.cursor(db=db)
    done = 0
    if not cur.set_range(_INDEX):
        return done
    while done < limit:
        k = bytes(cur.key())
        if k[:1] != _INDEX or _U64.unpack_from(k, 1)[0] >= now_ms:
            break
        key = k[9:]
        raw = txn.get(key, db=db)
        if raw is not None and _decode(raw).expires_ms < now_ms:
            txn.delete(key, db=db)
        done += 1
        if not cur.delete():  # moves to the next entry; False at the end
            break
    return done


def read_live(env: Env, key: bytes, now_ms: int) -> Claim | None:
    """:func:`lookup` in a short read transaction of its own (a hint, not a lock).

    Raises
    ------
    StorageError
        Or a subclass: the read failed (``lmdb`` errors are converted).
    """
    try:
        with env.read_txn() as txn:
            return lookup(txn, env.dbs, key, now_ms)
    except lmdb.Error as exc:
        raise lmdb_error(exc, "read processed-event claim") from exc
