"""Regression: a data file missing a page of LMDB's free-page tree is refused.

Issue 10, defect 3: after a large delete, the last page of ``data.mdb`` can
be an overflow page of the free-page record, which no named database
references.  Cut that page off and the old open-time check (it walks the
named databases) passed, ``mqlite verify`` said OK, and the first write,
which reads the free list, died of SIGBUS.  The open and the write run in a
child process, so a bus error fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import mqlite
from mqlite._storage.env import _tail_is_unreferenced
from mqlite.verify import verify

_OPEN_AND_WRITE = """
import sys, mqlite
try:
    b = mqlite.open(sys.argv[1], durability="none")
except mqlite.CorruptRecordError as exc:
    print("refused", exc)
    raise SystemExit(0)
b.send("u", b"after")
b.close()
print("wrote")
"""


def test_missing_free_list_page_is_refused_not_a_sigbus_on_write(tmp_broker_dir: Path) -> None:
    rng = random.Random(3)
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", partitions=2)
        b.create_topic("u")
        for _ in range(300):
            b.send_batch("t", [rng.randbytes(500) for _ in range(20)])
        b.delete_topic("t")  # ~900 pages freed: a free-page record with overflow pages
        b.send("u", b"before")
    f = tmp_broker_dir / "data.mdb"
    os.truncate(f, os.path.getsize(f) - 4096)
    assert _tail_is_unreferenced(str(tmp_broker_dir))  # no named database needs the page
    res = subprocess.run([sys.executable, "-c", _OPEN_AND_WRITE, str(tmp_broker_dir)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"child died (signal {-res.returncode}): {res.stdout}"
    assert res.stdout.startswith("refused") and "truncated" in res.stdout, res.stdout
    report = verify(str(tmp_broker_dir))
    assert not report.ok and "truncated" in report.problems[0].message
