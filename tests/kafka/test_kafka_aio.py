"""``mqlite.aio.open("kafka://...")``: the asyncio stream API on the Kafka backend."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

import mqlite
import mqlite.aio
from mqlite import TopicPartition as TP
from mqlite.aio.kafka import AsyncKafkaBroker, AsyncKafkaConsumer

OPTS = {"log_level": 3}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _poll_n(consumer: Any, n: int, deadline: float = 60.0) -> list[mqlite.Message]:
    out: list[mqlite.Message] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while len(out) < n and loop.time() < end:
        out.extend(await consumer.poll(timeout=1.0))
    return out


def test_send_produce_consume_commit_seek(kafka_url: str) -> None:
    topic = _name("aio")

    async def main() -> None:
        async with mqlite.aio.open(kafka_url, client_options=OPTS) as b:
            assert isinstance(b, AsyncKafkaBroker)
            await b.create_topic(topic, 3)
            assert topic in await b.topics()
            assert await b.partitions_for(topic) == 3
            md = await b.send(topic, b"first", key=b"k1", headers=[("h", b"x")])
            assert md.topic == topic and md.offset == 0
            batch = await b.send_batch(topic, [b"b1", b"b2"], keys=[b"k1", b"k1"])
            assert [m.partition for m in batch] == [md.partition, md.partition]
            p = b.producer(linger_ms=5)
            mds = await asyncio.gather(*(p.send(topic, b"v%d" % i, key=b"k%d" % (i % 7))
                                         for i in range(200)))
            assert len({(m.partition, m.offset) for m in mds}) == 200
            await p.close()
            assert (await b.describe_topic(topic)).messages == 203

            c = b.consumer(topic, group=_name("g"), commit="manual")
            got = await _poll_n(c, 203)
            assert len(got) == 203
            first = next(m for m in got if m.value == b"first")
            assert first.key == b"k1" and first.headers == [("h", b"x")]
            await c.commit()
            tp = TP(topic, md.partition)
            assert await c.committed(tp) == await c.position(tp)
            assert sum((await c.lag()).values()) == 0
            await c.seek(tp, 1)
            again = await _poll_n(c, 1)
            assert again[0].offset == 1 and again[0].value == b"b1"
            await c.close()
            await c.close()
            with pytest.raises(mqlite.ClosedError):
                await c.poll()

    asyncio.run(main())


def test_cancelled_poll_loses_nothing(kafka_url: str) -> None:
    topic = _name("aio-cancel")

    async def main() -> None:
        async with mqlite.aio.open(kafka_url, client_options=OPTS) as b:
            await b.create_topic(topic, 1)
            c = b.consumer(topic)
            assert isinstance(c, AsyncKafkaConsumer)
            await c.start()
            waiting = asyncio.ensure_future(c.poll(timeout=30.0))
            await asyncio.sleep(0)  # let the poll start waiting in the consumer's thread
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await b.send_batch(topic, [b"a", b"b", b"c"])
            got = await _poll_n(c, 3)
            assert [m.value for m in got] == [b"a", b"b", b"c"]

    asyncio.run(main())


def test_transaction_commits_sends_and_offsets_together(kafka_url: str) -> None:
    src, dst, group = _name("tx-src"), _name("tx-dst"), _name("tx-g")

    async def main() -> None:
        async with mqlite.aio.open(kafka_url, client_options=OPTS) as b:
            await b.create_topic(src, 1)
            await b.create_topic(dst, 1)
            await b.send_batch(src, [b"1", b"2"])
            c = b.consumer(src, group=group, commit="manual")
            msgs = await _poll_n(c, 2)
            with pytest.raises(RuntimeError):
                async with b.transaction() as tx:
                    tx.send(dst, b"never")
                    tx.commit_offsets(c)
                    raise RuntimeError("handler failed")
            assert await c.committed(TP(src, 0)) is None
            async with b.transaction() as tx:
                fut = tx.send(dst, b"doubled:" + b"".join(m.value or b"" for m in msgs))
                tx.commit_offsets(c)
            assert (await fut).topic == dst
            assert await c.committed(TP(src, 0)) == 2
            reader = b.consumer(dst)
            out = await _poll_n(reader, 1)
            assert [m.value for m in out] == [b"doubled:12"]
            assert await reader.poll(timeout=0.3) == []  # the aborted send is invisible

    asyncio.run(main())


def test_kafka_lacks_raise_not_supported(kafka_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with mqlite.aio.open(kafka_url, client_options=OPTS) as b:
            with pytest.raises(mqlite.NotSupportedError, match="consumer"):
                b.queue("t", "g")
            with pytest.raises(mqlite.NotSupportedError):
                await b.send("t", b"v", delay=1.0)
            with pytest.raises(mqlite.NotSupportedError):
                await b.declare_exchange("x")
            with pytest.raises(mqlite.TopicNotFoundError):
                await b.send(_name("missing"), b"v")
            c = b.consumer(_name("missing"), group="g")
            with pytest.raises(mqlite.TopicNotFoundError):
                await c.poll(timeout=0.1)
        with pytest.raises(TypeError, match="kafka://"):
            mqlite.aio.open(tmp_path / "b", client_options={"acks": "all"})
        with pytest.raises(ValueError, match="names no broker"):
            mqlite.aio.open("kafka://")

    asyncio.run(main())
