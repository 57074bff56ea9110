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
* **Stable transactional ids** (D39): each exactly-once group's
  transactions use the id ``{base}.{group}.{host}.{slot}``
  (:mod:`mqlite.kafka.txid`; ``base`` is ``client_options``'
  ``transactional.id``, else ``"mqlite"``; the slot starts at the worker
  index, ``MQLITE_WORKER``), registered when the App starts.  A worker
  restarted after a SIGKILL takes its predecessor's id, which aborts the
  transaction the dead one left open: ``read_committed`` readers of its
  outputs move on at once instead of after ``transaction.timeout.ms``.
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
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from mqlite.app.backend import (
    BROKER_BACKENDS,
    URL_BACKENDS,
    LocalBackend,
    ThreadedAsyncConsumer,
)
from mqlite.app.context import Output
from mqlite.errors import ClosedError, NotSupportedError
from mqlite.types import TopicPartition

if TYPE_CHECKING:  # mqlite.kafka needs confluent-kafka: imported when a Kafka App starts
    from mqlite.kafka.txid import SlotClaim

__all__ = ["KafkaBackend", "adopt_kafka_broker", "open_kafka_backend", "worker_index"]

log = logging.getLogger("mqlite.app")

#: Seconds a Kafka group member may go without polling before it leaves the group: the
#: App's fetch thread pauses polling while its handlers are busy with a full buffer.
MAX_POLL_INTERVAL = 300.0
#: Worker indexes (``MQLITE_WORKER``) a transactional-id slot can start from (the same
#: bound as ``mqlite.kafka.txid.MAX_SLOTS``).
MAX_SLOTS = 4096


class KafkaBackend(LocalBackend):
    """:class:`~mqlite.app.backend.Backend` over a :class:`mqlite.kafka.KafkaBroker`.

    Sending, topic creation, readers and lag are the :class:`LocalBackend`
    calls (the Kafka broker has the same stream API); the differences are
    in the module docstring.
    """

    #: No delayed messages, no dedup window: ``ctx.publish(delay=...)`` raises at once.
    delayed_sends = False

    def __init__(self, broker: Any, owned: bool, auto_create: bool = True,
                 partitions: int = 1) -> None:
        super().__init__(broker, owned, auto_create, partitions)
        self._warned_keys = False
        self._tx_lock = threading.Lock()
        self._claims: dict[str, SlotClaim] = {}  # consumer group -> its transactional id
        self._tx_closed = False

    def prepare_exactly_once(self, group: str) -> None:
        """Claim ``group``'s transactional id and register it (App start; module docstring).

        Registering aborts what a dead predecessor of this worker left open.  It
        runs in a thread of its own, so that the subscriber joins its group as
        soon as without it (a later join means another rebalance round for the
        whole group); the first transaction waits for it, and retries it if it
        failed.
        """
        def register() -> None:
            try:
                self._transactional_id(group)
            except ClosedError:
                pass  # the App stopped first
            except Exception:  # the first transaction tries again, and raises
                log.warning("registering the transactional id of group %r failed; the "
                            "first transaction tries again", group, exc_info=True)

        threading.Thread(target=register, name="mqlite-kafka-txid", daemon=True).start()

    def _transactional_id(self, group: str) -> str:
        with self._tx_lock:
            claim = self._claims.get(group)
            if claim is None:
                if self._tx_closed:
                    raise ClosedError("this App's Kafka backend is closed")
                from mqlite.kafka.txid import claim_transactional_id

                claim = claim_transactional_id(
                    self.broker.client_transactional_id or "mqlite", group,
                    self.broker.url, worker_index())
                try:
                    self.broker.init_transactions(claim.transactional_id)
                except BaseException:
                    claim.release()
                    raise
                self._claims[group] = claim
            return claim.transactional_id

    def _apply(self, outputs: Sequence[Output], claims: Sequence[tuple[Any, str, float]],
               offsets: tuple[Any, dict[TopicPartition, int]] | None,
               acks: Sequence[Any]) -> None:
        if acks:
            self._no_queues()
        if any(o.delay is not None for o in outputs):
            raise NotSupportedError(
                "retry topics (retry_topic=) on Kafka", "Kafka has no delayed messages: use "
                "in-place retries (the default: drop retry_topic=)")
        if any(o.deliver_at is not None or o.dedup_id is not None for o in outputs):
            raise NotSupportedError(  # ctx.publish refuses them first (delayed_sends)
                "deliver_at= / dedup_id= on Kafka", "Kafka has no delayed delivery and no "
                "dedup window")
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
        tid = self._transactional_id(offsets[0].group)
        with self.broker.transaction(transactional_id=tid) as tx:
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

    def close(self) -> None:
        """Close an owned broker (or end this App's transactional producers on a
        caller's), then give the transactional-id slots up."""
        with self._tx_lock:
            claims, self._claims = self._claims, {}
            self._tx_closed = True  # a registration still to run claims nothing now
        try:
            if self._owned:
                self.broker.close()
            elif not self.broker.closed:
                for claim in claims.values():
                    self.broker.end_transactions(claim.transactional_id)
        finally:
            for claim in claims.values():
                claim.release()

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
                to_topic: str | None, *, cursor: Any = None) -> int:
        raise NotSupportedError(
            "app.redrive()", "dead letters on Kafka are a plain topic: read it with a "
            "subscriber or consumer and publish the records again")

    def record_dead_letter(self, group: str, topics: list[str], dead_letter: str | None) -> None:
        """Nothing: a Kafka consumer group has no place to record a dead-letter topic
        (Kafka's tools do not show one either); the App's ``dead_letter=`` still applies."""

    def dead_letters(self, dlq: str, limit: int,
                     where: Callable[[Any], bool] | None = None) -> list[Any]:
        raise NotSupportedError(
            "app.dead_letters()", "dead letters on Kafka are a plain topic: read it with a "
            "subscriber (examples/dlq_monitor.py) or a consumer")


def worker_index() -> int:
    """This process's worker index: ``MQLITE_WORKER`` (set by ``app.run(workers=N)``), else 0."""
    raw = os.environ.get("MQLITE_WORKER", "0")
    try:
        index = int(raw)
    except ValueError:
        raise ValueError(f"MQLITE_WORKER must be a worker index (0 to {MAX_SLOTS - 1}), "
                         f"got {raw!r}") from None
    if not 0 <= index < MAX_SLOTS:
        raise ValueError(f"MQLITE_WORKER must be 0 to {MAX_SLOTS - 1}, got {index}")
    return index


def open_kafka_backend(url: str, auto_create: bool, partitions: int) -> KafkaBackend:
    """The App's backend for ``mqlite.App("kafka://...")`` (registered in ``URL_BACKENDS``)."""
    import mqlite

    return KafkaBackend(mqlite.open(url), True, auto_create, partitions)


def _is_kafka_broker(target: Any) -> bool:
    # a KafkaBroker exists only once its module is imported: no import (confluent-kafka) here
    mod = sys.modules.get("mqlite.kafka.broker")
    return mod is not None and isinstance(target, mod.KafkaBroker)


def adopt_kafka_broker(target: Any, auto_create: bool, partitions: int) -> KafkaBackend:
    """The App's backend for ``mqlite.App(kafka_broker)``: the App does not close it."""
    return KafkaBackend(target, False, auto_create, partitions)


URL_BACKENDS["kafka://"] = open_kafka_backend
BROKER_BACKENDS.append((_is_kafka_broker, adopt_kafka_broker))
