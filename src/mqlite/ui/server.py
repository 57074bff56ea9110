"""``mqlite ui DIR``: open the broker, start the sampler, serve the console with uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any, TextIO

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "bind_socket", "run_console"]

#: The console listens here unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: Default TCP port of ``mqlite ui`` (``--port 0``: any free port).
DEFAULT_PORT = 8180


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``port`` 0: any free one).

    Raises
    ------
    ValueError
        ``port`` is not 0-65535 or ``host`` is not an IP address.
    OSError
        The address is in use or cannot be bound (the message says which).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port is a TCP port, 0-65535 (0: any free one), got {port!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--addr takes an IP address (127.0.0.1, ::1, 0.0.0.0), got "
                         f"{host!r}") from None
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                         "--port (0: any free one)") from None
    sock.set_inheritable(True)
    return sock


def _hosts_for(host: str) -> list[str]:
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return ["*"]
    if ip.is_loopback:
        return ["127.0.0.1", "localhost", "::1", "[::1]"]
    return [host, f"[{host}]"] if ip.version == 6 else [host]


def run_console(broker: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                allow_actions: bool = False, refresh: float = 2.0,
                out: TextIO | None = None) -> int:
    """Serve the console for an open ``broker`` until SIGINT / SIGTERM; returns 0.

    ``refresh`` is the seconds between live refreshes of the open pages, 0.25
    to 60 (charts are sampled every ``min(refresh, 1)`` s).

    Prints the URL (and, with ``allow_actions``, the per-start token) on
    ``out`` (default stdout) before serving, flushed, so a supervisor or a
    test can read them.

    Raises
    ------
    ValueError
        Bad ``host`` / ``port`` / ``refresh``, or the port is taken.
    """
    import uvicorn

    from mqlite.ui.app import create_app
    from mqlite.ui.history import History
    from mqlite.ui.security import new_token

    out = out if out is not None else sys.stdout
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or not (
            0.25 <= refresh <= 60):
        raise ValueError(f"--refresh is seconds between page refreshes, 0.25 to 60, got "
                         f"{refresh!r}")
    hist = History(broker.stats, interval=min(float(refresh), 1.0))
    sock = bind_socket(host, port)
    try:
        token = new_token() if allow_actions else None
        app = create_app(broker, token=token, history=hist, allowed_hosts=_hosts_for(host),
                         refresh_ms=int(refresh * 1000))
        real_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"mqlite console for {broker.path} on http://{shown}:{real_port}/", file=out)
        if token is not None:
            print(f"actions ON: token {token}", file=out)
        else:
            print("read-only (start with --allow-actions to redrive, purge, reset offsets)",
                  file=out)
        out.flush()
        hist.start()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                               lifespan="off"))
        server.run(sockets=[sock])
    finally:
        hist.stop()
        sock.close()
    return 0
