"""Child processes for the asyncio tests (run as ``python _procs_aio.py ROLE ...``).

``send DIR TOPIC...``
    Opens the broker, prints ``ready``, then for every line read from stdin
    sends one message (the line's text) to each TOPIC and prints ``sent``.
    Exits at end of input.
``claim-bell DIR``
    Opens the broker, claims one doorbell, prints its index, then sleeps
    until killed (the test kills it to leave a dead owner's entry behind).
"""

from __future__ import annotations

import sys
import time

import mqlite


def send(path: str, topics: list[str]) -> None:
    with mqlite.open(path, durability="none") as b:
        print("ready", flush=True)
        for line in sys.stdin:
            for t in topics:
                b.send(t, line.strip().encode())
            print("sent", flush=True)


def claim_bell(path: str) -> None:
    with mqlite.open(path) as b:
        index, _fd = b.notifier.bell_claim()
        b.notifier.bell_arm(index, 1)
        print(index, flush=True)
        while True:
            time.sleep(60)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "send":
        send(sys.argv[2], sys.argv[3:])
    elif role == "claim-bell":
        claim_bell(sys.argv[2])
    else:
        raise SystemExit(f"unknown role {role!r}")
