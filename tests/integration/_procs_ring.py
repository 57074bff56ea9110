"""Children of test_commit_ring.py: processes sending through the commit ring."""

from __future__ import annotations

import os
from typing import Any

import mqlite


def sender(path: str, mode: str, name: str, n: int, barrier: Any, out: Any) -> None:
    """Send ``n`` messages ``name:i`` one at a time (send, send_batch of 2, producer)."""
    try:
        b = mqlite.open(path, durability=mode)
        prod = b.producer()
        got: list[tuple[str, int, int]] = []
        barrier.wait(60)
        i = 0
        while i < n:
            k = i % 3
            if k == 0 or i + 1 >= n:
                md = b.send("t", f"{name}:{i}".encode(), key=name.encode())
                got.append((f"{name}:{i}", md.partition, md.offset))
                i += 1
            elif k == 1:
                bm = b.send_batch("t", [f"{name}:{i}".encode(), f"{name}:{i + 1}".encode()],
                                  partition=got[-1][1])
                got += [(f"{name}:{i + j}", bm[j].partition, bm[j].offset) for j in range(2)]
                i += 2
            else:
                md = prod.send("t", f"{name}:{i}".encode(), key=name.encode()).result(60)
                got.append((f"{name}:{i}", md.partition, md.offset))
                i += 1
        prod.close()
        b.close()
        out.put(("ok", name, got, os.getpid()))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        barrier.abort()
        out.put(("error", name, repr(exc), os.getpid()))
