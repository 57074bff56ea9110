"""Bytes a ring-like LMDB commit writes with its ticket entry in ``meta`` or beside the
partition states (D46's step 3, measured for D50).

Usage::

    strace -f -e trace=pwrite64,pwritev,write,fdatasync -o TRACE \\
        python benchmarks/bench_ticket_page.py meta 500
    python benchmarks/bench_ticket_page.py --count TRACE 500
    python benchmarks/bench_ticket_page.py --time 600 [ROUNDS]

The first form runs raw py-lmdb commits shaped like a combined commit of three
one-message slots (a record put and a state put in each of three partitions,
the previous commit's ticket entry deleted and this one's put), with the ticket
entry in the ``meta`` database (today's layout) or in ``partitions``; it writes
``MARK`` to stderr after 200 warm-up commits.  The second form sums the bytes
the commits after the mark wrote (``pwrite64``/``pwritev``), per commit.  No
mqlite code runs: this measures what LMDB's copy-on-write B-trees write, not
the engine.  The third form times the same commits instead, ``sync`` (data and
meta page flushed) and ``lazy`` (data only), the two layouts interleaved per round:
median µs per commit of each round.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time

_WARM = 200


def run(where: str, n: int, metasync: bool = True) -> list[float]:
    """The commits; returns each one's wall time after the warm-up, µs."""
    import lmdb

    d = tempfile.mkdtemp(prefix="ticket-page-")
    took: list[float] = []
    try:
        env = lmdb.open(d, map_size=1 << 30, max_dbs=8, sync=True, metasync=metasync)
        rdb = env.open_db(b"records")
        pdb = env.open_db(b"partitions")
        mdb = env.open_db(b"meta")
        with env.begin(write=True) as t:
            for name in (b"format", b"topics_version", b"next_partition_id", b"map_size"):
                t.put(name, bytes(8), db=mdb)
            for pid in range(1, 4):
                t.put(struct.pack(">I", pid), bytes(48), db=pdb)
        tdb = mdb if where == "meta" else pdb
        prev = None
        for i in range(n + _WARM):
            if i == _WARM:
                os.write(2, b"MARK\n")
            t0 = time.perf_counter()
            with env.begin(write=True) as t:
                for pid in range(1, 4):
                    t.put(struct.pack(">IQ", pid, i), os.urandom(150), db=rdb)
                    t.put(struct.pack(">I", pid), os.urandom(48), db=pdb)
                if prev is not None:
                    t.delete(prev, db=tdb)
                prev = b"comb:" + struct.pack(">QI", 10**18 + 3 * i, 3)
                t.put(prev, os.urandom(36 * 3), db=tdb)
            if i >= _WARM:
                took.append((time.perf_counter() - t0) * 1e6)
        env.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return took


def timed(n: int, rounds: int) -> None:
    for mode, metasync in (("sync", True), ("lazy", False)):
        res: dict[str, list[float]] = {"meta": [], "partitions": []}
        for _ in range(rounds):
            for where, medians in res.items():
                medians.append(statistics.median(run(where, n, metasync)))
        print(f"{mode}: " + ", ".join(
            f"{w} {' '.join(f'{x:.0f}' for x in v)}" for w, v in res.items())
            + " (median µs per commit, per round)")


def count(trace: str, n: int) -> None:
    with open(trace) as f:
        lines = f.read().splitlines()
    start = next(k for k, line in enumerate(lines) if "MARK" in line)
    calls = written = syncs = 0
    for line in lines[start + 1:]:
        m = re.search(r"pwritev?(?:64)?\(.*\) = (\d+)$", line)
        if m:
            calls += 1
            written += int(m.group(1))
        elif "fdatasync" in line:
            syncs += 1
    print(f"{n} commits: {calls / n:.2f} writes, {written / n:.0f} bytes "
          f"({written / n / 4096:.2f} pages of 4 KiB), {syncs / n:.2f} fdatasync per commit")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--count":
        count(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "--time":
        timed(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 4)
    elif len(sys.argv) == 3 and sys.argv[1] in ("meta", "partitions"):
        run(sys.argv[1], int(sys.argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
