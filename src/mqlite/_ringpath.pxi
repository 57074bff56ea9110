# Included by _core.pyx: the commit ring's apply step (docs/decisions.md D50).
#
# The committer of the commit ring (csrc/combine.h, Engine._lead) applies every
# FILLED slot inside its write transaction.  Engine._take_ring_py is the
# reference, in Python; it cost 14 us for one slot and 28 us for three on a
# quiet machine (bench_ring_apply.py), and 100-200 us on the loaded one of D46,
# while every other sender waits for the commit.  RingApply.take does the same
# steps with the common case compiled:
#
#  - the slots are collected, copied and checked (still FILLED under their
#    ticket) in C, and each append slot is parsed by csrc/ringop.h;
#  - appends without a dedup id are gathered into runs per partition, in slot
#    (ticket) order, and each run is applied as Engine.append_in applies a list
#    of batches: one space check (the budget's common case inline, else
#    Env.check_space; a run refused as a whole is applied slot by slot, so
#    exactly the slots that do not fit get "storage full"), one partition state
#    (Env.state_cache, else the stored 48 bytes unpacked here as
#    _storage.log.load_state reads them; anything malformed goes to
#    load_state_w, which raises), a put per batch, retention
#    through Engine._after_append when the topic has any, one state put, the
#    topic and partition marked touched (D64);
#  - a group member's offset commit (the kind registered by
#    register_ring_offsets, mqlite.groups.member) first applies every run
#    collected so far and is then applied here (D73): its msgpack payload read
#    in C, fenced against the stored group state exactly as the Python handler
#    _apply_ring_offsets fences it, and its offsets written in the layout of
#    _storage/offsets.py (msgpack OffsetValue, encoded here as msgspec encodes
#    it).  A payload outside the forms read here, or a check that raises,
#    goes to the Python path with nothing written;
#  - anything else (an append with a dedup id, another kind of slot, a payload
#    csrc/ringop.h refuses) first applies every run collected so far and then
#    goes through Engine._stage_slot, the Python path, so the order of each
#    sender's operations is kept;
#  - results already recorded under a slot's ticket (its committer died between
#    its commit and DONE) are handed out, never applied again, and the entries
#    no slot needs are deleted (_storage.tickets.load, compiled: one cursor pass
#    over both formats of _storage/tickets.py);
#  - the new results are recorded as one entry in the same transaction, in the
#    layout of _storage/tickets.py (packed here as SendPath packs the record
#    key and partition state of _storage/log.py), then written into the slots.
#
# Like SendPath it reads the Env's plain attributes through its instance dict
# and reaches LMDB through py-lmdb's methods with positional arguments.  An
# exception leaves the transaction to the caller (Engine._lead aborts it: the
# slots stay FILLED and the next committer takes them), and no slot's result is
# written before everything else succeeded.

cdef struct _RingSlot:
    uint32_t idx         # slot index in the ring
    uint64_t ticket
    int64_t ts           # the sender's timestamp (the result's third field)
    uint32_t batch0      # its first batch in RingApply.batches
    uint32_t nbatches
    int64_t nbytes
    int32_t next         # the next slot of its run (-1: the last)
    bint has             # it has a result (status, r0-r2)
    int32_t status
    int64_t r0, r1, r2
    bint fresh           # a result of this transaction (recorded under its ticket)


cdef struct _RingRun:
    int32_t topic        # index into the take's topic table
    int32_t part
    int32_t first, last  # slots
    int64_t nbytes


cdef struct _RingOff:
    const uint8_t *topic  # into the slot's payload (kept alive by the take)
    uint32_t topic_len
    int64_t part
    int64_t off
    int64_t pid           # the partition id the offset was read from (-1: unknown)


# The offset-commit slot kind and the group state reader (load_group_shared) that
# mqlite.groups.member registers at import (register_ring_offsets); -1: none yet.
cdef int _ring_off_kind = -1
cdef object _ring_off_load = None


def register_ring_offsets(kind, load_state):
    """Apply slots of ``kind`` as fenced offset commits in :meth:`RingApply.take` (see
    _core.pyi)."""
    global _ring_off_kind, _ring_off_load
    cdef int64_t k = _as_i64(kind, "kind")
    if not 0 < k <= 255:
        raise ValueError(f"kind must be in 1..255 (0 is an append), got {k}")
    if not callable(load_state):
        raise TypeError("load_state must be callable")
    _ring_off_kind = <int>k
    _ring_off_load = load_state


cdef enum:
    _RING_OK = 0         # Engine's _ST_OK, _ST_NO_TOPIC, _ST_FULL, _ST_RETRY
    _RING_NO_TOPIC = 1
    _RING_FULL = 2
    _RING_RETRY = 3
    _RING_TICKET_ITEM = 36   # _storage/tickets.py _ITEM: >Qiqqq
    _RING_TICKET_KEY = 17    # _storage/tickets.py _KEY: >5sQI


cdef inline uint32_t _get_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _get_be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>_get_be32(p) << 32) | _get_be32(p + 4)


cdef class _RingTopic:
    """One topic of a take: its record in this transaction (None: no such topic)."""
    cdef bytes raw
    cdef object rec
    cdef object name
    cdef object pids
    cdef Py_ssize_t npart
    cdef int64_t maxb
    cdef bint retained


cdef class RingApply:
    """The committer's apply step of the commit ring for one environment (see _core.pyi)."""

    cdef object env
    cdef dict ed
    cdef object load_state_w     # _storage.log.load_state_w(txn, env, pid)
    cdef object space_send       # _storage.env.SPACE_SEND
    cdef object storage_full     # mqlite.errors.StorageFullError
    cdef object topic_missing    # mqlite.errors.TopicNotFoundError
    cdef object t_put            # lmdb.Transaction.put, unbound
    cdef object t_get            # lmdb.Transaction.get, unbound
    cdef _RingSlot *slots
    cdef uint32_t slot_cap
    cdef _RingRun *runs
    cdef uint32_t nruns
    cdef mq_ringop_batch *batches
    cdef uint32_t batch_cap
    cdef list topics             # _RingTopic of this take
    cdef _RingOff *offs          # the offsets of one offset-commit slot
    cdef uint32_t offs_cap

    def __cinit__(self):
        self.slots = NULL
        self.runs = NULL
        self.batches = NULL
        self.offs = NULL

    def __init__(self, env, load_state_w, space_send, storage_full, topic_missing):
        self.env = env
        self.ed = env.__dict__
        self.load_state_w = load_state_w
        self.space_send = space_send
        self.storage_full = storage_full
        self.topic_missing = topic_missing
        self.topics = []

    def __dealloc__(self):
        free(self.slots)
        free(self.runs)
        free(self.batches)
        free(self.offs)

    cdef int _room(self, uint32_t nslots, uint32_t nbatches) except -1:
        cdef void *p
        if nslots > self.slot_cap:
            p = realloc(self.slots, sizeof(_RingSlot) * nslots)
            if p == NULL:
                raise MemoryError()
            self.slots = <_RingSlot *>p
            p = realloc(self.runs, sizeof(_RingRun) * nslots)
            if p == NULL:
                raise MemoryError()
            self.runs = <_RingRun *>p
            self.slot_cap = nslots
        if nbatches > self.batch_cap:
            p = realloc(self.batches, sizeof(mq_ringop_batch) * nbatches)
            if p == NULL:
                raise MemoryError()
            self.batches = <mq_ringop_batch *>p
            self.batch_cap = nbatches
        return 0

    def take(self, engine, txn, Combiner comb, max_slots):
        """Holding both locks: apply every FILLED slot (at most ``max_slots``) in ``txn``
        and record its result; ``Engine._take_ring``'s contract."""
        comb._check()
        cdef object env = self.env
        cdef dict ed = self.ed
        cdef dict dbs = ed["dbs"]
        cdef uint32_t cap = comb.c.nslots
        cdef int64_t ms = _as_i64(max_slots, "max_slots")
        cdef uint32_t n, k, used = 0, plen
        cdef uint32_t *idxs = NULL
        cdef uint64_t *tks = NULL
        cdef const uint8_t *src
        cdef _RingSlot *s
        cdef mq_ringop op
        cdef int rc
        cdef Py_ssize_t sends = 0
        cdef Py_ssize_t pruned
        cdef object payload, res, pyres
        cdef list payloads, taken
        cdef dict pyruns, pyrecs
        if ms < cap:
            cap = <uint32_t>(ms if ms > 0 else 0)
        idxs = <uint32_t *>malloc(sizeof(uint32_t) * (cap + 1))
        tks = <uint64_t *>malloc(sizeof(uint64_t) * (cap + 1))
        if idxs == NULL or tks == NULL:
            free(idxs)
            free(tks)
            raise MemoryError()
        try:
            n = mq_comb_collect(&comb.c, idxs, tks, cap)
            self._room(n + 1, 64)
            for k in range(n):
                s = &self.slots[k]
                s.idx = idxs[k]
                s.ticket = tks[k]
                s.has = False
                s.fresh = False
        finally:
            free(idxs)
            free(tks)
        pruned = self._load_tickets(txn, dbs["meta"], n)
        if self.t_put is None:
            self.t_put = type(txn).put
        payloads = [None] * n
        self.topics = []
        self.nruns = 0
        pyruns = None
        pyrecs = None
        try:
            for k in range(n):
                s = &self.slots[k]
                s.next = -1
                s.nbatches = 0
                src = mq_comb_payload(&comb.c, s.idx, &plen)
                payload = PyBytes_FromStringAndSize(<const char *>src, plen)
                if mq_comb_word(&comb.c, s.idx) != (s.ticket << 2 | MQ_COMB_FILLED):
                    s.idx = 0xFFFFFFFF  # withdrawn by its owner while we copied it
                    continue
                payloads[k] = payload
                src = <const uint8_t *>PyBytes_AS_STRING(payload)
                if plen > 0 and src[0] == MQ_RINGOP_APPEND:
                    sends += 1
                if s.has:
                    continue  # committed by a committer that died before DONE
                if plen > 0 and src[0] == MQ_RINGOP_APPEND:
                    rc = mq_ringop_parse(src, plen, &op, self.batches + used,
                                         self.batch_cap - used)
                    if rc == MQ_ETOOBIG:
                        self._room(n + 1, used + op.batch_count)
                        rc = mq_ringop_parse(src, plen, &op, self.batches + used,
                                             self.batch_cap - used)
                    if rc == MQ_OK and op.dedup == NULL:
                        s.batch0 = used
                        s.nbatches = op.batch_count
                        s.nbytes = <int64_t>op.bytes
                        s.ts = op.timestamp
                        if self._stage(engine, txn, s, k, &op):
                            used += op.batch_count
                        continue
                if plen > 0 and src[0] == _ring_off_kind and _ring_off_load is not None:
                    self._flush(engine, txn)  # after every run so far (order)
                    if self._offsets(engine, txn, s, src, plen, dbs):
                        continue
                # not a plain append: the Python path, after every run so far (order)
                self._flush(engine, txn)
                if pyruns is None:
                    pyruns = {}
                    pyrecs = {}
                pyres = []
                res = engine._stage_slot(txn, payload, s.idx, s.ticket, pyruns, pyrecs,
                                         pyres, [])
                if res is None:
                    engine._flush_runs(txn, pyruns, pyres, [])
                    res = pyres[len(pyres) - 1][2]
                self._set(s, res, True)
            self._flush(engine, txn)
            engine._taken_sends = sends
            # whether txn wrote (a ticket entry recorded or pruned): its commit then
            # spends an id, so Env.commit may skip its check for an empty one (D62)
            engine._taken_wrote = self._record(txn, dbs["meta"], n) > 0 or pruned > 0
        finally:
            self.topics = []
        taken = []
        for k in range(n):
            s = &self.slots[k]
            if s.idx == 0xFFFFFFFF:
                continue
            if not s.has:
                raise SystemError(f"ring slot {s.idx} was taken without a result")
            taken.append((s.idx, s.ticket))
            mq_comb_set_result(&comb.c, s.idx, <int32_t>s.status, s.r0, s.r1, s.r2)
        return taken if taken or pruned else None

    cdef Py_ssize_t _load_tickets(self, txn, mdb, uint32_t n) except -1:
        """_storage.tickets.load for the ``n`` slots collected: the result recorded for a
        slot's ticket becomes its result (not fresh); every entry holding none of their
        tickets is deleted.  Returns how many were deleted."""
        cdef object cur = txn.cursor(mdb)
        cdef object key, val
        cdef Py_ssize_t deleted = 0
        cdef bint ok
        try:
            for prefix in (b"comb:", b"comb/"):
                ok = cur.set_range(prefix)
                while ok:
                    key = cur.key()
                    if type(key) is not bytes:
                        key = bytes(key)
                    if not (<bytes>key).startswith(prefix):
                        break
                    val = cur.value()
                    if type(val) is not bytes:
                        val = bytes(val)
                    if self._stored(<bytes>key, <bytes>val, n):
                        ok = cur.next()
                    else:
                        cur.delete()  # and on to the next entry
                        deleted += 1
                        ok = len(cur.key()) > 0
        finally:
            cur.close()
        return deleted

    cdef bint _stored(self, bytes key, bytes val, uint32_t n) except -1:
        """Hand the results of one ticket entry (either format of _storage/tickets.py) to
        the slots whose tickets it holds; False when it holds none (or is malformed)."""
        cdef const uint8_t *kp = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef const uint8_t *vp = <const uint8_t *>PyBytes_AS_STRING(val)
        cdef const uint8_t *f
        cdef Py_ssize_t vlen = len(val), klen = len(key), items, j
        cdef uint64_t t
        cdef uint32_t k
        cdef bint live = False, old
        cdef _RingSlot *s
        if klen == _RING_TICKET_KEY and kp[4] == 0x3A and vlen % _RING_TICKET_ITEM == 0:
            items = vlen // _RING_TICKET_ITEM  # b"comb:" first count -> items
            old = False
        elif klen == 13 and kp[4] == 0x2F and vlen == 28:
            items = 1  # the first format: b"comb/" ticket -> status r0 r1 r2
            old = True
        else:
            return False
        for j in range(items):
            if old:
                t = _get_be64(kp + 5)
                f = vp
            else:
                t = _get_be64(vp + j * _RING_TICKET_ITEM)
                f = vp + j * _RING_TICKET_ITEM + 8
            for k in range(n):
                s = &self.slots[k]
                if s.ticket == t:
                    s.status = <int32_t>_get_be32(f)
                    s.r0 = <int64_t>_get_be64(f + 4)
                    s.r1 = <int64_t>_get_be64(f + 12)
                    s.r2 = <int64_t>_get_be64(f + 20)
                    s.has = True
                    s.fresh = False
                    live = True
        return live

    cdef int _set(self, _RingSlot *s, object res, bint fresh) except -1:
        cdef int64_t st
        st, s.r0, s.r1, s.r2 = res
        s.status = <int32_t>st
        s.has = True
        s.fresh = fresh
        return 0

    cdef bint _stage(self, engine, txn, _RingSlot *s, uint32_t k, mq_ringop *op) except -1:
        """A parsed append without dedup id: into the run of its partition (True), or
        its result when it cannot be applied (False)."""
        cdef _RingTopic t
        cdef Py_ssize_t i, ti = -1
        cdef _RingRun *r
        for i in range(len(self.topics)):  # the common case inline: a topic seen before
            t = <_RingTopic>self.topics[i]
            if (<Py_ssize_t>op.topic_len == len(t.raw)
                    and memcmp(op.topic, PyBytes_AS_STRING(t.raw), op.topic_len) == 0):
                ti = i
                break
        if ti < 0:
            ti = self._topic_of(engine, txn, op.topic, op.topic_len)
        if ti < 0:
            s.status = _RING_RETRY  # not a slot we can read: its owner sends alone
            s.r0 = s.r1 = s.r2 = 0
            s.has = s.fresh = True
            return False
        t = <_RingTopic>self.topics[ti]
        s.r0 = s.r1 = s.r2 = 0
        s.has = s.fresh = True
        if t.rec is None:
            s.status = _RING_NO_TOPIC
            return False
        if op.partition >= t.npart or <int64_t>op.max_message_bytes != t.maxb:
            s.status = _RING_RETRY  # the topic changed under the sender: it sends alone
            return False
        s.has = s.fresh = False
        for i in range(self.nruns):
            r = &self.runs[i]
            if r.topic == ti and r.part == op.partition:
                self.slots[r.last].next = <int32_t>k
                r.last = <int32_t>k
                r.nbytes += s.nbytes
                return True
        r = &self.runs[self.nruns]
        self.nruns += 1
        r.topic = <int32_t>ti
        r.part = op.partition
        r.first = r.last = <int32_t>k
        r.nbytes = s.nbytes
        return True

    cdef Py_ssize_t _topic_of(self, engine, txn, const uint8_t *raw, uint32_t n) except -2:
        """The index in ``self.topics`` of the topic named by the UTF-8 bytes ``raw``,
        looked up (``engine.topic``) at its first use in this take; -1 when they are
        not UTF-8.  A topic that does not exist gets ``rec = None``."""
        cdef _RingTopic t
        cdef Py_ssize_t i
        cdef object name, cfg
        for i in range(len(self.topics)):
            t = <_RingTopic>self.topics[i]
            if (<Py_ssize_t>n == len(t.raw)
                    and memcmp(raw, PyBytes_AS_STRING(t.raw), n) == 0):
                return i
        try:
            name = PyUnicode_DecodeUTF8(<const char *>raw, n, NULL)
        except UnicodeDecodeError:
            return -1
        t = _RingTopic()
        t.raw = PyBytes_FromStringAndSize(<const char *>raw, n)
        t.name = name
        try:
            t.rec = engine.topic(txn, name)
        except self.topic_missing:
            t.rec = None
        if t.rec is not None:
            cfg = t.rec.config
            t.pids = t.rec.pids
            t.npart = len(t.pids)
            t.maxb = cfg["max_message_bytes"]
            t.retained = (cfg["retention_ms"] is not None
                          or cfg["retention_bytes"] is not None
                          or cfg["retention_messages"] is not None)
        self.topics.append(t)
        return len(self.topics) - 1

    cdef bint _offsets(self, engine, txn, _RingSlot *s, const uint8_t *src, uint32_t plen,
                       dict dbs) except -1:
        """A fenced offset commit (``mqlite.groups.member._apply_ring_offsets``'s
        contract and result, all or nothing): True when its result is set; False
        when the Python path must apply it (a payload outside the forms read here,
        a check that raised), with nothing written.

        Payload: the kind byte, then msgpack ``[group, member_id, lock, [[topic,
        partition, offset, pid], ...]]`` (``_RingOffsets``; ``pid`` -1: unchecked; entries
        of three, from a member of before D91, go to the Python path, which refuses them:
        that member commits alone).  An offset whose pid is not the partition's id now (its topic was deleted and
        created again) is RETRY: the member then raises or drops it (D91)."""
        cdef size_t pos = 2
        cdef const uint8_t *g
        cdef const uint8_t *mid_p
        cdef const uint8_t *lock_p
        cdef uint32_t glen, mlen, llen, n, j, inner
        cdef int64_t gen, now_ms
        cdef _RingOff *o
        cdef _RingTopic t
        cdef Py_ssize_t ti
        cdef object group, mid, lock, state, m, key, val, odb
        cdef list pids
        cdef timespec ts
        cdef void *p
        if plen < 2 or src[0] != _ring_off_kind or src[1] != 0x94:
            return False
        if (_mp_str(src, plen, &pos, &g, &glen) or _mp_str(src, plen, &pos, &mid_p, &mlen)
                or _mp_str(src, plen, &pos, &lock_p, &llen)
                or _mp_array(src, plen, &pos, &n)):
            return False
        if n > self.offs_cap:
            p = realloc(self.offs, sizeof(_RingOff) * n)
            if p == NULL:
                raise MemoryError()
            self.offs = <_RingOff *>p
            self.offs_cap = n
        for j in range(n):
            o = &self.offs[j]
            if (_mp_array(src, plen, &pos, &inner) or inner != 4
                    or _mp_str(src, plen, &pos, &o.topic, &o.topic_len)
                    or _mp_int(src, plen, &pos, &o.part)
                    or _mp_int(src, plen, &pos, &o.off)
                    or _mp_int(src, plen, &pos, &o.pid)):
                return False
            if o.part < 0 or o.part > INT32_MAX or o.off < 0:
                return False  # refused by the Python path (or not written by a member)
        if pos != plen:
            return False  # trailing bytes: msgspec refuses them
        s.r0 = s.r1 = s.r2 = 0
        try:
            group = PyUnicode_DecodeUTF8(<const char *>g, glen, NULL)
            mid = PyUnicode_DecodeUTF8(<const char *>mid_p, mlen, NULL)
            lock = PyUnicode_DecodeUTF8(<const char *>lock_p, llen, NULL)
            state = _ring_off_load(txn, dbs, group)  # read only
            if state is None:
                return self._set_status(s, _RING_RETRY)
            m = state.members.get(mid)
            if m is None or m.lock != lock:
                return self._set_status(s, _RING_RETRY)
            pids = []
            for j in range(n):
                o = &self.offs[j]
                ti = self._topic_of(engine, txn, o.topic, o.topic_len)
                if ti < 0:
                    return False
                t = <_RingTopic>self.topics[ti]
                if state.owners.get(f"{t.name}:{o.part}") != mid:
                    return self._set_status(s, _RING_RETRY)
                if t.rec is None or o.part >= t.npart:
                    return self._set_status(s, _RING_RETRY)
                if o.pid != -1 and t.pids[o.part] != o.pid:
                    return self._set_status(s, _RING_RETRY)  # re-created since read (D91)
                pids.append(t.pids[o.part])
            gen = state.generation
        except Exception:  # noqa: BLE001 - the Python path reports or maps it
            return False
        clock_gettime(CLOCK_REALTIME, &ts)
        now_ms = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
        odb = dbs["offsets"]
        for j in range(n):
            o = &self.offs[j]
            key = _bytes_new(NULL, glen + 5)
            p = <void *>PyBytes_AS_STRING(key)
            memcpy(p, g, glen)
            (<uint8_t *>p)[glen] = 0
            _put_be32(<uint8_t *>p + glen + 1, <uint32_t>pids[j])
            val = _offset_value(o.off, mid_p, mlen, gen, now_ms)
            self.t_put(txn, key, val, True, True, False, odb)
        return self._set_status(s, _RING_OK)

    cdef bint _set_status(self, _RingSlot *s, int32_t status) except -1:
        s.status = status
        s.r0 = s.r1 = s.r2 = 0
        s.has = s.fresh = True
        return True

    cdef int _flush(self, engine, txn) except -1:
        """Apply every run collected (Engine._flush_runs's contract) and forget them."""
        cdef uint32_t i, nr = self.nruns
        cdef int32_t k
        cdef _RingRun *r
        cdef _RingTopic t
        self.nruns = 0
        for i in range(nr):
            r = &self.runs[i]
            t = <_RingTopic>self.topics[r.topic]
            if self._admit(txn, r.nbytes):
                self._append(engine, txn, t, r.part, r.first, False)
                continue
            k = r.first  # refused as a whole: slot by slot
            while k >= 0:
                if self._admit(txn, self.slots[k].nbytes):
                    self._append(engine, txn, t, r.part, k, True)
                else:
                    self.slots[k].status = _RING_FULL
                    self.slots[k].r0 = self.slots[k].r1 = self.slots[k].r2 = 0
                    self.slots[k].has = self.slots[k].fresh = True
                k = self.slots[k].next
        return 0

    cdef bint _admit(self, txn, int64_t nbytes) except -1:
        """Env.check_space(txn, nbytes, SPACE_SEND): True when admitted."""
        try:
            _check_space(self.env, self.ed, txn, nbytes, <int64_t>self.ed["_psize"],
                         self.space_send)
        except self.storage_full:
            return False
        return True

    cdef int _append(self, engine, txn, _RingTopic t, int32_t part, int32_t first,
                     bint single) except -1:
        """Engine.append_in of the batches of slot ``first`` (and the slots after it in
        its run unless ``single``); each slot's result is its first offset."""
        cdef dict ed = self.ed
        cdef dict dbs = ed["dbs"]
        cdef object rdb = dbs["records"]
        cdef object pyid = t.pids[part]
        cdef uint32_t pid = <uint32_t>pyid
        cdef object st_obj = None, value
        cdef PartitionState st
        cdef _RingSlot *s
        cdef mq_ringop_batch *b
        cdef int32_t k = first
        cdef uint32_t j
        if txn is ed["fresh_txn"]:
            st_obj = ed["state_cache"].get(pyid)
        if st_obj is None:
            st_obj = self._load_state(txn, dbs["partitions"], pyid, pid)
        st = <PartitionState?>st_obj
        while k >= 0:
            s = &self.slots[k]
            s.status = _RING_OK
            s.r0 = part
            s.r1 = st.next
            s.r2 = s.ts
            s.has = s.fresh = True
            for j in range(s.batch0, s.batch0 + s.nbatches):
                b = &self.batches[j]
                value = _bytes_new(<const char *>b.ptr, b.len)
                self.t_put(txn, _record_key(pid, st.next), value, True, True, False, rdb)
                st.next += b.record_count
                st.bytes += b.len
                if st.first_ts < 0:
                    st.first_ts = b.base_timestamp
                if st.last_ts < b.max_timestamp:
                    st.last_ts = b.max_timestamp
            if single:
                break
            k = s.next
        if t.retained:
            engine._after_append(txn, self.env, t.rec, pyid, st)
        _put_state(self.t_put, txn, dbs["partitions"], pid, st)
        ed["touched"].add(t.rec.name)
        ed["touched_parts"].add(pyid)
        return 0

    cdef object _load_state(self, txn, pdb, object pyid, uint32_t pid):
        """_storage.log.load_state_w on a cache miss: the stored 48-byte state (the layout
        SendPath writes) unpacked here and cached; anything but a well-formed state (none
        stored, a wrong length, end below start, a value above 2**63 - 1) goes to
        load_state_w, which raises what it raises."""
        cdef object skey = _bytes_new(NULL, 4), raw
        cdef const uint8_t *p
        cdef uint64_t s0, n0, b0
        cdef PartitionState st
        _put_be32(<uint8_t *>PyBytes_AS_STRING(skey), pid)
        if self.t_get is None:
            self.t_get = type(txn).get
        raw = self.t_get(txn, skey, None, pdb)
        if type(raw) is bytes and len(<bytes>raw) == 48:
            p = <const uint8_t *>PyBytes_AS_STRING(raw)
            s0 = _get_be64(p)
            n0 = _get_be64(p + 8)
            b0 = _get_be64(p + 16)
            if s0 <= n0 and n0 <= <uint64_t>INT64_MAX and b0 <= <uint64_t>INT64_MAX:
                st = PartitionState.__new__(PartitionState)
                st.start = <int64_t>s0
                st.next = <int64_t>n0
                st.bytes = <int64_t>b0
                st.first_ts = <int64_t>_get_be64(p + 24)
                st.last_ts = <int64_t>_get_be64(p + 32)
                self.ed["state_cache"][pyid] = st
                return st
        return self.load_state_w(txn, self.env, pyid)

    cdef Py_ssize_t _record(self, txn, mdb, uint32_t n) except -1:
        """The fresh results as one ticket entry (_storage.tickets.record_many's layout,
        items in ticket order); how many."""
        cdef uint32_t k, m = 0
        cdef uint64_t first = 0
        cdef _RingSlot *s
        cdef object key, val
        cdef uint8_t *p
        for k in range(n):
            s = &self.slots[k]
            if s.idx != 0xFFFFFFFF and s.fresh:
                if m == 0:
                    first = s.ticket  # collect orders by ticket: the smallest
                m += 1
        if m == 0:
            return 0
        key = _bytes_new(NULL, _RING_TICKET_KEY)
        p = <uint8_t *>PyBytes_AS_STRING(key)
        memcpy(p, b"comb:", 5)
        _put_be64(p + 5, first)
        _put_be32(p + 13, m)
        val = _bytes_new(NULL, <Py_ssize_t>m * _RING_TICKET_ITEM)
        p = <uint8_t *>PyBytes_AS_STRING(val)
        for k in range(n):
            s = &self.slots[k]
            if s.idx != 0xFFFFFFFF and s.fresh:
                _put_be64(p, s.ticket)
                _put_be32(p + 8, <uint32_t>s.status)
                _put_be64(p + 12, <uint64_t>s.r0)
                _put_be64(p + 20, <uint64_t>s.r1)
                _put_be64(p + 28, <uint64_t>s.r2)
                p += _RING_TICKET_ITEM
        self.t_put(txn, key, val, True, True, False, mdb)
        return m


# -- the msgpack forms of an offset-commit slot (msgspec's encoding, read and written) ----

cdef inline int _mp_need(size_t n, size_t pos, size_t k) noexcept nogil:
    return 0 if n - pos >= k else -1


cdef int _mp_str(const uint8_t *p, size_t n, size_t *pos, const uint8_t **s,
                 uint32_t *slen) noexcept nogil:
    """A msgpack str at ``p[*pos]`` (fixstr, str8/16/32): its bytes; -1 otherwise."""
    cdef size_t i = pos[0]
    cdef uint32_t ln, hd
    cdef uint8_t b
    if i >= n:
        return -1
    b = p[i]
    if 0xA0 <= b <= 0xBF:
        ln = b & 0x1F
        hd = 1
    elif b == 0xD9 and _mp_need(n, i, 2) == 0:
        ln = p[i + 1]
        hd = 2
    elif b == 0xDA and _mp_need(n, i, 3) == 0:
        ln = (<uint32_t>p[i + 1] << 8) | p[i + 2]
        hd = 3
    elif b == 0xDB and _mp_need(n, i, 5) == 0:
        ln = _get_be32(p + i + 1)
        hd = 5
    else:
        return -1
    if _mp_need(n, i + hd, ln):
        return -1
    s[0] = p + i + hd
    slen[0] = ln
    pos[0] = i + hd + ln
    return 0


cdef int _mp_array(const uint8_t *p, size_t n, size_t *pos, uint32_t *count) noexcept nogil:
    """A msgpack array header (fixarray, array16/32): its length; -1 otherwise."""
    cdef size_t i = pos[0]
    cdef uint8_t b
    if i >= n:
        return -1
    b = p[i]
    if 0x90 <= b <= 0x9F:
        count[0] = b & 0x0F
        pos[0] = i + 1
    elif b == 0xDC and _mp_need(n, i, 3) == 0:
        count[0] = (<uint32_t>p[i + 1] << 8) | p[i + 2]
        pos[0] = i + 3
    elif b == 0xDD and _mp_need(n, i, 5) == 0:
        count[0] = _get_be32(p + i + 1)
        pos[0] = i + 5
    else:
        return -1
    return 0


cdef int _mp_int(const uint8_t *p, size_t n, size_t *pos, int64_t *v) noexcept nogil:
    """A msgpack integer in int64 range; -1 otherwise (a uint64 above it included)."""
    cdef size_t i = pos[0]
    cdef uint8_t b
    cdef uint64_t u
    if i >= n:
        return -1
    b = p[i]
    if b <= 0x7F:
        v[0] = b
        pos[0] = i + 1
    elif b >= 0xE0:
        v[0] = <int8_t>b
        pos[0] = i + 1
    elif b == 0xCC and _mp_need(n, i, 2) == 0:
        v[0] = p[i + 1]
        pos[0] = i + 2
    elif b == 0xCD and _mp_need(n, i, 3) == 0:
        v[0] = (<uint32_t>p[i + 1] << 8) | p[i + 2]
        pos[0] = i + 3
    elif b == 0xCE and _mp_need(n, i, 5) == 0:
        v[0] = _get_be32(p + i + 1)
        pos[0] = i + 5
    elif b == 0xCF and _mp_need(n, i, 9) == 0:
        u = _get_be64(p + i + 1)
        if u > <uint64_t>INT64_MAX:
            return -1
        v[0] = <int64_t>u
        pos[0] = i + 9
    elif b == 0xD0 and _mp_need(n, i, 2) == 0:
        v[0] = <int8_t>p[i + 1]
        pos[0] = i + 2
    elif b == 0xD1 and _mp_need(n, i, 3) == 0:
        v[0] = <int16_t>((<uint16_t>p[i + 1] << 8) | p[i + 2])
        pos[0] = i + 3
    elif b == 0xD2 and _mp_need(n, i, 5) == 0:
        v[0] = <int32_t>_get_be32(p + i + 1)
        pos[0] = i + 5
    elif b == 0xD3 and _mp_need(n, i, 9) == 0:
        v[0] = <int64_t>_get_be64(p + i + 1)
        pos[0] = i + 9
    else:
        return -1
    return 0


cdef size_t _mp_put_int(uint8_t *p, int64_t v) noexcept nogil:
    """``v`` in msgspec's encoding (the shortest form); the bytes written (at most 9)."""
    if v >= 0:
        if v <= 0x7F:
            p[0] = <uint8_t>v
            return 1
        if v <= 0xFF:
            p[0] = 0xCC
            p[1] = <uint8_t>v
            return 2
        if v <= 0xFFFF:
            p[0] = 0xCD
            p[1] = <uint8_t>(v >> 8)
            p[2] = <uint8_t>v
            return 3
        if v <= <int64_t>UINT32_MAX:
            p[0] = 0xCE
            _put_be32(p + 1, <uint32_t>v)
            return 5
        p[0] = 0xCF
        _put_be64(p + 1, <uint64_t>v)
        return 9
    if v >= -32:
        p[0] = <uint8_t>(<int8_t>v)
        return 1
    if v >= -128:
        p[0] = 0xD0
        p[1] = <uint8_t>(<int8_t>v)
        return 2
    if v >= -32768:
        p[0] = 0xD1
        p[1] = <uint8_t>((<uint64_t>v) >> 8)
        p[2] = <uint8_t>v
        return 3
    if v >= <int64_t>INT32_MIN:
        p[0] = 0xD2
        _put_be32(p + 1, <uint32_t>(<int32_t>v))
        return 5
    p[0] = 0xD3
    _put_be64(p + 1, <uint64_t>v)
    return 9


cdef object _offset_value(int64_t off, const uint8_t *mid, uint32_t mlen, int64_t gen,
                          int64_t now_ms):
    """msgspec's bytes of ``OffsetValue(off, mid, gen, now_ms)`` (_storage/offsets.py:
    an array of 5, the metadata ``""`` last)."""
    cdef uint8_t head[15]
    cdef uint8_t tail[19]
    cdef size_t hl = 1, tl
    cdef char *q
    cdef object out
    head[0] = 0x95
    hl += _mp_put_int(head + 1, off)
    if mlen <= 31:
        head[hl] = 0xA0 | mlen
        hl += 1
    elif mlen <= 0xFF:
        head[hl] = 0xD9
        head[hl + 1] = <uint8_t>mlen
        hl += 2
    elif mlen <= 0xFFFF:
        head[hl] = 0xDA
        head[hl + 1] = <uint8_t>(mlen >> 8)
        head[hl + 2] = <uint8_t>mlen
        hl += 3
    else:
        head[hl] = 0xDB
        _put_be32(head + hl + 1, mlen)
        hl += 5
    tl = _mp_put_int(tail, gen)
    tl += _mp_put_int(tail + tl, now_ms)
    tail[tl] = 0xA0  # metadata ""
    tl += 1
    out = _bytes_new(NULL, <Py_ssize_t>(hl + mlen + tl))
    q = PyBytes_AS_STRING(out)
    memcpy(q, head, hl)
    memcpy(q + hl, mid, mlen)
    memcpy(q + hl + mlen, tail, tl)
    return out


def ring_offset_value(offset, member_id, generation, timestamp_ms):
    """``_offset_value`` from Python, for the tests (see _core.pyi)."""
    cdef bytes mb = member_id.encode()
    return _offset_value(_as_i64(offset, "offset"), <const uint8_t *>PyBytes_AS_STRING(mb),
                         <uint32_t>len(mb), _as_i64(generation, "generation"),
                         _as_i64(timestamp_ms, "timestamp_ms"))


def parse_ring_append(payload):
    """Parse an append slot payload with csrc/ringop.h (see _core.pyi)."""
    cdef Py_buffer view
    cdef mq_ringop op
    cdef mq_ringop_batch *bs = NULL
    cdef uint32_t cap = 0, i
    cdef int rc
    cdef list batches
    _acquire(payload, &view, "payload")
    try:
        while True:
            rc = mq_ringop_parse(<const uint8_t *>view.buf, <size_t>view.len, &op, bs, cap)
            if rc != MQ_ETOOBIG or cap >= op.batch_count:
                break
            cap = op.batch_count
            free(bs)
            bs = <mq_ringop_batch *>malloc(sizeof(mq_ringop_batch) * cap)
            if bs == NULL:
                raise MemoryError()
        if rc < 0:
            raise ValueError(f"malformed ring append slot (code {rc}: {_ringop_error(rc)})")
        batches = [PyBytes_FromStringAndSize(<const char *>bs[i].ptr, bs[i].len)
                   for i in range(op.batch_count)]
        return (PyUnicode_DecodeUTF8(<const char *>op.topic, op.topic_len, NULL),
                None if op.dedup == NULL else PyBytes_FromStringAndSize(
                    <const char *>op.dedup, op.dedup_len),
                op.partition, op.timestamp, op.max_message_bytes, batches, op.records)
    finally:
        free(bs)
        PyBuffer_Release(&view)


cdef str _ringop_error(int rc):
    if rc == MQ_ETRUNC:
        return "truncated"
    if rc == MQ_EINVAL:
        return "not an append, a negative partition, no batch or bytes after the last batch"
    return mq_strerror(rc).decode()
