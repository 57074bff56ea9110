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

* **One watcher thread per process** (:func:`watch`).  Every queue consumer
  of a process subscribes its reap to one shared thread instead of running its
  own.  It sleeps in ``poll()`` on an inotify watch of each members directory
  (another process's lock file appearing or going means a re-list; without
  inotify, one ``stat`` of the directory per tick), one ``pidfd`` per peer
  process and a wake pipe.  While a peer lock (another process's file with the
  subscribers' prefix) is not known dead, it also wakes every
  :data:`PROBE_INTERVAL` for one ``flock`` probe per peer lock, each probed once
  however many subscribers share it; with no live peer it has no timed wake-up.
  A file listed for the first time is probed from the next tick on (it is
  unlocked until its creator's ``flock``, which retries while a probe's shared
  lock is on it).  A lock newly seen dead runs every subscriber's reap once; a
  reap that fails is retried every tick.

Thread safety: a :class:`MemberLock` is used by its owner and its owner's
watcher thread (heartbeat); :meth:`Prober.wake` may be called from any
thread, every other :class:`Prober` method from the one watcher thread.
:func:`watch` and :meth:`Watch.close` may be called from any thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Literal

from mqlite.errors import GroupError

__all__ = [
    "PROBE_INTERVAL",
    "MemberLock",
    "Prober",
    "Verdict",
    "Watch",
    "ensure_members_dir",
    "lock_held",
    "lock_pid",
    "members_dir",
    "probe_alive",
    "status",
    "unlink_quiet",
    "watch",
    "watcher_threads",
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
            _lock_new(fd)
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


#: Attempts (1 ms apart) to take the exclusive lock of a just-created lock file.
_LOCK_ATTEMPTS = 500


def _lock_new(fd: int) -> None:
    """Take the exclusive lock of a lock file this process just created.

    The file is visible before it is locked, so a prober (another process's
    liveness watcher lists the directory) may hold its *shared* probe lock at
    that moment, for the length of two system calls: retry, never block (a
    stopped prober must not hang the creator).

    Raises
    ------
    OSError
        Still held after :data:`_LOCK_ATTEMPTS` attempts, or another error.
    """
    for attempt in range(_LOCK_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == _LOCK_ATTEMPTS - 1:
                raise
            time.sleep(0.001)


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


# -- the process's one watcher thread ----------------------------------------------------------

#: A members directory whose mtime is younger than this (nanoseconds) is re-listed on
#: every tick: directory mtimes come from a coarse clock, so two changes within one of
#: its ticks can share an mtime, and an unchanged mtime proves nothing until it is old.
_RACY_NS = 1_000_000_000


class Watch:
    """One subscriber of the process's liveness watcher (see :func:`watch`)."""

    __slots__ = ("closed", "key", "lock", "reap", "retry")

    def __init__(self, key: tuple[str, str], reap: Callable[[], object]) -> None:
        self.key = key
        self.reap = reap
        self.lock = threading.Lock()  # held while the watcher runs ``reap``
        self.retry = False  # the last reap failed: run it again next tick
        self.closed = False

    def close(self, timeout: float = 1.0) -> None:
        """Unsubscribe; wait up to ``timeout`` seconds for a reap in progress.  Idempotent.

        After it returns the watcher starts no new reap for this subscriber.
        Called from the watcher thread itself (from a reap), it does not wait.
        """
        if _hub.remove(self) and threading.current_thread() is not _hub.thread and \
                self.lock.acquire(timeout=timeout):
            self.lock.release()


class _Dir:
    """What the watcher knows of one members directory and lock prefix (its thread only)."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.mtime_ns: int | None = -1
        self.peers: dict[str, int] = {}  # lock file name -> pid (other processes only)
        self.fds: dict[str, int] = {}  # lock file name -> probe descriptor
        self.dead: set[str] = set()  # locks seen dead whose reaps already ran
        # Listed for the first time: probed from the next tick on (see probe()).
        self.young: set[str] = set()
        self.deferred = False  # young locks wait for the next tick: tick again
        self.wd: int | None = None  # its inotify watch (None: none, poll the mtime)
        self.dirty = True  # inotify reported a change: re-list

    def rescan(self, mtime_ns: int | None) -> set[str]:
        """Re-list the directory; returns the names new since the last listing."""
        self.mtime_ns = mtime_ns
        self.dirty = False
        me = os.getpid()
        try:
            names = os.listdir(self.path)
        except OSError:  # gone, or not there yet: no peers
            names = []
        peers: dict[str, int] = {}
        for n in names:
            if n.startswith(self.prefix):
                pid = lock_pid(n)
                if pid is not None and pid != me:
                    peers[n] = pid
        new = set(peers) - set(self.peers)
        self.peers = peers
        self.young = (self.young & set(peers)) | new
        for n in [n for n in self.fds if n not in peers]:
            _close_quiet(self.fds.pop(n))
        self.dead &= set(peers)
        return new

    def probe(self, skip: set[str]) -> set[str]:
        """Names of the peer locks that nobody holds (their processes are gone).

        Names in ``skip`` (listed for the first time) are left for the next
        tick: a lock file exists unlocked between its creation and its owner's
        ``flock``, and a probe's shared lock in that window would also make the
        owner's first ``LOCK_NB`` attempt fail (it retries, :func:`_lock_new`).
        """
        dead: set[str] = set()
        for n in self.peers:
            if n in skip:
                continue
            fd = self.fds.get(n)
            if fd is None:
                try:
                    fd = _open_probe(os.path.join(self.path, n))
                except FileNotFoundError:
                    continue  # unlinked since the listing: left cleanly or reaped
                except OSError:
                    continue  # cannot tell: alive; tried again next tick
                self.fds[n] = fd
            if not lock_held(fd):
                dead.add(n)
        return dead

    def close(self) -> None:
        for fd in self.fds.values():
            _close_quiet(fd)
        self.fds.clear()


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
#: IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF |
#: IN_ONLYDIR: a lock file appears or goes, or the directory itself does.
_IN_MASK = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 | 0x01000000
_IN_IGNORED = 0x8000  # the watch is gone (directory deleted or unmounted)
_IN_Q_OVERFLOW = 0x4000  # events were lost
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None  # not Linux/glibc-compatible: the watcher polls directory mtimes
    return libc


class _DirEvents:
    r"""An inotify descriptor that reports lock files appearing in or leaving a directory.

    Without it (no inotify) the watcher ``stat``\s each directory every tick.
    """

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.libc = libc
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")

    def add(self, path: str) -> int | None:
        """Watch ``path``; its watch descriptor, or None if it cannot be watched."""
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MASK)
        return wd if wd >= 0 else None

    def remove(self, wd: int) -> None:
        """Stop watching (errors ignored: the watch may be gone with its directory)."""
        self.libc.inotify_rm_watch(self.fd, wd)

    def drain(self) -> tuple[bool, set[int] | None]:
        """Read every pending event.

        Returns whether any is about another process's file or a directory
        itself (this process's own lock files come and go without a re-list),
        and the watch descriptors that are gone (None: events were lost).
        """
        gone: set[int] | None = set()
        relevant = False
        me = os.getpid()
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant, gone
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return True, None
            if not buf:
                return relevant, gone
            i = 0
            while i + _EVENT.size <= len(buf):
                wd, mask, _, n = _EVENT.unpack_from(buf, i)
                name = buf[i + _EVENT.size:i + _EVENT.size + n].rstrip(b"\0")
                i += _EVENT.size + n
                if mask & _IN_Q_OVERFLOW:
                    relevant, gone = True, None
                elif mask & _IN_IGNORED:
                    relevant = True
                    if gone is not None:
                        gone.add(wd)
                elif not name or lock_pid(os.fsdecode(name)) != me:
                    relevant = True

    def close(self) -> None:
        _close_quiet(self.fd)


class _Run:
    """One watcher thread's descriptors (created when it starts, closed when it ends)."""

    def __init__(self) -> None:
        self.dirs: dict[tuple[str, str], _Dir] = {}
        self.pidfds: dict[int, int] = {}
        self.fired: set[int] = set()  # pids whose pidfd reported an exit
        self.poller = select.poll()
        self.events: _DirEvents | None = None
        libc = _libc()
        if libc is not None:
            try:
                self.events = _DirEvents(libc)
            except OSError:
                pass  # (descriptor limit): poll directory mtimes instead
        if self.events is not None:
            self.poller.register(self.events.fd, select.POLLIN)

    def fds(self) -> list[int]:
        own = [self.events.fd] if self.events is not None else []
        return [*own, *self.pidfds.values(),
                *(f for d in self.dirs.values() for f in d.fds.values())]

    def changed(self) -> None:
        """inotify fired: mark every directory for a re-list; forget vanished watches."""
        if self.events is None:
            return
        relevant, gone = self.events.drain()
        for d in self.dirs.values():
            d.dirty = d.dirty or relevant
            if gone is None or d.wd in gone:
                d.wd = None  # the directory went: watch it again (or poll its mtime)

    def drop(self, key: tuple[str, str]) -> None:
        """Stop watching a directory nobody subscribes to any more."""
        d = self.dirs.pop(key)
        d.close()
        if (self.events is not None and d.wd is not None
                and all(o.wd != d.wd for o in self.dirs.values())):
            self.events.remove(d.wd)

    def idle(self) -> bool:
        """True when nothing needs a timed tick: every directory has an inotify watch and
        every peer lock it holds is dead and handled (a live peer may lose its pidfd
        wake-up, so it is probed every :data:`PROBE_INTERVAL`)."""
        return all(d.wd is not None and not d.deferred and d.dead.issuperset(d.peers)
                   for d in self.dirs.values())

    def close(self) -> None:
        for d in self.dirs.values():
            d.close()
        self.dirs.clear()
        if self.events is not None:
            self.events.close()
            self.events = None
        for fd in self.pidfds.values():
            _close_quiet(fd)
        self.pidfds.clear()
        self.fired.clear()


class _Hub:
    """The process's one liveness watcher thread and its subscribers."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.subs: dict[tuple[str, str], list[Watch]] = {}
        self.thread: threading.Thread | None = None
        self.wake_r = self.wake_w = -1
        self.run: _Run | None = None  # the running thread's state (read at fork)
        self.last_error: Exception | None = None  # kept for debugging; the loop goes on

    def add(self, w: Watch) -> None:
        with self.guard:
            new_key = w.key not in self.subs
            self.subs.setdefault(w.key, []).append(w)
            if self.thread is None:
                r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self.wake_r = r
                t = threading.Thread(target=self._run, args=(r,), daemon=True,
                                     name="mqlite-liveness")
                try:
                    t.start()
                except BaseException:
                    self.subs[w.key].remove(w)
                    _close_quiet(r)
                    _close_quiet(self.wake_w)
                    self.wake_r = self.wake_w = -1
                    raise
                self.thread = t
            elif new_key:
                self._wake()  # a new directory to watch

    def remove(self, w: Watch) -> bool:
        """Unsubscribe ``w``; False if it was not subscribed here (closed, or a fork's)."""
        with self.guard:
            w.closed = True
            subs = self.subs.get(w.key)
            if subs is None or w not in subs:
                return False
            subs.remove(w)
            if not subs:
                del self.subs[w.key]
                self._wake()  # let the thread close the directory's descriptors
            return True

    def _wake(self) -> None:
        if self.wake_w >= 0:
            try:
                os.write(self.wake_w, b"\0")
            except OSError:
                pass  # pipe full: a wake-up is pending already

    def _run(self, wake_r: int) -> None:
        run = self.run = _Run()
        poller = run.poller
        poller.register(wake_r, select.POLLIN)
        try:
            while True:
                with self.guard:
                    subs = {k: list(v) for k, v in self.subs.items()}
                    if not subs:
                        self.thread = self.run = None
                        _close_quiet(self.wake_w)
                        self.wake_w = -1
                        return
                try:
                    for k in [k for k in run.dirs if k not in subs]:
                        run.drop(k)
                    for k, ws in subs.items():
                        d = run.dirs.get(k)
                        if d is None:
                            d = run.dirs[k] = _Dir(*k)
                        self._tick(run, d, ws)
                    self._track(run)
                except Exception as exc:  # noqa: BLE001 - a dead watcher would stop liveness
                    self.last_error = exc  # (descriptor limit...): the next tick retries
                timeout = None if run.idle() and not any(
                    w.retry for ws in subs.values() for w in ws) else PROBE_INTERVAL * 1000
                for fd, _ in poller.poll(timeout):
                    if run.events is not None and fd == run.events.fd:
                        run.changed()
                        continue
                    if fd == wake_r:
                        try:
                            os.read(fd, 512)
                        except OSError:
                            pass
                        continue
                    poller.unregister(fd)  # an exited process's pidfd stays readable
                    run.fired.update(p for p, f in run.pidfds.items() if f == fd)
        finally:
            with self.guard:
                if self.thread is threading.current_thread():  # ended by an error
                    self.thread = self.run = None
                    _close_quiet(self.wake_w)  # the next subscriber starts afresh
                    self.wake_w = -1
                if self.wake_r == wake_r:
                    self.wake_r = -1
            run.close()
            _close_quiet(wake_r)

    def _tick(self, run: _Run, d: _Dir, ws: list[Watch]) -> None:
        if d.wd is None and run.events is not None:
            d.wd = run.events.add(d.path)  # before the listing: no change is missed
            d.dirty = True
        if d.wd is not None:
            rescan, mtime = d.dirty, d.mtime_ns
        else:
            try:
                mtime = os.stat(d.path).st_mtime_ns
            except OSError:
                mtime = None  # no members directory (yet): no peers
            rescan = mtime != d.mtime_ns or (mtime is not None
                                             and time.time_ns() - mtime < _RACY_NS)
        if rescan:
            for n in d.rescan(mtime):
                pid = d.peers[n]
                if pid in run.fired:  # a reused pid: its old pidfd has fired
                    run.fired.discard(pid)
                    _close_quiet(run.pidfds.pop(pid))
        dead = d.probe(skip=d.young)
        d.deferred = bool(d.young)  # probe them on the next tick
        d.young = set()
        fresh = dead - d.dead
        d.dead = dead
        for w in (ws if fresh else [w for w in ws if w.retry]):
            with w.lock:
                if w.closed:
                    continue
                try:
                    w.reap()
                    w.retry = False
                except Exception as exc:  # noqa: BLE001 - retried next tick
                    w.retry = True
                    self.last_error = exc

    @staticmethod
    def _track(run: _Run) -> None:
        want: set[int] = set()
        for d in run.dirs.values():
            want.update(d.peers.values())
        for pid in [p for p in run.pidfds if p not in want]:
            fd = run.pidfds.pop(pid)
            if pid in run.fired:
                run.fired.discard(pid)
            else:
                run.poller.unregister(fd)
            _close_quiet(fd)
        if not hasattr(os, "pidfd_open"):
            return
        for pid in want - set(run.pidfds):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already, or not visible here: the lock probe decides
            run.pidfds[pid] = fd
            run.poller.register(fd, select.POLLIN)


_hub = _Hub()


def watch(broker_path: str, prefix: str, reap: Callable[[], object]) -> Watch:
    """Subscribe ``reap`` to the process's one liveness watcher thread.

    The watcher probes every lock file of *other* processes in
    ``<broker_path>/members`` whose name starts with ``prefix``, every
    :data:`PROBE_INTERVAL` seconds and at once when such a process exits (its
    ``pidfd``).  When it first finds one of them unlocked (dead) it calls every
    subscriber's ``reap()`` (in the watcher thread, never two at once); ``reap``
    removes the dead lock files it handled.  A ``reap`` that raises is called
    again every tick until it returns.  The thread starts with the first
    subscriber and ends, closing its descriptors, after the last one leaves.

    Returns
    -------
    Watch
        Call :meth:`Watch.close` to unsubscribe.

    Raises
    ------
    OSError
        The watcher thread's wake-up pipe cannot be created (descriptor limit).
    RuntimeError
        The watcher thread cannot be started.
    """
    w = Watch((members_dir(broker_path), prefix), reap)
    _hub.add(w)
    return w


def watcher_threads() -> int:
    """1 while the process's liveness watcher thread runs, else 0 (for tests and stats)."""
    return int(_hub.thread is not None)


# -- fork --------------------------------------------------------------------------------------

_holders: weakref.WeakSet[MemberLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _hub
    for h in list(_holders):
        h._forget_in_child()
    # The watcher thread does not exist here and its subscribers are the parent's: close
    # the child's copies of its descriptors (the parent's stay open) and start afresh.
    old = _hub
    _hub = _Hub()
    for fd in [old.wake_r, old.wake_w, *(old.run.fds() if old.run is not None else [])]:
        if fd >= 0:
            _close_quiet(fd)


os.register_at_fork(after_in_child=_after_fork_in_child)
