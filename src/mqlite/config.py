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
    "Durability",
    "DURABILITY_MODES",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_DEDUP_WINDOW_MS",
    "HIGH_WATER_FRACTION",
    "TopicConfig",
    "validate_topic_name",
    "validate_group_name",
    "require_int",
    "require_positive_number",
    "UNSET",
    "Unset",
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
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
DEFAULT_DEDUP_WINDOW_MS = 120_000
MAX_PARTITIONS = 10_000

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


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings, stored with the topic.

    Attributes
    ----------
    partitions
        Number of partitions (1-10,000); fixed at creation.
    retention_ms, retention_bytes, retention_messages
        Delete whole old batches from a partition's head once the oldest
        record is older than ``retention_ms``, or the partition holds more
        than ``retention_bytes`` / ``retention_messages``.  ``None`` = keep.
    max_message_bytes
        Upper bound on one message's key + value + headers.
    dedup_window_ms
        How long a ``dedup_id`` is remembered.
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
        require_int(self.retention_ms, "retention_ms", minimum=1, allow_none=True)
        require_int(self.retention_bytes, "retention_bytes", minimum=1, allow_none=True)
        require_int(self.retention_messages, "retention_messages", minimum=1, allow_none=True)
        require_int(self.max_message_bytes, "max_message_bytes", minimum=1,
                    maximum=1 << 30)
        require_int(self.dedup_window_ms, "dedup_window_ms", minimum=0)
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
