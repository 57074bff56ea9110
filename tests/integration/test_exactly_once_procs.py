"""Exactly-once across real processes: two workers race over the same 200 orders.

Each child (``_procs_exactly.py``) reads every order with its own consumer
group, so both try to handle all 200; the claim on the order id must let
exactly one of them apply its effect.  The children start together (they
block on stdin until the parent writes ``go`` to both), never on sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from _values import value

import mqlite

CHILD = str(Path(__file__).with_name("_procs_exactly.py"))
ORDERS = 200


def _setup(path: str) -> list[str]:
    orders = [f"order-{i:03d}" for i in range(ORDERS)]
    with mqlite.open(path, durability="none") as b:
        b.create_topic("orders", partitions=2)
        b.create_topic("effects")
        b.send_batch("orders", [o.encode() for o in orders[0::2]], partition=0)
        b.send_batch("orders", [o.encode() for o in orders[1::2]], partition=1)
    return orders


def _race(path: str, pattern: str, tmp_path: Path, durability: str = "none") -> list[dict]:
    """Run two workers with ``pattern`` from a common start; return their summaries."""
    effects_file = str(tmp_path / "external-effects.txt")
    children: list[subprocess.Popen[str]] = []
    try:
        for w in ("a", "b"):
            args = {"dir": path, "pattern": pattern, "worker": w, "orders": ORDERS,
                    "effects_file": effects_file, "timeout": 120.0, "durability": durability}
            children.append(subprocess.Popen(
                [sys.executable, CHILD, json.dumps(args)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in children:
            assert p.stdout is not None and p.stderr is not None
            line = p.stdout.readline()  # blocks until the child is ready (or died)
            assert line.strip() == "ready", f"child not ready: {line!r} {p.stderr.read()}"
        for p in children:  # the barrier: both are blocked on stdin until now
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        stats = []
        for p in children:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, f"child failed ({p.returncode}): {err}"
            stats.append(json.loads(out.strip().splitlines()[-1]))
        return stats
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait(30)


def _effects(path: str) -> Counter[str]:
    with mqlite.open(path, durability="none") as b:
        msgs = b.consumer("effects").poll(max_records=10_000, timeout=0)
    return Counter(value(m).decode() for m in msgs)


@pytest.mark.parametrize(("pattern", "durability"),
                         [("claim", "none"), ("claim", "sync"), ("legacy", "none")])
def test_two_processes_every_order_has_exactly_one_effect(tmp_broker_dir, tmp_path, pattern,
                                                          durability):
    """``claim`` is the new API; ``legacy`` is the old check-then-record pattern
    (``is_processed`` hint + ``record_processed``), safe now that recording is exclusive."""
    path = str(tmp_broker_dir)
    orders = _setup(path)
    stats = _race(path, pattern, tmp_path, durability)
    effects = _effects(path)
    assert sorted(effects) == orders, "every order has an effect"
    doubled = {o: n for o, n in effects.items() if n != 1}
    assert not doubled, f"{len(doubled)} orders had more than one effect: {stats}"
    assert sum(s["handled"] for s in stats) == 2 * ORDERS
    assert sum(s["effects"] for s in stats) == ORDERS
    refused = sum(s["early"] + s["at_commit"] + s["hint_skips"] for s in stats)
    assert refused == ORDERS, stats
    print(f"{pattern}/{durability}: {ORDERS} orders, {sum(effects.values())} effects, workers {stats}")


def test_two_processes_external_effect_claimed_once(tmp_broker_dir, tmp_path):
    """``broker.claim`` before an effect outside mqlite (a file line): each order once."""
    path = str(tmp_broker_dir)
    orders = _setup(path)
    stats = _race(path, "external", tmp_path)
    lines = (tmp_path / "external-effects.txt").read_text().splitlines()
    seen = Counter(line.split()[0] for line in lines)
    assert sorted(seen) == orders
    assert set(seen.values()) == {1}, stats
    assert sum(s["effects"] for s in stats) == ORDERS
    with mqlite.open(path, durability="none") as b:
        assert all(b.is_processed(o, scope="orders") for o in orders)
