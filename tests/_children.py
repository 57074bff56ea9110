"""Helpers for tests that drive another process through a ``multiprocessing`` pipe."""

from __future__ import annotations

from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

__all__ = ["stop_child"]


def stop_child(conn: Connection, proc: BaseProcess) -> None:
    """Tell the child to stop (``None`` on its pipe), wait for it, and check it exited 0.

    A child that does not stop within 30 s is killed (and the check then fails).
    """
    conn.send(None)
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    assert proc.exitcode == 0
