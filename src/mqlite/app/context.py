"""The per-message :class:`Context` a handler may ask for (``ctx: mqlite.Context``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from mqlite.app.codec import encode_key, encode_value

if TYPE_CHECKING:
    from mqlite._core import Message

__all__ = ["H_CORRELATION", "H_REPLY_TO", "Context", "Output", "context_maker"]

#: Header naming the topic a request's reply goes to (request / reply).
H_REPLY_TO = "x-reply-to"
#: Header carrying a request's correlation id (copied onto the reply).
H_CORRELATION = "x-correlation-id"


class Output(NamedTuple):
    """One message a handler produced, sent with the handler's outcome (internal)."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    partition: int | None
    delay: float | None = None  # seconds: a delayed message (retry topics), sent on its own
    deliver_at: float | None = None  # UNIX seconds (app.publish only), sent on its own
    dedup_id: str | bytes | None = None  # app.publish only: an idempotent send


def _headers(headers: Any) -> list[tuple[str, bytes]] | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        elif not isinstance(value, bytes):
            raise TypeError(f"header {name!r}: values must be str or bytes, "
                            f"not {type(value).__name__}")
        out.append((name, value))
    return out


def make_output(topic: str, payload: Any, key: Any = None, headers: Any = None,
                partition: int | None = None) -> Output:
    """Validate and encode one outgoing message (internal; raises ``TypeError``)."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    if partition is not None and (not isinstance(partition, int) or isinstance(partition, bool)
                                  or partition < 0):
        raise ValueError(f"partition must be an int >= 0 or None, got {partition!r}")
    return Output(topic, encode_value(payload), encode_key(key), _headers(headers), partition)


class Context:
    """Metadata of the message being handled, and what the handler may do with it.

    Attributes
    ----------
    topic, partition, offset
        Where the message was read.
    key : bytes or None
        The message key.
    headers : list[tuple[str, bytes]]
        The message headers, in order.
    timestamp_ms : int
        The record's timestamp (UNIX milliseconds).
    attempt : int
        1 on the first delivery, 2 on the first retry, ...
    group : str
        The subscriber's group.
    subscriber : str
        The subscriber's name (the handler's qualified name unless given).
    message : mqlite.Message
        The raw message (a :class:`mqlite.Delivery` in queue mode).
    """

    __slots__ = ("_acks", "_outputs", "attempt", "group", "message", "subscriber")

    def __init__(self, message: Message, attempt: int, group: str, subscriber: str) -> None:
        self.message = message
        self.attempt = attempt
        self.group = group
        self.subscriber = subscriber
        self._outputs: list[Output] = []
        self._acks = 0

    topic = property(lambda self: self.message.topic, doc="Topic the message was read from.")
    partition = property(lambda self: self.message.partition, doc="Its partition.")
    offset = property(lambda self: self.message.offset, doc="Its offset.")
    key = property(lambda self: self.message.key, doc="Its key (bytes or None).")
    timestamp_ms = property(lambda self: self.message.timestamp_ms, doc="UNIX milliseconds.")

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """The message headers as ``(name, bytes)`` pairs (a new list each time)."""
        return self.message.headers

    def header(self, name: str) -> str | None:
        """The first header called ``name``, decoded UTF-8 (``None`` when absent)."""
        for n, v in self.message.headers:
            if n == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def reply_to(self) -> str | None:
        """The reply topic of a request (``app.request``), else ``None``."""
        return self.header(H_REPLY_TO)

    @property
    def correlation_id(self) -> str | None:
        """The correlation id of a request, else ``None``."""
        return self.header(H_CORRELATION)

    def publish(self, topic: str, payload: Any, *, key: Any = None, headers: Any = None,
                partition: int | None = None) -> None:
        """Publish a message as part of handling this one.

        It is sent when the handler succeeds, in the same write transaction
        as the outputs of the other messages of the batch (and, with
        ``exactly_once=True``, with the offset commit or ack), never when the
        handler raises.  ``payload`` is encoded as by ``app.publish``.

        Raises
        ------
        TypeError, ValueError
            Bad topic, payload, key, headers or partition.
        """
        self._outputs.append(make_output(topic, payload, key, headers, partition))

    def commit(self) -> None:
        """``ack="manual"``: this message is done; commit up to it (stream) / ack it (queue).

        The commit is applied with the batch's outcome (after the handler
        returns), in offset order: never past an earlier message of the
        partition that is not done.
        """
        self._acks += 1

    ack = commit

    def __repr__(self) -> str:
        m = self.message
        return (f"<mqlite.Context {m.topic}[{m.partition}]@{m.offset} attempt={self.attempt} "
                f"group={self.group!r}>")


def context_maker(attempt: int, group: str, subscriber: str) -> Callable[[Any], Context]:
    """A function ``make(message)`` returning ``Context(message, attempt, group,
    subscriber)``, for one subscriber's messages (the App's lean loop, D45).

    It fills the slots as :meth:`Context.__init__` does, without the type call
    to a Python ``__init__`` (about half the cost per message).
    """
    new = object.__new__

    def make(message: Any) -> Context:
        ctx: Context = new(Context)
        ctx.message = message
        ctx.attempt = attempt
        ctx.group = group
        ctx.subscriber = subscriber
        ctx._outputs = []
        ctx._acks = 0
        return ctx
    return make
