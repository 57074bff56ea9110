"""Fixed work for instruction counts of the App's per-message path (D40).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/bench_app_cpu.py {app|app-ctx|raw} N

Fills one topic with 101,000 messages of 100 B (durability ``none``,
``map_size`` 1 GiB so valgrind can map it), then handles ``N`` of them:
``app``, an ``mqlite.App`` on that broker with one empty ``async def`` handler
(``batch=1000``); ``app-ctx``, the same handler taking ``ctx: mqlite.Context``
(the full per-message path, D45); ``raw``, a group consumer's ``poll(max_records=1000)`` +
``commit()`` loop.  Instructions per message = the difference of the totals
for N=100000 and N=1000, divided by the difference of the handled counts
(``app`` prints ``handled K`` on stderr: it may handle more than N before it
stops; ``raw`` handles N).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import mqlite


def main() -> None:
    which, n = sys.argv[1], int(sys.argv[2])
    if which not in ("app", "app-ctx", "raw") or not 0 < n <= 100_000:
        raise SystemExit("usage: bench_app_cpu.py {app|app-ctx|raw} N (1-100000)")
    d = tempfile.mkdtemp(prefix="mqlite-bench-app-cpu-")
    try:
        with mqlite.open(d, durability="none", map_size=1 << 30) as b:
            b.create_topic("t")
            for _ in range(101):
                b.send_batch("t", [b"x" * 100] * 1000)
            if which == "raw":
                c = b.consumer("t", group="raw", commit="manual")
                got = len(c.poll(max_records=1000, timeout=5.0))
                c.commit()
                while got < n:
                    got += len(c.poll(max_records=1000, timeout=5.0))
                    c.commit()
                c.close()
                return
            app = mqlite.App(b)
            if which == "app":
                @app.subscriber("t", group="g", batch=1000)
                async def h(v: bytes) -> None:
                    return None
            else:  # the full path: the handler takes a Context
                @app.subscriber("t", group="g", batch=1000)
                async def hc(v: bytes, ctx: mqlite.Context) -> None:
                    return None

            app.start()
            app.wait_ready()
            while sum(r.handled for r in app._runners) < n:
                time.sleep(0.01)
            app.stop()
            # the App may handle more than N before it stops: divide by the difference of
            # these counts, not of the N given
            print("handled", sum(r.handled for r in app._runners), file=sys.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
