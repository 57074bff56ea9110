"""Key encodings.  Big-endian integers make byte order equal numeric order."""

from __future__ import annotations

import struct

__all__ = [
    "PID",
    "RECORD",
    "U64",
    "group_pid_key",
    "pid_key",
    "record_key",
]

PID = struct.Struct(">I")
RECORD = struct.Struct(">IQ")
U64 = struct.Struct(">Q")
_GROUP_PID = struct.Struct(">I")

pid_key = PID.pack
record_key = RECORD.pack


def group_pid_key(group: str, pid: int) -> bytes:
    """``group`` UTF-8 + NUL + partition id (u32 BE): keys of ``offsets``."""
    return group.encode() + b"\x00" + _GROUP_PID.pack(pid)

