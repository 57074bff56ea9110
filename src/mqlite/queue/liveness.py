"""Liveness of a queue consumer: its lock file, the watcher thread, probe and reap.

Owner liveness is the kernel's: each :class:`~mqlite.Queue` holds a ``flock`` on
a file ``members/q-<owner id>-<pid>.lock`` for its whole life; a watcher thread
in every live queue consumer of the group probes the others' locks every
``_WATCH_INTERVAL`` seconds and releases a dead owner's pending entries at once
(the kernel drops a lock when its process dies).  A consumer also reaps once,
synchronously, when it starts.

Everything about liveness is in :class:`QueueLiveness`, so that the queue can
move onto the broker's shared liveness service (``mqlite._liveness``) by
replacing this one class.

Callers: :class:`~mqlite.queue.consumer.Queue` (constructor and close); the
at-fork hook of ``groups`` closes the lock descriptor in forked children.
Changes: the lock file; the queue group's record (dead consumers removed) and
the pending entries of dead consumers (released: visible now, no owner).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import TYPE_CHECKING

from mqlite._storage import pending as _pending
from mqlite._storage.pending import NOBODY
from mqlite.errors import MqliteError
from mqlite.groups import _ensure_members_dir, _unlink_quiet, members_dir, register_lock_holder
from mqlite.queue.policy import load_meta

if TYPE_CHECKING:
    from mqlite.queue.consumer import Queue

__all__ = ["ERROR_OWNER_DIED", "QueueLiveness"]

_WATCH_INTERVAL = 0.05  # liveness probe period: dead owners are noticed within this
ERROR_OWNER_DIED = "consumer died"


class QueueLiveness:
    """The lock file and watcher thread of one :class:`~mqlite.Queue`."""

    def __init__(self, queue: Queue) -> None:
        self._q = queue
        self._lock_fd = -1  # closed in forked children by groups' at-fork hook
        self.lock_name = ""
        # held until stop(): the watcher sleeps by trying to take it with a timeout, so
        # stop() wakes it at once (a timed Event.wait costs ~45 us of CPU per call;
        # a timed lock acquire is one futex wait, like time.sleep)
        self._stop_gate = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- lock file ---------------------------------------------------------------------
    def create_lock(self) -> str:
        """Create and lock this consumer's lock file; returns its name."""
        q = self._q
        env = q._env
        d = _ensure_members_dir(env.path, 0o770 if env.shared_group else 0o700)
        name = f"q-{q.owner_id}-{os.getpid()}.lock"
        fd = os.open(os.path.join(d, name),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     env.file_mode)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd, self.lock_name = fd, name
        register_lock_holder(self)
        return name

    def drop_lock(self) -> None:
        """Delete and unlock the lock file (if this process still holds it)."""
        if self._lock_fd >= 0:
            _unlink_quiet(os.path.join(members_dir(self._q._env.path), self.lock_name))
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- watcher thread ----------------------------------------------------------------
    def start(self) -> None:
        """Start the watcher thread (after :meth:`reap_now`)."""
        self._stop_gate.acquire()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"mqlite-queue-{self._q.group}")
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher thread and wait (up to 1 s) for it; called once, by close."""
        if os.getpid() == self._q._pid:
            self._stop_gate.release()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _watch(self) -> None:
        q = self._q
        probes: dict[str, int] = {}  # lock file name -> open fd (one open per member)
        try:
            while True:
                if self._stop_gate.acquire(timeout=_WATCH_INTERVAL):
                    return  # stop() released it
                if os.getpid() != q._pid or q._engine.closed or q._closed:
                    return
                try:
                    self._reap(probes)
                except (MqliteError, OSError):
                    continue
        finally:
            if os.getpid() == q._pid:
                for fd in probes.values():
                    os.close(fd)

    # -- probe and reap ----------------------------------------------------------------
    def _probe(self, probes: dict[str, int], mdir: str, lock: str) -> bool:
        """True while the member holding ``lock`` is alive."""
        fd = probes.get(lock)
        if fd is None:
            try:
                fd = os.open(os.path.join(mdir, lock), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            except OSError:
                return True  # cannot tell: the visibility timeout still applies
            probes[lock] = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            return True
        return False  # we got the lock: its holder is gone (we keep it until reaped)

    def reap_now(self) -> None:
        """Reap once, synchronously: a consumer started after a crash gets the dead
        consumer's deliveries on its first ``receive``, not a watcher period later."""
        probes: dict[str, int] = {}
        try:
            self._reap(probes)
        except (MqliteError, OSError):
            pass  # the watcher thread tries again every _WATCH_INTERVAL
        finally:
            for fd in probes.values():
                os.close(fd)

    def _reap(self, probes: dict[str, int]) -> bool:
        """Release the entries of dead consumers of this group; True if any died.

        ``probes`` caches one open descriptor per member lock file; the caller
        owns (and eventually closes) the ones left in it.
        """
        q = self._q
        env = q._env
        with env.read_txn() as txn:
            meta = load_meta(txn, env.dbs, q._qg)
        if meta is None:
            return False
        mdir = members_dir(env.path)
        live_locks = set(meta.consumers.values())
        for lock in [k for k in probes if k not in live_locks]:
            os.close(probes.pop(lock))
        dead = [cid for cid, lock in meta.consumers.items()
                if cid != q.owner_id and not self._probe(probes, mdir, lock)]
        if not dead:
            return False
        released = 0
        with q._engine.write() as txn:
            meta = q._load_meta(txn)
            gone = {c for c in dead if c in meta.consumers}
            if gone:
                owners = {c.encode() for c in gone}
                for e in q._scan(txn):
                    if e.owner in owners:
                        e.visible, e.token, e.owner = 0, 0, NOBODY
                        e.error = ERROR_OWNER_DIED
                        _pending.put(txn, env.dbs, e)
                        released += 1
                for c in gone:
                    meta.consumers.pop(c, None)
                if released:
                    meta.min_visible_ms = 0
                q._store_meta(txn, meta)
        for c in dead:
            for lock in [k for k in probes if k.startswith(f"q-{c}-")]:
                _unlink_quiet(os.path.join(mdir, lock))
                os.close(probes.pop(lock))
        if released:
            env.notify_topics((q.topic,))
        return True
