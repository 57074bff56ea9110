"""Exchanges behave as RabbitMQ's do: its own test tables, replayed on mqlite.

Topic: ``test_topic_matching`` of rabbitmq-server's unit tests (26 bindings,
11 routing keys) and the topic tutorial's examples; words holding ``*`` or
``#`` among other characters are literal.  Headers: the semantics of
``rabbit_exchange_type_headers`` (``x-`` binding keys skipped unless
``all-with-x`` / ``any-with-x``; empty bindings match all under ``all`` and
nothing under ``any``).  Deliberate differences are in the docs
(README "Exchanges and transactions", docs/decisions.md D22).
"""

from __future__ import annotations

import pytest
from _reference_routing import topic_matches_ref
from hypothesis import given
from hypothesis import strategies as st

import mqlite
from mqlite.routing import headers_match, topic_matches

# rabbitmq-server unit test test_topic_matching: binding key per queue t1..t26.
RABBIT_BINDINGS = {
    "t1": "a.b.c", "t2": "a.*.c", "t3": "a.#.b", "t4": "a.b.b.c", "t5": "#", "t6": "#.#",
    "t7": "#.b", "t8": "*.*", "t9": "a.*", "t10": "*.b.c", "t11": "a.#", "t12": "a.#.#",
    "t13": "b.b.c", "t14": "a.b.b", "t15": "a.b", "t16": "b.c", "t17": "", "t18": "*.*.*",
    "t19": "vodka.martini", "t20": "a.b.c", "t21": "*.#", "t22": "#.*.#", "t23": "*.#.#",
    "t24": "#.#.#", "t25": "*", "t26": "#.b.#",
}
RABBIT_MATCHES = {
    "a.b.c": "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26",
    "a.b": "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26",
    "a.b.b": "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26",
    "": "t5 t6 t17 t24",
    "b.c.c": "t5 t6 t18 t21 t22 t23 t24 t26",
    "a.a.a.a.a": "t5 t6 t11 t12 t21 t22 t23 t24",
    "vodka.gin": "t5 t6 t8 t21 t22 t23 t24",
    "vodka.martini": "t5 t6 t8 t19 t21 t22 t23 t24",
    "b.b.c": "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26",
    "nothing.here.at.all": "t5 t6 t21 t22 t23 t24",
    "oneword": "t5 t6 t21 t22 t23 t24 t25",
}


@pytest.mark.parametrize("key", sorted(RABBIT_MATCHES))
def test_rabbitmq_topic_matching_table(key: str) -> None:
    got = {q for q, pattern in RABBIT_BINDINGS.items() if topic_matches(pattern, key)}
    assert got == set(RABBIT_MATCHES[key].split())


def test_rabbitmq_tutorial_five_examples() -> None:
    q1, q2 = ["*.orange.*"], ["*.*.rabbit", "lazy.#"]
    cases = {
        "quick.orange.rabbit": (True, True), "lazy.orange.elephant": (True, True),
        "quick.orange.fox": (True, False), "lazy.brown.fox": (False, True),
        "lazy.pink.rabbit": (False, True), "quick.brown.fox": (False, False),
        "orange": (False, False), "quick.orange.new.rabbit": (False, False),
        "lazy.orange.new.rabbit": (False, True), "quick.orange.male.rabbit": (False, False),
    }
    for key, (in1, in2) in cases.items():
        assert any(topic_matches(p, key) for p in q1) == in1, key
        assert any(topic_matches(p, key) for p in q2) == in2, key


@pytest.mark.parametrize("pattern,key,expected", [
    ("a.b#.c", "a.b#.c", True),
    ("a.b#.c", "a.b.c", False),
    ("a.b#.c", "a.bx.c", False),
    ("a.b#.c", "a.b.x.c", False),
    ("*x", "*x", True),
    ("*x", "ax", False),
    ("a.#b", "a.#b", True),
    ("a.#b", "a.c.b", False),
    ("a.**", "a.**", True),
    ("a.**", "a.b", False),
    ("##", "##", True),
    ("##", "a", False),
])
def test_words_with_wildcards_inside_are_literal(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
    assert topic_matches_ref(pattern, key) is expected


words = st.sampled_from(["a", "b", "*", "#", "a#", "*b", "##", ""])


@given(pw=st.lists(words, max_size=5), kw=st.lists(words, max_size=5))
def test_matcher_agrees_with_reference_on_mixed_words(pw: list[str], kw: list[str]) -> None:
    assert topic_matches(".".join(pw), ".".join(kw)) == topic_matches_ref(".".join(pw),
                                                                            ".".join(kw))


@pytest.fixture
def broker(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        for t in ("lit", "wild", "h-all", "h-any", "h-empty-all", "h-empty-any", "h-x", "h-void"):
            b.create_topic(t)
        yield b


def test_topic_exchange_accepts_and_matches_literal_wildcard_words(broker) -> None:
    broker.declare_exchange("t", "topic")
    broker.bind("t", "lit", routing_key="a.b#.c")
    broker.bind("t", "wild", routing_key="a.#")
    assert sorted(m.topic for m in broker.publish("t", "a.b#.c", b"1")) == ["lit", "wild"]
    assert [m.topic for m in broker.publish("t", "a.b.c", b"2")] == ["wild"]
    broker.unbind("t", "lit", routing_key="a.b#.c")
    assert [m.topic for m in broker.publish("t", "a.b#.c", b"3")] == ["wild"]


# -- headers ----------------------------------------------------------------------------------

H = [("format", b"pdf"), ("x-tenant", b"acme")]


@pytest.mark.parametrize("want,match,headers,expected", [
    # x- binding keys are ignored by all / any ...
    ({"format": b"pdf", "x-tenant": b"other"}, "all", H, True),
    ({"x-tenant": b"acme"}, "any", H, False),           # nothing left to compare
    ({"x-tenant": b"acme", "format": b"pdf"}, "any", H, True),
    # ... and compared by all-with-x / any-with-x
    ({"format": b"pdf", "x-tenant": b"other"}, "all-with-x", H, False),
    ({"format": b"pdf", "x-tenant": b"acme"}, "all-with-x", H, True),
    ({"x-tenant": b"acme"}, "any-with-x", H, True),
    ({"x-tenant": b"other", "format": b"doc"}, "any-with-x", H, False),
    # empty bindings: all matches every message, any none (RabbitMQ's fold)
    ({}, "all", None, True), ({}, "all", H, True),
    ({}, "any", None, False), ({}, "any", H, False),
    ({}, "all-with-x", H, True), ({}, "any-with-x", H, False),
    # None = present with any value (RabbitMQ's void field)
    ({"format": None}, "all", H, True), ({"size": None}, "all", H, False),
    ({"size": None, "format": None}, "any", H, True),
    # a missing header fails all; any needs one equal value
    ({"format": b"pdf", "size": b"a4"}, "all", H, False),
    ({"format": b"doc", "size": b"a4"}, "any", H, False),
    # a repeated message header matches on any of its values
    ({"lang": b"en"}, "all", [("lang", b"fr"), ("lang", b"en")], True),
    ({"format": b"pdf"}, "all", None, False),
])
def test_headers_match_semantics(want, match, headers, expected) -> None:
    assert headers_match(want, match, headers) is expected


def test_headers_exchange_bindings_through_the_broker(broker) -> None:
    broker.declare_exchange("h", "headers")
    broker.bind("h", "h-all", headers={"format": "pdf", "x-tenant": "other"}, match="all")
    broker.bind("h", "h-any", headers={"x-tenant": "acme"}, match="any")
    broker.bind("h", "h-empty-all", headers={})
    broker.bind("h", "h-empty-any", match="any")
    broker.bind("h", "h-x", headers={"x-tenant": "acme"}, match="any-with-x")
    broker.bind("h", "h-void", headers={"size": None}, match="all")
    got = broker.publish("h", "", b"1", headers=[("format", b"pdf"), ("x-tenant", b"acme")])
    assert sorted(m.topic for m in got) == ["h-all", "h-empty-all", "h-x"]
    got = broker.publish("h", "", b"2")
    assert [m.topic for m in got] == ["h-empty-all"]
    got = broker.publish("h", "", b"3", headers={"size": b""})
    assert sorted(m.topic for m in got) == ["h-empty-all", "h-void"]
    broker.unbind("h", "h-empty-all")  # headers=None is the empty binding
    broker.unbind("h", "h-x", headers={"x-tenant": "acme"}, match="any-with-x")
    got = broker.publish("h", "", b"4", headers=[("x-tenant", b"acme")])
    assert got == []


def test_headers_binding_argument_errors(broker) -> None:
    broker.declare_exchange("h", "headers")
    with pytest.raises(ValueError, match="match must be one of"):
        broker.bind("h", "h-all", headers={"a": "b"}, match="some")
    with pytest.raises(ValueError, match="x-match"):
        broker.bind("h", "h-all", headers={"x-match": "any", "a": "b"})
    with pytest.raises(TypeError):
        broker.bind("h", "h-all", headers=[("a", "b")])
    with pytest.raises(TypeError):
        broker.bind("h", "h-all", headers={"a": 5})
