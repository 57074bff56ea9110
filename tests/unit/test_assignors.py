"""Assignors: validity, balance, determinism and stickiness (mqlite.assignors)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqlite.assignors import (
    ASSIGNORS,
    EAGER,
    assign,
    range_assign,
    roundrobin_assign,
    sticky_assign,
)

NAMES = sorted(ASSIGNORS)


def check_valid(members: dict[str, list[str]], partitions: dict[str, int],
                out: dict[str, list[tuple[str, int]]]) -> None:
    """Every partition with a subscriber is assigned exactly once, to a subscriber."""
    assert set(out) == set(members)
    placed = Counter(tp for tps in out.values() for tp in tps)
    expected = {(t, p) for t, n in partitions.items() for p in range(n)
                if any(t in subs for subs in members.values())}
    assert set(placed) == expected
    assert all(n == 1 for n in placed.values())
    for m, tps in out.items():
        assert tps == sorted(tps)
        assert all(t in members[m] for t, _ in tps)


def spread(out: dict[str, list[tuple[str, int]]]) -> int:
    loads = [len(v) for v in out.values()]
    return max(loads) - min(loads) if loads else 0


# -- examples --------------------------------------------------------------------------------

def test_range_is_kafkas_per_topic_ranges() -> None:
    out = range_assign({"c": ["t"], "a": ["t"], "b": ["t"]}, {"t": 7})
    assert out == {"a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4)],
                   "c": [("t", 5), ("t", 6)]}
    # Per topic: with two topics of 1 partition each, "a" gets both (Kafka does the same).
    out = range_assign({"a": ["x", "y"], "b": ["x", "y"]}, {"x": 1, "y": 1})
    assert out == {"a": [("x", 0), ("y", 0)], "b": []}


def test_roundrobin_deals_in_turn_and_skips_non_subscribers() -> None:
    out = roundrobin_assign({"a": ["x", "y"], "b": ["x", "y"]}, {"x": 1, "y": 1})
    assert out == {"a": [("x", 0)], "b": [("y", 0)]}
    out = roundrobin_assign({"a": ["x"], "b": ["x", "y"]}, {"x": 2, "y": 2})
    assert out["a"] == [("x", 0)] and out["b"] == [("x", 1), ("y", 0), ("y", 1)]


def test_six_partitions_three_members_two_each() -> None:
    members = {m: ["t"] for m in ("m1", "m2", "m3")}
    for name in NAMES:
        out = assign(name, members, {"t": 6})
        assert sorted(len(v) for v in out.values()) == [2, 2, 2], name


def test_unknown_assignor_and_eager_set() -> None:
    with pytest.raises(ValueError, match="assignor must be one of"):
        assign("sticky", {"a": ["t"]}, {"t": 1})
    assert EAGER == {"range", "roundrobin"}
    assert "cooperative-sticky" in ASSIGNORS


def test_no_members_and_unsubscribed_topics() -> None:
    for name in NAMES:
        assert assign(name, {}, {"t": 3}) == {}
        assert assign(name, {"a": ["other"]}, {"t": 3}) == {"a": []}


def test_sticky_keeps_placements_when_a_member_joins() -> None:
    members = {f"m{i}": ["t"] for i in range(3)}
    first = sticky_assign(members, {"t": 12})
    members["m3"] = ["t"]
    second = sticky_assign(members, {"t": 12}, first)
    assert sorted(len(v) for v in second.values()) == [3, 3, 3, 3]
    moved = sum(len(set(first[m]) - set(second[m])) for m in first)
    assert moved == 3  # exactly the newcomer's share moves
    for m in first:
        assert set(second[m]) <= set(first[m])


def test_sticky_moves_only_the_leavers_partitions() -> None:
    members = {f"m{i}": ["t"] for i in range(4)}
    first = sticky_assign(members, {"t": 10})
    del members["m2"]
    second = sticky_assign(members, {"t": 10}, first)
    assert spread(second) <= 1
    for m in members:
        assert set(first[m]) <= set(second[m])


def test_sticky_ignores_invalid_previous_entries() -> None:
    prev = {"a": [("t", 0), ("t", 99), ("gone", 0), ("t", 1)], "b": [("t", 0)], "x": [("t", 2)]}
    out = sticky_assign({"a": ["t"], "b": ["t"]}, {"t": 4}, prev)
    check_valid({"a": ["t"], "b": ["t"]}, {"t": 4}, out)
    assert out["a"] == [("t", 0), ("t", 1)]  # a keeps both; b's claim on 0 loses (a < b)


def test_eager_assignors_ignore_previous() -> None:
    members = {"a": ["t"], "b": ["t"]}
    for name in ("range", "roundrobin"):
        prev = {"a": [("t", 5)], "b": [("t", 0)]}
        assert assign(name, members, {"t": 6}, prev) == assign(name, members, {"t": 6})


def test_sticky_random_churn_stays_balanced_and_sticky(rng: random.Random) -> None:
    members: dict[str, list[str]] = {}
    prev: dict[str, list[tuple[str, int]]] = {}
    n = 0
    for _ in range(200):
        if members and (len(members) > 8 or rng.random() < 0.45):
            del members[rng.choice(sorted(members))]
        else:
            members[f"m{n:03d}"] = ["a", "b"]
            n += 1
        out = sticky_assign(members, {"a": 7, "b": 13}, prev)
        check_valid(members, {"a": 7, "b": 13}, out)
        assert spread(out) <= 1
        # A member keeps everything it had, up to its new share.
        for m, tps in out.items():
            kept = set(prev.get(m, ())) & set(tps)
            assert len(kept) == min(len(prev.get(m, ())), len(tps))
        prev = out


# -- properties ------------------------------------------------------------------------------

member_ids = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8,
                      unique=True)
topic_counts = st.dictionaries(st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 20),
                               min_size=1)


@given(ids=member_ids, parts=topic_counts, name=st.sampled_from(NAMES))
def test_same_subscriptions_valid_balanced_deterministic(
        ids: list[str], parts: dict[str, int], name: str) -> None:
    members = {m: sorted(parts) for m in ids}
    out = assign(name, members, parts)
    check_valid(members, parts, out)
    if name == "range":  # Kafka's range balances per topic
        for t in parts:
            loads = [sum(1 for x, _ in out[m] if x == t) for m in ids]
            assert max(loads) - min(loads) <= 1
    else:
        assert spread(out) <= 1
    shuffled = dict(reversed(list(members.items())))
    assert assign(name, shuffled, dict(reversed(list(parts.items())))) == out


@given(subs=st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                            st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=3,
                                     unique=True), min_size=1, max_size=8),
       parts=topic_counts, name=st.sampled_from(NAMES), data=st.data())
def test_mixed_subscriptions_every_partition_exactly_once(
        subs: dict[str, list[str]], parts: dict[str, int], name: str, data: st.DataObject
) -> None:
    prev = data.draw(st.dictionaries(
        st.sampled_from(sorted(subs)),
        st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 25)),
                 max_size=10)))
    out = assign(name, subs, parts, prev)
    check_valid(subs, parts, out)
    assert assign(name, subs, parts, prev) == out


@given(ids=member_ids, n=st.integers(0, 40), data=st.data())
def test_sticky_after_any_change_keeps_what_balance_allows(
        ids: list[str], n: int, data: st.DataObject) -> None:
    members = {m: ["t"] for m in ids}
    first = sticky_assign(members, {"t": n})
    survivors = data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
    newcomers = data.draw(st.lists(st.text("xyz", min_size=4, max_size=4), max_size=3,
                                   unique=True))
    after = {m: ["t"] for m in [*survivors, *newcomers]}
    second = sticky_assign(after, {"t": n}, first)
    check_valid(after, {"t": n}, second)
    assert spread(second) <= 1
    for m in survivors:
        kept = set(first[m]) & set(second[m])
        assert len(kept) == min(len(first[m]), len(second[m]))
