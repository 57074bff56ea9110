"""Periodic jobs (``@app.periodic``, D90): one run per tick across workers and restarts,
the App's retries and dead letters, ``TestApp.tick``, option errors.

Synchronised on events set by the jobs and on files written by worker processes,
never on sleeps; outcomes only (no assertion on when a tick ran)."""

from __future__ import annotations

import datetime
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _polling import wait_until

import mqlite
from mqlite.app import TestApp, Tick

TIMEOUT = 120.0
HOUR = 3600.0


def _app(path: Any = "unused") -> mqlite.App:
    return mqlite.App(path, name="svc", durability="none")


def test_test_app_tick_runs_the_job_once_per_tick_and_advances() -> None:
    app = _app()
    seen: list[Tick] = []

    @app.periodic(every=HOUR)
    @app.publisher("reports")
    def report(tick: Tick, ctx: mqlite.Context) -> dict[str, Any]:
        seen.append(tick)
        assert ctx.topic == "svc.periodic.report"
        return {"at": tick.at}

    @app.periodic(every=datetime.timedelta(hours=1), name="bare")
    async def nothing() -> None:
        return None

    with TestApp(app) as t:
        first = t.tick("report")
        t.wait_idle()
        second = t.tick("report")
        t.tick("bare")
        t.wait_idle()
        assert first.job == "report" and first.every == HOUR
        assert first.at % HOUR == 0 and first.at > time.time() - 5
        assert second.at == first.at + HOUR                    # each call advances one tick
        assert seen == [first, second]
        assert t.payloads("report") == [first, second]
        assert t.published("reports") == [{"at": first.at}, {"at": second.at}]
        assert [e.status for e in t.calls("bare")] == ["ok"]
        with pytest.raises(KeyError, match="no periodic job named 'nope'"):
            t.tick("nope")
        with pytest.raises(ValueError, match="not a tick of 'report'"):
            t.tick("report", at=first.at + 1)


def test_a_fired_tick_replaces_the_scheduled_one() -> None:
    """TestApp.tick(at=T) appends T now with T's dedup id: when T's own schedule comes due
    it merges with it, so T runs once; the following ticks run on their own."""
    app = _app()
    runs: Counter[float] = Counter()
    later = threading.Event()
    target: list[float] = []

    @app.periodic(every=0.2)
    def fast(tick: Tick) -> None:
        runs[tick.at] += 1
        if target and tick.at >= target[0] + 0.6:
            later.set()

    with TestApp(app) as t:
        # the tick after next: each worker's start already scheduled the next one
        at = app.periodic_jobs["fast"].next_after(time.time() + 0.2) / 1000
        target.append(at)
        t.tick("fast", at=at)
        assert later.wait(TIMEOUT), "the ticks after the fired one did not run"
    assert runs[at] == 1
    assert all(n == 1 for n in runs.values()), runs


def test_a_failing_job_retries_dead_letters_and_keeps_its_schedule() -> None:
    app = _app()
    attempts: list[int] = []

    @app.periodic(every=HOUR, retries=1, backoff=0, dead_letter="jobs.dlq")
    def broken(ctx: mqlite.Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("the report server is down")

    with TestApp(app) as t:
        tick = t.tick("broken")
        t.wait_idle()
        assert attempts == [1, 2]
        assert [e.status for e in t.calls("broken")] == ["retry", "dead_letter"]
        [dl] = t.dead_letters("jobs.dlq")
        assert dl.original_topic == "svc.periodic.broken" and dl.reason == "retries exhausted"
        assert b'"job":"broken"' in dl.message.value
        # the next tick was scheduled before the job ran: the chain goes on
        assert app.broker.stats().scheduled.get("svc.periodic.broken", 0) >= 1
        assert app.health().subscribers["broken"]["mode"] == "queue"
        assert tick.late < 0  # fired ahead of its time


def test_two_apps_on_one_broker_run_each_tick_once(tmp_path: Path) -> None:
    """Two Apps on one directory stand for two worker processes: both schedule every
    tick (at start, and whoever runs a tick schedules the next), yet each tick runs in
    exactly one of them."""
    runs: list[tuple[float, int]] = []
    lock = threading.Lock()
    enough = threading.Event()
    apps = []
    for i in range(2):
        app = _app(tmp_path)

        def job(tick: Tick, i: int = i) -> None:
            with lock:
                runs.append((tick.at, i))
                if len({at for at, _ in runs}) >= 8:
                    enough.set()

        job.__name__ = "beat"
        app.periodic(every=0.2)(job)
        apps.append(app)
    try:
        for app in apps:
            app.start()
        assert enough.wait(TIMEOUT), f"8 ticks did not run: {runs}"
    finally:
        for app in apps:
            app.stop()
    ticks = Counter(at for at, _ in runs)
    assert max(ticks.values()) == 1, [(at, who) for at, who in runs if ticks[at] > 1]


def test_a_tick_missed_while_down_runs_once_at_start(tmp_path: Path) -> None:
    """A tick left scheduled by a run that stopped before it came due runs once, late,
    at the next start; the ticks between it and now are not run (Celery beat)."""
    app = _app(tmp_path)
    runs: list[Tick] = []
    three = threading.Event()

    @app.periodic(every=0.2)
    def job(tick: Tick) -> None:
        runs.append(tick)
        if len(runs) >= 3:
            three.set()

    # what a service stopped 10 s ago left behind: its next tick, now 10 s overdue
    missed = app.periodic_jobs["job"].schedule(app._backend_now(), time.time() - 10) / 1000
    started = time.time()
    with app:
        assert three.wait(TIMEOUT)
    assert runs[0].at == missed and runs[0].late >= 9
    assert all(r.at > started for r in runs[1:])  # none of the ~50 missed ticks ran


def test_periodic_options_are_checked_at_decoration() -> None:
    app = _app()

    def job() -> None:
        return None

    bad: list[tuple[Any, type[Exception], str]] = [(0, ValueError, "every is in seconds"),
        (0.05, ValueError, "0.1 to"), (400 * 86400, ValueError, "366 days"),
        (float("inf"), ValueError, "finite"), ("5", TypeError, "number of seconds"),
        (True, TypeError, "number of seconds")]
    for every, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            app.periodic(every=every)(job)
    with pytest.raises(ValueError, match="0 <= offset < every"):
        app.periodic(every=10, offset=10)(job)
    with pytest.raises(ValueError, match="0 <= offset < every"):
        app.periodic(every=10, offset=-1)(job)
    with pytest.raises(TypeError, match=r"must take \(\), \(tick\), \(ctx\)"):
        app.periodic(every=10)(lambda a, b, c: None)
    with pytest.raises(ValueError, match="name must be 1 to 200"):
        app.periodic(every=10, name="")(job)
    app.periodic(every=10, offset=datetime.timedelta(seconds=3))(job)
    assert app.periodic_jobs["job"].next_after(100.0) == 103_000
    assert app.periodic_jobs["job"].next_after(103.0) == 113_000
    with pytest.raises(ValueError, match="exists"):
        app.periodic(every=10)(job)  # the same name twice


def test_periodic_after_start_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with app, pytest.raises(RuntimeError, match="before the App starts"):
        app.periodic(every=1)(lambda: None)


def test_workers_run_each_tick_exactly_once(app_procs: Any) -> None:
    """`mqlite run --workers 3`: each worker schedules every tick; each tick ran once."""
    log = app_procs.dir / "ticks.log"

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    p = app_procs.run("_periodic_procs:beat_app", "--workers", "3")
    wait_until(lambda: len(lines()) >= 10, TIMEOUT, "10 ticks", step=0.05)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=TIMEOUT)[0].decode()
    assert p.returncode == 0, out[-3000:]
    ticks = Counter(int(line.split()[0]) for line in lines())
    assert max(ticks.values()) == 1, {t: n for t, n in ticks.items() if n > 1}
    assert len(ticks) >= 10
    assert all(t % 200 == 0 for t in ticks)  # on the grid
