"""Partition assignors: pure, deterministic functions of the group's state.

Every member computes the same assignment from the same inputs, so there is
no leader.  Inputs: each member's subscribed topics, each topic's partition
count and (for sticky) the previous assignment.  Outputs never depend on
the iteration order of the input mappings: members are always processed in
sorted order.

Contract of every assignor (checked by ``tests/unit/test_assignors.py``):

* every partition of a topic with at least one subscriber is assigned to
  exactly one member that subscribes to its topic; nothing else is assigned;
* the result has one (possibly empty) list per member, sorted;
* with identical subscriptions, ``roundrobin`` and ``cooperative-sticky``
  give every member the same number of partitions within one, and
  ``range`` does so per topic (Kafka's RangeAssignor is per topic).

``cooperative-sticky`` additionally keeps every previous placement that
balance allows, so a rebalance moves as few partitions as possible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["ASSIGNORS", "EAGER", "assign", "range_assign", "roundrobin_assign", "sticky_assign"]

TP = tuple[str, int]
Assignment = dict[str, list[TP]]
Members = Mapping[str, Sequence[str]]
Previous = Mapping[str, Sequence[Sequence[object]]]


def _subscribers(members: Members, topic: str) -> list[str]:
    return sorted(m for m, topics in members.items() if topic in topics)


def range_assign(members: Members, partitions: Mapping[str, int],
                 previous: Previous | None = None) -> Assignment:
    """Kafka's RangeAssignor: per topic, contiguous ranges; the first members get one extra.

    Parameters
    ----------
    members
        Member id -> subscribed topic names.
    partitions
        Topic name -> partition count.
    previous
        Ignored (range is not sticky).

    Returns
    -------
    dict
        Member id -> sorted list of ``(topic, partition)``.
    """
    out: Assignment = {m: [] for m in sorted(members)}
    for topic in sorted(partitions):
        subs = _subscribers(members, topic)
        if not subs:
            continue
        n = partitions[topic]
        per, extra = divmod(n, len(subs))
        start = 0
        for i, m in enumerate(subs):
            count = per + (1 if i < extra else 0)
            out[m].extend((topic, p) for p in range(start, start + count))
            start += count
    return out


def roundrobin_assign(members: Members, partitions: Mapping[str, int],
                      previous: Previous | None = None) -> Assignment:
    """Kafka's RoundRobinAssignor: all partitions sorted, dealt to subscribed members in turn.

    Parameters and return value as :func:`range_assign`.
    """
    ordered = sorted(members)
    out: Assignment = {m: [] for m in ordered}
    if not ordered:
        return out
    i = 0
    for topic in sorted(partitions):
        for p in range(partitions[topic]):
            for _ in range(len(ordered)):
                m = ordered[i % len(ordered)]
                i += 1
                if topic in members[m]:
                    out[m].append((topic, p))
                    break
    for m in out:
        out[m].sort()
    return out


def _clean_previous(previous: Previous | None, eligible: Mapping[TP, set[str]],
                    ordered: list[str]) -> dict[str, list[TP]]:
    """Previous placements that are still valid; a partition claimed twice goes to one member."""
    kept: dict[str, list[TP]] = {m: [] for m in ordered}
    if not previous:
        return kept
    claimed: set[TP] = set()
    for m in ordered:
        raw = previous.get(m, ())
        tps = set()
        for item in raw:
            if len(item) != 2:
                continue
            t, p = item
            if isinstance(t, str) and isinstance(p, int):
                tps.add((t, p))
        for tp in sorted(tps):
            if tp in claimed or m not in eligible.get(tp, ()):
                continue
            claimed.add(tp)
            kept[m].append(tp)
    return kept


def sticky_assign(members: Members, partitions: Mapping[str, int],
                  previous: Previous | None = None) -> Assignment:
    """Balanced assignment that keeps as many previous placements as possible.

    1. Each member keeps its previous partitions that still exist and that it
       still subscribes to.
    2. Unplaced partitions (fewest eligible members first) go to the
       least-loaded eligible member.
    3. While some member has at least two more partitions than another member
       that could take one of them, the most loaded member gives its highest
       movable partition to the least loaded eligible member.

    Step 3 moves one partition at a time and only from an overloaded member,
    so a join moves just enough partitions to the newcomer and a leave moves
    only the leaver's partitions.  Ties are broken by member id and partition,
    so the result is deterministic.  Parameters as :func:`range_assign`.
    """
    ordered = sorted(members)
    subs_of = {m: set(members[m]) for m in ordered}
    all_parts = [(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    eligible: dict[TP, set[str]] = {}
    for tp in all_parts:
        e = {m for m in ordered if tp[0] in subs_of[m]}
        if e:
            eligible[tp] = e
    out = _clean_previous(previous, eligible, ordered)
    if not ordered:
        return out
    placed = {tp for tps in out.values() for tp in tps}
    todo = sorted((tp for tp in eligible if tp not in placed),
                  key=lambda tp: (len(eligible[tp]), tp))
    for tp in todo:
        m = min(eligible[tp], key=lambda s: (len(out[s]), s))
        out[m].append(tp)
    # Step 3: strictly decreases the sum of squared loads, so it terminates.
    while True:
        moved = False
        for giver in sorted(ordered, key=lambda s: (-len(out[s]), s)):
            load = len(out[giver])
            best: tuple[int, str, TP] | None = None
            for tp in sorted(out[giver], reverse=True):
                for taker in eligible[tp]:
                    tl = len(out[taker])
                    if tl <= load - 2 and (best is None or (tl, taker) < (best[0], best[1])):
                        best = (tl, taker, tp)
                if best is not None and best[0] == 0:
                    break
            if best is not None:
                _, taker, tp = best
                out[giver].remove(tp)
                out[taker].append(tp)
                moved = True
                break
        if not moved:
            break
    for m in out:
        out[m].sort()
    return out


ASSIGNORS: dict[str, Callable[[Members, Mapping[str, int], Previous | None], Assignment]] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "cooperative-sticky": sticky_assign,
}
#: Assignors whose rebalances revoke every partition (Kafka's eager protocol).
EAGER = frozenset({"range", "roundrobin"})


def assign(name: str, members: Members, partitions: Mapping[str, int],
           previous: Previous | None = None) -> Assignment:
    """Run assignor ``name``.

    Raises
    ------
    ValueError
        Unknown assignor name.
    """
    try:
        fn = ASSIGNORS[name]
    except KeyError:
        raise ValueError(f"assignor must be one of {sorted(ASSIGNORS)}, got {name!r}") from None
    return fn(members, partitions, previous)
