"""Stale LMDB reader slots: readers SIGKILLed inside a read transaction during churn.

A reader that dies holding a read transaction leaves its slot in
``lock.mdb``; the snapshot it names pins every page freed after it, so a
churning broker (append at the tail, retention deleting at the head) grows
without bound (RELIABILITY.md measured 1.4 MiB -> 686 MiB).  mqlite clears
dead readers' slots (``reader_check``) when a broker is opened and every 5 s
in a writer.  Checked here:

* the killed readers' slots disappear within the 5 s interval (plus margin)
  while the writer keeps writing, and at once on the next open;
* invariant 6: once the slots are gone, further churn does not grow
  ``data.mdb``, which stays within a small multiple of the live data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import _procs_torture as procs

import mqlite

BATCH = [b"c" * 1024] * 64  # 64 KiB per append
RETAIN = 16  # batches kept by retention
CHECK_INTERVAL_S = 5.0  # mqlite.storage.env._READER_CHECK_INTERVAL


def _reader_pids(b: mqlite.Broker) -> set[int]:
    """Pids owning a reader slot that names a snapshot (txnid not "-")."""
    out = set()
    for line in b._engine.env.lmdb.readers().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[2] != "-":
            out.add(int(parts[0]))
    return out


def _start_readers(children: Any, path: Path, tmp_path: Path, n_hold: int) -> list[int]:
    ready = []
    for i in range(n_hold):
        f = tmp_path / f"hold{i}.ready"
        children.start(f"hold{i}", procs.hold_reader, str(path), str(f))
        ready.append(f)
    f = tmp_path / "poll.ready"
    children.start("poll", procs.poll_reader, str(path), str(f), "churn")
    ready.append(f)
    children.wait_until(lambda: all(r.exists() and r.read_text() for r in ready), 30,
                        "readers to open their transactions")
    return [int(r.read_text()) for r in ready]


def _churn(b: mqlite.Broker, seconds: float, min_batches: int = 0) -> None:
    """Append BATCH for ``seconds``, and at least ``min_batches`` times (a loaded machine
    appends far fewer in the same time)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end or n < min_batches:
        b.send_batch("churn", BATCH)
        n += 1
        time.sleep(0.004)


def _size(path: Path) -> int:
    return os.path.getsize(path / "data.mdb")


def test_killed_readers_reclaimed_during_churn(children: Any, tmp_broker_dir: Path,
                                               tmp_path: Path) -> None:
    b = mqlite.open(tmp_broker_dir, durability="none")
    b.create_topic("churn", retention_messages=RETAIN * len(BATCH))
    _churn(b, 0.3)
    pids = _start_readers(children, tmp_broker_dir, tmp_path, n_hold=3)
    holders = set(pids[:3])
    assert holders <= _reader_pids(b)
    # While the readers live, their snapshot pins the pages churn frees: the file grows.
    s0 = _size(tmp_broker_dir)
    _churn(b, 1.0, min_batches=64)  # 4 MiB at least: the growth below is not a rate
    pinned = _size(tmp_broker_dir)
    assert pinned > s0 + (2 << 20), (s0, pinned)
    for name in ("hold0", "hold1", "hold2", "poll"):
        children.kill(name)
    t_kill = time.monotonic()
    # The writer's periodic reader_check clears the dead slots within its interval (the
    # margin is for a loaded machine; without the check they are never cleared).
    while holders & _reader_pids(b):
        assert time.monotonic() - t_kill < CHECK_INTERVAL_S + 10.0, (
            f"stale reader slots of {sorted(holders & _reader_pids(b))} not reclaimed")
        _churn(b, 0.1)
    reclaimed_after = time.monotonic() - t_kill
    # Invariant 6: with the slots gone, churn reuses freed pages instead of growing.
    _churn(b, 0.5)
    s1 = _size(tmp_broker_dir)
    _churn(b, 2.0)
    s2 = _size(tmp_broker_dir)
    live = b.describe_topic("churn").partitions[0].bytes
    print(f"reclaimed after {reclaimed_after:.2f} s; data.mdb {s0 >> 10} KiB -> pinned "
          f"{pinned >> 10} KiB -> {s1 >> 10} KiB -> {s2 >> 10} KiB; live {live >> 10} KiB")
    assert s2 <= s1 + (256 << 10), f"data.mdb still grows after reclaim: {s1} -> {s2}"
    b.close()


def test_stale_slots_cleared_on_next_open(children: Any, tmp_broker_dir: Path,
                                          tmp_path: Path) -> None:
    b = mqlite.open(tmp_broker_dir, durability="none")
    b.create_topic("churn", retention_messages=RETAIN * len(BATCH))
    _churn(b, 0.2)
    pids = _start_readers(children, tmp_broker_dir, tmp_path, n_hold=2)
    assert set(pids[:2]) <= _reader_pids(b)
    b.close()
    for name in ("hold0", "hold1", "poll"):
        children.kill(name)
    with mqlite.open(tmp_broker_dir, durability="none") as b2:
        assert not set(pids) & _reader_pids(b2)
        # And the space they pinned is reusable: steady churn from here stays flat.
        _churn(b2, 0.5)
        s1 = _size(tmp_broker_dir)
        _churn(b2, 1.5)
        assert _size(tmp_broker_dir) <= s1 + (256 << 10)


def test_churn_without_readers_stays_within_a_small_multiple_of_live_data(
        tmp_broker_dir: Path) -> None:
    """Invariant 6 baseline: retention churn alone keeps the file near the live data."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("churn", retention_messages=RETAIN * len(BATCH))
        _churn(b, 2.0)
        live = b.describe_topic("churn").partitions[0].bytes
        size = _size(tmp_broker_dir)
        assert live > 0
        assert size <= 4 * live + (1 << 20), f"data.mdb {size} B for {live} B of live data"
