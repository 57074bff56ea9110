"""Partition assignors: pure, deterministic functions of the group's state.

Every member computes the same assignment from the same inputs, so there is
no leader.  Inputs: each member's subscribed topics, each topic's partition
count, (for sticky) the previous assignment and, optionally, each member's
instance id.  Outputs never depend on the iteration order of the input
mappings: members are always processed in a fixed order.

Member order (Kafka's ``AbstractPartitionAssignor.MemberInfo``): members with
an instance id (static members) come first, sorted by instance id; then the
others, sorted by member id.  Without ``instance_ids`` this is member-id order.

Contract of every assignor (checked by ``tests/unit/test_assignors.py`` and
``tests/property/test_assignor_properties.py``):

* every partition of a topic with at least one subscriber is assigned to
  exactly one member that subscribes to its topic; nothing else is assigned;
* the result has one (possibly empty) list per member, sorted;
* with identical subscriptions, ``roundrobin`` and ``cooperative-sticky``
  give every member the same number of partitions within one, and
  ``range`` does so per topic (Kafka's RangeAssignor is per topic).

``cooperative-sticky`` additionally keeps every previous placement that
balance allows, so a rebalance moves as few partitions as possible, and
spreads each topic evenly where stickiness leaves room (see
:func:`sticky_assign`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

__all__ = ["ASSIGNORS", "EAGER", "assign", "member_order", "range_assign", "roundrobin_assign",
           "sticky_assign"]

TP = tuple[str, int]
Assignment = dict[str, list[TP]]
Members = Mapping[str, Sequence[str]]
Previous = Mapping[str, Sequence[Sequence[object]]]
InstanceIds = Mapping[str, str | None]


class Assignor(Protocol):
    def __call__(self, members: Members, partitions: Mapping[str, int],
                 previous: Previous | None = None, *,
                 instance_ids: InstanceIds | None = None) -> Assignment: ...


def member_order(members: Iterable[str], instance_ids: InstanceIds | None = None) -> list[str]:
    """Members in assignment order: static (by instance id) first, then by member id.

    Kafka sorts ``MemberInfo`` the same way, so a static member that restarts
    under a new member id keeps its place.

    Raises
    ------
    TypeError
        An instance id that is neither ``str`` nor ``None``.
    """
    if not instance_ids:
        return sorted(members)

    def key(m: str) -> tuple[int, str, str]:
        iid = instance_ids.get(m)
        if iid is None:
            return (1, m, "")
        if not isinstance(iid, str):
            raise TypeError(f"instance id of member {m!r} must be str or None, "
                            f"not {type(iid).__name__}")
        return (0, iid, m)

    return sorted(members, key=key)


def _topic_sets(members: Members) -> dict[str, set[str]]:
    return {m: set(topics) for m, topics in members.items()}


def range_assign(members: Members, partitions: Mapping[str, int],
                 previous: Previous | None = None, *,
                 instance_ids: InstanceIds | None = None) -> Assignment:
    """Kafka's RangeAssignor: per topic, contiguous ranges; the first members get one extra.

    Parameters
    ----------
    members
        Member id -> subscribed topic names.
    partitions
        Topic name -> partition count.
    previous
        Ignored (range is not sticky).
    instance_ids
        Member id -> instance id (``None`` or absent: a dynamic member); sets
        the member order (:func:`member_order`).

    Returns
    -------
    dict
        Member id -> sorted list of ``(topic, partition)``.
    """
    order = member_order(members, instance_ids)
    subs_of = _topic_sets(members)
    out: Assignment = {m: [] for m in sorted(members)}
    for topic in sorted(partitions):
        subs = [m for m in order if topic in subs_of[m]]
        if not subs:
            continue
        n = partitions[topic]
        per, extra = divmod(n, len(subs))
        start = 0
        for i, m in enumerate(subs):
            count = per + (1 if i < extra else 0)
            if count:
                out[m] += [(topic, p) for p in range(start, start + count)]
                start += count
    return out


def roundrobin_assign(members: Members, partitions: Mapping[str, int],
                      previous: Previous | None = None, *,
                      instance_ids: InstanceIds | None = None) -> Assignment:
    """Kafka's RoundRobinAssignor: all partitions sorted, dealt to subscribed members in turn.

    Parameters and return value as :func:`range_assign`.
    """
    ordered = member_order(members, instance_ids)
    subs_of = _topic_sets(members)
    out: Assignment = {m: [] for m in sorted(members)}
    if not ordered:
        return out
    n_members = len(ordered)
    i = 0
    for topic in sorted(partitions):
        if not any(topic in subs_of[m] for m in ordered):
            continue
        for p in range(partitions[topic]):
            while True:
                m = ordered[i % n_members]
                i += 1
                if topic in subs_of[m]:
                    out[m].append((topic, p))
                    break
    for m in out:
        out[m].sort()
    return out


def _clean_previous(previous: Previous | None, allowed: Callable[[str], Mapping[str, int]],
                    ordered: list[str]) -> dict[str, list[TP]]:
    """Previous placements that are still valid; a partition claimed twice goes to one member.

    ``allowed(m)`` maps the topics member ``m`` may hold to their partition
    counts.  Members claim in ``ordered`` order; each member's claims in
    partition order.  Malformed entries are skipped.
    """
    kept: dict[str, list[TP]] = {m: [] for m in ordered}
    if not previous:
        return kept
    claimed: set[TP] = set()
    for m in ordered:
        raw = previous.get(m)
        if not raw:
            continue
        cand: set[tuple[Any, ...]]
        try:  # fast path: well-formed pairs (tuples or lists); validated below
            cand = set(map(tuple, raw))
        except TypeError:  # an entry that is not iterable or not hashable
            cand = {tuple(item) for item in raw
                    if isinstance(item, (tuple, list)) and len(item) == 2
                    and isinstance(item[0], str) and isinstance(item[1], int)}
        if any(len(tp) == 2 and type(tp[1]) is bool for tp in cand):
            # ("t", True) == ("t", 1): the set kept whichever came first, so the result
            # would depend on input order; validate each entry before deduplicating.
            cand = {tuple(item) for item in raw
                    if isinstance(item, (tuple, list)) and len(item) == 2
                    and type(item[0]) is str and type(item[1]) is int}
        ok = allowed(m)
        tps: set[TP] = {(t, p) for t, p in (tp for tp in cand if len(tp) == 2)
                        if type(p) is int and type(t) is str and 0 <= p < ok.get(t, 0)}
        tps = tps - claimed  # not -=: difference_update walks all of `claimed`
        claimed |= tps
        kept[m] = sorted(tps)
    return kept


def sticky_assign(members: Members, partitions: Mapping[str, int],
                  previous: Previous | None = None, *,
                  instance_ids: InstanceIds | None = None) -> Assignment:
    """Balanced assignment that keeps as many previous placements as possible.

    When every member subscribes to the same (existing) topics, as in most
    groups, a linear pass does it (:func:`_sticky_uniform`):

    1. Each member keeps its previous partitions that still exist.
    2. Quotas: ``P // M`` each, and one more for ``P % M`` members, given
       first to the members that kept the most (so the fewest move).
    3. A member over its quota gives back the excess, each time from the
       topic it holds most above that topic's fair share, highest partition
       first.
    4. The partitions left are dealt topic by topic, partition by partition,
       round-robin over the members below their quota (in member order),
       skipping a member that already holds ``ceil(n_topic / M)`` of the
       topic while another can take it.  From scratch this is round-robin:
       every topic is spread within one per member, and so is the total.

    Otherwise (different subscriptions) a general pass runs:

    1. Each member keeps its previous partitions that still exist and that it
       still subscribes to.
    2. Unplaced partitions (fewest eligible members first) go to the
       least-loaded eligible member, then the one with the fewest partitions
       of that topic.
    3. While some member has at least two more partitions than another member
       that could take one of them, the most loaded member gives its highest
       movable partition to the least loaded eligible member.

    Both keep a member's previous partitions up to its new share: a join
    moves just enough partitions to the newcomer and a leave moves only the
    leaver's partitions.  Ties are broken by member order
    (:func:`member_order`) and partition, so the result is deterministic.
    Parameters as :func:`range_assign`.
    """
    order = member_order(members, instance_ids)
    if not order:
        return {}
    existing = {t for t, n in partitions.items() if n > 0}
    subs_of = _topic_sets(members)
    first = subs_of[order[0]] & existing
    if all(subs_of[m] & existing == first for m in order):
        out = _sticky_uniform(order, sorted(first), partitions, previous)
    else:
        out = _sticky_general(order, subs_of, partitions, previous)
    return {m: sorted(out[m]) for m in sorted(members)}


def _claim(raw: Sequence[Sequence[object]], taken: dict[str, bytearray],
           mine: list[TP]) -> None:
    """Append to ``mine`` the valid, unclaimed ``(topic, partition)`` pairs of ``raw``.

    ``taken[t]`` has one byte per partition of topic ``t``: set when claimed.
    Malformed entries, unknown topics and out-of-range partitions are skipped.
    Claims do not depend on the order of ``raw``: a member never conflicts
    with itself, and members claim one after another.
    """
    for item in raw:
        try:
            t, p = item
        except (TypeError, ValueError):  # not a pair
            continue
        if type(p) is int and type(t) is str:
            flags = taken.get(t)
            if flags is not None and 0 <= p < len(flags) and not flags[p]:
                flags[p] = 1
                mine.append((t, p))


def _sticky_uniform(order: list[str], topics: list[str], partitions: Mapping[str, int],
                    previous: Previous | None) -> dict[str, list[TP]]:
    """Sticky assignment when every member subscribes to ``topics`` (see sticky_assign).

    Linear in partitions plus members (the ring search in step 4 skips only
    members that are full or hold their share of the topic).
    """
    n_members = len(order)
    counts = {t: partitions[t] for t in topics}
    total = sum(counts.values())
    rank = {m: i for i, m in enumerate(order)}
    # Step 1: claims, in member order; `taken` marks claimed partitions.
    taken = {t: bytearray(n) for t, n in counts.items()}
    kept: dict[str, list[TP]] = {m: [] for m in order}
    for m in order:
        raw = previous.get(m) if previous else None
        if raw:
            _claim(raw, taken, kept[m])
    if not any(kept.values()):
        # From scratch step 4 is plain round-robin in member order: deal by slicing.
        flat = [(t, p) for t in topics for p in range(counts[t])]
        return {m: flat[i::n_members] for i, m in enumerate(order)}
    base, extra = divmod(total, n_members)
    by_kept = sorted(order, key=lambda m: (-len(kept[m]), rank[m]))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_kept)}
    freed_of = dict.fromkeys(topics, 0)
    for m in order:
        mine = kept[m]
        excess = len(mine) - quota[m]
        if excess > 0:
            # Give back from the topic held most above its fair share (count - n/M);
            # on a tie, the topic other members gave back least so far (so that
            # takers get a mix of topics); highest partition first.
            by_topic: dict[str, list[int]] = {}
            for t, p in sorted(mine):
                by_topic.setdefault(t, []).append(p)
            heap = [(-(len(ps) * n_members - counts[t]), freed_of[t], t)
                    for t, ps in by_topic.items()]
            heapq.heapify(heap)
            freed: set[TP] = set()
            for _ in range(excess):
                _, _, t = heapq.heappop(heap)
                ps = by_topic[t]
                p = ps.pop()
                freed.add((t, p))
                taken[t][p] = 0
                freed_of[t] += 1
                if ps:
                    heapq.heappush(heap, (-(len(ps) * n_members - counts[t]), freed_of[t], t))
            kept[m] = [tp for tp in mine if tp not in freed]
    active = [m for m in order if len(kept[m]) < quota[m]]
    deficit = {m: quota[m] - len(kept[m]) for m in active}
    have: dict[str, dict[str, int]] = {}  # member below quota -> topic -> partitions held
    for m in active:
        h = have[m] = {}
        for t, _ in kept[m]:
            h[t] = h.get(t, 0) + 1
    cursor = 0
    for t in topics:
        flags = taken[t]
        p = flags.find(0)
        if p < 0:
            continue
        cap = -(-counts[t] // n_members)
        while p >= 0:
            found = cursor
            m = active[found]
            if have[m].get(t, 0) >= cap:  # usually the member at the cursor takes it
                while True:
                    n_active = len(active)
                    for step in range(1, n_active + 1):
                        found = (cursor + step) % n_active
                        if have[active[found]].get(t, 0) < cap:
                            break
                    else:
                        cap += 1  # every member below quota holds cap of t: allow one more
                        continue
                    break
                m = active[found]
            kept[m].append((t, p))
            h = have[m]
            h[t] = h.get(t, 0) + 1
            deficit[m] -= 1
            cursor = found + 1
            if deficit[m] == 0:
                del active[found]  # full: the next member is now at `found`
                cursor = found
            if active:
                cursor %= len(active)
            p = flags.find(0, p + 1)
    return kept


def _sticky_general(order: list[str], subs_of: Mapping[str, set[str]],
                    partitions: Mapping[str, int],
                    previous: Previous | None) -> dict[str, list[TP]]:
    """Sticky assignment for members with different subscriptions (see sticky_assign)."""
    rank = {m: i for i, m in enumerate(order)}
    all_parts = [(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    eligible: dict[TP, list[str]] = {}
    for t in sorted(partitions):
        subs = [m for m in order if t in subs_of[m]]
        if subs:
            for p in range(partitions[t]):
                eligible[(t, p)] = subs
    subscribed = {t: n for t, n in partitions.items() if n > 0}
    out = _clean_previous(
        previous, lambda m: {t: n for t, n in subscribed.items() if t in subs_of[m]}, order)
    per_topic: dict[tuple[str, str], int] = {}
    for m in order:
        for t, _ in out[m]:
            per_topic[(m, t)] = per_topic.get((m, t), 0) + 1
    placed = {tp for tps in out.values() for tp in tps}
    todo = sorted((tp for tp in all_parts if tp in eligible and tp not in placed),
                  key=lambda tp: (len(eligible[tp]), tp))
    for tp in todo:
        t = tp[0]
        m = min(eligible[tp], key=lambda s: (len(out[s]), per_topic.get((s, t), 0), rank[s]))
        out[m].append(tp)
        per_topic[(m, t)] = per_topic.get((m, t), 0) + 1
    # Step 3: strictly decreases the sum of squared loads, so it terminates.
    while True:
        moved = False
        for giver in sorted(order, key=lambda s: (-len(out[s]), rank[s])):
            load = len(out[giver])
            best: tuple[int, int, TP] | None = None
            for tp in sorted(out[giver], reverse=True):
                for taker in eligible[tp]:
                    tl = len(out[taker])
                    if tl <= load - 2 and (best is None or (tl, rank[taker]) < best[:2]):
                        best = (tl, rank[taker], tp)
                if best is not None and best[0] == 0:
                    break
            if best is not None:
                _, taker_rank, tp = best
                out[giver].remove(tp)
                out[order[taker_rank]].append(tp)
                moved = True
                break
        if not moved:
            break
    return out


ASSIGNORS: dict[str, Assignor] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "cooperative-sticky": sticky_assign,
}
#: Assignors whose rebalances revoke every partition (Kafka's eager protocol).
EAGER = frozenset({"range", "roundrobin"})


def assign(name: str, members: Members, partitions: Mapping[str, int],
           previous: Previous | None = None, *,
           instance_ids: InstanceIds | None = None) -> Assignment:
    """Run assignor ``name``.

    ``instance_ids`` (member id -> instance id, or ``None`` for a dynamic
    member) orders static members by instance id, as Kafka does; without it
    members are ordered by member id.

    Raises
    ------
    ValueError
        Unknown assignor name.
    """
    try:
        fn = ASSIGNORS[name]
    except KeyError:
        raise ValueError(f"assignor must be one of {sorted(ASSIGNORS)}, got {name!r}") from None
    return fn(members, partitions, previous, instance_ids=instance_ids)
