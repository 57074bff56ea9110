"""Side-by-side benchmark runner: mqlite vs Redis Streams and embedded peers.

Usage::

    python -m benchmarks                 # full run (~15 min), writes results/latest.* and
                                         # docs/benchmark.png
    python -m benchmarks --quick         # smoke run (< 2 min), writes results/quick.*
    python -m benchmarks --only 'send/|batch1000'   # rows whose id matches a regex
    python -m benchmarks --list          # print the row ids and exit

For each durability mode the runner starts its own ``redis-server`` on
127.0.0.1 (free port, temporary directory) with the matching persistence
setting, runs that mode's rows and stops it, also on Ctrl-C or an error.
Every row runs its two sides interleaved (A B A B ...), ``--reps`` times
each, and reports medians with their spread.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _report
from benchmarks._common import Budget, Sample, summarize
from benchmarks._redis import (
    INSTALL_HINT,
    REDIS_DURABILITY,
    RedisServer,
    redis_server_path,
    redis_server_version,
)

__all__ = ["Profile", "build_rows", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DURABILITIES = ("sync", "lazy", "none")

# Durability of the embedded peers with their default settings, and the mqlite mode matched.
PEER_DURABILITY = {
    "persist-queue": ("sync", "SQLite WAL, synchronous=FULL (default)"),
    "litequeue": ("lazy", "SQLite WAL, synchronous=NORMAL (its default)"),
}


@dataclass(frozen=True)
class Profile:
    """Sizes, repetitions and per-repetition bounds of a run."""

    name: str
    reps: int
    sizes: tuple[int, ...]
    seconds: float            # per repetition, single-process throughput rows
    send_cap: int             # messages per repetition, one-per-call rows
    batch_cap: dict[int, int]  # messages per repetition, batch rows, by value size
    consume_cap: int          # pre-filled and consumed per repetition
    conc_seconds: float       # window of the 1/4/16-producer rows
    conc_cap: int             # total messages per repetition over all producers
    lat_rate: float           # msgs/s of the latency rows
    lat_seconds: float
    peer_seconds: float
    peer_cap: int


FULL = Profile("full", reps=5, sizes=(100, 1024), seconds=0.5, send_cap=20_000,
               batch_cap={100: 200_000, 1024: 100_000}, consume_cap=50_000,
               conc_seconds=0.6, conc_cap=50_000, lat_rate=2000.0, lat_seconds=1.5,
               peer_seconds=1.0, peer_cap=5_000)
QUICK = Profile("quick", reps=5, sizes=(100,), seconds=0.08, send_cap=2_000,
                batch_cap={100: 20_000, 1024: 10_000}, consume_cap=10_000,
                conc_seconds=0.15, conc_cap=5_000, lat_rate=2000.0, lat_seconds=0.4,
                peer_seconds=0.15, peer_cap=500)


@dataclass
class RowSpec:
    """One comparison: side ``a`` (mqlite) against side ``b`` (Redis or a peer)."""

    id: str
    workload: str
    size: int
    durability: str
    kind: str  # "throughput" | "latency"
    a: tuple[str, dict[str, Any]]
    b: tuple[str, dict[str, Any]] | None
    b_system: str
    b_durability: str
    budget: Budget
    notes: list[str] = field(default_factory=list)


def size_label(size: int) -> str:
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


def build_rows(p: Profile) -> list[RowSpec]:
    """Every row of a run, in execution order (grouped by durability phase)."""
    rows: list[RowSpec] = []
    for d in DURABILITIES:
        rlabel = REDIS_DURABILITY[d][0]
        for size in p.sizes:
            sl = size_label(size)

            def add(slug: str, workload: str, a: tuple[str, dict[str, Any]],
                    b: tuple[str, dict[str, Any]], budget: Budget, kind: str = "throughput",
                    sl: str = sl, size: int = size, d: str = d, rlabel: str = rlabel) -> None:
                rows.append(RowSpec(f"{slug}/{sl}/{d}", workload, size, d, kind, a, b, "redis",
                                    rlabel, budget))

            one = Budget(p.seconds, p.send_cap)
            batch = Budget(p.seconds, p.batch_cap[size])
            cons = Budget(p.seconds, p.consume_cap)
            conc = Budget(p.conc_seconds, p.conc_cap)
            add("send", "one send per call", ("mq_send", {}), ("redis_send", {}), one)
            for n in (100, 1000):
                add(f"batch{n}", f"{n} messages per call", ("mq_send_batch", {"batch": n}),
                    ("redis_pipeline", {"batch": n}), batch)
            add("consume1000", "consume 1000 per call + commit/ack", ("mq_consume", {}),
                ("redis_group", {}), cons)
            add("queue1000", "queue receive 1000 + ack", ("mq_queue", {}),
                ("redis_group", {}), cons)
            add("latency", f"cross-process latency at {p.lat_rate:.0f} msg/s",
                ("mq_latency", {"rate": p.lat_rate}), ("redis_latency", {"rate": p.lat_rate}),
                Budget(p.lat_seconds, int(p.lat_rate * p.lat_seconds)), kind="latency")
            add("beside4", "one send per call beside 3+1 group consumers (poll 100 + commit)",
                ("mq_beside", {}), ("redis_beside", {}), one)
            for n in (1, 4, 16):
                add(f"threads{n}", f"{n} producer threads, each waits for its ack",
                    ("mq_threads", {"n": n}), ("redis_threads", {"n": n}), conc)
            for n in (1, 2, 4, 16, 64):
                add(f"procs{n}", f"{n} producer processes, each waits for its ack",
                    ("mq_procs", {"n": n}), ("redis_procs", {"n": n}), conc)
            peer = Budget(p.peer_seconds, p.peer_cap)
            for system, (pd, plabel) in PEER_DURABILITY.items():
                if pd != d:
                    continue
                key = system.replace("-", "")
                get = "get+ack" if system == "persist-queue" else "pop+done"
                rows.append(RowSpec(f"peer-{key}-put/{sl}/{d}", "one put per call", size, d,
                                    "throughput", ("mq_send", {}), (key, {"op": "put"}),
                                    system, plabel, peer))
                rows.append(RowSpec(f"peer-{key}-{get.replace('+', '')}/{sl}/{d}",
                                    f"one {get} per call (mqlite: queue receive(1)+ack)", size,
                                    d, "throughput", ("mq_queue_one", {}), (key, {"op": "get"}),
                                    system, plabel, peer))
    return rows


# -- running -------------------------------------------------------------------------------

def _side_result(label: str, system: str, samples: list[Sample], size: int,
                 error: str | None) -> dict[str, Any]:
    rates = [s.rate for s in samples]
    res: dict[str, Any] = {
        "label": label, "system": system, "error": error,
        "samples": [{"messages": s.messages, "seconds": round(s.seconds, 6), "calls": s.calls,
                     "workers": s.workers, "rate": round(s.rate, 1),
                     "p50_us": s.p50_us, "p99_us": s.p99_us, "p999_us": s.p999_us,
                     **s.extra} for s in samples],
        "rate": summarize(rates),
        "call_us": summarize([s.call_us for s in samples if s.call_us is not None]),
    }
    res["mb_s"] = res["rate"]["median"] * size / 1e6 if res["rate"] else None
    for p in ("p50_us", "p99_us", "p999_us"):
        vals = [getattr(s, p) for s in samples if getattr(s, p) is not None]
        res[p] = summarize(vals) if vals else None
    return res


def _metric(s: Sample, kind: str) -> float:
    return (s.p50_us or float("nan")) if kind == "latency" else s.rate


def run_row(spec: RowSpec, ctx: Any, reps: int, log: Any) -> dict[str, Any]:
    """Run one row: set both sides up, A B A B ... ``reps`` times, summarize."""
    from benchmarks._sides import SIDES

    sides: list[Any] = []
    samples: list[list[Sample]] = [[], []]
    errors: list[str | None] = [None, None]
    specs = [spec.a, spec.b]
    for k, s in enumerate(specs):
        if s is None:
            sides.append(None)
            continue
        name, opts = s
        sides.append(SIDES[name](ctx, spec.size, spec.budget, **opts))
    try:
        for k, side in enumerate(sides):
            if side is None:
                continue
            try:
                side.setup()
            except Exception:  # noqa: BLE001 - one broken side must not end the run
                errors[k] = traceback.format_exc()
        for i in range(reps):
            for k, side in enumerate(sides):
                if side is None or errors[k]:
                    continue
                try:
                    samples[k].append(side.rep(i))
                except Exception:  # noqa: BLE001
                    errors[k] = traceback.format_exc()
    finally:
        for side in sides:
            if side is not None:
                try:
                    side.close()
                except Exception:  # noqa: BLE001
                    log(f"  warning: cleanup of {spec.id} failed:\n{traceback.format_exc()}")
    row: dict[str, Any] = {
        "id": spec.id, "workload": spec.workload, "size": spec.size, "kind": spec.kind,
        "durability": spec.durability, "b_durability": spec.b_durability,
        "budget": {"seconds": spec.budget.seconds, "messages": spec.budget.messages},
        "a": _side_result(sides[0].label, "mqlite", samples[0], spec.size, errors[0]),
        "b": (None if sides[1] is None else
              _side_result(sides[1].label, spec.b_system, samples[1], spec.size, errors[1])),
    }
    if spec.b is None:
        row["b_skipped"] = "not run"
    per_commit = [x.extra["msgs_per_commit"] for x in samples[0] if "msgs_per_commit" in x.extra]
    if per_commit:
        row["a"]["msgs_per_commit"] = summarize(per_commit)
    ra, rb = samples
    if ra and rb and not errors[0] and not errors[1]:
        ma = row["a"]["p50_us" if spec.kind == "latency" else "rate"]["median"]
        mb = row["b"]["p50_us" if spec.kind == "latency" else "rate"]["median"]
        pairs = []
        for x, y in zip(ra, rb):
            va, vb = _metric(x, spec.kind), _metric(y, spec.kind)
            if va > 0 and vb > 0:
                pairs.append(vb / va if spec.kind == "latency" else va / vb)
        if ma and mb:
            row["ratio"] = mb / ma if spec.kind == "latency" else ma / mb
            row["ratio_spread"] = summarize(pairs)
            if spec.kind == "latency" and row["a"]["p99_us"] and row["b"]["p99_us"]:
                row["ratio_p99"] = row["b"]["p99_us"]["median"] / row["a"]["p99_us"]["median"]
    return row


def _peer_available(system: str) -> str | None:
    """None when importable, else the reason to skip."""
    mod = {"persist-queue": "persistqueue", "litequeue": "litequeue"}[system]
    try:
        __import__(mod)
        return None
    except ImportError:
        return f"{system} is not installed (pip install {system}); its rows are skipped"


def _versions() -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {}
    for dist in ("mqlite", "redis", "hiredis", "lmdb", "persist-queue", "litequeue",
                 "pytest-benchmark", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine() -> dict[str, Any]:
    """CPU model, count, memory, kernel and OS of this machine."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    os_name = platform.platform()
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    virt = None
    if shutil.which("lscpu"):
        try:
            for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                       timeout=10, check=False).stdout.splitlines():
                if line.startswith("Hypervisor vendor:"):
                    virt = line.split(":", 1)[1].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory": mem, "os": os_name,
            "kernel": platform.release(), "hypervisor": virt,
            "tmp_fs": _fs_of(tempfile.gettempdir())}


def _fs_of(path: str) -> str | None:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, timeout=10, check=False)
        parts = out.stdout.splitlines()[-1].split()
        return f"{parts[1]} on {parts[0]}"
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _src_changes() -> list[str]:
    """Uncommitted changes under src/ and csrc/: the editable install runs the work tree."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "csrc"],
                             capture_output=True, text=True, timeout=10, check=False)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _mp_context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks._workers"])
    return ctx


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 2 minutes)")
    ap.add_argument("--only", metavar="PATTERN", action="append",
                    help="run rows whose id matches this regex (re.search); repeatable")
    ap.add_argument("--reps", type=int, help="repetitions per side (default: 5)")
    ap.add_argument("--list", action="store_true", help="list row ids and exit")
    ap.add_argument("--out", metavar="NAME",
                    help="result file stem under benchmarks/results (default: latest for a "
                         "full unfiltered run, quick for --quick, partial for --only)")
    ap.add_argument("--chart", metavar="PATH", help="chart path (default: docs/benchmark.png "
                    "for a full unfiltered run, else benchmarks/results/<NAME>.png)")
    ap.add_argument("--no-redis", action="store_true", help="run the mqlite side only")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    reps = args.reps or profile.reps
    if reps < 1:
        raise SystemExit("--reps must be >= 1")
    rows = build_rows(profile)
    if args.only:
        pats = [re.compile(p) for p in args.only]
        rows = [r for r in rows if any(p.search(r.id) for p in pats)]
    if args.list:
        for r in rows:
            print(f"{r.id:40s} {r.workload}  [vs {r.b_system}: {r.b_durability}]")
        return 0
    if not rows:
        print("no row matches --only; see --list", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    have_redis = redis_server_path() is not None and not args.no_redis
    if redis_server_path() is None:
        log(INSTALL_HINT)
    for r in rows:
        if r.b_system == "redis" and not have_redis:
            r.b = None
        elif r.b_system != "redis":
            why = _peer_available(r.b_system)
            if why:
                log(why)
                r.b = None
    stem = args.out or ("quick" if args.quick else "partial" if args.only else "latest")
    chart = args.chart or (os.path.join(ROOT, "docs", "benchmark.png") if stem == "latest"
                           else os.path.join(RESULTS, f"{stem}.png"))

    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    tmp_root = tempfile.mkdtemp(prefix="mqbench-", dir="/tmp")
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    mp = _mp_context()
    from benchmarks._sides import Ctx

    log(f"mqlite benchmarks: {profile.name} profile, {len(rows)} rows, {reps} reps per side, "
        f"temp dir {tmp_root}")
    try:
        for d in DURABILITIES:
            phase = [r for r in rows if r.durability == d]
            if not phase:
                continue
            need_redis = any(r.b is not None and r.b_system == "redis" for r in phase)
            server = RedisServer(d, tmp_root) if need_redis else None
            try:
                if server is not None:
                    server.start()
                    log(f"== durability {d!r}: redis-server :{server.port} ({server.label})")
                else:
                    log(f"== durability {d!r}")
                ctx = Ctx(tmp=tmp_root, durability=d, mp=mp,
                          redis_port=server.port if server else None)
                for spec in phase:
                    t0 = time.monotonic()
                    row = run_row(spec, ctx, reps, log)
                    results.append(row)
                    log(f"  {spec.id:34s} {_report._ratio_cell(row):22s} "
                        f"mqlite {_report.fmt_rate((row['a']['rate'] or {}).get('median'))}/s"
                        f"  other {_report.fmt_rate(((row['b'] or {}).get('rate') or {}).get('median'))}/s"
                        f"  ({time.monotonic() - t0:.1f}s)")
                    for side in ("a", "b"):
                        err = (row.get(side) or {}).get("error")
                        if err:
                            log(f"    {side} failed: {err.strip().splitlines()[-1]}")
            finally:
                if server is not None:
                    server.stop()
    except KeyboardInterrupt:
        log("interrupted: redis-server stopped, temporary files removed; no results written")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(tmp_root, ignore_errors=True)

    wall = time.monotonic() - started
    versions = _versions()
    meta: dict[str, Any] = {
        "profile": profile.name, "reps": reps, "started": _dt.datetime.now().astimezone()
        .isoformat(timespec="seconds"), "wall_seconds": wall,
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv or
                                                                              sys.argv[1:])),
        "git_commit": _git_commit(), "uncommitted_src": _src_changes(),
        "machine": machine(), "python": platform.python_version(),
        "redis_server": redis_server_version(), "redis_py": versions.get("redis"),
        "hiredis": versions.get("hiredis") is not None, "versions": versions,
        "redis_config": {d: " ".join(a) for d, (_, a) in REDIS_DURABILITY.items()},
        "profile_params": {k: v for k, v in profile.__dict__.items()},
    }
    meta["command"] = meta["command"].strip()
    print()
    print(_report.format_table(results))
    jpath = os.path.join(RESULTS, f"{stem}.json")
    mpath = os.path.join(RESULTS, f"{stem}.md")
    _report.write_json(jpath, results, meta)
    _report.write_text(mpath, _report.markdown(results, meta))
    title = (f"mqlite vs Redis Streams / peers — {profile.name} run, medians of {reps}, "
             f"{meta['machine']['cpu']} x{meta['machine']['cpus']}")
    if _report.write_chart(chart, results, title):
        log(f"\nwrote {jpath}, {mpath}, {chart}  ({wall:.0f} s)")
    else:
        log(f"\nwrote {jpath}, {mpath}  ({wall:.0f} s); no chart: pip install matplotlib")
    return 0
