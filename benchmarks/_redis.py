"""A private ``redis-server`` on 127.0.0.1 for the side-by-side rows.

:class:`RedisServer` starts one server per durability configuration in its
own temporary directory on a free loopback port, waits until it answers
``PING``, and always stops it (``SHUTDOWN NOSAVE``, then SIGTERM, then
SIGKILL) and removes the directory.  Nothing listens on any other address.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Self

__all__ = [
    "INSTALL_HINT",
    "REDIS_DURABILITY",
    "RedisServer",
    "XReadReply",
    "redis_server_path",
    "redis_server_version",
]

INSTALL_HINT = ("redis-server not found: install it with `apt-get install -y redis-server` "
                "(Debian/Ubuntu) to get the Redis Streams rows; running the mqlite rows only")

#: mqlite durability mode -> (label, redis-server arguments) of the matching Redis setting.
REDIS_DURABILITY: dict[str, tuple[str, list[str]]] = {
    "sync": ("AOF appendfsync always", ["--appendonly", "yes", "--appendfsync", "always"]),
    "lazy": ("AOF appendfsync everysec", ["--appendonly", "yes", "--appendfsync", "everysec"]),
    "none": ("no persistence", ["--appendonly", "no"]),
}

#: XREADGROUP's reply as the benchmarks' clients read it (RESP2, bytes, no decode_responses):
#: ``[(stream, [(id, fields), ...])]``. redis-py >= 8 types the call with every protocol's and
#: option's shape, so the readers cast to this one.
XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]

# Common to every configuration: no RDB snapshots (they fork mid-run), no AOF
# rewrite forks during a timed loop, loopback only.
_BASE_ARGS = ["--save", "", "--bind", "127.0.0.1", "--protected-mode", "yes",
              "--daemonize", "no", "--auto-aof-rewrite-percentage", "0",
              "--maxmemory", "0", "--databases", "1"]


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def redis_server_version() -> str | None:
    exe = redis_server_path()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    for tok in out.split():
        if tok.startswith("v="):
            return tok[2:]
    return out.strip() or None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Context manager: a ``redis-server`` for one durability mode (see module doc).

    Parameters
    ----------
    durability
        An mqlite durability mode; the matching Redis setting is taken from
        :data:`REDIS_DURABILITY`.
    tmp_root
        Parent of the server's temporary directory.
    """

    def __init__(self, durability: str, tmp_root: str | None = None) -> None:
        self.durability = durability
        self.label, self._args = REDIS_DURABILITY[durability]
        self._tmp_root = tmp_root
        self.port = 0
        self.dir = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, attempts: int = 5) -> None:
        exe = redis_server_path()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        self.dir = tempfile.mkdtemp(prefix=f"mqbench-redis-{self.durability}-",
                                    dir=self._tmp_root)
        last = ""
        for _ in range(attempts):  # a free port can be taken between probe and bind
            self.port = _free_port()
            log = open(os.path.join(self.dir, "redis.log"), "wb")  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    [exe, "--port", str(self.port), "--dir", self.dir, *_BASE_ARGS, *self._args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)  # Ctrl-C in the terminal goes to us, not to it
            finally:
                log.close()
            if self._wait_ready(10.0):
                return
            last = self._log_tail()
            self._kill()
        self.stop()
        raise RuntimeError(f"redis-server did not start; last log lines:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0) as r:
                    if r.ping():
                        return True
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log"), encoding="utf-8",
                      errors="replace") as f:
                return "".join(f.readlines()[-10:])
        except OSError:
            return ""

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def info(self) -> dict[str, Any]:
        with self.client() as r:
            return dict(r.info("persistence"))

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                import redis

                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0) as r:
                    r.shutdown(nosave=True)
            except Exception:  # noqa: BLE001, S110 - any failure: fall through to signals
                pass
        for sig, wait in ((None, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            if sig is not None and proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        """Stop the server and delete its directory (idempotent)."""
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""
