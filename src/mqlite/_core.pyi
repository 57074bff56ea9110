"""Type stub and contract of ``mqlite._core``, the Cython binding over ``csrc/``.

This stub is the contract between the C core and the Python layers.  All
functions validate their Python arguments (``TypeError`` for wrong types,
``ValueError`` for bad values) and raise :class:`mqlite.errors.CorruptRecordError`
(without topic context; callers add it) for stored bytes that fail validation.
Byte arguments accept any C-contiguous buffer (``bytes``, ``bytearray``,
``memoryview``, including py-lmdb ``buffers=True`` views), except where a
``str`` is given: ``str`` is always a ``TypeError`` for payloads ("encode it first").
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, Self

BATCH_MAGIC: int  # 0xB1
BATCH_HEADER_SIZE: int  # 43
DEFAULT_MAX_BATCH_BYTES: int  # 262144

# -- checksums and hashing ---------------------------------------------------
def crc32c(data: Any, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``; hardware path when available."""

def crc32c_sw(data: Any, crc: int = 0) -> int:
    """CRC32C computed by the portable table-driven path only (for tests)."""

def crc32c_hw(data: Any, crc: int = 0) -> int:
    """CRC32C by the SSE4.2 path only; ``RuntimeError`` when the CPU lacks it."""

def crc32c_hw_available() -> bool: ...
def murmur2(data: Any) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), as Java's signed 32-bit ``int``."""

def partition_for_key(key: Any, partitions: int) -> int:
    """``(murmur2(key) & 0x7fffffff) % partitions``: the partition Kafka's Java client picks."""

# -- varints (Kafka zig-zag) ---------------------------------------------------
def encode_varint(value: int) -> bytes:
    """Zig-zag LEB128 encoding of a signed 64-bit integer (1-10 bytes)."""

def decode_varint(data: Any, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``pos``; returns ``(value, next_pos)``.

    Raises ``CorruptRecordError`` when truncated or longer than 10 bytes.
    """

# -- messages ------------------------------------------------------------------
class Message:
    """One record as read from a partition (immutable; subclassable).

    ``headers`` is a new ``list`` of ``(str, bytes)`` pairs on each access
    (an empty list when the record has none).  Equality compares every field.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | bytearray | memoryview]] | None = None,
    ) -> None: ...
    @property
    def headers(self) -> list[tuple[str, bytes]]: ...

# -- record batches ------------------------------------------------------------
def encode_batches(
    values: Sequence[Any],
    keys: Sequence[Any | None] | None = None,
    headers: Sequence[Sequence[tuple[str, Any]] | None] | None = None,
    timestamps: int | Sequence[int] | None = None,
    *,
    default_timestamp_ms: int = 0,
    max_batch_bytes: int = 262144,
    max_message_bytes: int = 8388608,
    producer_id: int = -1,
    base_sequence: int = -1,
) -> list[bytes]:
    """Encode records into one or more v1 batches, in order.

    Records are cut greedily into consecutive batches of at most
    ``max_batch_bytes`` (header included; a single record larger than that
    gets a batch of its own).  A value of ``None`` is a null value (a Kafka
    tombstone, value length -1), distinct from ``b""``.  Batch ``i`` gets
    ``base_sequence`` plus the number of records before it (wrapping to 0
    after 2**31-1, as Kafka), unless ``base_sequence`` is -1.  ``keys`` and
    ``headers``, when given, have one entry per value (``None`` = null key /
    no headers).  ``timestamps`` is ``None`` (all ``default_timestamp_ms``), one
    ``int`` for all, or one ``int`` per value.  Header names are ``str``
    (UTF-8 encoded), header values bytes-like.  The batch with index ``i``
    holds the records that follow those of batches ``0..i-1``.

    Raises ``TypeError`` (a value that is not bytes-like, a ``str`` value, a
    header name that is not ``str``), ``ValueError`` (length mismatch between
    values/keys/headers/timestamps, empty ``values``), and
    ``mqlite.errors.MessageTooLargeError`` when one record's key + value +
    header names + header values exceed ``max_message_bytes``.  The GIL is
    released while bytes are copied and checksummed.
    """

def encode_batch(
    values: Sequence[Any],
    keys: Sequence[Any | None] | None = None,
    headers: Sequence[Sequence[tuple[str, Any]] | None] | None = None,
    timestamps: int | Sequence[int] | None = None,
    *,
    default_timestamp_ms: int = 0,
    producer_id: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """Encode all records into exactly one batch (no size cut, no size cap)."""

def batch_header(
    data: Any,
) -> tuple[int, int, int, int, int, int, int]:
    """Parse a batch header without checking the CRC.

    Returns ``(length, attributes, record_count, base_timestamp, max_timestamp,
    producer_id, base_sequence)``.  Checks magic, that ``length`` equals
    ``len(data)``, reserved attribute bits 3-15 and ``record_count >= 1``;
    raises ``CorruptRecordError`` otherwise.  (A non-zero compression codec,
    bits 0-2, passes here and is refused by ``validate_batch``/``decode_batch``
    as unsupported.)
    """

def validate_batch(data: Any) -> int:
    """Deep validation: magic, length, CRC, and every record's structure.

    Checks every varint (at most 10 bytes; a 10th byte above 0x01 is
    corrupt) and length against the remaining bytes, dense offset deltas,
    record attributes 0, a first-record timestamp delta of 0, UTF-8 header
    names, ``record_count`` and ``max_timestamp``.
    Returns the record count; raises ``CorruptRecordError`` with a reason.
    Releases the GIL for the work.
    """

def decode_batch(
    data: Any,
    topic: str,
    partition: int,
    base_offset: int,
    from_offset: int = 0,
    max_records: int = -1,
    out: list[Message] | None = None,
    verify_crc: bool = True,
) -> list[Message]:
    """Decode the records of one batch whose first offset is ``base_offset``.

    Records with offset ``< from_offset`` are parsed and checked but create
    no objects; at most ``max_records`` are decoded (``-1`` = all).  Messages are appended
    to ``out`` when given (and ``out`` is returned), else to a new list.  The
    CRC is checked first unless ``verify_crc`` is false; structure and bounds
    of every record (also those skipped) are always checked.  Nothing is
    appended when the batch is corrupt: ``CorruptRecordError`` is raised instead.
    """

def first_offset_at_or_after(data: Any, base_offset: int, timestamp_ms: int) -> int:
    """The offset of the first record in the batch whose timestamp >= ``timestamp_ms``, else -1."""

# -- cross-process wake-ups ----------------------------------------------------
class Notifier:
    """A MAP_SHARED file of 32-bit sequence words used for futex wake-ups.

    Each slot is a sequence word plus a waiter count; ``bump`` increments the
    sequence and wakes waiters only when some are registered.  A wake-up is a
    hint: callers re-read committed state after ``wait`` returns and always
    pass a timeout.  On systems without futexes ``wait`` sleep-polls with a
    bounded interval (at most 1 ms).  The file is created with mode 0600 (or
    ``mode``) when missing and grown to ``slots`` slots if smaller; it is
    shared correctly across processes and survives ``fork()``.
    """

    slots: int
    def __init__(self, path: str, slots: int = 4096, mode: int = 0o600) -> None:
        """Open (create) and map the file.

        Raises ``OSError`` carrying the errno of the system call that failed (``ELOOP``
        for a symlink, ``ENOENT``, ``EACCES`` ...; the message names the step), and
        ``ValueError`` for a slot count outside [1, 2**40] or a bad mode.
        """
    def load(self, slot: int) -> int:
        """The current sequence value of ``slot`` (acquire load)."""
    def bump(self, slot: int) -> None:
        """Atomically increment ``slot`` and wake every waiter on it."""
    def bump_one(self, slot: int) -> None:
        """As ``bump``, waking one thread asleep on ``slot`` (event loops all): D67."""
    def pass_on(self, slot: int) -> bool:
        """``bump_one`` when ``slot`` has a waiter, else nothing; ``True`` when it bumped
        (a woken queue receiver that leaves without a round passes its wake-up on: D69)."""
    def wait(self, slot: int, expected: int, timeout: float) -> bool:
        """Block (GIL released) until ``slot`` != ``expected`` or ``timeout`` seconds pass.

        Returns ``True`` if the value differed (or a wake-up arrived), ``False`` on timeout.
        Returns at once when the value already differs.  ``timeout`` <= 0 never blocks.
        """
    def wait_woken(self, slot: int, expected: int, timeout: float) -> int:
        """As ``wait``, telling how it ended (D76): ``0`` timed out, ``1`` the value was
        seen to differ at a check, ``2`` a wake-up took this thread off the futex queue
        (only then can it have taken a ``bump_one`` wake-up another thread lacks)."""
    def wait_any(self, slots: Sequence[int], expected: Sequence[int], timeout: float) -> bool:
        """As :meth:`wait` on 1 to 16 distinct slots at once: ``True`` when any moved."""
    def attach_bells(self, path: str, mode: int = 0o600) -> None:
        """Open the doorbell table (csrc/doorbell.h); later bumps ring armed doorbells."""
    def bell_claim(self) -> int:
        """Claim a doorbell; its index (``OSError`` EBUSY when all are taken)."""
    def bell_release(self, index: int) -> None:
        """Give a claimed doorbell back (its waiter wakes)."""
    def bell_arm(self, index: int, slot: int) -> None:
        """Ring doorbell ``index`` on bumps of ``slot`` (counts as a waiter of the slot)."""
    def bell_disarm(self, index: int, slot: int) -> None:
        """Undo one :meth:`bell_arm`."""
    def bell_load(self, index: int) -> int:
        """Doorbell ``index``'s ring word."""
    def bell_kick(self, index: int) -> None:
        """Ring doorbell ``index``."""
    def bell_listen(self, index: int, fd: int) -> None:
        """Doorbell ``index``'s listener loop (blocks): each ring writes an 8-byte 1 to ``fd``."""
    def bell_unlisten(self, index: int) -> None:
        """Make :meth:`bell_listen` of doorbell ``index`` return."""
    def bell_uring(self, index: int) -> UringBell:
        """Watch doorbell ``index`` through io_uring (OSError where the kernel cannot)."""
    def bell_wait(self, index: int, expected: int, timeout: float) -> bool:
        """Block (GIL released) until the ring word != ``expected`` or ``timeout`` s pass."""
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...

# -- cross-process commit combining (csrc/combine.h) --------------------------
FREE: int
CLAIMED: int
FILLED: int
DONE: int

class WriteGate:
    """One process at a time inside LMDB's write lock (csrc/wgate.h)."""

    path: str
    inside: int
    def __init__(self, path: str | bytes | os.PathLike[str]) -> None: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...
    def close(self) -> None: ...

class UringBell:
    """Doorbell of a :class:`Notifier` watched through io_uring (csrc/uring_bell.h)."""

    def fileno(self) -> int:
        """The io_uring descriptor, readable while a ring waits to be handled (-1: closed)."""
    def arm(self) -> None:
        """Wait in the kernel for the ring word to move from its current value."""
    @property
    def armed(self) -> bool:
        """Whether a ``FUTEX_WAIT`` is submitted and not yet reaped."""
    def reap(self) -> tuple[int, int]:
        """Consume completions: ``(count, errno of a failed wait or 0)``."""
    def dispatch(self, waits: dict[int, dict[Any, int]], after: Callable[[int], object]) -> None:
        """Have :meth:`on_readable` resolve the futures of ``waits`` (slot -> {future: seq})."""
    def on_readable(self) -> None:
        """Reader callback: reap, ``set_result(True)`` on each future whose word moved,
        ``after(flags)`` when something is left (1 pending, 2 failed, 4 notifier closed)."""
    def close(self) -> None:
        """Close the ring (a pending wait is cancelled).  Idempotent."""

def partition_slot(pid: int, nslots: int) -> int:
    """The wake-up word of partition id ``pid`` in a notifier of ``nslots`` words (D64)."""

def self_pid() -> int:
    """This process's pid, without a system call (an at-fork hook keeps it current)."""

def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled wrapper of ``mqlite._lifecycle.guarded`` (D62)."""
def guarded_one(method: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled wrapper of ``mqlite._lifecycle.guarded_one`` (D72)."""
def guarded_loop_step(step: Callable[..., Any], checked: Callable[..., Any]
                      ) -> Callable[..., Any]:
    """The compiled ``Consumer.loop_step`` of ``mqlite._lifecycle.guarded_loop_step`` (D79)."""

class Combiner:
    """The shared ring of slots of csrc/combine.h (``commit.shm``).

    A sender claims a slot, fills it (a ticket is taken) and then takes the
    LMDB write lock; the lock holder collects every FILLED slot, applies and
    commits them, stores each result and marks the slot DONE; the owner reads
    its result and releases the slot.  Every state transition is an atomic
    compare-and-swap on the slot's ``ticket << 2 | state`` word.
    """

    nslots: int
    slot_bytes: int
    closed: bool
    path: str
    def __init__(self, path: str, nslots: int = 64, slot_bytes: int = 4096,
                 mode: int = 0o600) -> None:
        """Open (create) and map the file; ``ValueError`` for another layout or bad bounds,
        ``OSError`` (errno of the failing call) otherwise."""
    def claim(self, pid: int) -> int: ...
    def unclaim(self, idx: int) -> None: ...
    def fill(self, idx: int, payload: bytes, gather: bool = True) -> int: ...
    def word(self, idx: int) -> tuple[int, int]: ...
    def payload(self, idx: int) -> bytes: ...
    def collect(self, max_slots: int | None = None) -> list[tuple[int, int]]: ...
    def set_result(self, idx: int, status: int, r0: int, r1: int, r2: int) -> None: ...
    def done(self, idx: int, ticket: int) -> bool: ...
    def result(self, idx: int) -> tuple[int, int, int, int]: ...
    def release(self, idx: int, ticket: int) -> bool: ...
    def withdraw(self, idx: int, ticket: int) -> bool: ...
    def reclaim(self) -> int: ...
    def trylock(self) -> bool: ...
    def unlock(self) -> None: ...
    def wait(self, idx: int, ticket: int, timeout: float) -> bool: ...
    def sleep(self, idx: int, ticket: int, timeout: float) -> int:
        """1 moved on, 0 woken still FILLED, -1 timed out (csrc/combine.h, D60)."""
    def wake(self, idx: int) -> None: ...
    def intact(self) -> bool: ...
    def filled(self) -> int: ...
    def filled_gathering(self) -> int: ...
    def gather(self, max_wait_us: int) -> int: ...
    def gathering(self) -> bool:
        """``True`` while the lock holder sleeps in a gather (csrc/combine.h)."""
    def held(self) -> bool:
        """``True`` while the header says a holder has the combining lock (D60)."""
    def note_commit(self, taken: int, commit_ns: int) -> None: ...
    def note_send(self) -> None: ...
    def since_send(self) -> int: ...
    def follow(self, idx: int, ticket: int, window_ns: int, max_ns: int) -> bool: ...
    def hints(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...

def buffer_address(data: bytes | bytearray | memoryview) -> int:
    """The address of ``data``'s first byte (a buffer-protocol object)."""
def guard_zero(start: int, length: int, fd: int) -> int:
    """Guard a read-only shared map of ``fd``: a SIGBUS inside maps zero pages (id)."""
def guard_fill(start: int, length: int, fd: int) -> int:
    """Guard a writable shared map of ``fd``: a SIGBUS grows/allocates the file (id)."""
def guard_restore(guard_id: int) -> None:
    """Map the file back over the pages a guarded fault zeroed."""
def guard_remove(guard_id: int) -> None:
    """Withdraw a guard from :func:`guard_zero` before the range is unmapped."""
def guard_faults() -> int:
    """How many SIGBUS faults the guards repaired since the process started."""

# -- records from other backends -------------------------------------------------
def messages_from_kafka(raw: list[Any], start: int, out: list[Message],
                        last: dict[tuple[str, int], int]) -> int:
    """Append Messages for confluent-kafka messages of ``raw[start:]`` up to the first error.

    Returns the index of the first message with an error (``len(raw)`` if none).
    """

# -- the single-message send path (_sendpath.pxi, docs/decisions.md D36) -------
class PartitionState:
    """Mutable in-transaction copy of one partition's stored state (int64 fields)."""

    start: int
    next: int
    bytes: int
    first_ts: int
    last_ts: int

    def __init__(self, start: int = 0, next: int = 0, nbytes: int = 0,
                 first_ts: int = -1, last_ts: int = -1) -> None: ...
    @property
    def messages(self) -> int:
        """``next - start``."""

class SendPath:
    """``Engine.send``'s common case for one environment, in one C call.

    Built once per environment (``Env.send_path``) with the pieces it shares
    with the Python path: ``SendPath(env, RecordMetadata, lmdb_error,
    load_state_w, SPACE_SEND, StorageError, _HAND_OVER, _COMBINE_WAIT_S,
    QUEUE_VERSION_SLOT, NOTIFY_HASHED)`` (``hand_over`` and ``wait_s``: the commit
    ring's sender, D56; ``qv_slot`` and ``nhashed``: the notify words, D74).
    """

    def __init__(self, env: Any, md_type: type, lmdb_error: Any, load_state_w: Any,
                 space_send: str, storage_error: type | None = None, hand_over: int = 2,
                 wait_s: float = 0.002, qv_slot: int = 2048,
                 nhashed: int = 2048) -> None: ...
    def send(self, engine: Any, topic: Any, value: Any, key: Any, partition: Any,
             solo: bool = False) -> Any:
        """Append one message and return its ``RecordMetadata``, exactly as
        ``Engine.send`` would; or ``None``, having done nothing, when the call is not
        the common case: headers, dedup ids and explicit timestamps are never passed
        here; a value or key that is not ``bytes``/``None``, a topic not in the topic
        cache, a message above the topic's ``max_message_bytes``, or (without a
        commit ring, or with ``solo``) an environment closing, being reopened or due
        for its reader check.  Without a commit ring (and with ``solo``: the caller
        holds the ring's lock, ``Engine._send_solo``) the message is committed in a
        write transaction of its own; with one, it goes the ring's way as
        ``Engine.send_general`` sends it (D56): alone when the ring is idle, else
        through a slot (``Engine.ring_submit``'s protocol, the leader's step being
        ``engine._lead``), else (too large, no free slot, a retry result) through
        ``engine._send_direct``.  Errors raise as ``Engine.send`` raises them."""

def ring_follow_one(engine: Any, comb: Combiner, payload: bytes, tlock: Any, window_ns: int,
                    max_ns: int, wait_s: float, hand_over: int,
                    lost_error: type[BaseException]) -> tuple[int, int, int, int] | None:
    """``Engine.ring_submit(comb, [payload], follow=True)`` in one C call (D65): an
    offset commit or an ack handed to the commit ring, with the same protocol
    (claim, fill without the gather flag, ``Combiner.follow`` when a send was filled
    within ``window_ns`` (``-1``: never), then wait or lead through ``engine._lead``
    holding ``tlock`` and the ring's lock).  ``(status, r0, r1, r2)`` once the slot is
    DONE, ``None`` when the payload does not fit a slot or no slot is free (nothing was
    handed over); ``lost_error`` when the ring file was truncated meanwhile.
    ``ValueError`` for ``max_ns`` outside [0, 1e9], a negative ``wait_s`` or a
    ``hand_over`` above the ring's hand-over bound."""

class RingApply:
    """The commit ring committer's apply step for one environment (D50), built once
    per environment (``Env.ring_apply``) with the pieces it shares with the Python
    path: ``RingApply(env, load_state_w, SPACE_SEND, StorageFullError,
    TopicNotFoundError, tickets.load)``.
    """

    def __init__(self, env: Any, load_state_w: Any, space_send: str, storage_full: type,
                 topic_missing: type) -> None: ...
    def take(self, engine: Any, txn: Any, comb: Combiner,
             max_slots: int) -> list[tuple[int, int]] | None:
        """Holding the combining lock and ``txn``: apply the (at most ``max_slots``)
        oldest FILLED slots, record their results under their tickets in ``txn`` and
        write each into its slot; ``Engine._take_ring``'s contract and results.  Plain
        appends are applied here, in runs per partition, and so are offset commits of
        the kind ``register_ring_offsets`` named (after the runs before them); dedup-id
        appends, other slot kinds, offset commits outside the msgpack forms read here
        and payloads ``parse_ring_append`` refuses go through ``engine._stage_slot``
        after the runs before them.  Returns the ``(slot,
        ticket)`` pairs to mark DONE after the commit, or ``None`` when nothing was
        written.  An exception leaves ``txn`` to the caller to abort; no slot result
        is written then."""

def register_ring_offsets(kind: int, load_state: Any) -> None:
    """From now on ``RingApply.take`` applies slots of ``kind`` (1-255) as fenced offset
    commits, ``mqlite.groups.member._apply_ring_offsets``'s contract and result
    (D73): payload ``kind`` + msgpack ``[group, member_id, lock, [[topic, partition,
    offset], ...]]``; ``load_state(txn, dbs, group)`` gives the stored group state
    (``None``, or ``.generation``, ``.members[id].lock``, ``.owners["topic:part"]``),
    read only.  The member must be in the state with that lock and own every
    partition, each topic and partition must exist, else ``RETRY`` with nothing
    written; else each offset is written to ``offsets`` as ``OffsetValue(offset,
    member_id, generation, now_ms)``.  A payload outside these forms (not exactly
    that array, an integer outside int64, a negative partition or offset, bytes
    after it, a string that is not UTF-8) or a check that raises goes to the
    registered Python handler with nothing written.  ``ValueError`` for a kind out
    of range, ``TypeError`` for a ``load_state`` that is not callable."""

def ring_offset_value(offset: int, member_id: str, generation: int,
                      timestamp_ms: int) -> bytes:
    """The bytes ``RingApply.take`` stores for an offset commit: msgspec's encoding
    of ``OffsetValue(offset, member_id, generation, timestamp_ms)`` (tests compare
    them).  ``ValueError`` for an integer outside int64, ``TypeError`` for one that
    is not an int."""

def parse_ring_append(
        payload: Any) -> tuple[str, bytes | None, int, int, int, list[bytes], int]:
    """``(topic, dedup key or None, partition, timestamp_ms, max_message_bytes,
    batches, records)`` of an append slot payload (csrc/ringop.h); every batch's
    header is checked.  ``ValueError`` for a payload that is truncated, not an
    append, has a negative partition, no batch or bytes after its batches, or a bad
    batch header; ``UnicodeDecodeError`` for a topic that is not UTF-8."""

LANE_DONE: int
LANE_SUSPENDED: int
LANE_REPLY: int
LANE_RAISED: int
LANE_AWAIT: int

class LaneFlag:
    """A bool :func:`run_lane` reads as a C field before every message (D45): the
    App's "stopping" (per runner) and "revoked" (per lane); ``bool(flag)`` is ``on``."""

    on: bool
    def __init__(self, on: bool = False) -> None: ...
    def __bool__(self) -> bool: ...

def run_lane(handler: Any, msgs: list[Any], i: int, mode: int, is_async: bool, decode: Any,
             stopping: LaneFlag, revoked: LaneFlag, make_ctx: Any = None,
             ctx_first: bool = False, results_out: bool = False,
             fast_decode: Any = None) -> tuple[int, int, Any, Any]:
    """The App's lean handler loop (D40, D45): call ``handler`` on ``msgs[i:]`` while
    each call finishes at once, stopping before a message once ``stopping.on`` or
    ``revoked.on``; with ``make_ctx``, each call also gets ``make_ctx(m)`` (after the
    payload, or before it with ``ctx_first``); with ``results_out``, a result other
    than ``None`` goes back to Python; ``fast_decode(value)``, when given, is tried
    before ``decode`` (which then only raises the error).  ``(i, outcome, obj, ctx)`` with
    ``outcome`` one of the ``LANE_*`` constants (DONE: msgs[i] not started;
    SUSPENDED: obj is (coroutine, yielded); REPLY: msgs[i] handled, obj its result,
    it has headers, ``ctx._outputs`` or a result out; RAISED: obj the Exception; AWAIT: obj a
    non-coroutine awaitable to await) and ``ctx`` msgs[i]'s context."""

class UseGuard:
    """Who is inside a consumer's methods (``mqlite._lifecycle``; compiled, D53).

    ``UseGuard(what, wake, exclusive=...)``; each method is one atomic step
    under the GIL (no lock on enter/exit).
    """

    what: str
    exclusive: bool
    #: Every ``enter()`` so far, nested and refused ones too; never reset (D79).
    calls: int
    def __init__(self, what: str, wake: Callable[[], object], *, exclusive: bool) -> None: ...
    @property
    def closing(self) -> bool: ...
    @property
    def close_deferred(self) -> int: ...
    @property
    def close_requested(self) -> bool: ...
    @property
    def _users(self) -> dict[int, int]: ...
    def enter(self) -> None:
        """Register the current thread as inside a call (``ClosedError`` while a close
        is under way; ``ConcurrentAccessError`` when exclusive and another thread is in)."""
    def exit(self) -> bool:
        """Unregister one level; True when the caller must now run a deferred close."""
    def enter_beside(self) -> bool:
        """Register a read-only call beside the thread inside (False: a close is under way)."""
    def exit_beside(self) -> None: ...
    def inside(self) -> bool: ...
    def woken(self) -> bool:
        """Whether the current call should stop waiting (consumes a pending wake-up)."""
    def wakeup(self) -> None: ...
    def request_close(self) -> bool:
        """True: close now (the callers have left); False: deferred to the outermost exit."""
    def closed_done(self) -> None: ...
