"""The LMDB environment of one broker directory.

Contract
--------
* One :class:`Env` per process per directory (keyed by device and inode):
  LMDB forbids opening the same environment twice in one process.  Brokers
  share it through :func:`acquire_env` / :meth:`Env.release` (reference
  counted).
* After ``fork()`` the child never touches the parent's environment: the
  inherited handles are parked (never closed: closing would clear the
  parent's reader slots, because LMDB records the opener's pid) and the next
  use in the child opens a fresh environment.
* The directory is private by default (0700, files 0600).  A directory that
  is a symlink, owned by someone else or writable by group/world (unless
  ``shared_group``), and symlinked ``data.mdb``/``lock.mdb``/``notify.shm``,
  are refused with :class:`BrokerDirectoryError`.
* Before LMDB maps ``data.mdb`` its meta pages are checked against the file
  size, because touching pages past the end of a truncated file is SIGBUS.
  A file that ends before the meta page's last page is accepted only if no
  page past its end is referenced: not by the free-page tree (read with
  ``pread``) nor by any named database (walked in a child process).
* LMDB's map of ``data.mdb`` is guarded against SIGBUS (``_guard_map``): a
  stored size that runs past the end of the file reads zeros, so the read
  raises :class:`CorruptRecordError` instead of killing the process.
* Under ``durability="none"`` LMDB writes through its map (``writemap``, D47):
  no ``pwrite`` copy per dirty page.  LMDB then sizes ``data.mdb`` to the map
  (a sparse file), so the process allocates the file's blocks ahead of LMDB's
  last page (:meth:`Env._prealloc`): a full disk is a typed
  :class:`StorageError` before the transaction writes, never a SIGBUS on a
  hole.  ``MQLITE_WRITEMAP=0`` in the environment turns it off.
* Backpressure in three tiers (:meth:`Env.check_space`): above
  ``HIGH_WATER_FRACTION`` (90%) of the map in use, sends raise
  :class:`StorageFullError` (every append of new messages: sends, publishes,
  redrives); above ``GROW_WATER_FRACTION`` (95%) so do the other writes that add
  lasting state (receives, dead-letter moves, new groups, new topics); draining
  writes (acks, nacks, offset commits, deletes, close) are always admitted, into
  the headroom the first two tiers leave.  Every append is counted before it
  writes, whatever its tier: the promotion of a due delayed message (a move: its
  bytes were counted when it was scheduled) only where it would not fit the map
  at all (:data:`SPACE_MOVE`).  Counting allocates the disk blocks under writemap,
  so no append can meet a full disk in the middle of its transaction (D57).
* ``lmdb`` exceptions are converted by :func:`lmdb_error`; none escapes raw.
"""

from __future__ import annotations

import gc
import itertools
import os
import stat
import struct
import threading
import time
import zlib
from types import TracebackType
from typing import Any, NoReturn

import lmdb

from mqlite import _core
from mqlite._storage import log as _log
from mqlite._storage import queues as _queues
from mqlite.config import (
    DEFAULT_MAP_SIZE,
    DURABILITY_MODES,
    GROW_WATER_FRACTION,
    HIGH_WATER_FRACTION,
    MAX_MAP_SIZE,
)
from mqlite.errors import (
    BrokerDirectoryError,
    ClosedError,
    CorruptRecordError,
    MqliteError,
    StorageError,
    StorageFullError,
)

__all__ = [
    "DB_NAMES",
    "SPACE_GROW",
    "SPACE_MOVE",
    "SPACE_SEND",
    "Env",
    "MapExhaustedError",
    "ReadTxn",
    "acquire_env",
    "check_data_file",
    "lmdb_error",
]

#: The fixed set of named databases (docs/format.md).
DB_NAMES = (
    "meta",
    "topics",
    "partitions",
    "records",
    "offsets",
    "groups",
    "pending",
    "scheduled",
    "dedup",
    "exchanges",
    "bindings",
)
FORMAT_VERSION = 1
NOTIFY_SLOTS = 4096
#: Words ``[1, NOTIFY_HASHED)`` of ``notify.shm`` are hashed: topics' (crc32 of the name)
#: and partitions' (``_core.partition_slot``), where a collision only wakes a waiter
#: for nothing (they wake every waiter).  Word ``QUEUE_VERSION_SLOT`` moves after every
#: queue consumer's registration and topic deletion (nobody waits on it: writers compare
#: it with the one their cache of a topic's queue words was read under), and words
#: ``[QUEUE_WORD_FIRST, NOTIFY_SLOTS)`` are queue groups' words, one each, allocated
#: in storage (``_storage.queues.allocate_word``): a writer wakes *one* receiver there,
#: which must be of the group it means (D74).
NOTIFY_HASHED = 2048
QUEUE_VERSION_SLOT = NOTIFY_HASHED
QUEUE_WORD_FIRST = NOTIFY_HASHED + 1
#: The commit ring (csrc/combine.h): slots and payload bytes per slot.  One ring per
#: durability mode (``commit-sync.shm``, ``commit-lazy.shm``), so an operation is only
#: ever committed by a process whose commits are at least as durable as its sender's.
COMB_SLOTS = 64
COMB_SLOT_BYTES = 65536 - 64  # a slot (64-byte header + payload) is 64 KiB
_READER_CHECK_INTERVAL = 5.0
#: Space tiers of :meth:`Env.check_space`.
SPACE_SEND = "send"
SPACE_GROW = "grow"
#: Appends that move bytes already counted (a due delayed message): refused only where
#: they would not fit the map at all, and given their disk blocks under writemap.
SPACE_MOVE = "move"
_SPACE_BUDGET_MAX = 1 << 20  # bytes a process adds between two counts of the pages in use
# writemap (D47): bytes of data.mdb allocated ahead of LMDB's last page: an eighth of
# the pages up to it, at least _PREALLOC_AHEAD_MIN and at most _PREALLOC_AHEAD (clipped
# to the map).  A check that finds less than half of it left allocates the next stretch.
_PREALLOC_AHEAD = 16 << 20
_PREALLOC_AHEAD_MIN = 1 << 20
# Under writemap the space budget is at most this fraction of the stretch: a commit
# takes at most ~10 fresh pages per page charged (a B-tree path copied in each of the
# databases it touches while a reader pins the freed ones), so a budget's worth of
# sends stays inside the half of the stretch the last check left.
_PREALLOC_BUDGET_DIV = 20
# The least room above the last page a write may start with when no more can be had.
_PREALLOC_MIN_PAGES = 64
_META = struct.Struct("<II")  # magic, version
_LMDB_MAGIC = 0xBEEFC0DE
_UNINITIALIZED_MAX_PAGES = 16  # see _never_initialized

_registry: dict[tuple[int, int], Env] = {}
_registry_lock = threading.Lock()
_graveyard: list[Any] = []  # lmdb handles inherited across fork(): kept, never closed


class MapExhaustedError(StorageFullError):
    """LMDB's map itself ran out of pages (not a tier refusal of :meth:`Env.check_space`).

    Below the marks this happens only while readers pin freed pages: pages a
    write transaction frees are reused only once no reader still sees the
    snapshot they belonged to, so a reader thread preempted inside its read
    transaction makes a run of small writes take fresh pages from the end of the
    map.  Draining writes retry on it (``mqlite._engine.retry_draining``).
    """


def lmdb_error(exc: BaseException, what: str) -> MqliteError:
    """Convert an ``lmdb`` exception into the matching mqlite error."""
    if isinstance(exc, MqliteError):
        return exc
    if isinstance(exc, lmdb.MapFullError):
        return MapExhaustedError(
            f"{what}: the broker's map is full; consume, apply retention or delete topics, "
            "or reopen with a larger map_size"
        )
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError,
                        lmdb.InvalidError)):
        return CorruptRecordError(f"{what}: LMDB reports a corrupt database ({exc})")
    if isinstance(exc, lmdb.PanicError):
        return StorageError(
            f"{what}: LMDB declared the environment unusable after an I/O error ({exc}); "
            "check the disk; close every handle of this broker and open it again"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return StorageError(
            f"{what}: LMDB reader table full; too many concurrent readers ({exc})"
        )
    if isinstance(exc, (lmdb.DiskError, OSError)):
        return StorageError(f"{what}: I/O error ({exc}); check free disk space and permissions")
    text = str(exc)
    if any(s in text for s in ("File too large", "No space left", "Input/output error",
                               "Disk quota exceeded", "Read-only file system")):
        # LMDB reports write(2)/fsync(2) failures as a generic Error with the errno text.
        return StorageError(f"{what}: I/O error ({text}); check free disk space, quotas "
                            "and file size limits; nothing of this transaction was stored")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def _check_not_symlink(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise BrokerDirectoryError(
            f"{path} is a symlink; mqlite refuses symlinked broker files "
            "(LMDB would follow it and write elsewhere)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise BrokerDirectoryError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise BrokerDirectoryError(f"{path} is owned by uid {st.st_uid}, not by you")


def secure_directory(path: str, *, create: bool, shared_group: bool) -> os.stat_result:
    """Create (0700/0770) or check the broker directory; return its ``lstat``."""
    mode = 0o770 if shared_group else 0o700
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise BrokerDirectoryError(f"broker directory {path} does not exist") from None
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise BrokerDirectoryError(
                f"parent directory {parent} of the broker does not exist"
            ) from None
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BrokerDirectoryError(f"cannot create broker directory {path}: {exc}") from exc
        os.chmod(path, mode)  # mkdir's mode is filtered by umask
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise BrokerDirectoryError(
            f"broker directory {path} is a symlink; open the real path instead"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise BrokerDirectoryError(f"broker path {path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise BrokerDirectoryError(
            f"broker directory {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
        )
    unsafe = 0o002 if shared_group else 0o022
    if st.st_mode & unsafe:
        raise BrokerDirectoryError(
            f"broker directory {path} has mode {stat.S_IMODE(st.st_mode):o}, writable by "
            f"{'others' if shared_group else 'group or others'}; chmod {mode:o} it"
        )
    return st


def check_data_file(path: str, *, repair: bool = True) -> int | None:
    """Check ``data.mdb`` against its meta pages before LMDB maps it.

    Returns the map size recorded in the newest meta page (``None`` when the
    file does not exist yet, or holds nothing: see below).  Raises
    :class:`CorruptRecordError` when the file is shorter than the pages the
    meta page says are in use, or when neither meta page is valid: mapping
    such a file can kill the process with SIGBUS.

    A non-empty file whose meta pages are all zero bytes was never
    initialized (a crash while the broker was being created, see
    :func:`_never_initialized`).  With ``repair`` it is renamed aside and
    ``None`` returned, so LMDB starts a fresh file; without (``verify``) it
    is reported as :class:`CorruptRecordError`.
    """
    data = os.path.join(path, "data.mdb")
    try:
        fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BrokerDirectoryError(f"cannot open {data}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            _check_empty_data_file(path, data, repair=repair)
            return None  # created but never initialized: LMDB writes it fresh
        head = os.pread(fd, 256, 0)
        if len(head) < 160:
            raise CorruptRecordError(f"{data} is truncated ({size} bytes): not an LMDB file")
        magic, _version = _META.unpack_from(head, 16)
        if magic != _LMDB_MAGIC:
            if _never_initialized(fd, size):
                if not repair:
                    raise CorruptRecordError(
                        f"{data} holds no committed transaction: its meta pages were never "
                        "written (a crash while the broker was being created); opening the "
                        "broker sets it aside and starts empty")
                _set_aside_uninitialized(path, data, fd)
                return None
            raise CorruptRecordError(f"{data} is not an LMDB data file (bad magic)")
        psize = struct.unpack_from("<I", head, 40)[0]
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            raise CorruptRecordError(f"{data}: implausible page size {psize} in meta page")
        best: tuple[int, int, int, int] | None = None  # txnid, last_pg, mapsize, free root
        for page in (0, 1):
            buf = os.pread(fd, 160, page * psize)
            if len(buf) < 160:
                continue
            magic, _version = _META.unpack_from(buf, 16)
            if magic != _LMDB_MAGIC:
                continue
            mapsize = struct.unpack_from("<Q", buf, 32)[0]
            free_root = struct.unpack_from("<Q", buf, 80)[0]
            last_pg, txnid = struct.unpack_from("<QQ", buf, 136)
            if best is None or txnid > best[0]:
                best = (txnid, last_pg, mapsize, free_root)
        if best is None:
            raise CorruptRecordError(f"{data}: both LMDB meta pages are damaged")
        need = (best[1] + 1) * psize
        if size < need:
            # Another process may have committed (growing the file) between the
            # fstat above and the meta read: LMDB writes pages before the meta
            # page, so a size taken after the meta read is consistent with it.
            size = os.fstat(fd).st_size
        if size < need and (size % psize or _free_list_missing_pages(fd, psize, best[3],
                                                                     size // psize)
                            or not _tail_is_unreferenced(path)):
            raise CorruptRecordError(
                f"{data} is truncated: {size} bytes but the database uses {need}; "
                "restore it from a backup (opening it could crash the process)"
            )
        return best[2]
    finally:
        os.close(fd)


def _check_empty_data_file(path: str, data: str, *, repair: bool) -> None:
    """Accept a 0-byte ``data.mdb`` only when the broker was never opened (D21).

    LMDB leaves ``data.mdb`` empty only between creating it and writing its
    two meta pages, inside the first ``lmdb.open``; mqlite creates
    ``notify.shm`` only after that open's first commit (the format record)
    returned.  So an empty data file next to ``notify.shm`` was emptied
    after the broker was in use (truncated, or lost to a crash under
    ``durability="none"``): messages may have been acknowledged, and opening
    it as an empty broker would lose them silently.
    """
    if os.path.lexists(os.path.join(path, "notify.shm")):
        raise CorruptRecordError(
            f"{data} is empty (0 bytes) but the broker was in use (notify.shm exists): "
            "its messages are lost; restore data.mdb from a backup, or move data.mdb, "
            "lock.mdb and notify.shm aside to start an empty broker")
    if not repair:
        raise CorruptRecordError(
            f"{data} is empty (0 bytes): the broker was never initialized (a crash while "
            "it was being created); opening the broker initializes it")


def _never_initialized(fd: int, size: int) -> bool:
    """Whether both meta pages of a non-empty data file are still all zero bytes.

    LMDB writes a new file's two meta pages first, without a sync, and the
    first commit's fdatasync makes them durable together with that commit.
    A power cut before that sync can keep later pages and lose the meta
    pages: the file then holds no transaction LMDB could ever read, so
    nothing in it was ever acknowledged (under ``"sync"`` or ``"lazy"``; under
    ``"none"`` an OS crash may lose recent commits anyway).  A live creator
    never shows this state to another process: the kernel extends the file
    size only after the written bytes are in the page cache.

    Only a small file qualifies (at most ``_UNINITIALIZED_MAX_PAGES``; the
    first commit writes 2 pages): zeroed meta pages in front of a larger file
    are damage to an established broker, reported as corruption.
    """
    psize = os.sysconf("SC_PAGESIZE")  # LMDB's page size for a new file is the OS's
    if size > _UNINITIALIZED_MAX_PAGES * psize:
        return False
    span = min(size, 2 * psize)
    return os.pread(fd, span, 0) == bytes(span)


def _set_aside_uninitialized(path: str, data: str, fd: int) -> None:
    """Rename a never-initialized data file aside (kept for inspection), with a warning.

    Several processes may find the same file at once: under an exclusive
    ``flock`` of the broker directory, only the one whose descriptor still is
    the file at ``data`` renames it; the others (the file was already moved,
    perhaps replaced by a fresh one) leave the path alone.
    """
    import fcntl
    import logging

    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        try:
            current = os.stat(data, follow_symlinks=False)
        except FileNotFoundError:
            return
        mine = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            return
        aside = f"{data}.uninitialized-{time.time_ns()}"
        os.rename(data, aside)
    finally:
        os.close(dfd)  # closing drops the lock
    logging.getLogger("mqlite").warning(
        "%s held no committed transaction (its meta pages were never written: a crash "
        "while the broker was being created); moved it to %s and starting empty", data, aside)


# LMDB 0.9 page layout (lmdb/mdb.c): a 16-byte header (pgno u64, pad u16, flags u16,
# lower u16, upper u16; an overflow page keeps its page count as u32 at 12), then
# u16 node offsets; a node is (lo u16, hi u16, flags u16, key size u16, key, data).
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_LEAF2 = 0x01, 0x02, 0x04, 0x20
_F_BIGDATA = 0x01
_PAGE_HEADER = 16
_NO_PAGE = 0xFFFFFFFFFFFFFFFF  # P_INVALID: an empty tree


def _free_list_missing_pages(fd: int, psize: int, root: int, npages: int) -> bool:
    """Whether LMDB's free-page tree references a page at or past page ``npages``.

    :func:`_tail_is_unreferenced` walks the named databases through py-lmdb,
    which cannot open the free-page tree (database 0); but LMDB's first write
    transaction reads it, and a missing page there is SIGBUS in the writer.
    This walks it with ``pread`` (never mapped, so a missing page is an
    answer, not a crash): branch and leaf pages and the overflow pages of
    large free-page records.  A page that does not parse as a tree page is
    reported as missing too: LMDB would misread it.
    """
    if root == _NO_PAGE:
        return False
    todo = [root]
    seen: set[int] = set()
    while todo:
        pgno = todo.pop()
        if pgno >= npages or pgno in seen or len(seen) > npages:
            return True
        seen.add(pgno)
        page = os.pread(fd, psize, pgno * psize)
        if len(page) < psize:
            return True
        flags, lower, upper = struct.unpack_from("<HHH", page, 10)
        if not flags & (_P_BRANCH | _P_LEAF) or flags & _P_LEAF2:
            return True
        if not _PAGE_HEADER <= lower <= upper <= psize:
            return True
        for i in range((lower - _PAGE_HEADER) >> 1):
            off = struct.unpack_from("<H", page, _PAGE_HEADER + 2 * i)[0]
            if off + 8 > psize:
                return True
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
            if flags & _P_BRANCH:
                todo.append(lo | hi << 16 | nflags << 32)
            elif nflags & _F_BIGDATA:
                at = off + 8 + ksize
                if at + 8 > psize:
                    return True
                ov = struct.unpack_from("<Q", page, at)[0]
                if ov >= npages:
                    return True
                head = os.pread(fd, 16, ov * psize)
                if len(head) < 16 or not struct.unpack_from("<H", head, 10)[0] & _P_OVERFLOW:
                    return True
                if ov + struct.unpack_from("<I", head, 12)[0] > npages:
                    return True
    return False


def _tail_is_unreferenced(path: str) -> bool:
    """Whether a data file shorter than its meta page's last page is still whole.

    LMDB does not write pages that a transaction allocated and freed again
    (loose pages), so the file can legitimately end before ``last_pg``.  A
    child process maps the file and reads every page reachable from the
    roots; if that touches a missing page the child dies of SIGBUS (the
    caller survives) and the file is truncated for real.
    """
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", ("import sys; from mqlite._storage.env import _walk_all; "
                               "_walk_all(sys.argv[1])"), path],
        capture_output=True, timeout=600, check=False,
    )
    return proc.returncode == 0


def _walk_all(path: str) -> None:
    """Read every key and value of every database (run in a child process)."""
    env = lmdb.open(path, readonly=True, lock=True, max_dbs=len(DB_NAMES) + 2,
                    lib_version=0, readahead=False)
    with env.begin(buffers=True) as txn:
        names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        for name in names:
            try:
                db = env.open_db(name, txn=txn, create=False)
            except lmdb.Error:
                continue  # a plain key of the main database, not a named one
            for k, v in txn.cursor(db=db):
                bytes(k)
                bytes(v)
    env.close()


class _NoWritemap(Exception):
    """Internal: the file system cannot allocate ahead; open without writemap."""


class Env:
    """One open LMDB environment plus the broker directory's shared files."""

    def __init__(self, path: str, key: tuple[int, int], *, durability: str,
                 map_size: int | None, shared_group: bool) -> None:
        self.path = path
        self.key = key
        self.durability = durability
        self.shared_group = shared_group
        self.file_mode = 0o660 if shared_group else 0o600
        self.refs = 0
        self.lock = threading.RLock()
        # None: keep the size the broker was created with (DEFAULT_MAP_SIZE when new).
        self._requested_map_size = map_size
        self.map_size = map_size or DEFAULT_MAP_SIZE
        self.lmdb: Any = None
        self.dbs: dict[str, Any] = {}
        self.pid = os.getpid()
        self.notifier: Any = None
        self.combiner: Any = None  # the commit ring; None under "none" or when unusable
        # The write gate (csrc/wgate.h, D42): taken around every LMDB write transaction,
        # so that only one process at a time waits in LMDB's write lock.
        self.gate: Any = None
        # The single-send fast path (_core.SendPath, D36), made by the first Engine.
        self.send_path: Any = None
        # The commit ring's apply step (_core.RingApply, D50), made by the first Engine.
        self.ring_apply: Any = None
        # flock is per open file description: the threads of this process exclude
        # each other from leading the ring with this lock (csrc/combine.h).
        self.comb_lock = threading.Lock()
        self._next_reader_check = 0.0
        self._full_until = 0.0
        # Write-path cache: partition states and topic records as of our last
        # commit.  Valid only while no other writer committed in between,
        # which a write transaction sees as its id == our last commit id + 1.
        self.state_cache: dict[int, Any] = {}
        self.topic_cache: dict[str, Any] = {}
        self.topic_cache_version = -1
        self.fresh_txn: Any = None
        self._cache_tid = -1
        self.slot_cache: dict[str, int] = {}
        #: topic -> (``QUEUE_VERSION_SLOT``'s value before the read, the topic's queue
        #: groups' words): :meth:`queue_words`
        self.queue_words_cache: dict[str, tuple[int, tuple[int, ...]]] = {}
        # Of the write transaction in progress (one at a time per process: LMDB's
        # write lock): topics and partition ids appended to, whose wake-up words are
        # bumped after the commit, and callbacks to run after it.  All are dropped on
        # abort.
        self.touched: set[str] = set()
        self.touched_parts: set[int] = set()
        self.after_commit: list[Any] = []
        # Transactions open now, across threads; the environment closes only at zero.
        self._fence = threading.Lock()
        self._begun = itertools.count()
        self._ended = itertools.count()
        self._closing = False
        self._closed = False
        self._guard = -1  # SIGBUS guard over LMDB's map (see _guard_map)
        self._guard_fd = -1
        # writemap (D47): LMDB writes through its map; data.mdb is allocated ahead
        # up to _alloc_end bytes through _alloc_fd (see _prealloc).
        self.writemap = False
        self._no_writemap = False  # writemap failed here once: this Env opens without it
        self._alloc_fd = -1
        self._alloc_end = 0
        self._faults = _core.guard_faults()
        self._open()

    # -- lifecycle -------------------------------------------------------------------
    def _open(self) -> None:
        for name in ("data.mdb", "lock.mdb", "notify.shm", "bells.shm"):
            _check_not_symlink(os.path.join(self.path, name))
        stored = check_data_file(self.path)
        if stored is not None:
            # An existing broker keeps its map unless the caller asks for a larger one:
            # growing it behind other live processes makes their transactions fail
            # with MDB_MAP_RESIZED once the file outgrows their (smaller) map.
            req = self._requested_map_size
            self.map_size = stored if req is None else max(req, stored)
        sync = self.durability != "none"
        metasync = self.durability == "sync"
        writemap = self._writemap_wanted()
        options: dict[str, Any] = {
            "map_size": self.map_size,
            "subdir": True,
            "create": True,
            "mode": self.file_mode,
            "max_dbs": len(DB_NAMES) + 2,
            "max_readers": 1024,
            "writemap": writemap,
            "sync": sync,
            "metasync": metasync,
            "readahead": False,
            "meminit": False,
            "lib_version": 0,
        }
        try:
            try:
                env = lmdb.open(self.path, **options)
            except lmdb.Error as exc:
                # In a forked child the parked parent handle still counts as open.
                if not (_graveyard and "already open in this process" in str(exc)):
                    raise
                _forget_inherited_env(self.path)
                env = lmdb.open(self.path, **options)
        except lmdb.Error as exc:
            if not writemap:
                raise lmdb_error(exc, f"opening broker {self.path}") from exc
            # sizing the file to the map failed (a file system without sparse files
            # or too small, a quota): open as without writemap
            return self._open_without_writemap()
        self.writemap = False
        try:
            if self.gate is None:
                self.gate = _core.WriteGate(os.path.join(self.path, "data.mdb"))
            self.dbs = {}
            self.gate.enter()
            try:
                with env.begin(write=True) as txn:
                    # under LMDB's write lock: no other writer has pages past the last one
                    if writemap and not self._start_prealloc(env):
                        raise _NoWritemap
                    self.writemap = writemap
                    for name in DB_NAMES:
                        self.dbs[name] = env.open_db(name.encode(), txn=txn, create=True)
                    meta = self.dbs["meta"]
                    fmt = txn.get(b"format", db=meta)
                    if fmt is None:
                        txn.put(b"format", struct.pack(">I", FORMAT_VERSION), db=meta)
                        txn.put(b"map_size", struct.pack(">Q", self.map_size), db=meta)
                    elif struct.unpack(">I", fmt)[0] != FORMAT_VERSION:
                        raise StorageError(
                            f"broker {self.path} has format {struct.unpack('>I', fmt)[0]}, "
                            f"this mqlite reads format {FORMAT_VERSION}"
                        )
            finally:
                self.gate.leave()
            env.reader_check()
        except _NoWritemap:
            env.close()
            return self._open_without_writemap()
        except lmdb.Error as exc:
            env.close()
            raise lmdb_error(exc, f"opening broker {self.path}") from exc
        except OSError as exc:  # the write gate's descriptor or flock
            env.close()
            raise StorageError(f"opening broker {self.path}: cannot take the write gate "
                               f"on data.mdb: {exc.strerror}") from exc
        except BaseException:
            env.close()
            raise
        self.lmdb = env
        self.pid = os.getpid()
        self._guard_map(env)
        info = env.info()
        self.map_size = info["map_size"]
        self._psize = env.stat()["psize"]
        self._hwm_pages = int(self.map_size * HIGH_WATER_FRACTION) // self._psize
        self._grow_pages = int(self.map_size * GROW_WATER_FRACTION) // self._psize
        self._map_pages = self.map_size // self._psize
        self.space_budget = 0
        self._next_reader_check = time.monotonic() + _READER_CHECK_INTERVAL
        if self.notifier is None:
            self.notifier = _core.Notifier(
                os.path.join(self.path, "notify.shm"), NOTIFY_SLOTS, self.file_mode
            )
            # doorbells for event loops (csrc/doorbell.h, mqlite.aio); every process
            # attaches them so its bumps ring the loops waiting on a slot
            self.notifier.attach_bells(os.path.join(self.path, "bells.shm"), self.file_mode)
        if (self.combiner is None and self.durability != "none"
                and os.environ.get("MQLITE_COMBINE", "1") != "0"):
            try:
                self.combiner = _core.Combiner(
                    os.path.join(self.path, f"commit-{self.durability}.shm"), COMB_SLOTS,
                    COMB_SLOT_BYTES, self.file_mode)
            except (OSError, ValueError):
                self.combiner = None  # every send commits on its own, as without a ring
        self._fix_file_modes()

    def _writemap_wanted(self) -> bool:
        """Whether to open LMDB with ``writemap`` (D47): ``"none"`` only, and only
        where LMDB can size ``data.mdb`` to the map without a signal.

        A soft ``RLIMIT_FSIZE`` below the map would make LMDB's ``ftruncate``
        fail, and raise SIGXFSZ (fatal unless ignored: CPython ignores it, an
        embedding program may not); ``MQLITE_WRITEMAP=0`` turns it off.
        """
        if (self.durability != "none" or self._no_writemap
                or os.environ.get("MQLITE_WRITEMAP", "1") == "0"):
            return False
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except (ImportError, OSError, ValueError):
            return False
        return soft == resource.RLIM_INFINITY or soft >= self.map_size

    def _open_without_writemap(self) -> None:
        self._close_alloc_fd()
        self._no_writemap = True
        self._open()

    def _start_prealloc(self, env: Any) -> bool:
        """Give ``data.mdb`` back its size and allocate the first stretch ahead.

        Called inside a write transaction (LMDB's write lock held: no writer
        has pages past the last committed one).  LMDB under ``writemap`` sizes
        the file to the whole map (a sparse file of ``map_size`` bytes, 64 GiB
        by default), which a copy that does not keep holes (``shutil.copy``,
        ``tar`` without ``--sparse``) writes out in full; so the file is cut
        back to its last page plus a stretch (:meth:`_prealloc_ahead`; never
        below a page in use), and that stretch is allocated.  Pages past the end fault into
        the guard (``MQ_GUARD_FILL``), which grows the file.  Returns ``False``
        when the file system cannot allocate (then no writemap).
        """
        self._close_alloc_fd()
        try:
            self._alloc_fd = os.open(os.path.join(self.path, "data.mdb"),
                                     os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        self._psize = psize = env.stat()["psize"]
        info = env.info()
        self.map_size = info["map_size"]
        last = info["last_pgno"]
        keep = min(self.map_size, (last + 1) * psize + self._prealloc_ahead(last))
        try:
            if os.fstat(self._alloc_fd).st_size > keep:
                os.ftruncate(self._alloc_fd, keep)
            self._prealloc(last, 0)
        except (OSError, StorageError):
            self._close_alloc_fd()
            return False
        return True

    def _trim_file(self, env: Any) -> None:
        """On close under writemap: cut ``data.mdb`` back to its last page (D47).

        Under LMDB's write lock (no writer has pages past the last committed
        one), so the file ends as it would without writemap: copies and
        backups see no preallocated tail.  Another writemap process that had
        allocated past that point notices the shorter file at its next check
        (:meth:`_prealloc`) and allocates again.  Best effort: a failure leaves
        the tail, which the next open cuts.
        """
        gate = self.gate
        if self._alloc_fd < 0 or gate is None:
            return
        try:
            gate.enter()
        except OSError:
            return
        try:
            txn = env.begin(write=True)
            try:
                end = (env.info()["last_pgno"] + 1) * self._psize
                if os.fstat(self._alloc_fd).st_size > end:
                    os.ftruncate(self._alloc_fd, end)
            finally:
                txn.abort()
        except (OSError, lmdb.Error):
            pass
        finally:
            gate.leave()

    def _prealloc_ahead(self, last_pgno: int) -> int:
        """Bytes to allocate past LMDB's last page: an eighth of the file, 1-16 MiB, in
        whole pages.

        Whole pages, because the file's size must always be a page boundary: LMDB
        under writemap stores into the page that holds a size that is not (no
        fault: the page is mapped), and when the file is extended later (the next
        stretch, or the guard growing it over a fault past the end) the kernel zeroes
        that page's bytes past the old size, after the store: a committed record
        then has a run of zeros in it (D54).
        """
        psize = self._psize
        ahead = min(_PREALLOC_AHEAD,
                    max(_PREALLOC_AHEAD_MIN, (last_pgno + 1) * psize // 8))
        return ahead - ahead % psize

    def _close_alloc_fd(self) -> None:
        if self._alloc_fd >= 0:
            os.close(self._alloc_fd)
            self._alloc_fd = -1
        self._alloc_end = 0

    def _prealloc(self, last_pgno: int, need_pages: int) -> None:
        """Under writemap, make sure ``data.mdb`` has blocks for the pages a write
        may touch: up to LMDB's last page plus ``need_pages`` plus a stretch
        (:meth:`_prealloc_ahead`, clipped to the map), allocated in stretches.

        LMDB writes a new page by storing into its map; on a file system that
        cannot back a hole page (a full disk) that store is a SIGBUS, after
        which no error can be raised from inside LMDB.  Allocating ahead turns
        a full disk into this method's :class:`StorageError`, raised before the
        transaction writes anything; a write still has the room allocated
        earlier (an ack or an offset commit can drain a broker whose disk
        filled) as long as at least ``_PREALLOC_MIN_PAGES`` pages are left.
        Costs one comparison and an ``fstat`` unless less than half the stretch is left.

        Raises
        ------
        StorageError
            No space (or quota, or file size limit) for the pages the write needs.
        """
        psize = self._psize
        base = (last_pgno + 1 + need_pages) * psize
        ahead = self._prealloc_ahead(last_pgno)
        if base + ahead // 2 <= self._alloc_end or self._alloc_end >= self.map_size:
            try:
                size = os.fstat(self._alloc_fd).st_size
            except OSError:
                size = 0
            if size >= self._alloc_end:
                return
            self._alloc_end = size  # another process cut the file back (its close)
        # pages up to the last one were written (allocated); ours reach _alloc_end
        start = max(self._alloc_end, (last_pgno + 1) * psize)
        end = min(self.map_size, base + ahead)
        if start >= end:
            return
        try:
            os.posix_fallocate(self._alloc_fd, start, end - start)
            self._alloc_end = end
            return
        except OSError as exc:
            first = exc
        # Not the whole stretch: the write goes ahead in the room there is, if any.
        least = min(self.map_size, base + _PREALLOC_MIN_PAGES * psize)
        if least <= start:
            return
        try:
            os.posix_fallocate(self._alloc_fd, start, least - start)
            self._alloc_end = least
            return
        except OSError:
            pass
        raise StorageError(
            f"broker {self.path}: cannot allocate disk space for data.mdb "
            f"({first.strerror}); free disk space (or raise the quota / file size "
            "limit); nothing of this write was stored"
        ) from first

    def _guard_map(self, env: Any) -> None:
        """Guard LMDB's map of ``data.mdb`` against SIGBUS (csrc/guard.h, MQ_GUARD_ZERO).

        py-lmdb touches every page of a value before returning it, so a damaged
        overflow-record size (a value that runs past the end of the file) was a
        bus error before any check of ours could run.  Under the guard the pages
        past the end read as zeros, the batch's own length field disagrees and
        the read raises :class:`CorruptRecordError`; the next transaction sees
        the fault counter moved and maps the file back over the zeroed pages
        (:meth:`_check_faults`), where the file may yet grow.  The map's range
        is found from the address of a stored value in ``/proc/self/maps``;
        elsewhere (no procfs) the map stays unguarded.
        """
        self._faults = _core.guard_faults()
        fd = -1
        try:
            with env.begin(buffers=True) as txn:
                addr = _core.buffer_address(txn.get(b"format", db=self.dbs["meta"]))
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split(None, 5)
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    if lo <= addr < hi:
                        if (len(fields) < 6 or int(fields[2], 16) != 0
                                or not fields[5].rstrip("\n").endswith("/data.mdb")):
                            return  # not one whole mapping of data.mdb from offset 0
                        rw = os.O_RDWR if self.writemap else os.O_RDONLY
                        fd = os.open(os.path.join(self.path, "data.mdb"),
                                     rw | os.O_CLOEXEC | os.O_NOFOLLOW)
                        # under writemap LMDB writes through the map: zero pages would
                        # swallow those writes, so the guard allocates instead (D47)
                        add = _core.guard_fill if self.writemap else _core.guard_zero
                        self._guard = add(lo, hi - lo, fd)
                        self._guard_fd, fd = fd, -1
                        return
        except (OSError, ValueError, TypeError, lmdb.Error):
            return
        finally:
            if fd >= 0:
                os.close(fd)

    def _unguard_map(self) -> None:
        if self._guard >= 0:
            _core.guard_remove(self._guard)
            self._guard = -1
            os.close(self._guard_fd)
            self._guard_fd = -1

    def _check_faults(self, env: Any) -> Any:
        """After a repaired SIGBUS anywhere in the process, map the file back.

        Restores the pages of LMDB's map that a guarded fault zeroed (at the same
        addresses: readers in other threads keep valid pointers).
        """
        with self.lock:
            self._faults = _core.guard_faults()
            if self._guard >= 0 and os.getpid() == self.pid:
                try:
                    _core.guard_restore(self._guard)
                except OSError as exc:
                    raise StorageError(f"cannot map {self.path}/data.mdb again: {exc}") from exc
        return env

    def _fix_file_modes(self) -> None:
        """Give the files their intended mode: creation filtered it through the umask.

        By path (chmod never opens the file: closing any descriptor of
        ``lock.mdb`` would drop LMDB's fcntl locks on it).
        """
        for name in ("data.mdb", "lock.mdb", "notify.shm"):
            p = os.path.join(self.path, name)
            st = os.lstat(p)
            if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
                    and stat.S_IMODE(st.st_mode) != self.file_mode):
                os.chmod(p, self.file_mode)

    def after_fork_in_child(self) -> None:
        """Park the inherited handle; the next :meth:`handle` call reopens."""
        if self.lmdb is not None:
            _graveyard.append(self.lmdb)
        self.lmdb = None
        self.lock = threading.RLock()
        if self.combiner is not None:
            # The inherited descriptor shares the parent's flock: use a ring of our own.
            self.combiner.close()
            self.combiner = None
        if self.gate is not None:
            # The inherited descriptor is the parent's gate: closing our copy leaves the
            # parent's flock alone (no unlock is sent); ours comes with _open.
            self.gate.close()
            self.gate = None
        self.comb_lock = threading.Lock()
        self._fence = threading.Lock()
        self._begun = itertools.count()  # the parent's threads do not exist here
        self._ended = itertools.count()

    def handle(self) -> Any:
        """The live ``lmdb.Environment`` (reopened after a fork)."""
        env = self.lmdb
        if env is None:
            with self.lock:
                if self.lmdb is None:
                    if self.refs <= 0:
                        raise ClosedError("the broker is closed; call mqlite.open() again")
                    self._open()
                env = self.lmdb
        return env

    def release(self) -> None:
        """Drop one reference; the last one closes the environment."""
        with _registry_lock:
            self.refs -= 1
            if self.refs > 0:
                return
            if _registry.get(self.key) is self:
                del _registry[self.key]
        self._closing = True  # transactions that begin from now on raise ClosedError
        self._close_if_idle()
        # else: the last transaction still open (in another thread, or one this thread
        # was inside when a signal handler closed the broker) closes them as it ends

    def _close_handles(self) -> None:
        if self.lmdb is not None:
            if os.getpid() == self.pid:
                if self.writemap:
                    self._trim_file(self.lmdb)
                self._unguard_map()
                self.lmdb.close()
                self._close_alloc_fd()
            else:
                _graveyard.append(self.lmdb)
            self.lmdb = None
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if self.combiner is not None:
            self.combiner.close()
            self.combiner = None
        if self.gate is not None:
            self.gate.close()
            self.gate = None

    # -- transactions ----------------------------------------------------------------
    def _recover_from_panic(self, dead: Any) -> Any:
        """Replace an environment LMDB declared fatal (``MDB_PANIC``) with a fresh one.

        LMDB flags the environment after a failed meta-page write; every later
        transaction on it fails.  The committed data on disk is intact (the
        failed commit never became visible), so closing the handle and opening
        the files again restores service; transactions still open on the dead
        handle are invalidated.
        """
        with self.lock:
            if self.lmdb is dead:
                self.lmdb = None
                self.fresh_txn = None
                self._cache_tid = -1
                self.state_cache.clear()
                self._unguard_map()
                try:
                    dead.close()
                except lmdb.Error:
                    pass
                self._open()
            return self.lmdb

    def read_txn(self) -> ReadTxn:
        """A short read transaction, as a context manager (values are zero-copy buffers).

        ``with env.read_txn() as txn:`` yields the LMDB transaction and aborts
        it on exit; an ``lmdb`` error raised inside the block (a damaged page
        reached through a cursor, say) leaves it converted by
        :func:`lmdb_error`, so no raw ``lmdb`` exception escapes a read.
        """
        return ReadTxn(self, self._begin_read())

    # -- in-flight fence: the environment is closed only when no transaction is open --
    #
    # Two counters, bumped with next() (one C call: atomic under the GIL, ~40 ns; a
    # threading.Lock costs ~400 ns per acquire on these machines): transactions begun
    # and transactions ended.  A transaction counts itself *before* it looks at
    # _closing, and the closer sets _closing before it compares the counters, so when
    # the closer sees them equal, every transaction that will still begin sees
    # _closing and backs out without touching LMDB.  After the final release every
    # ending transaction re-checks, so the last one out closes the handles.
    def _enter(self) -> None:
        """Count a transaction about to begin; ClosedError once the last handle closed."""
        next(self._begun)
        if self._closing:
            self._leave()
            raise ClosedError("the broker is closed; call mqlite.open() again")

    def _leave(self) -> None:
        """A transaction ended; after the final release the last one out closes."""
        next(self._ended)
        if self._closing:
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        with self._fence:
            if self._closed or _counted(self._ended) != _counted(self._begun):
                return
            self._closed = True
        self._close_handles()

    def _begin_read(self) -> Any:
        self._enter()
        try:
            return self._begin_read_raw()
        except BaseException:
            self._leave()
            raise

    def _begin_read_raw(self) -> Any:
        env = self.lmdb or self.handle()
        if _core.guard_faults() != self._faults:
            env = self._check_faults(env)
        try:
            return env.begin(buffers=True)
        except lmdb.PanicError:
            try:
                return self._recover_from_panic(env).begin(buffers=True)
            except lmdb.Error as exc:
                raise lmdb_error(exc, "begin read") from exc
        except lmdb.ReadersFullError:
            env.reader_check()
            try:
                return env.begin(buffers=True)
            except lmdb.Error as exc:
                raise lmdb_error(exc, "begin read") from exc
        except lmdb.Error as exc:
            raise lmdb_error(exc, "begin read") from exc

    def write_txn(self) -> Any:
        """Begin a write transaction (blocks while another writer holds the lock).

        Pair it with :meth:`commit` / :meth:`abort`, which keep the write-path
        cache coherent.  Sets :attr:`fresh_txn` to it when no other writer committed
        since our last commit.
        """
        next(self._begun)  # the in-flight fence (see _enter), inlined: a hot path
        try:
            if self._closing:
                raise ClosedError("the broker is closed; call mqlite.open() again")
            env = self.lmdb or self.handle()
            if _core.guard_faults() != self._faults:
                env = self._check_faults(env)
            now = time.monotonic()
            if now >= self._next_reader_check:
                self._next_reader_check = now + _READER_CHECK_INTERVAL
                try:
                    env.reader_check()
                except lmdb.Error:
                    pass
            gate = self.gate
            try:
                gate.enter()  # the write gate (csrc/wgate.h): left by commit / abort
            except OSError as exc:
                raise StorageError(f"cannot take the write gate of {self.path}: "
                                   f"{exc.strerror}") from exc
            try:
                try:
                    txn = env.begin(write=True)
                except lmdb.PanicError:
                    # the reopen's own catalog transaction nests in the gate we hold
                    txn = self._recover_from_panic(env).begin(write=True)
            except lmdb.Error as exc:
                gate.leave()
                raise lmdb_error(exc, "begin write") from exc
            except BaseException:
                gate.leave()
                raise
        except BaseException:
            self._leave()
            raise
        if self.touched or self.after_commit or self.touched_parts:  # left by a txn not ended here
            self.touched = set()
            self.touched_parts = set()
            self.after_commit = []
        if self.writemap:
            # Writes that skip check_space (acks, commits, deletes) take pages too:
            # keep blocks on disk ahead of the last page (D47).
            self._or_abort(txn, self._prealloc_now)
        tid = txn.id()
        if tid == self._cache_tid + 1:
            self.fresh_txn = txn
        else:
            self._or_abort(txn, self.revalidate, txn)
        return txn

    def _prealloc_now(self) -> None:
        self._prealloc(self.lmdb.info()["last_pgno"], 0)

    def _or_abort(self, txn: Any, fn: Any, *args: Any) -> None:
        """``fn(*args)`` for a write transaction just begun; abort it if that raises."""
        try:
            fn(*args)
        except lmdb.Error as exc:
            self.abort(txn)
            raise lmdb_error(exc, "begin write") from exc
        except BaseException:
            self.abort(txn)
            raise

    def revalidate(self, txn: Any) -> None:
        """Drop the write-path cache at the start of write transaction ``txn``, which
        follows another writer's commit: partition states, the space budget, and the
        topic cache unless the catalog version is unchanged.

        Raises the raw ``lmdb`` error of the version read (the caller aborts ``txn``).
        """
        self.fresh_txn = None
        self.state_cache.clear()
        self.space_budget = 0  # others wrote: count the space again before admitting
        # Another process committed since our last commit: check the topic cache
        # now, not only when this transaction reads a topic record.  A transaction
        # that reads none (declare an exchange, say) still commits, and the next
        # one is "fresh" and trusts the cache (issue 10, defect 13).
        self.check_topic_cache(_log.topics_version(txn, self.dbs))

    def check_topic_cache(self, ver: int) -> bool:
        """Make the topic cache valid for catalog version ``ver``; ``False`` if older.

        A snapshot older than the cache (a read begun before a catalog change
        this process already saw) must not refill it: the caller reads the
        record from its transaction instead.  The version is set before the
        clear, so a thread that filled an entry meanwhile sees the change.
        """
        cur = self.topic_cache_version
        if ver == cur:
            return True
        if ver < cur:
            return False
        self.topic_cache_version = ver
        self.topic_cache.clear()
        return True

    def commit(self, txn: Any, wake: str | None = None, *, wrote: bool = False) -> None:
        """Commit a transaction from :meth:`write_txn` (errors converted).

        Threads of this process serialize on LMDB's write lock, which the
        commit releases before this method returns; so the cache is marked
        invalid *before* committing (a thread that begins in that window is
        not "fresh") and marked valid for this transaction's id after, unless
        the transaction wrote nothing (LMDB then gives its id to the next
        writer, whose commit the cache has not seen: it is dropped instead).
        Wake-ups (the topics appended to, and ``wake``) and the after-commit
        callbacks run before the transaction stops counting as in flight, so
        a concurrent final close cannot unmap the notifier under them.

        ``wrote=True``: the caller put a record in ``txn`` (a send), so the commit
        spends its id and the check for an empty one (an ``info()`` call, about 8,700
        instructions) is skipped (D51).
        """
        tid = txn.id()
        self.fresh_txn = None
        self._cache_tid = -1
        touched = self.touched
        if touched:
            self.touched = set()
        parts = self.touched_parts
        if parts:
            self.touched_parts = set()
        hooks = self.after_commit
        if hooks:
            self.after_commit = []
        try:
            txn.commit()
        except BaseException as exc:
            self.gate.leave()
            self.state_cache.clear()
            self._leave()
            raise lmdb_error(exc, "commit") from exc
        # LMDB spends no transaction id on a commit that wrote nothing: the next writer,
        # in any process, commits under this id, and a cache vouched for by it would
        # look "fresh" after that writer's commit (stale offsets: D51).  Asked while
        # the write gate is still ours, so no other process can have committed since.
        env = self.lmdb
        spent = wrote or (env is not None and env.info()["last_txnid"] == tid)
        self.gate.leave()
        if spent:
            self._cache_tid = tid
        else:  # nothing written: forget the cache, as an abort does
            self.state_cache.clear()
        if wake is not None and not touched and not hooks:  # one send: the short way
            if parts:
                self.notify_partitions(parts)
            n = self.notifier
            n.bump(self.slot_cache.get(wake) or self.topic_slot(wake))
            for w in self.queue_words(wake):  # one receiver of each queue group (D74)
                n.bump_one(w)
            n.bump(0)
            next(self._ended)  # _leave, inlined
            if self._closing:
                self._close_if_idle()
            return
        try:
            if parts:
                self.notify_partitions(parts)
            if wake is not None:
                touched = touched | {wake}
            if touched:
                self.notify_topics(touched)
            for fn in hooks:
                fn()
        finally:
            self._leave()

    def fail(self, txn: Any, exc: BaseException, what: str) -> NoReturn:
        """Abort ``txn`` because of ``exc`` and raise: the converted error for an ``lmdb``
        error (chained to it), else ``exc`` itself.  Call it in the ``except`` block of a
        write transaction driven by hand (the hot paths that skip the context manager).
        """
        err = self.abort_with(txn, exc, what)
        if err is exc:
            raise exc
        raise err from exc

    def abort_with(self, txn: Any, exc: BaseException, what: str) -> BaseException:
        """Abort ``txn`` because of ``exc``; return the exception to raise.

        ``lmdb`` errors are converted (:func:`lmdb_error`, chain them with
        ``raise err from exc``); anything else is returned unchanged (re-raise
        it with a bare ``raise``).  The one place that decides what escapes a
        write transaction.
        """
        self.abort(txn)
        return lmdb_error(exc, what) if isinstance(exc, lmdb.Error) else exc

    def abort(self, txn: Any) -> None:
        """Abort a transaction from :meth:`write_txn`; drops the write-path cache."""
        self.fresh_txn = None
        self._cache_tid = -1
        self.state_cache.clear()
        if self.touched or self.after_commit or self.touched_parts:
            self.touched = set()
            self.touched_parts = set()
            self.after_commit = []
        try:
            txn.abort()
        finally:
            self.gate.leave()
            self._leave()

    def check_space(self, txn: Any, nbytes: int = 0, tier: str = SPACE_SEND) -> None:
        """Admit a write of about ``nbytes`` new bytes, or raise :class:`StorageFullError`.

        ``tier`` is :data:`SPACE_SEND` (refused once the map is above
        ``HIGH_WATER_FRACTION``), :data:`SPACE_GROW` (refused above
        ``GROW_WATER_FRACTION``) or :data:`SPACE_MOVE` (refused only when the write
        would not fit the map); draining writes do not call this.  Every write of
        these tiers calls it before it writes: the common case costs one subtraction from
        ``space_budget``, the bytes this process may still add before it counts the
        pages in use again.  A count sets the budget to an eighth of the room left
        below the send mark (at most 1 MiB); a write transaction that follows another
        process's commit drops it (:meth:`write_txn`), so the budget only covers this
        process's own consecutive writes and no process overshoots a mark by more
        than its estimate's error.  A write is charged twice its size plus a page
        (B-tree overhead), which errs on the side of refusing.  Far from the marks a
        re-count is one ``info()`` call (last page number bounds the pages in use);
        near them it counts the pages of every database.
        """
        need = 2 * nbytes + self._psize
        if need < self.space_budget:
            self.space_budget -= need
            return
        mark = (self._hwm_pages if tier == SPACE_SEND
                else self._grow_pages if tier == SPACE_GROW else self._map_pages)
        need_pages = -(-need // self._psize)
        now = time.monotonic()
        if tier == SPACE_SEND and now < self._full_until:
            raise StorageFullError(self._full_message(tier))
        # last_pgno bounds the pages in use from above; counting is needed only near a mark.
        last = self.lmdb.info()["last_pgno"]
        used = last + 1
        if used + need_pages > self._hwm_pages:
            used = self._pages_in_use(txn)
        if used + need_pages > mark:
            self.space_budget = 0
            if tier == SPACE_SEND and used >= mark:  # full for any send, not only this one
                self._full_until = now + 0.05
            raise StorageFullError(self._full_message(tier))
        room = max(0, self._hwm_pages - used - need_pages) * self._psize
        budget = min(room // 8, _SPACE_BUDGET_MAX)
        if self.writemap:  # blocks on disk for this write and the budget (D47)
            budget = min(budget, self._prealloc_ahead(last) // _PREALLOC_BUDGET_DIV)
            self._prealloc(last, need_pages + -(-budget // self._psize))
        self.space_budget = budget

    def space_freed(self) -> None:
        """Forget a cached "full" verdict: call after a commit that deleted data."""
        self._full_until = 0.0

    def _pages_in_use(self, txn: Any) -> int:
        total = 0
        for db in [None, *self.dbs.values()]:
            st = txn.stat(db) if db is not None else self.lmdb.stat()
            total += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return total + 2  # the two meta pages

    def full_message(self, tier: str = SPACE_SEND) -> str:
        """The message of :class:`StorageFullError` for this broker and space tier."""
        return self._full_message(tier)

    def _full_message(self, tier: str) -> str:
        if tier == SPACE_MOVE:
            return (
                f"broker {self.path}: its map ({self.map_size} bytes) has no room left "
                "for this write; ack in-flight messages, delete topics or let retention "
                "delete old data, or reopen it with a larger map_size"
            )
        if tier == SPACE_SEND:
            return (
                f"broker {self.path} is above {int(HIGH_WATER_FRACTION * 100)}% of its map "
                f"({self.map_size} bytes): sends are refused until consumers drain it, "
                "retention deletes old data, or it is reopened with a larger map_size"
            )
        return (
            f"broker {self.path} is above {int(GROW_WATER_FRACTION * 100)}% of its map "
            f"({self.map_size} bytes): receives, new groups and new topics are refused; "
            "ack or nack in-flight messages, delete topics, or reopen with a larger map_size"
        )

    def space(self) -> dict[str, int]:
        """Map size, pages in use and file size, for describe/metrics."""
        with self.read_txn() as txn:
            used = self._pages_in_use(txn)
        return {
            "map_size": self.map_size,
            "used_bytes": used * self._psize,
            "high_water_bytes": self._hwm_pages * self._psize,
            "grow_water_bytes": self._grow_pages * self._psize,
            "file_bytes": os.path.getsize(os.path.join(self.path, "data.mdb")),
        }

    # -- wake-ups --------------------------------------------------------------------
    def topic_slot(self, topic: str) -> int:
        """Notify slot of a topic (slot 0 is bumped for every append)."""
        slot = self.slot_cache.get(topic)
        if slot is None:
            slot = self.slot_cache[topic] = 1 + zlib.crc32(topic.encode()) % (NOTIFY_HASHED - 1)
        return slot

    def queue_words(self, topic: str) -> tuple[int, ...]:
        """The wake-up words of ``topic``'s queue groups (D74); call after a commit that
        made a message of ``topic`` receivable, then bump each waking *one* thread.

        Each group's receivers wait on a word of its own, allocated in storage with the
        group (no other group holds it), so a writer's one-waiter wake-up reaches a
        receiver of that group.  Cached per topic under the value of
        ``QUEUE_VERSION_SLOT`` loaded before the list was read; the list is read again
        (a read transaction) only when that word moved.  Why a group the cache misses
        has no receiver that could miss this writer's message: every queue consumer's
        registration bumps that word after its commit and before it can receive; the
        caller committed, then bumped the topic's word (a sequentially consistent
        read-modify-write), then this loads the version word.  Either this load sees the
        registration's bump (the list is read again, and sees the group), or it
        precedes it, and then the commit precedes every read of that receiver.
        Topics without queue groups: an empty tuple.  A closed notifier, or a read
        that fails (the broker closing under a writer that committed): empty, nothing
        cached (a wake-up is a hint; the caller's commit stands).
        """
        n = self.notifier
        if n is None:
            return ()
        v = n.load(QUEUE_VERSION_SLOT)
        hit = self.queue_words_cache.get(topic)
        if hit is not None and hit[0] == v:
            return hit[1]
        try:
            with self.read_txn() as txn:
                words = _queues.words_of(txn, self.dbs, topic, QUEUE_WORD_FIRST,
                                         NOTIFY_SLOTS)
        except MqliteError:
            # Closing (or failing) under a writer that already committed: its caller
            # must not raise for a hint.  Nothing cached; the next writer reads again.
            return ()
        self.queue_words_cache[topic] = (v, words)
        return words

    def partition_slot(self, pid: int) -> int:
        """Notify slot of partition id ``pid`` (D64: a consumer reading one partition
        waits on it; every append to the partition bumps it before the topic's)."""
        return _core.partition_slot(pid, NOTIFY_HASHED)

    def notify_partitions(self, pids: Any) -> None:
        """Bump the wake-up words of partition ids ``pids``; call after the commit.

        Appends do it for the partitions they wrote (``touched_parts``); changes that
        a reader of one partition must also see (a group's membership, a topic's
        deletion or new partitions) do it for every partition of the topic.
        """
        n = self.notifier
        if n is None:
            return
        try:
            for pid in pids:
                n.bump(_core.partition_slot(pid, NOTIFY_HASHED))
        except ValueError:  # closed meanwhile: nobody waits on them any more
            pass

    def wake(self, slot: int, *, passing: bool = False, one: bool = False) -> None:
        """Bump wake-up word ``slot``, waking every waiter (a hint: nothing when the
        notifier is closed).

        ``passing``: pass a wake-up of one-at-a-time word ``slot`` on instead (D69):
        wake one waiter, and only when one waits (``Notifier.pass_on``).  For the reaper
        of a dead queue receiver, which may have died holding a wake-up.
        ``one``: bump it waking one thread (``Notifier.bump_one``): a queue group's
        word after a change that made messages of that group only receivable (D76).
        """
        n = self.notifier
        if n is not None:
            try:
                if passing:
                    n.pass_on(slot)
                elif one:
                    n.bump_one(slot)
                else:
                    n.bump(slot)
            except ValueError:  # closed meanwhile: nobody waits on it any more
                pass

    def notify_topics(self, topics: Any) -> None:
        """Bump the wake-up words of ``topics``, their queue groups' (one receiver of each
        group, D67, D74: :meth:`queue_words`) and the global word; call after commit."""
        n = self.notifier
        if n is None:
            return
        slots = self.slot_cache
        try:
            for t in topics:
                n.bump(slots.get(t) or self.topic_slot(t))
                for w in self.queue_words(t):
                    n.bump_one(w)
            n.bump(0)
        except ValueError:
            pass  # closed by a concurrent close(): a wake-up is only a hint


def _counted(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on ``counter`` (read without counting)."""
    return int(repr(counter)[6:-1])  # "count(N)"


class ReadTxn:
    """Context manager around one LMDB read transaction (see :meth:`Env.read_txn`)."""

    __slots__ = ("env", "txn")

    def __init__(self, env: Env, txn: Any) -> None:
        self.env = env
        self.txn = txn

    def __enter__(self) -> Any:
        return self.txn

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.txn.abort()
        except lmdb.Error:
            pass
        finally:
            self.env._leave()
        if et is not None and isinstance(exc, lmdb.Error):
            raise lmdb_error(exc, "read") from exc


def acquire_env(path: str | os.PathLike[str], *, durability: str = "sync",
                map_size: int | None = None, create: bool = True,
                shared_group: bool = False) -> Env:
    """Open (or share) the environment of the broker at ``path``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
    if durability not in DURABILITY_MODES:
        raise ValueError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
    if map_size is not None:
        if not isinstance(map_size, int) or isinstance(map_size, bool):
            raise TypeError("map_size must be int")
        if not 1 << 20 <= map_size <= MAX_MAP_SIZE:
            raise ValueError(f"map_size is in bytes and must be 1 MiB to {MAX_MAP_SIZE} "
                             f"(128 TiB), got {map_size}")
    spath = os.path.abspath(os.fspath(path))
    st = secure_directory(spath, create=create, shared_group=shared_group)
    key = (st.st_dev, st.st_ino)
    with _registry_lock:
        env = _registry.get(key)
        if env is not None and env.pid != os.getpid() and env.lmdb is not None:
            env.after_fork_in_child()
        if env is None:
            env = Env(spath, key, durability=durability, map_size=map_size,
                      shared_group=shared_group)
            _registry[key] = env
        elif env.durability != durability:
            raise ValueError(
                f"broker {spath} is already open in this process with durability "
                f"{env.durability!r}; close it first or use the same mode"
            )
        env.refs += 1
    return env


def _forget_inherited_env(path: str) -> None:
    """Let py-lmdb open ``path`` again in a forked child.

    py-lmdb refuses to open an environment whose files (by device and inode)
    are already open in this process, and it counts the handle inherited
    from the parent.  The child must not close that handle: closing aborts
    the transactions that were live in the parent at fork time, which frees
    the parent's reader slots.  The registry is a set referenced only by the
    extension module, so it is found by its contents (tuples keyed
    ``"ino"``/``"path"``) and the inherited files' keys are dropped from it.
    """
    try:
        from lmdb import _envid
    except ImportError:  # another py-lmdb layout: the retried open reports the error
        return
    keys = set(_envid.env_keys(path, True))
    if not keys:
        return
    for obj in gc.get_objects():
        if (type(obj) is set and obj is not keys and not obj.isdisjoint(keys)
                and all(type(k) is tuple and k and k[0] in ("ino", "path") for k in obj)):
            obj.difference_update(keys)


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for env in list(_registry.values()):
        env.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
