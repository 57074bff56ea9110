"""kill -9 torture: producers and consumers of three groups, SIGKILLed at random.

Two producers, two stream groups of two members (``commit="after"`` plus
explicit commits) and two competing queue consumers run as separate
processes on one broker.  The test SIGKILLs a random one at a random moment,
restarts it (sometimes armed to SIGKILL *itself* at a named point: right
after a send returned, between poll and commit, right after a commit
returned, after receive before ack, inside ack, just before or after an
LMDB commit inside mqlite), and repeats.  Then fresh consumers drain every
group and the logs of all processes (see ``_procs_torture``) are checked
against RELIABILITY.md:

1. no loss: every send that returned reaches every group;
2. bounded duplicates: a stream group never redelivers an offset below a
   commit that had returned; a queue group never redelivers an acked
   message, and each redelivery carries a higher delivery count;
3. integrity: every delivered payload is a message some producer tried to
   send, with the same CRC, stored where its send said;
4. order: per group and partition, first deliveries come in offset order
   (queue mode: per consumer, deliveries with count 1);
5. liveness: after the kills, the surviving processes that were already
   running (had made progress before the kill) make progress again (a send
   returns, a message is delivered) within ``LIVENESS_LIMIT_S``.  Processes
   still starting up are not judged: at a load average of 8-10 the first
   progress of eight freshly started processes took 2.5-6 s, which an early
   version counted as a stall after a kill made during their start-up (the
   test failed at high load on old and new code alike).  A consumer is timed from
   the first send after the kill (nothing is new while both producers restart) and
   not judged when no send came within the bound.  A real stall (a dead
   process's lock or transaction blocking the others) stops every survivor
   after every kill; a CPU-starved survivor misses the bound once in a while,
   so at most ``LIVENESS_MISS_FRACTION`` of the observations may miss it.  After
   the last kill every process already running must progress within
   ``FINAL_PROGRESS_S`` (a stopped broker fails however the statistics fall).

Checks 2 and 4 compare times from different processes.  Each delivery line
carries the time its ``poll``/``receive`` *began*, and a delivery is judged
against the commits and acks that had returned before that: a process starved
between a call's return and its log line (past a session or visibility timeout)
would otherwise log a legitimate redelivery "after" the new owner's commit.

Reproduce a failure with the printed ``MQLITE_TEST_SEED``.  Every observation slower
than ``LIVENESS_TARGET_S`` is printed with its victim and survivor; the logs directory
(under the test's ``tmp_path``) keeps each child's pid (``pids``), ``/proc/locks`` at the
end of the kills (``proc-locks``) and every survivor's Python stacks (``<log>.stack``,
written on the SIGUSR1 sent after the last liveness window): a stalled survivor shows
where it waits (docs/decisions.md D42 was found that way).
"""

from __future__ import annotations

import bisect
import os
import random
import signal
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _procs_torture as procs
import pytest

import mqlite

MODES = ["sync", "lazy", "none"]
TOPIC = "t"
PARTITIONS = 3
STREAM_GROUPS = ("g1", "g2")
QUEUE_GROUP = "qg"
#: name -> (kind, group)
ROLES: dict[str, tuple[str, str | None]] = {
    "p0": ("producer", None), "p1": ("producer", None),
    "g1a": ("stream", "g1"), "g1b": ("stream", "g1"),
    "g2a": ("stream", "g2"), "g2b": ("stream", "g2"),
    "q0": ("queue", QUEUE_GROUP), "q1": ("queue", QUEUE_GROUP),
}
POINTS = {"producer": procs.PRODUCER_POINTS, "stream": procs.STREAM_POINTS,
          "queue": procs.QUEUE_POINTS}
#: Kills (random SIGKILLs plus named-point self-kills) per durability mode in CI.
CI_KILLS = 24  # 72 kills in CI over the three modes, ~13 s per mode
SLOW_KILLS = 150
#: Chance that a restarted process is armed to kill itself at a named point.
ARM_CHANCE = 0.4
#: RELIABILITY.md asks for "about 1 s" (printed, and measured on a quiet box).  The bound
#: asserted is half the members' 10 s session timeout: the stalls this test exists to
#: catch (a dead member noticed only when its session or a visibility timeout expires)
#: last 10 s or more, while CPU starvation at load averages of 10-170 (five test suites
#: and benchmarks at once on 2 cores) stretched honest progress to 2.5-4 s, and to 5.3 s
#: once with six engineers' suites running (a failure of 1 in 14 observations).  8 s stays
#: below the 10 s stalls while leaving that starvation room.
LIVENESS_TARGET_S = 1.0
LIVENESS_LIMIT_S = 8.0
#: Observations allowed above the limit (scheduling noise, not a stall; see above).
LIVENESS_MISS_FRACTION = 0.05
#: After the last kill, every process that was already running must make progress
#: within this (a stall of the whole broker is permanent; starvation is not).
FINAL_PROGRESS_S = 60.0

now_ns = time.monotonic_ns


@dataclass
class Incarnation:
    name: str
    kind: str
    group: str | None
    log: Path
    start_ns: int
    end_ns: int | None = None
    how: str = ""  # "random", "point:<name>" or "final"


@dataclass
class Run:
    mode: str
    path: Path
    incarnations: list[Incarnation] = field(default_factory=list)
    kills: list[tuple[int, Incarnation]] = field(default_factory=list)
    end_ns: int = 0


# -- the torture loop ------------------------------------------------------------------------

def _launch(children: Any, run: Run, logs: Path, name: str, rng: random.Random,
            arm: bool) -> tuple[Incarnation, Any]:
    kind, group = ROLES[name]
    k = sum(1 for i in run.incarnations if i.name == name)
    log = logs / f"{name}.{k}.log"
    kill_at = (rng.choice(POINTS[kind]), rng.randrange(1, 25)) if arm else None
    seed = rng.randrange(2**32)
    path = str(run.path)
    if kind == "producer":
        args: tuple[Any, ...] = (path, run.mode, TOPIC, name, str(log), seed, kill_at)
        target: Callable[..., None] = procs.producer
    elif kind == "stream":
        args = (path, run.mode, TOPIC, group, str(log), seed, kill_at)
        target = procs.stream_member
    else:
        args = (path, run.mode, TOPIC, group, str(log), seed, kill_at)
        target = procs.queue_member
    inc = Incarnation(name, kind, group, log, now_ns())
    p = children.start(f"{run.mode}-{name}-{k}", target, *args)
    with open(logs / "pids", "a") as f:
        f.write(f"{log.name} {p.pid}\n")
    run.incarnations.append(inc)
    return inc, p


def _last_kill_line(log: Path) -> tuple[int, str] | None:
    for line in reversed(_lines(log)):
        if line.startswith("K "):
            _, ns, point = line.split(" ", 2)
            return int(ns), point
    return None


def _progressed_since(inc: Incarnation, ns: int) -> bool:
    """Whether ``inc`` logged progress (a returned send, a delivery) after ``ns``."""
    kind = "S " if inc.kind == "producer" else "D "
    return any(line.startswith(kind) and int(line.split(" ", 2)[1]) > ns
               for line in _lines(inc.log))


def _errors(log: Path) -> list[str]:
    return [line for line in _lines(log) if line.startswith("E ")]


def torture(children: Any, tmp_path: Path, mode: str, kills: int,
            rng: random.Random) -> Run:
    path = tmp_path / f"broker-{mode}"
    logs = tmp_path / f"logs-{mode}"
    logs.mkdir()
    with mqlite.open(path, durability=mode) as b:
        b.create_topic(TOPIC, partitions=PARTITIONS)
    run = Run(mode, path)
    live: dict[str, tuple[Incarnation, Any]] = {}
    # Consumers first: every group exists before the first message is sent.
    for name in sorted(ROLES, key=lambda n: ROLES[n][0] == "producer"):
        live[name] = _launch(children, run, logs, name, rng, arm=False)
    time.sleep(0.5)

    def reap_dead() -> None:
        for name, (inc, p) in list(live.items()):
            if p.exitcode is None:
                continue
            errs = _errors(inc.log)
            assert p.exitcode == -9 and not errs, (
                f"{inc.log.name} exited with {p.exitcode}: {errs[:1]}")
            hit = _last_kill_line(inc.log)
            assert hit is not None, f"{inc.log.name} died of SIGKILL it did not send itself"
            inc.end_ns, inc.how = hit[0], f"point:{hit[1]}"
            run.kills.append((hit[0], inc))
            live[name] = _launch(children, run, logs, name, rng, arm=rng.random() < ARM_CHANCE)

    while len(run.kills) < kills:
        time.sleep(rng.uniform(0.15, 0.8))
        reap_dead()
        name = rng.choice(sorted(live))
        inc, p = live[name]
        t = children.kill(p.name)
        if inc.end_ns is None and not _last_kill_line(inc.log):
            inc.end_ns, inc.how = t, "random"
            run.kills.append((t, inc))
        else:  # it killed itself just before us
            reap_dead()
            continue
        live[name] = _launch(children, run, logs, name, rng, arm=rng.random() < ARM_CHANCE)
    # Let the survivors of the last kill show progress: the liveness window, then until
    # every process already running at the last kill has progressed since (or died).
    last_kill = max(t for t, _ in run.kills)
    time.sleep(LIVENESS_LIMIT_S + 0.2)
    deadline = time.monotonic() + FINAL_PROGRESS_S
    while True:
        reap_dead()
        stuck = [inc.log.name for inc, _p in live.values()
                 if inc.start_ns < last_kill and not _progressed_since(inc, last_kill)]
        if not stuck or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # logs are read whole: not too often
    run.end_ns = now_ns()
    for _inc, p in live.values():  # stacks of the survivors (see _procs_torture._guard)
        os.kill(p.pid, signal.SIGUSR1)
    (logs / "proc-locks").write_text(Path("/proc/locks").read_text())
    stacks = [inc.log.with_name(inc.log.name + ".stack") for inc, _p in live.values()]
    deadline = time.monotonic() + 5.0  # diagnostics only: never fails the test
    while time.monotonic() < deadline and not all(
            f.exists() and f.stat().st_size > 0 for f in stacks):
        time.sleep(0.01)
    for name, (inc, p) in live.items():
        children.kill(p.name)
        errs = _errors(inc.log)
        assert not errs, f"{inc.log.name}: {errs[:1]}"
        if inc.end_ns is None:
            hit = _last_kill_line(inc.log)
            inc.end_ns, inc.how = (hit[0], f"point:{hit[1]}") if hit else (run.end_ns, "final")
    assert not stuck, (f"no progress within {LIVENESS_LIMIT_S + 0.2 + FINAL_PROGRESS_S:.0f} s "
                       f"of the last kill: {stuck} (stacks: {logs}/<log>.stack)")
    return run


# -- draining ------------------------------------------------------------------------------

@dataclass
class Drained:
    stream: dict[str, list[str]] = field(default_factory=dict)  # group -> log lines
    queue: list[str] = field(default_factory=list)


def drain(run: Run) -> Drained:
    out = Drained()
    with mqlite.open(run.path, durability=run.mode) as b:
        for g in STREAM_GROUPS:
            lines: list[str] = []
            with b.consumer(TOPIC, group=g, commit="manual") as c:
                deadline = time.monotonic() + 60
                while True:
                    t0 = now_ns()
                    msgs = c.poll(max_records=5000, timeout=0.2)
                    t = now_ns()
                    for m in msgs:
                        mid, crc = procs.parse_payload(m.value)
                        lines.append(f"D {t} {m.partition} {m.offset} {mid} {crc} 0 {t0}")
                    tps = c.assignment()
                    if not msgs and len(tps) == PARTITIONS:
                        ends = c.end_offsets(tps)
                        pos = c.positions()
                        if all(pos.get(tp, -1) >= ends[tp] for tp in tps):
                            break
                    assert time.monotonic() < deadline, f"group {g} did not drain"
                pos = c.positions()
                c.commit()
                t = now_ns()
                lines += [f"C {t} {tp.partition} {o}" for tp, o in sorted(pos.items())]
                assert b.committed_offsets(g, TOPIC) == {tp.partition: o for tp, o in pos.items()}
            out.stream[g] = lines
        with b.queue(TOPIC, QUEUE_GROUP, visibility_timeout=60.0) as q:
            deadline = time.monotonic() + 60
            while True:
                t0 = now_ns()
                ds = q.receive(max_messages=2000, timeout=0.3)
                t = now_ns()
                for d in ds:
                    mid, crc = procs.parse_payload(d.value)
                    out.queue.append(f"D {t} {d.partition} {d.offset} {mid} {crc} "
                                     f"{d.delivery_count} {t0}")
                if ds:
                    q.ack(ds)
                    t = now_ns()
                    out.queue += [f"A {t} {d.partition} {d.offset}" for d in ds]
                elif q.lag() == 0:
                    break
                assert time.monotonic() < deadline, "queue group did not drain"
    return out


# -- checking ------------------------------------------------------------------------------

def _lines(log: Path) -> list[str]:
    try:
        data = log.read_text()
    except FileNotFoundError:
        return []
    return data.split("\n")[:-1]  # a torn last line (no newline) is ignored


@dataclass
class Ev:
    ns: int
    seq: int  # file order, to keep lines of one write in order
    src: str
    kind: str
    f: list[str]


def _events(run: Run, drained: Drained) -> dict[str, list[Ev]]:
    """Events per stream (``producer``, a group name), sorted by time."""
    by: dict[str, list[Ev]] = defaultdict(list)
    seq = 0
    sources: list[tuple[str, str, list[str]]] = []
    for inc in run.incarnations:
        key = "producer" if inc.kind == "producer" else str(inc.group)
        sources.append((key, inc.log.name, _lines(inc.log)))
    for g, lines in drained.stream.items():
        sources.append((g, f"drain-{g}", lines))
    sources.append((QUEUE_GROUP, "drain-queue", drained.queue))
    for key, src, lines in sources:
        for line in lines:
            kind, ns, *rest = line.split(" ")
            seq += 1
            by[key].append(Ev(int(ns), seq, src, kind, rest))
    for evs in by.values():
        evs.sort(key=lambda e: (e.ns, e.seq))
    return by


def _committed_before(times: list[int], highest: list[int], ns: int) -> int:
    """The highest commit that had returned before ``ns`` (``times`` sorted; ``highest[i]``
    is the highest commit returned up to ``times[i]``); 0 if none."""
    k = bisect.bisect_left(times, ns)
    return highest[k - 1] if k else 0


def check(run: Run, drained: Drained) -> tuple[list[str], dict[str, Any]]:
    """Invariants 1-4 over all logs; returns (violations, stats)."""
    bad: list[str] = []
    by = _events(run, drained)
    tried: dict[str, int] = {}
    sent: dict[str, tuple[int, int]] = {}
    for e in by["producer"]:
        if e.kind == "T":
            tried[e.f[0]] = int(e.f[1])
        elif e.kind == "S":
            sent[e.f[0]] = (int(e.f[1]), int(e.f[2]))
    where: dict[tuple[int, int], str] = {}
    for mid, po in sent.items():
        if po in where:
            bad.append(f"sends {where[po]} and {mid} both returned {po}")
        where[po] = mid
    stats: dict[str, Any] = {"tried": len(tried), "sent": len(sent)}
    for g in (*STREAM_GROUPS, QUEUE_GROUP):
        queue = g == QUEUE_GROUP
        delivered: dict[tuple[int, int], list[Ev]] = defaultdict(list)
        # partition -> times of the returned commits and the highest commit up to each
        commit_ns: dict[int, list[int]] = defaultdict(list)
        commit_max: dict[int, list[int]] = defaultdict(list)
        acked: dict[tuple[int, int], int] = {}  # delivery -> when its first ack returned
        last_first: dict[tuple[str, int], int] = {}  # (stream key, partition) -> offset
        dups = 0

        for e in by[g]:
            if e.kind == "C":
                p, o = int(e.f[0]), int(e.f[1])
                commit_ns[p].append(e.ns)
                commit_max[p].append(max(o, commit_max[p][-1] if commit_max[p] else 0))
            elif e.kind == "A":
                acked.setdefault((int(e.f[0]), int(e.f[1])), e.ns)
            elif e.kind == "D":
                p, o, mid, crc, count = (int(e.f[0]), int(e.f[1]), e.f[2], int(e.f[3]),
                                         int(e.f[4]))
                # Judged against what had returned before this poll/receive *began*: a
                # process starved between the call's return and its log line logs after
                # commits and acks that really came later (the checks are sound for any
                # scheduling, as long as the line carries its start).
                start = int(e.f[5]) if len(e.f) > 5 else e.ns
                committed = _committed_before(commit_ns[p], commit_max[p], start)
                po = (p, o)
                # 3. integrity
                if mid not in tried:
                    bad.append(f"{g}: {e.src} got {po} id {mid!r}: never sent")
                elif tried[mid] != crc:
                    bad.append(f"{g}: {e.src} got {po} id {mid}: payload CRC differs")
                elif mid in sent and sent[mid] != po:
                    bad.append(f"{g}: {e.src} got id {mid} at {po}; its send said {sent[mid]}")
                elif where.get(po, mid) != mid:
                    bad.append(f"{g}: {e.src} got id {mid} at {po}, where {where[po]} was sent")
                prev = delivered[po]
                # 2. bounded duplicates
                if prev:
                    dups += 1
                    if queue:
                        if acked.get(po, start) < start:
                            bad.append(f"{g}: {e.src} got {po} again after it was acked")
                        before = [int(x.f[4]) for x in prev if x.ns < start]
                        if before and count <= max(before):
                            bad.append(f"{g}: {e.src} got {po} again with delivery count "
                                       f"{count} (previous {max(before)})")
                    elif o < committed:
                        bad.append(f"{g}: {e.src} got {po} again after a commit of "
                                   f"{committed} had returned")
                elif not queue and o < committed:
                    bad.append(f"{g}: {po} first delivered after a commit of {committed}")
                # 4. order of first deliveries (a queue marks them with count 1; a first
                # delivery to a consumer killed before it logged is redelivered later)
                if (count == 1) if queue else not prev:
                    key = (e.src if queue else g, p)
                    if o <= last_first.get(key, -1):
                        bad.append(f"{g}: first delivery of {po} (by {e.src}) after offset "
                                   f"{last_first[key]} of the same partition")
                    last_first[key] = o
                prev.append(e)
        # no message appended twice (a commit-ring leader killed after its commit must
        # not let the next one append its slots again): one position per message id
        at: dict[str, tuple[int, int]] = {}
        for po, evs in delivered.items():
            for e in evs:
                if at.setdefault(e.f[2], po) != po:
                    bad.append(f"{g}: id {e.f[2]} stored at {at[e.f[2]]} and at {po}")
        # 1. no loss
        ids = {e.f[2] for evs in delivered.values() for e in evs}
        lost = sorted(set(sent) - ids)
        if lost:
            bad.append(f"{g}: {len(lost)} returned sends never delivered, e.g. {lost[:3]}")
        stats[g] = {"delivered": len(delivered), "duplicates": dups}
    return bad, stats


def liveness(run: Run, misses: list[str] | None = None) -> list[float]:
    """Seconds from each kill to the next progress event of every surviving process.

    Each observation above ``LIVENESS_TARGET_S`` is described in ``misses`` (victim,
    how it died, the stalled survivor and its log), to tell a stall from noise.

    A consumer is timed from the first send that returned after the kill: while both
    producers are restarting (their start-up took 2.5-6 s at load averages of 8-10) no
    consumer has anything new, and that is not a stall.  When no send returned within
    ``LIVENESS_LIMIT_S`` of a kill its consumers are not judged for it: the producers
    are, and the check after the last kill (``FINAL_PROGRESS_S``) catches a broker
    that stopped.
    """
    progress: dict[int, list[int]] = {}
    for inc in run.incarnations:
        kind = "S" if inc.kind == "producer" else "D"
        progress[id(inc)] = sorted(int(line.split(" ", 2)[1]) for line in _lines(inc.log)
                                   if line.startswith(kind + " "))
    sends = sorted(ns for inc in run.incarnations if inc.kind == "producer"
                   for ns in progress[id(inc)])
    lat: list[float] = []
    limit = int(LIVENESS_LIMIT_S * 1e9)
    for tk, victim in run.kills:
        if tk + limit > run.end_ns:
            continue
        for inc in run.incarnations:
            if inc is victim or inc.start_ns >= tk:
                continue
            assert inc.end_ns is not None
            if inc.end_ns <= tk + limit:
                continue  # killed too soon after to judge
            if not progress[id(inc)] or progress[id(inc)][0] > tk:
                continue  # still starting up: its first progress measures start-up, not the kill
            since = tk
            if inc.kind != "producer":
                k = bisect.bisect_right(sends, tk)
                if k == len(sends) or sends[k] > tk + limit:
                    continue  # nothing new was sent to deliver (producers restarting)
                since = sends[k]
            nxt = next((ns for ns in progress[id(inc)] if ns > tk), None)
            lat.append(float("inf") if nxt is None else max(0, nxt - since) / 1e9)
            if misses is not None and lat[-1] > LIVENESS_TARGET_S:
                misses.append(f"kill of {victim.log.name} ({victim.how}) at "
                              f"{(tk - run.incarnations[0].start_ns) / 1e9:.2f} s: "
                              f"{inc.log.name} next progress after {lat[-1]:.2f} s")
    return lat


# -- tests ---------------------------------------------------------------------------------

def _torture_and_check(children: Any, tmp_path: Path, mode: str, kills: int,
                       rng: random.Random) -> None:
    t0 = time.monotonic()
    run = torture(children, tmp_path, mode, kills, rng)
    t1 = time.monotonic()
    drained = drain(run)
    bad, stats = check(run, drained)
    misses: list[str] = []
    lat = liveness(run, misses)
    points = sorted(i.how for _, i in run.kills if i.how.startswith("point:"))
    print(f"mode={mode} kills={len(run.kills)} (named points: {points}) "
          f"torture {t1 - t0:.1f} s, drain+check {time.monotonic() - t1:.1f} s; {stats}")
    if lat:
        print(f"liveness after kills: median {statistics.median(lat):.3f} s, "
              f"max {max(lat):.3f} s over {len(lat)} survivor observations; "
              f"> {LIVENESS_TARGET_S} s: {sum(x > LIVENESS_TARGET_S for x in lat)}")
    for miss in misses:
        print("slow:", miss)
    assert len(run.kills) >= kills
    assert stats["sent"] > 0
    assert not bad, f"{len(bad)} violations, first: " + "\n".join(bad[:10])
    assert lat, "no kill left survivors to observe"
    missed = [x for x in lat if x > LIVENESS_LIMIT_S]
    assert len(missed) <= LIVENESS_MISS_FRACTION * len(lat), (
        f"{len(missed)} of {len(lat)} survivor observations made no progress within "
        f"{LIVENESS_LIMIT_S} s after a kill (worst {max(lat):.2f} s):\n" + "\n".join(
            m for m in misses if float(m.rsplit(" after ", 1)[1][:-2]) > LIVENESS_LIMIT_S))


@pytest.mark.parametrize("mode", MODES)
def test_kill9_torture(children: Any, tmp_path: Path, mode: str, rng: random.Random) -> None:
    _torture_and_check(children, tmp_path, mode, CI_KILLS, rng)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_kill9_torture_long(children: Any, tmp_path: Path, mode: str,
                            rng: random.Random) -> None:
    _torture_and_check(children, tmp_path, mode, SLOW_KILLS, rng)


def _synthetic(tmp_path: Path, producer: list[str], g1: list[str],
               queue: list[str]) -> tuple[list[str], dict[str, Any]]:
    log = tmp_path / "p0.0.log"
    log.write_text("".join(line + "\n" for line in producer))
    run = Run("none", tmp_path, [Incarnation("p0", "producer", None, log, 0, 1, "final")])
    return check(run, Drained(stream={"g1": g1, "g2": g1}, queue=queue))


def test_checker_reports_each_violation(tmp_path: Path) -> None:
    """The checker fails on loss, unknown or corrupt payloads, bad duplicates and order.

    A line's last field, when present, is the time its poll or receive began: the
    duplicate checks judge against what had returned before it.
    """
    prod = ["T 1 p0.1.0 11", "T 1 p0.1.1 22", "S 2 p0.1.0 0 0", "S 2 p0.1.1 0 1"]
    good = ["D 3 0 0 p0.1.0 11 0", "D 3 0 1 p0.1.1 22 0", "C 4 0 2"]
    qgood = ["D 3 0 0 p0.1.0 11 1", "D 3 0 1 p0.1.1 22 1", "A 4 0 0", "A 4 0 1"]
    assert _synthetic(tmp_path, prod, good, qgood)[0] == []
    # A poll or receive that began before the commit or ack returned (its process was
    # starved before it logged) may return the message again: not a violation.
    late = (good + ["D 6 0 1 p0.1.1 22 0 3"],
            qgood + ["D 6 0 1 p0.1.1 22 2 3", "D 7 0 0 p0.1.0 11 3 2",
                     "D 8 0 0 p0.1.0 11 2 2"])
    assert _synthetic(tmp_path, prod, *late)[0] == []
    cases = {
        "never delivered": (good[:1], qgood),
        "never sent": (good + ["D 5 0 2 zz.1.9 33 0"], qgood),
        "CRC differs": (["D 3 0 0 p0.1.0 99 0", good[1]], qgood),
        "again after a commit": (good + ["D 5 0 1 p0.1.1 22 0"], qgood),
        "after offset": ([good[1], "D 4 0 0 p0.1.0 11 0"], qgood),
        "again after it was acked": (good, qgood + ["D 5 0 1 p0.1.1 22 2"]),
        "delivery count": (good, ["D 3 0 0 p0.1.0 11 1", "D 4 0 0 p0.1.0 11 1",
                                  "D 4 0 1 p0.1.1 22 1"]),
    }
    for what, (g1, q) in cases.items():
        bad, _ = _synthetic(tmp_path, prod, g1, q)
        assert any(what in b for b in bad), (what, bad)
