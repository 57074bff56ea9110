"""What the queue's modules need from a :class:`~mqlite.Queue` (its package contract).

``receive``, ``settle``, ``liveness`` and ``deliveries`` hold the bodies of the
``Queue``'s methods; they are written against this protocol, not against the
class, so the package's modules import downward only (``consumer`` composes
them; nothing imports ``consumer`` back).  The attributes with a leading
underscore are the queue's internal state, shared within this package only.

Callers: every ``queue`` module but ``consumer``.  Affects: nothing; a protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from mqlite.queue.deliveries import Delivery, DeliveryOwner

if TYPE_CHECKING:
    from mqlite._engine import Engine
    from mqlite._lifecycle import UseGuard
    from mqlite._storage.env import Env
    from mqlite._storage.log import TopicRecord
    from mqlite._storage.pending import Entry
    from mqlite.queue.policy import QueueMeta, QueuePolicy
    from mqlite.retry import Backoff

__all__ = ["QueueCore"]


class QueueCore(DeliveryOwner, Protocol):
    """The state and methods of a :class:`~mqlite.Queue` its package modules use."""

    owner_id: str
    visibility_timeout_ms: int
    max_deliveries: int | None
    dead_letter_topic: str | None
    _engine: Engine
    _env: Env
    _life: UseGuard
    _prefix: bytes
    _owner: bytes
    _policy: QueuePolicy
    _backoff: Backoff | None
    _rotation: int
    _idle: bool  # the last receive round took nothing: the next one looks before it writes
    _slot: int  # the word the group's receivers wait on (D74)
    _one: bool  # _slot is the group's own word, woken one receiver at a time (D67, D74);
    #             else the topic's (no queue word was free), which wakes every waiter
    _incarnation: int  # the first partition id of the topic this consumer joined
    _pid: int
    _closed: bool

    @property
    def policy(self) -> QueuePolicy: ...

    def _adopt(self, policy: QueuePolicy) -> None: ...

    def _check_open(self) -> None: ...

    def _topic_in(self, txn: Any) -> TopicRecord: ...

    def _load_meta(self, txn: Any) -> QueueMeta: ...

    def _store_meta(self, txn: Any, meta: QueueMeta) -> None: ...

    def _scan(self, txn: Any, pid: int | None = None) -> list[Entry]: ...

    def _wake_receiver(self) -> None: ...

    def _refresh_word(self) -> bool: ...

    def ack(self, deliveries: Delivery | Iterable[Delivery]) -> int: ...
