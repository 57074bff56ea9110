"""The mqlite web console (``mqlite ui DIR``; extra ``[ui]``: Starlette, uvicorn, Jinja2).

Pages: overview with live rates, topics (partitions, offsets, bytes,
retention, a message browser by offset / time / key with headers decoded),
stream and queue groups (members, ownership, lag per partition), queues
(ready, in-flight with owner and delivery count, scheduled, dead letters with
their error headers) and charts of rates and lag over the last minutes.
Read-only unless started with ``allow_actions``; then redrive, purge and
reset-offsets need the per-start token and a same-origin POST.  See
docs/operations.md, "The web console".
"""

from __future__ import annotations

from mqlite.ui.app import create_app, decode_bytes
from mqlite.ui.history import History
from mqlite.ui.security import ActionGuard, new_token
from mqlite.ui.server import DEFAULT_HOST, DEFAULT_PORT, run_console

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ActionGuard", "History", "create_app", "decode_bytes",
           "new_token", "run_console"]
