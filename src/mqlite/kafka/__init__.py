"""The Kafka backend: the stream API of :mod:`mqlite` on a Kafka cluster.

``mqlite.open("kafka://host:9092")`` returns a :class:`KafkaBroker`.  Needs
the ``kafka`` extra (``pip install 'mqlite[kafka]'``: confluent-kafka).
See docs/scale-out.md for what maps to what and what Kafka lacks.
"""

from __future__ import annotations

from mqlite.kafka.broker import KafkaBroker, open
from mqlite.kafka.consumer import KafkaConsumer
from mqlite.kafka.producer import KafkaFuture, KafkaProducer
from mqlite.kafka.transaction import KafkaTransaction

__all__ = ["KafkaBroker", "KafkaConsumer", "KafkaFuture", "KafkaProducer", "KafkaTransaction", "open"]
