"""What ``receive()`` hands out: :class:`Delivery` and the receipt it carries.

A receipt is the delivery state shared by the messages of one pending entry
(one delivery range): its opaque storage key, the token acks must present, the
delivery count and visibility deadline.  Settling a :class:`Delivery` forwards
to the :class:`~mqlite.Queue` that made it.

Callers: ``receive`` (builds receipts and deliveries), ``settle`` (reads them;
``extend`` re-points a delivery at the receipt of its new entry), users.
Changes: nothing stored; receipts are process-local.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from mqlite import _core

__all__ = ["Delivery", "DeliveryOwner", "Receipt"]


class DeliveryOwner(Protocol):
    """What a delivery needs from the queue that handed it out."""

    topic: str
    group: str
    _qg: str

    def _settle_one(self, d: Delivery, op: str) -> None: ...

    def nack(self, deliveries: Delivery | Iterable[Delivery], delay: float | None = None,
             error: str | None = None) -> int: ...

    def dead_letter(self, deliveries: Delivery | Iterable[Delivery],
                    reason: str = "rejected") -> int: ...

    def extend(self, deliveries: Delivery | Iterable[Delivery], seconds: float) -> int: ...


class Receipt:
    """Delivery state shared by the messages of one pending entry (one receive)."""

    __slots__ = ("count", "first", "key", "pid", "qg", "queue", "token", "visible")

    def __init__(self, queue: DeliveryOwner, key: bytes, token: int, count: int, visible: int,
                 first: int, pid: int) -> None:
        self.queue = queue
        self.qg = queue._qg
        self.key = key
        self.token = token
        self.count = count
        self.visible = visible
        self.first = first
        self.pid = pid


class Delivery(_core.Message):
    """A received message plus its delivery state (see :class:`Queue`).

    Attributes
    ----------
    delivery_count
        1 on the first delivery, raised on each redelivery (durable).
    receipt
        The delivery's token: acks and nacks must present it.
    visible_at_ms
        When the message becomes visible to other consumers unless settled.

    Immutable; any thread may settle it (through its thread-safe :class:`Queue`).
    """

    __slots__ = ("_r",)
    _r: Receipt

    @property
    def delivery_count(self) -> int:
        return self._r.count

    @property
    def receipt(self) -> int:
        return self._r.token

    @property
    def visible_at_ms(self) -> int:
        return self._r.visible

    @property
    def _queue(self) -> DeliveryOwner:
        return self._r.queue

    def ack(self) -> None:
        """Acknowledge: the message is done and will not be delivered again.

        Raises :class:`StaleDeliveryError` (changing nothing) when this
        delivery is no longer valid: it timed out and was redelivered, its
        owner was declared dead, or it was already settled.
        """
        self._r.queue._settle_one(self, "ack")

    def nack(self, delay: float | None = None, error: str | None = None) -> None:
        """Give the message back: visible again after ``delay`` seconds (default: the
        queue's backoff), or dead-lettered when it reached ``max_deliveries``."""
        self._r.queue.nack(self, delay=delay, error=error)

    def dead_letter(self, reason: str = "rejected") -> None:
        """Move the message to the dead-letter topic now (or drop it when there is none)."""
        self._r.queue.dead_letter(self, reason=reason)

    def extend(self, seconds: float) -> None:
        """Keep the message invisible to others for ``seconds`` more from now."""
        self._r.queue.extend(self, seconds)

    def __repr__(self) -> str:
        return (f"Delivery(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, delivery_count={self.delivery_count})")

    def __reduce__(self) -> Any:
        # Delivery state is process-local: a pickled delivery is a plain Message.
        return (_core.Message, (self.topic, self.partition, self.offset, self.timestamp_ms,
                                self.key, self.value, self.headers))
