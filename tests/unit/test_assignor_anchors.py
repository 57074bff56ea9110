"""Assignors against Kafka's behaviour: member order with instance ids, per-topic spread.

Kafka (``AbstractPartitionAssignor.MemberInfo.compareTo``, exercised by its
``AbstractPartitionAssignorTest`` and ``RangeAssignorTest`` static-member
cases) orders members with a ``group.instance.id`` first, by instance id,
then the others by member id; so a static member that restarts under a new
member id gets the same partitions.
"""

from __future__ import annotations

import pytest

from mqlite.assignors import ASSIGNORS, assign, member_order, sticky_assign

NAMES = sorted(ASSIGNORS)


def test_member_order_static_by_instance_id_then_dynamic_by_member_id() -> None:
    ids = {"m-c": "i2", "m-a": None, "m-z": "i1", "m-b": None}
    assert member_order(ids, ids) == ["m-z", "m-c", "m-a", "m-b"]
    assert member_order(ids) == ["m-a", "m-b", "m-c", "m-z"]  # no instance ids: member id
    assert member_order(["b", "a"], {"x": "unknown member is ignored"}) == ["a", "b"]
    with pytest.raises(TypeError, match="instance id"):
        member_order(["a"], {"a": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", NAMES)
def test_static_member_restarting_under_a_new_member_id_keeps_its_partitions(name: str) -> None:
    parts = {"orders": 5, "refunds": 3}
    before = {"id-zz": "alpha", "id-aa": "beta", "dyn-1": None}
    after = {"id-00": "alpha", "id-aa": "beta", "dyn-1": None}  # alpha restarted
    members_before = {m: sorted(parts) for m in before}
    members_after = {m: sorted(parts) for m in after}
    first = assign(name, members_before, parts, instance_ids=before)
    second = assign(name, members_after, parts, instance_ids=after)
    assert second["id-00"] == first["id-zz"]
    assert second["id-aa"] == first["id-aa"]
    assert second["dyn-1"] == first["dyn-1"]


def test_range_gives_the_extra_partitions_to_static_members_first() -> None:
    members = {"a-dynamic": ["t"], "z-static": ["t"]}
    out = assign("range", members, {"t": 3}, instance_ids={"z-static": "inst"})
    assert out == {"z-static": [("t", 0), ("t", 1)], "a-dynamic": [("t", 2)]}
    # Without instance ids, member-id order as before.
    out = assign("range", members, {"t": 3})
    assert out == {"a-dynamic": [("t", 0), ("t", 1)], "z-static": [("t", 2)]}


def test_assign_keeps_its_positional_signature() -> None:
    members = {"a": ["t"], "b": ["t"]}
    prev = {"a": [("t", 0)]}
    assert assign("cooperative-sticky", members, {"t": 2}, prev) == {
        "a": [("t", 0)], "b": [("t", 1)]}
    assert sticky_assign(members, {"t": 2}, prev) == assign(
        "cooperative-sticky", members, {"t": 2}, prev, instance_ids=None)


def _per_topic_spread(out: dict[str, list[tuple[str, int]]], topics: list[str]) -> int:
    worst = 0
    for t in topics:
        loads = [sum(1 for x, _ in tps if x == t) for tps in out.values()]
        worst = max(worst, max(loads) - min(loads))
    return worst


def test_sticky_join_spreads_each_topic_not_only_the_total() -> None:
    # The previous version gave the newcomer both partitions of one topic.
    prev = {"a": [("t1", 0), ("t1", 1), ("t2", 0), ("t2", 1)],
            "b": [("t1", 2), ("t1", 3), ("t2", 2), ("t2", 3)]}
    members = {m: ["t1", "t2"] for m in "abc"}
    out = sticky_assign(members, {"t1": 4, "t2": 4}, prev)
    assert sorted(len(v) for v in out.values()) == [2, 3, 3]
    assert _per_topic_spread(out, ["t1", "t2"]) <= 1
    for m in "ab":
        assert set(out[m]) <= set(prev[m])


def test_sticky_fresh_and_grown_groups_spread_every_topic() -> None:
    parts = {f"t{i}": n for i, n in enumerate([7, 13, 1, 20, 5])}
    members = {f"m{i:02d}": sorted(parts) for i in range(6)}
    out = sticky_assign(members, parts)
    assert _per_topic_spread(out, sorted(parts)) <= 1
    bigger = {f"m{i:02d}": sorted(parts) for i in range(9)}
    out2 = sticky_assign(bigger, parts, out)
    loads = [len(v) for v in out2.values()]
    assert max(loads) - min(loads) <= 1
    assert _per_topic_spread(out2, sorted(parts)) <= 1
    for m in members:
        assert set(out2[m]) <= set(out[m])


def test_group_passes_instance_ids_so_static_members_come_first(tmp_path) -> None:
    """A real group: the static member sorts before the dynamic one (Kafka's order), so
    under ``range`` it takes the larger share of 3 partitions, whatever its member id."""
    import mqlite

    with mqlite.open(tmp_path / "b", durability="none") as b:
        b.create_topic("t", partitions=3)
        dyn = b.consumer("t", group="g")
        dyn.poll(timeout=0)
        static = b.consumer("t", group="g", instance_id="zzz")  # member id "static-zzz"
        for _ in range(50):  # each poll moves the handover along; no sleeping
            dyn.poll(timeout=0.05)
            static.poll(timeout=0.05)
            if len(static.assignment()) + len(dyn.assignment()) == 3:
                break
        assert sorted(tp.partition for tp in static.assignment()) == [0, 1]
        assert sorted(tp.partition for tp in dyn.assignment()) == [2]
        dyn.close()
        static.close()
