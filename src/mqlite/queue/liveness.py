"""Liveness of a queue consumer: its member lock, the watcher thread, probe and reap.

Owner liveness is the kernel's, through the broker's one liveness service
(:mod:`mqlite._liveness`, shared with stream groups): each
:class:`~mqlite.Queue` holds a :class:`~mqlite._liveness.MemberLock` on
``members/q-<owner id>-<pid>-<random>.lock`` for its whole life, and a watcher
thread in every live queue consumer of the group probes the others' locks
every ``PROBE_INTERVAL`` seconds (and at once when a peer's ``pidfd`` reports
its exit), releasing a dead owner's pending entries at once (the kernel drops
a lock when its process dies).  A consumer also reaps once, synchronously,
when it starts (which also arms its pidfds).

Queue consumers do not heartbeat, so they never expire: a consumer that is
alive but hung keeps its lock, and its messages come back only when their
visibility timeout passes.

Callers: :class:`~mqlite.queue.consumer.Queue` (constructor and close).  The
liveness service's at-fork hook closes the lock in forked children, so a
child never keeps a dead parent "alive".
Changes: the lock file; the queue group's record (dead consumers removed) and
the pending entries of dead consumers (released: visible now, no owner).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from mqlite._liveness import PROBE_INTERVAL, MemberLock, Prober, lock_pid, members_dir, unlink_quiet
from mqlite._storage import pending as _pending
from mqlite._storage.pending import NOBODY
from mqlite.errors import MqliteError
from mqlite.queue.policy import load_meta

if TYPE_CHECKING:
    from mqlite.queue.core import QueueCore

__all__ = ["ERROR_OWNER_DIED", "QueueLiveness"]

ERROR_OWNER_DIED = "consumer died"


class QueueLiveness:
    """The member lock and watcher thread of one :class:`~mqlite.Queue`."""

    def __init__(self, queue: QueueCore) -> None:
        self._q = queue
        self._lock: MemberLock | None = None  # closed in forked children by the service
        self.lock_name = ""
        self._stop = threading.Event()
        self._prober: Prober | None = None  # the watcher's; wake() ends its wait
        self._thread: threading.Thread | None = None

    # -- lock file ---------------------------------------------------------------------
    def create_lock(self) -> str:
        """Create and lock this consumer's lock file; returns its name."""
        q = self._q
        env = q._env
        lock = MemberLock.create(env.path, f"q-{q.owner_id}", file_mode=env.file_mode,
                                 dir_mode=0o770 if env.shared_group else 0o700)
        self._lock, self.lock_name = lock, lock.name
        return lock.name

    def drop_lock(self) -> None:
        """Delete (in the creating process only) and unlock the lock file.  Idempotent."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- watcher thread ----------------------------------------------------------------
    def start(self) -> None:
        """Reap once, synchronously, then start the watcher thread.

        The synchronous reap gives a consumer started after a crash the dead
        consumer's deliveries on its first ``receive``, not a watcher period
        later, and it arms the watcher's pidfds for the peers present now, so
        one that dies right after this returns wakes the watcher at once.
        """
        prober = Prober(members_dir(self._q._env.path))
        try:
            try:
                self._reap(prober)
            except (MqliteError, OSError):
                pass  # the watcher thread tries again every PROBE_INTERVAL
            self._prober = prober
            self._thread = threading.Thread(target=self._watch, args=(prober,), daemon=True,
                                            name=f"mqlite-queue-{self._q.group}")
            self._thread.start()
        except BaseException:
            self._thread = None
            prober.close()
            raise

    def stop(self) -> None:
        """Stop the watcher thread and wait (up to 1 s) for it; called once, by close."""
        self._stop.set()
        if self._prober is not None:
            self._prober.wake()  # ignored in a forked child (no watcher there)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _watch(self, prober: Prober) -> None:
        q = self._q
        try:
            while True:
                # returns early when a peer's pidfd fires or stop() wakes it
                prober.wait(PROBE_INTERVAL)
                if (self._stop.is_set() or os.getpid() != q._pid or q._engine.closed
                        or q._closed):
                    return
                try:
                    self._reap(prober)
                except (MqliteError, OSError):
                    continue
        finally:
            if os.getpid() == q._pid:
                prober.close()

    # -- probe and reap ----------------------------------------------------------------
    @staticmethod
    def _probe(prober: Prober, lock: str) -> bool:
        """True while the member holding ``lock`` is alive.

        No timeout: queue consumers do not heartbeat, so a hung consumer stays
        "alive" and its messages wait for their visibility timeout.
        """
        return prober.status(lock, None, 0) != "dead"

    def _reap(self, prober: Prober) -> bool:
        """Release the entries of dead consumers of this group; True if any died.

        ``prober`` keeps one descriptor per peer lock file and one pidfd per
        peer process (:meth:`~mqlite._liveness.Prober.track`), so a peer's
        exit wakes the watcher at once.
        """
        q = self._q
        env = q._env
        with env.read_txn() as txn:
            meta = load_meta(txn, env.dbs, q._qg)
        if meta is None:
            return False
        locks = list(meta.consumers.values())
        prober.track(locks, [p for p in map(lock_pid, locks) if p])
        dead = {cid: lock for cid, lock in meta.consumers.items()
                if cid != q.owner_id and not self._probe(prober, lock)}
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
        mdir = prober.directory
        for lock in dead.values():
            unlink_quiet(os.path.join(mdir, lock))
            prober.forget(lock)
        if released:
            env.notify_topics((q.topic,))
        return True
