# Included by _core.pyx: the single-message send path (docs/decisions.md D36).
#
# broker.send() of one message in its own write transaction, with every step
# that used to run as Python bytecode (about 25k of the 47k instructions a send
# cost) done here: encoding the one-record batch straight into its bytes
# object, the partition choice for no key / a bytes key, the transaction's
# begin and write-path cache check, the space budget, the record and state
# puts (keys and the 48-byte state packed in C), the commit and the two
# wake-up bumps.  py-lmdb has no C API, so LMDB is still reached through its
# Python methods (positional arguments: no keyword dict per call).
#
# It mirrors Engine.send (_engine.py) and Env.write_txn / Env.commit
# (_storage/env.py) step for step and shares their state (the Env's write-path
# caches, fence counters, space budget), so either path may run next.  It
# takes only the common case and returns None *before touching anything* for
# the rest (headers, a dedup id, an explicit timestamp, a value or key that is
# not bytes / None, an uncached topic, an environment being reopened, closed or
# due for a reader check): the caller then runs the general path, which
# validates, raises and recovers exactly as before.  Rare events inside the
# transaction (another writer committed since our last commit, a cache miss,
# a space re-count, retention, a round-robin partition) call the same Python
# helpers the general path calls.

from cpython.bytes cimport PyBytes_FromStringAndSize as _bytes_new
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from libc.stdint cimport uint16_t
from posix.time cimport CLOCK_REALTIME

from mqlite.errors import StorageError as _StorageError

cdef extern from "Python.h":
    ctypedef struct _AllocType "PyTypeObject":
        PyObject *(*tp_alloc)(_AllocType *t, Py_ssize_t n)

cdef inline void _put_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void _put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    _put_be32(p, <uint32_t>(v >> 32))
    _put_be32(p + 4, <uint32_t>v)


cdef inline int64_t _realtime_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline double _monotonic_s() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class PartitionState:
    """Mutable in-transaction copy of one partition's stored state (_storage/log.py).

    A C struct behind Python attributes, so the send path reads and updates
    it without an int object per field.  Fields are int64: the stored
    offsets and byte counts are unsigned 64-bit and a value above 2**63 - 1
    is refused as corrupt when the state is loaded.
    """

    cdef public int64_t start
    cdef public int64_t next
    cdef public int64_t bytes
    cdef public int64_t first_ts
    cdef public int64_t last_ts

    def __init__(self, int64_t start=0, int64_t next=0, int64_t nbytes=0,
                 int64_t first_ts=-1, int64_t last_ts=-1):
        self.start = start
        self.next = next
        self.bytes = nbytes
        self.first_ts = first_ts
        self.last_ts = last_ts

    @property
    def messages(self):
        """Messages in the partition: end offset minus start offset."""
        return self.next - self.start

    def __repr__(self):
        return (f"PartitionState(start={self.start}, next={self.next}, bytes={self.bytes}, "
                f"first_ts={self.first_ts}, last_ts={self.last_ts})")


cdef inline object _record_key(uint32_t pid, int64_t off):
    """The records table's key of partition ``pid``'s batch at ``off`` (_storage.log)."""
    cdef object key = _bytes_new(NULL, 12)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(key)
    _put_be32(p, pid)
    _put_be64(p + 4, <uint64_t>off)
    return key


cdef inline object _put_state(object t_put, object txn, object pdb, uint32_t pid,
                              PartitionState st):
    """Store ``st`` as partition ``pid``'s 48-byte state (_storage.log's layout)."""
    cdef object skey = _bytes_new(NULL, 4)
    cdef object state = _bytes_new(NULL, 48)
    cdef uint8_t *p
    _put_be32(<uint8_t *>PyBytes_AS_STRING(skey), pid)
    p = <uint8_t *>PyBytes_AS_STRING(state)
    _put_be64(p, <uint64_t>st.start)
    _put_be64(p + 8, <uint64_t>st.next)
    _put_be64(p + 16, <uint64_t>st.bytes)
    _put_be64(p + 24, <uint64_t>st.first_ts)
    _put_be64(p + 32, <uint64_t>st.last_ts)
    _put_be64(p + 40, 0)
    return t_put(txn, skey, state, True, True, False, pdb)


cdef inline int _check_space(object env, dict ed, object txn, int64_t nbytes, int64_t psize,
                             object space_send) except -1:
    """Env.check_space(txn, nbytes, SPACE_SEND), from the budget a check left when it can."""
    cdef int64_t need = 2 * nbytes + psize
    cdef int64_t budget = ed["space_budget"]
    if need < budget:
        ed["space_budget"] = budget - need
    else:
        env.check_space(txn, nbytes, space_send)
    return 0


# -- the commit ring's sender (D56) ----------------------------------------------------
#
# Engine.ring_submit for one send, step for step, on the Combiner's C ring (the same
# calls its Python methods make, with the same "Combiner is closed" check before each
# group of them: another thread may close the environment while this one runs Python
# code, e.g. Engine._lead, or waits without the GIL).

cdef enum:
    _RING_HAND_OVER_MAX = 8
    _RING_HEAD = 23              # _engine._SLOT_HEAD: >BHhiqIH


cdef inline int _comb_live(Combiner comb) except -1:
    """Combiner._check: ``ValueError`` once the ring was closed."""
    if not comb.is_open:
        raise ValueError("Combiner is closed")
    return 0


cdef int _comb_hand_over(Combiner comb, uint32_t n) except -1:
    """``for other, _t in comb.collect(n): comb.wake(other)`` (Engine's hand-over)."""
    cdef uint32_t idx[_RING_HAND_OVER_MAX]
    cdef uint64_t tk[_RING_HAND_OVER_MAX]
    cdef uint32_t k, got
    _comb_live(comb)
    got = mq_comb_collect(&comb.c, idx, tk, n)
    for k in range(got):
        mq_comb_wake(&comb.c, idx[k])
    return 0


cdef int _comb_wait(Combiner comb, uint32_t i, uint64_t ticket, int64_t ns) except -2:
    """Combiner.wait: sleep without the GIL while slot ``i`` is FILLED(``ticket``).

    ``mq_comb_sleep``'s answer: 1 moved on, 0 woken still FILLED, -1 timed out."""
    cdef int rc
    _comb_live(comb)
    comb.active += 1
    try:
        with nogil:
            rc = mq_comb_sleep(&comb.c, i, ticket, ns)
    finally:
        comb.active -= 1
        if not comb.is_open and comb.active == 0:
            mq_comb_close(&comb.c)
    return rc


cdef inline void _put_be16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef class SendPath:
    """The common case of ``Engine.send`` for one environment (see _core.pyi)."""

    cdef object env              # mqlite._storage.env.Env
    # The Env's instance dict: its plain attributes read and written without the
    # generic attribute protocol (a third of the cost).  The names used here are
    # all plain instance attributes set by Env.__init__ / Env._open.
    cdef dict ed
    cdef object md_type          # mqlite.types.RecordMetadata
    cdef object lmdb_error       # _storage.env.lmdb_error(exc, what) -> MqliteError
    cdef object load_state_w     # _storage.log.load_state_w(txn, env, pid)
    cdef object space_send       # _storage.env.SPACE_SEND
    # Bound to env.lmdb as of the last send; refreshed when it is replaced (a
    # reopen after fork or after MDB_PANIC).
    cdef object lmdb_env
    cdef object begin            # lmdb_env.begin
    cdef object rdb, pdb         # the "records" and "partitions" databases
    cdef object t_id, t_put, t_commit  # lmdb.Transaction's methods, unbound
    cdef object combiner         # env.combiner, which changes only with env.lmdb
    cdef int64_t psize           # LMDB's page size
    # The topic record of the last send and what it says (records are immutable:
    # a changed topic is a new record object).
    cdef object last_rec
    cdef int64_t last_maxb
    cdef bint last_retention
    cdef dict topic_cache, state_cache, slot_cache
    # topic -> (the queue version word's value, the topic's queue groups' words):
    # Env.queue_words_cache, read through env.queue_words when the word moved (D74)
    cdef dict queue_words_cache
    cdef Py_ssize_t qv_slot      # _storage.env.QUEUE_VERSION_SLOT
    cdef Py_ssize_t nhashed      # _storage.env.NOTIFY_HASHED: partitions' words below it
    # The commit ring's sender (Engine.ring_submit's one-send case, D56).
    cdef object storage_error    # mqlite.errors.StorageError
    cdef uint32_t hand_over      # _engine._HAND_OVER
    cdef int64_t wait_ns         # _engine._COMBINE_WAIT_S in nanoseconds

    def __init__(self, env, md_type, lmdb_error, load_state_w, space_send,
                 storage_error=None, hand_over=2, wait_s=0.002, qv_slot=2048,
                 nhashed=2048):
        self.env = env
        self.ed = env.__dict__
        self.md_type = md_type
        self.lmdb_error = lmdb_error
        self.load_state_w = load_state_w
        self.space_send = space_send
        self.topic_cache = env.topic_cache
        self.state_cache = env.state_cache
        self.slot_cache = env.slot_cache
        self.queue_words_cache = env.queue_words_cache
        if not 2 <= nhashed <= qv_slot:
            raise ValueError(f"expected 2 <= nhashed <= qv_slot, not {nhashed}, {qv_slot}")
        self.qv_slot = qv_slot
        self.nhashed = nhashed
        self.storage_error = _StorageError if storage_error is None else storage_error
        if not 0 <= hand_over <= _RING_HAND_OVER_MAX:
            raise ValueError(f"hand_over must be in [0, {_RING_HAND_OVER_MAX}], not {hand_over}")
        self.hand_over = hand_over
        self.wait_ns = <int64_t>(float(wait_s) * 1e9)

    def send(self, engine, topic, value, key, partition, bint solo=False):
        """Append ``value`` (and ``key``) to ``topic`` in one transaction; its metadata.

        ``None`` when the call is not the common case; nothing was done then.
        ``solo``: the caller holds the commit ring's lock with no slot filled
        (``Engine._send_solo``), so the ring does not take this send.  Without
        it, when the environment has a commit ring, the send goes the ring's way
        (:meth:`_ring_send`, D56).
        """
        cdef dict ed = self.ed
        cdef object rec, cfg, lm, batch
        cdef mq_records r
        cdef mq_slice vs, ks
        cdef size_t count = 0, size = 0
        cdef int64_t ts, maxb, klen
        cdef int rc

        if type(topic) is not str or engine._closed:
            return None
        rec = self.topic_cache.get(topic)
        if rec is None:
            return None
        lm = ed["lmdb"]
        if lm is not self.lmdb_env:
            if lm is None:
                return None  # Env.write_txn reopens it
            dbs = ed["dbs"]
            self.begin = lm.begin
            self.rdb = dbs["records"]
            self.pdb = dbs["partitions"]
            self.combiner = ed["combiner"]
            self.psize = ed["_psize"]
            self.lmdb_env = lm
        if rec is not self.last_rec:
            cfg = rec.config
            self.last_maxb = cfg["max_message_bytes"]
            self.last_retention = (cfg["retention_ms"] is not None
                                   or cfg["retention_bytes"] is not None
                                   or cfg["retention_messages"] is not None)
            self.last_rec = rec
        maxb = self.last_maxb
        # -- encode (outside the transaction, as Engine.send) --------------------------
        memset(&r, 0, sizeof(mq_records))
        if type(value) is bytes:
            vs.ptr = <const uint8_t *>PyBytes_AS_STRING(value)
            vs.len = len(<bytes>value)
        elif value is None:
            vs.ptr = NULL
            vs.len = -1
        else:
            return None
        klen = 0
        if key is not None:
            if type(key) is not bytes:
                return None
            ks.ptr = <const uint8_t *>PyBytes_AS_STRING(key)
            ks.len = klen = len(<bytes>key)
            r.keys = &ks
        if (vs.len if vs.len > 0 else 0) + klen > maxb:
            return None  # the general path raises MessageTooLargeError
        ts = _realtime_ms()
        r.count = 1
        r.values = &vs
        r.timestamp = ts
        rc = mq_batch_plan(&r, 0, DEFAULT_MAX_BATCH_BYTES, &count, &size)
        if rc < 0 or count != 1:
            return None
        batch = _bytes_new(NULL, <Py_ssize_t>size)
        rc = mq_batch_encode(&r, 0, 1, -1, -1, <uint8_t *>PyBytes_AS_STRING(batch), size)
        if rc < 0:
            _raise_encode(rc)
        if self.combiner is not None and not solo:
            # sync / lazy sends go through the commit ring (D27), compiled (D56)
            return self._ring_send(engine, topic, rec, value, key, partition, batch, ts, maxb)
        return self._commit_one(engine, topic, rec, key, partition, batch, ts, maxb)

    cdef object _commit_one(self, object engine, object topic, object rec, object key,
                            object partition, bytes batch, int64_t ts, int64_t maxb):
        """The encoded ``batch`` committed in a transaction of its own (the rest of
        :meth:`send`); ``None``, having done nothing, when the environment is not in
        the common case (closing, reopened, due for its reader check ...)."""
        cdef object env = self.env
        cdef dict ed = self.ed
        cdef object gate
        cdef object cfg, txn, st_obj, rec2, tid, nt, slot, qw, words, w
        cdef uint32_t ver
        cdef PartitionState st
        cdef int64_t off = 0, nbytes = len(batch), klen, cache_tid
        cdef Py_ssize_t npart, part = 0
        cdef uint32_t pid = 0
        cdef bint fresh, retained = False
        cdef Notifier notifier

        # -- begin (Env.write_txn's common case) -------------------------------------
        if (ed["_closing"] or ed["touched"] or ed["after_commit"]
                or mq_guard_faults() != <uint64_t>ed["_faults"]
                or _monotonic_s() >= <double>ed["_next_reader_check"]):
            return None  # Env.write_txn does the fault check, the reader check
        gate = ed["gate"]
        if type(gate) is not WriteGate:
            return None  # Env.write_txn takes the gate (or reports why it cannot)
        next(ed["_begun"])
        try:
            (<WriteGate>gate).c_enter()  # csrc/wgate.h: left by the commit / abort below
        except Exception:
            env._leave()
            return None  # the general path tries again and converts the error
        try:
            txn = self.begin(None, None, True)
        except Exception:
            (<WriteGate>gate).c_leave()
            env._leave()
            return None  # the general path begins again: it recovers or raises converted
        except BaseException:
            (<WriteGate>gate).c_leave()
            env._leave()
            raise
        if self.t_put is None:  # the first send: lmdb.Transaction's methods
            self.t_id = type(txn).id
            self.t_put = type(txn).put
            self.t_commit = type(txn).commit
        try:
            tid = self.t_id(txn)
            cache_tid = ed["_cache_tid"]
            fresh = tid == cache_tid + 1
            # env.fresh_txn stays None (as every commit leaves it): the helpers
            # called below on rare paths then read from txn, never from a cache.
            if fresh:
                rec2 = self.topic_cache.get(topic)
            else:
                env.revalidate(txn)
                rec2 = None
            if rec2 is None:
                rec2 = engine.topic(txn, topic)
            if rec2 is not rec:
                if rec2.config["max_message_bytes"] != maxb:
                    env.abort(txn)
                    return None  # the topic changed under us: the general path re-encodes
                rec = rec2

            # -- partition, space, state, puts ------------------------------------
            pids = rec.pids
            npart = len(pids)
            if partition is None and npart == 1:
                part = 0
            elif partition is None and key is not None:
                klen = len(<bytes>key)
                part = mq_partition_for_key(<const uint8_t *>PyBytes_AS_STRING(key),
                                            <size_t>klen, <uint32_t>npart)
            else:
                part = engine.choose_partition(rec, key, partition)
            pyid = pids[part]
            pid = <uint32_t>pyid
            _check_space(env, ed, txn, nbytes, self.psize, self.space_send)
            st_obj = self.state_cache.get(pyid) if fresh else None
            if st_obj is None:
                st_obj = self.load_state_w(txn, env, pyid)
            st = <PartitionState?>st_obj
            off = st.next
            self.t_put(txn, _record_key(pid, off), batch, True, True, False, self.rdb)
            st.next = off + 1
            st.bytes += nbytes
            if st.first_ts < 0:
                st.first_ts = ts
            if st.last_ts < ts:
                st.last_ts = ts
            retained = False
            if rec is self.last_rec:
                retained = self.last_retention
            else:
                cfg = rec.config
                retained = (cfg["retention_ms"] is not None or cfg["retention_bytes"] is not None
                            or cfg["retention_messages"] is not None)
            if retained:
                engine._after_append(txn, env, rec, pyid, st)
            _put_state(self.t_put, txn, self.pdb, pid, st)
        except BaseException as exc:
            env.fail(txn, exc, f"send to {topic!r}")

        # -- commit (Env.commit's short way for one send) --------------------------
        if retained and (ed["touched"] or ed["after_commit"]):  # left by retention's hooks
            ed["touched_parts"].add(pyid)
            env.commit(txn, topic)
        else:
            ed["_cache_tid"] = -1
            try:
                self.t_commit(txn)
            except BaseException as exc:
                (<WriteGate>gate).c_leave()
                self.state_cache.clear()
                env._leave()
                raise self.lmdb_error(exc, "commit") from exc
            (<WriteGate>gate).c_leave()
            ed["_cache_tid"] = tid
            nt = ed["notifier"]
            slot = self.slot_cache.get(topic) or env.topic_slot(topic)
            # The partition's word first, then the topic's, one receiver of each of its
            # queue groups (D67, D74) and every append's (D64).  The version word is
            # loaded after the topic's bump (a full barrier): Env.queue_words says why.
            if (type(nt) is Notifier and (<Notifier>nt).is_open and type(slot) is int
                    and 0 < <Py_ssize_t>slot < (<Notifier>nt).slots
                    and self.qv_slot < (<Notifier>nt).slots):
                notifier = <Notifier>nt
                mq_notify_bump(&notifier.n, <size_t>_partition_slot(pid, self.nhashed))
                mq_notify_bump(&notifier.n, <size_t><Py_ssize_t>slot)
                ver = mq_notify_load(&notifier.n, <size_t>self.qv_slot)
                qw = self.queue_words_cache.get(topic)
                if qw is None or <uint32_t>(<tuple>qw)[0] != ver:
                    words = env.queue_words(topic)
                else:
                    words = (<tuple>qw)[1]
                for w in <tuple?>words:
                    if 0 < <Py_ssize_t>w < notifier.slots:
                        mq_notify_bump_wake(&notifier.n, <size_t><Py_ssize_t>w, 1)
                mq_notify_bump(&notifier.n, 0)
            else:
                nt.bump(env.partition_slot(pyid))
                nt.bump(slot)
                for w in env.queue_words(topic):
                    nt.bump_one(w)
                nt.bump(0)
            next(ed["_ended"])  # Env._leave, inlined
            if ed["_closing"]:
                env._close_if_idle()
        return self.metadata(topic, part, off, ts)

    cdef object _ring_send(self, object engine, object topic, object rec, object value,
                           object key, object partition, bytes batch, int64_t ts,
                           int64_t maxb):
        """The encoded ``batch`` handed to the commit ring, or committed alone when the
        ring is idle: ``Engine._send_solo`` + ``_send_combined`` + ``ring_submit``
        for one send, with the same protocol (csrc/combine.h, D27, D35, D43, D46) and
        crash semantics; the leader's step stays ``engine._lead`` (Python: the crash
        tests kill the committer around its parts).  Whatever the ring cannot take
        (too large, no free slot, a ``_ST_RETRY`` result) goes to
        ``engine._send_direct``, as ``send_general`` sends it."""
        cdef dict ed = self.ed
        cdef object comb_obj = self.combiner
        cdef Combiner comb
        cdef object tlock, md, payload, tb
        cdef uint32_t active = 0, cu = 0, seq = 0
        cdef int rc
        cdef bint got, led, skip_try
        cdef int64_t t0, idx
        cdef uint32_t i
        cdef uint64_t ticket, w, done_w, filled_w
        cdef Py_ssize_t npart, part, blen, tlen, plen
        cdef const char *tp
        cdef uint8_t *p
        cdef int32_t st = 0
        cdef int64_t r0 = 0, r1 = 0, r2 = 0
        if type(comb_obj) is not Combiner:
            return None  # a stand-in ring (tests): the general path
        comb = <Combiner>comb_obj
        tlock = ed["comb_lock"]

        # -- Engine._send_solo: the ring idle, commit alone the short way (D43) -------
        _comb_live(comb)
        mq_comb_hints(&comb.c, &active, &cu, &seq)
        if mq_comb_filled(&comb.c) == 0 and active <= 1 and tlock.acquire(False):
            rc = mq_comb_trylock(&comb.c)  # an error counts as "not got" (ring_alone)
            got = rc == 1
            if got and mq_comb_filled(&comb.c) == 0:
                t0 = _monotonic_ns()
                md = None
                try:
                    md = self._commit_one(engine, topic, rec, key, partition, batch, ts, maxb)
                finally:
                    try:  # Engine.ring_alone_done
                        if md is not None:
                            _comb_live(comb)
                            mq_comb_note_commit(&comb.c, 1, <uint64_t>(_monotonic_ns() - t0))
                            mq_comb_note_send(&comb.c)
                        _comb_live(comb)
                        mq_comb_unlock(&comb.c)
                        _comb_hand_over(comb, self.hand_over)
                    finally:
                        tlock.release()
                if md is not None:
                    return md
            else:
                if got:
                    mq_comb_unlock(&comb.c)  # a sender filled a slot first: the ring
                tlock.release()

        # -- Engine._send_combined: the slot payload (Engine.ring_payload) ------------
        blen = len(batch)
        if blen > <Py_ssize_t>comb.c.slot_bytes:
            return engine._send_direct(topic, value, None if key is None else (key,), None,
                                       key, partition, ts, rec, maxb, [batch], None)
        npart = len(rec.pids)
        if npart == 1 and partition is None and key is None:
            part = 0
        else:
            part = engine.choose_partition(rec, key, partition)
        tp = PyUnicode_AsUTF8AndSize(topic, &tlen)
        if tlen > 0xFFFF or maxb < 0 or maxb > 0xFFFFFFFF or part > 0x7FFFFFFF:
            payload = engine.ring_payload(topic, part, ts, maxb, [batch], None)  # raises
            plen = len(payload)
        else:
            plen = _RING_HEAD + tlen + 4 + blen
            payload = _bytes_new(NULL, plen)
            p = <uint8_t *>PyBytes_AS_STRING(payload)
            p[0] = 0  # RING_KIND_APPEND
            _put_be16(p + 1, <uint16_t>tlen)
            _put_be16(p + 3, 0xFFFF)  # no dedup key (-1)
            _put_be32(p + 5, <uint32_t>part)
            _put_be64(p + 9, <uint64_t>ts)
            _put_be32(p + 17, <uint32_t>maxb)
            _put_be16(p + 21, 1)  # one batch
            memcpy(p + _RING_HEAD, tp, tlen)
            _put_be32(p + _RING_HEAD + tlen, <uint32_t>blen)
            memcpy(p + _RING_HEAD + tlen + 4, PyBytes_AS_STRING(batch), blen)

        # -- Engine.ring_submit(comb, [payload]) --------------------------------------
        _comb_live(comb)
        if plen > <Py_ssize_t>comb.c.slot_bytes:
            idx = -1
        else:
            idx = mq_comb_claim(&comb.c, <uint32_t>_guard_pid)  # no getpid() per send
        if idx < 0:
            return engine._send_direct(topic, value, None if key is None else (key,), None,
                                       key, partition, ts, rec, maxb, [batch], None)
        i = <uint32_t>idx
        ticket = mq_comb_fill_flags(&comb.c, i, PyBytes_AS_STRING(payload), <uint32_t>plen,
                                    MQ_COMB_F_GATHER)
        done_w = ticket << 2 | MQ_COMB_DONE
        filled_w = ticket << 2 | MQ_COMB_FILLED
        try:
            _comb_live(comb)
            mq_comb_note_send(&comb.c)
            # A holder has the lock (the holder word, D60; its gather, D56): a trylock
            # now cannot succeed, and the holder takes this slot or hands the lock
            # over to the oldest FILLED ones when it leaves (csrc/combine.h), so wait
            # first.  After a wake-up the same holds; after a wait that timed out
            # the lock is tried whatever the hint says (a holder killed with -9
            # leaves it set: one bounded wait).
            skip_try = mq_comb_held(&comb.c) == 1
            while True:
                _comb_live(comb)
                w = mq_comb_word(&comb.c, i)
                if w == done_w:
                    break
                if w != filled_w:  # _ring_lost
                    raise self.storage_error(
                        f"the commit ring file {comb.path!r} was truncated while this call "
                        "waited in it: its records may or may not have been stored (check "
                        "before sending again); later calls commit on their own")
                led = False
                if skip_try:
                    skip_try = False
                elif tlock.acquire(False):
                    try:
                        _comb_live(comb)
                        rc = mq_comb_trylock(&comb.c)
                        if rc < 0:
                            raise OSError(-rc, os.strerror(-rc))
                        if rc == 1:
                            led = True
                            try:
                                engine._lead(comb, [idx], [(ticket, MQ_COMB_DONE)])
                            finally:
                                _comb_live(comb)
                                mq_comb_unlock(&comb.c)
                                # hand the lock over to the owners of the oldest slots
                                _comb_hand_over(comb, self.hand_over)
                    finally:
                        tlock.release()
                if led:
                    continue
                _comb_live(comb)
                if mq_comb_word(&comb.c, i) != done_w:
                    rc = _comb_wait(comb, i, ticket, self.wait_ns)
                    PyErr_CheckSignals()  # a signal handler's exception withdraws, as in Python
                    # woken with the slot still FILLED (a hand-over, another sender's
                    # lead): skip the trylock while a holder has the lock (D60)
                    # (a close() from another thread may have unmapped it meanwhile:
                    # the next round's check raises)
                    skip_try = rc == 0 and comb.is_open and mq_comb_held(&comb.c) == 1
        except BaseException:
            _comb_live(comb)
            if mq_comb_withdraw(&comb.c, i, ticket) != 1:
                mq_comb_release(&comb.c, i, ticket)  # committed meanwhile (no answer)
            raise
        _comb_live(comb)
        mq_comb_result(&comb.c, i, &st, &r0, &r1, &r2)
        mq_comb_release(&comb.c, i, ticket)
        if st == 0:  # _ST_OK
            return self.metadata(topic, <Py_ssize_t>r0, r1, r2)
        engine.raise_ring_status(st, topic)
        # _ST_RETRY: the topic changed under the sender's cache; it sends on its own
        return engine._send_direct(topic, value, None if key is None else (key,), None, key,
                                   partition, ts, rec, maxb, [batch], None)

    cdef object metadata(self, object topic, Py_ssize_t part, int64_t off, int64_t ts):
        """RecordMetadata(topic, part, off, ts), built as tuple.__new__ builds a subclass
        instance (RecordMetadata is a NamedTuple: no __dict__, no __new__ of its own)."""
        cdef _AllocType *tp = <_AllocType *>self.md_type
        cdef object obj, item  # objects: each stored item gets the tuple's own reference
        cdef PyObject *md = tp.tp_alloc(tp, 4)
        if md == NULL:
            raise MemoryError()
        obj = <object>md
        _Py_DECREF(md)  # `obj` holds the reference now
        Py_INCREF(topic)
        PyTuple_SET_ITEM(obj, 0, topic)
        item = part
        Py_INCREF(item)
        PyTuple_SET_ITEM(obj, 1, item)
        item = off
        Py_INCREF(item)
        PyTuple_SET_ITEM(obj, 2, item)
        item = ts
        Py_INCREF(item)
        PyTuple_SET_ITEM(obj, 3, item)
        return obj


# -- Engine.ring_submit(comb, [payload], follow=True): one offset commit or ack (D65) --------

cdef int _comb_follow(Combiner comb, uint32_t i, uint64_t ticket, int64_t window_ns,
                      int64_t max_ns) except -2:
    """Combiner.follow: 1 when a committer took slot ``i`` while it waited (GIL released)."""
    cdef int rc
    _comb_live(comb)
    comb.active += 1
    try:
        with nogil:
            rc = mq_comb_follow(&comb.c, i, ticket, window_ns, max_ns)
    finally:
        comb.active -= 1
        if not comb.is_open and comb.active == 0:
            mq_comb_close(&comb.c)
    return rc


def ring_follow_one(engine, Combiner comb, bytes payload, tlock, int64_t window_ns,
                    int64_t max_ns, wait_s, uint32_t hand_over, lost_error):
    """``Engine.ring_submit(comb, [payload], follow=True)`` in compiled code (see _core.pyi).

    The same steps and protocol (csrc/combine.h, D43, D46, D60): claim a slot, fill it
    as an operation no commit gathers for, follow a sender's commit when one filled a
    slot within ``window_ns`` (``window_ns < 0``: no follow), then wait or lead until
    the slot is DONE; the leader's step stays ``engine._lead`` (Python: the crash tests
    kill the committer around its parts).  ``(status, r0, r1, r2)``, or ``None`` when
    the payload does not fit a slot or no slot is free (nothing was handed over)."""
    cdef Py_ssize_t plen = len(payload)
    cdef int64_t idx, wait_ns = <int64_t>(float(wait_s) * 1e9)
    cdef uint32_t i
    cdef uint64_t ticket, w, done_w, filled_w
    cdef int rc
    cdef bint led, skip_try
    cdef int32_t st = 0
    cdef int64_t r0 = 0, r1 = 0, r2 = 0
    if max_ns < 0 or max_ns > 1000000000 or wait_ns < 0:
        raise ValueError("max_ns must be in [0, 1e9] and wait_s >= 0")
    if hand_over > _RING_HAND_OVER_MAX:
        raise ValueError(f"hand_over must be in [0, {_RING_HAND_OVER_MAX}], not {hand_over}")
    _comb_live(comb)
    if plen > <Py_ssize_t>comb.c.slot_bytes:
        return None
    idx = mq_comb_claim(&comb.c, <uint32_t>_guard_pid)  # no getpid() per call
    if idx < 0:
        return None
    i = <uint32_t>idx
    ticket = mq_comb_fill_flags(&comb.c, i, PyBytes_AS_STRING(payload), <uint32_t>plen, 0)
    done_w = ticket << 2 | MQ_COMB_DONE
    filled_w = ticket << 2 | MQ_COMB_FILLED
    try:
        if window_ns >= 0:
            _comb_follow(comb, i, ticket, window_ns, max_ns)
            PyErr_CheckSignals()
        _comb_live(comb)
        skip_try = mq_comb_held(&comb.c) == 1
        while True:
            _comb_live(comb)
            w = mq_comb_word(&comb.c, i)
            if w == done_w:
                break
            if w != filled_w:  # _ring_lost
                raise lost_error(
                    f"the commit ring file {comb.path!r} was truncated while this call "
                    "waited in it: its records may or may not have been stored (check "
                    "before sending again); later calls commit on their own")
            led = False
            if skip_try:
                skip_try = False
            elif tlock.acquire(False):
                try:
                    _comb_live(comb)
                    rc = mq_comb_trylock(&comb.c)
                    if rc < 0:
                        raise OSError(-rc, os.strerror(-rc))
                    if rc == 1:
                        led = True
                        try:
                            engine._lead(comb, [idx], [(ticket, MQ_COMB_DONE)])
                        finally:
                            _comb_live(comb)
                            mq_comb_unlock(&comb.c)
                            # hand the lock over to the owners of the oldest slots
                            _comb_hand_over(comb, hand_over)
                finally:
                    tlock.release()
            if led:
                continue
            _comb_live(comb)
            if mq_comb_word(&comb.c, i) != done_w:
                rc = _comb_wait(comb, i, ticket, wait_ns)
                PyErr_CheckSignals()  # a signal handler's exception withdraws, as in Python
                skip_try = rc == 0 and comb.is_open and mq_comb_held(&comb.c) == 1
    except BaseException:
        _comb_live(comb)
        if mq_comb_withdraw(&comb.c, i, ticket) != 1:
            mq_comb_release(&comb.c, i, ticket)  # committed meanwhile (no answer)
        raise
    _comb_live(comb)
    mq_comb_result(&comb.c, i, &st, &r0, &r1, &r2)
    mq_comb_release(&comb.c, i, ticket)
    return (st, r0, r1, r2)
