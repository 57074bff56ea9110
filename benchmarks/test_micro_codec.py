"""pytest-benchmark micro-benchmarks of the C codec (``mqlite._core``).

Not collected by the normal test run (``testpaths = ["tests"]``); run with::

    pytest benchmarks/test_micro_codec.py
    pytest benchmarks/test_micro_codec.py --benchmark-json=benchmarks/results/micro.json

Each benchmark first checks its result, so a fast wrong answer fails instead
of looking good.  ``extra_info["msgs_per_s"]`` gives records per second for
the batch rows (the timing stats themselves are per call).
"""

from __future__ import annotations

import os

import pytest

from mqlite import _core

SIZES = [100, 1024]
COUNTS = [1, 100, 1000]


def _values(size: int, count: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def _per_msg(benchmark, count: int) -> None:
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None and stats.median > 0:
        benchmark.extra_info["msgs_per_s"] = count / stats.median


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("size", SIZES)
def test_encode_batches(benchmark, size: int, count: int) -> None:
    values = _values(size, count)
    batches = benchmark(_core.encode_batches, values, None, None, 1_700_000_000_000)
    assert sum(_core.validate_batch(b) for b in batches) == count
    benchmark.extra_info.update(size=size, count=count)
    _per_msg(benchmark, count)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("size", SIZES)
def test_encode_batches_keyed(benchmark, size: int, count: int) -> None:
    values = _values(size, count)
    keys = [b"key-%d" % i for i in range(count)]
    batches = benchmark(_core.encode_batches, values, keys, None, 1_700_000_000_000)
    assert sum(_core.validate_batch(b) for b in batches) == count
    _per_msg(benchmark, count)


@pytest.mark.parametrize("verify_crc", [True, False], ids=["crc", "nocrc"])
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("size", SIZES)
def test_decode_batch(benchmark, size: int, count: int, verify_crc: bool) -> None:
    values = _values(size, count)
    (batch,) = _core.encode_batches(values, None, None, 1_700_000_000_000,
                                    max_batch_bytes=1 << 24)
    msgs = benchmark(_core.decode_batch, batch, "t", 0, 0, verify_crc=verify_crc)
    assert [m.value for m in msgs] == values
    assert msgs[-1].offset == count - 1
    _per_msg(benchmark, count)


def test_decode_batch_skip_to_last(benchmark) -> None:
    """Seeking inside a batch: skip 999 records by length, decode one."""
    (batch,) = _core.encode_batches(_values(100, 1000), None, None, 0)
    msgs = benchmark(_core.decode_batch, batch, "t", 0, 0, 999)
    assert len(msgs) == 1 and msgs[0].offset == 999


@pytest.mark.parametrize("size", [16, 100, 1024, 65536, 1 << 20])
def test_crc32c(benchmark, size: int) -> None:
    data = os.urandom(size)
    got = benchmark(_core.crc32c, data)
    assert got == _core.crc32c_sw(data)
    assert _core.crc32c(b"123456789") == 0xE3069283
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None and stats.median > 0:
        benchmark.extra_info["GB_per_s"] = size / stats.median / 1e9


@pytest.mark.skipif(not _core.crc32c_hw_available(), reason="no SSE4.2 CRC32 instruction")
def test_crc32c_sw_vs_hw_64k(benchmark) -> None:
    """The portable table path, for comparison with test_crc32c[65536]."""
    data = os.urandom(65536)
    assert benchmark(_core.crc32c_sw, data) == _core.crc32c_hw(data)


@pytest.mark.parametrize("size", [8, 32, 256])
def test_murmur2(benchmark, size: int) -> None:
    key = os.urandom(size)
    got = benchmark(_core.murmur2, key)
    assert isinstance(got, int) and -(2**31) <= got < 2**31
    # Kafka's UtilsTest vector: murmur2("21") == -973932308
    assert _core.murmur2(b"21") == -973932308


def test_partition_for_key(benchmark) -> None:
    key = b"order-12345"
    p = benchmark(_core.partition_for_key, key, 12)
    assert p == (_core.murmur2(key) & 0x7FFFFFFF) % 12
