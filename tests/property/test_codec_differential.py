"""Differential tests: ``mqlite._core`` must agree with the pure-Python oracle.

Hypothesis draws records (null vs empty keys, empty and large values, unicode
and repeated header names, negative timestamp deltas, many records) and every
codec entry point of the C core is compared with ``tests/_reference.py``,
byte for byte on encode and field for field on decode.  Run longer with
``HYPOTHESIS_PROFILE=slow``.
"""

from __future__ import annotations

import random
from typing import Any

import _reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqlite import _core
from mqlite.errors import CorruptRecordError, MessageTooLargeError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

HW = _core.crc32c_hw_available()


def as_tuples(messages: list[Any]) -> list[tuple[Any, ...]]:
    """``Message`` objects as the oracle's ``(offset, ts, key, value, headers)`` tuples."""
    return [(m.offset, m.timestamp_ms, m.key, m.value, m.headers) for m in messages]


# -- strategies ------------------------------------------------------------------


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Big payloads come from a seed, not from Hypothesis' byte stream: cheap to
# draw, still shrinkable in size.
large_values = st.builds(_random_bytes, st.integers(1024, 64 * 1024), st.integers(0, 2**32 - 1))
small_values = st.binary(max_size=48)
keys_st = st.one_of(st.none(), st.just(b""), st.binary(max_size=32))
header_names = st.one_of(
    # A small pool makes repeated names within one record common.
    st.sampled_from(["trace-id", "", "ключ", "🔑", "content-type", "ä" * 40]),
    st.text(st.characters(codec="utf-8"), max_size=16),
)
header_values = st.one_of(st.just(b""), st.binary(max_size=24))
record_headers = st.one_of(st.none(), st.lists(st.tuples(header_names, header_values), max_size=6))
timestamps_base = st.one_of(st.just(0), st.integers(0, 2**42), st.integers(-(2**44), 2**44))


@st.composite
def batch_args(
    draw: st.DrawFn, max_records: int = 30, null_values: bool = False, big: int = 2
) -> dict[str, Any]:
    """Keyword arguments for ``encode_batch``: one to ``max_records`` records.

    ``null_values`` lets values be ``None``: a null value (length -1) in the
    format, like a Kafka tombstone.  At most ``big`` values are large (1-64 KiB).
    """
    n = draw(st.integers(1, max_records))
    value_st = st.one_of(st.none(), small_values) if null_values else small_values
    values = draw(st.lists(value_st, min_size=n, max_size=n))
    for _ in range(draw(st.integers(0, big))):
        values[draw(st.integers(0, n - 1))] = draw(large_values)
    kwargs: dict[str, Any] = {"values": values}
    if draw(st.booleans()):
        kwargs["keys"] = draw(st.lists(keys_st, min_size=n, max_size=n))
    if draw(st.booleans()):
        kwargs["headers"] = draw(st.lists(record_headers, min_size=n, max_size=n))
    base = draw(timestamps_base)
    kind = draw(st.sampled_from(["none", "default", "one", "each"]))
    if kind == "default":
        kwargs["default_timestamp_ms"] = base
    elif kind == "one":
        kwargs["timestamps"] = base
    elif kind == "each":
        # Deltas of either sign, from tiny to ~35 years.
        deltas = st.one_of(st.integers(-1000, 1000), st.integers(-(2**40), 2**40))
        kwargs["timestamps"] = [base + d for d in draw(st.lists(deltas, min_size=n, max_size=n))]
    if draw(st.booleans()):
        kwargs["producer_id"] = draw(st.integers(INT64_MIN, INT64_MAX))
    if draw(st.booleans()):
        kwargs["base_sequence"] = draw(st.integers(0, 2**30))
    return kwargs


# -- encoding ----------------------------------------------------------------------


@given(batch_args(null_values=True))
def test_encode_batch_matches_reference(kwargs: dict[str, Any]) -> None:
    assert _core.encode_batch(**kwargs) == ref.encode_batch(**kwargs)


@given(batch_args(max_records=40, big=3), st.integers(ref.BATCH_HEADER_SIZE, 16 * 1024))
def test_encode_batches_matches_reference(kwargs: dict[str, Any], max_batch_bytes: int) -> None:
    kwargs.pop("base_sequence", None)  # sequences across batches: see the dedicated test
    expected = ref.encode_batches(**kwargs, max_batch_bytes=max_batch_bytes)
    got = _core.encode_batches(**kwargs, max_batch_bytes=max_batch_bytes)
    assert got == expected


@given(batch_args(max_records=40, big=3), st.integers(ref.BATCH_HEADER_SIZE, 16 * 1024))
def test_encode_batches_cut_properties(kwargs: dict[str, Any], max_batch_bytes: int) -> None:
    """The contract's own words, checked without the oracle's cutting rule."""
    kwargs.pop("base_sequence", None)
    batches = _core.encode_batches(**kwargs, max_batch_bytes=max_batch_bytes)
    records = ref.decode_batch(ref.encode_batch(**kwargs), 0)
    seen: list[Any] = []
    for batch in batches:
        count = _core.validate_batch(batch)
        assert len(batch) <= max_batch_bytes or count == 1
        seen += ref.decode_batch(batch, len(seen))
    assert seen == records


def _first_records(kwargs: dict[str, Any], k: int) -> dict[str, Any]:
    """``kwargs`` for the first ``k`` records only."""
    out = dict(kwargs)
    for name in ("values", "keys", "headers", "timestamps"):
        if isinstance(out.get(name), list):
            out[name] = out[name][:k]
    return out


@given(batch_args(max_records=12, big=1), st.data())
def test_encode_batches_cut_exactly_at_the_limit(
    kwargs: dict[str, Any], data: st.DataObject
) -> None:
    """A batch of exactly ``max_batch_bytes`` is kept whole; one byte less cuts a record."""
    kwargs.pop("base_sequence", None)
    k = data.draw(st.integers(1, len(kwargs["values"])), label="records in the first batch")
    limit = len(ref.encode_batch(**_first_records(kwargs, k)))
    first = _core.encode_batches(**kwargs, max_batch_bytes=limit)[0]
    assert _core.batch_header(first)[2] == k
    first = _core.encode_batches(**kwargs, max_batch_bytes=limit - 1)[0]
    assert _core.batch_header(first)[2] == max(k - 1, 1)


@given(batch_args(max_records=20), st.integers(ref.BATCH_HEADER_SIZE, 300))
def test_encode_batches_base_sequence_counts_records(
    kwargs: dict[str, Any], max_batch_bytes: int
) -> None:
    """Batch ``i`` starts at ``base_sequence`` + records before it (Kafka's rule)."""
    kwargs["base_sequence"] = 1000
    batches = _core.encode_batches(**kwargs, max_batch_bytes=max_batch_bytes)
    first = 1000
    for batch in batches:
        header = _core.batch_header(batch)
        assert header[6] == first
        first += header[2]


def test_encode_batches_message_size_limit() -> None:
    """``max_message_bytes`` bounds key + value + header names + header values."""
    values = [b"v" * 10]
    keys = [b"k" * 5]
    headers = [[("ключ", b"h" * 3)]]  # name is 8 UTF-8 bytes
    size = 10 + 5 + 8 + 3
    for fn in (_core.encode_batches, ref.encode_batches):
        assert fn(values, keys, headers, max_message_bytes=size) == ref.encode_batches(
            values, keys, headers
        )
    with pytest.raises(MessageTooLargeError):
        _core.encode_batches(values, keys, headers, max_message_bytes=size - 1)
    with pytest.raises(ref.ReferenceTooLarge):
        ref.encode_batches(values, keys, headers, max_message_bytes=size - 1)


@given(batch_args(max_records=10))
def test_encode_accepts_any_contiguous_buffer(kwargs: dict[str, Any]) -> None:
    expected = ref.encode_batch(**kwargs)

    def convert(obj: Any, kind: int) -> Any:
        if obj is None:
            return None
        if kind == 1:
            return bytearray(obj)
        if kind == 2:
            return memoryview(b"\x00" + bytes(obj) + b"\x00")[1:-1]
        return obj

    for kind in (1, 2):
        converted = dict(kwargs)
        converted["values"] = [convert(v, kind) for v in kwargs["values"]]
        if kwargs.get("keys") is not None:
            converted["keys"] = [convert(k, kind) for k in kwargs["keys"]]
        if kwargs.get("headers") is not None:
            converted["headers"] = [
                None if h is None else [(name, convert(v, kind)) for name, v in h]
                for h in kwargs["headers"]
            ]
        assert _core.encode_batch(**converted) == expected


def test_encode_many_records(rng: random.Random) -> None:
    n = 3000
    values = [rng.randbytes(rng.choice([0, 1, 7, 100, 700])) for _ in range(n)]
    keys = [rng.choice([None, b"", rng.randbytes(rng.randrange(1, 20))]) for _ in range(n)]
    names = ["a", "trace-id", "ключ", "🔑"]
    headers = [
        [(rng.choice(names), rng.randbytes(rng.randrange(4))) for _ in range(rng.randrange(3))]
        for _ in range(n)
    ]
    start = 1_700_000_000_000
    timestamps = [start + rng.randrange(-100_000, 100_000) for _ in range(n)]
    args = (values, keys, headers, timestamps)
    batch = _core.encode_batch(*args)
    assert batch == ref.encode_batch(*args)
    assert _core.validate_batch(batch) == n
    assert as_tuples(_core.decode_batch(batch, "t", 0, 5)) == ref.decode_batch(batch, 5)
    for max_batch_bytes in (64, 4096, ref.DEFAULT_MAX_BATCH_BYTES):
        assert _core.encode_batches(*args, max_batch_bytes=max_batch_bytes) == ref.encode_batches(
            *args, max_batch_bytes=max_batch_bytes
        )


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (([],), {}, ValueError),
        (([b"a", b"b"], [b"k"]), {}, ValueError),
        (([b"a", b"b"], None, [None]), {}, ValueError),
        (([b"a", b"b"], None, None, [1, 2, 3]), {}, ValueError),
        ((["text"],), {}, TypeError),
        (([b"a"], ["text"]), {}, TypeError),
        (([b"a"], None, [[("name", "text")]]), {}, TypeError),
        (([b"a"], None, [[(b"name", b"v")]]), {}, TypeError),
        (([12],), {}, TypeError),
    ],
    ids=[
        "empty-values",
        "keys-length",
        "headers-length",
        "timestamps-length",
        "str-value",
        "str-key",
        "str-header-value",
        "bytes-header-name",
        "int-value",
    ],
)
def test_bad_arguments_rejected_like_reference(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    for fn in (_core.encode_batch, _core.encode_batches, ref.encode_batch, ref.encode_batches):
        with pytest.raises(error):
            fn(*args, **kwargs)


# -- decoding and validation ------------------------------------------------------


@st.composite
def stored_batches(draw: st.DrawFn) -> tuple[bytes, int]:
    """A batch as the oracle encodes it (null values included) and its base offset."""
    batch = ref.encode_batch(**draw(batch_args(null_values=True)))
    return batch, draw(st.integers(0, 2**62))


@given(stored_batches(), st.data())
def test_decode_batch_matches_reference(stored: tuple[bytes, int], data: st.DataObject) -> None:
    batch, base = stored
    count = ref.validate_batch(batch)
    from_offset = data.draw(st.integers(max(0, base - 2), base + count + 2), label="from_offset")
    max_records = data.draw(st.integers(-1, count + 2), label="max_records")
    verify_crc = data.draw(st.booleans(), label="verify_crc")
    expected = ref.decode_batch(batch, base, from_offset, max_records, verify_crc)
    got = _core.decode_batch(batch, "topic", 3, base, from_offset, max_records, None, verify_crc)
    assert as_tuples(got) == expected
    assert all((m.topic, m.partition) == ("topic", 3) for m in got)


@given(stored_batches())
def test_validate_and_header_match_reference(stored: tuple[bytes, int]) -> None:
    batch, _ = stored
    assert _core.validate_batch(batch) == ref.validate_batch(batch)
    assert _core.batch_header(batch) == ref.batch_header(batch)


@given(stored_batches(), st.data())
def test_first_offset_at_or_after_matches_reference(
    stored: tuple[bytes, int], data: st.DataObject
) -> None:
    batch, base = stored
    timestamps = [ts for _, ts, _, _, _ in ref.decode_batch(batch, base)]
    probe = data.draw(
        st.one_of(
            st.sampled_from(timestamps),
            st.sampled_from(timestamps).map(lambda t: t + 1),
            st.integers(min(timestamps) - 10, max(timestamps) + 10),
        )
    )
    assert _core.first_offset_at_or_after(batch, base, probe) == ref.first_offset_at_or_after(
        batch, base, probe
    )


@given(stored_batches())
def test_decode_accepts_any_contiguous_buffer(stored: tuple[bytes, int]) -> None:
    batch, base = stored
    expected = ref.decode_batch(batch, base)
    padded = b"\xb1" * 3 + batch + b"\x00" * 3
    for view in (bytearray(batch), memoryview(batch), memoryview(padded)[3:-3]):
        assert as_tuples(_core.decode_batch(view, "t", 0, base)) == expected
        assert _core.validate_batch(view) == len(expected)
        assert _core.batch_header(view) == ref.batch_header(batch)


@given(stored_batches())
def test_decode_appends_to_out(stored: tuple[bytes, int]) -> None:
    batch, base = stored
    sentinel = _core.Message("other", 0, 0, 0, None, b"x")
    out = [sentinel]
    assert _core.decode_batch(batch, "t", 1, base, out=out) is out
    assert out[0] is sentinel
    assert as_tuples(out[1:]) == ref.decode_batch(batch, base)


def test_decode_many_records_roundtrip(rng: random.Random) -> None:
    n = 5000
    values = [None if rng.random() < 0.1 else rng.randbytes(rng.randrange(50)) for _ in range(n)]
    batch = ref.encode_batch(values, timestamps=[rng.randrange(2**40) for _ in range(n)])
    assert _core.validate_batch(batch) == n
    for from_delta, max_records in [(0, -1), (1234, -1), (0, 17), (4999, 5), (n, -1)]:
        got = _core.decode_batch(batch, "t", 0, 10**9, 10**9 + from_delta, max_records)
        assert as_tuples(got) == ref.decode_batch(batch, 10**9, 10**9 + from_delta, max_records)


# -- checksums and hashing ---------------------------------------------------------


@given(st.binary(max_size=4096), st.data())
def test_crc32c_implementations_agree(data: bytes, draw: st.DataObject) -> None:
    expected = ref.crc32c(data)
    assert _core.crc32c(data) == expected
    assert _core.crc32c_sw(data) == expected
    if HW:
        assert _core.crc32c_hw(data) == expected
    cut = draw.draw(st.integers(0, len(data)), label="cut")
    functions = [_core.crc32c, _core.crc32c_sw] + ([_core.crc32c_hw] if HW else [])
    for fn in functions:
        assert fn(data[cut:], fn(data[:cut])) == expected
    # Mixed paths continue each other's results.
    assert _core.crc32c_sw(data[cut:], _core.crc32c(data[:cut])) == expected


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_crc32c_continues_from_any_crc(data: bytes, crc: int) -> None:
    expected = ref.crc32c(data, crc)
    assert _core.crc32c(data, crc) == expected
    assert _core.crc32c_sw(data, crc) == expected
    if HW:
        assert _core.crc32c_hw(data, crc) == expected


def test_crc32c_every_length_and_alignment(rng: random.Random) -> None:
    """Lengths 0..300 at every start alignment 0..15, plus a few big buffers."""
    blob = rng.randbytes(1 << 20)
    view = memoryview(blob)
    functions = [_core.crc32c, _core.crc32c_sw] + ([_core.crc32c_hw] if HW else [])
    for start in range(16):
        for length in range(301):
            chunk = view[start : start + length]
            expected = _core.crc32c_sw(chunk)
            assert all(fn(chunk) == expected for fn in functions), (start, length)
    for start in range(16):
        for length in range(0, 1200, 37):
            assert _core.crc32c(view[start : start + length]) == ref.crc32c(
                blob[start : start + length]
            ), (start, length)
    for length in (4095, 65536, 65537, (1 << 20) - 16):
        expected = ref.crc32c(blob[7 : 7 + length])
        assert all(fn(view[7 : 7 + length]) == expected for fn in functions), length


@given(st.binary(max_size=300), st.integers(1, 100_000))
def test_murmur2_and_partition_match_reference(key: bytes, partitions: int) -> None:
    assert _core.murmur2(key) == ref.murmur2(key)
    assert _core.partition_for_key(key, partitions) == ref.partition_for_key(key, partitions)
    assert _core.murmur2(bytearray(key)) == _core.murmur2(memoryview(key))


def test_murmur2_ten_thousand_keys() -> None:
    rng = random.Random(20240229)  # fixed: the same 10,000 keys on every run
    for i in range(10_000):
        key = rng.randbytes(rng.randrange(0, 65)) if i % 2 else str(i).encode()
        partitions = rng.choice([1, 2, 3, 12, 50, 1000, 2**31 - 1])
        assert _core.murmur2(key) == ref.murmur2(key), key
        assert _core.partition_for_key(key, partitions) == ref.partition_for_key(key, partitions)


@pytest.mark.parametrize("partitions", [0, -1])
def test_partition_for_key_rejects_no_partitions(partitions: int) -> None:
    with pytest.raises(ValueError):
        _core.partition_for_key(b"key", partitions)


@pytest.mark.parametrize(
    "call",
    [
        lambda: _core.crc32c("text"),
        lambda: _core.crc32c_sw("text"),
        lambda: _core.murmur2("text"),
        lambda: _core.partition_for_key("text", 3),
        lambda: _core.decode_varint("text"),
        lambda: _core.validate_batch("text"),
        lambda: _core.batch_header("text"),
        lambda: _core.decode_batch("text", "t", 0, 0),
    ],
    ids=["crc32c", "crc32c_sw", "murmur2", "partition", "varint", "validate", "header", "decode"],
)
def test_str_is_a_type_error(call: Any) -> None:
    with pytest.raises(TypeError):
        call()


# -- varints -------------------------------------------------------------------------


@given(st.integers(INT64_MIN, INT64_MAX))
def test_varint_matches_reference(value: int) -> None:
    encoded = _core.encode_varint(value)
    assert encoded == ref.encode_varint(value)
    assert _core.decode_varint(encoded) == (value, len(encoded))


@given(st.integers(INT64_MIN, INT64_MAX), st.binary(max_size=8), st.binary(max_size=8))
def test_varint_decode_in_context(value: int, before: bytes, after: bytes) -> None:
    data = before + ref.encode_varint(value) + after
    assert _core.decode_varint(data, len(before)) == ref.decode_varint(data, len(before))


@given(st.binary(min_size=1, max_size=12))
def test_varint_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        expected: Any = ref.decode_varint(data)
    except ref.ReferenceCorrupt:
        expected = CorruptRecordError
    try:
        got: Any = _core.decode_varint(data)
    except CorruptRecordError:
        got = CorruptRecordError
    assert got == expected


@given(st.integers(2**63, 2**64 - 1))
def test_varint_ten_byte_values(z: int) -> None:
    """10-byte encodings (10th byte 0x01) of every zig-zag value >= 2**63."""
    raw = bytes(((z >> (7 * i)) & 0x7F) | (0x80 if i < 9 else 0) for i in range(10))
    assert _core.decode_varint(raw) == ref.decode_varint(raw)
