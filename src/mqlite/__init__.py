"""mqlite: an embedded, durable message broker for Python.

Kafka-style partitioned logs and consumer groups, SQS/RabbitMQ-style queues
with acks, retries and dead letters, and exchanges, in one LMDB environment
shared safely by the processes of one machine.  No server.

>>> import mqlite
>>> with mqlite.open("data/") as broker:            # doctest: +SKIP
...     broker.create_topic("orders", partitions=3)
...     broker.send("orders", b"hello", key=b"k")
"""

from typing import TYPE_CHECKING, Any

from mqlite._core import Message
from mqlite.broker import Broker, open
from mqlite.config import TopicConfig
from mqlite.consumer import Consumer
from mqlite.errors import (
    AlreadyProcessedError,
    BackendError,
    BrokerDirectoryError,
    CancelledError,
    ClosedError,
    CommitFailedError,
    ConcurrentAccessError,
    CorruptRecordError,
    ExchangeExistsError,
    ExchangeNotFoundError,
    GroupActiveError,
    GroupError,
    InvalidTopicError,
    MessageTooLargeError,
    MqliteError,
    NotSupportedError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    QueueConfigConflictError,
    StaleDeliveryError,
    StorageError,
    StorageFullError,
    TimeoutError,
    TopicError,
    TopicExistsError,
    TopicNotFoundError,
    UnroutableError,
)
from mqlite.future import SendFuture
from mqlite.groups import GroupDescription
from mqlite.partitioner import RoundRobinPartitioner, StickyPartitioner
from mqlite.producer import Producer
from mqlite.queue import (
    DeadLetter,
    DeadLetterCursor,
    DeadLetterFilter,
    Delivery,
    Queue,
    QueuePolicy,
)
from mqlite.retry import Backoff
from mqlite.routing import Binding
from mqlite.transaction import Transaction
from mqlite.types import (
    BatchMetadata,
    BrokerStats,
    GroupLag,
    GroupStats,
    OffsetAndTimestamp,
    PartitionInfo,
    PartitionRange,
    PartitionStats,
    QueueStats,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicPartitionLike,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mqlite import aio as aio
    from mqlite.app import App, Context, Reject, Retry, Tick, TimeLimitExceeded

#: Names imported on first use, so ``import mqlite`` does not pay for asyncio and the
#: service framework (PEP 562).
_LAZY = {"App": "mqlite.app", "Context": "mqlite.app", "Reject": "mqlite.app",
         "Retry": "mqlite.app", "Tick": "mqlite.app",
         "TimeLimitExceeded": "mqlite.app"}


def __getattr__(name: str) -> Any:
    # ``mqlite.aio`` is imported on first use, so ``import mqlite`` does not pay for asyncio
    import importlib

    if name == "aio":
        return importlib.import_module("mqlite.aio")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mqlite' has no attribute {name!r}")


__all__ = [
    "AlreadyProcessedError",
    "App",
    "BackendError",
    "Backoff",
    "BatchMetadata",
    "Binding",
    "Broker",
    "BrokerDirectoryError",
    "BrokerStats",
    "CancelledError",
    "ClosedError",
    "CommitFailedError",
    "ConcurrentAccessError",
    "Consumer",
    "Context",
    "CorruptRecordError",
    "DeadLetter",
    "DeadLetterCursor",
    "DeadLetterFilter",
    "Delivery",
    "ExchangeExistsError",
    "ExchangeNotFoundError",
    "GroupActiveError",
    "GroupDescription",
    "GroupError",
    "GroupLag",
    "GroupStats",
    "InvalidTopicError",
    "Message",
    "MessageTooLargeError",
    "MqliteError",
    "NotSupportedError",
    "OffsetAndTimestamp",
    "OffsetOutOfRangeError",
    "PartitionInfo",
    "PartitionNotFoundError",
    "PartitionRange",
    "PartitionStats",
    "Producer",
    "Queue",
    "QueueConfigConflictError",
    "QueuePolicy",
    "QueueStats",
    "RecordMetadata",
    "Reject",
    "Retry",
    "RoundRobinPartitioner",
    "SendFuture",
    "StaleDeliveryError",
    "StickyPartitioner",
    "StorageError",
    "StorageFullError",
    "Tick",
    "TimeLimitExceeded",
    "TimeoutError",
    "TopicConfig",
    "TopicDescription",
    "TopicError",
    "TopicExistsError",
    "TopicNotFoundError",
    "TopicPartition",
    "TopicPartitionLike",
    "Transaction",
    "UnroutableError",
    "__version__",
    "aio",
    "open",
]
