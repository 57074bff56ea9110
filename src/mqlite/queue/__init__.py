"""Queue mode: competing consumers with per-message acks (SQS / RabbitMQ style).

A queue group reads one topic.  Its durable state (docs/queue.md; byte layouts
in docs/format.md and ``_storage.queues`` / ``_storage.pending``):

* the group record (``groups`` db): live consumers, a lower bound of the
  earliest ``visible_at`` of its pending entries, and the group's retry /
  dead-letter :class:`QueuePolicy`;
* one cursor per partition (``offsets`` db): the next offset never delivered
  to the group;
* pending entries (``pending`` db), one per *delivery range*, not per message:
  a ``receive()`` of 1,000 new messages writes one entry; acks clear bits and
  delete the entry with its last bit.  A message that is nacked, extended or
  dead-lettered alone is split out into an entry of its own, so every message
  keeps its own delivery count, visibility and error.

An entry whose ``visible_at`` has passed (visibility timeout expired, nacked,
or its owner died) is delivered again under a fresh token with its count
raised; at ``max_deliveries`` it moves to the dead-letter topic in the same
transaction that removes it from ``pending``.  Acks and nacks present the
token their delivery was made under, so a late one is refused with
:class:`~mqlite.StaleDeliveryError` and changes nothing.

Modules, by concern (each opens with its contract):

``policy``       QueuePolicy, the group record, queue_policy / set_queue_policy
``deliveries``   Delivery and its receipt
``consumer``     the Queue class, composing the modules below
``receive``      receiving and redelivery
``settle``       ack / nack / extend / dead_letter and the write-back of entries
``deadletters``  the move to the dead-letter topic; dead_letters / redrive / purge
``consumed``     consumed_floor, ``cleanup="consumed"``, topic-deletion hook
``liveness``     lock file, watcher thread, probe and reap of dead consumers
"""

from mqlite.config import UNSET
from mqlite.queue.consumed import consumed_floor as consumed_floor
from mqlite.queue.consumer import Queue
from mqlite.queue.deadletters import H_COUNT as H_COUNT
from mqlite.queue.deadletters import H_ERROR as H_ERROR
from mqlite.queue.deadletters import H_FIRST as H_FIRST
from mqlite.queue.deadletters import H_GROUP as H_GROUP
from mqlite.queue.deadletters import H_LAST as H_LAST
from mqlite.queue.deadletters import H_OFFSET as H_OFFSET
from mqlite.queue.deadletters import H_PARTITION as H_PARTITION
from mqlite.queue.deadletters import H_REASON as H_REASON
from mqlite.queue.deadletters import H_TIME as H_TIME
from mqlite.queue.deadletters import H_TOPIC as H_TOPIC
from mqlite.queue.deadletters import REASON_MAX_DELIVERIES as REASON_MAX_DELIVERIES
from mqlite.queue.deadletters import (
    DeadLetter,
    DeadLetterCursor,
    DeadLetterFilter,
    dead_letter_filter,
    dead_letters,
    purge_dead_letters,
    redrive,
)
from mqlite.queue.deliveries import Delivery
from mqlite.queue.liveness import ERROR_OWNER_DIED as ERROR_OWNER_DIED
from mqlite.queue.policy import QueueMeta as QueueMeta
from mqlite.queue.policy import QueuePolicy, queue_policy, set_queue_policy
from mqlite.queue.receive import ERROR_TIMEOUT as ERROR_TIMEOUT

# The ``X as X`` names stay importable from here as before the split, outside __all__.
__all__ = ["UNSET", "DeadLetter", "DeadLetterCursor", "DeadLetterFilter", "Delivery", "Queue",
           "QueuePolicy", "dead_letter_filter", "dead_letters",
           "purge_dead_letters", "queue_policy", "redrive", "set_queue_policy"]
