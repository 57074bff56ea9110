"""Retry backoff policies for queue redeliveries."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mqlite.config import require_positive_number

__all__ = ["Backoff", "resolve_backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before a nacked message is delivered again.

    ``kind="fixed"``: always ``base`` seconds.  ``kind="exponential"``:
    ``base * 2 ** (delivery_count - 1)``, capped at ``cap``; with ``jitter``
    the delay is drawn uniformly from ``[delay * (1 - jitter), delay]``
    ("equal jitter" with ``jitter=0.5``, "full jitter" with ``1.0``).
    """

    kind: str = "exponential"
    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "exponential"):
            raise ValueError(f"Backoff kind must be 'fixed' or 'exponential', got {self.kind!r}")
        require_positive_number(self.base, "base")
        require_positive_number(self.cap, "cap")
        require_positive_number(self.jitter, "jitter")
        if self.jitter > 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, delivery_count: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``delivery_count``-th delivery failed."""
        if self.kind == "fixed":
            d = self.base
        else:
            d = min(self.cap, self.base * (2 ** max(0, min(delivery_count - 1, 60))))
        if self.jitter:
            r = (rng or random).random()
            d = d * (1 - self.jitter * r)
        return d


def resolve_backoff(spec: Backoff | float | int | None) -> Backoff | None:
    """``None`` (redeliver at once), a number (fixed seconds) or a :class:`Backoff`."""
    if spec is None or isinstance(spec, Backoff):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        require_positive_number(spec, "retry_backoff")
        return Backoff(kind="fixed", base=float(spec), jitter=0.0)
    raise TypeError("retry_backoff must be None, a number of seconds or a mqlite.Backoff")
