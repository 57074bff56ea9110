"""Smoke tests of ``mqlite._core``: golden values and the main contracts.

Deeper coverage (differential tests against ``tests/_reference.py``, frozen
batches) lives in tests/property and tests/core/test_golden.py; this file
checks that the binding works end to end and that corrupt input is always a
``CorruptRecordError`` and never a crash.
"""

from __future__ import annotations

import multiprocessing
import pickle
import struct
import time
from typing import Any

import pytest

from mqlite import _core
from mqlite.errors import CorruptRecordError, MessageTooLargeError

# -- checksums and hashing -------------------------------------------------------

CRC_PATHS = [_core.crc32c, _core.crc32c_sw]
if _core.crc32c_hw_available():
    CRC_PATHS.append(_core.crc32c_hw)


@pytest.mark.parametrize("crc", CRC_PATHS, ids=lambda f: f.__name__)
def test_crc32c_check_value_and_continuation(crc):
    assert crc(b"123456789") == 0xE3069283
    assert crc(b"") == 0
    data = bytes(range(256)) * 200  # long enough for the 3-stream hardware blocks
    for cut in (0, 1, 7, 8, 9, 1000, len(data)):
        assert crc(data[cut:], crc(data[:cut])) == crc(data)
    assert crc(data) == _core.crc32c_sw(data)


def test_crc32c_hw_unavailable_is_runtime_error():
    if not _core.crc32c_hw_available():
        with pytest.raises(RuntimeError):
            _core.crc32c_hw(b"x")


# Kafka's UtilsTest.testMurmur2.
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key,expected", MURMUR2_VECTORS.items())
def test_murmur2_kafka_vectors(key, expected):
    assert _core.murmur2(key) == expected


def test_partition_for_key():
    assert _core.partition_for_key(b"foobar", 50) == 16
    assert _core.partition_for_key(bytearray(b"foobar"), 1) == 0
    with pytest.raises(ValueError):
        _core.partition_for_key(b"foobar", 0)
    with pytest.raises(TypeError, match="encode it first"):
        _core.partition_for_key("foobar", 3)


# -- varints -------------------------------------------------------------------------


def _varint_boundaries():
    # zig-zag maps v >= 0 to 2v and v < 0 to -2v - 1, so a varint of k bytes
    # (7k bits) holds exactly -2**(7k-1) <= v < 2**(7k-1).
    out = []
    for k in range(1, 10):
        edge = 1 << (7 * k - 1)
        out += [(edge - 1, k), (edge, k + 1), (-edge, k), (-edge - 1, k + 1)]
    out += [(0, 1), (-1, 1), (2**63 - 1, 10), (-(2**63), 10)]
    return out


@pytest.mark.parametrize("value,size", _varint_boundaries())
def test_varint_round_trip_at_boundaries(value, size):
    enc = _core.encode_varint(value)
    assert len(enc) == size
    assert _core.decode_varint(enc) == (value, size)
    assert _core.decode_varint(b"\xff" + enc + b"\x00", 1) == (value, size + 1)


def test_varint_errors():
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(b"\x80\x80")  # truncated
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(b"")
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(b"\x80" * 10 + b"\x00")  # 11 bytes
    with pytest.raises(CorruptRecordError):
        _core.decode_varint(b"\xff" * 9 + b"\x02")  # wider than 64 bits
    assert _core.decode_varint(b"\x80\x00") == (0, 2)  # non-minimal is accepted
    with pytest.raises(ValueError):
        _core.encode_varint(2**63)
    with pytest.raises(ValueError):
        _core.decode_varint(b"\x00", -1)


# -- record batches --------------------------------------------------------------


def _decode(batch, base_offset=0, **kw):
    return _core.decode_batch(batch, "t", 3, base_offset, **kw)


def test_round_trip_null_and_empty_keys_and_values():
    values = [b"v0", b"", None, b"x" * 1000, bytearray(b"ba"), memoryview(b"mv")]
    keys = [None, b"", b"k", None, b"k4", memoryview(b"k5")]
    timestamps = [1000, 999, 2000, 1500, -5, 1000]
    batch = _core.encode_batch(values, keys, None, timestamps, producer_id=9, base_sequence=4)
    assert _core.validate_batch(batch) == len(values)
    header = _core.batch_header(batch)
    assert header == (len(batch), 0, 6, 1000, 2000, 9, 4)
    msgs = _decode(batch, 40)
    assert [m.offset for m in msgs] == list(range(40, 46))
    assert [m.key for m in msgs] == [None, b"", b"k", None, b"k4", b"k5"]
    assert [m.value for m in msgs] == [b"v0", b"", None, b"x" * 1000, b"ba", b"mv"]
    assert [m.timestamp_ms for m in msgs] == timestamps
    assert all(m.topic == "t" and m.partition == 3 and m.headers == [] for m in msgs)
    assert msgs[0].key is None and msgs[1].key == b""


def test_read_only_buffers_are_accepted():
    batch = _core.encode_batches([b"a", b"b"], default_timestamp_ms=7)[0]
    view = memoryview(batch)
    assert view.readonly
    assert _core.validate_batch(view) == 2
    assert [m.value for m in _decode(view)] == [b"a", b"b"]
    assert _core.batch_header(view)[3] == 7
    assert _core.crc32c(view) == _core.crc32c(batch)


def test_headers_keep_order_and_repeated_names():
    headers = [[("h", b"1"), ("h", b"2"), ("é", b""), ("h", bytearray(b"3"))], None, []]
    batch = _core.encode_batch([b"a", b"b", b"c"], headers=headers)
    msgs = _decode(batch)
    assert msgs[0].headers == [("h", b"1"), ("h", b"2"), ("é", b""), ("h", b"3")]
    assert msgs[1].headers == [] and msgs[2].headers == []
    hs = msgs[0].headers
    hs.append(("x", b"y"))  # a fresh list on every access
    assert len(msgs[0].headers) == 4


def test_split_by_max_batch_bytes():
    values = [bytes([i % 256]) * (10 + i % 50) for i in range(300)]
    batches = _core.encode_batches(values, max_batch_bytes=1000, default_timestamp_ms=5)
    assert len(batches) > 5
    assert all(len(b) <= 1000 for b in batches)
    got: list[_core.Message] = []
    base = 0
    for b in batches:
        _core.decode_batch(b, "t", 0, base, out=got)
        base = len(got)
    assert [m.value for m in got] == values
    assert [m.offset for m in got] == list(range(300))
    # a record bigger than max_batch_bytes sits alone in its own batch
    big = _core.encode_batches([b"a", b"x" * 5000, b"b"], max_batch_bytes=1000)
    assert [_core.validate_batch(b) for b in big] == [1, 1, 1]
    assert _core.encode_batches([b"a", b"b"]) == [_core.encode_batch([b"a", b"b"])]


def test_big_inputs_cut_like_the_reference():
    # Over 2 MiB of values: encode_batches works through it in several
    # windows, which must not change where batches are cut.
    import _reference

    values = [bytes([i % 256]) * (3000 + (i * 7919) % 2000) for i in range(700)]
    keys = [None if i % 3 else str(i).encode() for i in range(700)]
    timestamps = [1000 + i % 17 for i in range(700)]
    got = _core.encode_batches(values, keys, timestamps=timestamps, max_batch_bytes=20000,
                               base_sequence=0)
    want = _reference.encode_batches(values, keys, timestamps=timestamps,
                                     max_batch_bytes=20000, base_sequence=0)
    assert got == want


def test_base_sequence_follows_records_across_batches():
    batches = _core.encode_batches([b"x" * 100] * 30, max_batch_bytes=500, base_sequence=10)
    seqs = [_core.batch_header(b)[6] for b in batches]
    counts = [_core.batch_header(b)[2] for b in batches]
    assert seqs[0] == 10
    assert all(seqs[i + 1] == seqs[i] + counts[i] for i in range(len(seqs) - 1))


def test_from_offset_and_max_records():
    batch = _core.encode_batch([str(i).encode() for i in range(10)])
    assert [m.offset for m in _decode(batch, 100, from_offset=104)] == list(range(104, 110))
    assert [m.offset for m in _decode(batch, 100, from_offset=0, max_records=3)] == [100, 101, 102]
    assert [m.offset for m in _decode(batch, 100, from_offset=108, max_records=5)] == [108, 109]
    assert _decode(batch, 100, from_offset=110) == []
    assert _decode(batch, 100, max_records=0) == []
    out: list[Any] = ["sentinel"]
    assert _core.decode_batch(batch, "t", 0, 0, out=out) is out and len(out) == 11


def test_first_offset_at_or_after():
    batch = _core.encode_batch([b"a", b"b", b"c"], timestamps=[10, 30, 20])
    assert _core.first_offset_at_or_after(batch, 50, 0) == 50
    assert _core.first_offset_at_or_after(batch, 50, 11) == 51
    assert _core.first_offset_at_or_after(batch, 50, 30) == 51
    assert _core.first_offset_at_or_after(batch, 50, 31) == -1


def test_message_too_large():
    with pytest.raises(MessageTooLargeError):
        _core.encode_batches([b"ok", b"x" * 101], max_message_bytes=100)
    with pytest.raises(MessageTooLargeError):  # key + value + header name + value count
        _core.encode_batches([b"x" * 50], [b"k" * 40], [[("n" * 5, b"v" * 6)]],
                             max_message_bytes=100)
    assert _core.encode_batches([b"x" * 50], [b"k" * 40], [[("n" * 5, b"v" * 5)]],
                                max_message_bytes=100)


def test_argument_errors():
    with pytest.raises(TypeError, match="encode it first"):
        _core.encode_batches(["text"])
    with pytest.raises(TypeError, match="encode it first"):
        _core.encode_batches([b"v"], keys=["k"])
    with pytest.raises(TypeError, match="encode it first"):
        _core.encode_batches([b"v"], headers=[[("h", "text")]])
    with pytest.raises(TypeError):
        _core.encode_batches([b"v"], headers=[[(b"h", b"v")]])  # type: ignore[list-item]  # checks the TypeError
    with pytest.raises(TypeError):
        _core.encode_batches([42])
    with pytest.raises(TypeError, match="encode it first"):
        _core.validate_batch("text")
    with pytest.raises(ValueError):
        _core.encode_batches([])
    with pytest.raises(ValueError):
        _core.encode_batches([b"a", b"b"], keys=[b"k"])
    with pytest.raises(ValueError):
        _core.encode_batches([b"a"], timestamps=[1, 2])


class _Sub(_core.Message):
    """A subclass with its own constructor, as the Python layer's Delivery."""

    def __init__(self, note, *args):
        super().__init__(*args)
        self.note = note


def test_message_value_semantics():
    m = _core.Message("t", 1, 2, 3, b"k", b"v", [("h", b"1")])
    same = _core.Message("t", 1, 2, 3, b"k", b"v", (("h", bytearray(b"1")),))
    assert m == same and m == same
    assert m != _core.Message("t", 1, 2, 3, b"k", b"v")
    assert m != _core.Message("t", 1, 2, 3, None, b"v", [("h", b"1")])
    assert (m == object()) is False
    assert pickle.loads(pickle.dumps(m)) == m
    assert "offset=2" in repr(m)
    with pytest.raises(AttributeError):
        m.value = b"other"
    with pytest.raises(TypeError):
        hash(m)

    s = _Sub("n", "t", 1, 2, 3, b"k", b"v", [("h", b"1")])
    back = pickle.loads(pickle.dumps(s))
    assert type(back) is _Sub and back.note == "n" and back == m


# -- corruption: always CorruptRecordError, never a crash, never a partial list ---------


def _small_batch():
    return _core.encode_batch(
        [b"v1", b"", None], [None, b"k", b""], [[("a", b"1"), ("b", b"")], None, [("c", b"3")]],
        [100, 50, 150],
    )


def _assert_corrupt(data):
    with pytest.raises(CorruptRecordError):
        _core.validate_batch(data)
    out: list[Any] = ["keep"]
    with pytest.raises(CorruptRecordError):
        _core.decode_batch(data, "t", 0, 0, out=out)
    assert out == ["keep"]


def test_every_byte_flip_is_corrupt():
    batch = _small_batch()
    for pos in range(len(batch)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = bytearray(batch)
            mutated[pos] ^= mask
            _assert_corrupt(bytes(mutated))


def test_every_truncation_and_extension_is_corrupt():
    batch = _small_batch()
    for n in range(len(batch)):
        _assert_corrupt(batch[:n])
    _assert_corrupt(batch + b"\x00")


def _with_crc(buf: bytearray) -> bytes:
    struct.pack_into(">I", buf, 1, _core.crc32c(bytes(buf[5:])))
    return bytes(buf)


def test_structural_corruption_with_a_valid_crc():
    batch = bytearray(_core.encode_batch([b"ab", b"cd"], timestamps=[5, 9]))
    # record 0 starts at 43: record_length, attributes, ts delta, offset delta, ...
    cases = {
        44: 0x02,  # record attributes 1
        46: 0x02,  # offset_delta 1 for record 0
        45: 0x02,  # timestamp delta != 0 for record 0
    }
    for pos, value in cases.items():
        bad = bytearray(batch)
        bad[pos] = value
        _assert_corrupt(_with_crc(bad))
    bad = bytearray(batch)
    struct.pack_into(">q", bad, 23, 8)  # max_timestamp
    _assert_corrupt(_with_crc(bad))
    bad = bytearray(batch)
    struct.pack_into(">I", bad, 11, 3)  # record_count
    _assert_corrupt(_with_crc(bad))
    bad = bytearray(batch)
    bad[10] = 1  # compression codec 1
    _assert_corrupt(_with_crc(bad))
    bad = bytearray(_core.encode_batch([b"v"], headers=[[("\u00e9", b"")]]))
    name_at = bad.index("\u00e9".encode())
    bad[name_at] = 0xFF  # header name not UTF-8
    _assert_corrupt(_with_crc(bad))


def test_verify_crc_false_still_checks_structure():
    batch = bytearray(_core.encode_batch([b"abc"]))
    batch[1] ^= 0xFF  # CRC only
    assert [m.value for m in _core.decode_batch(bytes(batch), "t", 0, 0, verify_crc=False)] == [
        b"abc"
    ]
    with pytest.raises(CorruptRecordError, match="CRC"):
        _core.decode_batch(bytes(batch), "t", 0, 0)
    with pytest.raises(CorruptRecordError):
        _core.decode_batch(bytes(batch[:-1]), "t", 0, 0, verify_crc=False)


# -- notifier ------------------------------------------------------------------------


def _notify_child(path, slot, expected, ready, result):
    notifier = _core.Notifier(path, slots=16)
    ready.set()
    start = time.monotonic()
    woke = notifier.wait(slot, expected, 20.0)
    result.put((woke, time.monotonic() - start, notifier.load(slot)))
    notifier.close()


def test_notifier_wakes_another_process(tmp_path):
    path = str(tmp_path / "notify.shm")
    notifier = _core.Notifier(path, slots=16)
    assert (tmp_path / "notify.shm").stat().st_mode & 0o777 == 0o600
    seq = notifier.load(5)
    ctx = multiprocessing.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_notify_child, args=(path, 5, seq, ready, result))
    child.start()
    try:
        assert ready.wait(30)
        time.sleep(0.2)  # let the child block in the futex
        notifier.bump(5)
        woke, elapsed, seen = result.get(timeout=30)
    finally:
        child.join(30)
    assert woke is True
    assert elapsed < 10
    assert seen == (seq + 1) & 0xFFFFFFFF
    notifier.close()


def test_notifier_timeouts_and_errors(tmp_path):
    path = str(tmp_path / "n.shm")
    with _core.Notifier(path, slots=4) as n:
        assert n.slots == 4
        seq = n.load(0)
        start = time.monotonic()
        assert n.wait(0, seq, 0.05) is False
        assert time.monotonic() - start >= 0.04
        assert n.wait(0, seq + 1, 5.0) is True  # differs already: no blocking
        assert n.wait(0, seq, 0) is False
        n.bump(0)
        assert n.load(0) == seq + 1
        for bad in (-1, 4, 2**70):
            with pytest.raises(ValueError):
                n.load(bad)
    with pytest.raises(ValueError):
        n.bump(0)
    with pytest.raises(ValueError):
        n.wait(0, 0, 0.1)
    # reopening with more slots grows the file and keeps the old words
    bigger = _core.Notifier(path, slots=64)
    assert bigger.load(0) == seq + 1 and bigger.load(63) == 0
    bigger.close()
    smaller = _core.Notifier(path, slots=2)
    assert (tmp_path / "n.shm").stat().st_size == 64 * 8
    smaller.close()
