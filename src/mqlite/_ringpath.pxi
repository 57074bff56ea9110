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

    def __cinit__(self):
        self.slots = NULL
        self.runs = NULL
        self.batches = NULL

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
        cdef _RingTopic t = None
        cdef Py_ssize_t i, ti = -1
        cdef _RingRun *r
        cdef object name, cfg
        for i in range(len(self.topics)):
            t = <_RingTopic>self.topics[i]
            if (<Py_ssize_t>op.topic_len == len(t.raw)
                    and memcmp(op.topic, PyBytes_AS_STRING(t.raw), op.topic_len) == 0):
                ti = i
                break
        if ti < 0:
            try:
                name = PyUnicode_DecodeUTF8(<const char *>op.topic, op.topic_len, NULL)
            except UnicodeDecodeError:
                s.status = _RING_RETRY  # not a slot we can read: its owner sends alone
                s.r0 = s.r1 = s.r2 = 0
                s.has = s.fresh = True
                return False
            t = _RingTopic()
            t.raw = PyBytes_FromStringAndSize(<const char *>op.topic, op.topic_len)
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
            ti = len(self.topics)
            self.topics.append(t)
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
