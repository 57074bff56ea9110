"""Exceptions a handler raises to steer delivery: :class:`Reject` and :class:`Retry`;
:class:`TimeLimitExceeded`, the failure of a queue job that ran over its ``time_limit``.

Any other exception is *transient* (retried per the subscriber's ``retries``
and ``backoff``) unless its type is listed in the subscriber's ``permanent=``;
a payload that does not decode or validate is permanent.
"""

from __future__ import annotations

import math

from mqlite.errors import TimeoutError as MqliteTimeoutError

__all__ = ["Reject", "Retry", "TimeLimitExceeded"]


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


class TimeLimitExceeded(MqliteTimeoutError):
    """A queue handler call ran longer than its subscriber's ``time_limit`` (D88).

    Never raised *in* a handler: the App records it as the attempt's error.  An
    ``async def`` handler is cancelled at the limit (it sees ``CancelledError``);
    a plain ``def`` handler cannot be stopped safely, so its attempt is given up
    while it keeps running in its thread, and what it returns later is discarded.
    Like any exception it is transient (retried per ``retries`` and ``backoff``,
    then dead-lettered with ``x-error-type: TimeLimitExceeded``) unless the
    subscriber lists it in ``permanent=``.

    Attributes
    ----------
    limit : float
        The subscriber's ``time_limit``, seconds.
    subscriber : str
        The subscriber's name.

    A :class:`mqlite.TimeoutError` (so also a built-in ``TimeoutError``).
    """

    def __init__(self, limit: float, subscriber: str) -> None:
        super().__init__(f"handler {subscriber!r} ran longer than its time_limit of "
                         f"{limit:g} s")
        self.limit = float(limit)
        self.subscriber = subscriber

    def __reduce__(self) -> tuple[type[TimeLimitExceeded], tuple[float, str]]:
        return (TimeLimitExceeded, (self.limit, self.subscriber))
