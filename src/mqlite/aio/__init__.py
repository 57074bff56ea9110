"""mqlite for asyncio: the same names as the synchronous API, as coroutines.

::

    async with mqlite.aio.open("data/", durability="sync") as broker:
        await broker.create_topic("orders", partitions=6)
        md = await broker.send("orders", b"v", key=b"k")
        consumer = broker.consumer("orders", group="payments")
        msgs = await consumer.poll(max_records=500, timeout=1.0)
        await consumer.commit()
        async for msg in consumer: ...
        queue = broker.queue("emails", group="mailers")
        for d in await queue.receive(max_messages=10, timeout=1.0):
            await d.ack()
        producer = broker.producer()
        await producer.send("orders", b"v")        # resolves at commit
        async with broker.transaction() as tx: ...

How it runs (docs/asyncio.md, docs/decisions.md D26): storage work that can
block (write transactions and their fsync, opening) runs in a few worker
threads per broker handle; small reads may run inline; waiting for new
messages holds no thread per wait: a loop's waits share one doorbell (a
futex word in ``bells.shm`` that writers in any process ring when they bump a
word the loop waits on) and one thread that hands its rings to the loop.
Semantics and errors are those of the synchronous API.
"""

from mqlite.aio.broker import AsyncBroker, open
from mqlite.aio.consumer import AsyncConsumer
from mqlite.aio.producer import AsyncProducer
from mqlite.aio.queue import AsyncDelivery, AsyncQueue
from mqlite.aio.transaction import AsyncTransaction

__all__ = ["AsyncBroker", "AsyncConsumer", "AsyncDelivery", "AsyncProducer", "AsyncQueue",
           "AsyncTransaction", "open"]
