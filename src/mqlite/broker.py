"""The broker facade: ``mqlite.open(path)`` and everything reachable from it.

A :class:`Broker` is a handle on one broker directory.  It composes; it does
not implement: every call goes to the engine (:mod:`mqlite._engine`) or to a
feature module built on it (producer, consumer, groups, queue, routing,
scheduler, transaction).  Every broker object of a process that names the
same directory shares one LMDB environment; each write is one short LMDB
write transaction that never spans user code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from mqlite import _core, routing, scheduler, stats
from mqlite import groups as _groups
from mqlite import queue as _queue
from mqlite import transaction as _tx
from mqlite._engine import Engine
from mqlite._headers import HeadersArg
from mqlite._storage.backup import copy_compacted
from mqlite._storage.env import acquire_env
from mqlite.config import (
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    UNSET,
    TopicConfig,
    Unset,
)
from mqlite.consumer import Consumer
from mqlite.groups import GroupDescription
from mqlite.producer import Producer
from mqlite.queue import DeadLetter, DeadLetterCursor, Queue, QueuePolicy
from mqlite.retry import Backoff
from mqlite.transaction import Transaction
from mqlite.types import (
    BatchMetadata,
    BrokerStats,
    QueueStats,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

if TYPE_CHECKING:
    from mqlite.backend import StreamBroker
    from mqlite.queue import QueuePolicy
    from mqlite.retry import Backoff

__all__ = ["Broker", "open"]


def open(
    path: str | os.PathLike[str],
    durability: str = "sync",
    *,
    map_size: int | None = None,
    create: bool = True,
    shared_group: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> Broker:
    """Open (creating if needed) the broker stored in directory ``path``.

    ``path`` may instead be a ``kafka://host:port[,host:port...]`` URL: then
    the result is a :class:`mqlite.kafka.KafkaBroker` with the same stream
    API (both satisfy :class:`mqlite.backend.StreamBroker`; annotate with
    that, or call :func:`mqlite.kafka.open`, in typed code), configured with
    ``client_options`` (librdkafka properties); see docs/scale-out.md.

    Parameters
    ----------
    path
        The broker directory (not empty: ``""`` is refused rather than
        turning the current directory into a broker).  Created with mode 0700 (0770 with
        ``shared_group``); an existing one must be owned by the caller, not a
        symlink, and not writable by group/others.
    durability
        ``"sync"`` (default: every returned send is on disk), ``"lazy"`` (the
        last commits may roll back after an OS crash; never corrupt) or
        ``"none"`` (no fsync; an OS crash may lose recent data).  A process
        crash never loses a committed message in any mode.
    map_size
        Bytes of address space reserved for the data file (sparse; the file
        grows only as used).  Fixed when the broker is created; default 64 GiB.
        Sends are refused with :class:`StorageFullError` above 90% of it;
        receives, new groups, topics, exchanges and bindings above 95%; acks,
        nacks, offset commits, joins of existing groups, deletes and close are
        always admitted, so a full broker can always be drained.
    create
        Create the directory when missing (else :class:`BrokerDirectoryError`).
    shared_group
        Make the directory and files group-accessible (0770/0660).

    Returns
    -------
    Broker
        Also a context manager that closes on exit.

    Raises
    ------
    BrokerDirectoryError
        Unsafe or missing directory.
    CorruptRecordError
        ``data.mdb`` is truncated or not an LMDB file.
    ValueError
        Empty ``path``, unknown durability mode, or the directory is already
        open in this process with another durability mode.
    TypeError
        ``client_options`` with a directory (they are for ``kafka://`` URLs).
    ImportError
        A ``kafka://`` URL without confluent-kafka installed (``mqlite[kafka]``).
    """
    if isinstance(path, str) and path.startswith("kafka://"):
        try:
            from mqlite.kafka import open as open_kafka
        except ImportError as exc:
            raise ImportError(f"{path!r} needs the Kafka client: pip install 'mqlite[kafka]' "
                              f"(confluent-kafka); {exc}") from exc

        return open_kafka(path, client_options=client_options)  # type: ignore[return-value]
    if client_options is not None:
        raise TypeError("client_options is for kafka:// URLs; a broker directory takes none")
    if isinstance(path, (str, os.PathLike)) and not os.fspath(path):
        raise ValueError("mqlite.open() needs a broker directory, got an empty path; "
                         "pass one explicitly, e.g. mqlite.open('data/') (or '.' for the "
                         "current directory)")
    return Broker(Engine(acquire_env(path, durability=durability, map_size=map_size,
                                     create=create, shared_group=shared_group)))


class Broker:
    """A handle on one broker directory.

    Thread-safe: any number of threads may share one broker (LMDB serialises
    writers).  Fork-safe: a child process reopens the environment on first use
    (see :func:`open`).  The producers, consumers and queues made from a handle
    are its children: :meth:`close` (or leaving ``with``) closes them, then
    releases the handle; the environment closes with the last handle of the
    process (README, "Lifecycle and threads").
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Absolute path of the broker directory."""
        return self._engine.path

    @property
    def durability(self) -> str:
        """``"sync"``, ``"lazy"`` or ``"none"``: this process's choice (not stored on disk)."""
        return self._engine.durability

    @property
    def closed(self) -> bool:
        return self._engine.closed

    @property
    def notifier(self) -> _core.Notifier:
        """Low level: this process's wake-up words of the broker (csrc/notify.h).

        For event-loop integrations (:mod:`mqlite.aio` waits on them through
        doorbells, csrc/doorbell.h).  Raises :class:`ClosedError` when closed.
        """
        return self._engine.live_env().notifier

    def close(self) -> None:
        """Close every child, then release this handle.  Idempotent; any thread.

        Producers are flushed and closed first (every record sent before
        ``close()`` is committed), then consumers and queues are closed (a
        blocked ``poll``/``receive`` in another thread returns at once; group
        members leave, queue consumers release their held messages), then
        the handle is released; the environment closes with the last handle
        of the process.  Called from a signal handler (or a callback) that
        interrupted a child's call on this thread, that child closes when
        the interrupted call returns, and the handle is released then.

        Raises
        ------
        Exception
            The first error a child's ``close()`` raised (e.g. from an
            ``on_revoke`` callback), after everything else was closed.
        """
        self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.durability
        return f"<mqlite.Broker {self.path!r} {state}>"

    # -- topic catalog -------------------------------------------------------------------
    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention_messages: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
        cleanup: str = "delete",
        exist_ok: bool = False,
    ) -> None:
        """Create a topic with ``partitions`` empty partitions.

        Raises
        ------
        InvalidTopicError
            Bad name (``ValueError``).
        TopicExistsError
            The topic exists (unless ``exist_ok``; then nothing changes, even
            if the existing topic was created with other settings).
        TypeError, ValueError
            Bad settings (see :class:`mqlite.config.TopicConfig`).
        """
        self._engine.create_topic(
            name, partitions, retention_ms=retention_ms, retention_bytes=retention_bytes,
            retention_messages=retention_messages, max_message_bytes=max_message_bytes,
            dedup_window_ms=dedup_window_ms, cleanup=cleanup, exist_ok=exist_ok)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and all its messages, offsets and pending entries.

        Raises :class:`TopicNotFoundError` when it does not exist.
        """
        self._engine.delete_topic(name)

    def topics(self) -> list[str]:
        """Names of all topics, sorted."""
        return self._engine.topics()

    def topic_config(self, name: str) -> TopicConfig:
        """The stored configuration of topic ``name``."""
        return self._engine.topic_config(name)

    def partitions_for(self, name: str) -> int:
        """Number of partitions of topic ``name``."""
        return self._engine.partitions_for(name)

    def describe_topic(self, name: str) -> TopicDescription:
        """Configuration and per-partition state (offsets, messages, bytes, timestamps)."""
        return self._engine.describe_topic(name)

    def alter_topic(self, name: str, *, partitions: int | None = None,
                    retention_ms: int | None | Unset = UNSET,
                    retention_bytes: int | None | Unset = UNSET,
                    retention_messages: int | None | Unset = UNSET) -> TopicConfig:
        """Change a topic's retention or add partitions, in one write transaction.

        Parameters
        ----------
        partitions
            New partition count, >= the current one (partitions are only
            added: removing one would drop its messages).  New partitions
            start empty with fresh ids.  Keyed sends map keys over the new
            count from now on (as Kafka does), so a key's later messages may
            land in another partition than its earlier ones.  Queue consumers
            pick new partitions up at their next ``receive()``; a stream
            group's members at its next rebalance (a member joining or leaving).
        retention_ms, retention_bytes, retention_messages
            As in :meth:`create_topic` (milliseconds / bytes / messages, >= 1;
            ``None`` = keep forever); left out = unchanged.  Applied at the
            next append or :meth:`apply_retention`.

        Returns
        -------
        TopicConfig
            The configuration now stored.

        Raises
        ------
        TopicNotFoundError, TypeError, ValueError
        """
        changes: dict[str, Any] = {}
        for key, val in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes),
                         ("retention_messages", retention_messages)):
            if val is not UNSET:
                changes[key] = val
        TopicConfig.from_dict(changes)  # types and bounds, before any storage call
        if partitions is not None:
            TopicConfig(partitions=partitions)
        return self._engine.alter_topic(name, partitions=partitions, changes=changes)

    # -- inspecting and operating ----------------------------------------------------------
    def stats(self, *, dead_letter_topics: Iterable[str] = ()) -> BrokerStats:
        """One consistent, read-only snapshot of every topic, group, queue and DLQ.

        Taken in one read transaction without joining any group, so it never
        disturbs consumers (``mqlite metrics`` and ``mqlite top`` use it).
        Queue groups' dead-letter topics are found from their policies;
        ``dead_letter_topics`` adds others (stream-mode DLQs an App writes to)
        to ``BrokerStats.dead_letters``.  See :class:`mqlite.BrokerStats`.
        Raises ``ValueError`` / ``TypeError`` for a bad topic name or a bare string.
        """
        return stats.broker_stats(self._engine, dead_letter_topics)

    def queue_stats(self, topic: str, group: str) -> QueueStats | None:
        """Depths of one queue group without joining it (``None``: no such group).

        Ready, in-flight, delayed, consumed, live consumers, dead-letter depth,
        the oldest unsettled delivery and the oldest never-delivered message's
        timestamp; see :class:`mqlite.QueueStats`.
        """
        return stats.queue_stats(self._engine, topic, group)

    def queue_pending(self, topic: str, group: str, limit: int = 1000) -> list[dict[str, Any]]:
        """A queue group's unsettled messages (in-flight, waiting for retry) without joining it.

        The dicts ``Queue.pending()`` returns (owner, delivery count, visibility
        deadline, last error), at most ``limit`` (1 to 100,000); read-only.
        The web console's queue page uses it.
        """
        return stats.queue_pending(self._engine, topic, group, limit)

    def space(self) -> dict[str, int]:
        """Storage use, in bytes: ``map_size``, ``used_bytes`` (pages in use),
        ``high_water_bytes`` (sends are refused above it) and ``file_bytes``."""
        return self._engine.live_env().space()

    def reset_offsets(self, group: str, topic: str, to: Any, *,
                      partitions: list[int] | None = None,
                      force: bool = False) -> dict[int, int]:
        """Set a stream group's committed offsets on ``topic``; returns them per partition.

        Parameters
        ----------
        to
            ``"earliest"``, ``"latest"``, an offset (clamped to each
            partition's stored range) or a timezone-aware ``datetime`` (the
            first message at or after it, else the log end).
        partitions
            Only these partition numbers (default: all).
        force
            Reset even while members are alive (they keep reading from their
            in-memory positions and may commit over the reset).

        Raises
        ------
        GroupActiveError
            The group has a live member and ``force`` is false.
        TopicNotFoundError, PartitionNotFoundError, TypeError, ValueError
        """
        return _groups.reset_offsets(self._engine, group, topic, to, partitions=partitions,
                                     force=force)

    def backup(self, dest: str | os.PathLike[str]) -> int:
        """Write a hot, consistent, compacted copy of the broker into directory ``dest``.

        Producers and consumers keep running: the copy is a snapshot as of
        the moment it began (every database, one read transaction), holding
        live data only (free pages dropped).  Restore by opening the copy:
        ``mqlite.open(dest)``.  ``dest`` must be new or empty.

        Returns
        -------
        int
            Size of the copy's ``data.mdb`` in bytes.

        Raises
        ------
        BrokerDirectoryError
            ``dest`` exists and is not an empty directory.
        StorageError
            The copy failed (e.g. the disk is full).
        """
        return copy_compacted(self._engine.live_env(), os.fspath(dest))

    # -- writing -------------------------------------------------------------------------
    def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: HeadersArg = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        dedup_id: str | bytes | None = None,
        *,
        delay: float | None = None,
        deliver_at: float | None = None,
    ) -> RecordMetadata:
        """Append one message in its own transaction and return where it was stored.

        When this returns, the message is committed (on disk under
        ``"sync"``).  The partition is ``partition`` if given, else Kafka's
        murmur2 of ``key`` when there is a key, else round-robin.

        Parameters
        ----------
        value, key
            Bytes-like (``bytes``, ``bytearray``, ``memoryview``); ``key`` may
            be ``None`` (distinct from ``b""``).
        headers
            A dict ``{name: value}`` or ordered ``(name, value)`` pairs (names
            may repeat); names ``str``, values bytes-like or ``str`` (stored
            UTF-8 encoded).  Anything else is a ``TypeError``.
        dedup_id
            Makes the send idempotent within the topic's dedup window: a
            repeat appends nothing and returns the first send's metadata.
        timestamp_ms
            The record's timestamp, UNIX time in milliseconds (default: now).
        delay, deliver_at
            Hold the message back: it is appended (and visible) only once due
            (``delay`` seconds from now, ``0 <= delay <= 10 years``; or at
            ``deliver_at``, a UNIX time in seconds, not milliseconds, at most
            10 years ahead; a past time is due at once).  Other values raise
            ``ValueError`` naming the unit.  The returned metadata then has
            ``offset == -1``.

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, MessageTooLargeError,
        StorageFullError, TypeError, ValueError
        """
        if delay is not None or deliver_at is not None:
            return scheduler.schedule_send(
                self._engine, topic, value, key=key, headers=headers, partition=partition,
                timestamp_ms=timestamp_ms, dedup_id=dedup_id, delay=delay, deliver_at=deliver_at)
        if headers is None and dedup_id is None and timestamp_ms is None:
            # The common case in one C call (D36); None: not the common case, nothing done.
            eng = self._engine
            md = eng.send_path.send(eng, topic, value, key, partition)
            if md is not None:
                return md
        return self._engine.send_general(topic, value, key, headers, partition, timestamp_ms,
                                         dedup_id)

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        *,
        headers: Sequence[HeadersArg] | None = None,
        timestamp_ms: int | Sequence[int] | None = None,
    ) -> BatchMetadata:
        """Append many messages in one transaction; all or nothing.

        Without ``keys`` and ``partition`` the whole batch goes to one
        partition (round-robin between calls), so it stays in order.  With
        ``keys`` each message goes to its key's murmur2 partition (keys may
        contain ``None``: those go to one round-robin partition).

        Returns
        -------
        BatchMetadata
            Compact: per-partition offset ranges; ``md[i]`` builds message
            ``i``'s :class:`RecordMetadata` on demand.

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, MessageTooLargeError,
        StorageFullError, TypeError, ValueError (empty ``values`` or length
        mismatch)
        """
        return self._engine.send_batch(topic, values, keys, partition, headers=headers,
                                       timestamp_ms=timestamp_ms)

    def apply_retention(self, topic: str | None = None) -> int:
        """Apply retention rules now (they also run on appends); returns batches deleted."""
        return self._engine.apply_retention(topic)

    # -- reading -------------------------------------------------------------------------
    def read(self, topic: str, partition: int = 0, offset: int = 0,
             max_records: int = 500) -> list[_core.Message]:
        """Read up to ``max_records`` messages of one partition from ``offset`` (no group)."""
        return self._engine.read_partition(topic, partition, offset, max_records)

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
    ) -> Consumer:
        """A log consumer (Kafka-style); see :class:`mqlite.Consumer` for the guarantees.

        Parameters
        ----------
        topics
            Topic name or names to subscribe to (``None``: call ``assign()``).
        group
            Consumer group; ``None`` reads every partition with no group state
            and no commits.
        auto_offset_reset
            ``"earliest"`` (default), ``"latest"`` or ``"none"``: where to
            start without a committed offset.
        commit
            ``"after"`` (at-least-once, default), ``"before"`` (at-most-once)
            or ``"manual"``.
        max_poll_records
            Default ``max_records`` of ``poll()``; 1 or more.
        instance_id
            Static membership id (group only): a restart within
            ``session_timeout`` keeps the partitions.
        assignor
            ``"range"`` (default), ``"roundrobin"`` or ``"cooperative-sticky"``.
        session_timeout
            Seconds (not ms) without a heartbeat before a hung member is
            expired; > 0 and at most 3600, default 10.  A crashed member is
            detected at once.
        max_poll_interval
            Seconds between polls before this member lets itself expire;
            > 0 and at most 86400, default 300.
        on_assign, on_revoke
            Callbacks with a sorted list of :class:`TopicPartition`.

        Raises
        ------
        TopicNotFoundError, TypeError, ValueError, ClosedError
        """
        return Consumer(self._engine, topics, group=group, auto_offset_reset=auto_offset_reset,
                        commit=commit, max_poll_records=max_poll_records,
                        instance_id=instance_id, assignor=assignor,
                        session_timeout=session_timeout, max_poll_interval=max_poll_interval,
                        on_assign=on_assign, on_revoke=on_revoke)

    def producer(self, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000) -> Producer:
        """A batching, thread-safe producer; see :class:`mqlite.Producer`.

        Parameters
        ----------
        linger_ms
            Milliseconds the flusher waits after the first queued record for
            more (default 0; >= 0).
        batch_bytes
            Commit at once when this many value/key bytes are queued (>= 1,
            default 1 MiB).
        partitioner
            ``"murmur2"`` (default), ``"round_robin"``, ``"sticky"`` or a
            callable ``(key, value, partition_count) -> int``.
        max_queued
            Records queued before ``send`` blocks (backpressure); >= 1.
        """
        return Producer(self._engine, linger_ms=linger_ms, batch_bytes=batch_bytes,
                        partitioner=partitioner, max_queued=max_queued)

    def queue(self, topic: str, group: str, *, visibility_timeout: float = 30.0,
              max_deliveries: int | None | Unset = UNSET,
              dead_letter_topic: str | None | Unset = UNSET,
              retry_backoff: Backoff | float | None | Unset = UNSET) -> Queue:
        """A competing-consumer queue over ``topic``; see :class:`mqlite.Queue`.

        Parameters
        ----------
        visibility_timeout
            Seconds (not ms) a received message stays invisible to others
            before it is redelivered if not acked; ``0 <= x <= 43200`` (12 h;
            0: visible to others at once, as SQS),
            default 30.  Per consumer.
        max_deliveries
            Deliveries after which a message is dead-lettered (``None``: retry
            forever); 1 to 2**32 - 1.
        dead_letter_topic
            Where dead letters go (created with 1 partition if missing).
        retry_backoff
            Delay before a nacked message is visible again: ``None`` (at once),
            seconds (at most 10 years), or a :class:`mqlite.Backoff`.

        ``max_deliveries``, ``dead_letter_topic`` and ``retry_backoff`` are
        the group's policy, stored with the group: left out, a consumer adopts
        the stored one; a different explicit value raises
        :class:`QueueConfigConflictError` (change it with
        :meth:`set_queue_policy`).
        """
        return Queue(self._engine, topic, group, visibility_timeout=visibility_timeout,
                     max_deliveries=max_deliveries, dead_letter_topic=dead_letter_topic,
                     retry_backoff=retry_backoff)

    def set_queue_policy(self, topic: str, group: str, *,
                         max_deliveries: int | None | Unset = UNSET,
                         dead_letter_topic: str | None | Unset = UNSET,
                         retry_backoff: Backoff | float | None | Unset = UNSET) -> QueuePolicy:
        """Set or change a queue group's stored retry/dead-letter policy.

        Parameters are those of :meth:`queue` (``max_deliveries`` >= 1 or
        ``None`` = retry forever; ``dead_letter_topic`` or ``None`` = drop;
        ``retry_backoff`` seconds, a :class:`mqlite.Backoff` or ``None``);
        left-out ones keep their stored value.  Works before the group's first
        consumer; live consumers apply a change at their next ``receive()``.

        Returns
        -------
        QueuePolicy
            The policy now stored.

        Raises
        ------
        TopicNotFoundError, TypeError, ValueError
        """
        return _queue.set_queue_policy(self._engine, topic, group,
                                       max_deliveries=max_deliveries,
                                       dead_letter_topic=dead_letter_topic,
                                       retry_backoff=retry_backoff)

    def queue_policy(self, topic: str, group: str) -> QueuePolicy | None:
        """A queue group's stored :class:`mqlite.QueuePolicy` (``None``: no consumer yet)."""
        return _queue.queue_policy(self._engine, topic, group)

    def set_group_dead_letter_topic(self, group: str, topics: str | Iterable[str],
                                    dead_letter_topic: str | None) -> dict[str, str]:
        """Record where stream group ``group``'s failures from ``topics`` go.

        For operators: ``Broker.stats()`` (``GroupStats.dead_letter_topics`` and
        the depth in ``dead_letters``), :meth:`describe_group`, ``mqlite groups``,
        ``mqlite group``, the console and the metrics exporter show it, in any
        process.  A stream group's dead-letter topic is an ordinary topic its
        consumer's code writes to (an App subscriber's ``dead_letter=``, which
        the App records with this call when the subscriber starts); nothing
        routes by this record.  Per subscribed topic the last call wins (two App
        versions with different ``dead_letter=`` for one group show the one
        started last); ``None`` forgets ``topics``' entries; entries of other
        topics are kept.  Writes only when something changes.  Queue groups keep
        theirs in their policy (:meth:`set_queue_policy`).

        Returns
        -------
        dict[str, str]
            The group's whole map (subscribed topic -> dead-letter topic).

        Raises
        ------
        TypeError, ValueError
            Bad names, or an empty ``topics``.
        StorageFullError
            The group had no record and the broker is above its high-water mark.
        """
        return _groups.set_dead_letter_topic(self._engine, group, topics, dead_letter_topic)

    def groups(self) -> list[str]:
        """Names of the stream-mode consumer groups (including empty ones that had members)."""
        return [g for g in _groups.list_groups(self._engine) if not g.startswith("~")]

    def describe_group(self, group: str) -> GroupDescription:
        """Members, generation, committed offsets and lag of a consumer group."""
        self._engine.live_env()
        return _groups.describe_group(self._engine, group)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group`` on each partition of ``topic`` (absent = none)."""
        return _groups.committed_offsets(self._engine, group, topic)

    def dead_letters(self, topic: str, limit: int = 1000,
                     where: Callable[[DeadLetter], bool] | None = None) -> list[DeadLetter]:
        """Up to ``limit`` (>= 1) dead letters in dead-letter topic ``topic`` not yet
        redriven or purged, those ``where`` accepts when given (e.g. a
        :class:`DeadLetterFilter`); reading stops at the ``limit``-th match."""
        return _queue.dead_letters(self._engine, topic, limit, where)

    def redrive(self, topic: str, where: Callable[[DeadLetter], bool] | None = None,
                limit: int | None = None, to_topic: str | None = None, *,
                cursor: DeadLetterCursor | None = None) -> int:
        """Send dead letters of ``topic`` back to their original topic; returns how many.

        One write transaction; each letter is marked done with its copy.
        ``limit`` (>= 1, ``None``: all) counts letters that can go (``where``
        accepts them and their target topic exists).  To redrive in chunks, pass
        one :class:`DeadLetterCursor` to every call: each resumes where the
        last stopped, so N letters cost O(N) reads in total.  A redrive is a
        send: above the high-water mark it raises :class:`StorageFullError` and
        redrives nothing.
        """
        return _queue.redrive(self._engine, topic, where, limit, to_topic, cursor)

    def purge_dead_letters(self, topic: str,
                           where: Callable[[DeadLetter], bool] | None = None) -> int:
        """Discard dead letters of ``topic`` (all, or those ``where`` accepts)."""
        return _queue.purge_dead_letters(self._engine, topic, where)

    def promote_scheduled(self) -> int:
        """Append delayed messages that are due now (consumers also do this)."""
        self._engine.live_env()
        return scheduler.promote_due(self._engine)

    # -- routing and transactions ------------------------------------------------------------
    def declare_exchange(self, name: str, type: str = "direct", *,
                         alternate_exchange: str | None = None, exist_ok: bool = True) -> None:
        """Declare an exchange (``direct``, ``fanout``, ``topic`` or ``headers``).

        Re-declaring with the same type is a no-op; with another type it is
        :class:`ExchangeExistsError`.  See :mod:`mqlite.routing`.
        """
        routing.declare_exchange(self._engine, name, type, alternate_exchange=alternate_exchange,
                                 exist_ok=exist_ok)

    def delete_exchange(self, name: str) -> None:
        """Delete an exchange and its bindings."""
        routing.delete_exchange(self._engine, name)

    def exchanges(self) -> list[str]:
        """Names of all exchanges."""
        return routing.list_exchanges(self._engine)

    def bind(self, exchange: str, topic: str, routing_key: str | None = None, *,
             headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """Bind ``topic`` to ``exchange`` (routing key pattern, or header match)."""
        routing.bind(self._engine, exchange, topic, routing_key, headers=headers, match=match)

    def unbind(self, exchange: str, topic: str, routing_key: str | None = None, *,
               headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """Remove a binding made by :meth:`bind` (same arguments)."""
        routing.unbind(self._engine, exchange, topic, routing_key, headers=headers, match=match)

    def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                headers: HeadersArg = None,
                timestamp_ms: int | None = None, mandatory: bool = False) -> list[RecordMetadata]:
        """Route one message through ``exchange`` to every matching topic, in one transaction.

        Returns the metadata of every copy written (empty when nothing
        matched and there is no alternate exchange; with ``mandatory=True``
        that raises :class:`UnroutableError` instead).
        """
        return routing.publish(self._engine, exchange, routing_key, value, key=key,
                               headers=headers, timestamp_ms=timestamp_ms, mandatory=mandatory)

    def transaction(self) -> Transaction:
        """``with broker.transaction() as tx:`` — sends, offset commits and acks, atomically.

        See :class:`mqlite.transaction.Transaction`.
        """
        return Transaction(self._engine)

    def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """Whether ``event_id`` is claimed in ``scope`` (and not expired): a hint, not a lock.

        Non-exclusive: another process may claim the id right after this
        returns ``False``.  Use it to skip work early; rely on
        :meth:`claim` / ``tx.claim`` for exclusivity (docs/exactly-once.md).
        """
        return _tx.is_processed(self._engine, event_id, scope)

    def claim(self, event_id: str | bytes, scope: str = "default", *,
              ttl: float = _tx.DEFAULT_CLAIM_TTL) -> bool:
        """Claim ``event_id`` in ``scope`` for ``ttl`` seconds, atomically; first caller wins.

        For effects outside mqlite (an HTTP call, an email): claim, then act
        only if this returned ``True``.  The check and the claim happen in one
        write transaction, so of any number of threads and processes claiming
        one id, exactly one gets ``True`` until the claim expires.  That makes
        the external effect at-most-once: a crash after the claim and before
        the effect loses the effect (docs/exactly-once.md).  With
        ``durability="sync"`` the claim is on disk when this returns.

        Parameters
        ----------
        event_id
            1-256 bytes (``str`` is encoded UTF-8).
        scope
            Namespace of the id: 1-100 bytes of UTF-8, no NUL.
        ttl
            Seconds the claim is kept: 0.001 to 366 days (default 7 days).

        Returns
        -------
        bool
            ``True`` if this call claimed the id; ``False`` if it was already
            claimed (and not expired).

        Raises
        ------
        TypeError, ValueError
            Bad ``event_id``, ``scope`` or ``ttl`` (checked before any storage call).
        StorageError
            The write failed (``StorageFullError`` when the map is full).
        ClosedError
            The broker is closed.
        """
        return _tx.claim(self._engine, event_id, scope, ttl=ttl)


if TYPE_CHECKING:
    def _conforms(b: Broker) -> StreamBroker:  # mypy checks Broker against the seam
        return b
