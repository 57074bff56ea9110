"""Test handlers against the real engine in a temporary directory (no mocks).

>>> with TestApp(app) as t:                       # doctest: +SKIP
...     t.publish("order-created", {"orderId": 1})
...     t.wait_idle()
...     assert t.payloads("pay") == [{"orderId": 1}]
...     assert t.published("payment-processed") == [{"orderId": 1, "ok": True}]

The App runs exactly as in production (same threads, groups, commits,
retries and dead letters) on a fresh broker directory that is removed on
exit, so what passes here is what runs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import msgspec

from mqlite.app.periodic import Tick
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite._core import Message
    from mqlite.app.app import App
    from mqlite.app.runner import HandlerEvent

__all__ = ["TestApp"]


class TestApp:
    """Run ``app`` on a temporary broker directory for the duration of a ``with`` block.

    Parameters
    ----------
    app
        The App under test (not started).  Its broker target is replaced by
        the temporary directory (or ``path``) inside the ``with`` block; on exit
        the App gets its own target back and can be started again, so tests may
        share one module-level App (one ``TestApp`` at a time).
    path
        Use this directory instead of a fresh temporary one (kept on exit).
    durability
        Durability of the test broker (default ``"none"``: tests need no fsync).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, path: str | None = None, durability: str = "none") -> None:
        self.app = app
        self._path = path
        self._durability = durability
        self._tmp: str | None = None
        self._events: list[HandlerEvent] = []
        self._lock = threading.Lock()
        self._saved: tuple[Any, str] | None = None
        self._ticked: dict[str, int] = {}

    def __enter__(self) -> Self:
        app = self.app
        if app.state != "new":
            raise RuntimeError(f"TestApp needs an App that is not running (this one is "
                               f"{app.state}): let tests share a module's App, and do not "
                               f"start it yourself")
        if self._path is None:
            self._tmp = tempfile.mkdtemp(prefix="mqlite-test-")
        target = self._path or self._tmp
        assert target is not None
        self._saved = (app.target, app.durability)
        with self._lock:
            self._events = []
        self._ticked = {}
        app.target = target
        app.durability = self._durability
        app.add_listener(self._record)
        try:
            app.start()
            if not app.wait_ready(60.0):
                raise RuntimeError(f"the App did not become ready: {app.health()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the App, then give it back as it was: its own broker target and
        durability, without this TestApp's listener, startable again (so several
        tests, or a later ``app.run()``, can use one module-level App)."""
        app = self.app
        try:
            app.stop()
        finally:
            app.remove_listener(self._record)
            if self._saved is not None:
                app.target, app.durability = self._saved
                self._saved = None
            if app.state == "stopped":
                app._rearm()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def _record(self, ev: HandlerEvent) -> None:
        if ev.status is not None:
            with self._lock:
                self._events.append(ev)

    # -- acting ------------------------------------------------------------------------------
    def publish(self, topic: str, payload: Any, *, key: Any = None, headers: Any = None,
                partition: int | None = None) -> RecordMetadata:
        """``app.publish`` (the topic is created with the App's partitions if missing)."""
        self.app._backend_now().ensure_topic(topic, self.app.partitions)
        return self.app.publish(topic, payload, key=key, headers=headers, partition=partition)

    def tick(self, job: str, at: float | None = None) -> Tick:
        """Fire a tick of periodic job ``job`` now, instead of at its time; returns it.

        Without ``at``: the job's next tick (after now, and after the last one
        this method fired, so each call advances one tick).  ``at``: a tick time
        (UNIX seconds) on the job's grid.  The tick is appended now with its dedup
        id, so when its time comes the scheduled one merges with it and does not
        run again.  The job runs as in production (its subscriber receives the
        tick): follow with :meth:`wait_idle`.

        Raises
        ------
        KeyError
            No periodic job of that name.
        ValueError
            ``at`` is not on the job's grid (``offset + k * every``).
        """
        jobs = self.app.periodic_jobs
        if job not in jobs:
            raise KeyError(f"no periodic job named {job!r}; the App has {sorted(jobs)}")
        pj = jobs[job]
        if at is None:
            last = self._ticked.get(job)
            at_ms = pj.next_after(time.time() if last is None else max(time.time(), last / 1000))
        else:
            at_ms = round(at * 1000)
            if not pj.on_grid(pj.tick(at_ms)):
                raise ValueError(f"{at!r} is not a tick of {job!r} (UNIX seconds on the grid "
                                 f"offset + k * {pj.every})")
        pj.fire(self.app._backend_now(), at_ms)
        self._ticked[job] = max(at_ms, self._ticked.get(job, at_ms))
        return pj.tick(at_ms)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every message is handled and committed (``mqlite.TimeoutError``)."""
        self.app.wait_idle(timeout)

    # -- inspecting ------------------------------------------------------------------------
    def calls(self, subscriber: str | None = None) -> list[HandlerEvent]:
        """Finished handler calls (every attempt), in the order they finished."""
        with self._lock:
            return [e for e in self._events if subscriber is None or e.subscriber == subscriber]

    def payloads(self, subscriber: str, status: str | None = "ok") -> list[Any]:
        """Payloads of the calls of ``subscriber`` that ended with ``status`` (None: all)."""
        return [e.payload for e in self.calls(subscriber) if status is None or e.status == status]

    def messages(self, topic: str) -> list[Message]:
        """Every message of ``topic`` (partition by partition, in offset order)."""
        b = self.app.broker
        out: list[Message] = []
        for p in b.describe_topic(topic).partitions:
            off = p.start_offset
            while off < p.end_offset:
                batch = b.read(topic, p.partition, off, 1000)
                if not batch:
                    break
                out.extend(batch)
                off = batch[-1].offset + 1
        return out

    def published(self, topic: str, raw: bool = False) -> list[Any]:
        """Values of every message of ``topic``, decoded from JSON (``raw=True``: bytes)."""
        if topic not in self.app.broker.topics():
            return []
        vals = [m.value for m in self.messages(topic)]
        if raw:
            return vals
        return [None if v is None else msgspec.json.decode(v) for v in vals]

    def dead_letters(self, topic: str) -> list[Any]:
        """``app.dead_letters(topic)``: ``mqlite.DeadLetter`` records with their headers."""
        if topic not in self.app.broker.topics():
            return []
        return self.app.dead_letters(topic)
