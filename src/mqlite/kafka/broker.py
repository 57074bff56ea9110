"""The Kafka backend's broker handle: :class:`KafkaBroker` (``mqlite.open("kafka://...")``).

The stream subset of :class:`mqlite.Broker` on a Kafka cluster, through
confluent-kafka: topics, sends, producers, consumers and groups,
transactions.  It satisfies :class:`mqlite.backend.StreamBroker` (as the
embedded :class:`mqlite.Broker` does), returns the same types
(:class:`RecordMetadata`, :class:`Message`, :class:`TopicDescription`, ...)
and raises the same errors.  What Kafka lacks raises
:class:`mqlite.NotSupportedError` naming the alternative (docs/scale-out.md
has the table).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Self

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import NewTopic

from mqlite._headers import HeadersArg, normalize_headers_list
from mqlite.config import DEFAULT_MAX_MESSAGE_BYTES, require_int, validate_topic_name
from mqlite.errors import NotSupportedError, TopicExistsError
from mqlite.kafka._client import REQUEST_TIMEOUT, TRANSACTION_TIMEOUT_MS, Cluster, parse_url
from mqlite.kafka._errors import to_mqlite
from mqlite.kafka._fast import KafkaFuture
from mqlite.kafka.consumer import KafkaConsumer
from mqlite.kafka.producer import KafkaProducer
from mqlite.kafka.transaction import KafkaTransaction
from mqlite.types import (
    BatchMetadata,
    PartitionInfo,
    PartitionRange,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

if TYPE_CHECKING:
    from mqlite.backend import StreamBroker

__all__ = ["KafkaBroker", "open"]


def open(url: str, *, client_options: Mapping[str, Any] | None = None) -> KafkaBroker:
    """Connect to the Kafka cluster at ``url`` (``kafka://host:port[,host:port...]``).

    Parameters
    ----------
    url
        Bootstrap servers as a ``kafka://`` URL.
    client_options
        librdkafka properties (``{"security.protocol": "SASL_SSL", ...}``)
        applied to every producer, consumer and admin client of this handle;
        they override mqlite's choices (docs/scale-out.md lists those).

    Raises
    ------
    ValueError
        Not a ``kafka://`` URL.
    TypeError
        ``client_options`` keys are not ``str``.
    """
    return KafkaBroker(Cluster(parse_url(url), client_options))


def _unsupported(feature: str, alternative: str) -> NoReturn:
    raise NotSupportedError(feature, alternative)


class KafkaBroker:
    """A handle on a Kafka cluster with the stream API of :class:`mqlite.Broker`.

    Thread-safe.  Producers and consumers made from it are its children:
    :meth:`close` flushes and closes them.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        #: transactional.id -> its producer and the lock its transactions take in turn
        self._tx: dict[str, tuple[KafkaProducer, threading.Lock]] = {}
        self._default_tid = cluster.transactional_id or f"mqlite-{uuid.uuid4().hex}"
        self._children: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``kafka://`` + the bootstrap servers."""
        return f"kafka://{self._cluster.bootstrap}"

    @property
    def closed(self) -> bool:
        return self._cluster.closed

    def close(self) -> None:
        """Flush and close every producer and consumer of this handle, then disconnect.

        Idempotent.
        """
        if self._cluster.closed:
            return
        with self._lock:
            children, self._children = self._children, []
            own = [p for p in (self._producer,) if p is not None] + \
                [p for p, _ in self._tx.values()]
            self._producer = None
            self._tx = {}
        first: BaseException | None = None
        for child in [c for c in children if isinstance(c, KafkaProducer)] + own + \
                [c for c in children if not isinstance(c, KafkaProducer)]:
            try:
                child.close()
            except Exception as exc:  # noqa: BLE001 - close the rest first, then report
                first = first or exc
        self._cluster.close()
        if first is not None:
            raise first

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqlite.kafka.KafkaBroker {self.url} {'closed' if self.closed else 'open'}>"

    def _adopt(self, child: Any) -> Any:
        with self._lock:
            self._children = [c for c in self._children if not c.closed]
            self._children.append(child)
        return child

    # -- topic catalog -------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, *, retention_ms: int | None = None,
                     retention_bytes: int | None = None, retention_messages: int | None = None,
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                     cleanup: str = "delete", exist_ok: bool = False,
                     replication_factor: int | None = None,
                     config: Mapping[str, str] | None = None) -> None:
        """Create a topic with ``partitions`` partitions; returns once the metadata shows it.

        Parameters
        ----------
        retention_ms, retention_bytes, max_message_bytes
            Kafka's ``retention.ms``, ``retention.bytes`` (per partition, as
            on the embedded backend) and ``max.message.bytes``.
            ``None`` keeps forever, as on the embedded backend (Kafka's
            ``-1``), not the cluster's ``log.retention.*`` default (7 days
            by timestamp: records with older timestamps would be deleted at
            once); pass ``config={"retention.ms": ...}`` for another value.
        replication_factor
            Copies of each partition (``None``: the cluster's
            ``default.replication.factor``); 1 to 32767.
        config
            More Kafka topic configs (``{"min.insync.replicas": "2"}``),
            applied after the ones above.

        Raises
        ------
        InvalidTopicError, TopicExistsError (unless ``exist_ok``), TypeError, ValueError
        NotSupportedError
            ``retention_messages`` or ``cleanup="consumed"`` (Kafka has neither).
        """
        validate_topic_name(name)
        require_int(partitions, "partitions", minimum=1, maximum=1_000_000)
        if retention_messages is not None:
            _unsupported("create_topic(retention_messages=)",
                         "Kafka retains by time and bytes: use retention_ms or retention_bytes")
        if cleanup != "delete":
            _unsupported(f"create_topic(cleanup={cleanup!r})",
                         "Kafka deletes by retention only; size retention_ms/retention_bytes "
                         "to the slowest group, or keep such topics on the embedded backend")
        config_out: dict[str, str] = {"retention.ms": "-1", "retention.bytes": "-1"}
        if retention_ms is not None:
            config_out["retention.ms"] = str(require_int(retention_ms, "retention_ms", minimum=1))
        if retention_bytes is not None:
            config_out["retention.bytes"] = str(require_int(retention_bytes, "retention_bytes",
                                                        minimum=1))
        if max_message_bytes != DEFAULT_MAX_MESSAGE_BYTES:
            config_out["max.message.bytes"] = str(require_int(max_message_bytes,
                                                          "max_message_bytes", minimum=1))
        for k, v in (config or {}).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("config maps Kafka topic config names to str values")
            config_out[k] = v
        rf = -1 if replication_factor is None else require_int(
            replication_factor, "replication_factor", minimum=1, maximum=32767)
        fut = self._cluster.admin.create_topics(
            [NewTopic(name, partitions, rf, config=config_out)],
            request_timeout=REQUEST_TIMEOUT)[name]
        try:
            fut.result()
        except KafkaException as exc:
            err = to_mqlite(exc, f"create topic {name!r}")
            if isinstance(err, TopicExistsError) and exist_ok:
                return
            raise err from exc
        self._cluster.wait_for(name, present=True)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its messages; returns once the metadata no longer shows it.

        Raises :class:`TopicNotFoundError` when it does not exist.
        """
        validate_topic_name(name)
        fut = self._cluster.admin.delete_topics([name], request_timeout=REQUEST_TIMEOUT)[name]
        try:
            fut.result()
        except KafkaException as exc:
            raise to_mqlite(exc, f"delete topic {name!r}") from exc
        self._cluster.forget(name)
        self._cluster.wait_for(name, present=False)

    def topics(self) -> list[str]:
        """Names of all topics (Kafka's internal ``__`` topics left out), sorted."""
        return sorted(self._cluster.list_topics())

    def partitions_for(self, name: str) -> int:
        """Number of partitions of topic ``name``."""
        validate_topic_name(name)
        return self._cluster.partitions_for(name, fresh=True)

    def describe_topic(self, name: str) -> TopicDescription:
        """Partition count and per-partition offsets.

        ``bytes`` is 0 and the timestamps ``None``: Kafka's client API does not
        report them per partition.
        """
        n = self.partitions_for(name)
        marks = self._cluster.watermarks([TopicPartition(name, p) for p in range(n)])
        parts = [PartitionInfo(tp.partition, lo, hi, hi - lo, 0, None, None)
                 for tp, (lo, hi) in sorted(marks.items())]
        return TopicDescription(name, {"partitions": n}, parts)

    # -- writing -------------------------------------------------------------------------------
    def _shared_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(self._cluster, linger_ms=0)
            return self._producer

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None, timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None, *, delay: float | None = None,
             deliver_at: float | None = None) -> RecordMetadata:
        """Send one message and wait until Kafka acknowledged it (``acks=all``).

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, MessageTooLargeError,
        TimeoutError, BackendError, TypeError, ValueError
        NotSupportedError
            ``dedup_id``, ``delay`` or ``deliver_at`` (Kafka has no dedup
            window and no delayed delivery).
        """
        if delay is not None or deliver_at is not None:
            _unsupported("send(delay=/deliver_at=)",
                         "Kafka has no delayed delivery: send now with a 'not-before' header and "
                         "have the consumer wait, or keep delayed work on the embedded backend")
        return self._shared_producer().send(topic, value, key, headers, partition,
                                             timestamp_ms, dedup_id).result()

    def send_batch(self, topic: str, values: Sequence[Any], keys: Sequence[Any] | None = None,
                   partition: int | None = None, *,
                   headers: Sequence[HeadersArg] | None = None,
                   timestamp_ms: int | Sequence[int] | None = None) -> BatchMetadata:
        """Send many messages and wait until all are acknowledged.

        Unlike the embedded backend this is not all-or-nothing (use
        :meth:`transaction` for that): on an error some messages may have
        been written.  Keys place messages by murmur2 as :meth:`send` does.

        Raises
        ------
        As :meth:`send`; ``ValueError`` for an empty batch or mismatched lengths.
        """
        n = len(values)
        if n == 0:
            raise ValueError("send_batch needs at least one value")
        if keys is not None and len(keys) != n:
            raise ValueError(f"keys has {len(keys)} items for {n} values")
        hs = normalize_headers_list(headers, n) if headers is not None else None
        if isinstance(timestamp_ms, Sequence):
            if len(timestamp_ms) != n:
                raise ValueError(f"timestamp_ms has {len(timestamp_ms)} items for {n} values")
            stamps: Sequence[int | None] = timestamp_ms
        else:
            stamps = [timestamp_ms] * n
        producer = self._shared_producer()
        futs: list[KafkaFuture[RecordMetadata]] = []
        for i in range(n):
            fut: KafkaFuture[RecordMetadata] = KafkaFuture(producer)
            producer.produce(topic, values[i], None if keys is None else keys[i],
                             None if hs is None else hs[i], partition, stamps[i],
                             fut)
            futs.append(fut)
        producer.flush()
        mds = [f.result() for f in futs]
        ranges: dict[int, PartitionRange] = {}
        for md in mds:
            r = ranges.get(md.partition)
            ranges[md.partition] = PartitionRange(md.partition, md.offset, 1) if r is None else \
                PartitionRange(md.partition, min(r.base_offset, md.offset), r.count + 1)
        return BatchMetadata(topic, mds[0].timestamp_ms, list(ranges.values()),
                             [md.partition for md in mds], offsets=[md.offset for md in mds])

    def producer(self, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000) -> KafkaProducer:
        """A batching, thread-safe producer; see :class:`mqlite.kafka.KafkaProducer`."""
        self._check_open()
        return self._adopt(KafkaProducer(self._cluster, linger_ms=linger_ms,
                                         batch_bytes=batch_bytes, partitioner=partitioner,
                                         max_queued=max_queued))

    # -- reading -------------------------------------------------------------------------------
    def consumer(
        self,
        topics: str | Iterable[str] | None = None,
        group: str | None = None,
        *,
        auto_offset_reset: str = "earliest",
        commit: str = "after",
        max_poll_records: int = 500,
        instance_id: str | None = None,
        assignor: str | None = None,
        session_timeout: float | None = None,
        max_poll_interval: float | None = None,
        on_assign: Callable[[list[TopicPartition]], Any] | None = None,
        on_revoke: Callable[[list[TopicPartition]], Any] | None = None,
    ) -> KafkaConsumer:
        """A log consumer; see :class:`mqlite.kafka.KafkaConsumer` for the contract."""
        self._check_open()
        return self._adopt(KafkaConsumer(
            self._cluster, topics, group=group, auto_offset_reset=auto_offset_reset,
            commit=commit, max_poll_records=max_poll_records, instance_id=instance_id,
            assignor=assignor, session_timeout=session_timeout,
            max_poll_interval=max_poll_interval, on_assign=on_assign, on_revoke=on_revoke))

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group`` on each partition of ``topic`` (absent = none)."""
        n = self.partitions_for(topic)
        c = Consumer(self._cluster.client_config({"group.id": group,
                                                  "enable.auto.commit": False}))
        try:
            res = c.committed([KTP(topic, p) for p in range(n)], timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            raise to_mqlite(exc, f"committed offsets of group {group!r}") from exc
        finally:
            c.close()
        return {r.partition: r.offset for r in res if r.error is None and r.offset >= 0}

    def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Set ``group``'s committed offsets (the group must have no active members).

        Used to carry a group's position over after :command:`mqlite mirror`.
        """
        c = Consumer(self._cluster.client_config({"group.id": group,
                                                  "enable.auto.commit": False}))
        try:
            c.commit(offsets=[KTP(tp.topic, tp.partition, o) for tp, o in offsets.items()],
                     asynchronous=False)
        except KafkaException as exc:
            raise to_mqlite(exc, f"commit offsets of group {group!r}") from exc
        finally:
            c.close()

    @property
    def client_transactional_id(self) -> str | None:
        """The ``transactional.id`` given in ``client_options`` (``None``: none given)."""
        return self._cluster.transactional_id

    def transaction(self, *, transactional_id: str | None = None) -> KafkaTransaction:
        """``with broker.transaction() as tx:`` — a Kafka transaction.

        See :mod:`mqlite.kafka.transaction`: ``tx.send`` and
        ``tx.commit_offsets(consumer)`` commit atomically.

        Parameters
        ----------
        transactional_id
            The producer's ``transactional.id``; ``None``: this handle's own
            (``client_options``' ``transactional.id``, else ``mqlite-<random>``).
            Transactions of one id run one at a time; see
            :meth:`init_transactions` for why a process that may be restarted
            wants a stable one.

        Raises
        ------
        ClosedError, TypeError, ValueError
        BackendError, TimeoutError
            Registering the id with the coordinator failed.
        """
        producer, lock = self._tx_producer(transactional_id)
        return KafkaTransaction(producer, lock)

    def init_transactions(self, transactional_id: str | None = None) -> None:
        """Register ``transactional_id``'s producer with the coordinator now (idempotent).

        Kafka's ``init_transactions``: the coordinator aborts any transaction a
        previous producer of the same id left open (a killed process) and
        fences that producer, so ``read_committed`` readers move past its
        records at once instead of after ``transaction.timeout.ms``.  A
        restarted process that calls this at start with its predecessor's id
        (see :mod:`mqlite.kafka.txid`) releases what the predecessor pinned.

        Raises
        ------
        As :meth:`transaction`.
        """
        self._tx_producer(transactional_id)

    def end_transactions(self, transactional_id: str) -> None:
        """Close ``transactional_id``'s producer (waits for its open transaction).  Idempotent."""
        with self._lock:
            entry = self._tx.pop(transactional_id, None)
        if entry is not None:
            with entry[1]:
                entry[0].close()

    def _tx_producer(self, transactional_id: str | None) -> tuple[KafkaProducer, threading.Lock]:
        self._check_open()
        if transactional_id is None:
            tid = self._default_tid
        elif not isinstance(transactional_id, str):
            raise TypeError(f"transactional_id must be a str, not "
                            f"{type(transactional_id).__name__}")
        elif not 1 <= len(transactional_id) <= 1000:
            raise ValueError("transactional_id must be 1 to 1000 characters")
        else:
            tid = transactional_id
        with self._lock:
            entry = self._tx.get(tid)
            if entry is None:
                p = KafkaProducer(self._cluster, extra={"transactional.id": tid},
                                  defaults={"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS})
                try:
                    p.client.init_transactions(REQUEST_TIMEOUT)
                except KafkaException as exc:
                    p.close(0)
                    raise to_mqlite(exc, "initialise Kafka transactions") from exc
                entry = self._tx[tid] = (p, threading.Lock())
            return entry

    def _check_open(self) -> None:
        if self._cluster.closed:
            from mqlite.errors import ClosedError

            raise ClosedError("this Kafka broker handle is closed")

    # -- embedded-only features ----------------------------------------------------------------
    def queue(self, topic: str, group: str, **_options: Any) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (use a consumer group)."""
        _unsupported("queue()", "Kafka has no per-message acks (share groups are not in "
                     "confluent-kafka's stable API): use consumer(topic, group=...) with "
                     "commit='after' and more partitions for more parallel consumers")

    def declare_exchange(self, name: str, type: str = "direct", **_options: Any) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (send to each topic)."""
        _unsupported("declare_exchange()", "Kafka has no exchanges: send to each target topic, "
                     "or route in a consumer that re-sends (e.g. an mqlite.App handler)")

    def bind(self, exchange: str, topic: str, *_a: Any, **_k: Any) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError`."""
        _unsupported("bind()", "Kafka has no exchanges: send to each target topic")

    def publish(self, exchange: str, routing_key: str, value: Any, **_k: Any) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError`."""
        _unsupported("publish()", "Kafka has no exchanges: send() to each target topic")

    def set_group_dead_letter_topic(self, group: str, topics: Any,
                                    dead_letter_topic: str | None) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (a Kafka group has no place for it)."""
        _unsupported("set_group_dead_letter_topic()", "a Kafka consumer group stores no "
                     "dead-letter topic: name it in your service's configuration (the App's "
                     "dead_letter=) and watch that topic's lag or size")

    def read(self, topic: str, partition: int = 0, offset: int = 0,
             max_records: int = 500) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (use an assigned consumer)."""
        _unsupported("read()", "use consumer() with assign([TopicPartition(topic, p)]) and "
                     "seek(tp, offset), then poll()")

    def claim(self, event_id: str | bytes, scope: str = "default", **_k: Any) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError`."""
        _unsupported("claim()", "Kafka has no claim store: use transactions "
                     "(tx.send + tx.commit_offsets) or an external idempotency store")

    def dead_letters(self, topic: str, limit: int = 1000, where: Any = None) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (read the dead-letter topic)."""
        _unsupported("dead_letters()", "dead letters on Kafka are plain topics: read them with "
                     "a consumer and re-send to redrive")

    def apply_retention(self, topic: str | None = None) -> NoReturn:
        """Not on Kafka: :class:`NotSupportedError` (the brokers apply retention)."""
        _unsupported("apply_retention()", "Kafka brokers apply retention on their own schedule "
                     "(log.retention.check.interval.ms)")


if TYPE_CHECKING:
    def _conforms(b: KafkaBroker) -> StreamBroker:
        return b
