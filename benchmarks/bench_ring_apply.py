"""The commit ring's committer: CPU per slot to apply combined sends (D35).

Usage::

    python benchmarks/bench_ring_apply.py [--slots 32] [--partitions 1] [--rounds 30]
        [--stale 0]

Fills ``--slots`` ring slots with one 100 B send each (spread round-robin over
``--partitions``), then times the committer's apply step (``Engine._take_ring``:
parse, topic lookup, append, ticket record) inside a write transaction that is
aborted, ``--rounds`` times; prints the median microseconds per slot.  No
commit, no sync: this is the CPU the committer spends per operation while
every other sender waits for it.  ``--stale N`` first commits N ticket entries
that no slot holds, as the commit before leaves one, so that each apply also
prunes them (D50; the default 0 is D35's and D46's setting).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import mqlite
from mqlite import _core
from mqlite._storage import tickets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--stale", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        # a 1 GiB map, as bench_send_cpu.py: valgrind refuses the default size
        b = mqlite.open(os.path.join(d, "b"), durability="lazy", map_size=1 << 30)
        b.create_topic("orders", partitions=args.partitions)
        b.send("orders", b"warm-up")
        eng = b._engine
        env = eng.env
        comb = env.combiner
        if comb is None:
            raise SystemExit("no commit ring (MQLITE_COMBINE=0?)")
        rec = eng.topic_cached("orders")
        with eng.write() as txn:  # the entries of earlier commits (tickets no slot holds)
            for n in range(args.stale):
                tickets.record_many(txn, env.dbs, [(1 + 2 * n, (0, 0, n, 1)),
                                                   (2 + 2 * n, (0, 0, n + 1, 1))])
        maxb = rec.config["max_message_bytes"]
        mine = []
        for i in range(args.slots):
            bs = _core.encode_batches((b"x" * 100,), None, None, 1000 + i, max_message_bytes=maxb)
            idx = comb.claim(os.getpid())
            mine.append((idx, comb.fill(idx, eng.ring_payload(
                "orders", i % args.partitions, 1000 + i, maxb, bs, None))))
        per_slot = []
        for _ in range(args.rounds):
            txn = env.write_txn()
            t0 = time.perf_counter()
            eng._take_ring(txn, comb)
            per_slot.append((time.perf_counter() - t0) / args.slots * 1e6)
            env.abort(txn)
        for idx, ticket in mine:
            comb.withdraw(idx, ticket)
        b.close()
    med = statistics.median(per_slot)
    print(f"committer apply: median {med:.1f} us per slot, {med * args.slots:.1f} per apply "
          f"({args.slots} slots, {args.partitions} partition(s), {args.rounds} rounds, "
          f"{args.stale} stale ticket entries)")


if __name__ == "__main__":
    main()
