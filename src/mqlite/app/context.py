"""The per-message :class:`Context` a handler may ask for (``ctx: mqlite.Context``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from mqlite.app.codec import encode_key, encode_value
from mqlite.config import MAX_DELAY_S, require_seconds, require_unix_time
from mqlite.errors import NotSupportedError

if TYPE_CHECKING:
    from mqlite._core import Message

__all__ = ["CTX_EXACTLY_ONCE", "CTX_NO_SCHEDULE", "H_CORRELATION", "H_REPLY_TO", "Context",
           "Output", "context_maker", "scheduled_output"]

#: :class:`Context` flags: the handler's outputs are one transaction with its commit / ack
#: (``exactly_once=True``); the backend has no delayed sends nor dedup ids (Kafka).
CTX_EXACTLY_ONCE = 1
CTX_NO_SCHEDULE = 2

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
    delay: float | None = None  # seconds: a delayed message, sent on its own (not in a tx)
    deliver_at: float | None = None  # UNIX seconds: a delayed message, sent on its own
    dedup_id: str | bytes | None = None  # an idempotent send (also inside a transaction)

    @property
    def scheduled(self) -> bool:
        """A delayed message: it cannot join a transaction (sent on its own, first)."""
        return self.delay is not None or self.deliver_at is not None


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


def scheduled_output(out: Output, delay: Any, deliver_at: Any, dedup_id: Any) -> Output:
    """``out`` with ``delay`` / ``deliver_at`` / ``dedup_id``, checked now (internal).

    The checks are the broker's (``broker.send``): ``delay`` seconds, 0 to 10 years;
    ``deliver_at`` a UNIX time in seconds at most 10 years ahead; not both;
    ``dedup_id`` str or bytes of 1 to 256 bytes.

    Raises
    ------
    TypeError, ValueError
    """
    if delay is not None and deliver_at is not None:
        raise ValueError("give delay= or deliver_at=, not both")
    if delay is not None:
        delay = float(require_seconds(delay, "delay", maximum=MAX_DELAY_S, allow_zero=True))
    if deliver_at is not None:
        deliver_at = require_unix_time(deliver_at, "deliver_at", now=time.time(),
                                       max_ahead=MAX_DELAY_S)
    if dedup_id is not None:
        if isinstance(dedup_id, (bytearray, memoryview)):
            dedup_id = bytes(dedup_id)
        if not isinstance(dedup_id, (str, bytes)):
            raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
        n = len(dedup_id.encode() if isinstance(dedup_id, str) else dedup_id)
        if not 1 <= n <= 256:
            raise ValueError(f"dedup_id must be 1 to 256 bytes (UTF-8), got {n}")
    return out._replace(delay=delay, deliver_at=deliver_at, dedup_id=dedup_id)


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

    __slots__ = ("_acks", "_flags", "_outputs", "attempt", "group", "message", "subscriber")

    def __init__(self, message: Message, attempt: int, group: str, subscriber: str,
                 flags: int = 0) -> None:
        self.message = message
        self.attempt = attempt
        self.group = group
        self.subscriber = subscriber
        self._outputs: list[Output] = []
        self._acks = 0
        self._flags = flags  # CTX_EXACTLY_ONCE | CTX_NO_SCHEDULE

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
                partition: int | None = None, delay: float | None = None,
                deliver_at: float | None = None,
                dedup_id: str | bytes | None = None) -> None:
        """Publish a message as part of handling this one.

        It is sent when the handler succeeds, in the same write transaction
        as the outputs of the other messages of the batch (and, with
        ``exactly_once=True``, with the offset commit or ack), never when the
        handler raises.  ``payload`` is encoded as by ``app.publish``.

        ``delay`` (seconds, 0 to 10 years) or ``deliver_at`` (UNIX seconds, at
        most 10 years ahead; a past time is due at once) schedule a follow-up
        job, as ``app.publish`` does: it is appended to ``topic`` (visible to
        handlers) only when due.  A delayed message cannot be part of a
        transaction: it is sent on its own, just *before* the handler's
        transaction, so a crash between the two (or a settle that fails: a
        lost delivery, a duplicate idempotency key) sends it again when the
        message is handled again: at-least-once.  With ``exactly_once=True``
        a delayed send therefore needs ``dedup_id``: the repeat is dropped
        when it falls due (the topic's dedup window applies from then).

        ``dedup_id``: an idempotent send (a repeat within the topic's dedup
        window appends nothing), inside the transaction like any output.

        Raises
        ------
        TypeError, ValueError
            Bad topic, payload, key, headers, partition, delay, deliver_at or
            dedup_id; ``delay`` / ``deliver_at`` without ``dedup_id`` under
            ``exactly_once=True``.
        NotSupportedError
            ``delay``, ``deliver_at`` or ``dedup_id`` on the Kafka backend.
        """
        out = make_output(topic, payload, key, headers, partition)
        if delay is not None or deliver_at is not None or dedup_id is not None:
            if self._flags & CTX_NO_SCHEDULE:
                raise NotSupportedError(
                    "ctx.publish(delay=/deliver_at=/dedup_id=)", "Kafka has no delayed "
                    "delivery and no dedup window: publish now (with a 'not-before' header "
                    "the consumer waits for), or keep delayed work on the embedded backend")
            out = scheduled_output(out, delay, deliver_at, dedup_id)
            if out.scheduled and dedup_id is None and self._flags & CTX_EXACTLY_ONCE:
                raise ValueError(
                    "a delayed ctx.publish (delay=/deliver_at=) cannot join the transaction "
                    "of an exactly_once=True subscriber (delayed messages are stored apart "
                    "and sent before it); pass dedup_id= (e.g. derived from this message) "
                    "so a repeat after a crash is dropped, or publish without a delay")
        self._outputs.append(out)

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


def context_maker(attempt: int, group: str, subscriber: str,
                  flags: int = 0) -> Callable[[Any], Context]:
    """A function ``make(message)`` returning ``Context(message, attempt, group,
    subscriber, flags)``, for one subscriber's messages (the App's lean loop, D45).

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
        ctx._flags = flags
        return ctx
    return make
