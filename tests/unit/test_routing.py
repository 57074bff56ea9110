"""Exchanges: direct, fanout, topic (word-by-word matching), headers, alternates."""

from __future__ import annotations

import pytest
from _reference_routing import topic_matches_ref
from hypothesis import given, settings
from hypothesis import strategies as st

import mqlite
from mqlite.routing import topic_matches


@pytest.fixture
def broker(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        for t in ("audit", "us", "all", "pdf", "any-pdf", "fallback", "direct-a", "direct-b"):
            b.create_topic(t)
        yield b


def _values(b, topic):
    return [m.value for m in b.consumer(topic).poll(timeout=0)]


@pytest.mark.parametrize(
    "pattern,key,expected",
    [
        ("order.*", "order.created", True),
        ("order.*", "order.us.created", False),
        ("order.#", "order.us.created", True),
        ("order.#", "order", True),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("*", "", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("#.c", "c", True),
        ("a.b", "a.b.c", False),
        # a regex translation would match these; word matching must not
        ("a.b", "axb", False),
        ("order.*", "orderXcreated", False),
    ],
)
def test_topic_matcher_table(pattern, key, expected):
    assert topic_matches(pattern, key) is expected
    assert topic_matches_ref(pattern, key) is expected


_words = st.sampled_from(["a", "b", "c", "order", "us"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_words, st.just("*"), st.just("#")), max_size=6),
       st.lists(_words, max_size=6))
def test_topic_matcher_matches_reference(pw, kw):
    pattern, key = ".".join(pw), ".".join(kw)
    assert topic_matches(pattern, key) == topic_matches_ref(pattern, key)


def test_topic_exchange_routes_to_every_match_once(broker):
    broker.declare_exchange("events", "topic")
    broker.bind("events", "audit", routing_key="order.#")
    broker.bind("events", "us", routing_key="*.us.*")
    broker.bind("events", "audit", routing_key="#")  # second binding, same topic
    mds = broker.publish("events", "order.us.created", b"v1")
    assert sorted(md.topic for md in mds) == ["audit", "us"]
    assert _values(broker, "audit") == [b"v1"]
    assert broker.publish("events", "user.eu.created", b"v2")[0].topic == "audit"
    assert _values(broker, "us") == [b"v1"]


def test_direct_and_fanout(broker):
    broker.declare_exchange("d", "direct")
    broker.bind("d", "direct-a", routing_key="a")
    broker.bind("d", "direct-b", routing_key="b")
    assert [m.topic for m in broker.publish("d", "a", b"x")] == ["direct-a"]
    assert broker.publish("d", "c", b"x") == []
    broker.declare_exchange("f", "fanout")
    broker.bind("f", "direct-a")
    broker.bind("f", "direct-b")
    assert sorted(m.topic for m in broker.publish("f", "ignored", b"y")) == ["direct-a", "direct-b"]
    assert _values(broker, "direct-a") == [b"x", b"y"]


def test_headers_exchange_all_and_any(broker):
    broker.declare_exchange("reports", "headers")
    broker.bind("reports", "pdf", headers={"format": "pdf", "priority": "high"}, match="all")
    broker.bind("reports", "any-pdf", headers={"format": "pdf", "priority": "high"}, match="any")
    got = broker.publish("reports", "", b"1", headers=[("format", b"pdf")])
    assert [m.topic for m in got] == ["any-pdf"]
    got = broker.publish("reports", "", b"2", headers=[("priority", b"high"), ("format", b"pdf")])
    assert sorted(m.topic for m in got) == ["any-pdf", "pdf"]
    assert broker.publish("reports", "", b"3", headers=[("format", b"doc")]) == []


def test_alternate_exchange_and_mandatory(broker):
    broker.declare_exchange("ae", "fanout")
    broker.bind("ae", "fallback")
    broker.declare_exchange("main", "direct", alternate_exchange="ae")
    got = broker.publish("main", "nothing-bound", b"lost?")
    assert [m.topic for m in got] == ["fallback"]
    broker.declare_exchange("strict", "direct")
    with pytest.raises(mqlite.UnroutableError):
        broker.publish("strict", "x", b"v", mandatory=True)
    assert broker.publish("strict", "x", b"v") == []


def test_publish_is_atomic_across_topics(broker):
    broker.create_topic("small", max_message_bytes=10)
    broker.declare_exchange("f", "fanout")
    broker.bind("f", "audit")
    broker.bind("f", "small")
    with pytest.raises(mqlite.MessageTooLargeError):
        broker.publish("f", "", b"x" * 100)
    assert _values(broker, "audit") == []  # nothing written anywhere


def test_bad_declarations(broker):
    with pytest.raises(ValueError):
        broker.declare_exchange("x", "bogus")
    with pytest.raises(mqlite.InvalidTopicError):
        broker.declare_exchange("../x", "direct")
    broker.declare_exchange("t", "topic")
    broker.declare_exchange("t", "topic")  # idempotent
    with pytest.raises(mqlite.ExchangeExistsError):
        broker.declare_exchange("t", "direct")
    with pytest.raises(mqlite.ExchangeNotFoundError):
        broker.bind("missing", "audit", routing_key="a")
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.bind("t", "missing-topic", routing_key="a")
    with pytest.raises(ValueError):
        broker.bind("t", "audit")  # topic exchange needs a routing key
    broker.bind("t", "audit", routing_key="a.b*")  # a literal word, as in RabbitMQ
    with pytest.raises(TypeError):
        broker.publish("t", "a", "not bytes")
    with pytest.raises(TypeError):
        broker.publish("t", 5, b"v")


def test_unbind_delete_and_topic_deletion_drop_bindings(broker):
    broker.declare_exchange("f", "fanout")
    broker.bind("f", "audit")
    broker.bind("f", "us")
    broker.unbind("f", "us")
    assert [m.topic for m in broker.publish("f", "", b"1")] == ["audit"]
    with pytest.raises(ValueError):
        broker.unbind("f", "us")
    broker.delete_topic("audit")
    assert broker.publish("f", "", b"2") == []
    assert "f" in broker.exchanges()
    broker.delete_exchange("f")
    assert "f" not in broker.exchanges()
    with pytest.raises(mqlite.ExchangeNotFoundError):
        broker.publish("f", "", b"3")


def test_bindings_survive_reopen(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("audit")
        b.declare_exchange("events", "topic")
        b.bind("events", "audit", routing_key="order.*")
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert [m.topic for m in b.publish("events", "order.paid", b"v")] == ["audit"]
