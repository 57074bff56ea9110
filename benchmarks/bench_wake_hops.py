"""Where a cross-process wake-up into an asyncio loop spends its time (issue 11, D41, D44).

Three parts, each interleaved round by round in one run (medians of the rounds'
percentiles, microseconds):

1. kernel hand-over, no Python (``_wake_hops.c``, compiled here with ``cc``):
   a writer process bumps a shared futex word at ``--rate``; the waiter is a
   thread in ``FUTEX_WAIT`` (the synchronous poll), or an epoll loop woken by a
   bell thread's pipe write (the doorbell listener of D26), or an epoll loop
   watching an io_uring ``FUTEX_WAIT`` (D41), or the same ring set up with
   ``IORING_SETUP_DEFER_TASKRUN`` and a registered eventfd the loop watches instead
   (tried and not taken, D44);
2. asyncio's own hand-over, in one process: a thread writes a pipe; a thread
   blocked in ``os.read`` returns, against a loop's ``add_reader`` callback that
   resolves a future a task awaits (what ``LoopBell`` does on every ring);
3. the same with the writer in another process (no GIL shared with it), stamped
   at three points: a thread blocked in ``os.read`` (the synchronous poll's
   shape), the loop's reader callback (the selector's share), and the task the
   callback's future resumes (one more loop iteration): the floor under any
   library's ``await poll()`` on a stock asyncio loop (D44); and the task an
   :class:`~mqlite.aio._future.InlineFuture` resumes inside the callback (D48).

4. a worker thread's round trip: ``await`` an empty call handed to a worker
   thread and back, through ``loop.run_in_executor`` (a ``ThreadPoolExecutor``)
   against :class:`mqlite.aio._runner.Runner` (D48).

``--only procs`` / ``--only runner`` runs part 3 / part 4 alone.

    python benchmarks/bench_wake_hops.py [--n 4000 --rate 2000 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def kernel_hops(args: argparse.Namespace) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler: skipping the kernel hand-over part")
        return
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "wake_hops")
        subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "_wake_hops.c"), "-lpthread"],
                       check=True)
        out = subprocess.run([exe, str(args.n), str(args.rate), str(args.rounds)], check=True,
                             capture_output=True, text=True).stdout
    print("[kernel hand-over, another process]\n" + out)


def _pct(xs: list[int], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))] / 1000.0


def _writer(w: int, n: int, gap: float, sent: list[int]) -> None:
    for _ in range(n):
        time.sleep(gap)
        sent.append(time.perf_counter_ns())
        os.write(w, b"x")


def _blocking(n: int, gap: float) -> list[int]:
    r, w = os.pipe()
    sent: list[int] = []
    got: list[tuple[int, int]] = []
    t = threading.Thread(target=_writer, args=(w, n, gap, sent))
    t.start()
    seen = 0
    while seen < n:
        seen += len(os.read(r, 4096))
        got.append((seen, time.perf_counter_ns()))
    t.join()
    os.close(r)
    os.close(w)
    return [now - sent[k - 1] for k, now in got]


class _Reader:
    """The loop side: bytes read so far and the future the task awaits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, r: int) -> None:
        self.r = r
        self.n = 0
        self.fut: asyncio.Future[bool] = loop.create_future()

    def on_ready(self) -> None:
        self.n += len(os.read(self.r, 4096))
        if not self.fut.done():
            self.fut.set_result(True)


async def _loop(n: int, gap: float) -> list[int]:
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(r, False)
    sent: list[int] = []
    got: list[tuple[int, int]] = []
    reader = _Reader(loop, r)
    loop.add_reader(r, reader.on_ready)
    t = threading.Thread(target=_writer, args=(w, n, gap, sent))
    t.start()
    while reader.n < n:
        await reader.fut
        got.append((reader.n, time.perf_counter_ns()))
        reader.fut = loop.create_future()
    await asyncio.to_thread(t.join)
    loop.remove_reader(r)
    os.close(r)
    os.close(w)
    return [now - sent[k - 1] for k, now in got]


def asyncio_hop(args: argparse.Namespace) -> None:
    gap = 1.0 / args.rate
    rows: dict[str, list[tuple[float, float]]] = {"blocking read": [],
                                                  "loop reader -> future -> task": []}
    for _ in range(args.rounds):
        b = _blocking(args.n, gap)
        a = asyncio.run(_loop(args.n, gap))
        rows["blocking read"].append((_pct(b, 0.5), _pct(b, 0.99)))
        rows["loop reader -> future -> task"].append((_pct(a, 0.5), _pct(a, 0.99)))
    print("[asyncio hand-over, one process: a thread writes a pipe]")
    for name, v in rows.items():
        print(f"{name:30} p50 {statistics.median(x[0] for x in v):7.1f}  "
              f"p99 {statistics.median(x[1] for x in v):8.1f}")


def _proc_writer(w: int, n: int, gap: float) -> None:
    """Child process: write the send time (8 bytes) into ``w`` every ``gap`` s."""
    nxt = time.monotonic()
    for _ in range(n):
        nxt += gap
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        os.write(w, time.perf_counter_ns().to_bytes(8, "little"))


def _forked(n: int, gap: float, body: Any) -> list[tuple[int, ...]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(r)
        try:
            _proc_writer(w, n, gap)
        finally:
            os._exit(0)
    os.close(w)
    try:
        return body(r)
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def _xp_blocking(r: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    while True:
        b = os.read(r, 4096)
        now = time.perf_counter_ns()
        if not b:
            return out
        out.append((now - int.from_bytes(b[-8:], "little"),))


def _xp_loop(r: int, inline: bool = False) -> list[tuple[int, ...]]:
    from mqlite.aio._future import InlineFuture

    async def main() -> list[tuple[int, ...]]:
        loop = asyncio.get_running_loop()
        make: Any = (lambda: InlineFuture(loop)) if inline else loop.create_future
        os.set_blocking(r, False)
        out: list[tuple[int, ...]] = []
        box: list[Any] = [make(), b"", 0]

        def on_ready() -> None:
            box[2] = time.perf_counter_ns()
            box[1] = os.read(r, 4096)
            if not box[0].done():
                box[0].set_result(True)

        loop.add_reader(r, on_ready)
        while True:
            await box[0]
            now = time.perf_counter_ns()
            if not box[1]:
                break
            sent = int.from_bytes(box[1][-8:], "little")
            out.append((box[2] - sent, now - sent))
            box[0] = make()
        loop.remove_reader(r)
        return out

    return asyncio.run(main())


def asyncio_hop_procs(args: argparse.Namespace) -> None:
    gap = 1.0 / args.rate
    rows: dict[str, list[tuple[float, float]]] = {
        "blocking read": [], "loop reader callback": [], "-> future -> task": [],
        "-> InlineFuture -> task": []}
    for _ in range(args.rounds):
        b = _forked(args.n, gap, _xp_blocking)
        a = _forked(args.n, gap, _xp_loop)
        i = _forked(args.n, gap, lambda r: _xp_loop(r, inline=True))
        rows["blocking read"].append((_pct([x[0] for x in b], 0.5),
                                      _pct([x[0] for x in b], 0.99)))
        rows["loop reader callback"].append((_pct([x[0] for x in a], 0.5),
                                             _pct([x[0] for x in a], 0.99)))
        rows["-> future -> task"].append((_pct([x[1] for x in a], 0.5),
                                          _pct([x[1] for x in a], 0.99)))
        rows["-> InlineFuture -> task"].append((_pct([x[1] for x in i], 0.5),
                                                _pct([x[1] for x in i], 0.99)))
    print("[asyncio hand-over, another process writes a pipe]")
    for name, v in rows.items():
        print(f"{name:30} p50 {statistics.median(x[0] for x in v):7.1f}  "
              f"p99 {statistics.median(x[1] for x in v):8.1f}")


def _noop() -> None:
    return None


async def _round_trips(kind: str, n: int) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    from mqlite.aio._runner import Runner

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(4)
    runner = Runner()
    out: list[int] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            if kind == "run_in_executor":
                await loop.run_in_executor(pool, _noop)
            else:
                await runner.run(_noop)
            out.append(time.perf_counter_ns() - t0)
    finally:
        pool.shutdown()
        runner.shutdown()
    return out


def runner_hop(args: argparse.Namespace) -> None:
    rows: dict[str, list[tuple[float, float]]] = {"run_in_executor": [], "Runner.run": []}
    for _ in range(args.rounds):
        for kind, v in rows.items():
            xs = asyncio.run(_round_trips(kind, args.n))
            v.append((_pct(xs, 0.5), _pct(xs, 0.99)))
    print("[a worker thread's round trip, an empty call]")
    for name, v in rows.items():
        print(f"{name:30} p50 {statistics.median(x[0] for x in v):7.1f}  "
              f"p99 {statistics.median(x[1] for x in v):8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=["procs", "runner"], default=None)
    args = ap.parse_args()
    if args.only is None:
        kernel_hops(args)
        asyncio_hop(args)
    if args.only in (None, "procs"):
        asyncio_hop_procs(args)
    if args.only in (None, "runner"):
        runner_hop(args)


if __name__ == "__main__":
    main()
