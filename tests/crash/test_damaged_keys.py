"""Damaged record keys: offsets are dense, so a moved or lost batch is corruption.

A record key is (partition id u32 BE, base offset u64 BE).  A flipped bit in
one moves its batch out of sequence (another partition, another offset);
reads used to stop silently at the gap (issue 10, defect 5: a partition read
returned 50 of 200 messages and a group consumer stalled with lag 150).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import mqlite
from mqlite import TopicPartition as TP
from mqlite.verify import verify

TS = 1_700_000_000_000
PID = 0x2A


def _make(path: Path) -> None:
    """Topic t, 1 partition (id PID): four batches of 50 at offsets 0, 50, 100, 150."""
    with mqlite.open(path, durability="none") as b:
        b.create_topic("pad", partitions=PID)  # so that t's keys are not runs of zero bytes
        b.create_topic("t", partitions=1)
        for i in range(4):
            b.send_batch("t", [b"m-%d" % (i * 50 + j) for j in range(50)], partition=0,
                         timestamp_ms=TS)


def _damage_key(path: Path, base: int, new_pid: int | None = None,
                new_base: int | None = None) -> None:
    """Rewrite the key of batch ``base`` of partition id PID in data.mdb (every copy)."""
    old = struct.pack(">IQ", PID, base)
    new = struct.pack(">IQ", PID if new_pid is None else new_pid,
                      base if new_base is None else new_base)
    f = path / "data.mdb"
    data = bytearray(f.read_bytes())
    hits = 0
    at = data.find(old)
    while at >= 0:
        if data[at - 2:at] == b"\x0c\x00":  # an LMDB node whose key is 12 bytes long
            data[at:at + 12] = new
            hits += 1
        at = data.find(old, at + 1)
    assert hits >= 1
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(("base", "new_pid", "new_base"), [
    (50, PID + 9, None),     # the second batch moved to another partition: 50..99 missing
    (50, None, 60),    # moved within the partition: 50..59 missing
    (150, PID + 9, None),    # the last batch lost: the log ends 50 short of its state
    (0, PID - 9, None),      # the first batch lost: the log starts 50 late
])
def test_a_damaged_record_key_is_corruption_not_a_short_read(
        tmp_broker_dir: Path, base: int, new_pid: int | None, new_base: int | None) -> None:
    _make(tmp_broker_dir)
    _damage_key(tmp_broker_dir, base, new_pid, new_base)
    expected = base
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        with pytest.raises(mqlite.CorruptRecordError) as ei:
            b.read("t", 0, 0, max_records=1000)
        assert (ei.value.topic, ei.value.partition, ei.value.offset) == ("t", 0, expected)
        assert "not dense" in str(ei.value)
        c = b.consumer(group="g", auto_offset_reset="earliest")
        c.subscribe(["t"])
        with pytest.raises(mqlite.CorruptRecordError):
            for _ in range(10):
                c.poll(timeout=0, max_records=1000)
        c.close()
        r = b.consumer()
        r.assign([TP("t", 0)])
        with pytest.raises(mqlite.CorruptRecordError):
            for _ in range(10):
                r.poll(timeout=0, max_records=1000)
        r.close()
    assert not verify(str(tmp_broker_dir)).ok


def test_reading_below_the_start_after_retention_is_not_a_gap(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", partitions=1, retention_messages=100)
        for i in range(4):
            b.send_batch("t", [b"m-%d" % (i * 50 + j) for j in range(50)], partition=0,
                         timestamp_ms=TS)
        got = b.read("t", 0, 0, max_records=1000)
        assert [m.offset for m in got] == list(range(100, 200))
        assert [m.offset for m in b.read("t", 0, 120, max_records=30)] == list(range(120, 150))
        assert b.read("t", 0, 200, max_records=10) == []
    assert verify(str(tmp_broker_dir)).ok
