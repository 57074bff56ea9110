"""Stable transactional ids for worker processes (docs/decisions.md D39).

A Kafka transaction left open by a process that died (SIGKILL, OOM, power
loss) pins the partitions it wrote: ``read_committed`` readers stop at its
first record until the transaction coordinator aborts it.  The coordinator
aborts it at once when a new producer registers the **same**
``transactional.id`` (``init_transactions`` fences the old producer), and
otherwise only after ``transaction.timeout.ms`` (Apache Kafka; some
Kafka-protocol brokers never time it out, see docs/scale-out.md).  So a
restarted worker must come back under its predecessor's id.

:func:`claim_transactional_id` gives ``{base}.{scope}.{host}.{slot}``: the
slot is the lowest number from ``first_slot`` up whose lock file this
process can ``flock``, so

* a worker restarted in the same slot (``app.run(workers=N)`` and
  ``mqlite run --workers N`` restart worker *i* as worker *i*) takes its
  predecessor's id as soon as the kernel released the dead process's lock;
* two live processes on one host never share an id (one would fence the
  other on every transaction): the second takes the next free slot;
* processes on other hosts differ by ``host`` (``socket.gethostname()``:
  give containers a stable hostname, or a host that restarts elsewhere
  relies on ``transaction.timeout.ms``).

The lock files live in ``$XDG_RUNTIME_DIR/mqlite-kafka-tx`` (else
``/tmp/mqlite-<uid>/kafka-tx``), directory 0700, files 0600; a lock is held
until :meth:`SlotClaim.release` or the process ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
from pathlib import Path

from mqlite.config import require_int

__all__ = ["MAX_SLOTS", "SlotClaim", "claim_transactional_id", "lock_dir"]

#: Slots tried from ``first_slot`` up before giving up (live processes of one id scope on
#: one host).
MAX_SLOTS = 4096


def lock_dir() -> Path:
    """The directory of the slot lock files (created 0700 on first use)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        d = Path(runtime) / "mqlite-kafka-tx"
        parents = [d]
    else:
        base = Path(tempfile.gettempdir()) / f"mqlite-{os.getuid()}"
        d = base / "kafka-tx"
        parents = [base, d]
    for p in parents:
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
        if p.is_symlink() or not p.is_dir() or p.stat().st_uid != os.getuid():
            raise PermissionError(f"{p} is not a directory of this user: cannot keep "
                                  "transactional-id locks there; set XDG_RUNTIME_DIR")
    return d


class SlotClaim:
    """A claimed transactional id; the slot stays this process's until :meth:`release`."""

    def __init__(self, transactional_id: str, slot: int, fd: int) -> None:
        self.transactional_id = transactional_id
        self.slot = slot
        self._fd = fd

    def release(self) -> None:
        """Give the slot up (closing the lock file unlocks it).  Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<SlotClaim {self.transactional_id!r}{'' if self._fd >= 0 else ' released'}>"


def claim_transactional_id(base: str, scope: str, cluster: str, first_slot: int = 0,
                           host: str | None = None) -> SlotClaim:
    """Claim ``{base}.{scope}.{host}.{slot}`` for this process (see the module docstring).

    Parameters
    ----------
    base
        The id's prefix (``"mqlite"``, or the ``transactional.id`` given in
        ``client_options``); 1-200 characters.
    scope
        What the producer is for (the App passes the consumer group); 1-500
        characters.
    cluster
        The bootstrap servers: the same id on two clusters is two locks.
    first_slot
        The slot to try first, 0 to ``MAX_SLOTS - 1``: the worker index
        (``MQLITE_WORKER``), so a restarted worker gets its own id back.
    host
        Defaults to ``socket.gethostname()``.

    Raises
    ------
    TypeError, ValueError
        Bad arguments.
    RuntimeError
        Every slot from ``first_slot`` to ``MAX_SLOTS - 1`` is held by a live process.
    PermissionError
        The lock directory is not this user's.
    """
    for name, v, most in (("base", base, 200), ("scope", scope, 500), ("cluster", cluster, 4096)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a str, not {type(v).__name__}")
        if not 1 <= len(v) <= most:
            raise ValueError(f"{name} must be 1 to {most} characters, got {len(v)}")
    require_int(first_slot, "first_slot", minimum=0, maximum=MAX_SLOTS - 1)
    host = socket.gethostname() if host is None else host
    d = lock_dir()
    for slot in range(first_slot, MAX_SLOTS):
        tid = f"{base}.{scope}.{host}.{slot}"
        digest = hashlib.sha256(f"{cluster}\0{tid}".encode()).hexdigest()[:40]
        fd = os.open(d / f"{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process holds this slot
        except BaseException:
            os.close(fd)
            raise
        return SlotClaim(tid, slot, fd)
    raise RuntimeError(f"every transactional-id slot {first_slot}..{MAX_SLOTS - 1} of "
                       f"{base}.{scope} on this host is held by a live process")
