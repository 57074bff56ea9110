"""Child-process side of ``test_empty_commit_procs.py``: a sender driven through a pipe.

``serve(path, conn)`` opens the broker and answers each ``(topic, value)``
command with the offset its ``send`` returned; ``None`` ends the child.
"""

from __future__ import annotations

from typing import Any

import mqlite


def serve(path: str, conn: Any) -> None:
    b = mqlite.open(path)
    try:
        while (cmd := conn.recv()) is not None:
            topic, value = cmd
            conn.send(b.send(topic, value, partition=0).offset)
    finally:
        b.close()
