"""Turning row results into the printed table, Markdown, JSON and the ratio chart.

A row result (a dict, stored as-is in the JSON) holds, per side, every
repetition's sample and their summaries; ``ratio`` is the ratio of medians
oriented so that **> 1 means mqlite is ahead**: mqlite msgs/s divided by the
other side's for throughput rows, the other side's p50 latency divided by
mqlite's for latency rows.  ``ratio_spread`` is the min and max of the
per-repetition ratios of the interleaved pairs (A1/B1, A2/B2, ...).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["fmt_rate", "format_table", "markdown", "write_chart", "write_json"]


def fmt_rate(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _fmt_us(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.0f}ms"
    if v >= 1000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}µs" if v >= 10 else f"{v:.1f}µs"


def _side_cells(side: dict[str, Any] | None, kind: str) -> tuple[str, str, str]:
    """(msgs/s with spread, MB/s, latency) of one side."""
    if side is None:
        return "-", "-", "-"
    if side.get("error"):
        return "error", "-", "-"
    r = side["rate"]
    rate = f"{fmt_rate(r['median'])} [{fmt_rate(r['min'])}-{fmt_rate(r['max'])}]"
    mb = f"{side['mb_s']:.3g}" if side.get("mb_s") is not None else "-"
    if kind == "latency":
        lat = "/".join(_fmt_us(side[p]["median"]) if side.get(p) else "-"
                       for p in ("p50_us", "p99_us", "p999_us"))
    else:
        cu = side.get("call_us")
        lat = _fmt_us(cu["median"]) if cu else "-"
    mpc = side.get("msgs_per_commit")
    if mpc:
        rate += f" ({mpc['median']:.3g}/commit)"
    return rate, mb, lat


def _ratio_cell(row: dict[str, Any]) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "-"
    spread = row.get("ratio_spread")
    if spread:
        return f"{ratio:.2f}x [{spread['min']:.2f}-{spread['max']:.2f}]"
    return f"{ratio:.2f}x"


HEADER = ["row", "durability (mqlite / other)", "mqlite msgs/s [min-max]",
          "other msgs/s [min-max]", "MB/s mqlite / other", "latency mqlite / other",
          "ratio [pair min-max]", "other side"]


def _cells(row: dict[str, Any]) -> list[str]:
    a_rate, a_mb, a_lat = _side_cells(row.get("a"), row["kind"])
    b_rate, b_mb, b_lat = _side_cells(row.get("b"), row["kind"])
    other = row.get("b_durability") or "-"
    return [row["id"], f"{row['durability']} / {other}", a_rate, b_rate, f"{a_mb} / {b_mb}",
            f"{a_lat} / {b_lat}", _ratio_cell(row),
            (row.get("b") or {}).get("label", row.get("b_skipped", "-"))]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table for the terminal."""
    lines = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown: notes on reading them, then one table row per result row."""
    out = [
        f"# mqlite vs Redis Streams and embedded peers — {meta['profile']} run",
        "",
        (f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), "
        f"{meta['machine']['os']}, Python {meta['python']}, redis-server "
        f"{meta.get('redis_server') or 'not installed'}, redis-py {meta.get('redis_py')} "
        f"(hiredis parser: {meta.get('hiredis')}). Command: `{meta['command']}`. "
        f"Wall time {meta['wall_seconds']:.0f} s."),
        "",
        (f"Each row ran A B A B ... ({meta['reps']} repetitions per side, interleaved); "
        "cells are medians with [min-max] over repetitions. **ratio > 1 means mqlite is "
        "ahead**: mqlite msgs/s ÷ other msgs/s, or for latency rows the other side's p50 ÷ "
        "mqlite's p50; [min-max] of the per-pair ratios. Latency is µs per call for "
        "throughput rows (per worker), p50/p99/p999 end-to-end for latency rows. "
        "MB/s counts payload bytes only."),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        out.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if (r.get("a") or {}).get("error") or (r.get("b") or {}).get("error")]
    if errors:
        out += ["", "Errors:", ""]
        for r in errors:
            for side in ("a", "b"):
                err = (r.get(side) or {}).get("error")
                if err:
                    out.append(f"- `{r['id']}` ({side}): {err.strip().splitlines()[-1]}")
    out.append("")
    return "\n".join(out)


def write_json(path: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_chart(path: str, rows: list[dict[str, Any]], title: str) -> bool:
    """Horizontal bars of the ratios (log scale, a line at 1x); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    data = [r for r in rows if r.get("ratio")]
    if not data:
        return False
    labels = [f"{r['id']}  ({(r.get('b') or {}).get('system', '')})" for r in data]
    ratios = [r["ratio"] for r in data]
    lo = [r["ratio"] - (r.get("ratio_spread") or {}).get("min", r["ratio"]) for r in data]
    hi = [(r.get("ratio_spread") or {}).get("max", r["ratio"]) - r["ratio"] for r in data]
    colors = ["#2a9d8f" if v >= 1 else "#e76f51" for v in ratios]
    height = max(4.0, 0.2 * len(data) + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    y = list(range(len(data)))[::-1]
    # Bars grow from the 1x line: right = mqlite ahead, left = behind.
    ax.barh(y, [v - 1.0 for v in ratios], left=1.0, color=colors, height=0.7)
    ax.errorbar(ratios, y, xerr=[lo, hi], fmt="none", ecolor="black", elinewidth=0.6,
                capsize=1.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1.0)
    ax.set_xlabel("ratio, log scale (> 1 = mqlite ahead; throughput: mqlite/other msgs/s; "
                  "latency: other p50 / mqlite p50)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", linewidth=0.3, alpha=0.5)
    ax.set_ylim(-0.7, len(data) - 0.3)
    for yy, v, h in zip(y, ratios, hi):
        ax.text(max(v + h, 1.0) * 1.04, yy, f"{v:.2g}x", va="center", fontsize=5.5)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
