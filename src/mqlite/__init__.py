"""mqlite: an embedded, durable message broker for Python.

Kafka-style partitioned logs and consumer groups, SQS/RabbitMQ-style queues
with acks, retries and dead letters, and exchanges, in one LMDB environment
shared safely by the processes of one machine.  No server.

>>> import mqlite
>>> with mqlite.open("data/") as broker:            # doctest: +SKIP
...     broker.create_topic("orders", partitions=3)
...     broker.send("orders", b"hello", key=b"k")
"""

from mqlite._core import Message
from mqlite.app import App, Context, Reject, Retry
from mqlite.broker import Broker, open
from mqlite.config import TopicConfig
from mqlite.consumer import Consumer
from mqlite.errors import (
    AlreadyProcessedError,
    BrokerDirectoryError,
    CancelledError,
    ClosedError,
    CommitFailedError,
    ConcurrentAccessError,
    CorruptRecordError,
    ExchangeExistsError,
    ExchangeNotFoundError,
    GroupError,
    InvalidTopicError,
    MessageTooLargeError,
    MqliteError,
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
from mqlite.queue import DeadLetter, Delivery, Queue, QueuePolicy
from mqlite.retry import Backoff
from mqlite.routing import Binding
from mqlite.transaction import Transaction
from mqlite.types import (
    BatchMetadata,
    OffsetAndTimestamp,
    PartitionInfo,
    PartitionRange,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyProcessedError",
    "App",
    "Backoff",
    "BatchMetadata",
    "Binding",
    "Broker",
    "BrokerDirectoryError",
    "CancelledError",
    "ClosedError",
    "CommitFailedError",
    "ConcurrentAccessError",
    "Consumer",
    "Context",
    "CorruptRecordError",
    "DeadLetter",
    "Delivery",
    "ExchangeExistsError",
    "ExchangeNotFoundError",
    "GroupDescription",
    "GroupError",
    "InvalidTopicError",
    "Message",
    "MessageTooLargeError",
    "MqliteError",
    "OffsetAndTimestamp",
    "OffsetOutOfRangeError",
    "PartitionInfo",
    "PartitionNotFoundError",
    "PartitionRange",
    "Producer",
    "Queue",
    "QueueConfigConflictError",
    "QueuePolicy",
    "RecordMetadata",
    "Reject",
    "Retry",
    "RoundRobinPartitioner",
    "SendFuture",
    "StaleDeliveryError",
    "StickyPartitioner",
    "StorageError",
    "StorageFullError",
    "TimeoutError",
    "TopicConfig",
    "TopicDescription",
    "TopicError",
    "TopicExistsError",
    "TopicNotFoundError",
    "TopicPartition",
    "Transaction",
    "UnroutableError",
    "__version__",
    "open",
]
