"""Apps with periodic jobs run by tests/app/test_app_periodic.py (``mqlite run``).

The broker directory comes from ``MQLITE_TEST_DIR``; each run of the job appends one
line ``"<tick ms> <pid>"`` to ``ticks.log`` there (O_APPEND: one write per line).
"""

from __future__ import annotations

import os

import mqlite

DIR = os.environ.get("MQLITE_TEST_DIR", "unused")

beat_app = mqlite.App(DIR, name="beat", durability="none", graceful_timeout=30)


@beat_app.periodic(every=0.2)
def tick(t: mqlite.Tick) -> None:
    fd = os.open(os.path.join(DIR, "ticks.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{round(t.at * 1000)} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
