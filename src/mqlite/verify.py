"""Deep verification of a broker directory (``mqlite verify``).

Checks, for every partition of every topic: each stored batch's magic,
length, CRC and record structure (``_core.validate_batch``), that batches
are dense (each base offset is the previous base plus its record count) and
that the partition state agrees with what is stored.  The check runs in a
child process by default, because a damaged LMDB file can crash the process
that maps it (SIGBUS); the parent reports the child's death as corruption.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import msgspec

__all__ = ["Problem", "VerifyReport", "verify", "verify_in_child"]


class Problem(msgspec.Struct, frozen=True):
    topic: str | None
    partition: int | None
    offset: int | None
    message: str


class VerifyReport(msgspec.Struct):
    path: str
    topics: int = 0
    partitions: int = 0
    batches: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[Problem] = []

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str) -> VerifyReport:
    """Verify the broker at ``path`` in this process (see module docstring)."""
    from mqlite._storage import log as _log
    from mqlite._storage import schedule as _schedule
    from mqlite._storage.env import acquire_env, check_data_file
    from mqlite.errors import MqliteError

    report = VerifyReport(path=os.path.abspath(path))
    try:
        check_data_file(path, repair=False)  # verify inspects; it never sets a file aside
        env = acquire_env(path, durability="none", create=False)
    except (MqliteError, OSError, ValueError) as exc:
        report.problems.append(Problem(None, None, None, f"cannot open: {exc}"))
        return report
    try:
        with env.read_txn() as txn:
            names = _log.list_topics(txn, env.dbs)
            report.topics = len(names)
            for name in names:
                rec = _log.get_topic(txn, env.dbs, name)
                if rec is None:
                    continue
                for part, pid in enumerate(rec.pids):
                    report.partitions += 1
                    st = _log.load_state(txn, env.dbs, pid)
                    scan = _log.scan_partition(txn, env.dbs, pid)
                    report.batches += scan.batches
                    report.records += scan.records
                    report.bytes += scan.bytes
                    report.problems.extend(Problem(name, part, base, what)
                                           for base, what in scan.problems)
                    if scan.first is not None and scan.first != st.start:
                        report.problems.append(Problem(
                            name, part, st.start,
                            f"partition start offset {st.start} != first stored batch "
                            f"{scan.first} (a damaged record key or a lost batch)"))
                    elif scan.first is None and st.next != st.start:
                        report.problems.append(Problem(
                            name, part, st.start,
                            f"partition holds offsets {st.start}..{st.next - 1} but no batch"))
                    if scan.end is not None and scan.end != st.next:
                        report.problems.append(Problem(
                            name, part, None,
                            f"partition end offset {st.next} != stored end {scan.end}"))
        with env.read_txn() as txn:
            for reason, _ in _schedule.set_aside_entries(txn, env.dbs):
                report.problems.append(Problem(
                    None, None, None, f"a delayed message was set aside, not promoted: {reason}"))
    finally:
        env.release()
    return report


def verify_in_child(path: str, timeout: float = 600.0) -> VerifyReport:
    """Run :func:`verify` in a child process; a crash of the child is a problem."""
    proc = subprocess.run(
        [sys.executable, "-m", "mqlite.verify", os.path.abspath(path)],
        capture_output=True, timeout=timeout, check=False,
    )
    if proc.returncode < 0:
        rep = VerifyReport(path=os.path.abspath(path))
        rep.problems.append(Problem(None, None, None,
                                    f"the verifier was killed by signal {-proc.returncode} "
                                    "reading the data file: the file is damaged"))
        return rep
    try:
        return msgspec.json.decode(proc.stdout, type=VerifyReport)
    except msgspec.DecodeError:
        rep = VerifyReport(path=os.path.abspath(path))
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        rep.problems.append(Problem(None, None, None,
                                    f"verifier failed: {err[-1] if err else proc.returncode}"))
        return rep


def _main(argv: list[str]) -> int:
    rep = verify(argv[0])
    sys.stdout.buffer.write(msgspec.json.encode(rep))
    return 0


def _as_dict(rep: VerifyReport) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(rep))


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
