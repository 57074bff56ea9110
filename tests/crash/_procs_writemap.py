"""Child-process entry points for ``test_writemap.py`` (forkserver children).

Each child records a send only after ``send`` returned: one JSON line
``[partition, offset, crc32]`` per acknowledged message, flushed, so a child
killed with SIGKILL leaves exactly the sends it was told succeeded.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import mqlite


def _env_of(b: mqlite.Broker) -> Any:
    return b._engine.live_env()  # test-only peek at the storage handle


def send_and_record(path: str, durability: str, topic: str, tag: str, n: int,
                    out: str, started: Any, go: Any, halfway: Any | None = None) -> None:
    """Send ``n`` messages of ``tag``; record each acknowledged one in ``out``.

    Sets ``started`` once the broker is open (with the handle's writemap
    state written first to ``out + ".mode"``), waits for ``go``, and sets
    ``halfway`` (if given) after ``n // 2`` acknowledged sends.
    """
    with mqlite.open(path, durability=durability, map_size=256 << 20) as b, \
            open(out, "w", encoding="utf-8") as f:
        with open(out + ".mode", "w", encoding="utf-8") as m:
            m.write(json.dumps({"writemap": _env_of(b).writemap}))
        started.set()
        go.wait(60)
        for i in range(n):
            v = f"{tag}|{i}|".encode() + os.urandom(40 + i % 300)
            md = b.send(topic, v)
            f.write(json.dumps([md.partition, md.offset, zlib.crc32(v)]) + "\n")
            f.flush()
            if halfway is not None and i == n // 2:
                halfway.set()


def read_all(path: str, durability: str, topic: str, out: str, want: int,
             started: Any, go: Any) -> None:
    """Poll ``topic`` from offset 0 until ``want`` messages were read (or 60 s)."""
    import time

    with mqlite.open(path, durability=durability) as b:
        started.set()
        go.wait(60)
        got: list[list[int]] = []
        nxt = 0
        deadline = time.monotonic() + 60
        while len(got) < want and time.monotonic() < deadline:
            msgs = b.read(topic, 0, nxt, max_records=1000)
            for m in msgs:
                assert m.value is not None
                got.append([m.offset, zlib.crc32(m.value)])
            if msgs:
                nxt = msgs[-1].offset + 1
            else:
                time.sleep(0.002)  # polling with a deadline, not synchronisation
        with open(out, "w", encoding="utf-8") as f:
            f.write(json.dumps(got))


def fill_until_full(path: str, out: str) -> None:
    """Under ``"none"`` on a small file system: send 8 KiB messages until a send fails.

    Writes ``{"writemap", "acked", "error", "read_back", "after"}`` to ``out``:
    the error as ``[module, name, text]``; ``read_back`` the number of acked
    messages read back in the same process after the failure; ``after`` the
    outcome of one more small send.
    """
    res: dict[str, Any] = {"acked": [], "error": None}
    try:
        with mqlite.open(path, durability="none", map_size=64 << 20) as b:
            res["writemap"] = _env_of(b).writemap
            b.create_topic("t")
            for i in range(100_000):
                v = f"{i}|".encode() + os.urandom(8192)
                try:
                    md = b.send("t", v)
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    res["error"] = [type(exc).__module__, type(exc).__name__, str(exc)]
                    break
                res["acked"].append([md.partition, md.offset, zlib.crc32(v)])
            msgs = b.read("t", 0, 0, max_records=100_000)
            res["read_back"] = len(msgs)
            try:
                md = b.send("t", b"small")
                res["after"] = ["ok", md.offset]
            except Exception as exc:  # noqa: BLE001
                res["after"] = [type(exc).__module__, type(exc).__name__, str(exc)]
    finally:
        with open(out, "w", encoding="utf-8") as f:
            f.write(json.dumps(res))


def appends_on_a_full_disk(path: str, out: str) -> None:
    """Under ``"none"`` on a small file system: dead letters, a redrive and a due delayed
    message prepared, the disk filled by sends, then each of those appends tried (D57).

    Writes ``{"writemap", "filled", "errors", "after"}`` to ``out``: ``errors`` maps
    ``dead_letter`` / ``redrive`` / ``promote`` to ``[module, name, text]`` (or
    ``["ok", result]``); ``after`` what is still stored once they failed.
    """
    from mqlite import scheduler

    res: dict[str, Any] = {"errors": {}, "filled": None}
    chunk = 512 << 10
    try:
        with mqlite.open(path, durability="none", map_size=64 << 20) as b:
            res["writemap"] = _env_of(b).writemap
            b.create_topic("t")
            b.create_topic("jobs")
            with b.queue("jobs", "w", dead_letter_topic="jobs-dlq",
                         visibility_timeout=600.0) as q:
                for i in range(3):
                    b.send("jobs", bytes([i]) * chunk)
                ds = q.receive(max_messages=3, timeout=5.0)
                assert len(ds) == 3, len(ds)
                q.dead_letter(ds[:2], reason="bad")
                b.send("jobs", b"d" * (2 * chunk), delay=0.001)  # due long before it is tried
                for i in range(100_000):
                    try:
                        b.send("t", f"{i}|".encode() + os.urandom(8192))
                    except Exception as exc:  # noqa: BLE001 - reported to the parent
                        res["filled"] = [type(exc).__module__, type(exc).__name__, str(exc)]
                        break
                tries = {
                    "dead_letter": lambda: q.dead_letter(ds[2], reason="bad"),
                    "redrive": lambda: b.redrive("jobs-dlq"),
                    "promote": b.promote_scheduled,
                }
                for name, fn in tries.items():
                    try:
                        res["errors"][name] = ["ok", fn()]
                    except Exception as exc:  # noqa: BLE001
                        res["errors"][name] = [type(exc).__module__, type(exc).__name__,
                                               str(exc)]
                with b._engine.read() as txn:
                    sched = scheduler.scheduled_counts(txn, b._engine.env.dbs)
                res["after"] = {
                    "dead_letters": len(b.dead_letters("jobs-dlq")),
                    "jobs_end": b.describe_topic("jobs").partitions[0].end_offset,
                    "dlq_end": b.describe_topic("jobs-dlq").partitions[0].end_offset,
                    "scheduled": sched,
                    "pending": len(q.pending()),
                }
    finally:
        with open(out, "w", encoding="utf-8") as f:
            f.write(json.dumps(res))
