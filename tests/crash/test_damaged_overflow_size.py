"""Regression: a damaged overflow-record size is CorruptRecordError, not a bus error.

Issue 10, defect 4: a batch bigger than half a page is stored on LMDB overflow
pages; its size lives in the leaf node.  Grow that size past the end of the
file and py-lmdb, which touches every page of a value before returning it,
killed the reader with SIGBUS (read, group poll, queue receive, verify).
Under the SIGBUS guard of LMDB's map (csrc/guard.h, MQ_GUARD_ZERO) the pages
past the end read as zeros, the batch's length field disagrees, and the
read raises; the file is then mapped back, so data written later (into the
range that was zeroed) reads correctly.  Each victim runs in a child process.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import mqlite

PID = 0x2A
_CHILD = """
import sys, mqlite
from mqlite.verify import verify
path, what = sys.argv[1], sys.argv[2]
b = mqlite.open(path, durability="none")
try:
    if what == "read":
        b.read("t", 0, 0)
    elif what == "group":
        c = b.consumer("t", group="g")
        c.poll(timeout=0)
        c.poll(timeout=0)
    elif what == "queue":
        b.queue("t", group="w").receive(10, timeout=0)
    else:
        problems = verify(path).problems
        print("verify", problems[0].offset, problems[0].message)
    if what != "verify":
        print("no error")
except mqlite.CorruptRecordError as exc:
    print("corrupt", exc.offset)
# The map was restored: later writes, into the range the fault zeroed, read back.
assert [m.value for m in b.read("t", 0, 2)] == [b"small2"]
big = [bytes([i]) * 30000 for i in range(40)]
for v in big:
    md = b.send("t", v)
assert [m.value for m in b.read("t", 0, md.offset - 39, 40)] == big
b.close()
print("alive")
"""


def _damage(path: Path) -> None:
    """Grow the stored size of the overflow batch at offset 1 by 16 MiB (every copy)."""
    f = path / "data.mdb"
    data = bytearray(f.read_bytes())
    key = struct.pack(">IQ", PID, 1)
    hits = 0
    at = data.find(key)
    while at >= 0:
        if data[at - 4:at] == b"\x01\x00\x0c\x00":  # node flags F_BIGDATA, key size 12
            hi = struct.unpack_from("<H", data, at - 6)[0]
            struct.pack_into("<H", data, at - 6, hi + 0x100)
            hits += 1
        at = data.find(key, at + 1)
    assert hits >= 1
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["read", "group", "queue", "verify"])
def test_damaged_overflow_size_is_corrupt_record_error(tmp_broker_dir: Path, what: str) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("pad", partitions=PID)
        b.create_topic("t")
        b.send("t", b"small")
        b.send("t", os.urandom(20000))  # offset 1: on overflow pages
        b.send("t", b"small2")
    _damage(tmp_broker_dir)
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_broker_dir), what],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"child died (signal {-res.returncode}): {res.stderr[-2000:]}"
    first, last = res.stdout.splitlines()[0], res.stdout.splitlines()[-1]
    assert first.split()[:2] == (["verify", "1"] if what == "verify" else ["corrupt", "1"])
    assert last == "alive"
