"""Rebalance latency of a consumer group after a member crash.

Ten member processes (``--members``) share a 60-partition topic
(``--partitions``) in one group.  For each crash the runner SIGKILLs a random
member and measures, from the instant just before the signal:

* **owned**: every partition is owned again by a live member, and the
  ownership map equals the new target assignment (the survivors noticed the
  dead lock, reaped the member, and every partition that had to move has
  been released and handed over);
* **taken**: every partition that changed owner (with the eager ``range``,
  every partition: eager members revoke everything) has been taken by its
  new owner's ``poll()``, i.e. its ``on_assign`` ran.

Then it starts a replacement member, waits until the group is stable again
and repeats.  Rows: durability ``none`` and ``sync`` x assignor
``cooperative-sticky`` and ``range``.  Members idle in ``poll(timeout=1)``,
waiting on the futex, as real consumers between messages would.

Run from the repository root::

    python benchmarks/bench_rebalance.py             # ~1 min on a 2-core box
    python benchmarks/bench_rebalance.py --crashes 9 --json rebalance.json

Every row is bounded (``--crashes``, and a global deadline of ``--budget``
seconds, default 110); a row that runs out of time reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

now_ns = time.monotonic_ns


def member(path: str, durability: str, assignor: str, log_path: str) -> None:
    """A group member that records ``on_assign`` times and idles in ``poll``."""
    import mqlite

    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def assigned(tps: list[Any]) -> None:
        t = now_ns()
        os.write(fd, "".join(f"{t} {x.partition}\n" for x in tps).encode())

    broker = mqlite.open(path, durability=durability)
    consumer = broker.consumer("t", group="bench", assignor=assignor, on_assign=assigned)
    while not stop:
        consumer.poll(timeout=1.0)
    consumer.close()
    broker.close()


def _assign_times(log_path: str) -> dict[int, int]:
    """Latest on_assign time per partition in one member's log."""
    out: dict[int, int] = {}
    try:
        with open(log_path) as f:
            for line in f:
                if line.endswith("\n"):
                    t, p = line.split()
                    out[int(p)] = int(t)
    except FileNotFoundError:
        pass
    return out


class Row:
    def __init__(self, ctx: Any, workdir: str, durability: str, assignor: str,
                 members: int, partitions: int) -> None:
        import mqlite
        from mqlite.groups import load_group

        self.load_group = load_group
        self.ctx = ctx
        self.durability = durability
        self.assignor = assignor
        self.n = members
        self.partitions = partitions
        self.dir = tempfile.mkdtemp(prefix=f"{durability}-{assignor}-", dir=workdir)
        self.path = os.path.join(self.dir, "broker")
        self.broker = mqlite.open(self.path, durability=durability)
        self.broker.create_topic("t", partitions=partitions)
        self.env = self.broker._engine.env
        self.procs: dict[int, tuple[Any, str]] = {}  # pid -> (process, log path)
        self.seq = 0

    def start_member(self) -> None:
        log = os.path.join(self.dir, f"m{self.seq}.log")
        self.seq += 1
        p = self.ctx.Process(target=member, args=(self.path, self.durability, self.assignor, log),
                             daemon=True)
        p.start()
        self.procs[p.pid] = (p, log)

    def state(self) -> Any:
        with self.env.read_txn() as txn:
            return self.load_group(txn, self.env.dbs, "bench")

    def settled(self, dead_pid: int | None) -> bool:
        """Every partition owned by a live member, and ownership equals the target."""
        st = self.state()
        if st is None or len(st.owners) != self.partitions:
            return False
        for k, mid in st.owners.items():
            m = st.members.get(mid)
            if m is None or m.pid == dead_pid:
                return False
            if (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])) not in \
                    {tuple(x) for x in st.assignment.get(mid, ())}:
                return False
        return True

    def stable(self) -> bool:
        """n live members, each owning exactly its target, and each has taken it."""
        st = self.state()
        if st is None or len(st.members) != self.n:
            return False
        if {m.pid for m in st.members.values()} != set(self.procs):
            return False
        owners: dict[str, set[int]] = {}
        for k, mid in st.owners.items():
            owners.setdefault(mid, set()).add(int(k.rsplit(":", 1)[1]))
        for mid in st.members:
            if owners.get(mid, set()) != {p for _, p in st.assignment.get(mid, ())}:
                return False
        return True

    def wait(self, cond: Any, timeout: float) -> bool:
        notifier = self.env.notifier
        deadline = time.monotonic() + timeout
        while True:
            seq = notifier.load(0)
            if cond():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            notifier.wait(0, seq, min(left, 0.002))

    def crash_once(self, rng: random.Random) -> tuple[float, float] | None:
        st = self.state()
        victim = rng.choice(sorted(self.procs))
        before = dict(st.owners)
        proc, _ = self.procs.pop(victim)
        t0 = now_ns()
        os.kill(victim, signal.SIGKILL)
        if not self.wait(lambda: self.settled(victim), 5.0):
            return None
        owned = (now_ns() - t0) / 1e6
        proc.join(5)
        after = self.state().owners
        # Partitions whose owner changed; with an eager assignor every member
        # revokes and re-takes everything, so all of them.
        moved = {int(k.rsplit(":", 1)[1]) for k in after
                 if self.assignor in ("range", "roundrobin") or after[k] != before.get(k)}

        def latest() -> dict[int, int]:
            out: dict[int, int] = {}
            for _, log in self.procs.values():
                for p, t in _assign_times(log).items():
                    out[p] = max(out.get(p, 0), t)
            return out

        deadline = time.monotonic() + 5.0
        while True:
            seen = latest()
            if all(seen.get(p, 0) > t0 for p in moved):
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)
        took = max((seen[p] for p in moved), default=t0)
        return owned, (took - t0) / 1e6

    def close(self) -> None:
        for p, _ in self.procs.values():
            if p.is_alive():
                p.terminate()
        for p, _ in self.procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.broker.close()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_row(ctx: Any, workdir: str, durability: str, assignor: str, args: Any,
            rng: random.Random, deadline: float) -> dict[str, Any]:
    row = Row(ctx, workdir, durability, assignor, args.members, args.partitions)
    owned: list[float] = []
    taken: list[float] = []
    failures = 0
    try:
        for _ in range(row.n):
            row.start_member()
        if not row.wait(row.stable, 30.0):
            raise RuntimeError("the group did not become stable")
        for _ in range(args.crashes):
            if time.monotonic() > deadline:
                break
            r = row.crash_once(rng)
            if r is None:
                failures += 1
            else:
                owned.append(r[0])
                taken.append(r[1])
            row.start_member()
            if not row.wait(row.stable, 15.0):
                raise RuntimeError("the group did not become stable after a restart")
            time.sleep(rng.uniform(0.05, 0.15))
    finally:
        row.close()
    out: dict[str, Any] = {"durability": durability, "assignor": assignor,
                           "members": args.members, "partitions": args.partitions,
                           "crashes": len(owned), "failures": failures,
                           "owned_ms": owned, "taken_ms": taken}
    if owned:
        out.update(owned_median=statistics.median(owned), owned_p90=_pct(owned, 0.9),
                   taken_median=statistics.median(taken), taken_p90=_pct(taken, 0.9))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=60)
    ap.add_argument("--crashes", type=int, default=7, help="crashes per row (>= 5)")
    ap.add_argument("--durability", default="none,sync")
    ap.add_argument("--assignor", default="cooperative-sticky,range")
    ap.add_argument("--budget", type=float, default=110.0, help="seconds for the whole run")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.crashes < 5:
        ap.error("--crashes must be >= 5")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mqlite", "mqlite.groups"])
    deadline = time.monotonic() + args.budget
    rows = []
    print(f"rebalance latency after SIGKILL of one of {args.members} members, "
          f"{args.partitions} partitions, {args.crashes} crashes per row (seed {seed})")
    print(f"{'durability':<10} {'assignor':<19} {'n':>3} {'owned p50':>10} {'p90':>8} "
          f"{'taken p50':>10} {'p90':>8}  (ms)")
    with tempfile.TemporaryDirectory(prefix="mqlite-bench-rebalance-") as workdir:
        os.chmod(workdir, 0o700)
        for durability in args.durability.split(","):
            for assignor in args.assignor.split(","):
                if time.monotonic() > deadline:
                    print(f"{durability:<10} {assignor:<19} skipped: out of time budget")
                    continue
                r = run_row(ctx, workdir, durability, assignor, args, rng, deadline)
                rows.append(r)
                if r["crashes"]:
                    print(f"{durability:<10} {assignor:<19} {r['crashes']:>3} "
                          f"{r['owned_median']:>10.1f} {r['owned_p90']:>8.1f} "
                          f"{r['taken_median']:>10.1f} {r['taken_p90']:>8.1f}"
                          + (f"  ({r['failures']} timed out)" if r["failures"] else ""))
                else:
                    print(f"{durability:<10} {assignor:<19} no crash measured")
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": seed, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
