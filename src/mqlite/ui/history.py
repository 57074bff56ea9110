"""Rates and lag over the last minutes, sampled from ``Broker.stats()`` for the console charts.

A :class:`History` owns one daemon thread that takes a snapshot every
``interval`` seconds (a read transaction; nothing is joined or changed) and
keeps, per sample, the in-rate of every topic, the consume rate of every group
and every group's lag.  Only those aggregates are kept (not the snapshots), so
memory is bounded by ``window / interval`` samples × (topics + groups).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

__all__ = ["History", "Sample", "rates_between"]

_log = logging.getLogger("mqlite.ui")


class Sample:
    """One point of the charts: time (UNIX ms) and per-series values."""

    __slots__ = ("lag", "rate_in", "rate_out", "taken_ms")

    def __init__(self, taken_ms: int, rate_in: dict[str, float], rate_out: dict[str, float],
                 lag: dict[str, int]) -> None:
        self.taken_ms = taken_ms
        self.rate_in = rate_in
        self.rate_out = rate_out
        self.lag = lag


def _group_key(kind: str, group: str, topic: str) -> str:
    return f"{group} ({topic})" if kind == "stream" else f"{group} (queue {topic})"


def _totals(st: Any) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """End offsets per topic, consumed counts and lag per group key, of one snapshot."""
    ends: dict[str, int] = {}
    for p in st.partitions:
        ends[p.topic] = ends.get(p.topic, 0) + p.end_offset
    done: dict[str, int] = {}
    lag: dict[str, int] = {}
    for g in st.groups:
        for x in g.lag:
            k = _group_key("stream", g.group, x.topic)
            done[k] = done.get(k, 0) + (x.committed or 0)
            lag[k] = lag.get(k, 0) + x.lag
    for q in st.queues:
        k = _group_key("queue", q.group, q.topic)
        done[k] = q.consumed
        lag[k] = q.ready + q.inflight + q.delayed
    return ends, done, lag


def rates_between(prev: Any, cur: Any) -> Sample:
    """The :class:`Sample` of snapshot ``cur`` (messages/s since ``prev``; ``prev`` may be None).

    Rates are never negative: a topic recreated between the snapshots (its
    offsets restart) reads as 0 for that interval.
    """
    ends, done, lag = _totals(cur)
    rate_in: dict[str, float] = {}
    rate_out: dict[str, float] = {}
    if prev is not None:
        dt = max(0.001, (cur.taken_ms - prev.taken_ms) / 1000)
        pends, pdone, _ = _totals(prev)
        for t, e in ends.items():
            rate_in[t] = max(0.0, (e - pends[t]) / dt) if t in pends else 0.0
        for k, d in done.items():
            rate_out[k] = max(0.0, (d - pdone[k]) / dt) if k in pdone else 0.0
    else:
        rate_in = dict.fromkeys(ends, 0.0)
        rate_out = dict.fromkeys(done, 0.0)
    return Sample(cur.taken_ms, rate_in, rate_out, lag)


class History:
    """Samples of rates and lag over the last ``window`` seconds, taken by a daemon thread.

    Parameters
    ----------
    snapshot
        A callable returning a fresh ``BrokerStats`` (``broker.stats``).
    interval
        Seconds between samples, 0.1 to 60.  When a snapshot takes longer than
        a quarter of it (a very large broker), the thread waits four times the
        snapshot's duration instead, so sampling never takes more than a fifth
        of one core.
    window
        Seconds of samples kept, ``interval`` to 86,400.
    """

    def __init__(self, snapshot: Any, *, interval: float = 1.0, window: float = 900.0) -> None:
        if not 0.1 <= interval <= 60:
            raise ValueError(f"interval is seconds between samples, 0.1 to 60, got {interval}")
        if not interval <= window <= 86_400:
            raise ValueError(f"window is seconds of history, {interval} to 86400, got {window}")
        self._snapshot = snapshot
        self.interval = interval
        self._samples: collections.deque[Sample] = collections.deque(
            maxlen=max(2, int(window / interval) + 1))
        self._prev: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Seconds one sampling cycle took last (snapshot + wait): ``interval`` or longer.
        self.period = interval

    def sample(self) -> Sample:
        """Take one snapshot now and append its sample (the thread calls this)."""
        cur = self._snapshot()
        s = rates_between(self._prev, cur)
        with self._lock:
            self._prev = cur
            self._samples.append(s)
        return s

    def samples(self) -> list[Sample]:
        """The kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def snapshot(self) -> Any:
        """The ``BrokerStats`` of the newest sample (``None`` before the first)."""
        with self._lock:
            return self._prev

    def latest(self) -> Sample | None:
        """The newest sample, or ``None`` before the first."""
        with self._lock:
            return self._samples[-1] if self._samples else None

    def start(self) -> None:
        """Start the sampling thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqlite-ui-history",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread and wait for it (at most one snapshot's time)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not kill the console
                _log.exception("mqlite ui: taking a stats snapshot failed")
            took = time.monotonic() - t0
            wait = max(self.interval - took, 4 * took, 0.01)
            self.period = took + wait
            self._stop.wait(wait)
