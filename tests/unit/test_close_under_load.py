"""Issue 10, defect 2: ``Broker.close()`` while other threads use the broker.

It used to crash the process (SIGSEGV in ``read``, group-less ``poll``, ``send``;
once "double free or corruption"), hang in ``Environment.close()``, or hand the
other threads raw ``lmdb.Error`` / ``ValueError: Notifier is closed``.  Now the
environment closes only when no transaction is open (the last one out closes
it), and every call after ``close()`` raises :class:`mqlite.ClosedError`.

The race runs in child processes so that a crash fails the test instead of
killing pytest; each child repeats it and reports every exception type seen.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import mqlite

SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)

CHILD = textwrap.dedent("""
    import sys, threading, mqlite
    path, rounds = sys.argv[1], int(sys.argv[2])
    seen = set()
    for r in range(rounds):
        b = mqlite.open(path, durability="none")
        if r == 0:
            b.create_topic("t", partitions=2)
        consumer = b.consumer("t")                  # group-less: reads every partition
        busy = {w: threading.Event() for w in ("send", "read", "poll")}
        def run(what):
            for i in range(1_000_000):
                if i == 20:
                    busy[what].set()                # in full swing: now close under it
                try:
                    if what == "send":
                        b.send("t", b"x" * 100)
                    elif what == "read":
                        b.read("t", 0, 0, 50)
                    else:
                        consumer.poll(50, timeout=0)
                except mqlite.ClosedError:
                    return
                except Exception as exc:
                    seen.add(f"{what}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
                    return
        threads = [threading.Thread(target=run, args=(w,)) for w in ("send", "read", "poll")]
        for t in threads:
            t.start()
        for e in busy.values():
            e.wait(60)
        b.close()                                   # while the three threads are busy
        for t in threads:
            t.join(60)
            if t.is_alive():
                seen.add("a thread did not stop within 60 s of close()")
        try:
            b.send("t", b"after")
        except mqlite.ClosedError:
            pass
        else:
            seen.add("send after close() did not raise ClosedError")
    print(sorted(seen))
""")


def test_close_while_threads_send_read_and_poll(tmp_path: Path) -> None:
    for child in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / f"b{child}"), "15"],
            capture_output=True, text=True, timeout=300, env={"PYTHONPATH": SRC_DIR},
            check=False)
        assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-3000:]}"
        assert proc.stdout.strip() == "[]", proc.stdout
