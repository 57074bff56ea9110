"""Connection settings and the shared metadata view of one Kafka cluster.

:class:`Cluster` holds the librdkafka settings every client of one
:class:`~mqlite.kafka.KafkaBroker` starts from, an admin client, a cache of
partition counts (so that a send to a missing topic is
:class:`~mqlite.TopicNotFoundError`, not Kafka's silent auto-creation), and a
group-less consumer used only for watermark and timestamp look-ups.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient

from mqlite.config import require_int
from mqlite.errors import ClosedError, PartitionNotFoundError, TopicNotFoundError
from mqlite.kafka._errors import to_mqlite
from mqlite.types import TopicPartition

__all__ = ["INTERNAL_TOPICS", "REQUEST_TIMEOUT", "TRANSACTION_TIMEOUT_MS", "Cluster",
           "parse_url"]

#: Kafka's own topics, hidden from ``topics()``.
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})

#: Seconds a metadata or admin request may take before :class:`mqlite.TimeoutError`.
REQUEST_TIMEOUT = 30.0

#: mqlite's ``transaction.timeout.ms`` for its transactional producers (milliseconds; Kafka
#: Streams' exactly-once default): how long the coordinator lets a transaction stay open
#: before it aborts it, which bounds how long a dead producer's open transaction holds
#: ``read_committed`` readers back.  ``client_options`` may set 1,000 to 2**31 - 1 (and the
#: broker refuses more than its ``transaction.max.timeout.ms``, 900,000 by default).
TRANSACTION_TIMEOUT_MS = 10_000


def parse_url(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``"h1:9092,h2:9092"`` (librdkafka's bootstrap.servers).

    Raises
    ------
    ValueError
        Not a ``kafka://`` URL, or no host.
    """
    if not isinstance(url, str) or not url.startswith("kafka://"):
        raise ValueError(f"expected a kafka:// URL such as 'kafka://localhost:9092', got {url!r}")
    hosts = url[len("kafka://"):].strip("/")
    if not hosts or any(not h.strip() for h in hosts.split(",")):
        raise ValueError(f"{url!r} names no broker; use 'kafka://host:port[,host:port...]'")
    return hosts


class Cluster:
    """Settings, admin client and metadata cache shared by a broker handle's clients."""

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None) -> None:
        options = dict(client_options or {})
        for k in options:
            if not isinstance(k, str):
                raise TypeError(f"client_options keys are librdkafka property names (str), "
                                f"not {type(k).__name__}")
        if "transaction.timeout.ms" in options:
            v = options["transaction.timeout.ms"]
            ms = int(v) if isinstance(v, str) and v.strip().isdigit() else v
            require_int(ms, "client_options['transaction.timeout.ms'] (milliseconds)",
                        minimum=1000, maximum=2**31 - 1)
        self.bootstrap = bootstrap
        # a transactional id makes a producer transactional: only transaction() uses it
        self.transactional_id: str | None = options.pop("transactional.id", None)
        self.options: dict[str, Any] = {"bootstrap.servers": bootstrap, **options}
        self._lock = threading.Lock()
        self._partitions: dict[str, int] = {}
        self._admin = AdminClient(self.admin_config())
        self._meta: Consumer | None = None
        self.closed = False

    # -- configuration -------------------------------------------------------------------------
    def admin_config(self) -> dict[str, Any]:
        return dict(self.options)

    def client_config(self, forced: dict[str, Any] | None = None,
                      **defaults: Any) -> dict[str, Any]:
        """mqlite's ``defaults``, then the user's options over them, then ``forced``.

        ``forced`` are the settings an mqlite object's contract depends on (a
        consumer's ``group.id``, auto-commit off); ``client_options`` cannot
        change those.
        """
        out = dict(defaults)
        out.update(self.options)
        if forced:
            out.update(forced)
        return out

    @property
    def admin(self) -> AdminClient:
        if self.closed:
            raise ClosedError("this Kafka broker handle is closed")
        return self._admin

    def meta_consumer(self) -> Consumer:
        with self._lock:
            if self.closed:
                raise ClosedError("this Kafka broker handle is closed")
            if self._meta is None:
                self._meta = Consumer(self.client_config({
                    "group.id": f"mqlite-meta-{uuid.uuid4().hex}",
                    "enable.auto.commit": False}))
            return self._meta

    # -- metadata ------------------------------------------------------------------------------
    def list_topics(self) -> dict[str, int]:
        """``{topic: partition count}`` of every user topic (fresh from the cluster)."""
        try:
            md = self.admin.list_topics(timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            raise to_mqlite(exc, "list topics") from exc
        out = {name: len(t.partitions) for name, t in md.topics.items()
               if name not in INTERNAL_TOPICS and t.error is None}
        with self._lock:
            self._partitions = dict(out)
        return out

    def partitions_for(self, topic: str, *, fresh: bool = False) -> int:
        """Partition count of ``topic`` (cached; refreshed on a miss).

        Raises :class:`TopicNotFoundError` when the cluster has no such topic.
        """
        n = None if fresh else self._partitions.get(topic)
        if n is None:
            n = self.list_topics().get(topic)
            if n is None:
                raise TopicNotFoundError(
                    f"topic {topic!r} does not exist on {self.bootstrap}; create it with "
                    "broker.create_topic (mqlite never relies on Kafka's auto-creation)")
        return n

    def known_partitions(self, topic: str) -> int:
        """:meth:`partitions_for` with the cache hit inlined (the per-send path)."""
        n = self._partitions.get(topic)
        return self.partitions_for(topic) if n is None else n

    def check_partition(self, topic: str, partition: int) -> int:
        n = self.partitions_for(topic)
        if not 0 <= partition < n:
            n = self.partitions_for(topic, fresh=True)
            if not 0 <= partition < n:
                raise PartitionNotFoundError(
                    f"{topic!r} has partitions 0..{n - 1}, not {partition}")
        return n

    def forget(self, topic: str) -> None:
        with self._lock:
            self._partitions.pop(topic, None)

    def wait_for(self, topic: str, present: bool, timeout: float = REQUEST_TIMEOUT) -> None:
        """Wait until the cluster's metadata shows ``topic`` created (or deleted)."""
        deadline = time.monotonic() + timeout
        while (topic in self.list_topics()) != present:
            if time.monotonic() > deadline:
                from mqlite.errors import TimeoutError

                raise TimeoutError(
                    f"topic {topic!r} was not {'created' if present else 'deleted'} in the "
                    f"cluster's metadata within {timeout:g} s")
            time.sleep(0.05)  # metadata propagation has no notification to wait on

    def watermarks(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """``{tp: (low, high)}``: the first offset and the log end of each partition."""
        c = self.meta_consumer()
        out = {}
        for tp in tps:
            self.check_partition(tp.topic, tp.partition)
            try:
                lo, hi = c.get_watermark_offsets(KTP(tp.topic, tp.partition),
                                                 timeout=REQUEST_TIMEOUT)
            except KafkaException as exc:
                raise to_mqlite(exc, f"offsets of {tp.topic}[{tp.partition}]") from exc
            out[tp] = (lo, hi)
        return out

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            meta, self._meta = self._meta, None
        if meta is not None:
            meta.close()

