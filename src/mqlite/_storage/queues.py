"""Queue-group records and cursors, inside caller-supplied transactions.

Layout (docs/format.md)::

    groups:   "~q~<topic>~<group>" (UTF-8)            -> msgpack queue-group record
                                                         (opaque here: the codec lives with
                                                         its policy types in ``queue.policy``)
    offsets:  "~q~<topic>~<group>" 0x00 pid (u32 BE)  -> u64 BE cursor: the next offset
                                                         never delivered to the group
    groups:   "~w~<topic>~<group>" (UTF-8)            -> u32 BE: the group's wake-up word,
                                                         a slot of ``notify.shm`` no other
                                                         queue group holds (D74)

``"~"`` is not allowed in topic or group names, so queue groups never collide
with stream groups in the same databases.  A queue group's name (``qg``) is
also the prefix of its pending entries (``_storage.pending``).

Callers: the ``mqlite.queue`` package only.
"""

from __future__ import annotations

import struct
from typing import Any

from mqlite._storage.keys import group_pid_key
from mqlite._storage.log import prefix_items, prefix_keys

__all__ = ["all_groups", "allocate_word", "cursor", "drop_topic", "get_record", "group_name",
           "groups_of", "put_record", "set_cursor", "word_of", "words_of"]

_U64 = struct.Struct(">Q")
_pack_u64 = _U64.pack
_unpack_u64 = _U64.unpack
_U32 = struct.Struct(">I")


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


def _word(raw: Any) -> int:
    b = bytes(raw)
    return int(_U32.unpack(b)[0]) if len(b) == 4 else -1


def _word_key(qg: str) -> bytes:
    return b"~w~" + qg[3:].encode()  # "~q~<topic>~<group>" -> "~w~<topic>~<group>"


def word_of(txn: Any, dbs: dict[str, Any], qg: str) -> int | None:
    """The wake-up word allocated to queue group ``qg``, or ``None`` (none yet)."""
    raw = txn.get(_word_key(qg), db=dbs["groups"])
    return None if raw is None else _word(raw)


def allocate_word(txn: Any, dbs: dict[str, Any], qg: str, first: int, end: int) -> int | None:
    """Give queue group ``qg`` the lowest word in ``[first, end)`` that no queue group of
    any topic holds, and store it; ``None`` (nothing stored) when every one is taken.

    Reads every group's word (one cursor pass over ``~w~`` keys): for a group's first
    registration only.  Words are freed with their topic (:func:`drop_topic`).
    """
    db = dbs["groups"]
    used = {_word(v) for _, v in prefix_items(txn, db, b"~w~")}
    for w in range(first, end):
        if w not in used:
            txn.put(_word_key(qg), _U32.pack(w), db=db)
            return w
    return None


def words_of(txn: Any, dbs: dict[str, Any], topic: str, first: int, end: int) -> tuple[int, ...]:
    """The wake-up words of ``topic``'s queue groups that have one, sorted by group name.

    A stored word outside ``[first, end)`` is left out (a damaged or foreign value must
    not make a writer bump a word that is not a queue group's).
    """
    out = []
    for _, v in prefix_items(txn, dbs["groups"], b"~w~" + _topic_prefix(topic)[3:]):
        w = _word(v)
        if first <= w < end:
            out.append(w)
    return tuple(out)


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
    """Delete the records, cursors and wake-up words of every queue group of ``topic``."""
    prefix = _topic_prefix(topic)
    for name in ("groups", "offsets"):
        db = dbs[name]
        for k in prefix_keys(txn, db, prefix):
            txn.delete(k, db=db)
    db = dbs["groups"]
    for k in prefix_keys(txn, db, b"~w~" + prefix[3:]):  # the groups' wake-up words
        txn.delete(k, db=db)
