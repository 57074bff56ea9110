"""Partition assignors: pure, deterministic functions of the group's state.

Every member computes the same assignment from the same inputs, so there is
no leader.  Inputs: member ids (sorted), each member's subscribed topics,
each topic's partition count, and (for sticky) the previous assignment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ASSIGNORS", "assign", "EAGER"]

Assignment = dict[str, list[tuple[str, int]]]


def _subscribers(members: Mapping[str, Sequence[str]], topic: str) -> list[str]:
    return sorted(m for m, topics in members.items() if topic in topics)


def range_assign(members: Mapping[str, Sequence[str]], partitions: Mapping[str, int],
                 previous: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> Assignment:
    """Kafka's RangeAssignor: per topic, contiguous ranges; the first members get one extra."""
    out: Assignment = {m: [] for m in members}
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


def roundrobin_assign(members: Mapping[str, Sequence[str]], partitions: Mapping[str, int],
                      previous: Mapping[str, Sequence[tuple[str, int]]] | None = None
                      ) -> Assignment:
    """Kafka's RoundRobinAssignor: all partitions sorted, dealt to subscribed members in turn."""
    out: Assignment = {m: [] for m in members}
    ordered = sorted(members)
    i = 0
    for topic in sorted(partitions):
        for p in range(partitions[topic]):
            for _ in range(len(ordered)):
                m = ordered[i % len(ordered)]
                i += 1
                if topic in members[m]:
                    out[m].append((topic, p))
                    break
    return out


def sticky_assign(members: Mapping[str, Sequence[str]], partitions: Mapping[str, int],
                  previous: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> Assignment:
    """Balanced assignment that keeps as many previous placements as possible.

    Each member keeps its previous partitions (that still exist and that it
    still subscribes to) up to its fair quota; the rest are dealt to the
    least-loaded eligible members.  Only moved partitions change hands, which
    is what the cooperative protocol needs.
    """
    previous = previous or {}
    out: Assignment = {m: [] for m in members}
    all_parts = [(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    eligible = {tp: _subscribers(members, tp[0]) for tp in all_parts}
    eligible = {tp: subs for tp, subs in eligible.items() if subs}
    total = len(eligible)
    ordered = sorted(members)
    if not ordered:
        return out
    base, extra = divmod(total, len(ordered))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(ordered)}
    taken: set[tuple[str, int]] = set()
    for m in ordered:
        for tp in sorted((tuple(x) for x in previous.get(m, ())), key=lambda x: (x[0], x[1])):
            tp = (str(tp[0]), int(tp[1]))
            if tp in eligible and m in eligible[tp] and tp not in taken and \
                    len(out[m]) < quota[m]:
                out[m].append(tp)
                taken.add(tp)
    for tp in all_parts:
        if tp in taken or tp not in eligible:
            continue
        subs = eligible[tp]
        m = min(subs, key=lambda s: (len(out[s]) >= quota[s], len(out[s]), s))
        out[m].append(tp)
        taken.add(tp)
    for m in out:
        out[m].sort()
    return out


ASSIGNORS = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "cooperative-sticky": sticky_assign,
}
#: Assignors whose rebalances revoke every partition (Kafka's eager protocol).
EAGER = frozenset({"range", "roundrobin"})


def assign(name: str, members: Mapping[str, Sequence[str]], partitions: Mapping[str, int],
           previous: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> Assignment:
    """Run assignor ``name`` (``ValueError`` for an unknown one)."""
    try:
        fn = ASSIGNORS[name]
    except KeyError:
        raise ValueError(f"assignor must be one of {sorted(ASSIGNORS)}, got {name!r}") from None
    return fn(members, partitions, previous)
