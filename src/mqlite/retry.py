"""Retry backoff policies for queue redeliveries (``broker.queue(..., retry_backoff=)``)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from mqlite.config import MAX_DELAY_S, require_positive_number, require_seconds

__all__ = ["Backoff", "resolve_backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before a nacked message is delivered again.

    ``base`` is seconds (``0 <= base <= 10 years``), ``cap`` seconds (finite,
    >= 0; a huge cap means uncapped); ``jitter`` is a fraction in ``[0, 1]``;
    ``multiplier`` >= 1.
    ``kind="fixed"``: always ``base`` seconds.  ``kind="exponential"``:
    ``base * multiplier ** (delivery_count - 1)``, capped at ``cap``.  With
    ``jitter`` the delay is drawn uniformly from ``[delay * (1 - jitter),
    delay]`` ("equal jitter" with ``jitter=0.5``, "full jitter" with ``1.0``),
    so consumers that failed together do not retry together.  The cap bounds
    the delay before jitter.  ``nack(delay=)`` overrides the policy.

    Examples
    --------
    >>> Backoff.fixed(5.0).delay(3)
    5.0
    >>> Backoff.exponential(base=1.0, cap=60.0, jitter=0.0).delay(4)
    8.0
    """

    kind: str = "exponential"
    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.5
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "exponential"):
            raise ValueError(f"Backoff kind must be 'fixed' or 'exponential', got {self.kind!r}")
        require_seconds(self.base, "base", maximum=MAX_DELAY_S, allow_zero=True)
        for name in ("cap", "jitter", "multiplier"):
            v = require_positive_number(getattr(self, name), name)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.jitter > 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")

    @classmethod
    def fixed(cls, seconds: float, jitter: float = 0.0) -> Backoff:
        """Always ``seconds`` (optionally jittered)."""
        return cls(kind="fixed", base=seconds, cap=seconds, jitter=jitter)

    @classmethod
    def exponential(cls, base: float = 1.0, cap: float = 300.0, jitter: float = 0.5,
                    multiplier: float = 2.0) -> Backoff:
        """``base * multiplier ** (n - 1)`` after the n-th delivery, capped, jittered."""
        return cls(kind="exponential", base=base, cap=cap, jitter=jitter, multiplier=multiplier)

    def delay(self, delivery_count: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``delivery_count``-th delivery failed."""
        if self.kind == "fixed":
            d = self.base
        else:
            n = max(0, min(delivery_count - 1, 1000))
            try:
                d = min(self.cap, self.base * self.multiplier ** n)
            except OverflowError:
                d = self.cap
        if self.jitter:
            r = (rng or random).random()
            d = d * (1 - self.jitter * r)
        return d


def resolve_backoff(spec: Backoff | float | None) -> Backoff | None:
    """``None`` (redeliver at once), a number (fixed seconds) or a :class:`Backoff`."""
    if spec is None or isinstance(spec, Backoff):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        require_seconds(spec, "retry_backoff", maximum=MAX_DELAY_S, allow_zero=True)
        return Backoff.fixed(float(spec))
    raise TypeError("retry_backoff must be None, a number of seconds or a mqlite.Backoff")
