"""Committed offsets of stream-mode consumer groups, inside caller-supplied transactions.

Layout (docs/format.md)::

    offsets:  group (UTF-8) 0x00 partition id (u32 BE)  -> msgpack OffsetValue (array)

Queue groups keep their cursor in the same database under their own group
name (``~q~topic~group``), as a bare u64 BE; see ``queues``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mqlite._storage.keys import group_pid_key
from mqlite._storage.log import prefix_items, prefix_keys
from mqlite.errors import CorruptRecordError

__all__ = ["OffsetValue", "committed_all", "committed_by_pid", "drop_partitions",
           "partitions_with_offsets", "read", "write"]


class OffsetValue(msgspec.Struct, array_like=True):
    """A committed offset, who committed it, in which generation, and when."""

    offset: int
    member_id: str
    generation: int
    timestamp_ms: int
    metadata: str = ""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(OffsetValue)


class _OffsetOnly(msgspec.Struct, array_like=True):
    offset: int  # the first field of OffsetValue; the rest is skipped


_dec_offset = msgspec.msgpack.Decoder(_OffsetOnly)


def read(txn: Any, dbs: dict[str, Any], group: str, pid: int) -> OffsetValue | None:
    """The committed offset of ``group`` on partition id ``pid``, or ``None``."""
    raw = txn.get(group_pid_key(group, pid), db=dbs["offsets"])
    return None if raw is None else _dec.decode(raw)


def write(txn: Any, dbs: dict[str, Any], group: str, pid: int, value: OffsetValue) -> None:
    txn.put(group_pid_key(group, pid), _enc.encode(value), db=dbs["offsets"])


def partitions_with_offsets(txn: Any, dbs: dict[str, Any], group: str) -> set[int]:
    """Partition ids on which ``group`` has a committed offset."""
    prefix = group.encode() + b"\x00"
    return {int.from_bytes(k[-4:], "big") for k in prefix_keys(txn, dbs["offsets"], prefix)
            if len(k) == len(prefix) + 4}


def committed_by_pid(txn: Any, dbs: dict[str, Any], group: str) -> dict[int, int]:
    """``{partition id: committed offset}`` of ``group``, in one cursor pass."""
    prefix = group.encode() + b"\x00"
    want = len(prefix) + 4
    dec = _dec_offset.decode
    return {int.from_bytes(k[-4:], "big"): dec(v).offset
            for k, v in prefix_items(txn, dbs["offsets"], prefix) if len(k) == want}


def committed_all(txn: Any, dbs: dict[str, Any]) -> dict[str, dict[int, int]]:
    """``{group: {partition id: committed offset}}`` of every group, in one cursor pass.

    What :func:`committed_by_pid` gives for each group, at a fraction of the cost
    when all groups are wanted (stats, metrics scrapes).  Keys that are not
    ``group \\x00 pid`` (4 bytes) are skipped, as ``committed_by_pid`` skips them;
    the scan stops at the first ``~`` key: queue groups' cursors (``~q~topic~group``,
    :mod:`mqlite._storage.queues`) sort after every stream group name
    (``[A-Za-z0-9._-]``) and are not offset records.

    Raises :class:`CorruptRecordError` for an offset record that does not decode.
    """
    dec = _dec_offset.decode
    from_bytes = int.from_bytes
    out: dict[str, dict[int, int]] = {}
    last_raw = b""
    cur_map: dict[int, int] = {}
    for k, v in txn.cursor(db=dbs["offsets"]).iternext():
        kb = bytes(k)
        if kb[:1] == b"~":
            break
        if len(kb) < 6 or kb[-5] != 0:
            continue
        raw = kb[:-5]
        if raw != last_raw:
            last_raw = raw
            cur_map = out.setdefault(raw.decode(errors="replace"), {})
        try:
            cur_map[from_bytes(kb[-4:], "big")] = dec(v).offset
        except msgspec.DecodeError as exc:
            raise CorruptRecordError(
                f"committed offset of group {raw.decode(errors='replace')!r} is unreadable: "
                f"{exc}") from None
    return out


def drop_partitions(txn: Any, dbs: dict[str, Any], pids: list[int]) -> None:
    """Delete every group's offset on the partition ids ``pids`` (topic deletion)."""
    tails = {pid.to_bytes(4, "big") for pid in pids}
    cur = txn.cursor(db=dbs["offsets"])
    doomed = [bytes(k) for k in cur.iternext(keys=True, values=False) if bytes(k)[-4:] in tails]
    for k in doomed:
        txn.delete(k, db=dbs["offsets"])
