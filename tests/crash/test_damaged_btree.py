"""A damaged B-tree page: reads raise an mqlite error, never an ``lmdb`` one, never a crash.

The broker is opened first, then a leaf page of the ``records`` database is
damaged on disk underneath it (its page flags overwritten, as a bad sector or
a stray write would), then ``Broker.read`` and ``Consumer.poll`` read through
it.  LMDB notices a page whose flags do not match its place in the tree and
reports ``MDB_CORRUPTED``; the engine's read transaction converts that into
:class:`mqlite.CorruptRecordError`.  It all runs in a child process, so a
crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import mqlite

SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)
PAGE = 4096
P_LEAF = 0x02
# LMDB page header (64-bit): pgno u64, pad u16, flags u16, lower u16, upper u16; then the
# u16 node offsets; a node is lo u16, hi u16, flags u16, ksize u16, key.
_HDR = struct.Struct("<QHHHH")
_NODE = struct.Struct("<HHHH")


def _records_leaf_pages(data: bytes, pid: int) -> list[int]:
    """Page numbers of leaf pages whose first key is a records key of partition id ``pid``."""
    found = []
    for pgno in range(2, len(data) // PAGE):  # pages 0 and 1 are the meta pages
        page = data[pgno * PAGE:(pgno + 1) * PAGE]
        stored_pgno, _, flags, lower, _ = _HDR.unpack_from(page)
        if stored_pgno != pgno or flags != P_LEAF or lower <= _HDR.size:
            continue
        (first,) = struct.unpack_from("<H", page, _HDR.size)
        if not _HDR.size <= first <= PAGE - _NODE.size:
            continue
        _, _, _, ksize = _NODE.unpack_from(page, first)
        key = page[first + _NODE.size:first + _NODE.size + ksize]
        if ksize == 12 and key[:4] == pid.to_bytes(4, "big"):
            found.append(pgno)
    return found


CHILD = textwrap.dedent("""
    import os, struct, sys
    import mqlite
    path, pgnos = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    b = mqlite.open(path, durability="none")
    assert len(b.read("t", 0, 0, 10)) == 10          # open and read before the damage
    fd = os.open(os.path.join(path, "data.mdb"), os.O_WRONLY)
    for pgno in pgnos:                                  # flags := 0x0000 (no page type)
        os.pwrite(fd, b"\\0\\0", pgno * 4096 + 10)
    os.fsync(fd)
    os.close(fd)
    for what, call in (("read", lambda: b.read("t", 0, 0, 10_000)),
                       ("poll", lambda: b.consumer("t").poll(10_000, 0))):
        try:
            call()
        except mqlite.MqliteError as exc:
            print(what, "mqlite", type(exc).__name__, flush=True)
        except Exception as exc:
            print(what, "other", type(exc).__module__, type(exc).__name__, exc, flush=True)
        else:
            print(what, "no-error", flush=True)
""")


def test_damaged_leaf_page_raises_mqlite_error_on_read_and_poll(tmp_path: Path) -> None:
    path = tmp_path / "broker"
    with mqlite.open(path, durability="none") as b:
        b.create_topic("t")
        for i in range(400):  # many small batches: several leaf pages of keys
            b.send_batch("t", [b"v-%d" % i] * 5, timestamp_ms=1_700_000_000_000)
        pid = b._engine.topic_fresh("t").pids[0]
    pgnos = _records_leaf_pages((path / "data.mdb").read_bytes(), pid)
    assert pgnos, "no leaf page of the records database found"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), ",".join(map(str, pgnos))],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": SRC_DIR},
        check=False)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["read"] == "mqlite CorruptRecordError", proc.stdout
    assert lines["poll"] == "mqlite CorruptRecordError", proc.stdout
