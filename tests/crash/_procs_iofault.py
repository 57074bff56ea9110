"""Child entry point for ``test_io_faults.py``; runs under ``LD_PRELOAD=<_iofault_shim.so>``.

Usage: ``python _procs_iofault.py <json config>``; the config has ``path``,
``durability``, ``api`` (``"send"``, ``"batch"`` or ``"ack"``), ``fault``
(``{"ops", "after", "errno", "sticky", "late"}``: armed after the broker is
open, so opening never trips it) and ``limit`` (most operations to try).

Every line goes to stdout, flushed at once, *after* the call it reports
returned:

``OK <partition> <offset> <crc>``   a send (or one message of a batch) returned
``RECV <partition> <offset>``       ack api: received, not yet acked
``ACKED <partition> <offset>``      ack api: ack returned
``TRY <partition> <offset>``        ack api: about to ack this delivery
``ERR <json [module, name, text]>`` the first exception; nothing more is sent
``AGAIN <json>``                    one more operation after the error (the disk
                                    is healthy again unless sticky): metadata or error
``REOPEN <json>``                   after close + reopen in this process: one send
``STATS <seen w m f> <failed w m f>`` the shim's counters (write, meta, fsync)
``DONE``                            clean end (no crash, no signal)
"""

from __future__ import annotations

import ctypes
import json
import sys
import zlib
from typing import Any

import mqlite


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(exc: BaseException) -> str:
    return json.dumps([type(exc).__module__, type(exc).__name__, str(exc)])


def _stats(lib: Any) -> str:
    buf = (ctypes.c_long * 6)()
    lib.mqlite_fault_stats(buf)
    return " ".join(str(v) for v in buf)


def _send_one(b: Any, topic: str, value: bytes) -> str:
    try:
        md = b.send(topic, value)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return json.dumps({"error": json.loads(_err(exc))})
    return json.dumps({"ok": [md.partition, md.offset, zlib.crc32(value)]})


def main(cfg: dict[str, Any]) -> None:
    lib = ctypes.CDLL(None)  # the preloaded shim's symbols are global
    lib.mqlite_fault_arm.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int,
                                     ctypes.c_int, ctypes.c_int]
    fault = cfg["fault"]
    api = cfg["api"]
    topic = cfg.get("topic", "t")
    b = mqlite.open(cfg["path"], durability=cfg["durability"])
    q = None
    pending: list[Any] = []
    if api == "ack":
        q = b.queue(topic, "g")
        pending = q.receive(max_messages=100, timeout=2.0, visibility_timeout=1.0)
        for d in pending:
            _out(f"RECV {d.partition} {d.offset}")
    lib.mqlite_fault_arm(fault["ops"].encode(), fault["after"], fault["errno"],
                         int(fault["sticky"]), int(fault["late"]))
    error = None
    i = 0
    try:
        if api == "ack":
            assert q is not None
            for d in pending:
                _out(f"TRY {d.partition} {d.offset}")
                q.ack(d)
                _out(f"ACKED {d.partition} {d.offset}")
        else:
            for i in range(cfg["limit"]):
                if api == "send":
                    value = b"%d|" % i + bytes([i % 251]) * (i * 37 % 3000)
                    md = b.send(topic, value)
                    _out(f"OK {md.partition} {md.offset} {zlib.crc32(value)}")
                else:
                    values = [b"%d.%d|" % (i, j) + bytes([j]) * (j * 101 % 900)
                              for j in range(1 + i % 7)]
                    bmd = b.send_batch(topic, values)
                    # one write per batch: a batch is all or nothing
                    _out("\n".join(f"OK {bmd[j].partition} {bmd[j].offset} "
                                   f"{zlib.crc32(v)}" for j, v in enumerate(values)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        error = exc
        _out("ERR " + _err(exc))
    if error is not None and api != "ack":
        _out("AGAIN " + _send_one(b, topic, b"again|%d" % i))
    _out("STATS " + _stats(lib))
    if error is not None and api != "ack" and not fault["sticky"]:
        # A fresh environment in the same process (the only handle is closed first).
        lib.mqlite_fault_arm(b"", 0, 0, 0, 0)
        try:
            if q is not None:
                q.close()
            b.close()
            b = mqlite.open(cfg["path"], durability=cfg["durability"])
            _out("REOPEN " + _send_one(b, topic, b"reopen|%d" % i))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            _out("REOPEN " + json.dumps({"error": json.loads(_err(exc))}))
    _out("DONE")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
