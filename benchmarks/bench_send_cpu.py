"""The single-message CPU path: ``broker.send()`` one 100 B message per call.

Three ways to run it (from the repository root):

``python benchmarks/bench_send_cpu.py send N [--durability none] [--topic-kind plain] [--shape send]``
    Fixed work for ``farm-bench``: open a fresh broker (``map_size=1 GiB``), create
    one topic and send ``N`` messages of 100 B, one ``send()`` each; prints the rate.
    ``--topic-kind`` picks the call shape: ``plain`` (no key, no headers),
    ``key`` (a 4-byte key), ``headers`` (one header) or ``dedup`` (a dedup id each).
    ``--shape`` picks who sends (issue 14's one-sender rows, D78): ``send``
    (``broker.send()`` in the main thread), ``threads1`` (one worker thread calls
    ``producer.send(...).result()`` on a ``producer(linger_ms=0)``, as the runner's
    ``mq_threads`` with n=1) or ``procs1`` (``broker.send()`` while another process,
    which created the topic, holds the broker open, as ``mq_procs`` with n=1).

``python benchmarks/bench_send_cpu.py callgrind [--n 20000] [--src A --src B ...]``
    Instructions per send under callgrind: ``N`` sends minus a 0-send run, per
    source tree (``--src`` is a directory put first on ``PYTHONPATH``, e.g. an old
    checkout's ``src``; default: this checkout).  ``PYTHONHASHSEED=0``.

``python benchmarks/bench_send_cpu.py rate [--n 100000] [--reps 5] [--src A --src B ...]``
    Sends per second of each source tree, interleaved A B A B ..., medians, and
    the ratio of each to the first (one run of this script: same machine load).

Old against new, wall clock (baseline: ``git worktree add --detach /tmp/base bb76c84``,
then ``python setup.py build_ext --inplace`` in it)::

    farm-bench -n 9 --vs 'env PYTHONPATH=/tmp/base/src python benchmarks/bench_send_cpu.py send 100000' \\
        -- python benchmarks/bench_send_cpu.py send 100000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# The other process of ``--shape procs1``: opens the broker, creates the topic, says
# so on stdout and holds the broker open until its stdin closes.
_HOLDER = """
import sys, mqlite
b = mqlite.open(sys.argv[1], durability=sys.argv[2], map_size=1 << 30)
b.create_topic("t")
print("ready", flush=True)
sys.stdin.read()
b.close()
"""


def _send(n: int, durability: str, kind: str, shape: str = "send") -> float:
    import mqlite

    d = tempfile.mkdtemp(prefix="mqlite-sendcpu-")
    holder = None
    try:
        if shape == "procs1":
            holder = subprocess.Popen([sys.executable, "-c", _HOLDER, d, durability],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if holder.stdout is None or holder.stdout.readline().strip() != "ready":
                raise SystemExit("the holder process did not open the broker")
        with mqlite.open(d, durability=durability, map_size=1 << 30) as b:
            if shape != "procs1":
                b.create_topic("t")
            v = bytes(100)
            if shape == "threads1":
                return _producer_waits(b, n, v, kind)
            send = b.send
            b.send("t", v)  # first send: caches filled, as in a running service
            t0 = time.perf_counter()
            if kind == "plain":
                for _ in range(n):
                    send("t", v)
            elif kind == "key":
                k = b"user"
                for _ in range(n):
                    send("t", v, k)
            elif kind == "headers":
                h = {"trace": b"0123456789abcdef"}
                for _ in range(n):
                    send("t", v, headers=h)
            elif kind == "dedup":
                for i in range(n):
                    send("t", v, dedup_id=str(i))
            else:
                raise SystemExit(f"unknown --topic-kind {kind!r}")
            dt = time.perf_counter() - t0
        return n / dt if dt > 0 else 0.0
    finally:
        if holder is not None:
            holder.communicate("", timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def _producer_waits(b: object, n: int, v: bytes, kind: str) -> float:
    """``--shape threads1``: one worker thread sends through a producer and waits each time."""
    if kind != "plain":
        raise SystemExit("--shape threads1 sends plain records only")
    p = b.producer(linger_ms=0)  # type: ignore[attr-defined]
    took: list[float] = []

    def body() -> None:
        send = p.send
        send("t", v).result()  # first send: caches filled, the flusher started
        t0 = time.perf_counter()
        for _ in range(n):
            send("t", v).result()
        took.append(time.perf_counter() - t0)

    try:
        th = threading.Thread(target=body)
        th.start()
        th.join()
    finally:
        p.close()
    if not took:
        raise SystemExit("the sending thread failed")
    return n / took[0] if took[0] > 0 else 0.0


def _env_for(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
    return env


def _callgrind_total(src: str | None, n: int, durability: str, kind: str,
                     shape: str = "send") -> int:
    with tempfile.TemporaryDirectory(prefix="mqlite-cg-") as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               sys.executable, os.path.abspath(__file__), "send", str(n),
               "--durability", durability, "--topic-kind", kind, "--shape", shape]
        r = subprocess.run(cmd, env=_env_for(src), capture_output=True, text=True, check=False)
        m = re.search(r"Collected : (\d+)", r.stderr)
        if r.returncode != 0 or m is None:
            raise SystemExit(f"callgrind failed ({r.returncode}):\n{r.stderr[-2000:]}")
        return int(m.group(1))


def _rate_child(src: str | None, n: int, durability: str, kind: str,
                shape: str = "send") -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "send", str(n),
           "--durability", durability, "--topic-kind", kind, "--shape", shape]
    r = subprocess.run(cmd, env=_env_for(src), capture_output=True, text=True, check=True)
    return float(r.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("mode", choices=["send", "callgrind", "rate"])
    ap.add_argument("n", nargs="?", type=int, default=None)
    ap.add_argument("--n", dest="n_opt", type=int, default=None)
    ap.add_argument("--durability", default="none", choices=["none", "lazy", "sync"])
    ap.add_argument("--topic-kind", default="plain", choices=["plain", "key", "headers", "dedup"])
    ap.add_argument("--shape", default="send", choices=["send", "threads1", "procs1"],
                    help="who sends: broker.send(), one thread waiting on each producer "
                         "future, or broker.send() beside another process holding the broker")
    ap.add_argument("--src", action="append", default=None,
                    help="source tree to put on PYTHONPATH (repeatable; default: this one)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n = args.n if args.n is not None else args.n_opt
    srcs: list[str | None] = list(args.src) if args.src else [None]
    if args.mode == "send":
        rate = _send(100_000 if n is None else n, args.durability, args.topic_kind, args.shape)
        print(f"{rate:.0f} sends/s")
        return
    if args.mode == "callgrind":
        n = 20_000 if n is None else n
        print(f"callgrind, {n} sends of 100 B minus 0 sends, durability={args.durability}, "
              f"kind={args.topic_kind}, shape={args.shape}")
        base = None
        for src in srcs:
            per = (_callgrind_total(src, n, args.durability, args.topic_kind, args.shape)
                   - _callgrind_total(src, 0, args.durability, args.topic_kind, args.shape)) / n
            base = per if base is None else base
            print(f"{src or ROOT + '/src'}: {per:,.0f} instructions/send "
                  f"({per / base:.2f}x the first)")
        return
    n = 100_000 if n is None else n
    rates: dict[int, list[float]] = {i: [] for i in range(len(srcs))}
    for _ in range(args.reps):
        for i, src in enumerate(srcs):
            rates[i].append(_rate_child(src, n, args.durability, args.topic_kind, args.shape))
    print(f"{n} sends of 100 B per run, durability={args.durability}, kind={args.topic_kind}, "
          f"shape={args.shape}, "
          f"{args.reps} interleaved runs, load {os.getloadavg()[0]:.1f}")
    first = statistics.median(rates[0])
    for i, src in enumerate(srcs):
        med = statistics.median(rates[i])
        print(f"{src or ROOT + '/src'}: median {med:,.0f} sends/s "
              f"(min {min(rates[i]):,.0f}, max {max(rates[i]):,.0f}), {med / first:.2f}x the first")


if __name__ == "__main__":
    main()
