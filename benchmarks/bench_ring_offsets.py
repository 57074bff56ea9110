"""The commit ring's committer applying members' offset commits (issue 14, D71, D73).

Usage::

    python benchmarks/bench_ring_offsets.py [--rounds 2000] [--members 2] [--partitions 3]
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*take_ring*' \\
        python benchmarks/bench_ring_offsets.py --rounds N

The shape of a ring commit led by ``beside4``'s producer (D71): one ring slot holding a
100-byte send and ``--members`` slots each holding one group member's offset commit of
one partition (the members of group "pay" on a ``--partitions`` topic).  The slots are filled
once; each round applies them (``Engine._take_ring``) in a write transaction that is aborted
(they stay FILLED): no commit, no sync.  Prints the median microseconds of one apply.
Under callgrind, the instructions of ``--rounds N`` minus ``--rounds M`` over ``N - M``
are the instructions of one apply (the work is fixed: every round applies the same
slots to the same stored state).  ``PYTHONPATH=<tree>/src`` compares source trees.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import mqlite
from mqlite import _core
from mqlite.groups.member import _ring_enc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()
    if not 1 <= args.members <= args.partitions:
        raise SystemExit("--members must be in 1..--partitions")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "b")
        # a 1 GiB map, as bench_send_cpu.py: valgrind refuses the default size
        b = mqlite.open(path, durability="lazy", map_size=1 << 30)
        b.create_topic("pay", partitions=args.partitions)
        for i in range(args.partitions * 4):
            b.send("pay", b"m", partition=i % args.partitions)
        members = [b.consumer("pay", group="pay", commit="manual")
                   for _ in range(args.members)]
        for _ in range(3):  # every member joined and owns its partitions
            for c in members:
                c.poll(100, timeout=0.01)
        owned = [c._group.owned[0] for c in members]
        for c, tp in zip(members, owned):
            c.commit({tp: 1})  # the stored offsets exist, as in a running group
        eng = b._engine
        env = eng.env
        comb = env.combiner
        if comb is None:
            raise SystemExit("no commit ring (MQLITE_COMBINE=0?)")
        maxb = eng.topic_cached("pay").config["max_message_bytes"]
        send = eng.ring_payload("pay", 0, 1000, maxb, _core.encode_batches(
            (b"x" * 100,), None, None, 1000, max_message_bytes=maxb), None)
        offs = []
        for c, tp in zip(members, owned):
            m = c._group
            offs.append(m._ring_head() + _ring_enc.encode([(tp.topic, tp.partition, 2)]))
        times = []
        mine = []
        for payload in (send, *offs):  # filled once: each aborted take leaves them FILLED
            idx = comb.claim(os.getpid())
            mine.append((idx, comb.fill(idx, payload)))
        for _ in range(args.rounds):
            txn = env.write_txn()
            t0 = time.perf_counter_ns()
            taken = eng._take_ring(txn, comb)
            times.append(time.perf_counter_ns() - t0)
            env.abort(txn)
            if taken is None or len(taken) != len(mine):
                raise SystemExit(f"took {taken!r} of {mine!r}")
            for idx, _ticket in mine:
                if comb.result(idx)[0] != 0:
                    raise SystemExit(f"slot {idx}: {comb.result(idx)!r}")
        for idx, ticket in mine:
            comb.withdraw(idx, ticket)
        for c in members:
            c.close()
        b.close()
    med = statistics.median(times) / 1000
    print(f"committer apply: median {med:.1f} us per take (1 send + {args.members} offset "
          f"commits, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
