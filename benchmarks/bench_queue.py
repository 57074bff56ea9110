"""Queue mode throughput: mqlite receive(1000) + ack vs Redis Streams XREADGROUP + XACK.

Run: ``python benchmarks/bench_queue.py`` (about a minute; bounded well under 3).

Workload, per durability mode and per run (median of ``--runs`` runs, >= 5):
100-byte messages are loaded first (not timed), then one consumer takes them
1,000 at a time and acknowledges each batch:

* mqlite: ``queue.receive(1000, timeout=0)`` + ``queue.ack(batch)`` on a fresh
  broker directory opened with ``durability="none"`` / ``"sync"``;
* Redis: a private ``redis-server`` on 127.0.0.1 (free port, temp dir) run with
  ``--save '' --appendonly no`` for "none" and ``--appendonly yes
  --appendfsync always`` for "sync"; XADD the messages first (pipelined),
  then ``XREADGROUP COUNT 1000`` + ``XACK`` of the previous batch, pipelined
  together, through redis-py.

Prints msgs/s for both and the ratio mqlite / Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import mqlite

VALUE = b"v" * 100
BATCH = 1000


def bench_mqlite(durability: str, n: int) -> float:
    root = tempfile.mkdtemp(prefix="mqlite-bench-")
    try:
        os.chmod(root, 0o700)
        with mqlite.open(os.path.join(root, "b"), durability=durability) as broker:
            broker.create_topic("bench")
            values = [VALUE] * BATCH
            for _ in range(n // BATCH):
                broker.send_batch("bench", values)
            q = broker.queue("bench", group="g")
            done = 0
            t0 = time.perf_counter()
            while done < n:
                ds = q.receive(BATCH, timeout=0)
                if not ds:
                    break
                q.ack(ds)
                done += len(ds)
            dt = time.perf_counter() - t0
            q.close()
        if done != n:
            raise RuntimeError(f"mqlite consumed {done} of {n}")
        return n / dt
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server in a temp dir; stopped (and its dir removed) on exit."""

    def __init__(self, durability: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="redis-bench-")
        self.port = _free_port()
        persist = (["--save", "", "--appendonly", "no"] if durability == "none" else
                   ["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
             "--daemonize", "no", "--protected-mode", "yes", *persist],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):  # -> redis.Redis
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_redis(client, n: int) -> float:
    client.delete("bench")
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, BATCH):
        for _ in range(BATCH):
            pipe.xadd("bench", {"v": VALUE})
        pipe.execute()
    client.xgroup_create("bench", "g", id="0")
    done = 0
    prev: list[bytes] = []
    t0 = time.perf_counter()
    while done < n:
        if prev:
            pipe.xack("bench", "g", *prev)
        pipe.xreadgroup("g", "c1", {"bench": ">"}, count=BATCH)
        res = pipe.execute()[-1]
        if not res:
            break
        entries = res[0][1]
        prev = [eid for eid, _ in entries]
        done += len(entries)
    if prev:
        client.xack("bench", "g", *prev)
    dt = time.perf_counter() - t0
    if done != n:
        raise RuntimeError(f"redis consumed {done} of {n}")
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=5, help="runs per row (median; >= 5)")
    ap.add_argument("--modes", default="none,sync")
    args = ap.parse_args()
    runs = max(5, args.runs)
    n = max(BATCH, args.messages // BATCH * BATCH)
    have_redis = shutil.which("redis-server") is not None
    if have_redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            print("redis-py is missing: pip install redis  (running mqlite rows only)")
            have_redis = False
    else:
        print("redis-server not found; install it to compare (Debian/Ubuntu: "
              "apt-get install -y redis-server). Running mqlite rows only.")
    print(f"queue consume+ack, {len(VALUE)}-byte messages, {n} per run, batches of {BATCH}, "
          f"median of {runs} runs; python {sys.version.split()[0]}, mqlite {mqlite.__version__}")
    print(f"{'durability':<11}{'mqlite msgs/s':>15}{'redis msgs/s':>15}{'mqlite/redis':>14}")
    for mode in args.modes.split(","):
        ours = [bench_mqlite(mode, n) for _ in range(runs)]
        m = statistics.median(ours)
        if have_redis:
            with RedisServer(mode) as client:
                theirs = [bench_redis(client, n) for _ in range(runs)]
            r = statistics.median(theirs)
            print(f"{mode:<11}{m:>15,.0f}{r:>15,.0f}{m / r:>13.2f}x")
        else:
            print(f"{mode:<11}{m:>15,.0f}{'-':>15}{'-':>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
