"""The Kafka backend's producer: :class:`KafkaProducer` (``broker.producer()``).

A thin layer over one ``confluent_kafka.Producer``: ``send`` validates like
the embedded producer (topic exists, partition in range, bytes not ``str``),
hands the record to librdkafka and returns a :class:`KafkaFuture` (the
methods of :class:`mqlite.SendFuture`, not a subclass) that librdkafka's
delivery report resolves (a :class:`RecordMetadata`, or the mapped mqlite
error).  The per-record path is C (``mqlite.kafka._fast``, docs/decisions.md
D37): raw confluent-kafka's CPU per record plus a few percent.

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
from typing import Any, Self, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from mqlite._headers import HeadersArg, normalize_headers
from mqlite.config import MAX_I64, require_int, require_milliseconds, validate_topic_name
from mqlite.errors import ClosedError, NotSupportedError, PartitionNotFoundError, TimeoutError
from mqlite.kafka._client import Cluster
from mqlite.kafka._errors import to_mqlite
from mqlite.kafka._fast import KafkaFuture, ProducerCore
from mqlite.partitioner import resolve_partitioner
from mqlite.types import RecordMetadata

__all__ = ["KafkaFuture", "KafkaProducer", "producer_config"]

#: How long the delivery thread waits for librdkafka events per call (seconds).
_SERVE_WAIT = 0.1
#: Seconds after a send during which the sending thread serves delivery reports.
_BUSY = 0.01


def producer_config(cluster: Cluster, forced: dict[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """librdkafka settings of every mqlite producer (see the module docstring for why)."""
    return cluster.client_config(forced, **{"enable.idempotence": True, "acks": "all",
                                            "partitioner": "murmur2_random", **extra})


class KafkaProducer(ProducerCore):
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
    extra, defaults
        librdkafka settings (internal): ``extra`` over everything,
        ``defaults`` under the user's ``client_options``.
    """

    def __init__(self, cluster: Cluster, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000, extra: dict[str, Any] | None = None,
                 defaults: dict[str, Any] | None = None) -> None:
        require_milliseconds(linger_ms, "linger_ms", maximum=60_000)
        require_int(batch_bytes, "batch_bytes", minimum=1, maximum=2**31 - 1)
        require_int(max_queued, "max_queued", minimum=1, maximum=2**31 - 1)
        self._local: Callable[[Any, Any, int], int] | None = None
        if partitioner is not None and partitioner not in ("murmur2", "sticky"):
            # round-robin and user callables are computed here, with mqlite's implementations
            self._local = resolve_partitioner(partitioner, batch_bytes)
        self._cluster = cluster
        cfg = producer_config(cluster, extra, **{**(defaults or {}), "linger.ms": linger_ms,
                                                 "batch.size": batch_bytes,
                                                 "queue.buffering.max.messages": max_queued})
        try:
            self._p = Producer(cfg)
        except KafkaException as exc:
            raise to_mqlite(exc, "create a Kafka producer") from exc
        self._core_init(self._p, cluster, self._local is not None)
        self._closed = False
        self._sent = 0
        self._waiting = 0  # threads serving reports in result(); the GIL guards the count
        #: Records an event loop awaits (``mqlite.aio`` on Kafka): while > 0 the serving
        #: thread serves every report as it comes instead of standing aside.
        self.awaited = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mqlite-kafka-delivery",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # Serves delivery reports nobody waits for (futures with callbacks, or never
        # waited on).  While a thread is sending, that thread serves them (poll(0) every
        # 512 sends), and a thread in result() serves its own, so this one stands aside
        # then: taking the GIL for each report batch cost the sender a third of its
        # throughput (docs/decisions.md D30).  Not while an event loop awaits records
        # (``awaited``): a loop cannot serve reports itself.
        p = self._p
        stop = self._stop
        seen = -1
        aside = 0
        while not stop.is_set():
            if (self._sent != seen or self._waiting) and not self.awaited:
                seen = self._sent
                stop.wait(_BUSY)
                aside += 1
                if aside % 10 == 0:
                    p.poll(0)  # a slow, steady sender: reports at least every ~0.1 s
            else:
                p.poll(_SERVE_WAIT)

    def serve_for_waiter(self, timeout: float) -> None:
        """Serve delivery reports on the calling thread (a future's ``result()`` waits here)."""
        self._waiting += 1
        try:
            self._p.poll(timeout)
        finally:
            self._waiting -= 1

    def _send_slow(self, topic: str, value: Any, key: Any, headers: HeadersArg,
                   partition: int | None, timestamp_ms: int | None,
                   dedup_id: str | bytes | None) -> KafkaFuture[RecordMetadata]:
        # ProducerCore.send (the per-record path, C) calls this for every record it does not
        # take itself: headers, explicit partitions or timestamps, conversions, a topic not
        # in the metadata cache yet, a closed producer
        if self._closed:
            raise ClosedError("this producer is closed")
        if dedup_id is not None:
            raise NotSupportedError(
                "send(dedup_id=)", "Kafka has no deduplication window: the idempotent producer "
                "(enabled by mqlite) removes retry duplicates; deduplicate on the consumer side "
                "(e.g. a claim per event id) for repeats by the application")
        fut: KafkaFuture[RecordMetadata] = KafkaFuture(self)
        self.produce(topic, value, key, headers, partition, timestamp_ms, fut)
        return fut

    def produce(self, topic: str, value: Any, key: Any, headers: HeadersArg,
                partition: int | None, timestamp_ms: int | None,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        """Validate and hand one record to librdkafka (shared by sends and transactions)."""
        if type(topic) is not str:
            validate_topic_name(topic)
        if partition is None:
            n = self._cluster.known_partitions(topic)
            if self._local is not None:
                partition = self._local(key, value, n)
                if not isinstance(partition, int) or not 0 <= partition < n:
                    raise PartitionNotFoundError(
                        f"partitioner returned {partition!r}; expected 0..{n - 1}")
        else:
            require_int(partition, "partition", minimum=0)
            self._cluster.check_partition(topic, partition)
        if value is not None and type(value) is not bytes:
            if isinstance(value, str):
                raise TypeError("value and key must be bytes-like, not str; encode them first")
            value = bytes(value)
        if key is not None and type(key) is not bytes:
            if isinstance(key, str):
                raise TypeError("value and key must be bytes-like, not str; encode them first")
            key = bytes(key)
        ts = 0 if timestamp_ms is None else require_int(timestamp_ms, "timestamp_ms", minimum=0,
                                                        maximum=MAX_I64)
        hs = None if headers is None else cast("list[tuple[str, str | bytes | None]] | None",
                                                normalize_headers(headers))
        part = -1 if partition is None else partition
        p = self._p
        while True:
            try:
                p.produce(topic, value, key, part, on_delivery=on_delivery, timestamp=ts,
                          headers=hs)
                break
            except BufferError:
                # librdkafka's queue is full: wait for deliveries (backpressure)
                if self._closed:
                    raise ClosedError("this producer is closed") from None
                p.flush(_SERVE_WAIT)
            except KafkaException as exc:
                raise to_mqlite(exc, f"send to {topic!r}") from exc
        self._sent += 1
        if self._sent & 511 == 0:
            p.poll(0)  # serve delivery reports here too: fewer hand-offs to the serving thread

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

    @property
    def client(self) -> Producer:
        """The underlying ``confluent_kafka.Producer`` (Kafka-specific calls: transactions)."""
        return self._p

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqlite.kafka.KafkaProducer {self._cluster.bootstrap} " \
               f"{'closed' if self._closed else 'open'}>"
