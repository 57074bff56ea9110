"""Regression: a healthy data.mdb may end before its meta page's last page.

LMDB does not write pages a transaction allocated and freed again, so the
meta page's ``last_pg`` can point past the end of a perfectly good file.
``mqlite.open`` once refused such files as "truncated" (seen in the
benchmark suite after a large delete).  A real truncation must still be
refused without crashing the caller.
"""

from __future__ import annotations

import os
import struct

import pytest

import mqlite


def _allocate_and_free_in_one_txn(b: mqlite.Broker) -> None:
    env = b._engine.env
    with b._engine.write() as txn:
        txn.put(b"scratch", os.urandom(1 << 20), db=env.dbs["meta"])
        txn.delete(b"scratch", db=env.dbs["meta"])
        txn.put(b"scratch-done", b"1", db=env.dbs["meta"])


def _meta_need(path) -> int:
    raw = (path / "data.mdb").read_bytes()[:8192]
    metas = [struct.unpack_from("<QQ", raw, p * 4096 + 136) for p in (0, 1)]
    last_pg = max(metas, key=lambda m: m[1])[0]
    return (last_pg + 1) * 4096


def test_file_shorter_than_last_page_but_whole_opens(tmp_broker_dir, monkeypatch):
    # LMDB's write(2) path leaves pages allocated and freed in one transaction
    # unwritten; under writemap (D47, "none") the file always reaches the last page.
    monkeypatch.setenv("MQLITE_WRITEMAP", "0")
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send_batch("t", [b"v%d" % i for i in range(100)])
        _allocate_and_free_in_one_txn(b)
    size = os.path.getsize(tmp_broker_dir / "data.mdb")
    assert size < _meta_need(tmp_broker_dir)  # the situation that used to be refused
    monkeypatch.delenv("MQLITE_WRITEMAP")  # a writemap handle opens it too
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert [m.value for m in b.read("t", max_records=1000)] == [b"v%d" % i
                                                                     for i in range(100)]


def test_real_truncation_is_still_refused(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        for _ in range(40):
            b.send_batch("t", [os.urandom(900) for _ in range(50)])
    f = tmp_broker_dir / "data.mdb"
    os.truncate(f, (os.path.getsize(f) // 2) // 4096 * 4096)
    with pytest.raises(mqlite.CorruptRecordError, match="truncated"):
        mqlite.open(tmp_broker_dir, durability="none")
