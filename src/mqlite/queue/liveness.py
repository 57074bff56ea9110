"""Liveness of a queue consumer: its member lock, the watcher thread, probe and reap.

Owner liveness is the kernel's, through the broker's one liveness service
(:mod:`mqlite._liveness`, shared with stream groups): each
:class:`~mqlite.Queue` holds a :class:`~mqlite._liveness.MemberLock` on
``members/q-<owner id>-<pid>-<random>.lock`` for its whole life, and
subscribes its reap to the process's one liveness watcher thread
(:func:`mqlite._liveness.watch`, D32), which probes other processes' ``q-``
locks every ``PROBE_INTERVAL`` seconds (and at once when a peer's ``pidfd``
reports its exit).  When a lock is found dead every queue consumer of the
process reaps: it releases its group's entries of dead owners at once (the
kernel drops a lock when its process dies).  A consumer also reaps once,
synchronously, when it starts.

Queue consumers do not heartbeat, so they never expire: a consumer that is
alive but hung keeps its lock, and its messages come back only when their
visibility timeout passes.

Callers: :class:`~mqlite.queue.consumer.Queue` (constructor and close).  The
liveness service's at-fork hook closes the lock in forked children, so a
child never keeps a dead parent "alive".
Changes: the lock file; the queue group's record (dead consumers removed) and
the pending entries of dead consumers (released: visible now, no owner).  A reap
that removed a dead consumer wakes one waiting receiver of the group (D69: the
dead one may have died holding a wake-up; D76: released deliveries wake nobody
else).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mqlite._liveness import MemberLock, Watch, members_dir, status, unlink_quiet, watch
from mqlite._storage import pending as _pending
from mqlite._storage.pending import NOBODY
from mqlite.errors import MqliteError, TopicNotFoundError
from mqlite.queue.policy import load_meta

if TYPE_CHECKING:
    from mqlite.queue.core import QueueCore

__all__ = ["ERROR_OWNER_DIED", "QueueLiveness"]

ERROR_OWNER_DIED = "consumer died"


class QueueLiveness:
    """The member lock and liveness subscription of one :class:`~mqlite.Queue`."""

    def __init__(self, queue: QueueCore) -> None:
        self._q = queue
        self._lock: MemberLock | None = None  # closed in forked children by the service
        self.lock_name = ""
        self._watch: Watch | None = None

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

    # -- the process's watcher -----------------------------------------------------------
    def start(self) -> None:
        """Reap once, synchronously, then subscribe to the process's liveness watcher.

        The synchronous reap gives a consumer started after a crash the dead
        consumer's deliveries on its first ``receive``, not a watcher period
        later.  The watcher opens a pidfd for every peer process with a queue
        lock file, so one that dies after this returns wakes it at once.

        Raises
        ------
        OSError, RuntimeError
            The watcher thread cannot be started (descriptor or thread limit).
        """
        try:
            self._reap()
        except (MqliteError, OSError):
            pass  # the watcher tries again when it next finds a dead lock
        self._watch = watch(self._q._env.path, "q-", self._reap_if_open)

    def stop(self) -> None:
        """Unsubscribe (waits up to 1 s for a reap in progress); called once, by close."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _reap_if_open(self) -> None:
        q = self._q
        if os.getpid() != q._pid or q._engine.closed or q._closed:
            return
        self._reap()

    # -- probe and reap ----------------------------------------------------------------
    @staticmethod
    def _probe(mdir: str, lock: str) -> bool:
        """True while the member holding ``lock`` is alive.

        No timeout: queue consumers do not heartbeat, so a hung consumer stays
        "alive" and its messages wait for their visibility timeout.
        """
        return status(os.path.join(mdir, lock), None, 0) != "dead"

    def _reap(self) -> bool:
        """Release the entries of dead consumers of this group; True if any died.

        Runs on this consumer's start and in the process's watcher thread when
        it finds a peer lock dead: one uncached probe per other consumer.
        """
        q = self._q
        env = q._env
        try:
            with env.read_txn() as txn:
                q._topic_in(txn)
                meta = load_meta(txn, env.dbs, q._qg)
        except TopicNotFoundError:
            return False  # its group went with its topic (a new one is not this one's)
        if meta is None:
            return False
        mdir = members_dir(env.path)
        dead = {cid: lock for cid, lock in meta.consumers.items()
                if cid != q.owner_id and not self._probe(mdir, lock)}
        if not dead:
            return False
        released = 0
        with q._engine.write() as txn:
            try:
                q._topic_in(txn)
            except TopicNotFoundError:
                return False  # deleted since the read above
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
        for lock in dead.values():
            unlink_quiet(os.path.join(mdir, lock))
        if released:
            q._wake_receiver()  # one receiver of this group, which got them back (D76)
        elif gone and (q._one or q._refresh_word()):
            # A receiver killed between its wake-up and its round took the wake-up with
            # it (D69): this reaper (the one that removed it, so one per death) passes
            # one on, so a message it was woken for does not wait for another
            # receiver's timeout.  On the group's own word only: the topic's (no group
            # word was free) wakes everybody, so nothing was taken (D74); a reaper
            # without one looks whether the group got one since (D85).
            env.wake(q._slot, passing=True)
        return True
