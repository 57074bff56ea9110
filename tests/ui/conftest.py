"""Fixtures of the console tests: a real ``mqlite ui`` process and headless Chromium.

The browser is the OS package's Chromium (``apt-get install -y chromium``),
driven by Playwright's Python package with ``executable_path`` (no browser
download).  Where either is missing the browser tests skip and say how to get
it; ``.ci/run`` installs Chromium when it runs as root on Debian/Ubuntu.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
#: Seconds any single step of a console test may take on a loaded 2-core box.
STEP = 30.0


def chromium_path() -> str | None:
    """The OS Chromium: $MQLITE_CHROMIUM, else chromium / chromium-browser on PATH."""
    env = os.environ.get("MQLITE_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (module-scoped: one start per test module)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the console browser tests need playwright: pip install -e '.[test]'")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found for the console browser tests: run `apt-get install -y "
                    "chromium` (Debian/Ubuntu, as root) or set MQLITE_CHROMIUM=/path/to/chrome")
    with sync_api.sync_playwright() as pw:
        try:
            br = pw.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-dev-shm-usage"])
        except Exception as exc:  # noqa: BLE001 - reported as a skip reason
            pytest.skip(f"Chromium at {exe} did not start under playwright: {exc}")
        try:
            yield br
        finally:
            br.close()


class ConsoleProc:
    """A running ``mqlite ui`` child: its URL, token (or None) and process."""

    def __init__(self, proc: subprocess.Popen[str], url: str, token: str | None,
                 lines: list[str], reader: threading.Thread) -> None:
        self.proc = proc
        self.reader = reader
        self.url = url
        self.token = token
        self.lines = lines

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


def _start_console(path: str, *extra: str) -> ConsoleProc:
    proc = subprocess.Popen([sys.executable, "-m", "mqlite", "ui", path, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    got: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.put(line)
        got.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    lines: list[str] = []
    url = token = None
    mode = False
    try:
        while url is None or not mode:
            try:
                line = got.get(timeout=STEP)
            except queue.Empty:
                raise AssertionError(f"mqlite ui printed no URL in {STEP} s: {lines}") from None
            if line is None:
                raise AssertionError(f"mqlite ui exited with {proc.wait()}: {lines}")
            lines.append(line)
            if " on http://" in line:
                url = line.rsplit(" on ", 1)[1].strip()
            if line.startswith("actions ON: token "):
                token = line.split("token ", 1)[1].strip()
            mode = mode or line.startswith(("actions ON", "read-only"))
    except BaseException:
        proc.kill()
        proc.wait()
        reader.join(timeout=STEP)
        proc.stdout.close()
        raise
    return ConsoleProc(proc, url, token, lines, reader)


@pytest.fixture
def console() -> Iterator[Callable[..., ConsoleProc]]:
    """Start ``mqlite ui DIR --port 0 [args]`` processes; all are stopped (SIGTERM) after."""
    started: list[ConsoleProc] = []

    def start(path: str, *extra: str) -> ConsoleProc:
        c = _start_console(path, *extra)
        started.append(c)
        return c

    yield start
    for c in started:
        c.proc.terminate()
        try:
            c.proc.wait(timeout=STEP)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
        c.reader.join(timeout=STEP)
        if c.proc.stdout is not None:
            c.proc.stdout.close()


@pytest.fixture(scope="session")
def _populated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-template") / "broker"
    subprocess.run([sys.executable, str(HERE / "_ui_procs.py"), "populate", str(path)],
                   check=True, timeout=STEP * 2, capture_output=True)
    return path


@pytest.fixture
def populated(_populated_template: Path, tmp_path: Path) -> str:
    """A broker directory filled by ``_ui_procs.populate`` (run once per session in a child:
    it leaves a queue delivery in flight by exiting without closing), copied per test."""
    path = tmp_path / "broker"
    shutil.copytree(_populated_template, path)
    return str(path)
