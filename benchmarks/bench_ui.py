"""Page times of the web console (``mqlite ui``) on a large broker, beside ``broker.stats()``.

Builds the broker of ``bench_scrape.py`` (``--topics`` x ``--partitions``,
``--groups`` stream groups, ``--queues`` queue groups with a DLQ), serves the
console on a free loopback port (uvicorn in a thread, the sampler running
every second) and times, per round, interleaved: ``broker.stats()`` and a GET
of each page.  Prints the median and the ratio page / stats of each.

Run: ``python benchmarks/bench_ui.py [--rounds 11] [--topics 1000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_scrape import build

PAGES = ["/", "/topics", "/groups", "/groups/g000", "/queues", "/queues/t0000/q0",
         "/topics/t0000?by=offset&value=0&n=20", "/api/history?chart=lag"]


def main() -> None:
    import uvicorn

    from mqlite.ui import History, create_app
    from mqlite.ui.server import bind_socket

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--group-topics", type=int, default=10)
    ap.add_argument("--queues", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=11)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        b = build(os.path.join(d, "b"), a.topics, a.partitions, a.groups, a.group_topics,
                  a.queues)
        print(f"built {a.topics} topics x {a.partitions} partitions, {a.groups} groups, "
              f"{a.queues} queues in {time.monotonic() - t0:.1f} s")
        hist = History(b.stats, interval=1.0)
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(b, history=hist), log_level="warning",
                                               access_log=False, lifespan="off"))
        th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        th.start()
        hist.start()
        while not server.started:
            time.sleep(0.01)
        times: dict[str, list[float]] = {"stats()": []}
        for p in PAGES:
            times[p] = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            b.stats()
            times["stats()"].append(time.perf_counter() - t)
            for p in PAGES:
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=60) as r:
                    r.read()
                times[p].append(time.perf_counter() - t)
        server.should_exit = True
        th.join()
        hist.stop()
        sock.close()
        b.close()
    base = statistics.median(times["stats()"])
    print(f"load average {os.getloadavg()[0]:.1f}; {a.rounds} rounds, medians:")
    for name, v in times.items():
        m = statistics.median(v)
        print(f"  {name:42s} {m * 1000:8.1f} ms   {m / base:5.1f}x stats()")


if __name__ == "__main__":
    main()
