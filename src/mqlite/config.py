"""Configuration values and argument validation shared by every layer.

A leaf module: it imports nothing from mqlite except :mod:`mqlite.errors`.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mqlite.errors import InvalidTopicError

__all__ = [
    "DEFAULT_DEDUP_WINDOW_MS",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DURABILITY_MODES",
    "GROW_WATER_FRACTION",
    "HIGH_WATER_FRACTION",
    "MAX_DELAY_S",
    "MAX_LINGER_MS",
    "MAX_POLL_INTERVAL_S",
    "MAX_SESSION_TIMEOUT_S",
    "MAX_VISIBILITY_TIMEOUT_S",
    "UNSET",
    "Durability",
    "TopicConfig",
    "Unset",
    "require_int",
    "require_milliseconds",
    "require_positive_number",
    "require_seconds",
    "require_unix_time",
    "validate_group_name",
    "validate_topic_name",
]


class Unset(enum.Enum):
    """Type of :data:`UNSET`, the default of options whose absence means "keep the stored value"."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Default of options that, when left out, adopt a stored value (e.g. a queue group's policy).
UNSET = Unset.UNSET

Durability = Literal["sync", "lazy", "none"]
DURABILITY_MODES: tuple[str, ...] = ("sync", "lazy", "none")

#: Default LMDB map size: a sparse reservation; the file grows only as used.
DEFAULT_MAP_SIZE = 64 << 30
#: Above this fraction of the map in use, sends raise StorageFullError.
HIGH_WATER_FRACTION = 0.90
#: Above this fraction, writes that add lasting state but drain nothing (receives, new
#: groups, new topics, exchanges and bindings) raise StorageFullError too; the rest of the
#: map is kept for draining writes (acks, nacks, offset commits, joins of existing groups,
#: deletes, close), which are always admitted.
GROW_WATER_FRACTION = 0.95
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
DEFAULT_DEDUP_WINDOW_MS = 120_000
MAX_PARTITIONS = 10_000

# Upper bounds of time options.  Values above them are almost always a unit
# mistake (Kafka's options are milliseconds, mqlite's durations are seconds),
# so they are refused with an error that names the unit instead of waiting
# hours or years.
#: ``session_timeout`` (seconds): 1 hour.
MAX_SESSION_TIMEOUT_S = 3600.0
#: ``max_poll_interval`` (seconds): 1 day.
MAX_POLL_INTERVAL_S = 86_400.0
#: ``visibility_timeout`` and ``extend()`` (seconds): 12 hours, as SQS.
MAX_VISIBILITY_TIMEOUT_S = 43_200.0
#: ``delay``, ``nack(delay=)``, backoff delays, and how far ahead ``deliver_at`` may be
#: (seconds): 10 years.
MAX_DELAY_S = 10 * 365.25 * 86_400
#: ``linger_ms`` (milliseconds): 1 minute.
MAX_LINGER_MS = 60_000
#: Largest value of a stored 64-bit signed count or duration (retention, offsets).
MAX_I64 = (1 << 63) - 1
#: Largest map: 2**47 bytes (128 TiB) is the x86-64 user address space.
MAX_MAP_SIZE = 1 << 47

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


def validate_topic_name(name: object, what: str = "topic") -> str:
    """Return ``name`` if it is a valid topic (or exchange) name.

    Valid names are 1-249 characters of ``[A-Za-z0-9._-]`` and not ``.`` or
    ``..``, as in Kafka.  Names are checked before they reach storage or the
    filesystem.

    Raises
    ------
    TypeError
        ``name`` is not a ``str``.
    InvalidTopicError
        ``name`` breaks the rule above (a ``ValueError``).
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be str, not {type(name).__name__}")
    if not _TOPIC_RE.fullmatch(name) or name in (".", ".."):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise InvalidTopicError(
            f"invalid {what} name {shown!r}: use 1-249 characters of letters, digits, "
            "'.', '_' and '-' (not '.' or '..')"
        )
    return name


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name (same rule as topics)."""
    return validate_topic_name(name, "group")


def require_int(value: object, name: str, *, minimum: int | None = None,
                maximum: int | None = None, allow_none: bool = False) -> Any:
    """Check that ``value`` is an ``int`` (not ``bool``) within bounds."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def require_positive_number(value: object, name: str, *, allow_zero: bool = True,
                            allow_none: bool = False) -> Any:
    """Check that ``value`` is a real number >= 0 (or > 0)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _human(seconds: float) -> str:
    """``30000`` -> ``"8.33 hours"``: a duration in the largest unit that fits."""
    unit, size = "second", 1.0
    for unit, size in (("year", 365.25 * 86_400), ("day", 86_400.0), ("hour", 3600.0),
                       ("minute", 60.0), ("second", 1.0)):
        if abs(seconds) >= size:
            break
    n = f"{seconds / size:.3g}"
    return f"{n} {unit}" if n == "1" else f"{n} {unit}s"


def require_seconds(value: object, name: str, *, maximum: float, allow_zero: bool = False,
                    allow_none: bool = False) -> Any:
    """Check a duration in seconds: a finite real number in ``(0, maximum]``.

    ``allow_zero`` admits 0.  A value above ``maximum`` is refused with a
    message that names the unit and the value in milliseconds-as-seconds,
    e.g. ``session_timeout is in seconds (got 30000, which is 8.33 hours);
    did you mean 30.0?``.

    Raises
    ------
    TypeError
        Not an ``int``/``float`` (``bool`` is refused).
    ValueError
        NaN, infinite, negative (or 0 without ``allow_zero``), or above ``maximum``.
    """
    v = require_positive_number(value, name, allow_zero=allow_zero, allow_none=allow_none)
    if v is None:
        return None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number of seconds, got {v}")
    if v > maximum:
        raise ValueError(
            f"{name} is in seconds (got {v:g}, which is {_human(v)}; the limit is "
            f"{_human(maximum)}); did you mean {v / 1000!r}?")
    return v


def require_milliseconds(value: object, name: str, *, maximum: float,
                         integer: bool = False) -> Any:
    """Check a duration in milliseconds: a finite number in ``[0, maximum]``.

    Raises
    ------
    TypeError
        Not a number (not an ``int`` when ``integer``).
    ValueError
        Negative, NaN, infinite or above ``maximum``; the message names the unit.
    """
    v = require_int(value, name) if integer else require_positive_number(value, name)
    if v < 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number of milliseconds >= 0, got {v}")
    if v > maximum:
        raise ValueError(f"{name} is in milliseconds (got {v:g}, which is {_human(v / 1000)}); "
                         f"the limit is {maximum:g} ms ({_human(maximum / 1000)})")
    return v


def require_unix_time(value: object, name: str, *, now: float,
                      max_ahead: float = MAX_DELAY_S) -> float:
    """Check a UNIX time in seconds, at most ``max_ahead`` seconds after ``now``.

    A time in the past is allowed (it is due at once).  A time further ahead
    is refused, e.g. ``deliver_at is a UNIX time in seconds (got
    1767225600000, which is 5.5e+04 years ahead); did you mean
    1767225600.0?`` (milliseconds passed as seconds).

    Raises
    ------
    TypeError
        Not an ``int``/``float``.
    ValueError
        Negative, NaN, infinite, or too far ahead.
    """
    v = require_positive_number(value, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite UNIX time in seconds, got {v}")
    if v - now > max_ahead:
        raise ValueError(
            f"{name} is a UNIX time in seconds (got {v:g}, which is {_human(v - now)} "
            f"ahead; the limit is {_human(max_ahead)}); did you mean {v / 1000:.1f}?")
    return float(v)


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings, stored with the topic.

    Attributes
    ----------
    partitions
        Number of partitions (1-10,000); fixed at creation.
    retention_ms, retention_bytes, retention_messages
        Delete whole old batches from a partition's head once the oldest
        record is older than ``retention_ms`` (milliseconds, as Kafka's
        ``retention.ms``; >= 1), or the partition holds more than
        ``retention_bytes`` / ``retention_messages`` (>= 1).  ``None`` = keep.
    max_message_bytes
        Upper bound on one message's key + value + headers.
    dedup_window_ms
        Milliseconds a ``dedup_id`` is remembered (>= 0; default 120,000 = 2
        minutes).
    cleanup
        ``"delete"`` (retention only) or ``"consumed"`` (also delete batches
        every queue group has acknowledged).
    """

    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    retention_messages: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    cleanup: str = "delete"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_int(self.partitions, "partitions", minimum=1, maximum=MAX_PARTITIONS)
        require_int(self.retention_ms, "retention_ms", minimum=1, maximum=MAX_I64,
                    allow_none=True)
        require_int(self.retention_bytes, "retention_bytes", minimum=1, maximum=MAX_I64,
                    allow_none=True)
        require_int(self.retention_messages, "retention_messages", minimum=1, maximum=MAX_I64,
                    allow_none=True)
        require_int(self.max_message_bytes, "max_message_bytes", minimum=1,
                    maximum=1 << 30)
        require_int(self.dedup_window_ms, "dedup_window_ms", minimum=0, maximum=MAX_I64)
        if self.cleanup not in ("delete", "consumed"):
            raise ValueError(f"cleanup must be 'delete' or 'consumed', got {self.cleanup!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "retention_ms": self.retention_ms,
            "retention_bytes": self.retention_bytes,
            "retention_messages": self.retention_messages,
            "max_message_bytes": self.max_message_bytes,
            "dedup_window_ms": self.dedup_window_ms,
            "cleanup": self.cleanup,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopicConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
