"""A 0-byte ``data.mdb``: a fresh start only if the broker was never used (D21).

Issue 10, defect 9: truncating ``data.mdb`` of a used broker to 0 bytes
reopened it as an empty broker, and ``mqlite verify`` said OK: every
acknowledged message was lost without a word.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mqlite
from mqlite.verify import verify


def test_empty_data_file_of_a_used_broker_is_refused(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send("t", b"acknowledged")
    os.truncate(tmp_broker_dir / "data.mdb", 0)
    with pytest.raises(mqlite.CorruptRecordError, match="0 bytes.*in use"):
        mqlite.open(tmp_broker_dir, durability="none")
    assert os.path.getsize(tmp_broker_dir / "data.mdb") == 0  # left as found
    report = verify(str(tmp_broker_dir))
    assert not report.ok
    assert "0 bytes" in report.problems[0].message


def test_empty_data_file_of_a_broker_never_opened_starts_empty(tmp_broker_dir: Path) -> None:
    # A crash inside the first open, after LMDB created data.mdb and before it wrote
    # the meta pages: nothing was ever committed, so nothing can be lost.
    tmp_broker_dir.mkdir(mode=0o700)
    (tmp_broker_dir / "data.mdb").touch(mode=0o600)
    assert not verify(str(tmp_broker_dir)).ok  # verify reports it, never initializes it
    assert os.path.getsize(tmp_broker_dir / "data.mdb") == 0
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert b.topics() == []
        b.create_topic("t")
        b.send("t", b"v")
    assert verify(str(tmp_broker_dir)).ok
