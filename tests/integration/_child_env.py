"""Test helper: the environment of a child process of the integration suites.

A module of its own (not ``conftest``): several test folders have a ``conftest``
module, and which one ``import conftest`` finds depends on what was collected first.
"""

from __future__ import annotations

import os
from pathlib import Path

import mqlite

HERE = Path(__file__).resolve().parent
SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)


def child_env() -> dict[str, str]:
    """``os.environ`` with this folder and mqlite's source first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), SRC_DIR, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env
