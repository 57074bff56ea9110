"""Exceptions a handler raises to steer delivery: :class:`Reject` and :class:`Retry`.

Any other exception is *transient* (retried per the subscriber's ``retries``
and ``backoff``) unless its type is listed in the subscriber's ``permanent=``;
a payload that does not decode or validate is permanent.
"""

from __future__ import annotations

import math

__all__ = ["Reject", "Retry"]


class Reject(Exception):
    """Permanent failure: no more attempts; the message goes to the dead-letter topic.

    ``raise mqlite.Reject("invalid card")``.  Without a ``dead_letter=`` topic the
    message is dropped (logged, reported with status ``"error"``) and its offset
    is committed / it is acknowledged.
    """

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = str(reason)


class Retry(Exception):
    """Transient failure: try again after ``delay`` seconds (default: the subscriber's backoff).

    Counts as an attempt: after ``retries`` retries the message is dead-lettered.

    Parameters
    ----------
    delay
        Seconds (not milliseconds) before the next attempt, ``0 <= delay <=
        86400``; ``None`` uses the subscriber's ``backoff``.
    reason
        A short text kept as the last error.

    Raises
    ------
    TypeError, ValueError
        ``delay`` is not a number of seconds within the bounds.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None:
            if not isinstance(delay, (int, float)) or isinstance(delay, bool):
                raise TypeError(f"Retry delay must be seconds (a number), not "
                                f"{type(delay).__name__}")
            if math.isnan(delay) or not 0 <= delay <= 86400:
                raise ValueError(f"Retry delay is in seconds and must be 0 to 86400, got {delay!r}")
        super().__init__(reason)
        self.delay = None if delay is None else float(delay)
        self.reason = str(reason)
