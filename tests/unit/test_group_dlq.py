"""A stream group's dead-letter topic, recorded in its group record (D87):
``Broker.set_group_dead_letter_topic``, ``GroupStats`` / ``describe_group``, the
metrics route family, and the record's compatibility with code before D87."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import mqlite
from mqlite._storage import groups as _sgroups
from mqlite.groups.state import GroupState
from mqlite.metrics import render, stats_families


@pytest.fixture
def b(tmp_broker_dir: Path) -> mqlite.Broker:
    broker = mqlite.open(str(tmp_broker_dir), durability="none")
    broker.create_topic("orders", 2)
    broker.create_topic("refunds")
    broker.create_topic("orders.dlq")
    return broker


def _dead_letter(b: mqlite.Broker, n: int) -> None:
    """``n`` letters in ``orders.dlq`` (through a queue group's dead-letter move)."""
    b.send_batch("refunds", [b"r%d" % i for i in range(n)])
    q = b.queue("refunds", "mover", max_deliveries=1, dead_letter_topic="orders.dlq")
    got = q.receive(max_messages=n, timeout=5.0)
    assert len(got) == n
    q.dead_letter(got, reason="boom")
    q.close()


def test_record_is_per_topic_last_writer_wins_and_none_forgets(b: mqlite.Broker) -> None:
    assert b.set_group_dead_letter_topic("pay", "orders", "orders.dlq") == \
        {"orders": "orders.dlq"}
    # another subscriber of the same group, on another topic: both kept
    assert b.set_group_dead_letter_topic("pay", ["refunds"], "refunds.dlq") == \
        {"orders": "orders.dlq", "refunds": "refunds.dlq"}
    # a newer version of the first subscriber: its topic's entry replaced
    assert b.set_group_dead_letter_topic("pay", ["orders"], "orders.dlq2") == \
        {"orders": "orders.dlq2", "refunds": "refunds.dlq"}
    # a subscriber without dead_letter= forgets its topics' entries only
    assert b.set_group_dead_letter_topic("pay", ["refunds"], None) == {"orders": "orders.dlq2"}
    assert b.describe_group("pay").dead_letter_topics == {"orders": "orders.dlq2"}
    # forgetting in a group that has no record creates none
    assert b.set_group_dead_letter_topic("nobody", ["orders"], None) == {}
    assert "nobody" not in b.groups()
    # recording one creates the (empty) group record, so the group is listed
    assert "pay" in b.groups()


def test_bad_arguments_are_clear_errors_before_any_write(b: mqlite.Broker) -> None:
    with pytest.raises(ValueError, match="topics is empty"):
        b.set_group_dead_letter_topic("pay", [], "orders.dlq")
    with pytest.raises(TypeError, match="topic name or a list"):
        b.set_group_dead_letter_topic("pay", 7, "orders.dlq")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dead_letter_topic must be a topic name or None"):
        b.set_group_dead_letter_topic("pay", "orders", b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.set_group_dead_letter_topic("pay", "orders", "bad/name")
    with pytest.raises(ValueError):
        b.set_group_dead_letter_topic("bad group", "orders", "orders.dlq")
    assert b.groups() == []


def test_membership_changes_keep_the_record_and_stats_show_it(b: mqlite.Broker) -> None:
    b.set_group_dead_letter_topic("pay", "orders", "orders.dlq")
    _dead_letter(b, 3)
    c = b.consumer("orders", group="pay")
    c.poll(timeout=0.01)  # joins: the record is rewritten by the join
    c2 = b.consumer("orders", group="pay")
    c2.poll(timeout=0.01)
    c2.close()  # a leave, another rewrite
    st = b.stats()
    (g,) = st.groups
    assert g.members == 1 and g.dead_letter_topics == {"orders": "orders.dlq"}
    assert g.dead_letters == 3
    # the DLQ depth is in BrokerStats.dead_letters without naming it (the metrics card)
    assert st.dead_letters["orders.dlq"] == 3
    c.close()
    (g,) = b.stats().groups
    assert g.members == 0 and g.dead_letter_topics == {"orders": "orders.dlq"}


def test_metrics_route_family(b: mqlite.Broker) -> None:
    b.set_group_dead_letter_topic("pay", "orders", "orders.dlq")
    _dead_letter(b, 1)
    text = render(stats_families(b.stats())).decode()
    assert 'mqlite_consumer_group_dead_letter_info{group="pay",topic="orders",' \
        'dead_letter_topic="orders.dlq"} 1' in text
    # queue groups' policies too
    assert 'mqlite_consumer_group_dead_letter_info{group="mover",topic="refunds",' \
        'dead_letter_topic="orders.dlq"} 1' in text
    assert 'mqlite_dead_letter_messages{topic="orders.dlq"} 1' in text


class _OldGroupState(msgspec.Struct):
    """``GroupState`` as it was before D87 (the field list of that release)."""

    generation: int = 0
    assignor: str = "range"
    members: dict[str, msgspec.Raw] = {}
    assignment: dict[str, list[tuple[str, int]]] = {}
    owners: dict[str, str] = {}


def test_record_is_compatible_with_code_before_it_both_ways(b: mqlite.Broker) -> None:
    b.set_group_dead_letter_topic("pay", "orders", "orders.dlq")
    c = b.consumer("orders", group="pay")
    c.poll(timeout=0.01)
    env = b._engine.env
    with env.read_txn() as txn:
        raw = _sgroups.get(txn, env.dbs, "pay")
    assert raw is not None
    # code before D87 decodes the new record, ignoring the new field
    old = msgspec.msgpack.decode(raw, type=_OldGroupState)
    new = msgspec.msgpack.decode(raw, type=GroupState)
    assert (old.generation, old.assignor, sorted(old.members), old.owners) == \
        (new.generation, new.assignor, sorted(new.members), new.owners)
    # a record written before D87 decodes with no dead-letter topics
    before = msgspec.msgpack.encode(old)
    assert msgspec.msgpack.decode(before, type=GroupState).dead_letter_topics == {}
    c.close()
