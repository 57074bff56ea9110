"""A queue group's retry/dead-letter policy is stored with the group (issue 9, part 7).

Before, each ``Queue`` object carried its own ``max_deliveries`` /
``dead_letter_topic`` / ``retry_backoff``: a second consumer created with
``max_deliveries=1`` and no DLQ silently dropped a message the group's
policy would have retried.
"""

from __future__ import annotations

import pytest

import mqlite
from mqlite import Backoff, QueueConfigConflictError, QueuePolicy


@pytest.fixture
def qbroker(broker: mqlite.Broker) -> mqlite.Broker:
    broker.create_topic("jobs")
    return broker


def test_first_consumer_sets_the_policy_and_later_ones_adopt_it(qbroker: mqlite.Broker) -> None:
    with qbroker.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs-dlq",
                       retry_backoff=Backoff.fixed(5.0)) as q1, qbroker.queue("jobs", "w") as q2:
        want = QueuePolicy(3, "jobs-dlq", Backoff.fixed(5.0))
        assert qbroker.queue_policy("jobs", "w") == want
        assert q1.policy == q2.policy == want
        assert (q2.max_deliveries, q2.dead_letter_topic) == (3, "jobs-dlq")


def test_defaults_are_stored_too(qbroker: mqlite.Broker) -> None:
    assert qbroker.queue_policy("jobs", "w") is None
    with qbroker.queue("jobs", "w"):
        assert qbroker.queue_policy("jobs", "w") == QueuePolicy(None, None, None)
        with pytest.raises(QueueConfigConflictError):
            qbroker.queue("jobs", "w", max_deliveries=2)


def test_conflicting_consumer_gets_a_typed_error_naming_the_stored_values(
        qbroker: mqlite.Broker) -> None:
    with qbroker.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs-dlq"):
        with pytest.raises(QueueConfigConflictError) as ei:
            qbroker.queue("jobs", "w", max_deliveries=1, dead_letter_topic=None)
        msg = str(ei.value)
        assert "max_deliveries=3" in msg and "'jobs-dlq'" in msg
        assert "max_deliveries=1" in msg and "set_queue_policy" in msg
        assert isinstance(ei.value, mqlite.GroupError) and isinstance(ei.value, ValueError)
        # the refused consumer changed nothing and created nothing
        assert qbroker.queue_policy("jobs", "w") == QueuePolicy(3, "jobs-dlq", None)
        with pytest.raises(QueueConfigConflictError):
            qbroker.queue("jobs", "w", dead_letter_topic="other-dlq")
        assert "other-dlq" not in qbroker.topics()
        # the same values again are fine (explicit and matching)
        qbroker.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs-dlq").close()


def test_second_consumer_cannot_drop_what_the_group_retries(qbroker: mqlite.Broker) -> None:
    """The defect: q2 (no policy of its own) must follow the group's policy."""
    qbroker.send("jobs", b"m")
    q1 = qbroker.queue("jobs", "w", max_deliveries=2, dead_letter_topic="jobs-dlq")
    q2 = qbroker.queue("jobs", "w")
    try:
        (d,) = q1.receive(timeout=1)
        q1.nack(d)                      # 1st delivery failed: retried, not dead-lettered
        (d,) = q2.receive(timeout=1)
        assert d.value == b"m" and d.delivery_count == 2
        q2.nack(d)                      # 2nd failed: the group's max_deliveries -> DLQ
        assert q1.receive(timeout=0) == []
        assert [m.value for m in qbroker.read("jobs-dlq")] == [b"m"]
    finally:
        q1.close()
        q2.close()


def test_policy_survives_every_consumer_closing(qbroker: mqlite.Broker) -> None:
    qbroker.queue("jobs", "w", max_deliveries=4).close()
    with qbroker.queue("jobs", "w") as q:
        assert q.max_deliveries == 4


def test_set_queue_policy_changes_live_consumers_at_next_receive(qbroker: mqlite.Broker) -> None:
    qbroker.send("jobs", b"m")
    with qbroker.queue("jobs", "w", max_deliveries=5) as q:
        p = qbroker.set_queue_policy("jobs", "w", max_deliveries=1,
                                     dead_letter_topic="jobs-dlq")
        assert p == QueuePolicy(1, "jobs-dlq", None)
        assert "jobs-dlq" in qbroker.topics()
        (d,) = q.receive(timeout=1)
        assert q.max_deliveries == 1
        q.nack(d)
        assert [m.value for m in qbroker.read("jobs-dlq")] == [b"m"]
        # left-out options keep their stored value
        assert qbroker.set_queue_policy("jobs", "w", retry_backoff=2.0) == QueuePolicy(
            1, "jobs-dlq", Backoff.fixed(2.0))
    # a new consumer with the new values is accepted, the old ones are not
    qbroker.queue("jobs", "w", max_deliveries=1).close()
    with pytest.raises(QueueConfigConflictError):
        qbroker.queue("jobs", "w", max_deliveries=5)


def test_set_queue_policy_before_any_consumer(qbroker: mqlite.Broker) -> None:
    qbroker.set_queue_policy("jobs", "w", max_deliveries=2)
    with qbroker.queue("jobs", "w") as q:
        assert q.max_deliveries == 2


def test_policy_is_per_group(qbroker: mqlite.Broker) -> None:
    with qbroker.queue("jobs", "a", max_deliveries=1), \
            qbroker.queue("jobs", "b", max_deliveries=9) as qb:
        assert qb.max_deliveries == 9


@pytest.mark.parametrize("kw, exc", [
    ({"max_deliveries": 0}, ValueError),
    ({"max_deliveries": "3"}, TypeError),
    ({"dead_letter_topic": "jobs"}, ValueError),
    ({"retry_backoff": "5s"}, TypeError),
])
def test_set_queue_policy_validates(qbroker: mqlite.Broker, kw: dict[str, object],
                                    exc: type[Exception]) -> None:
    with pytest.raises(exc):
        qbroker.set_queue_policy("jobs", "w", **kw)  # type: ignore[arg-type]
    assert qbroker.queue_policy("jobs", "w") is None


def test_set_queue_policy_on_missing_topic(qbroker: mqlite.Broker) -> None:
    with pytest.raises(mqlite.TopicNotFoundError):
        qbroker.set_queue_policy("nope", "w", max_deliveries=2)


def test_group_written_before_policies_gets_one_from_its_next_consumer(
        qbroker: mqlite.Broker) -> None:
    import msgspec

    env = qbroker._engine.live_env()
    with qbroker._engine.write() as txn:  # QueueMeta as older versions stored it: no policy field
        txn.put(b"~q~jobs~w", msgspec.msgpack.encode(
            {"topic": "jobs", "consumers": {}, "min_visible_ms": 0}), db=env.dbs["groups"])
    assert qbroker.queue_policy("jobs", "w") is None
    with qbroker.queue("jobs", "w", max_deliveries=2):
        assert qbroker.queue_policy("jobs", "w") == QueuePolicy(2, None, None)
