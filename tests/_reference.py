"""Pure-Python reference ("oracle") for the codecs of ``mqlite._core``.

Written from ``docs/format.md`` and the contract in ``src/mqlite/_core.pyi``
only, never from ``csrc/``: the differential tests are worth something only
if the two implementations are independent.  Everything here is meant to be
read, not to be fast: a byte-at-a-time CRC table built from the bitwise
definition, one varint byte at a time, a fresh ``bytes`` for every field.

What the oracle checks when it validates a batch (each check raises
:class:`ReferenceCorrupt` with a short ``kind`` naming it):

* header: at least 43 bytes, magic ``0xB1``, ``length == len(data)``,
  attribute bits 3-15 zero (``batch_header``); compression codec (bits 0-2)
  zero (``validate``/``decode``: a v1 decoder cannot read compressed records);
  ``record_count >= 1``;
* the CRC32C of bytes ``[5, length)``;
* every record: each varint at most 10 bytes and inside the batch, each length
  not larger than the bytes that remain, ``record_length`` equal to the bytes
  the fields take, record attributes ``0``, ``offset_delta`` equal to the
  record's index, key/value length ``>= -1``, header count and header lengths
  ``>= 0``, header names valid UTF-8, the first record's ``timestamp_delta``
  ``0`` (``base_timestamp`` is the timestamp of record 0);
* the batch: exactly ``record_count`` records ending exactly at ``length``,
  ``max_timestamp`` equal to the largest record timestamp.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BATCH_HEADER_SIZE",
    "BATCH_MAGIC",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Record",
    "ReferenceCorrupt",
    "ReferenceTooLarge",
    "batch_header",
    "crc32c",
    "crc32c_bitwise",
    "decode_batch",
    "decode_varint",
    "encode_batch",
    "encode_batches",
    "encode_varint",
    "first_offset_at_or_after",
    "murmur2",
    "partition_for_key",
    "validate_batch",
    "with_fixed_crc",
]

BATCH_MAGIC = 0xB1
BATCH_HEADER_SIZE = 43
DEFAULT_MAX_BATCH_BYTES = 262144
DEFAULT_MAX_MESSAGE_BYTES = 8388608

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF

# magic(B) crc(I) length(I) attributes(H) record_count(I) base_ts(q) max_ts(q)
# producer_id(q) base_sequence(i) -- big-endian, 43 bytes.
_HEADER = struct.Struct(">BIIHIqqqi")
assert _HEADER.size == BATCH_HEADER_SIZE

# (offset, timestamp_ms, key, value, headers)
Record = tuple[int, int, "bytes | None", "bytes | None", "list[tuple[str, bytes]]"]


class ReferenceCorrupt(Exception):
    """The oracle's verdict that bytes are not a valid batch/varint.

    ``kind`` is a short machine-readable name of the failed check (``"crc"``,
    ``"length"``, ``"varint"``, ...), so tests can tell which rule fired.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class ReferenceTooLarge(ValueError):
    """A record is larger than ``max_message_bytes`` (``MessageTooLargeError`` in C)."""


# -- CRC32C --------------------------------------------------------------------

_CRC32C_POLY_REFLECTED = 0x82F63B78  # Castagnoli 0x1EDC6F41, bit-reversed


def crc32c_bitwise(data: Any, crc: int = 0) -> int:
    """CRC32C of ``data`` continuing from a previous result ``crc``, one bit at a time.

    The definition: reflected input and output, initial value and final xor
    0xFFFFFFFF.  Far too slow for big batches; :func:`crc32c` uses a table
    derived from this.
    """
    c = (crc & _U32) ^ _U32
    for byte in _as_bytes(data, "data"):
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ _CRC32C_POLY_REFLECTED if c & 1 else c >> 1
    return c ^ _U32


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _CRC32C_POLY_REFLECTED if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC32C of ``data`` continuing from ``crc``: the byte-at-a-time table form."""
    c = (crc & _U32) ^ _U32
    table = _CRC_TABLE
    for byte in _as_bytes(data, "data"):
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ _U32


# -- murmur2 (Kafka) -----------------------------------------------------------


def _to_int32(x: int) -> int:
    x &= _U32
    return x - (1 << 32) if x & 0x80000000 else x


def murmur2(data: Any) -> int:
    """Kafka's ``Utils.murmur2``: seed 0x9747b28c, result as a signed 32-bit int.

    Java arithmetic on ``int`` wraps modulo 2**32 and ``>>>`` is a logical
    shift, so everything is done on unsigned 32-bit values here.
    """
    buf = _as_bytes(data, "data")
    m = 0x5BD1E995
    r = 24
    length = len(buf)
    h = (0x9747B28C ^ length) & _U32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = buf[i] | buf[i + 1] << 8 | buf[i + 2] << 16 | buf[i + 3] << 24
        k = (k * m) & _U32
        k ^= k >> r
        k = (k * m) & _U32
        h = (h * m) & _U32
        h ^= k
    tail = length % 4
    # Java switch fall-through: 3 -> 2 -> 1, multiplication only once.
    if tail >= 3:
        h ^= buf[whole + 2] << 16
    if tail >= 2:
        h ^= buf[whole + 1] << 8
    if tail >= 1:
        h ^= buf[whole]
        h = (h * m) & _U32
    h ^= h >> 13
    h = (h * m) & _U32
    h ^= h >> 15
    return _to_int32(h)


def partition_for_key(key: Any, partitions: int) -> int:
    """The partition Kafka's Java client picks: ``toPositive(murmur2(key)) % n``."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- varints -------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """ZigZag then LEB128 (little-endian groups of 7 bits, high bit = more)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("varint out of int64 range")
    z = ((value << 1) ^ (value >> 63)) & _U64
    out = bytearray()
    while True:
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7


def decode_varint(data: Any, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``pos``: ``(value, next_pos)``.

    At most 10 bytes; the 10th byte may only carry bit 63 of the zig-zag value
    (``0x00`` or ``0x01``), anything more does not fit in 64 bits and is
    rejected as corrupt.  Non-minimal encodings (``80 00`` for 0) are accepted:
    LEB128 allows them and so does Kafka.
    """
    buf = _as_bytes(data, "data")
    if pos < 0:
        raise ValueError("pos must be >= 0")
    return _decode_varint(buf, pos, len(buf))


def _decode_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    z = 0
    for i in range(10):
        if pos + i >= end:
            raise ReferenceCorrupt("varint", f"truncated varint at {pos}")
        byte = buf[pos + i]
        if i == 9 and byte > 0x01:
            raise ReferenceCorrupt("varint", f"varint at {pos} overflows 64 bits")
        z |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            value = (z >> 1) ^ -(z & 1)
            return value, pos + i + 1
    raise ReferenceCorrupt("varint", f"varint at {pos} longer than 10 bytes")


# -- record batches: encoding --------------------------------------------------


def _as_bytes(obj: Any, what: str) -> bytes:
    if isinstance(obj, str):
        raise TypeError(f"{what} must be bytes-like, not str (encode it first)")
    try:
        return bytes(memoryview(obj))
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(obj).__name__}") from None


def _normalise(
    values: Sequence[Any],
    keys: Sequence[Any] | None,
    headers: Sequence[Any] | None,
    timestamps: int | Sequence[int] | None,
    default_timestamp_ms: int,
) -> list[tuple[int, bytes | None, bytes | None, list[tuple[bytes, bytes]]]]:
    """Check arguments; return ``(timestamp, key, value, [(name_utf8, value)])`` rows."""
    n = len(values)
    if n == 0:
        raise ValueError("values must not be empty")
    if keys is not None and len(keys) != n:
        raise ValueError("keys and values differ in length")
    if headers is not None and len(headers) != n:
        raise ValueError("headers and values differ in length")
    if timestamps is None:
        ts_list = [default_timestamp_ms] * n
    elif isinstance(timestamps, int):
        ts_list = [timestamps] * n
    else:
        ts_list = list(timestamps)
        if len(ts_list) != n:
            raise ValueError("timestamps and values differ in length")
    rows = []
    for i in range(n):
        value = None if values[i] is None else _as_bytes(values[i], "value")
        key = None
        if keys is not None and keys[i] is not None:
            key = _as_bytes(keys[i], "key")
        hdrs = []
        if headers is not None and headers[i] is not None:
            for name, hvalue in headers[i]:
                if not isinstance(name, str):
                    raise TypeError("header names must be str")
                hdrs.append((name.encode("utf-8"), _as_bytes(hvalue, "header value")))
        rows.append((ts_list[i], key, value, hdrs))
    return rows


def _encode_record(
    index: int,
    ts_delta: int,
    key: bytes | None,
    value: bytes | None,
    hdrs: list[tuple[bytes, bytes]],
) -> bytes:
    body = bytearray()
    body += encode_varint(0)  # record attributes (reserved)
    body += encode_varint(ts_delta)
    body += encode_varint(index)  # offset_delta
    for field in (key, value):
        if field is None:
            body += encode_varint(-1)
        else:
            body += encode_varint(len(field)) + field
    body += encode_varint(len(hdrs))
    for name, hvalue in hdrs:
        body += encode_varint(len(name)) + name
        body += encode_varint(len(hvalue)) + hvalue
    return encode_varint(len(body)) + bytes(body)


def _assemble(
    rows: list[tuple[int, bytes | None, bytes | None, list[tuple[bytes, bytes]]]],
    producer_id: int,
    base_sequence: int,
) -> bytes:
    base_ts = rows[0][0]
    records = b"".join(
        _encode_record(i, ts - base_ts, key, value, hdrs)
        for i, (ts, key, value, hdrs) in enumerate(rows)
    )
    max_ts = max(ts for ts, _, _, _ in rows)
    length = BATCH_HEADER_SIZE + len(records)
    header = _HEADER.pack(
        BATCH_MAGIC, 0, length, 0, len(rows), base_ts, max_ts, producer_id, base_sequence
    )
    return with_fixed_crc(header + records)


def encode_batch(
    values: Sequence[Any],
    keys: Sequence[Any] | None = None,
    headers: Sequence[Any] | None = None,
    timestamps: int | Sequence[int] | None = None,
    *,
    default_timestamp_ms: int = 0,
    producer_id: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """All records in one v1 batch (no size cut, no size cap)."""
    rows = _normalise(values, keys, headers, timestamps, default_timestamp_ms)
    return _assemble(rows, producer_id, base_sequence)


def _message_size(row: tuple[int, bytes | None, bytes | None, list[tuple[bytes, bytes]]]) -> int:
    _, key, value, hdrs = row
    return (
        len(key or b"") + len(value or b"") + sum(len(name) + len(hvalue) for name, hvalue in hdrs)
    )


def encode_batches(
    values: Sequence[Any],
    keys: Sequence[Any] | None = None,
    headers: Sequence[Any] | None = None,
    timestamps: int | Sequence[int] | None = None,
    *,
    default_timestamp_ms: int = 0,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    producer_id: int = -1,
    base_sequence: int = -1,
) -> list[bytes]:
    """Cut records greedily into consecutive batches of at most ``max_batch_bytes``.

    A batch takes records in order while header + records still fit; the
    record that does not fit starts the next batch (and sits alone in it when
    it is bigger than ``max_batch_bytes`` by itself).  A record's size depends
    on its batch (its timestamp delta is taken from the batch's first record),
    so sizes are computed against the batch being filled.

    ``base_sequence`` (when not ``-1``) is the sequence of the first record, as
    in Kafka: batch ``i`` carries ``base_sequence`` plus the number of records
    in batches ``0..i-1``.
    """
    rows = _normalise(values, keys, headers, timestamps, default_timestamp_ms)
    for i, row in enumerate(rows):
        if _message_size(row) > max_message_bytes:
            raise ReferenceTooLarge(f"record {i} is larger than max_message_bytes")
    batches: list[bytes] = []
    start = 0
    while start < len(rows):
        base_ts = rows[start][0]
        size = BATCH_HEADER_SIZE
        end = start
        while end < len(rows):
            ts, key, value, hdrs = rows[end]
            rec = len(_encode_record(end - start, ts - base_ts, key, value, hdrs))
            if end > start and size + rec > max_batch_bytes:
                break
            size += rec
            end += 1
        seq = base_sequence if base_sequence == -1 else base_sequence + start
        batches.append(_assemble(rows[start:end], producer_id, seq))
        start = end
    return batches


def with_fixed_crc(batch: bytes | bytearray) -> bytes:
    """``batch`` with its CRC field recomputed over ``[5, len)``.

    Used to build CRC-correct but otherwise arbitrary batches for tests.
    """
    buf = bytearray(batch)
    struct.pack_into(">I", buf, 1, crc32c(bytes(buf[5:])))
    return bytes(buf)


# -- record batches: decoding and validation -----------------------------------


def batch_header(data: Any) -> tuple[int, int, int, int, int, int, int]:
    """``(length, attributes, record_count, base_ts, max_ts, producer_id, base_sequence)``.

    Checks magic, length, reserved attribute bits 3-15 and ``record_count >= 1``;
    not the CRC and not the records.
    """
    buf = _as_bytes(data, "data")
    if len(buf) < BATCH_HEADER_SIZE:
        raise ReferenceCorrupt("length", f"{len(buf)} bytes is shorter than a batch header")
    magic, _crc, length, attributes, count, base_ts, max_ts, pid, seq = _HEADER.unpack_from(buf)
    if magic != BATCH_MAGIC:
        raise ReferenceCorrupt("magic", f"magic 0x{magic:02x}")
    if length != len(buf):
        raise ReferenceCorrupt("length", f"length field {length} != {len(buf)} bytes")
    if attributes & ~0x7:
        raise ReferenceCorrupt("attributes", f"reserved attribute bits set: 0x{attributes:04x}")
    if count < 1:
        raise ReferenceCorrupt("record_count", "record_count is 0")
    return length, attributes, count, base_ts, max_ts, pid, seq


class _Reader:
    """Cursor over the records area that never reads past ``end``."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def varint(self) -> int:
        value, nxt = _decode_varint(self.buf, self.pos, self.end)
        self.pos = nxt
        return value

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise ReferenceCorrupt("bounds", f"{what} of {n} bytes runs past the record")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _parse_records(buf: bytes, header: tuple[int, ...]) -> list[tuple[int, int, Any, Any, Any]]:
    """Every record as ``(offset_delta, timestamp, key, value, headers)``, fully checked."""
    length, attributes, count, base_ts, max_ts, _pid, _seq = header
    if attributes & 0x7:
        raise ReferenceCorrupt("codec", f"compression codec {attributes & 0x7} not supported")
    outer = _Reader(buf, BATCH_HEADER_SIZE, length)
    records: list[tuple[int, int, Any, Any, Any]] = []
    seen_max = None
    while outer.pos < length:
        index = len(records)
        if index >= count:
            raise ReferenceCorrupt("record_count", "bytes left after record_count records")
        rec_len = outer.varint()
        if rec_len < 0:
            raise ReferenceCorrupt("record_length", f"record {index}: negative length")
        if rec_len > length - outer.pos:
            raise ReferenceCorrupt("bounds", f"record {index} runs past the batch")
        r = _Reader(buf, outer.pos, outer.pos + rec_len)
        if r.varint() != 0:
            raise ReferenceCorrupt("record_attributes", f"record {index}: attributes not 0")
        ts_delta = r.varint()
        if index == 0 and ts_delta != 0:
            raise ReferenceCorrupt("base_timestamp", "record 0 timestamp != base_timestamp")
        if r.varint() != index:
            raise ReferenceCorrupt("offset_delta", f"record {index}: offset_delta not dense")
        fields = []
        for what in ("key", "value"):
            n = r.varint()
            if n < -1:
                raise ReferenceCorrupt("field_length", f"record {index}: {what} length {n}")
            fields.append(None if n == -1 else r.take(n, what))
        n_headers = r.varint()
        if n_headers < 0:
            raise ReferenceCorrupt("header_count", f"record {index}: header count {n_headers}")
        hdrs = []
        for _ in range(n_headers):
            n = r.varint()
            if n < 0:
                raise ReferenceCorrupt("field_length", f"record {index}: header name length {n}")
            raw_name = r.take(n, "header name")
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise ReferenceCorrupt("utf8", f"record {index}: header name not UTF-8") from None
            n = r.varint()
            if n < 0:
                raise ReferenceCorrupt("field_length", f"record {index}: header value length {n}")
            hdrs.append((name, r.take(n, "header value")))
        if r.pos != r.end:
            raise ReferenceCorrupt("record_length", f"record {index}: length != fields")
        outer.pos = r.end
        ts = base_ts + ts_delta
        if not INT64_MIN <= ts <= INT64_MAX:
            raise ReferenceCorrupt("timestamp", f"record {index}: timestamp overflows int64")
        seen_max = ts if seen_max is None else max(seen_max, ts)
        records.append((index, ts, fields[0], fields[1], hdrs))
    if len(records) != count:
        raise ReferenceCorrupt("record_count", f"{len(records)} records, header says {count}")
    if seen_max != max_ts:
        raise ReferenceCorrupt("max_timestamp", f"max_timestamp {max_ts} != {seen_max}")
    return records


def _checked(data: Any, verify_crc: bool) -> tuple[bytes, list[tuple[int, int, Any, Any, Any]]]:
    buf = _as_bytes(data, "data")
    header = batch_header(buf)
    if verify_crc:
        stored = struct.unpack_from(">I", buf, 1)[0]
        if crc32c(buf[5:]) != stored:
            raise ReferenceCorrupt("crc", "CRC32C mismatch")
    return buf, _parse_records(buf, header)


def validate_batch(data: Any) -> int:
    """Deep validation (CRC and every record); returns the record count."""
    _, records = _checked(data, verify_crc=True)
    return len(records)


def decode_batch(
    data: Any,
    base_offset: int,
    from_offset: int = 0,
    max_records: int = -1,
    verify_crc: bool = True,
) -> list[Record]:
    """Records as ``(offset, timestamp_ms, key, value, headers)`` tuples.

    The whole batch is validated first (structure always, CRC unless
    ``verify_crc`` is false), then records with ``offset < from_offset`` are
    skipped and at most ``max_records`` returned (``-1`` = all).
    """
    _, records = _checked(data, verify_crc)
    out: list[Record] = []
    for delta, ts, key, value, hdrs in records:
        offset = base_offset + delta
        if offset < from_offset:
            continue
        if max_records >= 0 and len(out) >= max_records:
            break
        out.append((offset, ts, key, value, hdrs))
    return out


def first_offset_at_or_after(data: Any, base_offset: int, timestamp_ms: int) -> int:
    """Offset of the first record with ``timestamp >= timestamp_ms``, else ``-1``."""
    for offset, ts, _key, _value, _hdrs in decode_batch(data, base_offset):
        if ts >= timestamp_ms:
            return offset
    return -1
