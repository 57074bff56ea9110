"""Broker content and child processes for the console tests (and docs/ screenshots).

``python _ui_procs.py populate DIR``: topics, a stream group, a queue group with
a DLQ and a scheduled message.  ``python _ui_procs.py consume DIR GATES``: a
real consumer process in group ``billing`` that moves in stages gated by files
(no sleeps): it commits 100 messages of ``orders``, writes ``GATES/stage1``,
waits for ``GATES/go``, consumes and commits the rest, writes ``GATES/stage2``
and waits for ``GATES/stop``.
"""

from __future__ import annotations

import os
import sys
import time

import mqlite

ORDERS = 300


def populate(path: str) -> None:
    """Fill a new broker directory with what the console tests look for."""
    with mqlite.open(path, create=True) as b:
        b.create_topic("orders", partitions=3, retention_ms=7 * 86_400_000)
        b.create_topic("emails", partitions=1)
        for p in range(3):  # one transaction per partition: message i lands in i % 3
            idx = range(p, ORDERS, 3)
            b.send_batch("orders",
                         [f'{{"order": {i}, "amount": {i * 3 % 97}}}'.encode() for i in idx],
                         [f"customer-{i % 7}".encode() for i in idx], partition=p,
                         headers=[[("trace-id", f"trace-{i:04d}".encode()),
                                   ("content-type", b"application/json"),
                                   ("blob", bytes([0, 1, 2, 255]))] for i in idx])
        for i in range(5):
            b.send("emails", f"mail {i}".encode(), key=f"user-{i}".encode())
        q = b.queue("emails", "mailers", visibility_timeout=600, max_deliveries=2,
                    dead_letter_topic="emails.dlq")
        got = q.receive(max_messages=2, timeout=5)
        q.dead_letter(got, reason="smtp rejected")
        held = q.receive(max_messages=1, timeout=5)  # stays in flight (owner, 1 delivery)
        assert held, "the queue should hand out a third message"
        q.nack(q.receive(max_messages=1, timeout=5), delay=3600, error="timeout talking to smtp")
        os.write(1, f"held {held[0].offset} owner {q.owner_id}\n".encode())
        b.send("emails", b"tomorrow's mail", delay=86_400)
        # a queue consumer that stays open would keep its lock: leave without closing
        # the queue, so its in-flight message keeps its owner (it expires in 600 s)
        os._exit(0)


def _wait_for(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"gate {path} never appeared")
        time.sleep(0.02)  # polling a file the test creates: not a sleep for ordering


def consume(path: str, gates: str) -> None:
    """The staged consumer (see the module docstring)."""
    with mqlite.open(path) as b:
        c = b.consumer("orders", group="billing", commit="manual")
        done = 0
        while done < 100:
            msgs = c.poll(max_records=100 - done, timeout=5)
            done += len(msgs)
            if msgs:
                c.commit()
        open(os.path.join(gates, "stage1"), "w").close()
        _wait_for(os.path.join(gates, "go"))
        while done < ORDERS:
            msgs = c.poll(max_records=50, timeout=5)
            done += len(msgs)
            if msgs:
                c.commit()
        open(os.path.join(gates, "stage2"), "w").close()
        _wait_for(os.path.join(gates, "stop"))
        c.close()


if __name__ == "__main__":
    if sys.argv[1] == "populate":
        populate(sys.argv[2])
    else:
        consume(sys.argv[2], sys.argv[3])
