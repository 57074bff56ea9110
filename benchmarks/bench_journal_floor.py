"""The floor of a journal in front of LMDB, for issue 14's multi-process rows (D66).

Usage::

    python benchmarks/bench_journal_floor.py [--rounds 5] [--sends 8000] [--dir DIR]

Compiles ``benchmarks/_journal_floor.c`` (P processes, each sending one 100-byte record
at a time and waiting until it is durable; whoever holds the lock appends every
waiting record to one log file with one ``fdatasync``: no LMDB, no Python) and runs it
for 1, 4 and 16 processes in each log mode, rounds interleaved.  Prints the median
messages per second and records per flush of each row: what a checksummed journal
that made each send durable on its own (LMDB absorbing it later) could reach at best
on this machine, to set against ``python -m benchmarks``' ``send``, ``procs4`` and
``procs16`` rows (mqlite and Redis).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

#: (log mode, gather µs): appended / pre-zeroed log, with and without a gather wait.
MODES = [("append", 0), ("prezeroed", 0), ("prezeroed", 30), ("nosync", 30)]


def _build(out_dir: str) -> str:
    exe = os.path.join(out_dir, "journal_floor")
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", exe,
                    os.path.join(HERE, "_journal_floor.c")], check=True)
    return exe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sends", type=int, default=8000, help="records per run, all processes")
    ap.add_argument("--dir", default=None, help="where the log is written (default: temp)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.sends < 16:
        ap.error("--rounds >= 1 and --sends >= 16")
    work = tempfile.mkdtemp(prefix="journal-floor-", dir=args.dir)
    try:
        exe = _build(work)
        rows: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for procs in (1, 4, 16):
                for mode, gather in MODES:
                    out = subprocess.run(
                        [exe, work, str(procs), str(args.sends // procs), mode, str(gather)],
                        check=True, capture_output=True, text=True).stdout.split()
                    rows.setdefault((procs, mode, gather), []).append(
                        (float(out[3]), float(out[5])))
        print(f"{args.rounds} rounds interleaved, {args.sends} records each, medians")
        print(f"{'procs':>5}  {'log':<10} {'gather':>6}  {'msgs/s':>9}  {'per flush':>9}")
        for (procs, mode, gather), vals in rows.items():
            rate = statistics.median(v[0] for v in vals)
            per = statistics.median(v[1] for v in vals)
            print(f"{procs:>5}  {mode:<10} {gather:>4}us  {rate:>9,.0f}  {per:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
