"""The Kafka backend's producer: :class:`KafkaProducer` (``broker.producer()``).

A thin layer over one ``confluent_kafka.Producer``: ``send`` validates like
the embedded producer (topic exists, partition in range, bytes not ``str``),
hands the record to librdkafka and returns a :class:`mqlite.SendFuture` that a
background thread resolves from librdkafka's delivery report (a
:class:`RecordMetadata`, or the mapped mqlite error).

Settings mqlite chooses (the user's ``client_options`` win where given):
``enable.idempotence=true`` (so ``acks=all`` and ordered retries: no
duplicates, no reordering within a partition) and
``partitioner=murmur2_random`` (Kafka's Java client's and mqlite's key
placement; librdkafka's default ``consistent_random`` hashes with CRC32).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException, Producer

from mqlite._headers import HeadersArg, normalize_headers
from mqlite.config import MAX_I64, require_int, require_milliseconds, validate_topic_name
from mqlite.errors import ClosedError, NotSupportedError, PartitionNotFoundError, TimeoutError
from mqlite.future import SendFuture
from mqlite.kafka._client import Cluster
from mqlite.kafka._errors import to_mqlite
from mqlite.partitioner import resolve_partitioner
from mqlite.types import RecordMetadata

__all__ = ["KafkaProducer", "producer_config"]

#: How long the delivery thread waits for librdkafka events per call (seconds).
_SERVE_WAIT = 0.1


def producer_config(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    """librdkafka settings of every mqlite producer (see the module docstring for why)."""
    return cluster.client_config(**{"enable.idempotence": True, "acks": "all",
                                    "partitioner": "murmur2_random", **extra})


def delivered(fut: SendFuture[RecordMetadata], err: KafkaError | None, msg: Any) -> None:
    """Resolve ``fut`` from a librdkafka delivery report."""
    if err is not None:
        fut.set_exception(to_mqlite(err, f"send to {msg.topic()!r}"))
    else:
        fut.set_result(RecordMetadata(msg.topic(), msg.partition(), msg.offset(),
                                      msg.timestamp()[1]))


class KafkaProducer:
    """Thread-safe batching producer on Kafka; the futures resolve on the broker's ack.

    Parameters
    ----------
    cluster
        The connection of the broker handle (``KafkaBroker.producer`` passes it).
    linger_ms
        librdkafka's ``linger.ms``: milliseconds to wait for more records
        before sending a batch; ``0 <= linger_ms <= 60000``, default 0.
    batch_bytes
        librdkafka's ``batch.size`` in bytes, ``>= 1``; default 1 MiB.
    partitioner
        ``"murmur2"`` (default: key hash as Kafka's Java client and mqlite;
        keyless records go to a random partition, sticky per batch),
        ``"sticky"`` (the same), ``"round_robin"`` or a callable
        ``(key, value, partition_count) -> int`` (both computed here and
        sent with an explicit partition).
    max_queued
        librdkafka's ``queue.buffering.max.messages``; ``send`` waits
        (backpressure) while that many records are unacknowledged.
    """

    def __init__(self, cluster: Cluster, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000, extra: dict[str, Any] | None = None) -> None:
        require_milliseconds(linger_ms, "linger_ms", maximum=60_000)
        require_int(batch_bytes, "batch_bytes", minimum=1, maximum=2**31 - 1)
        require_int(max_queued, "max_queued", minimum=1, maximum=2**31 - 1)
        self._local: Callable[[Any, Any, int], int] | None = None
        if partitioner is not None and partitioner not in ("murmur2", "sticky"):
            # round-robin and user callables are computed here, with mqlite's implementations
            self._local = resolve_partitioner(partitioner, batch_bytes)
        self._cluster = cluster
        cfg = producer_config(cluster, **{"linger.ms": linger_ms, "batch.size": batch_bytes,
                                          "queue.buffering.max.messages": max_queued,
                                          **(extra or {})})
        try:
            self._p = Producer(cfg)
        except KafkaException as exc:
            raise to_mqlite(exc, "create a Kafka producer") from exc
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mqlite-kafka-delivery",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        p = self._p
        while not self._stop.is_set():
            p.poll(_SERVE_WAIT)

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None, timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> SendFuture[RecordMetadata]:
        """Queue one record; the future resolves to its metadata once Kafka acknowledged it.

        With ``enable.idempotence`` (mqlite's default) the acknowledgement
        means every in-sync replica has the record (``acks=all``).

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, TypeError, ValueError
            At once, before anything is queued.
        NotSupportedError
            ``dedup_id`` (Kafka has no dedup window; use the idempotent
            producer, which mqlite enables, against retries).
        ClosedError
            The producer is closed.
        """
        if self._closed:
            raise ClosedError("this producer is closed")
        if dedup_id is not None:
            raise NotSupportedError(
                "send(dedup_id=)", "Kafka has no deduplication window: the idempotent producer "
                "(enabled by mqlite) removes retry duplicates; deduplicate on the consumer side "
                "(e.g. a claim per event id) for repeats by the application")
        fut: SendFuture[RecordMetadata] = SendFuture()
        self.produce(topic, value, key, headers, partition, timestamp_ms,
                     lambda err, msg: delivered(fut, err, msg))
        return fut

    def produce(self, topic: str, value: Any, key: Any, headers: HeadersArg,
                partition: int | None, timestamp_ms: int | None,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        """Validate and hand one record to librdkafka (shared by sends and transactions)."""
        if type(topic) is not str:
            validate_topic_name(topic)
        if isinstance(value, str) or isinstance(key, str):
            raise TypeError("value and key must be bytes-like, not str; encode them first")
        if partition is None:
            n = self._cluster.partitions_for(topic)
            if self._local is not None:
                partition = self._local(key, value, n)
                if not isinstance(partition, int) or not 0 <= partition < n:
                    raise PartitionNotFoundError(
                        f"partitioner returned {partition!r}; expected 0..{n - 1}")
        else:
            require_int(partition, "partition", minimum=0)
            self._cluster.check_partition(topic, partition)
        ts = 0 if timestamp_ms is None else require_int(timestamp_ms, "timestamp_ms", minimum=0,
                                                        maximum=MAX_I64)
        hs = normalize_headers(headers) if headers is not None else None
        kwargs: dict[str, Any] = {"on_delivery": on_delivery, "timestamp": ts}
        if partition is not None:
            kwargs["partition"] = partition
        if hs:
            kwargs["headers"] = hs
        if key is not None:
            kwargs["key"] = bytes(key) if not isinstance(key, bytes) else key
        if value is not None and not isinstance(value, bytes):
            value = bytes(value)
        while True:
            try:
                self._p.produce(topic, value, **kwargs)
                return
            except BufferError:
                # librdkafka's queue is full: wait for deliveries (backpressure)
                if self._closed:
                    raise ClosedError("this producer is closed") from None
                self._p.flush(_SERVE_WAIT)
            except KafkaException as exc:
                raise to_mqlite(exc, f"send to {topic!r}") from exc

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is acknowledged (or failed).

        ``timeout`` is in seconds (``None``: no limit); :class:`mqlite.TimeoutError`
        when records are still unacknowledged by then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if self._p.flush(min(left, 1.0)) == 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"records still unacknowledged after {timeout:g} s; check "
                                   "that the Kafka brokers are reachable")

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout`` seconds) and stop.  Idempotent."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqlite.kafka.KafkaProducer {self._cluster.bootstrap} " \
               f"{'closed' if self._closed else 'open'}>"
