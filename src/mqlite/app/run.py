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
the first to its workers and SIGKILLs them on the second; a worker counts only
its supervisor's escalation, so a signal sent to the whole process group (Ctrl-C,
systemd), which reaches a worker twice, still stops it gracefully.  The
supervisor's health answers 503 from its first signal on.

Health: ``GET /health`` on ``health_port`` answers 200 with ``{"ready": true,
...}`` when every subscriber (every worker) has joined and none failed, else
503.

Metrics: ``metrics_port`` serves Prometheus text on ``GET /metrics``: the
broker-state families of :mod:`mqlite.metrics` (one ``Broker.stats()`` per
scrape) plus the handler metrics of :class:`mqlite.HandlerMetrics` fed by an
App listener.  With one worker everything is in this process.  With
``workers > 1`` the supervisor serves the one endpoint: each worker writes
its handler start / finish events as short JSON lines to a pipe, the
supervisor applies them to its own registry (counters survive a worker's
restart; a dead worker's in-flight count is dropped when its pipe closes) and
opens the broker itself, read-only use, for the broker families.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from mqlite.handler_metrics import HandlerMetrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from mqlite.app.app import App
    from mqlite.app.runner import HandlerEvent

__all__ = ["run_app", "serve_health"]

log = logging.getLogger("mqlite.app")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve_health(report: Callable[[], tuple[bool, dict[str, Any]]], port: int,
                 host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``GET /health`` (and ``/``) from ``report()`` on a daemon thread; returns the server.

    ``port`` 0 picks a free port (``server.server_address[1]``).

    Raises
    ------
    ValueError
        ``host:port`` cannot be bound (in use, not an address of this machine):
        the message names it and says to pick another ``--health-port``.
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

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ValueError(f"cannot serve health on {host}:{port}: {exc.strerror or exc}; pick "
                         f"another --health-port / health_port (0 picks a free one)") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mqlite-health", daemon=True).start()
    return server


def _check(workers: object, health_port: object, metrics_port: object = None) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError("workers must be an int")
    if not 1 <= workers <= 256:
        raise ValueError(f"workers must be 1 to 256, got {workers}")
    for name, port in (("health_port", health_port), ("metrics_port", metrics_port)):
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                                 or not 0 <= port <= 65535):
            raise ValueError(f"{name} must be 0 to 65535 or None, got {port!r}")


class _Metrics:
    """What ``metrics_port`` starts: a private registry, its HandlerMetrics, the server."""

    def __init__(self, port: int, host: str) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ImportError("metrics_port / --metrics-port needs prometheus_client: pip "
                              "install 'mqlite[metrics]'") from None

        self.port = port
        self.host = host
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.handlers = HandlerMetrics(self.registry, enabled=True)
        self.server: Any = None
        self._broker: Any = None

    def listener(self, ev: HandlerEvent) -> None:
        """An App listener recording ``ev`` in this process's handler metrics."""
        if ev.status is None:
            self.handlers.started(ev.subscriber, ev.topic)
        else:
            self.handlers.finished(ev.subscriber, ev.topic, ev.status, ev.seconds)

    def serve(self, broker: Any, dead_letter_topics: list[str]) -> None:
        from mqlite.metrics import serve

        try:
            self.server, _ = serve(broker, self.port, self.host, registry=self.registry,
                                   dead_letter_topics=dead_letter_topics)
        except OSError as exc:
            raise ValueError(f"cannot serve metrics on {self.host}:{self.port}: "
                             f"{exc.strerror or exc}; pick another --metrics-port / "
                             f"metrics_port (0 picks a free one)") from exc
        log.info("serving metrics on http://%s:%d/metrics", self.host,
                 self.server.server_port)

    def serve_target(self, target: Any, durability: str, dead_letter_topics: list[str]
                     ) -> None:
        """Serve with a broker of our own opened on ``target`` (a path) or ``target`` itself."""
        import mqlite

        if isinstance(target, mqlite.Broker):
            self.serve(target, dead_letter_topics)
            return
        self._broker = mqlite.open(target, durability=durability)
        self.serve(self._broker, dead_letter_topics)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._broker is not None:
            self._broker.close()
            self._broker = None


def run_app(app: App, *, workers: int = 1, health_port: int | None = None,
            health_host: str = "127.0.0.1", ready_fd: int | None = None,
            metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> int:
    """Run ``app`` until a signal; returns the exit code (0 after a graceful stop).

    Must be called from the main thread (it installs SIGTERM / SIGINT handlers).
    ``ready_fd``: a pipe to write one byte to once ready (used by the supervisor).
    ``metrics_port`` (0 to 65535; 0 picks a free one): serve Prometheus metrics
    (broker state and the handler metrics of every worker) on
    ``http://metrics_host:metrics_port/metrics``; needs ``prometheus_client``
    (the ``[metrics]`` extra: ``ImportError`` otherwise).
    """
    _check(workers, health_port, metrics_port)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("app.run() installs signal handlers: call it from the main thread")
    metrics = None if metrics_port is None else _Metrics(metrics_port, metrics_host)
    if workers > 1:
        return _supervise(app, workers, health_port, health_host, metrics)
    return _run_here(app, health_port, health_host, ready_fd, metrics)


def _dead_letter_topics(app: App) -> list[str]:
    """The ``dead_letter=`` topics of ``app``'s subscribers (their depth is exported)."""
    return sorted({s.dead_letter for s in app.subscribers if s.dead_letter is not None})


def _forward(fd: int) -> Callable[[HandlerEvent], None]:
    """A worker's listener: one JSON line per event on ``fd`` (< PIPE_BUF: atomic)."""
    def listener(ev: HandlerEvent) -> None:
        line = json.dumps([ev.subscriber, ev.topic, ev.status, ev.seconds]).encode() + b"\n"
        if len(line) <= 4096:
            os.write(fd, line)

    return listener


def _collect(metrics: _Metrics, rfd: int) -> None:
    """Supervisor side of :func:`_forward`: apply one worker's events until its pipe closes."""
    open_calls: dict[tuple[str, str], int] = {}
    h = metrics.handlers
    try:
        with os.fdopen(rfd, "rb") as f:
            for line in f:
                try:
                    name, topic, status, seconds = json.loads(line)
                    if status is None:
                        h.started(name, topic)
                        open_calls[name, topic] = open_calls.get((name, topic), 0) + 1
                    else:
                        h.finished(name, topic, status, seconds)
                        open_calls[name, topic] = open_calls.get((name, topic), 0) - 1
                except (ValueError, TypeError):
                    log.warning("metrics: a bad event line from a worker: %r", line[:200])
    finally:
        # the worker is gone: what it was running is no longer in flight here
        for (name, _), n in open_calls.items():
            if n > 0:
                h.abandoned(name, n)


def _run_here(app: App, health_port: int | None, health_host: str,
              ready_fd: int | None, metrics: _Metrics | None = None,
              events_fd: int | None = None, supervisor: int | None = None) -> int:
    stop = threading.Event()
    hits = [0]

    def on_signal(signum: int, frame: Any) -> None:
        hits[0] += 1
        # A worker of a live supervisor gets one stop twice when the signal went to the
        # whole process group (Ctrl-C in a terminal, systemd's KillMode=control-group):
        # once from the sender, once forwarded.  Its supervisor escalates (SIGKILL on
        # its own second signal), so only a worker on its own exits at once here (D86).
        if hits[0] > 1 and (supervisor is None or os.getppid() != supervisor):
            os._exit(128 + signum)  # second signal: at once
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    # a forked worker starts with them blocked (see _spawn): deliver any pending one now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    server = None
    listener: Callable[[HandlerEvent], None] | None = None
    if metrics is not None:
        listener = metrics.listener
    elif events_fd is not None:
        listener = _forward(events_fd)
    if listener is not None:
        app.add_listener(listener)
    try:
        if health_port is not None:  # bound first: a busy port fails before any handler runs
            server = serve_health(lambda: tuple(app.health()), health_port,  # type: ignore[arg-type, return-value]
                                  health_host)
        app.start()
        if metrics is not None:
            metrics.serve(app._backend_now().broker, _dead_letter_topics(app))
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
        if app.state == "running":  # left by an exception: stop gracefully all the same
            app.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
        if metrics is not None:
            metrics.close()
        if listener is not None:
            app.remove_listener(listener)
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


def _spawn(app: App, index: int, metrics: _Metrics | None = None,
           close_in_child: tuple[int, ...] = ()) -> _Worker:
    """Fork worker ``index``; ``close_in_child``: the supervisor's listening sockets (a
    worker must not hold the health / metrics port open, nor outlive it holding it)."""
    rfd, wfd = os.pipe()
    mr, mw = os.pipe() if metrics is not None else (-1, -1)
    # Blocked across the fork: a SIGTERM that reaches the worker before it installed its
    # own handlers must not run the supervisor's (which signals the other workers).
    # Kept blocked in the parent until its threads for this worker started: they inherit
    # the mask, so a signal to the supervisor always reaches its main thread (D86).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.close(rfd)
            if mr >= 0:
                os.close(mr)
            for fd in close_in_child:
                os.close(fd)
            app._after_fork()
            os.environ["MQLITE_WORKER"] = str(index)
            code = _run_here(app, None, "127.0.0.1", wfd, None, mw if mw >= 0 else None,
                             supervisor=os.getppid())
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)
    try:
        os.close(wfd)
        if metrics is not None:
            os.close(mw)
            threading.Thread(target=_collect, args=(metrics, mr), name="mqlite-metrics-events",
                             daemon=True).start()
        return _Worker(pid, rfd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _SignalsBlocked:
    """Block SIGTERM / SIGINT in this thread for the block: threads started in it inherit
    the mask.  The supervisor waits in ``os.wait()``, which only a signal delivered to the
    main thread interrupts; one delivered to a helper thread (health, metrics, a worker's
    pipe watcher) ran its handler only when a worker next exited (D86)."""

    def __enter__(self) -> None:
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

    def __exit__(self, *exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def _supervise(app: App, workers: int, health_port: int | None, health_host: str,
               metrics: _Metrics | None = None) -> int:
    import mqlite

    if not isinstance(app.target, (str, os.PathLike, mqlite.Broker)):
        raise TypeError(f"app.run(workers>1) forks workers, and a forked worker cannot use "
                        f"the open {type(app.target).__name__} the App was given: pass its "
                        f"URL (mqlite.App('kafka://...')) to run several workers")
    if app.state != "new" or app._runners:
        raise RuntimeError(f"app.run(workers>1) forks workers, each of which starts the App: "
                           f"call run() on an App that was never started (this one is "
                           f"{app.state}); do not call app.start() or use it as a context "
                           f"manager before run()")
    # A publish or request before run() (docs/app.md's first example) opened the broker
    # and maybe the reply reader, loop and pool: the workers open their own, so close
    # what the App opened instead of refusing (a given mqlite.Broker stays open).
    app._close_rest()
    hits = [0]
    procs: dict[int, tuple[int, _Worker]] = {}

    stopping = [False]

    def on_signal(signum: int, frame: Any) -> None:
        hits[0] += 1
        for pid in list(procs):
            try:
                os.kill(pid, signum if hits[0] == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopping[0] = True  # after the forwards: a 503 means every worker was signalled

    def report() -> tuple[bool, dict[str, Any]]:
        ws = {str(w.pid): w.ready for _, w in procs.values()}
        ready = len(ws) == workers and all(ws.values()) and not stopping[0]
        return (ready, {"workers": ws})

    def listening() -> tuple[int, ...]:
        servers = (server, None if metrics is None else metrics.server)
        return tuple(sv.socket.fileno() for sv in servers if sv is not None)

    # bound before any fork: a busy port is an error before a worker exists (503 until ready)
    with _SignalsBlocked():
        server = None if health_port is None else serve_health(report, health_port,
                                                               health_host)
    old = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    code = 0
    try:
        for i in range(workers):
            w = _spawn(app, i, metrics, listening())
            procs[w.pid] = (i, w)
        if metrics is not None:
            # opened after the first forks; a restart forks with it open (the storage
            # layer's at-fork hook makes a child forget inherited environments)
            with _SignalsBlocked():
                metrics.serve_target(app.target, app.durability, _dead_letter_topics(app))
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
            w = _spawn(app, index, metrics, listening())
            procs[w.pid] = (index, w)
        return code
    finally:
        if procs:  # left by an exception (e.g. the metrics port): never orphan a worker
            _stop_workers(procs, app.graceful_timeout + 10)
        if server is not None:
            server.shutdown()
            server.server_close()
        if metrics is not None:
            metrics.close()
        for s, h in old.items():
            signal.signal(s, h)


def _stop_workers(procs: dict[int, tuple[int, _Worker]], timeout: float) -> None:
    """SIGTERM every worker (a graceful stop) and reap it; SIGKILL one still there after
    ``timeout`` seconds."""
    for pid in procs:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout
    for pid in list(procs):
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > end:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        procs.pop(pid, None)
