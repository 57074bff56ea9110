"""What the README says about closed consumers and per-process durability holds (issue 9)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite
from mqlite import TopicPartition as TP


def test_a_closed_consumer(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"x")
    c = broker.consumer("t", group="g")
    assert len(c.poll(timeout=5)) == 1
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(mqlite.ClosedError):
        c.poll(timeout=0)
    with pytest.raises(mqlite.ClosedError):
        c.commit()
    assert list(c) == []
    assert c.committed(TP("t", 0)) == 1  # close() committed what poll returned
    q = broker.queue("t", "q")
    q.close()
    with pytest.raises(mqlite.ClosedError):
        q.receive(timeout=0)


def test_durability_is_chosen_per_process_not_stored(
        tmp_path: Path, run_python: Callable[..., object]) -> None:
    path = str(tmp_path / "b")
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"from-sync")
        # one process, one mode at a time per directory
        with pytest.raises(ValueError, match="already open in this process"):
            mqlite.open(path, durability="none")
        # another process may open the same directory with another mode
        proc = run_python(
            "import sys, mqlite\n"
            "with mqlite.open(sys.argv[1], durability='none') as b:\n"
            "    b.send('t', b'from-none')\n", path)
        assert proc.returncode == 0, proc.stderr  # type: ignore[attr-defined]
        assert [m.value for m in b.read("t")] == [b"from-sync", b"from-none"]
    # nothing about the mode was stored: reopening with another mode is fine
    with mqlite.open(path, durability="lazy") as b:
        assert len(b.read("t")) == 2
