"""Child entry point for ``test_power_loss.py``; runs under the I/O shim with tracing on.

Usage: ``python _procs_powerloss.py <json config>`` with ``path``,
``durability``, ``ops`` and ``seed``; ``MQLITE_TRACE_FILE`` (read by the
shim) names the trace.  The child opens a fresh broker, creates the checked
topic ``t`` (2 partitions, no retention) and a churn topic ``c`` (retention of
a few messages, so LMDB frees and reuses pages), then runs ``ops`` random
operations: single sends and ``send_batch`` calls to ``t``, sends to ``c``,
queue receives on ``t`` (group ``w``) acking about half of what they got, and
polls + commits of a stream consumer group ``g`` on ``t``.

With ``combine`` true, some single sends first hand 1-5 more single sends to
the commit ring as other processes would (slots claimed and filled directly);
the send that follows leads and commits them all in its one transaction (runs
per partition, one ticket entry; D35), and their ids are reported with its own.

Each line is printed, flushed at once, after the call it reports returned,
with the number of trace records that existed then:

``READY <n>``                        the topics exist
``ACK <n> <id>:<crc32> ...``         a send / send_batch to ``t`` stored these
                                     values (``t-<id>-`` and padding; ids unique)
``QACK <n> <id> ...``                ``queue.ack`` of these messages returned
``GCOMMIT <n> <partition>:<offset> ...``  group ``g`` committed these positions
``DONE``                             clean end
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import sys
import zlib
from typing import Any

import mqlite
from mqlite import _core


def _value(n: int, rng: random.Random) -> bytes:
    # sizes from a few bytes to just under a page and past it, so commits touch
    # several pages and values sometimes span overflow pages
    pad = rng.choice((0, 10, 200, 1500, 3000, 5000))
    return f"t-{n}-".encode() + bytes([48 + n % 10]) * pad


def _ident(value: bytes | None) -> int:
    assert value is not None  # every record here was sent with a value
    return int(value.split(b"-", 2)[1])


def _hand_over(b: mqlite.Broker, values: list[bytes], out: list[bytes]
               ) -> list[tuple[int, int]]:
    """Put single sends of ``values`` to ``t`` into ring slots (as another process
    would); the ``(slot, ticket)`` pairs (values appended to ``out``)."""
    eng = b._engine
    comb = eng.env.combiner
    assert comb is not None, "no commit ring"
    rec = eng.topic_cached("t")
    maxb = rec.config["max_message_bytes"]
    handed = []
    for v in values:
        idx = comb.claim(os.getpid())
        assert idx >= 0
        batches = _core.encode_batches((v,), None, None, 1000, max_message_bytes=maxb)
        payload = eng.ring_payload("t", len(out) % 2, 1000, maxb, batches, None)
        handed.append((idx, comb.fill(idx, payload)))
        out.append(v)
    return handed


def _collect(b: mqlite.Broker, handed: list[tuple[int, int]]) -> None:
    """After the leading send returned: every handed slot is DONE and stored."""
    comb = b._engine.env.combiner
    for idx, ticket in handed:
        assert comb.word(idx) == (ticket, _core.DONE), "a handed slot was not committed"
        assert comb.result(idx)[0] == 0, comb.result(idx)
        assert comb.release(idx, ticket)


def main(cfg: dict[str, Any]) -> None:
    lib = ctypes.CDLL(None)  # the preloaded shim's symbols are global
    lib.mqlite_trace_count.restype = ctypes.c_longlong
    rng = random.Random(cfg["seed"])
    out = sys.stdout
    n = 0
    n_handed = 0
    with mqlite.open(cfg["path"], durability=cfg["durability"]) as b:
        b.create_topic("t", partitions=2)
        b.create_topic("c", retention_messages=5)
        q = b.queue("t", group="w", visibility_timeout=600)
        g = b.consumer("t", group="g", commit="manual")
        out.write(f"READY {lib.mqlite_trace_count()}\n")
        out.flush()
        for _ in range(cfg["ops"]):
            r = rng.random()
            if r < 0.12:
                got = q.receive(rng.randrange(1, 30), timeout=0)
                done = [d for d in got if rng.random() < 0.5]
                if done:
                    q.ack(done)
                    out.write(f"QACK {lib.mqlite_trace_count()} "
                              + " ".join(str(_ident(d.value)) for d in done) + "\n")
                    out.flush()
                continue
            if r < 0.2:
                if g.poll(rng.randrange(1, 60), timeout=0):
                    g.commit()
                    pos = g.positions()
                    out.write(f"GCOMMIT {lib.mqlite_trace_count()} "
                              + " ".join(f"{tp.partition}:{o}" for tp, o in pos.items()) + "\n")
                    out.flush()
                continue
            if r < 0.32:
                churn = [bytes(rng.randrange(1, 3000)) for _ in range(rng.randrange(1, 8))]
                b.send_batch("c", churn)
                continue
            if r < 0.6:
                values: list[bytes] = []
                handed: list[tuple[int, int]] = []
                if cfg.get("combine") and rng.random() < 0.5:
                    handed = _hand_over(b, [_value(n + i, rng) for i in range(rng.randrange(
                        1, 6))], values)
                values.append(_value(n + len(values), rng))
                b.send("t", values[-1], key=str(n % 7).encode())
                _collect(b, handed)
                n_handed += len(handed)
            else:
                values = [_value(n + i, rng) for i in range(rng.randrange(1, 40))]
                b.send_batch("t", values)
            n += len(values)
            out.write(f"ACK {lib.mqlite_trace_count()} "
                      + " ".join(f"{_ident(v)}:{zlib.crc32(v)}" for v in values) + "\n")
            out.flush()
        g.close()
        q.close()
    assert n_handed or not cfg.get("combine"), "no send was handed to the commit ring"
    out.write("DONE\n")
    out.flush()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
