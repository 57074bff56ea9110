"""The mqlite exception hierarchy.

Every error mqlite raises on purpose derives from :class:`MqliteError`; wrong
argument types are :class:`TypeError` and bad argument values are
:class:`ValueError` (some of them also mqlite errors, such as
:class:`InvalidTopicError`).  Exceptions of the storage engine (``lmdb``) never
escape raw: they are wrapped in :class:`StorageError` or a subclass, with the
original as ``__cause__``.

Each class has a ``retriable`` attribute: ``True`` when the same call may
succeed later without any change by the caller (for example once consumers
have drained a full store).
"""

from __future__ import annotations

import builtins
import concurrent.futures
import datetime
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AlreadyProcessedError",
    "BackendError",
    "BrokerDirectoryError",
    "CancelledError",
    "ClosedError",
    "CommitFailedError",
    "ConcurrentAccessError",
    "CorruptRecordError",
    "ExchangeExistsError",
    "ExchangeNotFoundError",
    "GroupActiveError",
    "GroupError",
    "InvalidTopicError",
    "MessageTooLargeError",
    "MqliteError",
    "NotSupportedError",
    "OffsetOutOfRangeError",
    "PartitionNotFoundError",
    "QueueConfigConflictError",
    "StaleDeliveryError",
    "StorageError",
    "StorageFullError",
    "TimeoutError",
    "TopicError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UnroutableError",
]


class MqliteError(Exception):
    """Root of every error mqlite raises on purpose."""

    retriable: bool = False


class ClosedError(MqliteError):
    """The broker, producer or consumer was closed; open a new one."""


class ConcurrentAccessError(MqliteError):
    """Two threads used one object that is not thread-safe (a :class:`~mqlite.Consumer`).

    Create one consumer per thread; ``wakeup()`` and ``close()`` are the
    calls that may come from any thread.
    """


class StorageError(MqliteError):
    """The storage engine failed (I/O error, lock failure, bad environment).

    The original ``lmdb`` exception is chained as ``__cause__``.
    """


class StorageFullError(StorageError):
    """The broker's map is above its high-water mark: sends are refused.

    Consumers can still ack, delete and drain.  Free space by consuming, by
    retention or by deleting topics, or reopen the broker with a larger
    ``map_size``.
    """

    retriable = True


class CorruptRecordError(StorageError):
    """Stored bytes failed validation (bad CRC, bad length, bad structure).

    Attributes
    ----------
    topic, partition, offset
        Where the corrupt batch is stored, when known (else ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = []
        if topic is not None:
            where.append(f"topic {topic!r}")
        if partition is not None:
            where.append(f"partition {partition}")
        if offset is not None:
            where.append(f"batch at offset {offset}")
        full = message if not where else f"{message} ({', '.join(where)})"
        if where:
            full += "; run `mqlite verify` on the broker directory to list every corrupt batch"
        super().__init__(full)
        self.topic = topic
        self.partition = partition
        self.offset = offset


class BrokerDirectoryError(MqliteError, ValueError):
    """The broker directory is unsafe or unusable (symlink, foreign owner, bad mode)."""


class TopicError(MqliteError):
    """Base class for topic-level errors."""


class TopicNotFoundError(TopicError, KeyError):
    """The named topic does not exist; create it with ``broker.create_topic``."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TopicExistsError(TopicError):
    """A topic with this name already exists."""


class InvalidTopicError(TopicError, ValueError):
    """A topic name is not 1-249 characters of ``[A-Za-z0-9._-]`` (or is ``.``/``..``)."""


class PartitionNotFoundError(TopicError, ValueError):
    """A partition number is outside ``0 .. partitions - 1`` for the topic."""


class MessageTooLargeError(MqliteError, ValueError):
    """A message is larger than the topic's ``max_message_bytes``."""


class OffsetOutOfRangeError(MqliteError, ValueError):
    """A position is outside the log and ``auto_offset_reset="none"`` was chosen.

    Attributes
    ----------
    offsets
        ``{TopicPartition: offset}``: the out-of-range position of each partition
        (``-1`` when there was no committed offset), like Kafka's
        ``OffsetOutOfRangeException.offsetOutOfRangePartitions()``.
    """

    def __init__(self, message: str, offsets: dict[Any, int] | None = None) -> None:
        super().__init__(message)
        self.offsets: dict[Any, int] = dict(offsets) if offsets else {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.args[0]) if self.args else "", self.offsets))


class GroupError(MqliteError):
    """Base class for consumer-group and queue-group errors."""


class CommitFailedError(GroupError):
    """An offset commit was fenced: this member no longer owns the partition.

    Poll again to join the current generation; the messages will be
    redelivered to whichever member owns the partition now.
    """


class GroupActiveError(GroupError):
    """An admin change (offset reset) refused because the group has live members.

    Stop the group's consumers first, or pass ``force=True`` (``--force``):
    live members keep reading from their in-memory positions and may commit
    over the reset.
    """


class QueueConfigConflictError(GroupError, ValueError):
    """A queue consumer asked for a retry/dead-letter policy that differs from its group's.

    The policy (``max_deliveries``, ``dead_letter_topic``, ``retry_backoff``)
    is stored with the queue group.  Pass the stored values, leave them out to
    adopt them, or change them with ``broker.set_queue_policy(topic, group, ...)``.
    """


class StaleDeliveryError(GroupError):
    """An ack/nack used a delivery that is no longer this consumer's.

    Its visibility timeout expired (or its owner was declared dead) and the
    message was redelivered; nothing was changed.  For a list, the valid
    deliveries were settled: the stale ones are in :attr:`stale`, the count
    settled in :attr:`settled`.
    """

    #: The stale deliveries of a list ack/nack (empty for a single delivery).
    stale: Sequence[Any] = ()
    #: How many deliveries of that list were settled.
    settled: int = 0


class ExchangeNotFoundError(MqliteError, KeyError):
    """The named exchange does not exist; declare it with ``broker.declare_exchange``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ExchangeExistsError(MqliteError):
    """An exchange exists with a different type or arguments."""


class UnroutableError(MqliteError):
    """A publish matched no binding and the exchange has no alternate exchange."""


class AlreadyProcessedError(MqliteError):
    """An event id was already claimed in its scope: this event was handled before.

    Raised by ``tx.claim`` (and ``tx.record_processed``) when the id is
    claimed by an earlier committed transaction or earlier in the same
    transaction, and when a transaction commits after another one claimed
    the id first: then **nothing** of the transaction was applied (no sends,
    offset commits or acks).  Skip the event: commit its offset or ack it
    in a transaction of its own.

    Attributes
    ----------
    event_id
        The id as passed (``str`` or ``bytes``).
    scope
        The scope it was claimed in.
    claimed_ms, expires_ms
        When the existing claim was made and when it expires (wall-clock
        milliseconds since the epoch); ``None`` when unknown (claimed
        earlier in the same transaction, or stored by an older version).
    """

    def __init__(self, event_id: str | bytes, scope: str, *, claimed_ms: int | None = None,
                 expires_ms: int | None = None) -> None:
        until = ""
        if expires_ms is not None:
            try:
                when = datetime.datetime.fromtimestamp(expires_ms / 1000, datetime.UTC)
                until = f" until {when.isoformat(timespec='milliseconds')}"
            except (OverflowError, ValueError, OSError):  # a stored value out of range
                until = f" until {expires_ms} ms since the epoch"
        super().__init__(
            f"event id {event_id!r} in scope {scope!r} is already claimed{until}: it was "
            "processed before, and a transaction with this claim is not applied; skip the "
            "event (commit its offset or ack it in a transaction of its own)")
        self.event_id = event_id
        self.scope = scope
        self.claimed_ms = claimed_ms
        self.expires_ms = expires_ms

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_already_processed,
                (self.event_id, self.scope, self.claimed_ms, self.expires_ms))


def _rebuild_already_processed(event_id: str | bytes, scope: str, claimed_ms: int | None,
                               expires_ms: int | None) -> AlreadyProcessedError:
    return AlreadyProcessedError(event_id, scope, claimed_ms=claimed_ms, expires_ms=expires_ms)


class CancelledError(MqliteError, concurrent.futures.CancelledError):
    """A producer send's future was cancelled before its record was committed."""


class TimeoutError(MqliteError, builtins.TimeoutError):
    """A blocking call timed out."""

    retriable = True


class NotSupportedError(MqliteError):
    """The backend in use has no such feature (e.g. queues or exchanges on Kafka).

    The message names the alternative (another call, or the embedded
    backend); ``feature`` is the name of the missing call or option.
    """

    def __init__(self, feature: str, alternative: str) -> None:
        super().__init__(f"{feature} is not supported by this backend; {alternative}")
        self.feature = feature
        self.alternative = alternative

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.feature, self.alternative))


class BackendError(MqliteError):
    """A remote backend (Kafka) failed in a way no narrower mqlite error describes.

    Attributes
    ----------
    code
        The backend's error name (for Kafka, librdkafka's, e.g. ``"_TRANSPORT"``).
    """

    def __init__(self, message: str, code: str = "", retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.args[0]) if self.args else "", self.code, self.retriable))
