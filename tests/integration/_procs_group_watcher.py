"""Child process for tests/integration/test_group_watcher_procs.py.

``python -m _procs_group_watcher DIR N SESSION_TIMEOUT``: opens the broker at
``DIR``, makes ``N`` members of group ``g`` and one of group ``h`` (topic
``t``), polls each once (so each joins), then prints ``ready <json>`` (its pid
and the names of its threads) and idles without polling: from then on only
the process's group watcher thread heartbeats the members.  A line on stdin
(or stdin closing) makes it close every member and the broker, print ``bye``
and exit 0.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import mqlite


def main() -> None:
    path, n, session = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    broker = mqlite.open(path, durability="none")
    members = [broker.consumer("t", group="g", session_timeout=session) for _ in range(n)]
    members.append(broker.consumer("t", group="h", session_timeout=session))
    for c in members:
        c.poll(timeout=0.01)  # joins the group
    threads = sorted(t.name for t in threading.enumerate())
    print("ready " + json.dumps({"pid": os.getpid(), "threads": threads}), flush=True)
    sys.stdin.readline()  # idle: no polls, heartbeats come from the watcher thread only
    for c in members:
        c.close()
    broker.close()
    print("bye", flush=True)


if __name__ == "__main__":
    main()
