"""Group records, inside caller-supplied transactions.

Layout (docs/format.md)::

    groups:  group name (UTF-8)  -> msgpack group state (opaque here; the codec lives
                                    with the feature that owns it: ``groups`` for stream
                                    groups; queue groups named ``~q~...`` are stored
                                    through ``queues``)
"""

from __future__ import annotations

from typing import Any

__all__ = ["get", "names", "put"]


def get(txn: Any, dbs: dict[str, Any], group: str) -> bytes | None:
    """The stored record of ``group``, or ``None``."""
    raw = txn.get(group.encode(), db=dbs["groups"])
    return None if raw is None else bytes(raw)


def put(txn: Any, dbs: dict[str, Any], group: str, value: bytes) -> None:
    txn.put(group.encode(), value, db=dbs["groups"])


def names(txn: Any, dbs: dict[str, Any]) -> list[str]:
    """Every group record's name, sorted."""
    cur = txn.cursor(db=dbs["groups"])
    return [bytes(k).decode() for k in cur.iternext(keys=True, values=False)]
