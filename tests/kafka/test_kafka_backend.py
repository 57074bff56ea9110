"""Kafka-backend specifics: placement parity with the embedded engine, URLs, errors."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import mqlite


def test_10000_keys_land_in_the_same_partitions(kafka_url: str, tmp_path: Path) -> None:
    topic = f"keys-{uuid.uuid4().hex[:8]}"
    keys = [f"customer-{i}".encode() for i in range(9_999)] + [b""]
    with mqlite.open(kafka_url) as kb, mqlite.open(tmp_path / "b") as eb:
        kb.create_topic(topic, 12)
        eb.create_topic(topic, 12)
        with kb.producer() as p:  # through librdkafka's own partitioner (murmur2_random)
            futs = [p.send(topic, b"v", key=k) for k in keys]
            p.flush()
        on_kafka = [f.result().partition for f in futs]
        on_embedded = [md.partition for md in eb.send_batch(topic, [b"v"] * len(keys),
                                                             keys=keys)]
    assert on_kafka == on_embedded
    assert len(set(on_kafka)) == 12


def test_url_and_options_are_checked() -> None:
    pytest.importorskip("confluent_kafka")
    with pytest.raises(ValueError, match="names no broker"):
        mqlite.open("kafka://")
    bad: Any = {1: "x"}
    with pytest.raises(TypeError, match="client_options"):
        mqlite.open("kafka://127.0.0.1:1", client_options=bad)


def test_client_options_refused_for_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="kafka:// URLs"):
        mqlite.open(tmp_path / "b", client_options={"acks": "all"})


def test_unreachable_cluster_times_out_typed() -> None:
    pytest.importorskip("confluent_kafka")
    import mqlite.kafka._client as client

    old = client.REQUEST_TIMEOUT
    client.REQUEST_TIMEOUT = 1.0
    try:
        with mqlite.open("kafka://127.0.0.1:9", client_options={"log_level": 0}) as b, \
                pytest.raises(mqlite.MqliteError):
            b.topics()
    finally:
        client.REQUEST_TIMEOUT = old


def test_wheel_broker_start_is_measured(kafka_server: Any) -> None:
    # the session fixture polls the port and a metadata request with a deadline
    assert kafka_server.start_seconds < 60
    print(f"{kafka_server.kind} answered after {kafka_server.start_seconds:.2f} s")


def test_client_options_cannot_break_the_consumer_contract(kafka_url: str) -> None:
    topic = f"opts-{uuid.uuid4().hex[:8]}"
    opts = {"group.id": "not-mine", "enable.auto.commit": "true", "transactional.id": "tid-1",
            "log_level": 3}
    with mqlite.open(kafka_url, client_options=opts) as b:
        b.create_topic(topic, 1)
        b.send(topic, b"x")  # a plain send is not transactional despite transactional.id
        c = b.consumer(topic, group="mine", commit="manual", session_timeout=6)
        msgs: list[Any] = []
        for _ in range(12):  # up to a minute on a loaded machine
            msgs = msgs or c.poll(timeout=5)
        assert len(msgs) == 1
        assert b.committed_offsets("mine", topic) == {}  # no auto-commit behind our back
        c.commit()
        assert b.committed_offsets("mine", topic) == {0: 1}
        assert b.committed_offsets("not-mine", topic) == {}
        c.close()
        with b.transaction() as tx:  # the transactional id is used here
            tx.send(topic, b"y")
