"""Periodic jobs (``@app.periodic(every=...)``): Celery beat inside the App, no beat process.

How one run per tick is kept across worker processes and restarts (D90):

- The ticks of a job lie on a fixed grid of UNIX time, ``offset + k * every``
  (milliseconds), the same in every process, so every process names a tick
  the same way: its dedup id ``"<job>@<tick ms>"``.
- A tick is a delayed message (``deliver_at=`` the tick) on the job's tick
  topic, sent with that dedup id.  Each worker schedules the first tick after
  now when the App starts; whoever handles a tick first schedules the first
  tick after it (and after now).  Several schedules of one tick are all due at
  the same instant, are promoted together, and the broker's dedup appends only
  the first (the topic's dedup window, 120 s by default, need only cover the
  moments between those promotions, not the interval).
- A queue-mode subscriber (one group shared by every worker) receives each
  appended tick once and runs the job with the App's machinery: retries by
  redelivery, dead letters, listeners and metrics, health.  Its idempotency
  key is the tick id (claimed with the ack, kept ``max(2 * every, 10 min)``), a
  second guard should a late schedule of a tick outlive the dedup window.
- A tick due while no worker ran stays stored and is handled once at the next
  start; the ticks after it that nobody scheduled are not run (Celery beat's
  behaviour: one late run, not one per missed tick).

A job whose ``every`` / ``offset`` changed skips a pending tick of its old grid
(the first run of the new grid is its next tick).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from mqlite.app.context import Context, make_output
from mqlite.errors import NotSupportedError

__all__ = ["MAX_EVERY", "MIN_EVERY", "PeriodicJob", "Tick", "make_job", "tick_ttl"]

log = logging.getLogger("mqlite.app")

#: Bounds of ``every`` in seconds: 0.1 s (a tick is a write and a delivery) to 366 days.
MIN_EVERY = 0.1
MAX_EVERY = 366 * 86400.0
#: Messages a tick topic keeps (retention): only the last few ticks matter.
TICK_RETENTION_MESSAGES = 1000
_MIN_TTL = 600.0
_MAX_TTL = 366 * 86400.0


class Tick(msgspec.Struct, frozen=True):
    """What a periodic job gets: which job, the tick's time and the interval.

    Attributes
    ----------
    job
        The job's name.
    at
        The tick's scheduled time, UNIX seconds (on the grid ``offset + k * every``).
    every
        The job's interval in seconds.
    """

    job: str
    at: float
    every: float

    @property
    def late(self) -> float:
        """Seconds between the tick's time and now (a tick missed while the service
        was down runs once at start, with a large ``late``)."""
        return time.time() - self.at


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or a datetime.timedelta, not "
                        f"{type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def tick_ttl(every_ms: int) -> float:
    """Seconds a tick's idempotency claim is kept: ``max(2 * every, 10 min)``, at most 366 days."""
    return min(max(2 * every_ms / 1000.0, _MIN_TTL), _MAX_TTL)


@dataclass(eq=False)
class PeriodicJob:
    """A validated ``@app.periodic`` job: its grid, tick topic and the user's function."""

    name: str
    fn: Callable[..., Any]
    every_ms: int
    offset_ms: int
    topic: str
    takes_tick: bool
    ctx_param: bool
    ctx_first: bool

    @property
    def every(self) -> float:
        return self.every_ms / 1000.0

    def next_after(self, t: float) -> int:
        """The first tick (UNIX ms) strictly after ``t`` (UNIX seconds)."""
        t_ms = math.floor(t * 1000)
        k = (t_ms - self.offset_ms) // self.every_ms + 1
        return self.offset_ms + k * self.every_ms

    def dedup_id(self, at_ms: int) -> str:
        return f"{self.name}@{at_ms}"

    def tick(self, at_ms: int) -> Tick:
        return Tick(self.name, at_ms / 1000.0, self.every)

    def on_grid(self, tick: Tick) -> bool:
        at_ms = round(tick.at * 1000)
        return (round(tick.every * 1000) == self.every_ms
                and (at_ms - self.offset_ms) % self.every_ms == 0)

    def key(self, tick: Tick) -> str:
        """The idempotency key of a tick (its dedup id)."""
        return self.dedup_id(round(tick.at * 1000))

    def ensure_topic(self, backend: Any) -> None:
        """Create the tick topic (1 partition) keeping its last
        :data:`TICK_RETENTION_MESSAGES` ticks, when the backend can bound it."""
        try:
            backend.ensure_topic(self.topic, 1, retention_messages=TICK_RETENTION_MESSAGES)
        except TypeError:  # a backend without retention_messages=
            backend.ensure_topic(self.topic, 1)

    def schedule(self, backend: Any, after: float) -> int:
        """Schedule the first tick after ``after`` (UNIX s) as a delayed message with its
        dedup id; returns its time (ms).  A repeat of a scheduled tick merges with it.

        Raises
        ------
        NotSupportedError
            The backend has no delayed messages (Kafka).
        """
        at_ms = self.next_after(after)
        out = make_output(self.topic, msgspec.json.encode(self.tick(at_ms)), None, None, None)
        out = out._replace(deliver_at=at_ms / 1000.0, dedup_id=self.dedup_id(at_ms))
        try:
            backend.send(out)
        except NotSupportedError:
            raise NotSupportedError(
                "periodic jobs (@app.periodic)", "they are delayed messages, which Kafka has "
                "not: run them on an mqlite broker directory, or use an external "
                "scheduler") from None
        return at_ms

    def fire(self, backend: Any, at_ms: int) -> None:
        """Append the tick ``at_ms`` now (not delayed), with its dedup id: it replaces the
        scheduled one (TestApp)."""
        out = make_output(self.topic, msgspec.json.encode(self.tick(at_ms)), None, None, None)
        backend.send(out._replace(dedup_id=self.dedup_id(at_ms)))

    def call(self, tick: Tick, ctx: Context) -> Any:
        if not self.ctx_param:
            return self.fn(tick) if self.takes_tick else self.fn()
        if not self.takes_tick:
            return self.fn(ctx)
        return self.fn(ctx, tick) if self.ctx_first else self.fn(tick, ctx)


def _introspect(fn: Callable[..., Any]) -> tuple[bool, bool, bool]:
    """(takes the tick, takes ctx, ctx comes first) of a job function."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of periodic job {fn!r}: {exc}") from None
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    required_kw = [p for p in sig.parameters.values()
                   if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw or len(params) > 2:
        raise TypeError(f"periodic job {fn.__qualname__} must take (), (tick), (ctx) or "
                        "(tick, ctx)")
    takes_tick = ctx = ctx_first = False
    for i, p in enumerate(params):
        ann = p.annotation
        is_ctx = (ann is Context or (isinstance(ann, str) and ann.rsplit(".", 1)[-1] == "Context")
                  or (ann is p.empty and p.name in ("ctx", "context")))
        if is_ctx and not ctx:
            ctx, ctx_first = True, i == 0
        elif not takes_tick:
            takes_tick = True
        else:
            raise TypeError(f"periodic job {fn.__qualname__}: which parameter is the Context? "
                            "annotate it `ctx: mqlite.Context`")
    return takes_tick, ctx, ctx_first and takes_tick


def make_job(fn: Callable[..., Any], *, every: Any, offset: Any, name: str | None,
             topic: str | None, app_name: str) -> PeriodicJob:
    """Validate ``@app.periodic``'s options for ``fn``.

    Raises
    ------
    TypeError, ValueError
        A bad interval, offset, name or function signature.
    """
    if not callable(fn):
        raise TypeError("@app.periodic decorates a function")
    ev = _seconds(every, "every")
    if not MIN_EVERY <= ev <= MAX_EVERY:
        raise ValueError(f"every is in seconds and must be {MIN_EVERY} to {MAX_EVERY:.0f} "
                         f"(366 days), got {ev!r}")
    every_ms = round(ev * 1000)
    off = _seconds(offset, "offset")
    offset_ms = round(off * 1000)
    if not 0 <= offset_ms < every_ms:
        raise ValueError(f"offset is in seconds and must be 0 <= offset < every ({ev!r}), got "
                         f"{off!r}: ticks are at UNIX time offset + k * every")
    job_name = fn.__name__ if name is None else name
    if not isinstance(job_name, str):
        raise TypeError(f"name must be a str, not {type(job_name).__name__}")
    if not 1 <= len(job_name) <= 200:
        raise ValueError(f"name must be 1 to 200 characters, got {len(job_name)}")
    takes_tick, ctx, ctx_first = _introspect(fn)
    return PeriodicJob(job_name, fn, every_ms, offset_ms,
                       topic if topic is not None else f"{app_name}.periodic.{job_name}",
                       takes_tick, ctx, ctx_first)


def make_handler(job: PeriodicJob, backend_of: Callable[[], Any]) -> Callable[..., Any]:
    """The subscriber handler of ``job``: schedules the next tick, then runs the job
    (sync or async as the job is).  A tick of an old grid is skipped (logged)."""

    def _next(tick: Tick) -> None:
        job.schedule(backend_of(), max(time.time(), tick.at))

    if inspect.iscoroutinefunction(job.fn):
        async def run_async(tick: Tick, ctx: Context) -> Any:
            await asyncio.get_running_loop().run_in_executor(None, _next, tick)
            if not job.on_grid(tick):
                log.info("periodic job %s: skipped tick %s of an old schedule", job.name,
                         tick.at)
                return None
            return await job.call(tick, ctx)
        handler: Callable[..., Any] = run_async
    else:
        def run_sync(tick: Tick, ctx: Context) -> Any:
            _next(tick)
            if not job.on_grid(tick):
                log.info("periodic job %s: skipped tick %s of an old schedule", job.name,
                         tick.at)
                return None
            return job.call(tick, ctx)
        handler = run_sync
    handler.__name__ = job.name
    handler.__qualname__ = getattr(job.fn, "__qualname__", job.name)
    # not ``__wrapped__``: inspect.signature would follow it to the job's own signature
    handler.mqlite_periodic_job = job  # type: ignore[attr-defined]
    return handler
