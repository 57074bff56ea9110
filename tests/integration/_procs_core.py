"""Child-process entry points for the core integration and crash tests.

Run as ``python -m _procs_core COMMAND ARGS...`` with this directory on
``PYTHONPATH`` (see ``_integration_fixtures.CoreProcs``), or import the functions as
``multiprocessing`` targets.  Paths and parameters come in through argv;
results go to stdout, one line per event, flushed at once so the parent can
act on a line the moment it is written (e.g. SIGKILL right after "sent").

Commands
--------
send DIR MODE TOPIC API VALUE_HEX
    Open with durability MODE, send VALUE once through API (``send``,
    ``batch`` or ``producer``), print ``sent PARTITION OFFSET`` and sleep
    until killed.
send-loop DIR MODE TOPIC SEED
    Send numbered values forever (mixing APIs); after each send returns,
    print ``sent PARTITION OFFSET VALUE_HEX``.
read DIR TOPIC
    Print one JSON list of ``[partition, offset, value_hex]`` of every message.
wait-poll DIR TIMEOUT TOPIC...
    Print ``ready`` once positioned at the end, then poll once with TIMEOUT
    and print JSON ``{"n", "wall", "elapsed", "cpu"}`` (wall = time.time()
    when poll returned; cpu = process CPU seconds spent inside poll).
read-all DIR
    Open and read every message of every topic; print ``ok N``, or
    ``corrupt TOPIC PARTITION OFFSET`` on CorruptRecordError (exit 0);
    ``error TYPE`` on any other exception (exit 3).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import mqlite


def _say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def cmd_send(path: str, mode: str, topic: str, api: str, value_hex: str) -> None:
    value = bytes.fromhex(value_hex)
    b = mqlite.open(path, durability=mode)
    if api == "send":
        md = b.send(topic, value)
    elif api == "batch":
        md = b.send_batch(topic, [value])[0]
    elif api == "producer":
        p = b.producer(linger_ms=1)
        md = p.send(topic, value).result()
    else:
        raise SystemExit(f"unknown api {api}")
    _say("sent", md.partition, md.offset)
    time.sleep(60)  # the parent kills us; never close cleanly


def cmd_send_loop(path: str, mode: str, topic: str, seed: str) -> None:
    rng = random.Random(seed)
    b = mqlite.open(path, durability=mode)
    p = b.producer(linger_ms=1)
    i = 0
    while True:
        value = b"%s-%d-" % (seed.encode(), i) + rng.randbytes(rng.randrange(0, 300))
        api = rng.random()
        if api < 0.5:
            md = b.send(topic, value, key=b"%d" % (i % 7))
            mds = [(md, value)]
        elif api < 0.8:
            values = [value + b"/%d" % j for j in range(rng.randrange(1, 20))]
            bmd = b.send_batch(topic, values)
            mds = list(zip(bmd, values))
        else:
            mds = [(p.send(topic, value).result(), value)]
        for md, v in mds:
            _say("sent", md.partition, md.offset, v.hex())
        i += 1


def cmd_read(path: str, topic: str) -> None:
    with mqlite.open(path) as b:
        c = b.consumer(topic)
        out: list[list[Any]] = []
        while batch := c.poll(max_records=10_000, timeout=0):
            out += [[m.partition, m.offset, (m.value or b"").hex()] for m in batch]
    _say(json.dumps(out))


def cmd_wait_poll(path: str, timeout: str, *topics: str) -> None:
    with mqlite.open(path) as b:
        c = b.consumer(list(topics), auto_offset_reset="latest")
        assert c.poll(timeout=0) == []  # positioned at the end
        _say("ready")
        cpu0, t0 = time.process_time(), time.monotonic()
        msgs = c.poll(timeout=float(timeout))
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        wall = time.time()
        _say(json.dumps({"n": len(msgs), "wall": wall, "elapsed": elapsed, "cpu": cpu,
                         "values": [(m.value or b"").hex() for m in msgs]}))


def cmd_read_all(path: str) -> None:
    try:
        with mqlite.open(path) as b:
            n = 0
            for topic in b.topics():
                c = b.consumer(topic)
                while batch := c.poll(max_records=10_000, timeout=0):
                    n += len(batch)
            _say("ok", n)
    except mqlite.CorruptRecordError as exc:
        _say("corrupt", exc.topic, exc.partition, exc.offset)
        _say("message", str(exc).replace("\n", " "))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        _say("error", type(exc).__name__, str(exc).replace("\n", " "))
        sys.exit(3)


# -- multiprocessing targets -------------------------------------------------------------------


def mp_use_inherited_broker(broker: mqlite.Broker, topic: str, conn: Any) -> None:
    """(fork) Use the parent's broker object: send, then read everything back."""
    try:
        md = broker.send(topic, b"from-mp-fork-child")
        values = [m.value for m in broker.read(topic, max_records=1000)]
        conn.send(("ok", md.offset, values))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("error", repr(exc), []))
    finally:
        conn.close()


def mp_open_and_send(path: str, topic: str, conn: Any) -> None:
    """(spawn or fork) Open the broker by path, send, read everything back."""
    try:
        with mqlite.open(path) as b:
            md = b.send(topic, b"from-mp-child")
            values = [m.value for m in b.read(topic, max_records=1000)]
        conn.send(("ok", md.offset, values))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("error", repr(exc), []))
    finally:
        conn.close()


COMMANDS: dict[str, Callable[..., None]] = {
    "send": cmd_send,
    "send-loop": cmd_send_loop,
    "read": cmd_read,
    "wait-poll": cmd_wait_poll,
    "read-all": cmd_read_all,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
