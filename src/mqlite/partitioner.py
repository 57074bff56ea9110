"""Partitioners: which partition a record goes to.

A partitioner is any callable ``(key, value, partition_count) -> int``.  The
built-ins are picked by name:

``"murmur2"`` (default)
    Keyed records go to ``toPositive(murmur2(key)) % n`` — the partition
    Kafka's Java client picks — so per-key order holds and data can move to
    Kafka.  Keyless records are spread round-robin.
``"round_robin"``
    Every record to the next partition, keys ignored.
``"sticky"``
    Keyed records as ``"murmur2"``; keyless records stay on one partition
    until ``batch_bytes`` have gone there, then move on (fewer, larger
    batches, as Kafka's sticky partitioner).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from mqlite import _core

__all__ = [
    "Partitioner",
    "RoundRobinPartitioner",
    "StickyPartitioner",
    "murmur2_partitioner",
    "resolve_partitioner",
]

Partitioner = Callable[[Any, Any, int], int]


class RoundRobinPartitioner:
    """Cycle through partitions, ignoring keys."""

    def __init__(self) -> None:
        self._n = itertools.count()

    def __call__(self, key: Any, value: Any, partitions: int) -> int:
        return next(self._n) % partitions


class _KeyedOr:
    """murmur2 for keyed records, ``fallback`` for keyless ones."""

    def __init__(self, fallback: Partitioner) -> None:
        self.fallback = fallback

    def __call__(self, key: Any, value: Any, partitions: int) -> int:
        if key is None:
            return self.fallback(key, value, partitions)
        return _core.partition_for_key(key, partitions)


def murmur2_partitioner() -> Partitioner:
    """Kafka-compatible key hashing; keyless records round-robin."""
    return _KeyedOr(RoundRobinPartitioner())


class StickyPartitioner:
    """Keyless records stick to one partition for ``batch_bytes``, then move."""

    def __init__(self, batch_bytes: int = 1 << 20) -> None:
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._current: int | None = None
        self._filled = 0
        self._next = itertools.count()

    def __call__(self, key: Any, value: Any, partitions: int) -> int:
        if key is not None:
            return _core.partition_for_key(key, partitions)
        with self._lock:
            if self._current is None or self._filled >= self._batch_bytes \
                    or self._current >= partitions:
                self._current = next(self._next) % partitions
                self._filled = 0
            self._filled += len(value) if value is not None else 0
            return self._current


def resolve_partitioner(spec: str | Partitioner | None, batch_bytes: int) -> Partitioner:
    """Turn a name or callable into a partitioner (``ValueError`` for unknown names)."""
    if spec is None or spec == "murmur2":
        return murmur2_partitioner()
    if spec == "round_robin":
        return RoundRobinPartitioner()
    if spec == "sticky":
        return StickyPartitioner(batch_bytes)
    if callable(spec):
        return spec
    raise ValueError(
        f"partitioner must be 'murmur2', 'round_robin', 'sticky' or a callable "
        f"(key, value, partition_count) -> int, got {spec!r}")
