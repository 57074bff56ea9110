"""Test helpers shared by the commit ring's apply tests (tests/core/test_ring_apply.py,
test_ring_offsets.py): fill a slot, and run the compiled and the Python take of the
same FILLED slots side by side (D56, D73).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import mqlite

__all__ = ["Take", "fill", "take_both"]


def fill(b: mqlite.Broker, payload: bytes, gather: bool = True) -> tuple[int, int]:
    """Claim a slot of ``b``'s commit ring and fill it with ``payload``: (slot, ticket)."""
    comb = b._engine.env.combiner
    i = comb.claim(os.getpid())
    assert i >= 0
    return i, comb.fill(i, payload, gather)


#: What :func:`take_both` gives per take: what it returned, what ``observe`` saw in its
#: transaction, each slot's result, and the wall-clock ms just before and after it.
Take = tuple[Any, Any, dict[int, Any], int, int]


def take_both(b: mqlite.Broker, slots: list[tuple[int, int]],
              observe: Callable[[Any, Any], Any]) -> tuple[Take, Take]:
    """The compiled take (``Engine._take_ring``) and then the Python one
    (``_take_ring_py``) of the same FILLED ``slots``, each in a write transaction that
    is then aborted (so the second sees what the first saw); ``observe(engine, txn)``
    runs after each take, inside its transaction."""
    eng = b._engine
    env = eng.env
    comb = env.combiner
    outs: list[Take] = []
    for take in (eng._take_ring, eng._take_ring_py):
        txn = env.write_txn()
        try:
            t0 = time.time_ns() // 1_000_000
            taken = take(txn, comb)
            t1 = time.time_ns() // 1_000_000
            seen = observe(eng, txn)
            outs.append((taken, seen, {i: comb.result(i) for i, _t in slots}, t0, t1))
        finally:
            env.abort(txn)
    return outs[0], outs[1]
