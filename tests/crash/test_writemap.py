"""``durability="none"`` writes through LMDB's map (``writemap``, D47).

* Only ``"none"`` handles use it, and ``MQLITE_WRITEMAP=0`` turns it off.
* ``data.mdb`` is never left map-sized (LMDB's writemap makes it a sparse
  file of ``map_size`` bytes, which a copy that ignores holes writes in
  full): open cuts it to the last page plus a preallocated stretch, close to
  the last page.
* Mixed handles: a writemap ``"none"`` writer beside a ``"sync"`` writer and
  a ``"sync"`` reader, each in its own process, on one broker; the writemap
  writer killed with SIGKILL half-way loses none of its acknowledged sends.
* A file cut back under a writemap writer (another process's close) is grown
  again (the ``MQ_GUARD_FILL`` guard, or the next allocation check).
* A full disk is a typed :class:`mqlite.StorageError`, never a SIGBUS: a
  small tmpfs (skipped where ``mount`` is not permitted).
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _procs_writemap as procs
import pytest
from _values import value

import mqlite
from mqlite import _core
from mqlite.verify import verify_in_child

# the crash suite's forkserver context (tests/conftest.py preloads it; one per process)
CTX = multiprocessing.get_context("forkserver")


def _env(b: mqlite.Broker) -> Any:
    return b._engine.live_env()


def _last_page_end(path: Path) -> int:
    with mqlite.open(path, durability="sync") as b:
        env = _env(b)
        return int((env.lmdb.info()["last_pgno"] + 1) * env.lmdb.stat()["psize"])


def test_only_none_uses_writemap_and_it_can_be_turned_off(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for durability, want in (("none", True), ("lazy", False), ("sync", False)):
        with mqlite.open(tmp_broker_dir, durability=durability) as b:
            assert _env(b).writemap is want, durability
            if "t" not in b.topics():
                b.create_topic("t")
            b.send("t", b"x")
    monkeypatch.setenv("MQLITE_WRITEMAP", "0")
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert _env(b).writemap is False


def test_data_file_is_never_left_map_sized(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none", map_size=4 << 30) as b:
        b.create_topic("t")
        for i in range(2000):
            b.send("t", i.to_bytes(4, "big") * 25)
        st = os.stat(tmp_broker_dir / "data.mdb")
        assert _env(b).writemap
        assert st.st_size < 64 << 20, "data.mdb was left at the map's size"
        assert st.st_blocks * 512 >= st.st_size, "the preallocated stretch is a hole"
    size = os.path.getsize(tmp_broker_dir / "data.mdb")
    assert size == _last_page_end(tmp_broker_dir), "close left a preallocated tail"
    # A copy that does not keep holes (shutil) copies just the data.
    shutil.copyfile(tmp_broker_dir / "data.mdb", tmp_broker_dir.parent / "copy.mdb")
    assert os.path.getsize(tmp_broker_dir.parent / "copy.mdb") == size
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        msgs = b.read("t", 0, 0, max_records=5000)
        assert [m.value for m in msgs] == [i.to_bytes(4, "big") * 25 for i in range(2000)]


def test_a_write_past_the_preallocated_stretch_keeps_every_byte(tmp_broker_dir: Path) -> None:
    """One write transaction far larger than the stretch allocated ahead (D54).

    Found by the API fuzz (seed 2037996369): a reopened broker's stretch was an eighth
    of the file, not a whole number of pages, so the file ended inside a page; LMDB
    stored into that page through the map, and when the guard grew the file over the
    next page's fault the kernel zeroed the first page's bytes past the old end. The
    redrive committed, and verify found a CRC mismatch in the batch it wrote.
    """
    big = [bytes([65 + i]) * (2 << 20) for i in range(4)]
    with mqlite.open(tmp_broker_dir, durability="none", map_size=256 << 20) as b:
        b.create_topic("dlq", partitions=2)
        b.create_topic("t9")
        b.create_topic("pad")
        for i, v in enumerate(big):
            b.send("dlq", v, partition=i % 2)
        b.send_batch("pad", [b"x"] * 10)
    # reopened: the file is cut back to its last page plus the stretch
    with mqlite.open(tmp_broker_dir, durability="none", map_size=256 << 20) as b:
        env = _env(b)
        assert env.writemap
        psize = env.lmdb.stat()["psize"]
        assert os.path.getsize(tmp_broker_dir / "data.mdb") % psize == 0
        faults = _core.guard_faults()
        assert b.redrive("dlq", to_topic="t9") == 4  # 8 MiB in one write transaction
        assert _core.guard_faults() > faults  # it did write past the end of the file
        assert os.path.getsize(tmp_broker_dir / "data.mdb") % psize == 0
        got = sorted(value(m) for m in b.read("t9", 0, 0, max_records=10))
        assert got == sorted(big)
    assert verify_in_child(str(tmp_broker_dir)).problems == []


def _acked(path: Path) -> dict[tuple[int, int], int]:
    out = {}
    for line in path.read_text().splitlines():
        p, o, crc = json.loads(line)
        out[(p, o)] = crc
    return out


def test_writemap_none_writer_beside_sync_writer_and_reader(
        children: Any, tmp_broker_dir: Path, tmp_path: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        b.create_topic("t")
    n = 1500
    go = CTX.Event()
    starts = {name: CTX.Event() for name in ("none", "sync", "kill", "reader")}
    halfway = CTX.Event()
    outs = {name: tmp_path / f"{name}.jsonl" for name in starts}
    children.start("none", procs.send_and_record, str(tmp_broker_dir), "none", "t", "N", n,
                   str(outs["none"]), starts["none"], go)
    children.start("sync", procs.send_and_record, str(tmp_broker_dir), "sync", "t", "S", n,
                   str(outs["sync"]), starts["sync"], go)
    # a second writemap writer, killed with SIGKILL half-way through
    children.start("kill", procs.send_and_record, str(tmp_broker_dir), "none", "t", "K",
                   4 * n, str(outs["kill"]), starts["kill"], go, halfway)
    children.start("reader", procs.read_all, str(tmp_broker_dir), "sync", "t",
                   str(outs["reader"]), 2 * n, starts["reader"], go)
    for ev in starts.values():
        assert ev.wait(60), "a child did not start"
    assert json.loads(Path(str(outs["none"]) + ".mode").read_text())["writemap"] is True
    assert json.loads(Path(str(outs["sync"]) + ".mode").read_text())["writemap"] is False
    go.set()
    assert halfway.wait(120), "the writer to be killed made no progress"
    children.kill("kill")
    for name in ("none", "sync", "reader"):
        p = children.procs[name]
        p.join(180)
        assert p.exitcode == 0, f"{name} exited with {p.exitcode}"
    acked = {**_acked(outs["none"]), **_acked(outs["sync"]), **_acked(outs["kill"])}
    assert len(acked) >= 2 * n + 4 * n // 2
    rep = verify_in_child(str(tmp_broker_dir), timeout=120)
    assert rep.ok, rep.problems
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        msgs = b.read("t", 0, 0, max_records=1_000_000)
    assert [m.offset for m in msgs] == list(range(len(msgs)))  # dense
    stored = {(m.partition, m.offset): zlib.crc32(value(m)) for m in msgs}
    for k, crc in acked.items():
        assert stored.get(k) == crc, f"acknowledged message {k} lost or changed"
    tags = {value(m).split(b"|", 1)[0] for m in msgs}
    assert tags == {b"N", b"S", b"K"}
    # The reader saw a prefix of the log, every payload as stored.
    seen = json.loads(outs["reader"].read_text())
    assert len(seen) >= 2 * n
    for off, crc in seen:
        assert stored[(0, off)] == crc


def test_file_cut_back_under_a_writemap_writer_grows_again(tmp_broker_dir: Path) -> None:
    """Another process's close cuts ``data.mdb`` to its last page; the writer goes on."""
    code = f"""
import os, sys, mqlite
p = {str(tmp_broker_dir)!r}
with mqlite.open(p, durability="none", map_size=1 << 30) as b:
    env = b._engine.live_env()
    assert env.writemap
    b.create_topic("t")
    for i in range(50):
        b.send("t", b"a" * 300)
    for rnd in range(20):
        last = env.lmdb.info()["last_pgno"]
        os.truncate(os.path.join(p, "data.mdb"), (last + 1) * 4096)  # as a close does
        for i in range(200):
            b.send("t", bytes([rnd]) * 300)
    n = len(b.read("t", 0, 0, max_records=10_000))
print(n, mqlite._core.guard_faults())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, f"child died ({res.returncode}): {res.stderr}"
    n, faults = (int(x) for x in res.stdout.split())
    assert n == 50 + 20 * 200
    assert faults > 0, "no store went past the cut end: the guard was not exercised"
    rep = verify_in_child(str(tmp_broker_dir), timeout=60)
    assert rep.ok, rep.problems


def test_fill_guard_grows_a_file_written_past_its_end(tmp_path: Path) -> None:
    """``MQ_GUARD_FILL`` alone: a store past the end of a shared map's file."""
    code = f"""
import mmap, os
from mqlite import _core
path = {str(tmp_path / "f")!r}
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 64 << 20)  # Python's mmap wants the file that long ...
m = mmap.mmap(fd, 64 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.ftruncate(fd, 4096)  # ... then it is cut back, as LMDB's map is under writemap
addr = _core.buffer_address(m)
gid = _core.guard_fill(addr, 64 << 20, fd)
m[10 << 20:(10 << 20) + 5] = b"hello"      # past the end: grown, then stored
assert m[(30 << 20):(30 << 20) + 4] == bytes(4)   # a read past the end: zeros
m.flush()
print(os.fstat(fd).st_size, _core.guard_faults())
_core.guard_remove(gid)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, f"child died ({res.returncode}): {res.stderr}"
    size, faults = (int(x) for x in res.stdout.split())
    assert faults >= 2
    assert size > 30 << 20
    with open(tmp_path / "f", "rb") as f:
        f.seek(10 << 20)
        assert f.read(5) == b"hello"
    assert mmap.PAGESIZE > 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs (a disk that fills); skipped where mount is not permitted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs",
                        str(mnt)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _child_json(children: Any, name: str, fn: Any, path: Path, out: Path) -> Any:
    """Run ``fn(path, out)`` in a child process; the JSON it wrote to ``out``."""
    p = children.start(name, fn, str(path), str(out))
    p.join(300)
    assert p.exitcode == 0, f"the child died (exit code {p.exitcode}): a SIGBUS?"
    return json.loads(out.read_text())


def test_disk_full_under_writemap_is_typed_not_sigbus(children: Any, small_fs: Path,
                                                     tmp_path: Path) -> None:
    path = small_fs / "broker"
    out = tmp_path / "full.json"
    faults = _core.guard_faults()  # (process-wide: other tests' repaired faults count too)
    res = _child_json(children, "fill", procs.fill_until_full, path, out)
    assert res["writemap"] is True
    assert res["error"] is not None, "the file system never filled"
    module, name, text = res["error"]
    assert module.startswith("mqlite"), f"raw exception: {module}.{name}: {text}"
    assert issubclass(getattr(mqlite, name), mqlite.StorageError), (name, text)
    acked = {(pt, o): crc for pt, o, crc in res["acked"]}
    assert len(acked) > 100
    assert res["read_back"] == len(acked)
    # Reopened (another process, writemap again): everything acknowledged is there.
    rep = verify_in_child(str(path), timeout=60)
    assert rep.ok, rep.problems
    with mqlite.open(path, durability="none") as b:
        msgs = b.read("t", 0, 0, max_records=100_000)
        stored = {(m.partition, m.offset): zlib.crc32(value(m)) for m in msgs}
        for k, crc in acked.items():
            assert stored.get(k) == crc, f"acknowledged message {k} lost"
        assert [m.offset for m in msgs] == list(range(len(msgs)))
        assert _core.guard_faults() == faults


def test_appends_other_than_sends_meet_a_full_disk_typed(children: Any, small_fs: Path,
                                                        tmp_path: Path) -> None:
    """Regression (D54 "Left", D57): a dead-letter move, a redrive and the promotion of a
    due delayed message appended without counting the space first, so under writemap a
    full disk met them in the middle of the write transaction and the process died (the
    guard could not grow the file).  Each is now refused typed, changing nothing."""
    path = small_fs / "broker"
    out = tmp_path / "appends.json"
    res = _child_json(children, "appends", procs.appends_on_a_full_disk, path, out)
    assert res["writemap"] is True
    assert res["filled"] is not None, "the file system never filled"
    for name in ("dead_letter", "redrive", "promote"):
        module, cls, text = res["errors"][name]
        assert module.startswith("mqlite"), f"{name}: {module}.{cls}: {text}"
        assert issubclass(getattr(mqlite, cls), mqlite.StorageError), (name, cls, text)
    assert res["after"] == {"dead_letters": 2, "jobs_end": 3, "dlq_end": 2,
                            "scheduled": {"jobs": 1}, "pending": 1}
    rep = verify_in_child(str(path), timeout=60)
    assert rep.ok, rep.problems


def test_no_nested_transactions_anywhere() -> None:
    """``MDB_WRITEMAP`` forbids nested write transactions (LMDB returns EINVAL)."""
    import re

    src = Path(mqlite.__file__).resolve().parent
    hits = []
    for f in list(src.rglob("*.py")) + list(src.rglob("*.pyx")) + list(src.rglob("*.pxi")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\.begin\([^)]*parent\s*=", line):
                hits.append(f"{f.name}:{i}: {line.strip()}")
    assert not hits, hits


def test_file_size_limit_below_the_map_opens_without_writemap(tmp_broker_dir: Path) -> None:
    """LMDB's ``ftruncate`` to the map would fail (EFBIG; SIGXFSZ where not ignored)."""
    code = f"""
import resource, mqlite
resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 20, 32 << 20))
with mqlite.open({str(tmp_broker_dir)!r}, durability="none", map_size=1 << 30) as b:
    b.create_topic("t")
    b.send("t", b"x")
    print(b._engine.live_env().writemap, len(b.read("t", 0, 0)))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, f"child died ({res.returncode}): {res.stderr}"
    assert res.stdout.split() == ["False", "1"]
