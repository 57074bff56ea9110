"""Golden vectors: fixed inputs with known outputs that pin compatibility.

Every vector is checked against ``mqlite._core`` and against the pure-Python
oracle (``tests/_reference.py``), so a vector that is wrong in this file fails
on both.  The frozen batches pin the v1 byte format of ``docs/format.md``: if
one of them changes, the format changed, and that must be deliberate (new
magic/version, a note in docs/format.md, a new frozen batch next to the old).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _reference as ref
import pytest

from mqlite import _core
from mqlite.errors import CorruptRecordError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# -- CRC32C --------------------------------------------------------------------


def _crc_impls() -> dict[str, Callable[..., int]]:
    return {
        "core": _core.crc32c,
        "core_sw": _core.crc32c_sw,
        "core_hw": _core.crc32c_hw,
        "reference": ref.crc32c,
        "reference_bitwise": ref.crc32c_bitwise,
    }


@pytest.fixture(params=sorted(_crc_impls()))
def crc_impl(request: pytest.FixtureRequest) -> Callable[..., int]:
    if request.param == "core_hw" and not _core.crc32c_hw_available():
        pytest.skip("CPU without SSE4.2 CRC32 instruction")
    return _crc_impls()[request.param]


# RFC 3720 (iSCSI) appendix B.4 vectors and the standard check value.
CRC32C_VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize(("data", "expected"), CRC32C_VECTORS, ids=lambda v: repr(v)[:20])
def test_crc32c_vectors(crc_impl: Callable[..., int], data: bytes, expected: int) -> None:
    assert crc_impl(data) == expected


def test_crc32c_continues_from_previous_result(crc_impl: Callable[..., int]) -> None:
    data = b"The quick brown fox jumps over the lazy dog" * 3
    whole = crc_impl(data)
    for cut in range(len(data) + 1):
        assert crc_impl(data[cut:], crc_impl(data[:cut])) == whole
    assert crc_impl(b"", whole) == whole


def test_crc32c_hw_unavailable_raises_runtime_error() -> None:
    if _core.crc32c_hw_available():
        pytest.skip("CPU has the SSE4.2 CRC32 instruction")
    with pytest.raises(RuntimeError):
        _core.crc32c_hw(b"123456789")


# -- Kafka murmur2 ---------------------------------------------------------------

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
MURMUR2_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize("impl", [_core.murmur2, ref.murmur2], ids=["core", "reference"])
@pytest.mark.parametrize(("key", "expected"), MURMUR2_VECTORS, ids=lambda v: repr(v)[:20])
def test_murmur2_kafka_vectors(impl: Callable[[bytes], int], key: bytes, expected: int) -> None:
    assert impl(key) == expected


@pytest.mark.parametrize(
    "impl", [_core.partition_for_key, ref.partition_for_key], ids=["core", "reference"]
)
def test_partition_for_key_matches_kafka(impl: Callable[[bytes, int], int]) -> None:
    # (-790332482 & 0x7fffffff) % 50
    assert impl(b"foobar", 50) == 16
    assert impl(b"foobar", 1) == 0


# -- varints -------------------------------------------------------------------

# Every byte-length boundary of a zig-zag varint: an n-byte varint holds
# -2**(7n-1) .. 2**(7n-1)-1; one step outside needs n+1 bytes.
VARINT_LENGTHS = [
    (0, 1), (-1, 1), (1, 1),
    (63, 1), (-64, 1), (64, 2), (-65, 2),
    (2**13 - 1, 2), (-(2**13), 2), (2**13, 3), (-(2**13) - 1, 3),
    (2**20 - 1, 3), (-(2**20), 3), (2**20, 4), (-(2**20) - 1, 4),
    (2**27 - 1, 4), (-(2**27), 4), (2**27, 5), (-(2**27) - 1, 5),
    (2**34 - 1, 5), (-(2**34), 5), (2**34, 6), (-(2**34) - 1, 6),
    (2**41 - 1, 6), (-(2**41), 6), (2**41, 7), (-(2**41) - 1, 7),
    (2**48 - 1, 7), (-(2**48), 7), (2**48, 8), (-(2**48) - 1, 8),
    (2**55 - 1, 8), (-(2**55), 8), (2**55, 9), (-(2**55) - 1, 9),
    (2**62 - 1, 9), (-(2**62), 9), (2**62, 10), (-(2**62) - 1, 10),
    (INT64_MAX, 10), (INT64_MIN, 10),
]  # fmt: skip

VARINT_BYTES = [
    (0, "00"),
    (-1, "01"),
    (1, "02"),
    (63, "7e"),
    (-64, "7f"),
    (64, "8001"),
    (-65, "8101"),
    (150, "ac02"),
    (8191, "fe7f"),
    (-8192, "ff7f"),
    (8192, "808001"),
    (2**62 - 1, "feffffffffffffff7f"),
    (2**62, "80808080808080808001"),
    (INT64_MAX, "feffffffffffffffff01"),
    (INT64_MIN, "ffffffffffffffffff01"),
]

VARINT_IMPLS = pytest.mark.parametrize(
    ("encode", "decode"),
    [(_core.encode_varint, _core.decode_varint), (ref.encode_varint, ref.decode_varint)],
    ids=["core", "reference"],
)


@VARINT_IMPLS
@pytest.mark.parametrize(("value", "length"), VARINT_LENGTHS, ids=str)
def test_varint_length_boundaries(
    encode: Callable[[int], bytes], decode: Callable[..., tuple[int, int]], value: int, length: int
) -> None:
    encoded = encode(value)
    assert len(encoded) == length
    assert decode(encoded) == (value, length)
    assert decode(b"\xaa" + encoded + b"\x00", 1) == (value, length + 1)


@VARINT_IMPLS
@pytest.mark.parametrize(("value", "hex_bytes"), VARINT_BYTES, ids=str)
def test_varint_exact_bytes(
    encode: Callable[[int], bytes],
    decode: Callable[..., tuple[int, int]],
    value: int,
    hex_bytes: str,
) -> None:
    assert encode(value) == bytes.fromhex(hex_bytes)
    assert decode(bytes.fromhex(hex_bytes)) == (value, len(hex_bytes) // 2)


def test_varint_lengths_cover_every_size() -> None:
    assert {length for _, length in VARINT_LENGTHS} == set(range(1, 11))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "80",
        "ff",
        "808080",
        "ffffffffffffffffff",
        "80808080808080808080",
        "8080808080808080808000",
    ],
    ids=[
        "empty",
        "truncated-1",
        "truncated-ff",
        "truncated-3",
        "truncated-9",
        "11-bytes",
        "11-bytes-end",
    ],
)
def test_varint_corrupt_raises(raw: str) -> None:
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(bytes.fromhex(raw))
    with pytest.raises(ref.ReferenceCorrupt):
        ref.decode_varint(bytes.fromhex(raw))


def test_varint_pos_at_end_is_truncated() -> None:
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(b"\x02", 1)


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 2**64])
def test_varint_encode_out_of_int64_range(value: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        _core.encode_varint(value)


# -- frozen record batches -------------------------------------------------------

# Three records: a null key, an empty key (with an empty value and a negative
# timestamp delta), and a key with two headers of the same non-ASCII name.
FROZEN_ARGS: dict[str, Any] = {
    "values": [b"order created", b"", b"\x00\xffpayload"],
    "keys": [None, b"", b"order-42"],
    "headers": [None, [], [("ключ-🔑", b"v1"), ("ключ-🔑", b"")]],
    "timestamps": [1_700_000_000_000, 1_699_999_999_000, 1_700_000_000_500],
    "producer_id": 1_234_567_890_123,
    "base_sequence": 42,
}
FROZEN_BATCH = bytes.fromhex(
    # header: magic, crc, length=128, attributes, record_count=3
    "b1 38612a0b 00000080 0000 00000003"
    # base_timestamp, max_timestamp, producer_id, base_sequence
    " 0000018bcfe56800 0000018bcfe569f4 0000011f71fb04cb 0000002a"
    # record 0: len=19 attrs=0 ts_delta=0 offset_delta=0 key=null value="order created" headers=0
    " 26 00 00 00 01 1a 6f726465722063726561746564 00"
    # record 1: len=7 attrs=0 ts_delta=-1000 offset_delta=1 key="" value="" headers=0
    " 0e 00 cf0f 02 00 00 00"
    # record 2: len=56 attrs=0 ts_delta=500 offset_delta=2 key="order-42" value=00ff"payload"
    " 70 00 e807 04 10 6f726465722d3432 12 00ff7061796c6f6164"
    #   2 headers: "ключ-🔑"="v1", "ключ-🔑"=""
    " 04 1a d0bad0bbd18ed1872df09f9491 04 7631 1a d0bad0bbd18ed1872df09f9491 00"
)
FROZEN_HEADER = (128, 0, 3, 1_700_000_000_000, 1_700_000_000_500, 1_234_567_890_123, 42)
FROZEN_BASE_OFFSET = 1000
FROZEN_RECORDS = [
    (1000, 1_700_000_000_000, None, b"order created", []),
    (1001, 1_699_999_999_000, b"", b"", []),
    (
        1002,
        1_700_000_000_500,
        b"order-42",
        b"\x00\xffpayload",
        [("ключ-🔑", b"v1"), ("ключ-🔑", b"")],
    ),
]

# The smallest batch: one record, every argument defaulted.
MINIMAL_BATCH = bytes.fromhex(
    "b1 5bd66924 00000033 0000 00000001"
    " 0000000000000000 0000000000000000 ffffffffffffffff ffffffff"
    # len=7 attrs=0 ts_delta=0 offset_delta=0 key=null value="x" headers=0
    " 0e 00 00 00 01 02 78 00"
)


def _as_tuples(messages: list[_core.Message]) -> list[tuple[object, ...]]:
    return [(m.offset, m.timestamp_ms, m.key, m.value, m.headers) for m in messages]


@pytest.mark.parametrize(
    "encode", [_core.encode_batch, ref.encode_batch], ids=["core", "reference"]
)
def test_frozen_batch_encoding(encode: Callable[..., bytes]) -> None:
    assert encode(**FROZEN_ARGS) == FROZEN_BATCH
    assert encode([b"x"]) == MINIMAL_BATCH


def test_frozen_batch_encode_batches_is_one_batch() -> None:
    assert _core.encode_batches(**FROZEN_ARGS) == [FROZEN_BATCH]
    assert ref.encode_batches(**FROZEN_ARGS) == [FROZEN_BATCH]


def test_frozen_batch_crc_covers_everything_after_the_crc_field() -> None:
    stored = int.from_bytes(FROZEN_BATCH[1:5], "big")
    assert stored == ref.crc32c(FROZEN_BATCH[5:]) == _core.crc32c(FROZEN_BATCH[5:])


def test_frozen_batch_header() -> None:
    assert _core.batch_header(FROZEN_BATCH) == FROZEN_HEADER
    assert ref.batch_header(FROZEN_BATCH) == FROZEN_HEADER
    assert _core.batch_header(MINIMAL_BATCH) == (51, 0, 1, 0, 0, -1, -1)


def test_frozen_batch_validates() -> None:
    assert _core.validate_batch(FROZEN_BATCH) == 3
    assert ref.validate_batch(FROZEN_BATCH) == 3
    assert _core.validate_batch(MINIMAL_BATCH) == 1


@pytest.mark.parametrize("verify_crc", [True, False])
def test_frozen_batch_decoding(verify_crc: bool) -> None:
    messages = _core.decode_batch(
        FROZEN_BATCH, "orders", 7, FROZEN_BASE_OFFSET, verify_crc=verify_crc
    )
    assert all(type(m) is _core.Message for m in messages)
    assert all((m.topic, m.partition) == ("orders", 7) for m in messages)
    assert _as_tuples(messages) == FROZEN_RECORDS
    assert (
        ref.decode_batch(FROZEN_BATCH, FROZEN_BASE_OFFSET, verify_crc=verify_crc) == FROZEN_RECORDS
    )
    assert messages[2] == _core.Message(
        "orders", 7, 1002, 1_700_000_000_500, b"order-42", b"\x00\xffpayload",
        [("ключ-🔑", b"v1"), ("ключ-🔑", b"")],
    )  # fmt: skip


def test_frozen_batch_partial_decoding() -> None:
    decoded = _core.decode_batch(FROZEN_BATCH, "t", 0, FROZEN_BASE_OFFSET, from_offset=1001)
    assert _as_tuples(decoded) == FROZEN_RECORDS[1:]
    decoded = _core.decode_batch(FROZEN_BATCH, "t", 0, FROZEN_BASE_OFFSET, max_records=1)
    assert _as_tuples(decoded) == FROZEN_RECORDS[:1]
    out: list[_core.Message] = []
    assert _core.decode_batch(FROZEN_BATCH, "t", 0, FROZEN_BASE_OFFSET, out=out) is out
    assert _as_tuples(out) == FROZEN_RECORDS


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (0, 1000),
        (1_699_999_999_000, 1000),
        (1_700_000_000_000, 1000),
        (1_700_000_000_001, 1002),
        (1_700_000_000_500, 1002),
        (1_700_000_000_501, -1),
    ],
)
def test_frozen_batch_first_offset_at_or_after(timestamp: int, expected: int) -> None:
    assert _core.first_offset_at_or_after(FROZEN_BATCH, FROZEN_BASE_OFFSET, timestamp) == expected
    assert ref.first_offset_at_or_after(FROZEN_BATCH, FROZEN_BASE_OFFSET, timestamp) == expected


def test_batch_constants() -> None:
    assert _core.BATCH_MAGIC == ref.BATCH_MAGIC == 0xB1
    assert _core.BATCH_HEADER_SIZE == ref.BATCH_HEADER_SIZE == 43
    assert _core.DEFAULT_MAX_BATCH_BYTES == ref.DEFAULT_MAX_BATCH_BYTES == 262144
