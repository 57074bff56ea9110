"""The single-send common case in Cython (``_core.SendPath``, docs/decisions.md D36).

It must be indistinguishable from the general path: same offsets, partitions,
stored state and errors, whichever of the two runs next.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mqlite
from mqlite import _core
from mqlite.errors import (
    ClosedError,
    MessageTooLargeError,
    PartitionNotFoundError,
    StorageFullError,
    TopicNotFoundError,
)
from mqlite.types import RecordMetadata


@pytest.fixture()
def broker(tmp_path: Path):
    with mqlite.open(str(tmp_path / "b"), durability="none") as b:
        yield b


def _values(b: mqlite.Broker, topic: str, partition: int = 0) -> list[tuple[int, bytes | None]]:
    c = b.consumer(topic, group=None)
    c.assign([mqlite.TopicPartition(topic, partition)])
    c.seek_to_beginning()
    out = []
    while True:
        got = c.poll(max_records=1000, timeout=0)
        if not got:
            break
        out += [(m.offset, m.value) for m in got]
    c.close()
    return out


def test_common_case_is_taken_and_matches_general_path(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    eng = broker._engine
    broker.send("t", b"warm")  # fills the topic cache
    md = eng.send_path.send(eng, "t", b"a", None, None)
    assert type(md) is RecordMetadata and md[:3] == ("t", 0, 1)
    # interleave with general-path sends: headers, dedup ids, timestamps, batches
    assert broker.send("t", b"b", headers={"h": b"1"}).offset == 2
    assert broker.send("t", b"c", dedup_id="x").offset == 3
    assert broker.send("t", b"c", dedup_id="x").offset == 3  # a repeat appends nothing
    assert broker.send("t", b"d", timestamp_ms=5).timestamp_ms == 5
    assert broker.send_batch("t", [b"e", b"f"])[0].offset == 5
    assert broker.send("t", None).offset == 7
    assert broker.send("t", b"g").offset == 8
    assert [v for _, v in _values(broker, "t")] == [
        b"warm", b"a", b"b", b"c", b"d", b"e", b"f", None, b"g"]
    p = broker.describe_topic("t").partitions[0]
    assert (p.start_offset, p.end_offset, p.messages) == (0, 9, 9)


def test_keys_and_partitions_as_general_path(broker: mqlite.Broker) -> None:
    broker.create_topic("k", partitions=5)
    for i in range(50):
        key = f"user-{i}".encode()
        md = broker.send("k", b"v", key)
        assert md.partition == _core.partition_for_key(key, 5)
    assert broker.send("k", b"v", partition=3).partition == 3
    parts = {broker.send("k", b"v").partition for _ in range(10)}  # round-robin
    assert parts == set(range(5))
    total = sum(p.messages for p in broker.describe_topic("k").partitions)
    assert total == 61


def test_not_the_common_case_returns_none_and_does_nothing(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"x")
    eng = broker._engine
    sp = eng.send_path
    for value, key in ((bytearray(b"v"), None), ("str", None), (b"v", "key"),
                       (b"v", memoryview(b"k"))):
        assert sp.send(eng, "t", value, key, None) is None
    assert sp.send(eng, "nope", b"v", None, None) is None
    assert sp.send(eng, 7, b"v", None, None) is None
    assert broker.describe_topic("t").partitions[0].end_offset == 1
    # ... and the general path then answers as it always did
    assert broker.send("t", bytearray(b"v")).offset == 1
    with pytest.raises(TypeError):
        broker.send("t", "str")
    with pytest.raises(TopicNotFoundError):
        broker.send("nope", b"v")
    with pytest.raises(PartitionNotFoundError):
        broker.send("t", b"v", partition=1)
    with pytest.raises(TypeError):
        broker.send("t", b"v", partition=True)


def test_errors_abort_cleanly(broker: mqlite.Broker) -> None:
    broker.create_topic("small", max_message_bytes=10)
    broker.send("small", b"0123456789")
    with pytest.raises(MessageTooLargeError):
        broker.send("small", b"0123456789a")
    with pytest.raises(PartitionNotFoundError):
        broker.send("small", b"v", partition=4)  # raised inside the transaction: aborted
    assert broker.send("small", b"ok").offset == 1
    broker.delete_topic("small")
    with pytest.raises(TopicNotFoundError):
        broker.send("small", b"v")
    broker.create_topic("small")
    assert broker.send("small", b"v").offset == 0


def test_closed_handle(tmp_path: Path) -> None:
    b = mqlite.open(str(tmp_path / "b"), durability="none")
    b.create_topic("t")
    b.send("t", b"v")
    b.close()
    with pytest.raises(ClosedError):
        b.send("t", b"v")


def test_retention_runs(broker: mqlite.Broker) -> None:
    broker.create_topic("r", retention_messages=5)
    for i in range(40):
        broker.send("r", b"%d" % i)
    p = broker.describe_topic("r").partitions[0]
    assert p.end_offset == 40
    assert p.messages <= 6


def test_space_admission(tmp_path: Path) -> None:
    with mqlite.open(str(tmp_path / "b"), durability="none", map_size=1 << 20) as b:
        b.create_topic("t")
        with pytest.raises(StorageFullError):
            for _ in range(100_000):
                b.send("t", bytes(200))
        used = b._engine.env.space()
        assert used["used_bytes"] <= used["high_water_bytes"] + 4096 * 4
        # a draining write still works, and the state is consistent
        p = b.describe_topic("t").partitions[0]
        assert p.end_offset == p.messages > 0


def test_another_process_writes_between(tmp_path: Path) -> None:
    """Another writer's commits make our next transaction stale: state is reloaded."""
    path = str(tmp_path / "b")
    n = 300
    child = textwrap.dedent(f"""
        import mqlite
        with mqlite.open({path!r}, durability="none") as b:
            for i in range({n}):
                b.send("t", b"c%d" % i)
    """)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("t")
        b.send("t", b"first")
        proc = subprocess.Popen([sys.executable, "-c", child], env=dict(os.environ))
        mine = [b.send("t", b"p%d" % i).offset for i in range(n)]
        assert proc.wait(timeout=120) == 0
        assert mine == sorted(mine) and len(set(mine)) == n
        got = _values(b, "t")
        assert [o for o, _ in got] == list(range(2 * n + 1))
        assert None not in [v for _, v in got]
        assert sorted(v for _, v in got if v is not None and v.startswith(b"p")) == sorted(
            b"p%d" % i for i in range(n))
        assert b.send("t", b"last").offset == 2 * n + 1
