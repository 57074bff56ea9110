"""Child process for tests/integration/test_exactly_once_procs.py.

Run as ``python _procs_exactly.py <json args>``.  The child opens the broker,
creates its consumer, prints ``ready`` and blocks reading one line from stdin:
the parent writes ``go`` to every child once all are ready, so they race over
the same orders from the same moment (a start barrier, no sleeps).  Then it
handles every order of the ``orders`` topic once, with its own consumer group
(so both children see all of them), and prints one JSON summary line.

Patterns (``args["pattern"]``):

``claim``
    ``tx.claim(order)`` + ``tx.send("effects", ...)`` + ``tx.commit_offsets``
    in one transaction; on ``AlreadyProcessedError`` only the offset is
    committed.
``legacy``
    The pre-claim pattern: ``if tx.is_processed(order): skip``, else send,
    ``tx.record_processed(order)`` and commit offsets in one transaction.
``external``
    ``broker.claim(order)`` first, then the "external" effect (a line
    appended to ``args["effects_file"]``), then a plain offset commit:
    claim-before-effect, at-most-once for the external effect.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import mqlite


def main(args: dict) -> None:
    pattern = args["pattern"]
    worker = args["worker"]
    total = args["orders"]
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(
            mqlite.open(args["dir"], durability=args.get("durability", "none")))
        effects = (stack.enter_context(open(args["effects_file"], "a", buffering=1))
                   if pattern == "external" else None)
        consumer = broker.consumer("orders", group=f"worker-{worker}", commit="manual")
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("parent did not say go")
        stats = {"worker": worker, "handled": 0, "effects": 0, "early": 0, "at_commit": 0,
                 "hint_skips": 0}
        deadline = time.monotonic() + args.get("timeout", 120.0)
        while stats["handled"] < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {stats}")
            for msg in consumer.poll(max_records=10, timeout=1.0):
                assert msg.value is not None
                order = msg.value.decode()
                if pattern == "external":
                    if broker.claim(order, scope="orders", ttl=3600):
                        assert effects is not None
                        effects.write(f"{order} {worker} {os.getpid()}\n")
                        stats["effects"] += 1
                    else:
                        stats["early"] += 1
                    consumer.commit(msg)
                    stats["handled"] += 1
                    continue
                reached_exit = False
                try:
                    with broker.transaction() as tx:
                        if pattern == "claim":
                            tx.claim(order, scope="orders", ttl=3600)
                        elif tx.is_processed(order, scope="orders"):
                            stats["hint_skips"] += 1
                            tx.commit_offsets(consumer, msg)
                            reached_exit = True
                            continue
                        tx.send("effects", msg.value, headers=[("worker", worker.encode())])
                        if pattern == "legacy":
                            tx.record_processed(order, scope="orders", ttl=3600)
                        tx.commit_offsets(consumer, msg)
                        reached_exit = True
                    stats["effects"] += 1
                except mqlite.AlreadyProcessedError as exc:
                    assert exc.event_id == order and exc.scope == "orders", exc
                    stats["at_commit" if reached_exit else "early"] += 1
                    with broker.transaction() as tx:
                        tx.commit_offsets(consumer, msg)
                finally:
                    stats["handled"] += 1
        consumer.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
