"""Child-process side of the topic delete/recreate race test (defect 13 of issue 10).

``churn(path, conn)`` serves commands from a pipe: ``"delete"`` deletes topic
``t``, ``"recreate"`` deletes and creates it again (2 partitions),
``"create"`` creates it, ``("loop", n)`` runs n delete/recreate cycles as fast
as it can while the parent works; each command is answered with ``"ok"``;
``None`` ends the child.
"""

from __future__ import annotations

from typing import Any

import mqlite


def _delete(b: mqlite.Broker) -> None:
    try:
        b.delete_topic("t")
    except mqlite.TopicNotFoundError:
        pass


def churn(path: str, conn: Any) -> None:
    b = mqlite.open(path)
    try:
        while (cmd := conn.recv()) is not None:
            if cmd == "delete":
                _delete(b)
            elif cmd == "create":
                b.create_topic("t", partitions=2, exist_ok=True)
            elif cmd == "recreate":
                _delete(b)
                b.create_topic("t", partitions=2)
            else:
                _, n = cmd
                conn.send("started")
                for _ in range(n):
                    _delete(b)
                    b.create_topic("t", partitions=2)
            conn.send("ok")
    finally:
        b.close()
