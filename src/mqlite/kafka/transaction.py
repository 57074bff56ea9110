"""Kafka transactions behind ``with broker.transaction() as tx:``.

``tx.send`` and ``tx.commit_offsets(consumer)`` map to one Kafka transaction
(``begin_transaction`` / ``produce`` / ``send_offsets_to_transaction`` /
``commit_transaction``): consume -> transform -> produce is exactly-once for
consumers that read with ``isolation.level=read_committed`` (mqlite's Kafka
consumers do).  The send futures resolve when the transaction commits (as on
the embedded backend) and fail with the error if it aborts.

Each ``transactional.id`` has one producer per broker handle (the handle's
own: ``client_options``' ``transactional.id`` or ``mqlite-<random>``; or the
one given to ``broker.transaction(transactional_id=...)``), so transactions
of one id run one at a time: a second one in another thread waits.  Acks,
publishes and claims are embedded-only (:class:`NotSupportedError`).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTP

from mqlite._core import Message
from mqlite._headers import HeadersArg
from mqlite.config import MAX_I64, require_int
from mqlite.errors import ClosedError, NotSupportedError
from mqlite.future import SendFuture
from mqlite.kafka._client import REQUEST_TIMEOUT
from mqlite.kafka._errors import error_of, to_mqlite
from mqlite.kafka.consumer import KafkaConsumer
from mqlite.kafka.producer import KafkaProducer
from mqlite.types import RecordMetadata, TopicPartition

__all__ = ["KafkaTransaction"]


class KafkaTransaction:
    """One Kafka transaction; use as ``with broker.transaction() as tx:``.

    Leaving the block normally commits; an exception aborts (nothing sent is
    visible to read_committed consumers, no offset is committed).
    """

    def __init__(self, producer: KafkaProducer, lock: threading.Lock) -> None:
        self._producer = producer
        self._lock = lock
        self._state = "new"
        self._sent: list[tuple[SendFuture[RecordMetadata], list[Any]]] = []

    def __enter__(self) -> Self:
        self._begin()
        return self

    def _begin(self) -> None:
        if self._state != "new":
            return
        self._lock.acquire()
        try:
            self._producer.client.begin_transaction()
        except KafkaException as exc:
            self._lock.release()
            raise to_mqlite(exc, "begin a Kafka transaction") from exc
        self._state = "open"

    def _check(self) -> None:
        self._begin()
        if self._state != "open":
            raise ClosedError(f"this transaction is {self._state}")

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None, timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> SendFuture[RecordMetadata]:
        """Send within the transaction; the future resolves when it commits."""
        self._check()
        if dedup_id is not None:
            raise NotSupportedError("tx.send(dedup_id=)", "Kafka transactions are already "
                                    "exactly-once for consume-transform-produce")
        fut: SendFuture[RecordMetadata] = SendFuture()
        report: list[Any] = []
        self._producer.produce(topic, value, key, headers, partition, timestamp_ms,
                               lambda err, msg: report.append((err, msg)))
        self._sent.append((fut, report))
        return fut

    def commit_offsets(self, consumer: Any, offsets: Any = None) -> None:
        """Commit a group consumer's offsets with the transaction.

        ``offsets``: ``None`` (the consumer's current positions), a
        :class:`~mqlite.Message` (up to and including it) or
        ``{TopicPartition: next_offset}``.
        """
        self._check()
        if not isinstance(consumer, KafkaConsumer):
            raise TypeError("commit_offsets needs a consumer of this Kafka broker "
                            f"(broker.consumer(..., group=...)), not {type(consumer).__name__}")
        meta = consumer.group_metadata()
        if offsets is None:
            todo = {tp: p for tp, p in consumer.positions().items()
                    if tp in consumer.assignment()}
        elif isinstance(offsets, Message):
            todo = {TopicPartition(offsets.topic, offsets.partition): offsets.offset + 1}
        elif isinstance(offsets, dict):
            todo = {TopicPartition(*tp): require_int(o, "offset", minimum=0, maximum=MAX_I64)
                    for tp, o in offsets.items()}
        else:
            raise TypeError("offsets must be None, a Message or {TopicPartition: offset}")
        if not todo:
            return
        try:
            self._producer.client.send_offsets_to_transaction(
                [KTP(tp.topic, tp.partition, o) for tp, o in todo.items()], meta,
                REQUEST_TIMEOUT)
        except KafkaException as exc:
            raise to_mqlite(exc, "commit offsets in a Kafka transaction") from exc

    def ack(self, *_a: Any, **_k: Any) -> None:
        raise NotSupportedError("tx.ack()", "Kafka has no per-message acks; commit the "
                                "consumer's offsets with tx.commit_offsets(consumer)")

    def publish(self, *_a: Any, **_k: Any) -> Any:
        raise NotSupportedError("tx.publish()", "Kafka has no exchanges; tx.send() to each "
                                "target topic")

    def claim(self, *_a: Any, **_k: Any) -> None:
        raise NotSupportedError("tx.claim()", "Kafka has no claim store; consume-transform-"
                                "produce with tx.commit_offsets is exactly-once without it")

    def commit(self) -> None:
        """Commit the transaction: every send becomes visible and the offsets commit together.

        Raises
        ------
        BackendError, TimeoutError
            The commit failed; the transaction was aborted (nothing applied).
        """
        self._check()
        p = self._producer._p
        try:
            p.flush(REQUEST_TIMEOUT)
            p.commit_transaction(REQUEST_TIMEOUT)
        except KafkaException as exc:
            kerr = error_of(exc)
            if kerr is not None and kerr.txn_requires_abort():
                self._abort_quietly()
            self._finish("aborted", to_mqlite(exc, "commit a Kafka transaction"))
            raise to_mqlite(exc, "commit a Kafka transaction") from exc
        self._finish("committed", None)

    def abort(self) -> None:
        """Abort: nothing of the transaction is applied.  Idempotent after the end."""
        if self._state != "open":
            return
        self._abort_quietly()
        self._finish("aborted", ClosedError("the transaction was aborted"))

    def _abort_quietly(self) -> None:
        try:
            self._producer.client.abort_transaction(REQUEST_TIMEOUT)
        except KafkaException:
            pass  # the producer is fenced or the coordinator gone: nothing was committed

    def _finish(self, state: str, exc: BaseException | None) -> None:
        self._state = state
        if exc is None:
            # flush() returned, but a report may still be in the serving thread's hands
            deadline = time.monotonic() + REQUEST_TIMEOUT
            while any(not r for _, r in self._sent) and time.monotonic() < deadline:
                self._producer.client.poll(0.05)
        try:
            for fut, report in self._sent:
                if exc is not None:
                    fut.set_exception(exc)
                elif not report:
                    fut.set_exception(ClosedError("no delivery report for a committed send"))
                else:
                    err, msg = report[0]
                    if isinstance(err, KafkaError):
                        fut.set_exception(to_mqlite(err, f"send to {msg.topic()!r}"))
                    else:
                        fut.set_result(RecordMetadata(msg.topic(), msg.partition(),
                                                      msg.offset(), msg.timestamp()[1]))
        finally:
            self._lock.release()

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state != "open":
            return
        if et is None:
            self.commit()
        else:
            self.abort()
