"""Corrupt files: flipped payload bytes raise CorruptRecordError; damaged files never crash.

A stored batch is found in ``data.mdb`` by its exact bytes (the test
encodes the same batch with ``_core`` and searches the file), so a flip is
known to land inside it.  LMDB may keep stale copies in free pages; every
copy is flipped alike.  Truncated or damaged files are opened in a child
process, so that a crash (SIGBUS, SIGSEGV) fails the test instead of
killing pytest.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from _values import value

import mqlite
from mqlite import TopicPartition as TP
from mqlite import _core
from mqlite.verify import verify

PROCS_DIR = Path(__file__).resolve().parent.parent / "integration"
SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)
TS = 1_700_000_000_000
MARKER_OFFSET = 5


def _payload(tag: str) -> bytes:
    head = b"PAYLOAD-MARKER-" + tag.encode() + b"-"
    return head + bytes((i * 7 + 3) % 251 for i in range(6000 - len(head)))  # overflow page


def _make_broker(path: Path, payload: bytes) -> bytes:
    """Topic t (3 partitions); the marker is message 5 of partition 2, alone in its batch."""
    with mqlite.open(path, durability="none") as b:
        b.create_topic("t", partitions=3)
        b.send_batch("t", [b"fill-%d" % i for i in range(3)], partition=2, timestamp_ms=TS)
        b.send("t", b"fill-3", partition=2, timestamp_ms=TS)
        b.send("t", b"fill-4", partition=2, timestamp_ms=TS)
        md = b.send("t", payload, partition=2, timestamp_ms=TS + 5)
        assert md.offset == MARKER_OFFSET
        b.send_batch("t", [b"after-%d" % i for i in range(3)], partition=2, timestamp_ms=TS + 6)
        b.send_batch("t", [b"p0-%d" % i for i in range(10)], partition=0, timestamp_ms=TS)
    return _core.encode_batches([payload], None, None, TS + 5)[0]


def _flip(path: Path, needle: bytes, index: int, mask: int = 0x01) -> int:
    """XOR the byte at ``index`` of every copy of ``needle`` in data.mdb; return copies."""
    data_file = path / "data.mdb"
    data = bytearray(data_file.read_bytes())
    hits = []
    start = 0
    while (at := data.find(needle, start)) >= 0:
        hits.append(at)
        start = at + 1
    for at in hits:
        data[at + index] ^= mask
    data_file.write_bytes(bytes(data))
    return len(hits)


def _assert_names_location(exc: mqlite.CorruptRecordError) -> None:
    assert (exc.topic, exc.partition, exc.offset) == ("t", 2, MARKER_OFFSET)
    text = str(exc)
    assert "'t'" in text and "partition 2" in text and f"offset {MARKER_OFFSET}" in text


def test_flipped_payload_byte_raises_corrupt_record_error(tmp_broker_dir: Path) -> None:
    payload = _payload("middle")
    _make_broker(tmp_broker_dir, payload)
    assert _flip(tmp_broker_dir, payload, len(payload) // 2) >= 1
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        reader = b.consumer()
        reader.assign([TP("t", 2)])
        reader.seek(TP("t", 2), MARKER_OFFSET)
        with pytest.raises(mqlite.CorruptRecordError) as info:
            reader.poll(timeout=0)
        _assert_names_location(info.value)
        assert isinstance(info.value, mqlite.StorageError)
        # Every read path reports it, again and again (nothing is skipped silently).
        with pytest.raises(mqlite.CorruptRecordError) as info:
            reader.poll(timeout=0)
        _assert_names_location(info.value)
        with pytest.raises(mqlite.CorruptRecordError) as info:
            b.read("t", 2, MARKER_OFFSET)
        _assert_names_location(info.value)
        with pytest.raises(mqlite.CorruptRecordError) as info:
            reader.offsets_for_times({TP("t", 2): TS + 5})
        _assert_names_location(info.value)
        with pytest.raises(mqlite.CorruptRecordError):
            b.consumer("t").poll(max_records=1000, timeout=0)  # a whole-topic reader hits it too
        # Data around it is intact and readable.
        assert [m.value for m in b.read("t", 2, 0, MARKER_OFFSET)] == \
            [b"fill-%d" % i for i in range(MARKER_OFFSET)]
        reader.seek(TP("t", 2), MARKER_OFFSET + 1)
        assert [m.value for m in reader.poll(timeout=0)] == [b"after-%d" % i for i in range(3)]
        assert len(b.read("t", 0, max_records=100)) == 10
        # Writing to the partition still works; only the damaged batch is bad.
        assert b.send("t", b"new", partition=2).offset == MARKER_OFFSET + 4


def _positions(rng: random.Random, n: int) -> list[int]:
    return [0, 1, n // 2, n - 1] + [rng.randrange(n) for _ in range(6)]


def test_any_flipped_byte_of_the_stored_batch_is_detected(tmp_path: Path,
                                                          rng: random.Random) -> None:
    payload = _payload("anywhere")
    template = tmp_path / "template"
    batch = _make_broker(template, payload)
    for i, pos in enumerate(_positions(rng, len(batch))):
        path = tmp_path / f"b{i}"
        shutil.copytree(template, path)
        mask = rng.choice([0x01, 0x80, 0xFF, 0x10])
        assert _flip(path, batch, pos, mask) >= 1, "stored batch not found verbatim in data.mdb"
        with mqlite.open(path, durability="none") as b:
            with pytest.raises(mqlite.CorruptRecordError) as info:
                b.read("t", 2, MARKER_OFFSET)
            _assert_names_location(info.value)
            print(f"flip at {pos}/{len(batch)} mask {mask:#x}: {info.value}")


def test_flipped_byte_in_a_multi_record_batch_names_its_base_offset(tmp_broker_dir: Path) -> None:
    values = [b"MULTI-%03d-" % i + b"x" * 200 for i in range(20)]
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send_batch("t", [b"a", b"b"], timestamp_ms=TS)
        b.send_batch("t", values, timestamp_ms=TS)  # offsets 2..21, one stored batch
    assert _flip(tmp_broker_dir, values[13], 20) >= 1
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        reader = b.consumer("t")
        assert [m.value for m in reader.poll(max_records=2, timeout=0)] == [b"a", b"b"]
        with pytest.raises(mqlite.CorruptRecordError) as info:
            reader.poll(timeout=0)
        assert (info.value.topic, info.value.partition, info.value.offset) == ("t", 0, 2)
        reader.seek(TP("t", 0), 15)  # inside the same batch: still corrupt
        with pytest.raises(mqlite.CorruptRecordError):
            reader.poll(timeout=0)


# -- damaged files, opened in a child ----------------------------------------------------------


def _start_read_all(path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROCS_DIR), SRC_DIR, env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "_procs_core", "read-all", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(PROCS_DIR))


def _finish(p: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("child reading a damaged broker hung") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _read_all_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    return _finish(_start_read_all(path))


def _big_broker(path: Path) -> int:
    rng = random.Random(1)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("t", partitions=2)
        for _ in range(100):
            b.send_batch("t", [rng.randbytes(500) for _ in range(20)])
    return os.path.getsize(path / "data.mdb")


def _expect_clean_corrupt(res: subprocess.CompletedProcess[str], what: str) -> None:
    assert res.returncode >= 0, f"{what}: child killed by signal {-res.returncode}"
    assert res.returncode == 0, f"{what}: {res.stdout}{res.stderr}"
    assert res.stdout.startswith("corrupt "), f"{what}: {res.stdout}"


def test_truncated_data_file_is_corrupt_record_error_not_a_crash(tmp_path: Path) -> None:
    template = tmp_path / "template"
    size = _big_broker(template)
    psize = 4096
    cuts = {"100 bytes": 100, "one page": psize, "two pages": 2 * psize,
            "half": size // 2 // psize * psize, "all but one page": size - psize,
            "one byte short": size - 1}
    procs = {}
    try:
        for name, cut in cuts.items():
            path = tmp_path / name.replace(" ", "-")
            shutil.copytree(template, path)
            os.truncate(path / "data.mdb", cut)
            procs[name] = _start_read_all(path)  # the children run in parallel
        for name, p in procs.items():
            res = _finish(p)
            _expect_clean_corrupt(res, f"truncated to {name}")
            assert "truncated" in res.stdout
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_truncated_data_file_open_in_process_raises(tmp_broker_dir: Path) -> None:
    size = _big_broker(tmp_broker_dir)
    os.truncate(tmp_broker_dir / "data.mdb", size // 2)
    with pytest.raises(mqlite.CorruptRecordError, match="truncated"):
        mqlite.open(tmp_broker_dir)
    # Refusing did not "repair" anything behind the user's back.
    assert os.path.getsize(tmp_broker_dir / "data.mdb") == size // 2


@pytest.mark.parametrize("page", [0, 1, "both"])
def test_damaged_meta_page_is_corrupt_record_error(tmp_broker_dir: Path, page: object) -> None:
    _big_broker(tmp_broker_dir)
    data_file = tmp_broker_dir / "data.mdb"
    with open(data_file, "r+b") as f:
        psize = struct.unpack_from("<I", f.read(64), 40)[0]
        for p in ([0, 1] if page == "both" else [page]):
            f.seek(p * psize + 16)  # the meta page's magic
            f.write(b"\x00\x00\x00\x00")
    _expect_clean_corrupt(_read_all_in_child(tmp_broker_dir), f"meta page {page} damaged")


def test_garbage_data_file_is_corrupt_record_error(tmp_broker_dir: Path) -> None:
    _big_broker(tmp_broker_dir)
    data_file = tmp_broker_dir / "data.mdb"
    size = os.path.getsize(data_file)
    data_file.write_bytes(random.Random(7).randbytes(size))
    _expect_clean_corrupt(_read_all_in_child(tmp_broker_dir), "random bytes")


def test_flipped_payload_in_child_process_reports_location(tmp_broker_dir: Path) -> None:
    payload = _payload("child")
    _make_broker(tmp_broker_dir, payload)
    assert _flip(tmp_broker_dir, payload, 100) >= 1
    res = _read_all_in_child(tmp_broker_dir)
    _expect_clean_corrupt(res, "flipped payload")
    assert res.stdout.split()[:4] == ["corrupt", "t", "2", str(MARKER_OFFSET)]


def _zero_meta_file(broker_dir: Path, pages: int) -> Path:
    """A data.mdb whose two meta pages are zero and whose later pages hold bytes."""
    broker_dir.mkdir(mode=0o700, exist_ok=True)
    psize = os.sysconf("SC_PAGESIZE")
    data_file = broker_dir / "data.mdb"
    data_file.write_bytes(bytes(2 * psize) + b"\x5a" * ((pages - 2) * psize))
    os.chmod(data_file, 0o600)
    return data_file


def test_never_initialized_data_file_is_set_aside_and_the_broker_starts_empty(
        tmp_broker_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A power cut while the broker was created can lose LMDB's unsynced meta pages
    but keep the first commit's pages: nothing was acknowledged, so open starts afresh,
    keeping the old file for inspection; verify reports it without touching it."""
    data_file = _zero_meta_file(tmp_broker_dir, pages=4)
    before = data_file.read_bytes()
    report = verify(str(tmp_broker_dir))
    assert not report.ok and "never written" in report.problems[0].message
    assert data_file.read_bytes() == before  # verify inspects only
    with caplog.at_level("WARNING", logger="mqlite"), mqlite.open(tmp_broker_dir) as b:
        assert b.topics() == []
        b.create_topic("t")
        b.send("t", b"v")
    aside = [p for p in tmp_broker_dir.iterdir() if p.name.startswith("data.mdb.uninitialized-")]
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert "held no committed transaction" in caplog.text
    assert verify(str(tmp_broker_dir)).ok


def test_zeroed_meta_pages_of_a_larger_file_are_corruption_not_a_fresh_start(
        tmp_broker_dir: Path) -> None:
    data_file = _zero_meta_file(tmp_broker_dir, pages=64)
    with pytest.raises(mqlite.CorruptRecordError, match="bad magic"):
        mqlite.open(tmp_broker_dir)
    assert data_file.stat().st_size == 64 * os.sysconf("SC_PAGESIZE")  # left as it was
    assert [p.name for p in tmp_broker_dir.iterdir() if p.name.startswith("data.mdb")] \
        == ["data.mdb"]


def test_corrupt_batch_in_one_partition_does_not_consume_the_others(
        tmp_broker_dir: Path) -> None:
    """A poll that reads partition 0 and then hits a corrupt batch in partition 2 raises;
    partition 0's messages were never returned, so its position must not move (a commit
    would otherwise skip them): after seeking past the damage they all still arrive."""
    payload = _payload("twoparts")
    _make_broker(tmp_broker_dir, payload)
    assert _flip(tmp_broker_dir, payload, len(payload) // 2) >= 1
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        c = b.consumer()
        c.assign([TP("t", 0), TP("t", 2)])
        c.seek(TP("t", 2), MARKER_OFFSET)
        for _ in range(2):  # both rotation orders: partition 0 first, then partition 2 first
            with pytest.raises(mqlite.CorruptRecordError):
                c.poll(max_records=1000, timeout=0)
            assert c.position(TP("t", 0)) == 0
        c.seek(TP("t", 2), MARKER_OFFSET + 1)
        got: list[bytes] = []
        while msgs := c.poll(max_records=1000, timeout=0):
            got += [value(m) for m in msgs]
        assert sorted(got) == sorted([b"p0-%d" % i for i in range(10)]
                                     + [b"after-%d" % i for i in range(3)])


def test_never_initialized_file_found_by_two_openers_is_set_aside_once(
        tmp_broker_dir: Path) -> None:
    """Two processes opening such a directory at once: one sets the file aside, neither
    moves the fresh file the other may already have created; both open."""
    _zero_meta_file(tmp_broker_dir, pages=4)
    code = ("import sys, mqlite\n"
            "with mqlite.open(sys.argv[1]) as b:\n"
            "    b.create_topic('t', exist_ok=True)\n"
            "    b.send('t', b'v')\n")
    env = dict(os.environ, PYTHONPATH=SRC_DIR)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_broker_dir)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    aside = [p for p in tmp_broker_dir.iterdir() if p.name.startswith("data.mdb.uninitialized-")]
    assert len(aside) == 1
    with mqlite.open(tmp_broker_dir) as b:
        assert [m.value for m in b.read("t")] == [b"v", b"v"]
