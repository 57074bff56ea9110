"""Render the README's condensed performance table from benchmarks/results/latest.json.

    python benchmarks/readme_table.py            # prints Markdown

The README shows a fixed selection of rows (headline workloads at each
durability level); docs/performance.md has every row.
"""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [
    "send/100B/none", "batch1000/100B/none", "consume1000/100B/none", "queue1000/100B/none",
    "latency/100B/none", "procs16/100B/none",
    "batch1000/100B/lazy", "consume1000/100B/lazy", "queue1000/100B/lazy", "send/100B/lazy",
    "send/100B/sync", "batch1000/1KiB/sync", "consume1000/100B/sync", "queue1000/100B/sync",
    "threads16/100B/sync", "procs16/100B/sync",
]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = {r["id"]: r for r in data["rows"]}
    out = ["| workload | mqlite | Redis / peer | mqlite ÷ Redis |", "| --- | --- | --- | --- |"]
    for rid in ROWS:
        r = rows.get(rid)
        if r is None:
            continue
        label = f"{r['workload']}, {r['size']} B, mqlite `{r['durability']}` vs {r['b_durability']}"
        if r["kind"] == "latency":
            a = f"p50 {r['a']['p50_us']['median']:.0f} µs" if r["a"].get("p50_us") else "-"
            b = f"p50 {r['b']['p50_us']['median']:.0f} µs" if r["b"].get("p50_us") else "-"
        else:
            a = _fmt(r["a"]["rate"]["median"]) + " msg/s" if r["a"].get("rate") else "error"
            b = _fmt(r["b"]["rate"]["median"]) + " msg/s" if r["b"].get("rate") else "-"
        ratio = f"**{r['ratio']:.2f}x**" if r.get("ratio") else "-"
        out.append(f"| {label} | {a} | {b} | {ratio} |")
    meta = data["meta"]
    m = meta["machine"]
    out.append("")
    out.append(f"{m['cpu']}, {m['cpus']} vCPUs ({m['hypervisor']}), {m['memory']}, {m['os']}, "
               f"{m['tmp_fs']}; Python {meta['python']}, redis-server {meta['redis_server']}; "
               f"{meta['reps']} interleaved repetitions per row, medians; run started "
               f"{meta['started']} at commit {meta['git_commit']}.")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(__file__).resolve().parent / "results" / "latest.json"))
