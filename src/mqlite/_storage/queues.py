"""Queue-group records and cursors, inside caller-supplied transactions.

Layout (docs/format.md)::

    groups:   "~q~<topic>~<group>" (UTF-8)            -> msgpack queue-group record
                                                         (opaque here: the codec lives with
                                                         its policy types in ``queue.policy``)
    offsets:  "~q~<topic>~<group>" 0x00 pid (u32 BE)  -> u64 BE cursor: the next offset
                                                         never delivered to the group

``"~"`` is not allowed in topic or group names, so queue groups never collide
with stream groups in the same databases.  A queue group's name (``qg``) is
also the prefix of its pending entries (``_storage.pending``).

Callers: the ``mqlite.queue`` package only.
"""

from __future__ import annotations

import struct
from typing import Any

from mqlite._storage.keys import group_pid_key
from mqlite._storage.log import prefix_keys

__all__ = ["all_groups", "cursor", "drop_topic", "get_record", "group_name", "groups_of",
           "has_other_group", "put_record", "set_cursor"]

_U64 = struct.Struct(">Q")
_pack_u64 = _U64.pack
_unpack_u64 = _U64.unpack


def group_name(topic: str, group: str) -> str:
    """The stored name of queue group ``group`` of ``topic``."""
    return f"~q~{topic}~{group}"


def _topic_prefix(topic: str) -> bytes:
    return f"~q~{topic}~".encode()


def get_record(txn: Any, dbs: dict[str, Any], qg: str) -> bytes | None:
    """The stored record of queue group ``qg`` (msgpack), or ``None``."""
    raw = txn.get(qg.encode(), db=dbs["groups"])
    return None if raw is None else bytes(raw)


def put_record(txn: Any, dbs: dict[str, Any], qg: str, value: bytes) -> None:
    txn.put(qg.encode(), value, db=dbs["groups"])


def groups_of(txn: Any, dbs: dict[str, Any], topic: str) -> list[str]:
    """Names (``qg``) of every queue group of ``topic``, sorted."""
    return [k.decode() for k in prefix_keys(txn, dbs["groups"], _topic_prefix(topic))]


def has_other_group(txn: Any, dbs: dict[str, Any], topic: str, qg: str) -> bool:
    """Whether ``topic`` has a queue group other than ``qg`` (at most two keys read).

    A group's record is written when its first consumer registers and deleted only
    with its topic, so within one topic's life the answer only turns from ``False``
    to ``True`` (D70 relies on this).
    """
    prefix = _topic_prefix(topic)
    cur = txn.cursor(db=dbs["groups"])
    if not cur.set_range(prefix):
        return False
    key = bytes(cur.key())
    if key == qg.encode():
        if not cur.next():
            return False
        key = bytes(cur.key())
    return key.startswith(prefix)


def all_groups(txn: Any, dbs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(qg, topic, group)`` of every queue group of every topic, sorted by ``qg``."""
    out = []
    for k in prefix_keys(txn, dbs["groups"], b"~q~"):
        qg = k.decode()
        topic, _, group = qg[3:].partition("~")
        out.append((qg, topic, group))
    return out


def cursor(txn: Any, dbs: dict[str, Any], qg: str, pid: int) -> int:
    """The group's next never-delivered offset on partition id ``pid`` (0 if none)."""
    raw = txn.get(group_pid_key(qg, pid), db=dbs["offsets"])
    return 0 if raw is None else int(_unpack_u64(raw)[0])


def set_cursor(txn: Any, dbs: dict[str, Any], qg: str, pid: int, offset: int) -> None:
    txn.put(group_pid_key(qg, pid), _pack_u64(offset), db=dbs["offsets"])


def drop_topic(txn: Any, dbs: dict[str, Any], topic: str) -> None:
    """Delete the records and cursors of every queue group of ``topic``."""
    prefix = _topic_prefix(topic)
    for name in ("groups", "offsets"):
        db = dbs[name]
        for k in prefix_keys(txn, db, prefix):
            txn.delete(k, db=db)
