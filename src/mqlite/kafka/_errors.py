"""One table from librdkafka error codes to mqlite's typed errors.

Every confluent-kafka exception that reaches a caller of the Kafka backend
goes through :func:`to_mqlite` (``raise to_mqlite(exc) from exc``), so callers
catch the same classes on both backends (``TopicNotFoundError``,
``CommitFailedError``, ...); anything without a narrower class is a
:class:`mqlite.BackendError` carrying the librdkafka code name.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from mqlite.errors import (
    BackendError,
    ClosedError,
    CommitFailedError,
    InvalidTopicError,
    MessageTooLargeError,
    MqliteError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    TimeoutError,
    TopicExistsError,
    TopicNotFoundError,
)

__all__ = ["error_of", "to_mqlite"]

_BY_CODE: dict[int, type[MqliteError]] = {
    KafkaError.UNKNOWN_TOPIC_OR_PART: TopicNotFoundError,
    KafkaError._UNKNOWN_TOPIC: TopicNotFoundError,
    KafkaError._UNKNOWN_PARTITION: PartitionNotFoundError,
    KafkaError.TOPIC_ALREADY_EXISTS: TopicExistsError,
    getattr(KafkaError, "TOPIC_EXCEPTION", 17): InvalidTopicError,
    KafkaError.MSG_SIZE_TOO_LARGE: MessageTooLargeError,
    KafkaError.INVALID_MSG_SIZE: MessageTooLargeError,
    KafkaError.RECORD_LIST_TOO_LARGE: MessageTooLargeError,
    KafkaError._TIMED_OUT: TimeoutError,
    KafkaError.REQUEST_TIMED_OUT: TimeoutError,
    KafkaError._MSG_TIMED_OUT: TimeoutError,
    KafkaError.ILLEGAL_GENERATION: CommitFailedError,
    KafkaError.UNKNOWN_MEMBER_ID: CommitFailedError,
    KafkaError.REBALANCE_IN_PROGRESS: CommitFailedError,
    KafkaError.FENCED_INSTANCE_ID: CommitFailedError,
    KafkaError.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    KafkaError._AUTO_OFFSET_RESET: OffsetOutOfRangeError,
    KafkaError._DESTROY: ClosedError,
}

_HINTS: dict[type[MqliteError], str] = {
    TopicNotFoundError: "create it with broker.create_topic",
    TopicExistsError: "pass exist_ok=True to keep the existing topic",
    CommitFailedError: "this member lost the partition in a rebalance; poll again and the "
                       "messages are redelivered to the current owner",
    MessageTooLargeError: "raise the topic's max.message.bytes or send smaller messages",
    OffsetOutOfRangeError: "seek() to a valid offset or use auto_offset_reset='earliest'",
    TimeoutError: "check that the Kafka brokers are reachable (bootstrap servers)",
}


def error_of(exc: BaseException) -> KafkaError | None:
    """The :class:`confluent_kafka.KafkaError` inside ``exc``, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    if isinstance(exc, KafkaError):
        return exc
    return None


def to_mqlite(err: BaseException | KafkaError, what: str = "") -> MqliteError:
    """The mqlite error for a confluent-kafka error (raise it ``from`` the original).

    Parameters
    ----------
    err
        A :class:`confluent_kafka.KafkaException`, a :class:`confluent_kafka.KafkaError`
        (as delivery reports carry), or another exception (wrapped in
        :class:`BackendError`).
    what
        What was being done, for the message (e.g. ``"send to 'orders'"``).
    """
    kerr = err if isinstance(err, KafkaError) else error_of(err)
    prefix = f"{what}: " if what else ""
    if kerr is None:
        return BackendError(f"{prefix}{err}", type(err).__name__)
    code = kerr.code()
    cls = _BY_CODE.get(code)
    text = f"{prefix}{kerr.str()} (Kafka {kerr.name()})"
    if cls is None:
        return BackendError(text, kerr.name(), bool(kerr.retriable()))
    hint = _HINTS.get(cls)
    if hint:
        text = f"{text}; {hint}"
    return cls(text)
