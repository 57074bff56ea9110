"""Partition logs and the topic catalog, inside caller-supplied transactions.

Every function here takes an open LMDB transaction and the environment's
database handles; none begins or commits a transaction, so callers compose
them into one atomic unit (a send plus its dedup record, a produce plus the
offsets it came from, a dead-letter move plus the ack).

Records live in ``records`` under (partition id u32 BE, base offset u64 BE),
one record batch per value.  ``partitions`` holds each partition's state
(48 bytes, docs/format.md).  Offsets are dense: the next batch's base offset
is the previous batch's base offset plus its record count.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from mqlite import _core
from mqlite._storage.keys import PID as _U32
from mqlite._storage.keys import RECORD, pid_key, record_key
from mqlite._storage.keys import U64 as _U64
from mqlite.config import TopicConfig
from mqlite.errors import CorruptRecordError, StorageError, TopicExistsError

__all__ = [
    "PartitionScan",
    "PartitionState",
    "TopicRecord",
    "add_partitions",
    "append_batches",
    "apply_retention",
    "create_topic",
    "delete_topic",
    "drop_partition",
    "find_offset_for_time",
    "get_topic",
    "iter_topics",
    "list_topics",
    "load_all_states",
    "load_state",
    "prefix_items",
    "prefix_keys",
    "put_batch",
    "read_records",
    "scan_partition",
    "set_topic_config",
    "store_state",
    "topics_version",
]

_STATE = struct.Struct(">QQQqqQ")
_STATE_HEAD = struct.Struct(">QQQ24x")  # start, next, bytes of a _STATE record
_MAX_I64 = (1 << 63) - 1


class TopicRecord(msgspec.Struct, frozen=True):
    """A topic as stored in the ``topics`` database (msgpack)."""

    name: str
    pids: list[int]
    config: dict[str, Any]
    created_ms: int

    def topic_config(self) -> TopicConfig:
        return TopicConfig.from_dict(self.config)


_topic_encoder = msgspec.msgpack.Encoder()
_topic_decoder = msgspec.msgpack.Decoder(TopicRecord)


#: Mutable in-transaction copy of one partition's stored state: ``start``, ``next``
#: (end offset), ``bytes``, ``first_ts``, ``last_ts`` (int64 fields) and ``messages``.
#: A Cython class, so the single-send path updates it in C (D36).
PartitionState = _core.PartitionState


def load_state(txn: Any, dbs: dict[str, Any], pid: int) -> PartitionState:
    raw = txn.get(pid_key(pid), db=dbs["partitions"])
    if raw is None:
        raise StorageError(f"partition id {pid} has no state; the topic catalog is inconsistent")
    if len(raw) != _STATE.size:
        raise CorruptRecordError(f"partition state of id {pid} has {len(raw)} bytes, expected 48")
    s, n, b, f, last, _ = _STATE.unpack(raw)
    if n < s:
        raise CorruptRecordError(f"partition state of id {pid}: end offset {n} < start {s}")
    if n > _MAX_I64 or b > _MAX_I64:
        raise CorruptRecordError(f"partition state of id {pid}: end offset {n} or size {b} "
                                 "above 2**63 - 1")
    return PartitionState(s, n, b, f, last)


def load_all_states(txn: Any, dbs: dict[str, Any]) -> dict[int, tuple[int, int, int]]:
    """``{partition id: (start offset, end offset, bytes)}`` of every partition, in one
    cursor pass (for stats; no :class:`PartitionState` objects).

    Raises :class:`CorruptRecordError` for a state that is not 48 bytes or
    whose end offset is below its start.
    """
    unpack = _STATE_HEAD.unpack
    from_bytes = int.from_bytes
    out: dict[int, tuple[int, int, int]] = {}
    try:
        for k, v in txn.cursor(db=dbs["partitions"]).iternext():
            out[from_bytes(k, "big")] = unpack(v)
    except struct.error:
        for k, v in txn.cursor(db=dbs["partitions"]).iternext():
            if len(v) != _STATE.size:
                raise CorruptRecordError(
                    f"partition state of id {from_bytes(k, 'big')} has {len(v)} bytes, "
                    "expected 48") from None
        raise
    for pid, (s, n, _) in out.items():
        if n < s:
            raise CorruptRecordError(f"partition state of id {pid}: end offset {n} < start {s}")
    return out


def load_state_w(txn: Any, env: Any, pid: int) -> PartitionState:
    """Partition state for a write transaction, through the env's write-path cache.

    The returned object is mutated in place by appends; the cache is dropped
    when the transaction aborts (see ``Env.abort``).
    """
    st = env.state_cache.get(pid) if txn is env.fresh_txn else None
    if st is None:
        st = env.state_cache[pid] = load_state(txn, env.dbs, pid)
    return st


def store_state(txn: Any, dbs: dict[str, Any], pid: int, st: PartitionState) -> None:
    txn.put(pid_key(pid), _STATE.pack(st.start, st.next, st.bytes, st.first_ts, st.last_ts, 0),
            db=dbs["partitions"])


def put_batch(txn: Any, dbs: dict[str, Any], pid: int, base_offset: int, batch: bytes) -> None:
    """Store one encoded batch at ``base_offset`` (the caller updates the partition state)."""
    txn.put(record_key(pid, base_offset), batch, db=dbs["records"])


def append_batches(txn: Any, dbs: dict[str, Any], pid: int, batches: list[bytes],
                   st: PartitionState) -> int:
    """Append encoded batches at the partition's end; return the first offset.

    ``st`` is updated in place; the caller stores it (once per transaction).
    """
    base = st.next
    rdb = dbs["records"]
    put = txn.put
    header = _core.batch_header
    for b in batches:
        _, _, count, base_ts, max_ts, _, _ = header(b)
        put(record_key(pid, st.next), b, db=rdb)
        st.next += count
        st.bytes += len(b)
        if st.first_ts < 0:
            st.first_ts = base_ts
        st.last_ts = max(st.last_ts, max_ts)
    return base


class PartitionScan(msgspec.Struct):
    """What :func:`scan_partition` found in one partition's stored batches."""

    batches: int = 0
    records: int = 0
    bytes: int = 0
    first: int | None = None  # the base offset of the first batch (None: no batch)
    end: int | None = None  # the offset after the last valid batch (None: none valid)
    problems: list[tuple[int, str]] = []  # (base offset, what is wrong)


def scan_partition(txn: Any, dbs: dict[str, Any], pid: int) -> PartitionScan:
    """Validate every stored batch of partition id ``pid`` (``mqlite verify``).

    Each batch is checked whole (magic, lengths, CRC, record structure: the
    C validator); consecutive batches must be dense.  Problems are collected,
    not raised, so one scan reports them all.
    """
    out = PartitionScan()
    cur = txn.cursor(db=dbs["records"])
    expect: int | None = None
    if cur.set_range(record_key(pid, 0)):
        for k, v in cur:
            kpid, base = RECORD.unpack(k)
            if kpid != pid:
                break
            if out.first is None:
                out.first = base
            out.batches += 1
            out.bytes += len(v)
            try:
                n = _core.validate_batch(v)
            except CorruptRecordError as exc:
                out.problems.append((base, str(exc)))
                expect = None
                continue
            if expect is not None and base != expect:
                out.problems.append((base, f"gap: expected a batch at {expect}"))
            expect = base + n
            out.records += n
    out.end = expect
    return out


def _corrupt(exc: CorruptRecordError, topic: str, partition: int,
             offset: int) -> CorruptRecordError:
    return CorruptRecordError(str(exc), topic=topic, partition=partition, offset=offset)


def read_records(txn: Any, dbs: dict[str, Any], pid: int, from_offset: int, max_records: int,
                 out: list, topic: str, partition: int, end_offset: int | None = None) -> int:
    """Decode records of partition ``pid`` starting at ``from_offset`` into ``out``.

    Reads at most ``max_records`` records and never past ``end_offset`` (when
    given).  Returns the offset after the last record decoded (``from_offset``
    when nothing was read).  Every batch's CRC and structure are verified;
    a corrupt batch raises :class:`CorruptRecordError` naming topic, partition
    and the batch's base offset.
    """
    if max_records <= 0:
        return from_offset
    cur = txn.cursor(db=dbs["records"])
    key = record_key(pid, from_offset)
    found = cur.set_range(key)
    if not found or cur.key() != key:
        # Not an exact batch start: the batch holding from_offset is the floor,
        # one step back (keys of lower partitions are skipped below).
        stepped = cur.prev() if found else cur.last()
        if not stepped and not cur.set_range(key):
            return from_offset
    pos = from_offset
    want = max_records
    decode = _core.decode_batch
    unpack = RECORD.unpack
    seen = False  # a batch of this partition was decoded: the next one must start at pos
    while True:
        k = cur.key()
        if len(k) != 12:
            raise CorruptRecordError("record key of bad length", topic=topic, partition=partition)
        kpid, base = unpack(k)
        if kpid != pid:
            if kpid < pid:
                if not cur.next():
                    break
                continue
            break
        if end_offset is not None and base >= end_offset:
            if base != pos and seen:
                _gap(topic, partition, pos, base)
            break
        # Offsets are dense: a batch that does not start where the previous one
        # ended is a damaged key (or a lost batch).  Before the first batch a
        # start past from_offset is fine only below the partition's start
        # (retention), checked off the hot path.
        if base != pos and (seen or (base > pos
                                     and from_offset >= load_state(txn, dbs, pid).start)):
            _gap(topic, partition, pos, base)
        before = len(out)
        try:
            decode(cur.value(), topic, partition, base, pos, want, out)
        except CorruptRecordError as exc:
            raise _corrupt(exc, topic, partition, base) from None
        got = len(out) - before
        if got:
            pos = out[-1].offset + 1
            want -= got
            if want <= 0:
                return pos
            seen = True
        if not cur.next():
            break
    # The keys of this partition ran out before max_records: the log must end here.
    if seen and (end_offset is None or pos < end_offset):
        st = load_state(txn, dbs, pid)
        if st.start <= pos < (st.next if end_offset is None else min(end_offset, st.next)):
            _gap(topic, partition, pos, None)
    return pos


def _gap(topic: str, partition: int, expected: int, found: int | None) -> None:
    where = "no further batch" if found is None else f"the next batch starts at {found}"
    raise CorruptRecordError(
        f"offsets are not dense: expected a batch at offset {expected}, {where} "
        "(a damaged record key or a lost batch)",
        topic=topic, partition=partition, offset=expected)


def find_offset_for_time(txn: Any, dbs: dict[str, Any], pid: int, st: PartitionState,
                         timestamp_ms: int, topic: str, partition: int) -> tuple[int, int] | None:
    """First (offset, timestamp) whose timestamp >= ``timestamp_ms``, else ``None``.

    Batches whose ``max_timestamp`` is below the target are skipped by header.
    """
    cur = txn.cursor(db=dbs["records"])
    if not cur.set_range(record_key(pid, st.start)):
        if st.start < st.next:
            _gap(topic, partition, st.start, None)
        return None
    expect = st.start
    while True:
        k = cur.key()
        kpid, base = RECORD.unpack(k)
        if kpid != pid:
            if expect < st.next:
                _gap(topic, partition, expect, None)
            return None
        if base != expect:
            _gap(topic, partition, expect, base)
        val = cur.value()
        try:
            hdr = _core.batch_header(val)
            expect = base + hdr[2]
            if hdr[4] >= timestamp_ms:
                off = _core.first_offset_at_or_after(val, base, timestamp_ms)
                if off >= 0:
                    msgs = _core.decode_batch(val, topic, partition, base, off, 1)
                    return off, msgs[0].timestamp_ms
        except CorruptRecordError as exc:
            raise _corrupt(exc, topic, partition, base) from None
        if not cur.next():
            if expect < st.next:
                _gap(topic, partition, expect, None)
            return None


def _delete_head_batch(txn: Any, dbs: dict[str, Any], pid: int, st: PartitionState,
                       cur: Any) -> bool:
    """Delete the batch under ``cur`` (the partition's head); advance ``st``."""
    k = cur.key()
    kpid, base = RECORD.unpack(k)
    if kpid != pid:
        return False
    val = cur.value()
    try:
        _, _, count, _, _, _, _ = _core.batch_header(val)
    except CorruptRecordError:
        count = 0  # unreadable head: drop it and resynchronize from the next key
    size = len(val)
    cur.delete()  # moves the cursor to the next item
    st.bytes = max(0, st.bytes - size)
    st.start = max(st.start, base + count)
    # The next key (if any) is the new start, whatever the counts said.
    k2 = cur.key()
    if k2 and len(k2) == 12:
        kp2, b2 = RECORD.unpack(k2)
        if kp2 == pid:
            st.start = b2
            try:
                st.first_ts = _core.batch_header(cur.value())[3]
            except CorruptRecordError:
                pass
            return True
    st.start = st.next
    st.first_ts = -1
    st.last_ts = -1
    return True


def apply_retention(txn: Any, dbs: dict[str, Any], pid: int, st: PartitionState,
                    cfg: TopicConfig, now_ms: int, keep_from: int | None = None) -> int:
    """Delete whole batches from the head that the topic's retention rules expire.

    A batch is deleted when its newest record is older than ``retention_ms``,
    or while the partition exceeds ``retention_bytes`` / ``retention_messages``,
    or (``keep_from`` given, for ``cleanup="consumed"``) when it lies entirely
    below ``keep_from``.  Never deletes the batch holding the last record
    written unless the limits demand it.  Returns the number of batches deleted.
    """
    if (cfg.retention_ms is None and cfg.retention_bytes is None
            and cfg.retention_messages is None and keep_from is None):
        return 0
    cur = txn.cursor(db=dbs["records"])
    deleted = 0
    while st.next > st.start:
        if not cur.set_range(record_key(pid, st.start)):
            break
        k = cur.key()
        kpid, base = RECORD.unpack(k)
        if kpid != pid:
            break
        val = cur.value()
        try:
            _, _, count, _, max_ts, _, _ = _core.batch_header(val)
        except CorruptRecordError:
            count, max_ts = 0, -1
        expire = False
        if cfg.retention_ms is not None and max_ts < now_ms - cfg.retention_ms or cfg.retention_bytes is not None and st.bytes > cfg.retention_bytes or cfg.retention_messages is not None and st.messages > cfg.retention_messages or keep_from is not None and base + count <= keep_from:
            expire = True
        if not expire:
            break
        if not _delete_head_batch(txn, dbs, pid, st, cur):
            break
        deleted += 1
    return deleted


def prefix_keys(txn: Any, db: Any, prefix: bytes) -> list[bytes]:
    """Every key of ``db`` that starts with ``prefix``, in key order."""
    return [k for k, _ in prefix_items(txn, db, prefix, values=False)]


def prefix_items(txn: Any, db: Any, prefix: bytes,
                 values: bool = True) -> list[tuple[bytes, Any]]:
    """``(key, value)`` of every item of ``db`` whose key starts with ``prefix``.

    Values are whatever the transaction returns (zero-copy buffers in read
    transactions opened with ``buffers=True``); ``values=False`` skips them
    (``None`` in their place).
    """
    cur = txn.cursor(db=db)
    out: list[tuple[bytes, Any]] = []
    if not cur.set_range(prefix):
        return out
    it = cur.iternext(keys=True, values=values)
    for item in it:
        k = bytes(item[0] if values else item)
        if not k.startswith(prefix):
            break
        out.append((k, item[1] if values else None))
    return out


def drop_partition(txn: Any, dbs: dict[str, Any], pid: int) -> None:
    """Delete every batch and the state of partition ``pid``."""
    cur = txn.cursor(db=dbs["records"])
    prefix = pid_key(pid)
    if cur.set_range(prefix):
        while bytes(cur.key()[:4]) == prefix:
            if not cur.delete():
                break
            if not cur.key():
                break
    txn.delete(prefix, db=dbs["partitions"])


# -- topic catalog ----------------------------------------------------------------------

def topics_version(txn: Any, dbs: dict[str, Any]) -> int:
    raw = txn.get(b"topics_version", db=dbs["meta"])
    return 0 if raw is None else _U64.unpack(raw)[0]


def _bump_topics_version(txn: Any, dbs: dict[str, Any]) -> None:
    txn.put(b"topics_version", _U64.pack(topics_version(txn, dbs) + 1), db=dbs["meta"])


def get_topic(txn: Any, dbs: dict[str, Any], name: str) -> TopicRecord | None:
    raw = txn.get(name.encode(), db=dbs["topics"])
    if raw is None:
        return None
    try:
        return _topic_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptRecordError(f"topic record of {name!r} is unreadable: {exc}") from None


def list_topics(txn: Any, dbs: dict[str, Any]) -> list[str]:
    cur = txn.cursor(db=dbs["topics"])
    return [bytes(k).decode() for k in cur.iternext(keys=True, values=False)]


def iter_topics(txn: Any, dbs: dict[str, Any]) -> list[TopicRecord]:
    """Every topic record, sorted by name, in one cursor pass (for stats and metrics)."""
    out = []
    dec = _topic_decoder.decode
    for k, v in txn.cursor(db=dbs["topics"]).iternext(keys=True, values=True):
        try:
            out.append(dec(v))
        except msgspec.DecodeError as exc:
            raise CorruptRecordError(
                f"topic record of {bytes(k).decode(errors='replace')!r} is unreadable: "
                f"{exc}") from None
    return out


def set_topic_config(txn: Any, dbs: dict[str, Any], rec: TopicRecord,
                     cfg: TopicConfig) -> TopicRecord:
    """Store ``cfg`` as ``rec``'s configuration (same partitions); bumps the catalog version."""
    new = TopicRecord(name=rec.name, pids=rec.pids, config=cfg.to_dict(),
                      created_ms=rec.created_ms)
    txn.put(rec.name.encode(), _topic_encoder.encode(new), db=dbs["topics"])
    _bump_topics_version(txn, dbs)
    return new


def add_partitions(txn: Any, dbs: dict[str, Any], rec: TopicRecord, count: int) -> TopicRecord:
    """Give topic ``rec`` ``count`` more empty partitions, with fresh never-reused ids.

    Existing partitions and their data are untouched; the stored
    ``partitions`` setting follows.  Bumps the catalog version.
    """
    meta = dbs["meta"]
    raw = txn.get(b"next_partition_id", db=meta)
    first = 0 if raw is None else _U32.unpack(raw)[0]
    if first + count >= 1 << 32:
        raise StorageError("partition ids exhausted (2^32 created over the broker's life)")
    new_pids = list(range(first, first + count))
    txn.put(b"next_partition_id", _U32.pack(first + count), db=meta)
    for pid in new_pids:
        store_state(txn, dbs, pid, PartitionState())
    config = dict(rec.config)
    config["partitions"] = len(rec.pids) + count
    new = TopicRecord(name=rec.name, pids=list(rec.pids) + new_pids, config=config,
                      created_ms=rec.created_ms)
    txn.put(rec.name.encode(), _topic_encoder.encode(new), db=dbs["topics"])
    _bump_topics_version(txn, dbs)
    return new


def create_topic(txn: Any, dbs: dict[str, Any], name: str, cfg: TopicConfig,
                 now_ms: int) -> TopicRecord:
    """Create topic ``name`` with fresh, never-reused partition ids."""
    if txn.get(name.encode(), db=dbs["topics"]) is not None:
        raise TopicExistsError(f"topic {name!r} already exists")
    meta = dbs["meta"]
    raw = txn.get(b"next_partition_id", db=meta)
    first = 0 if raw is None else _U32.unpack(raw)[0]
    if first + cfg.partitions >= 1 << 32:
        raise StorageError("partition ids exhausted (2^32 created over the broker's life)")
    pids = list(range(first, first + cfg.partitions))
    txn.put(b"next_partition_id", _U32.pack(first + cfg.partitions), db=meta)
    for pid in pids:
        store_state(txn, dbs, pid, PartitionState())
    rec = TopicRecord(name=name, pids=pids, config=cfg.to_dict(), created_ms=now_ms)
    txn.put(name.encode(), _topic_encoder.encode(rec), db=dbs["topics"])
    _bump_topics_version(txn, dbs)
    return rec


def delete_topic(txn: Any, dbs: dict[str, Any], rec: TopicRecord) -> None:
    """Delete a topic, its partitions' records and state."""
    for pid in rec.pids:
        drop_partition(txn, dbs, pid)
    txn.delete(rec.name.encode(), db=dbs["topics"])
    _bump_topics_version(txn, dbs)
