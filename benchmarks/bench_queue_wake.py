"""What a pool of queue workers spends per message while they wait for work (D67).

Usage::

    python benchmarks/bench_queue_wake.py [--workers 8] [--messages 3000] [--rate 1000]
                                          [--groups 1] [--nack-every 0]

Starts ``--workers`` processes, each a consumer of the same queue (``receive(1)`` then
``ack`` in a loop, as a worker with a prefetch of one), sends ``--messages`` 100-byte
messages from this process at ``--rate`` per second and prints the workers' CPU time
(user + system, all of them) per message.  Before D67 every message woke every waiting
worker; since, it wakes one.  Compare two trees with ``PYTHONPATH=<tree>/src``, alternating.
``--groups G`` spreads the workers over G queue groups of the topic (worker i in group
i mod G), so each message is taken G times; the figure is still per message sent (D70:
the receivers of a topic with several queue groups are woken all at once).
``--nack-every K`` makes each group nack (delay 0) every K-th message on its first
delivery, so it comes back once (D76: a nack wakes one receiver of its own group only).
It also prints the workers' wake-ups per message sent: receive waits that returned before
their timeout with the word moved (counted by wrapping ``mqlite.queue.receive._wait``,
present in every tree since D69).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite
from benchmarks._common import Fleet, paced


def _worker(path: str, group: str, nack_every: int, stop: Any, ready: Any, out: Any) -> None:
    from mqlite.queue import receive as _receive

    woken = [0]
    wait = _receive._wait

    def counted(n: Any, slot: int, seq: int, timeout: float) -> Any:
        t0 = time.monotonic()
        how = wait(n, slot, seq, timeout)
        if how and time.monotonic() - t0 < timeout:
            woken[0] += 1
        return how

    _receive._wait = counted
    with mqlite.open(path, durability="none") as b:
        q = b.queue("jobs", group)
        q.receive(1, timeout=0.01)
        ready.wait(120)
        woken[0] = 0
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        got = 0
        while not stop.is_set():
            for d in q.receive(1, timeout=0.05):
                if nack_every and d.delivery_count == 1 and d.offset % nack_every == 0:
                    d.nack(delay=0)
                    continue
                d.ack()
                got += 1
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.put((got, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, woken[0]))
        q.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    ap.add_argument("--groups", type=int, default=1, help="queue groups the workers join")
    ap.add_argument("--nack-every", type=int, default=0,
                    help="nack every K-th message once per group (0: never)")
    args = ap.parse_args(argv)
    if not 1 <= args.workers <= 64 or args.messages < 1 or not 0 < args.rate <= 1e6 \
            or not 1 <= args.groups <= args.workers or args.nack_every < 0:
        ap.error("--workers 1..64, --messages >= 1, --rate in (0, 1e6], --groups 1..workers, "
                 "--nack-every >= 0")
    groups = ["workers"] + [f"workers{g}" for g in range(1, args.groups)]
    d = tempfile.mkdtemp(prefix="queue-wake-")
    try:
        with mqlite.open(d, durability="none") as b:
            b.create_topic("jobs")
            fleet = Fleet(_worker, [(d, groups[i % args.groups], args.nack_every)
                                    for i in range(args.workers)])
            paced(args.messages, args.rate, lambda _i: b.send("jobs", b"x" * 100))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # every message taken and acked
                sts = [b.queue_stats("jobs", g) for g in groups]
                if all(st is not None and st.ready == 0 and st.inflight == 0 for st in sts):
                    break
                time.sleep(0.01)
            res = fleet.finish()
        print(f"{args.workers} workers in {args.groups} group(s), {args.messages} messages "
              f"at {args.rate:.0f}/s: "
              f"acked {sum(r[0] for r in res)}, workers' CPU "
              f"{sum(r[1] for r in res) / args.messages * 1e6:.0f} µs per message, "
              f"{sum(r[2] for r in res) / args.messages:.2f} wake-ups per message")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
