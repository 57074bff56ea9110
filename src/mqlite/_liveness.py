"""Member liveness from kernel locks, shared by stream groups and queue groups.

Contract
--------
* **A live member holds a lock.**  :meth:`MemberLock.create` makes
  ``<broker>/members/<tag>-<pid>-<random>.lock`` (``O_EXCL | O_NOFOLLOW |
  O_CLOEXEC``, the broker's file mode) and takes an exclusive ``flock`` on it.
  The kernel drops the lock when the process dies, however it dies, so a
  crash is visible to others in the time of one probe.
* **A probe never takes a lock it keeps.**  It asks for a *shared*
  non-blocking ``flock`` and releases it at once, so concurrent probers
  never mistake each other for the owner.  ``EWOULDBLOCK`` means held; any
  other error means "cannot tell" and is read as alive (an expiry still
  applies).  A missing file is dead.
* **Verdicts.**  ``"alive"``; ``"dead"`` (lock free or file gone);
  ``"expired"`` (lock held but the file's mtime, the heartbeat, is older than
  the member's timeout).  Heartbeats are ``futimens`` on the held descriptor:
  no LMDB write, so no fsync.  A member without a timeout never expires.
* **Wake-ups are hints.**  :class:`Prober` also holds a ``pidfd`` per peer
  process and sleeps in ``poll()`` on them, so a peer's exit ends the wait at
  once instead of at the next :data:`PROBE_INTERVAL`.  Pids are reused and
  differ across pid namespaces: only the lock probe decides.
* **fork().**  ``flock`` belongs to the open file description, which a forked
  child shares: a child keeping the descriptor would keep a dead parent
  "alive".  An at-fork hook closes every :class:`MemberLock` in the child;
  the parent's lock is unaffected while the parent keeps its own descriptor.
  A child never unlinks its parent's lock file.

Thread safety: a :class:`MemberLock` is used by its owner and its owner's
watcher thread (heartbeat); :meth:`Prober.wake` may be called from any
thread, every other :class:`Prober` method from the one watcher thread.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import uuid
import weakref
from collections.abc import Iterable
from typing import Literal

from mqlite.errors import GroupError

__all__ = [
    "PROBE_INTERVAL",
    "MemberLock",
    "Prober",
    "Verdict",
    "ensure_members_dir",
    "lock_held",
    "lock_pid",
    "members_dir",
    "probe_alive",
    "status",
    "unlink_quiet",
]

#: Seconds between two probes of a watcher: a crash whose pidfd wake-up is lost (or
#: whose pidfd cannot be opened) is still noticed within this.  One period for stream
#: groups and queues.  A crash normally wakes the watcher through the pidfd at once,
#: so the period is a CPU trade: two idle consumers in one process used about 1.8-2% of
#: a core at 20 ms and 0.6-0.8% at 50 ms, nearly all of it the timed wake-ups
#: (benchmarks/bench_idle_liveness.py, docs/decisions.md D20).
PROBE_INTERVAL = 0.05

Verdict = Literal["alive", "dead", "expired"]


# -- the members directory ---------------------------------------------------------------------

def members_dir(broker_path: str) -> str:
    """``<broker>/members``: where every member lock file lives."""
    return os.path.join(broker_path, "members")


def ensure_members_dir(broker_path: str, mode: int) -> str:
    """Create the members directory (``mode``) if needed; refuse a symlink.

    Raises
    ------
    GroupError
        The directory is a symlink, is not a directory, or cannot be created.
    """
    d = members_dir(broker_path)
    try:
        os.mkdir(d, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise GroupError(f"cannot create {d} ({exc.strerror}); check the broker "
                         "directory's permissions and free space") from exc
    if os.path.islink(d):
        raise GroupError(f"{d} is a symlink; refusing to use it")
    if not os.path.isdir(d):
        raise GroupError(f"{d} is not a directory; remove it (it holds only liveness "
                         "lock files) and try again")
    return d


def unlink_quiet(path: str) -> None:
    """Remove ``path``; a file already gone (or any other OS error) is ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


def lock_pid(name: str) -> int | None:
    """The pid written into a lock file name by :meth:`MemberLock.create` (``None``: none)."""
    parts = name.removesuffix(".lock").split("-")
    if len(parts) < 3:
        return None
    try:
        return int(parts[-2])
    except ValueError:
        return None


# -- holding a lock ----------------------------------------------------------------------------

class MemberLock:
    """The exclusive ``flock`` that says "this member is alive".

    Create with :meth:`create`; ``name`` is the file name to store in the
    member's record (it also names the member's incarnation).
    """

    __slots__ = ("__weakref__", "directory", "fd", "name", "pid")

    def __init__(self, directory: str, name: str, fd: int) -> None:
        self.directory = directory
        self.name = name
        self.fd = fd
        self.pid = os.getpid()

    @classmethod
    def create(cls, broker_path: str, tag: str, *, file_mode: int,
               dir_mode: int) -> MemberLock:
        """Create ``<tag>-<pid>-<random>.lock`` under the members directory and lock it.

        Raises
        ------
        GroupError
            The members directory is a symlink.
        OSError
            The file cannot be created or locked.
        """
        d = ensure_members_dir(broker_path, dir_mode)
        name = f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        path = os.path.join(d, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            unlink_quiet(path)
            raise
        lock = cls(d, name, fd)
        _holders.add(lock)
        return lock

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.name)

    @property
    def held(self) -> bool:
        """True until :meth:`close` (or a fork, in the child)."""
        return self.fd >= 0

    def heartbeat(self) -> None:
        """Refresh the file's mtime (``futimens``; errors ignored: the next beat retries)."""
        fd = self.fd
        if fd >= 0:
            try:
                os.utime(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Unlink the file (in the creating process only) and drop the lock.  Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            if os.getpid() == self.pid:
                unlink_quiet(self.path)
            try:
                os.close(fd)
            except OSError:
                pass

    def _forget_in_child(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


# -- probing -----------------------------------------------------------------------------------

def lock_held(fd: int) -> bool:
    """True while another open file description holds an exclusive flock on ``fd``'s file.

    The probe takes a *shared* lock, so concurrent probers never see each
    other as the owner.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # EWOULDBLOCK: held; anything else: cannot tell, assume alive
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _open_probe(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def probe_alive(path: str) -> bool:
    """True while some process holds the lock file at ``path`` (it is alive)."""
    try:
        fd = _open_probe(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (the heartbeat still expires it)
    try:
        return lock_held(fd)
    finally:
        os.close(fd)


def status(path: str, timeout_ms: int | None, now_ms: int) -> Verdict:
    """One uncached probe of the lock file at ``path`` (see the module's verdicts).

    ``timeout_ms`` is the member's session timeout (``None``: never expires);
    ``now_ms`` is wall-clock milliseconds (``time.time_ns() // 1_000_000``).
    """
    if not probe_alive(path):
        return "dead"
    if timeout_ms is None:
        return "alive"
    try:
        mtime_ms = os.stat(path).st_mtime_ns // 1_000_000
    except FileNotFoundError:
        return "dead"
    return "expired" if now_ms - mtime_ms > timeout_ms else "alive"


class Prober:
    """Probes peers' lock files through cached descriptors; sleeps on their pidfds.

    One per watcher thread.  Per probe of a peer: one ``flock`` and (with a
    timeout) one ``fstat``.  Call :meth:`track` when the set of peers changes
    so descriptors of departed peers are closed, :meth:`wait` to sleep until
    the next probe, :meth:`close` when done.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fds: dict[str, int] = {}
        self.pidfds: dict[int, int] = {}
        self._fired: set[int] = set()
        self._poller = select.poll()
        self._guard = threading.Lock()  # wake() against close()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(self._wake_r, select.POLLIN)
        self._pid = os.getpid()
        self.closed = False

    def status(self, lock: str, timeout_ms: int | None, now_ms: int) -> Verdict:
        """Verdict on the member holding lock file ``lock`` (``timeout_ms=None``: no expiry)."""
        fd = self.fds.get(lock)
        if fd is None:
            try:
                fd = _open_probe(os.path.join(self.directory, lock))
            except FileNotFoundError:
                return "dead"
            except OSError:
                return "alive"  # cannot tell; the heartbeat check cannot run either
            self.fds[lock] = fd
        if not lock_held(fd):
            return "dead"
        if timeout_ms is None:
            return "alive"
        age = now_ms - os.fstat(fd).st_mtime_ns // 1_000_000
        return "expired" if age > timeout_ms else "alive"

    def forget(self, lock: str) -> None:
        """Close the cached descriptor of ``lock`` (its member was reaped)."""
        fd = self.fds.pop(lock, None)
        if fd is not None:
            os.close(fd)

    def track(self, locks: Iterable[str], pids: Iterable[int]) -> None:
        """Keep descriptors for exactly ``locks`` and pidfds for exactly ``pids``.

        This process's own pid is ignored; a pid that cannot be opened (gone
        already, or not visible here) is skipped: the lock probe decides.
        """
        keep = set(locks)
        for name in [n for n in self.fds if n not in keep]:
            os.close(self.fds.pop(name))
        want = set(pids)
        want.discard(os.getpid())
        for pid in [p for p in self.pidfds if p not in want]:
            fd = self.pidfds.pop(pid)
            if fd in self._fired:
                self._fired.discard(fd)
            else:
                self._poller.unregister(fd)
            os.close(fd)
        if not hasattr(os, "pidfd_open"):
            return
        for pid in want - set(self.pidfds):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            self.pidfds[pid] = fd
            self._poller.register(fd, select.POLLIN)

    def wait(self, timeout: float = PROBE_INTERVAL) -> bool:
        """Sleep up to ``timeout`` seconds; return early when a peer exits or on :meth:`wake`.

        Returns True when a peer's pidfd fired (probe now).
        """
        exited = False
        for fd, _ in self._poller.poll(timeout * 1000):
            if fd == self._wake_r:
                try:
                    os.read(fd, 64)
                except OSError:
                    pass
                continue
            # An exited process's pidfd stays readable: watch it once only.
            self._poller.unregister(fd)
            self._fired.add(fd)
            exited = True
        return exited

    def wake(self) -> None:
        """End a :meth:`wait` in progress (or the next one) at once.  Any thread.

        Ignored in a forked child: the pipe is shared with the parent's watcher.
        """
        with self._guard:
            if not self.closed and os.getpid() == self._pid:
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass  # pipe full: a wake-up is already pending

    def close(self) -> None:
        """Close every descriptor.  Idempotent."""
        with self._guard:
            if self.closed:
                return
            self.closed = True
            for fd in [*self.fds.values(), *self.pidfds.values(), self._wake_r, self._wake_w]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.fds.clear()
            self.pidfds.clear()


# -- fork --------------------------------------------------------------------------------------

_holders: weakref.WeakSet[MemberLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for h in list(_holders):
        h._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
