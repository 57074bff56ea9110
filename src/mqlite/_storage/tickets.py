"""Results of combined commits, recorded in the transaction that made them.

A committer that takes other processes' operations from the commit ring
(``csrc/combine.h``) records ``ticket -> result`` for each of them inside its
own LMDB transaction.  If it dies after its commit but before marking the
slots DONE, the next committer finds the tickets here and hands out the
stored results instead of appending the operations a second time.

Layout (docs/format.md)::

    meta:  b"comb:" + first ticket (u64 BE) + count (u32 BE)
           ->  count x (ticket (u64 BE), status (i32 BE), r0 r1 r2 (i64 BE each))

One entry per combined commit (D35; a put per slot cost a tenth of the
committer's time).  Entries of the first format, ``b"comb/" + ticket (u64 BE)
-> status r0 r1 r2`` (one per slot, D27), are still read and pruned.

Entries are needed only until their slots are DONE; every committer deletes
the entries none of whose tickets is still in a FILLED slot (:func:`load`).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from typing import Any

__all__ = ["load", "lookup", "prune", "record", "record_many"]

_OLD_PREFIX = b"comb/"
_OLD_KEY = struct.Struct(">5sQ")
_OLD_VAL = struct.Struct(">iqqq")
_PREFIX = b"comb:"
_KEY = struct.Struct(">5sQI")
_ITEM = struct.Struct(">Qiqqq")

Result = tuple[int, int, int, int]


def record(txn: Any, dbs: dict[str, Any], ticket: int, result: Result) -> None:
    """Store the result of one ``ticket`` in ``txn`` (an entry of its own)."""
    record_many(txn, dbs, [(ticket, result)])


def record_many(txn: Any, dbs: dict[str, Any],
                results: Sequence[tuple[int, Result]]) -> None:
    """Store the results of one commit's tickets in ``txn``, as one entry."""
    if not results:
        return
    item = _ITEM.pack
    val = b"".join([item(t, *r) for t, r in results])
    txn.put(_KEY.pack(_PREFIX, min(t for t, _ in results), len(results)), val,
            db=dbs["meta"])


def _entries(txn: Any, dbs: dict[str, Any], prefix: bytes) -> Any:
    """Yield ``(cursor, key, value)`` for every entry under ``prefix``; the caller may
    delete the current entry with ``cursor.delete()`` (then the next one is current)."""
    with txn.cursor(db=dbs["meta"]) as cur:
        if not cur.set_range(prefix):
            return
        while True:
            key = bytes(cur.key())
            if not key.startswith(prefix):
                return
            before = key
            yield cur, key, bytes(cur.value())
            now = cur.key()
            if not now:
                return
            if bytes(now) == before and not cur.next():
                return  # not deleted: step on


def _parse(key: bytes, val: bytes) -> dict[int, Result]:
    """The ticket -> result pairs of one entry (either format; empty when malformed)."""
    out: dict[int, Result] = {}
    if key.startswith(_PREFIX):
        if len(key) == _KEY.size and len(val) % _ITEM.size == 0:
            for t, st, a, b, c in _ITEM.iter_unpack(val):
                out[t] = (st, a, b, c)
    elif len(key) == _OLD_KEY.size and len(val) == _OLD_VAL.size:
        out[_OLD_KEY.unpack(key)[1]] = _OLD_VAL.unpack(val)
    return out


def load(txn: Any, dbs: dict[str, Any], keep: Collection[int]) -> tuple[dict[int, Result], int]:
    """Results recorded for the tickets in ``keep`` (slots still FILLED), and how many
    entries were deleted: every entry holding none of them is deleted."""
    found: dict[int, Result] = {}
    deleted = 0
    for prefix in (_PREFIX, _OLD_PREFIX):
        for cur, key, val in _entries(txn, dbs, prefix):
            pairs = _parse(key, val)
            live = [t for t in pairs if t in keep]
            if live:
                for t in live:
                    found[t] = pairs[t]
            else:
                cur.delete()
                deleted += 1
    return found, deleted


def lookup(txn: Any, dbs: dict[str, Any], ticket: int) -> Result | None:
    """The result recorded for ``ticket``, or ``None`` (it was never committed, or its
    entry was pruned)."""
    for prefix in (_PREFIX, _OLD_PREFIX):
        for _cur, key, val in _entries(txn, dbs, prefix):
            res = _parse(key, val).get(ticket)
            if res is not None:
                return res
    return None


def prune(txn: Any, dbs: dict[str, Any], keep: Collection[int]) -> int:
    """Delete every entry holding none of the tickets in ``keep``; how many were deleted."""
    return load(txn, dbs, keep)[1]
