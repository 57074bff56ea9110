"""Child-process entry points for tests/integration/test_queue_procs.py.

Run as ``python _procs_queue.py <role> <json args>``.  Children record what
they did as text lines (flushed after every batch, before the next receive),
so a parent can read them even after it killed the child with SIGKILL: the
page cache outlives a killed process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import mqlite


def _text(d: mqlite.Delivery) -> str:
    assert d.value is not None  # the tests send every message with a value
    return d.value.decode()


def _open(args: dict) -> mqlite.Broker:
    return mqlite.open(args["dir"], durability=args.get("durability", "none"))


def consume(args: dict) -> None:
    """Receive and ack until the stop file exists and nothing is left.

    Writes ``<value> <delivery_count> <time>`` per acked message to ``out``;
    nacks a random ``nack_rate`` share first (those are redelivered).  With
    ``go`` it waits for that file after printing ``ready`` (a start barrier, so
    no child drains the queue before the others run); ``work_s`` is a pause
    per received batch standing in for the handler's work.
    """
    rng = random.Random(args.get("seed", 0))
    nack_rate = args.get("nack_rate", 0.0)
    poison = args.get("poison_prefix")
    with _open(args) as broker, open(args["out"], "a", buffering=1) as out:
        q = broker.queue(args["topic"], group=args["group"],
                         visibility_timeout=args.get("visibility_timeout", 30.0),
                         max_deliveries=args.get("max_deliveries"),
                         dead_letter_topic=args.get("dlq"))
        print("ready", flush=True)
        go = args.get("go")
        while go is not None and not os.path.exists(go):
            time.sleep(0.005)
        work_s = args.get("work_s", 0.0)
        while True:
            ds = q.receive(args.get("batch", 100), timeout=0.2)
            if not ds:
                if os.path.exists(args["stop"]):
                    break
                continue
            if work_s:
                time.sleep(work_s)
            keep = []
            lines = []
            for d in ds:
                if poison is not None and _text(d).startswith(poison):
                    lines.append(f"nack {_text(d)} {d.delivery_count} {time.time()}\n")
                    d.nack(error=f"poison seen by pid {os.getpid()}")
                elif nack_rate and rng.random() < nack_rate:
                    d.nack()
                else:
                    keep.append(d)
            if keep:
                q.ack(keep)  # raises on a stale delivery: the test then sees a failure
                lines.extend(f"ack {_text(d)} {d.delivery_count} {time.time()}\n"
                             for d in keep)
            out.write("".join(lines))
        q.close()


def hold(args: dict) -> None:
    """Receive ``n`` messages, report them, never ack: wait to be killed."""
    with _open(args) as broker:
        q = broker.queue(args["topic"], group=args["group"], visibility_timeout=60.0)
        ds: list[mqlite.Delivery] = []
        while len(ds) < args["n"]:
            ds += q.receive(args["n"] - len(ds), timeout=1.0)
        with open(args["out"], "w") as f:
            json.dump([[_text(d), d.delivery_count] for d in ds], f)
        print("holding", flush=True)
        while True:
            signal.pause()


def send_delayed(args: dict) -> None:
    """Send one delayed message; print the wall time at which send returned."""
    with _open(args) as broker:
        broker.send(args["topic"], args["value"].encode(), delay=args["delay"])
        print(json.dumps({"sent_at": time.time()}), flush=True)


def schedule_and_die(args: dict) -> None:
    """Schedule messages, report, then die by SIGKILL without closing anything."""
    broker = _open(args)
    for i in range(args["n"]):
        broker.send(args["topic"], b"late-%d" % i, deliver_at=args["deliver_at"])
    print("scheduled", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


ROLES = {"consume": consume, "hold": hold, "send_delayed": send_delayed,
         "schedule_and_die": schedule_and_die}

if __name__ == "__main__":
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
