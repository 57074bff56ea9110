"""How often a producer's flusher thread wakes while one thread sends and waits (D59, D85).

Usage::

    python benchmarks/bench_flusher_wakes.py [--shape idle|busy|gap] [--gap-ms 20]
                                             [--seconds 3] [--durability none]

One producer (``linger_ms=0``) on a fresh broker; after one warm-up ``send().result()``
the main thread, for ``--seconds``: does nothing (``idle``), sends 100-byte records and
waits on each future back to back (``busy``, issue 14's ``threads1`` shape), or does so
with a pause of ``--gap-ms`` between sends (``gap``: a service that sends now and then).
Prints the records sent and, for the flusher thread (``mqlite-producer``), its voluntary
context switches (each a sleep it woke from: a timed wait's expiry, a ``notify``, or a
contended lock) and its CPU time, both from ``/proc/self/task/<tid>/`` (Linux).
Compare trees with ``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mqlite


def _switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches in /proc (Linux only)")


def _cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--shape", choices=("idle", "busy", "gap"), default="busy")
    ap.add_argument("--gap-ms", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--durability", choices=("sync", "lazy", "none"), default="none")
    args = ap.parse_args(argv)
    d = tempfile.mkdtemp(prefix="flusher-wakes-")
    pause = threading.Event()  # never set: its wait is the gap
    try:
        with mqlite.open(d, durability=args.durability) as b:
            b.create_topic("t")
            p = b.producer(linger_ms=0)
            p.send("t", b"warm").result(timeout=30)
            tid = p._thread.native_id
            assert tid is not None
            s0, c0 = _switches(tid), _cpu_s(tid)
            end = time.monotonic() + args.seconds
            sent = 0
            if args.shape == "idle":
                pause.wait(args.seconds)
            while args.shape != "idle" and time.monotonic() < end:
                p.send("t", b"x" * 100).result(timeout=30)
                sent += 1
                if args.shape == "gap":
                    pause.wait(args.gap_ms / 1000)
            s1, c1 = _switches(tid), _cpu_s(tid)
            p.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    wakes = s1 - s0
    per = f", {wakes / sent:.2f} per record" if sent else ""
    print(f"{args.shape} {args.durability} {args.seconds:g} s: {sent} records; flusher "
          f"{wakes} wake-ups ({wakes / args.seconds:.0f}/s{per}), "
          f"{c1 - c0:.3f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
