"""Running an App: ``app.run(workers=N)`` and ``mqlite run module:app``.

One worker runs the App in this process.  ``workers > 1`` forks that many
worker processes (before the broker is opened here) that share the App's
groups: stream partitions are spread over them, queue messages compete.  A
worker that dies is started again; its partitions move to the others at once
(the kernel drops its member lock), and what it had not committed is
redelivered.

Signals: the first SIGTERM or SIGINT stops gracefully (stop fetching, let
running handlers finish within ``graceful_timeout``, commit, leave the
groups, run ``on_shutdown``); a second one stops at once (``os._exit``: what was
not committed is redelivered to the next owner).  A supervisor forwards
both to its workers.

Health: ``GET /health`` on ``health_port`` answers 200 with ``{"ready": true,
...}`` when every subscriber (every worker) has joined and none failed, else
503.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from mqlite.app.app import App

__all__ = ["run_app", "serve_health"]

log = logging.getLogger("mqlite.app")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve_health(report: Callable[[], tuple[bool, dict[str, Any]]], port: int,
                 host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``GET /health`` (and ``/``) from ``report()`` on a daemon thread; returns the server.

    ``port`` 0 picks a free port (``server.server_address[1]``).
    """
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/health", "/healthz"):
                self.send_error(404)
                return
            ready, detail = report()
            body = json.dumps({"ready": ready, **detail}).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mqlite-health", daemon=True).start()
    return server


def _check(workers: object, health_port: object) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError("workers must be an int")
    if not 1 <= workers <= 256:
        raise ValueError(f"workers must be 1 to 256, got {workers}")
    if health_port is not None and (not isinstance(health_port, int)
                                    or not 0 <= health_port <= 65535):
        raise ValueError(f"health_port must be 0 to 65535, got {health_port!r}")


def run_app(app: App, *, workers: int = 1, health_port: int | None = None,
            health_host: str = "127.0.0.1", ready_fd: int | None = None) -> int:
    """Run ``app`` until a signal; returns the exit code (0 after a graceful stop).

    Must be called from the main thread (it installs SIGTERM / SIGINT handlers).
    ``ready_fd``: a pipe to write one byte to once ready (used by the supervisor).
    """
    _check(workers, health_port)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("app.run() installs signal handlers: call it from the main thread")
    if workers > 1:
        return _supervise(app, workers, health_port, health_host)
    return _run_here(app, health_port, health_host, ready_fd)


def _run_here(app: App, health_port: int | None, health_host: str,
              ready_fd: int | None) -> int:
    stop = threading.Event()
    hits = [0]

    def on_signal(signum: int, frame: Any) -> None:
        hits[0] += 1
        if hits[0] > 1:
            os._exit(128 + signum)  # second signal: at once
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    # a forked worker starts with them blocked (see _spawn): deliver any pending one now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    server = None
    try:
        app.start()
        if health_port is not None:
            server = serve_health(lambda: tuple(app.health()), health_port,  # type: ignore[arg-type, return-value]
                                  health_host)
        if ready_fd is not None and app.wait_ready(timeout=120.0):
            os.write(ready_fd, b"R")  # kept open: the supervisor sees EOF when this exits
        while not stop.wait(1.0):
            failed = [r for r in app._runners if r.failed is not None]
            if failed:
                log.error("stopping: subscriber %s failed", failed[0].spec.name)
                app.stop()
                return 1
        app.stop()
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for s, h in old.items():
            signal.signal(s, h)


class _Worker:
    def __init__(self, pid: int, rfd: int) -> None:
        self.pid = pid
        self.ready = False
        threading.Thread(target=self._watch, args=(rfd,), daemon=True).start()

    def _watch(self, rfd: int) -> None:
        try:
            if os.read(rfd, 1) == b"R":
                self.ready = True
                os.read(rfd, 1)  # EOF when the worker exits
        finally:
            self.ready = False
            os.close(rfd)


def _spawn(app: App, index: int) -> _Worker:
    rfd, wfd = os.pipe()
    # Blocked across the fork: a SIGTERM that reaches the worker before it installed its
    # own handlers must not run the supervisor's (which signals the other workers).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if pid == 0:  # the worker
        code = 1
        try:
            os.close(rfd)
            app._after_fork()
            os.environ["MQLITE_WORKER"] = str(index)
            code = _run_here(app, None, "127.0.0.1", wfd)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)
    os.close(wfd)
    return _Worker(pid, rfd)


def _supervise(app: App, workers: int, health_port: int | None, health_host: str) -> int:
    if app._backend is not None or app._runners:
        raise RuntimeError("app.run(workers>1) forks workers: do not start the App or open "
                           "its broker before run()")
    hits = [0]
    procs: dict[int, tuple[int, _Worker]] = {}

    def on_signal(signum: int, frame: Any) -> None:
        hits[0] += 1
        for pid in list(procs):
            try:
                os.kill(pid, signum if hits[0] == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    server = None
    code = 0
    try:
        for i in range(workers):
            w = _spawn(app, i)
            procs[w.pid] = (i, w)
        if health_port is not None:
            def report() -> tuple[bool, dict[str, Any]]:
                ws = {str(w.pid): w.ready for _, w in procs.values()}
                return (len(ws) == workers and all(ws.values()), {"workers": ws})
            server = serve_health(report, health_port, health_host)
        while procs:
            pid, status = os.wait()
            entry = procs.pop(pid, None)
            if entry is None:
                continue
            index, _ = entry
            rc = os.waitstatus_to_exitcode(status)
            if hits[0]:
                code = max(code, rc, 1 if hits[0] > 1 else 0)  # a second signal: 1
                continue
            log.warning("worker %d (pid %d) exited with %d; starting it again", index, pid, rc)
            w = _spawn(app, index)
            procs[w.pid] = (index, w)
        return code
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for s, h in old.items():
            signal.signal(s, h)
