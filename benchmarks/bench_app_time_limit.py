"""Cost of the queue time limit (D88): a no-op sync queue handler, concurrency=1, with
time_limit=None vs the default.  Run: python benchmarks/bench_app_time_limit.py"""

from __future__ import annotations

import statistics
import tempfile
import time

import mqlite


def run(tl: str) -> float:
    d = tempfile.mkdtemp(prefix="jtb")
    app = mqlite.App(d, durability="none")
    kw: dict[str, object] = {} if tl == "default" else {"time_limit": None}

    @app.subscriber("jobs", group="w", mode="queue", **kw)  # type: ignore[arg-type]
    def job(x: int) -> None:
        return None
    app.broker.create_topic("jobs")
    app.broker.send_batch("jobs", [b"1"] * 20000)
    t = time.perf_counter()
    app.start()
    app.wait_idle(timeout=300)
    dt = time.perf_counter() - t
    app.stop()
    return 20000 / dt


if __name__ == "__main__":
    res: dict[str, list[float]] = {"none": [], "default": []}
    for _ in range(5):
        for k, runs in res.items():
            runs.append(run(k))
    for k, v in res.items():
        print(k, "median msgs/s", round(statistics.median(v)), [round(x) for x in v])
