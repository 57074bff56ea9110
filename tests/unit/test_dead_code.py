"""Removed dead code stays removed (issue 9, part 7).

``RebalanceInProgressError`` was exported but never raised (a rebalance is
seen by the next ``poll()``, never as an error); ``groups.reap``,
``log.update_topic`` and ``Transaction._publish_futures`` had no caller; the
``[cli]`` (rich) and ``[metrics]`` (prometheus_client) extras installed
packages nothing imports.  (Issue 13 put both to use: rich became a core
dependency of the CLI, ``[metrics]`` serves ``mqlite.metrics``.)
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import mqlite
from mqlite import errors, groups
from mqlite._storage import log

ROOT = Path(__file__).resolve().parents[2]


def test_never_raised_error_is_gone() -> None:
    assert not hasattr(mqlite, "RebalanceInProgressError")
    assert "RebalanceInProgressError" not in mqlite.__all__
    assert "RebalanceInProgressError" not in errors.__all__


def test_uncalled_helpers_are_gone() -> None:
    assert not hasattr(groups, "reap")
    assert not hasattr(log, "update_topic")


def test_no_extras_for_unused_packages() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert "cli" not in extras  # rich is a core dependency (docs/decisions.md D28)
    assert any(d.startswith("rich") for d in meta["project"]["dependencies"])
    src = "\n".join(p.read_text() for p in (ROOT / "src" / "mqlite").rglob("*.py"))
    assert "from rich" in src
    assert extras["metrics"] == ["prometheus_client>=0.20"]
    assert "import prometheus_client" in src
