"""Disk full: a child whose file-size limit (``RLIMIT_FSIZE``) stops ``data.mdb`` growing.

With SIGXFSZ ignored, a write past the limit fails with EFBIG, which is what
a full disk looks like to LMDB (it writes through ``pwrite``; ``writemap`` is
off under ``"sync"``; the ``"none"`` path, which writes through the map, is
``test_writemap.py``'s).  The child sends until a send fails.  The failure must be a typed
mqlite error (:class:`StorageError` or a subclass), never a crash or a raw
``lmdb`` exception; the failed send returned no metadata; and after
reopening without the limit, ``verify`` passes, every send that returned is
readable with the same payload, and offsets are dense.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import _procs_torture as procs
import pytest
from _values import value

import mqlite
from mqlite.verify import verify_in_child


@pytest.mark.parametrize("api", ["send", "batch", "producer"])
def test_write_failure_is_typed_and_earlier_data_intact(children: Any, tmp_broker_dir: Path,
                                                        tmp_path: Path, api: str) -> None:
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0|before the limit")
    size = os.path.getsize(tmp_broker_dir / "data.mdb")
    out = tmp_path / "result.json"
    p = children.start("fill", procs.fill_under_fsize_limit, str(tmp_broker_dir), "t",
                       size + (256 << 10), str(out), api)
    p.join(120)
    assert p.exitcode == 0, f"the child crashed: exit code {p.exitcode}"
    res = json.loads(out.read_text())
    assert res["error"] is not None, "the child never hit the file-size limit"
    name, module, text = res["error"]
    assert module.startswith("mqlite"), f"raw exception escaped: {module}.{name}: {text}"
    assert issubclass(getattr(mqlite, name), mqlite.StorageError), (name, text)
    acked = {(pt, o): crc for pt, o, crc in res["acked"]}
    again = res["again"]  # one more (smaller) send under the limit: fits, or fails typed
    if isinstance(again[0], int):
        acked[(again[0], again[1])] = again[2]
    else:
        assert again[1].startswith("mqlite"), f"second failure untyped: {again}"
        assert issubclass(getattr(mqlite, again[0]), mqlite.StorageError), again
    # Space back (limit lifted) in the same process: the environment was not poisoned.
    assert isinstance(res["recovered"][0], int), f"no recovery: {res['recovered']}"
    acked[(res["recovered"][0], res["recovered"][1])] = res["recovered"][2]
    assert len(acked) > 10
    # Reopen without the limit: everything acknowledged is there, nothing is corrupt.
    rep = verify_in_child(str(tmp_broker_dir), timeout=60)
    assert rep.ok, rep.problems
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        msgs = b.read("t", 0, 0, max_records=100_000)
        stored = {(m.partition, m.offset): value(m) for m in msgs}
        assert [m.offset for m in msgs] == list(range(len(msgs)))  # dense
        assert stored[(0, 0)] == b"0|before the limit"
        for k, crc in acked.items():
            assert k in stored, f"acknowledged message {k} lost"
            assert zlib.crc32(stored[k]) == crc, f"payload of {k} differs"
        # The failed send left no record behind (it was never acknowledged).
        extra = sorted(set(stored) - set(acked) - {(0, 0)})
        assert not extra, f"unacknowledged records stored: {extra[:5]}"
        # Writes work again once space is back.
        md = b.send("t", b"after")
        assert b.read("t", 0, md.offset)[0].value == b"after"
