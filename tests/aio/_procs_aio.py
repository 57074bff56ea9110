"""Child processes for the asyncio tests (run as ``python _procs_aio.py ROLE ...``).

``send DIR TOPIC...``
    Opens the broker, prints ``ready``, then for every line read from stdin
    sends one message (the line's text) to each TOPIC and prints ``sent``.
    Exits at end of input.
"""

from __future__ import annotations

import sys

import mqlite


def send(path: str, topics: list[str]) -> None:
    with mqlite.open(path, durability="none") as b:
        print("ready", flush=True)
        for line in sys.stdin:
            for t in topics:
                b.send(t, line.strip().encode())
            print("sent", flush=True)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "send":
        send(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(f"unknown role {role!r}")
