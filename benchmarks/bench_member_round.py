"""Fixed work for callgrind: a group member's poll + commit per message, one message at a time.

Usage::

    valgrind --tool=callgrind --separate-threads=yes \\
        python benchmarks/bench_member_round.py N [--no-commit]   # then 2N; see below

One process, two threads.  The member thread (started first: thread 2 in callgrind's
numbering) loops ``poll(100, timeout=30)`` then ``commit()`` on a one-partition topic under
``"sync"``, as a "pay" member of issue 14's beside shape does (``--no-commit``: polls only).  The main thread sends one
message, but only once the member's poll has run a round that found nothing and is about to
wait (a wrapper around ``Consumer._step`` says so: the same few Python steps in every tree),
then waits for the member's commit; so every poll runs the round that waits and the round
the message wakes, as in the real shape where the message is not sent yet when a poll
starts.  (Unlike the real shape, the member's commit leads its own LMDB commit: nobody else
commits; D65's count had it follow the producer's.)

Instructions per message of the member: its thread's Ir at ``2N`` minus at ``N``, divided by
``N`` (the start-up and the join cancel out).  The member's thread is the one with the most
Ir after the main thread (the group watcher's is started before it and does little).  D68 quotes it; compare trees with
``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite


def main(argv: list[str]) -> int:
    commit = "--no-commit" not in argv
    args = [a for a in argv if a != "--no-commit"]
    if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
        print(__doc__)
        return 2
    n = int(args[0])
    d = tempfile.mkdtemp(prefix="member-round-")
    try:
        with mqlite.open(d, durability="sync", map_size=1 << 30) as b:  # (valgrind: a small map)
            b.create_topic("t")
            c = b.consumer("t", group="pay", commit="manual")
            c.poll(100, timeout=0.01)  # joined, the partition's id learnt
            armed, done = threading.Event(), threading.Event()
            step = c._step

            def hooked(max_records: int, writes: bool, late: bool = False) -> Any:
                s = step(max_records, writes, late)
                if not s.done:
                    armed.set()
                return s

            c._step = hooked  # type: ignore[method-assign]

            def member() -> None:
                for _ in range(n):
                    got: list[Any] = []
                    while not got:
                        got = c.poll(100, timeout=30)
                    if commit:
                        c.commit()
                    done.set()

            t = threading.Thread(target=member)
            t.start()
            for _ in range(n):
                if not armed.wait(120):
                    raise RuntimeError("the member never waited")
                armed.clear()
                b.send("t", b"x" * 100)
                if not done.wait(120):
                    raise RuntimeError("the member never committed")
                done.clear()
            t.join(120)
            c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
