"""Results of combined commits, recorded in the transaction that made them.

A committer that takes other processes' operations from the commit ring
(``csrc/combine.h``) records ``ticket -> result`` for each of them inside its
own LMDB transaction.  If it dies after its commit but before marking the
slots DONE, the next committer finds the tickets here and hands out the
stored results instead of appending the operations a second time.

Layout (docs/format.md)::

    meta:  b"comb/" + ticket (u64 BE)  ->  status (i32 BE) r0 r1 r2 (i64 BE each)

Entries are needed only until their slots are DONE; every committer deletes
the entries of tickets that are no longer in a FILLED slot (:func:`prune`).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Any

__all__ = ["lookup", "prune", "record"]

_PREFIX = b"comb/"
_KEY = struct.Struct(">5sQ")
_VAL = struct.Struct(">iqqq")


def record(txn: Any, dbs: dict[str, Any], ticket: int, result: tuple[int, int, int, int]) -> None:
    """Store the result of ``ticket`` in ``txn``."""
    txn.put(_KEY.pack(_PREFIX, ticket), _VAL.pack(*result), db=dbs["meta"])


def lookup(txn: Any, dbs: dict[str, Any], ticket: int) -> tuple[int, int, int, int] | None:
    """The result recorded for ``ticket``, or ``None`` (it was never committed)."""
    raw = txn.get(_KEY.pack(_PREFIX, ticket), db=dbs["meta"])
    if raw is None or len(raw) != _VAL.size:
        return None
    st, a, b, c = _VAL.unpack(raw)
    return (st, a, b, c)


def prune(txn: Any, dbs: dict[str, Any], keep: Collection[int]) -> int:
    """Delete every recorded ticket not in ``keep``; returns how many were deleted."""
    n = 0
    with txn.cursor(db=dbs["meta"]) as cur:
        if not cur.set_range(_PREFIX):
            return 0
        while True:
            key = bytes(cur.key())
            if not key.startswith(_PREFIX):
                break
            if len(key) == _KEY.size and _KEY.unpack(key)[1] in keep:
                if not cur.next():
                    break
                continue
            cur.delete()  # moves to the next entry
            n += 1
            if not cur.key():
                break
    return n
