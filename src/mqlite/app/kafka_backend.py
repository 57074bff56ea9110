"""The App on Kafka: ``mqlite.App("kafka://host:9092")`` (issue 15, docs/decisions.md D37).

:class:`KafkaBackend` is the App's :class:`~mqlite.app.backend.Backend` over
a :class:`mqlite.kafka.KafkaBroker`.  The same handlers run unchanged; what
differs, and why:

* **Stream subscribers** read with a Kafka consumer group
  (``commit="manual"``: the App commits completed offsets itself, as on the
  embedded backend).  Retries run in place with the subscriber's backoff;
  a dead letter is a record sent to the ``dead_letter`` topic with the same
  ``x-*`` headers as on the embedded backend.
* **Exactly-once** (``exactly_once=True``): a batch's outputs and its offset
  commit are one Kafka transaction (``send_offsets_to_transaction``), so a
  crash or a rebalance never applies one without the other; mqlite's Kafka
  consumers read ``read_committed``.
* **Idempotency keys are not checked**: Kafka has no claim store, so
  ``idempotency_key`` does not skip an event that was *published* twice (a
  redelivered record is still handled once under ``exactly_once``, by the
  transaction).  Deduplicate upstream (the idempotent producer removes retry
  duplicates) or in the handler's own store.
* **Not on Kafka**: queue-mode subscribers (``mode="queue"``),
  ``app.dead_letters`` / ``app.redrive`` (dead letters are a plain topic:
  read it with a subscriber, as ``examples/dlq_monitor.py`` does, and
  re-publish to redrive) raise :class:`mqlite.NotSupportedError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from mqlite.app.backend import URL_BACKENDS, LocalBackend, ThreadedAsyncConsumer
from mqlite.app.context import Output
from mqlite.errors import NotSupportedError
from mqlite.types import TopicPartition

__all__ = ["KafkaBackend", "open_kafka_backend"]

log = logging.getLogger("mqlite.app")

#: Seconds a Kafka group member may go without polling before it leaves the group: the
#: App's fetch thread pauses polling while its handlers are busy with a full buffer.
MAX_POLL_INTERVAL = 300.0


class KafkaBackend(LocalBackend):
    """:class:`~mqlite.app.backend.Backend` over a :class:`mqlite.kafka.KafkaBroker`.

    Sending, topic creation, readers and lag are the :class:`LocalBackend`
    calls (the Kafka broker has the same stream API); the differences are
    in the module docstring.
    """

    def __init__(self, broker: Any, owned: bool, auto_create: bool = True,
                 partitions: int = 1) -> None:
        super().__init__(broker, owned, auto_create, partitions)
        self._warned_keys = False

    def _apply(self, outputs: Sequence[Output], claims: Sequence[tuple[Any, str, float]],
               offsets: tuple[Any, dict[TopicPartition, int]] | None,
               acks: Sequence[Any]) -> None:
        if acks:
            self._no_queues()
        if any(o.delay is not None for o in outputs):
            raise NotSupportedError(
                "retry topics (retry_topic=) on Kafka", "Kafka has no delayed messages: use "
                "in-place retries (the default: drop retry_topic=)")
        if claims and not self._warned_keys:
            self._warned_keys = True
            log.warning("idempotency_key is not checked on Kafka (no claim store): with "
                        "exactly_once each consumed record is still applied once "
                        "(docs/scale-out.md)")
        if offsets is None:
            # no offsets to commit with them: plain idempotent sends, each acknowledged
            for o in outputs:
                self.send(o)
            return
        with self.broker.transaction() as tx:
            for o in outputs:
                tx.send(o.topic, o.value, o.key, o.headers, o.partition)
            tx.commit_offsets(offsets[0], offsets[1])

    def stream_consumer(self, topics: list[str], group: str, *, auto_offset_reset: str,
                        batch: int, on_revoke: Callable[[list[TopicPartition]], Any]) -> Any:
        # commit="manual": the App commits only contiguous completed offsets itself.
        return self.broker.consumer(topics, group=group, auto_offset_reset=auto_offset_reset,
                                    commit="manual", max_poll_records=batch,
                                    max_poll_interval=MAX_POLL_INTERVAL, on_revoke=on_revoke)

    def async_stream_consumer(self, topics: list[str], group: str, *,
                              auto_offset_reset: str, batch: int,
                              on_revoke: Callable[[list[TopicPartition]], Any]) -> Any:
        """The App's asyncio consumer: :meth:`stream_consumer` behind a
        :class:`~mqlite.app.backend.ThreadedAsyncConsumer` (librdkafka waits in its
        own threads; the embedded engine's loop doorbells do not apply)."""
        return ThreadedAsyncConsumer(self.stream_consumer(
            topics, group, auto_offset_reset=auto_offset_reset, batch=batch,
            on_revoke=on_revoke))

    async def aclose(self) -> None:
        """Nothing asyncio-side to release (see :meth:`async_stream_consumer`)."""

    def scheduled(self, topic: str) -> int:
        """0: Kafka has no delayed messages (``delay=`` raises ``NotSupportedError``)."""
        return 0

    def _no_queues(self) -> NoReturn:
        raise NotSupportedError(
            "App queue-mode subscribers", "Kafka has no per-message acks: use a stream "
            "subscriber (the default mode) with a consumer group; more partitions give more "
            "parallel workers")

    def queue(self, topic: str, group: str, *, visibility_timeout: float,
              max_deliveries: int | None, dead_letter: str | None) -> Any:
        self._no_queues()

    async def async_queue(self, topic: str, group: str, *, visibility_timeout: float,
                          max_deliveries: int | None, dead_letter: str | None) -> Any:
        self._no_queues()

    def is_processed(self, key: Any, scope: str) -> bool:
        return False  # no claim store on Kafka (module docstring)

    def redrive(self, dlq: str, where: Callable[[Any], bool] | None, limit: int | None,
                to_topic: str | None) -> int:
        raise NotSupportedError(
            "app.redrive()", "dead letters on Kafka are a plain topic: read it with a "
            "subscriber or consumer and publish the records again")

    def dead_letters(self, dlq: str, limit: int) -> list[Any]:
        raise NotSupportedError(
            "app.dead_letters()", "dead letters on Kafka are a plain topic: read it with a "
            "subscriber (examples/dlq_monitor.py) or a consumer")


def open_kafka_backend(url: str, auto_create: bool, partitions: int) -> KafkaBackend:
    """The App's backend for ``mqlite.App("kafka://...")`` (registered in ``URL_BACKENDS``)."""
    import mqlite

    return KafkaBackend(mqlite.open(url), True, auto_create, partitions)


URL_BACKENDS["kafka://"] = open_kafka_backend
