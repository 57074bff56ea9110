"""Handler metrics for frameworks on mqlite (``mqlite.App``): counts, durations, in-flight.

A leaf module (it imports nothing else of mqlite), so any layer may use it:
the service framework calls :meth:`HandlerMetrics.started` before a handler
runs and :meth:`HandlerMetrics.finished` after it settled the message.

Metric names (fixed; docs/operations.md)::

    mqlite_handler_messages_total{handler,topic,status}   counter; status is
        "ok", "retry", "dead_letter", "error" or "skipped"
    mqlite_handler_duration_seconds{handler,topic}        histogram
    mqlite_handler_inflight{handler}                      gauge

Zero cost when off: without ``prometheus_client`` installed (the
``[metrics]`` extra), or with ``enabled=False``, both calls are one attribute
lookup and a call of an empty function; nothing is recorded and nothing is
imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_BUCKETS", "STATUSES", "HandlerMetrics"]

#: Outcomes a handler call is counted under.
STATUSES = frozenset({"ok", "retry", "dead_letter", "error", "skipped"})

#: Histogram buckets, seconds: 1 ms to 60 s (a message handler, not an HTTP request).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)

# One set of metric objects per registry: prometheus_client refuses a second
# registration of a name, and several Apps in one process share the counters.
# The registry is kept in the entry: its id() is never reused by another one.
_shared: dict[int, tuple[Any, tuple[Any, Any, Any]]] = {}
_shared_lock = threading.Lock()


def _noop(*args: object) -> None:
    return None


def _metric_objects(registry: Any) -> tuple[Any, Any, Any]:
    import prometheus_client as pc

    reg = pc.REGISTRY if registry is None else registry
    with _shared_lock:
        hit = _shared.get(id(reg))
        if hit is not None and hit[0] is reg:
            return hit[1]
        objs = (
            pc.Counter("mqlite_handler_messages", "Messages a handler finished, by outcome",
                       ["handler", "topic", "status"], registry=reg),
            pc.Histogram("mqlite_handler_duration_seconds",
                         "Seconds a handler took per message", ["handler", "topic"],
                         buckets=DEFAULT_BUCKETS, registry=reg),
            pc.Gauge("mqlite_handler_inflight", "Messages a handler is processing now",
                     ["handler"], registry=reg),
        )
        _shared[id(reg)] = (reg, objs)
        return objs


class HandlerMetrics:
    """Prometheus counters, duration histogram and in-flight gauge of message handlers.

    Parameters
    ----------
    registry
        A ``prometheus_client.CollectorRegistry`` (default: the global
        ``REGISTRY``).  Instances on the same registry share one set of metrics.
    enabled
        ``False`` makes every call a no-op.  ``None`` (default): on when
        ``prometheus_client`` can be imported.

    Thread-safe (prometheus_client's metrics are).  Every ``started`` must be
    paired with one ``finished`` (use ``try``/``finally``), or the in-flight
    gauge drifts.
    """

    __slots__ = ("_count", "_duration", "_inflight", "enabled", "finished", "started")

    def abandoned(self, handler: str, count: int) -> None:
        """``count`` calls of ``handler`` that started will never finish (their process died).

        In-flight - ``count``; nothing is counted or observed.  ``count`` >= 0.
        """
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        if self.enabled and count:
            self._inflight.labels(handler).dec(count)

    #: ``started(handler, topic)``: a handler began one message (in-flight + 1).
    started: Callable[[str, str], None]
    #: ``finished(handler, topic, status, seconds)``: see :meth:`_finished`.
    finished: Callable[[str, str, str, float], None]

    def __init__(self, registry: Any = None, *, enabled: bool | None = None) -> None:
        if enabled is None:
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                enabled = False
            else:
                enabled = True
        elif not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool or None, not {type(enabled).__name__}")
        self.enabled = enabled
        if enabled:
            self._count, self._duration, self._inflight = _metric_objects(registry)
            self.started = self._started
            self.finished = self._finished
        else:
            self._count = self._duration = self._inflight = None
            self.started = _noop
            self.finished = _noop

    def _started(self, handler: str, topic: str) -> None:
        """A handler began processing one message of ``topic`` (in-flight + 1)."""
        self._inflight.labels(handler).inc()

    def _finished(self, handler: str, topic: str, status: str, seconds: float) -> None:
        """A handler is done with one message: in-flight - 1, count ``status``, observe time.

        ``status`` is ``"ok"`` (processed), ``"retry"`` (will be delivered
        again), ``"dead_letter"`` (moved to the dead-letter topic or rejected)
        ``"error"`` (failed otherwise) or ``"skipped"`` (a duplicate by
        idempotency key: not run, observed as 0 s); ``seconds`` is the handler's wall
        time (>= 0).  Anything else is a ``ValueError``.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        self._inflight.labels(handler).dec()
        self._count.labels(handler, topic, status).inc()
        self._duration.labels(handler, topic).observe(max(0.0, float(seconds)))
