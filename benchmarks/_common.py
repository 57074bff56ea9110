"""Shared pieces of the benchmark runner: budgets, samples, statistics.

Every timed loop is bounded twice: by a message count and by wall time
(:class:`Budget`), whichever comes first.  A repetition yields one
:class:`Sample`; a row's samples are reduced to a median with min, max and
interquartile range by :func:`summarize`.
"""

from __future__ import annotations

import math
import os
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Budget",
    "Fleet",
    "Sample",
    "Side",
    "make_value",
    "now_ns",
    "paced",
    "percentile",
    "read_stamp",
    "stamp_value",
    "summarize",
]

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process of the machine

_STAMP = struct.Struct("<q")


@dataclass(frozen=True)
class Budget:
    """Bounds of one repetition: stop after ``messages`` or ``seconds``, whichever is first."""

    seconds: float
    messages: int

    def scaled(self, seconds: float | None = None, messages: int | None = None) -> Budget:
        return Budget(self.seconds if seconds is None else seconds,
                      self.messages if messages is None else messages)


@dataclass
class Sample:
    """Result of one repetition of one side of a row.

    ``messages`` moved in ``seconds`` by ``calls`` API calls (per-call latency
    is ``seconds / calls`` per worker).  Latency rows also carry end-to-end
    percentiles in microseconds.
    """

    messages: int
    seconds: float
    calls: int = 0
    workers: int = 1
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def call_us(self) -> float | None:
        """Mean wall time of one call as one worker saw it, in microseconds."""
        if not self.calls or self.seconds <= 0:
            return None
        return self.seconds * self.workers / self.calls * 1e6


class Side:
    """One system's implementation of a row: ``setup`` once, ``rep`` per repetition.

    ``rep`` runs one bounded repetition and returns its :class:`Sample`;
    ``close`` releases everything (called even when a repetition failed).
    """

    label = ""

    def setup(self) -> None:
        pass

    def rep(self, i: int) -> Sample:
        raise NotImplementedError

    def close(self) -> None:
        pass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min, max, quartiles and n of ``values`` (``None`` when empty)."""
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return None
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1],
            "q1": q1, "q3": q3, "n": len(vals)}


def make_value(size: int) -> bytes:
    """A payload of ``size`` random (incompressible) bytes."""
    return os.urandom(size)


def stamp_value(size: int, pad: bytes) -> bytes:
    """``size`` bytes starting with the current monotonic time in ns (little-endian int64)."""
    return _STAMP.pack(now_ns()) + pad[: size - _STAMP.size]


def read_stamp(value: bytes) -> int:
    return int(_STAMP.unpack_from(value)[0])


class Fleet:
    """Worker processes for the wake-up benchmarks (bench_group_wake, bench_queue_wake,
    bench_beside_cpu): ``target(*args, stop, ready, out)`` in one spawned process per
    ``args``; the constructor returns once every one reached ``ready.wait()``;
    :meth:`finish` sets ``stop`` and returns what each put on ``out``."""

    def __init__(self, target: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        ready = ctx.Barrier(len(args) + 1)
        self._procs = [ctx.Process(target=target, args=(*a, self._stop, ready, self._out))
                       for a in args]
        for p in self._procs:
            p.start()
        ready.wait(120)

    def finish(self) -> list[Any]:
        self._stop.set()
        res = [self._out.get(timeout=120) for _ in self._procs]
        for p in self._procs:
            p.join(60)
        return res


def paced(n: int, rate: float, fn: Callable[[int], object]) -> None:
    """Call ``fn(i)`` for ``i`` in ``range(n)``, ``rate`` calls per second at most."""
    gap = 1.0 / rate
    nxt = time.monotonic()
    for i in range(n):
        fn(i)
        nxt += gap
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
