"""What one durable commit costs the device here, against an append-only file's.

Usage::

    python benchmarks/bench_flush_floor.py [DIR] [--n 400]

Times (median of ``--n`` rounds, µs) the flush patterns of the two designs on
the file system of ``DIR`` (default: the temp dir):

* an LMDB ``"sync"`` commit: ``k`` scattered 4 KiB pages rewritten in place,
  ``fdatasync``, then the 120-byte meta page through an ``O_DSYNC``
  descriptor (two device flushes); ``"lazy"`` is the first half;
* Redis ``appendfsync always``: a 200-byte append and one ``fdatasync``.

docs/decisions.md D43 quotes it: the device cost grows by about 35 µs per
page, so a one-message commit (4 pages + meta) costs about twice an append.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

PAGE = 4096


def _median_us(fn: Callable[[int], None], n: int) -> float:
    xs = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=tempfile.gettempdir())
    ap.add_argument("--n", type=int, default=400, help="rounds per pattern (default 400)")
    args = ap.parse_args()
    d = tempfile.mkdtemp(dir=args.dir, prefix="mq-flush-")
    data = os.path.join(d, "data")
    log = os.path.join(d, "log")
    page = b"x" * PAGE
    fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    mfd = -1
    afd = -1
    try:
        for _ in range(16384):  # 64 MiB of written blocks: rewrites need no allocation
            os.write(fd, page)
        os.fsync(fd)
        mfd = os.open(data, os.O_RDWR | os.O_DSYNC)
        rng = random.Random(1)
        print(f"{'pattern':52s} {'median µs':>10s}")
        for k in (1, 2, 4, 8):
            def pages(_i: int, k: int = k) -> None:
                for _ in range(k):
                    os.pwrite(fd, page, rng.randrange(2, 16000) * PAGE)
                os.fdatasync(fd)

            def commit(i: int, k: int = k) -> None:
                pages(i, k)
                os.pwrite(mfd, page[:120], 32 + (i % 2) * PAGE)

            print(f"{f'{k} pages + fdatasync (lazy-like)':52s} {_median_us(pages, args.n):10.1f}")
            print(f"{f'{k} pages + fdatasync + O_DSYNC meta (sync-like)':52s} "
                  f"{_median_us(commit, args.n):10.1f}")
        afd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

        def append(_i: int) -> None:
            os.write(afd, page[:200])
            os.fdatasync(afd)

        print(f"{'append 200 B + fdatasync (Redis always-like)':52s} "
              f"{_median_us(append, args.n):10.1f}")
    finally:
        for f in (fd, mfd, afd):
            if f >= 0:
                os.close(f)
        for p in (data, log):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(d)


if __name__ == "__main__":
    main()
