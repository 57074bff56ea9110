# Declarations of the C core in csrc/ for the Cython binding (_core.pyx).
# Each block mirrors one header; the headers hold the contracts.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "mqerr.h" nogil:
    enum:
        MQ_OK
        MQ_ETRUNC
        MQ_EMAGIC
        MQ_ELENGTH
        MQ_ECRC
        MQ_EATTR
        MQ_ECODEC
        MQ_ECOUNT
        MQ_EVARINT
        MQ_EOFFSET
        MQ_ERECLEN
        MQ_EUTF8
        MQ_ETIMESTAMP
        MQ_EFIELDLEN
        MQ_ERECATTR
        MQ_ETOOBIG
        MQ_EINTR
        MQ_EINVAL
        MQ_EOPEN
        MQ_ELOCK
        MQ_ESIZE
        MQ_EMAP
        MQ_EGUARD
    const char *mq_strerror(int code)


cdef extern from "varint.h" nogil:
    enum:
        MQ_VARINT_MAX
    int mq_varint_encode(int64_t v, uint8_t *out)
    int mq_varint_decode(const uint8_t *p, const uint8_t *end, int64_t *out)


cdef extern from "crc32c.h" nogil:
    uint32_t mq_crc32c(uint32_t crc, const void *data, size_t n)
    uint32_t mq_crc32c_sw(uint32_t crc, const void *data, size_t n)
    uint32_t mq_crc32c_hw(uint32_t crc, const void *data, size_t n)
    int mq_crc32c_hw_available()


cdef extern from "murmur2.h" nogil:
    int32_t mq_murmur2(const void *data, size_t n)
    uint32_t mq_partition_for_key(const void *data, size_t n, uint32_t partitions)


cdef extern from "batch.h" nogil:
    enum:
        MQ_BATCH_MAGIC
        MQ_BATCH_HEADER_SIZE
        MQ_VALIDATE_CRC

    ctypedef struct mq_slice:
        const uint8_t *ptr
        int64_t len

    ctypedef struct mq_header_in:
        const uint8_t *name
        size_t name_len
        const uint8_t *value
        size_t value_len

    ctypedef struct mq_records:
        size_t count
        const mq_slice *values
        const mq_slice *keys
        const int64_t *timestamps
        int64_t timestamp
        const mq_header_in *headers
        const size_t *header_index

    int mq_batch_plan(const mq_records *r, size_t first, size_t max_bytes, size_t *count,
                      size_t *size)
    int mq_batch_encode(const mq_records *r, size_t first, size_t count, int64_t producer_id,
                        int32_t base_sequence, uint8_t *out, size_t size)

    ctypedef struct mq_batch_header:
        uint32_t crc
        uint32_t length
        uint16_t attributes
        uint32_t record_count
        int64_t base_timestamp
        int64_t max_timestamp
        int64_t producer_id
        int32_t base_sequence

    ctypedef struct mq_record:
        int64_t timestamp
        int64_t offset_delta
        const uint8_t *key
        int64_t key_len
        const uint8_t *value
        int64_t value_len
        int64_t header_count
        const uint8_t *headers
        const uint8_t *end

    ctypedef struct mq_header_view:
        const uint8_t *name
        size_t name_len
        const uint8_t *value
        size_t value_len

    int mq_batch_read_header(const uint8_t *buf, size_t len, mq_batch_header *h)
    int mq_batch_validate(const uint8_t *buf, size_t len, int flags, mq_batch_header *h,
                          int64_t *bad_record)
    int mq_record_read(const uint8_t **pos, const uint8_t *end, int64_t base_timestamp,
                       mq_record *rec)
    int mq_header_read(const uint8_t **pos, const uint8_t *end, mq_header_view *hv)
    ctypedef struct mq_batch_iter:
        mq_batch_header h
        uint32_t index
        int64_t bad_record

    int mq_batch_iter_init(mq_batch_iter *it, const uint8_t *buf, size_t len, int flags)
    int mq_batch_iter_next(mq_batch_iter *it, mq_record *rec)
    int mq_batch_find_timestamp(const uint8_t *buf, size_t len, int64_t ts, int64_t *index)


cdef extern from "ringop.h" nogil:
    enum:
        MQ_RINGOP_APPEND
        MQ_RINGOP_HEAD

    ctypedef struct mq_ringop_batch:
        const uint8_t *ptr
        uint32_t len
        uint32_t record_count
        int64_t base_timestamp
        int64_t max_timestamp

    ctypedef struct mq_ringop:
        uint8_t kind
        const uint8_t *topic
        uint32_t topic_len
        const uint8_t *dedup
        int32_t dedup_len
        int32_t partition
        int64_t timestamp
        uint32_t max_message_bytes
        uint32_t batch_count
        uint64_t records
        uint64_t bytes

    int mq_ringop_parse(const uint8_t *buf, size_t len, mq_ringop *op, mq_ringop_batch *batches,
                        uint32_t cap)


cdef extern from "doorbell.h" nogil:
    ctypedef struct mq_bells:
        int sys_errno

    int mq_bells_open(mq_bells *b, const char *path, size_t slots, unsigned mode)
    void mq_bells_close(mq_bells *b)
    int mq_bells_claim(mq_bells *b)
    void mq_bells_release(mq_bells *b, int index)
    void mq_bells_arm(mq_bells *b, int index, size_t slot)
    void mq_bells_disarm(mq_bells *b, int index, size_t slot)
    uint32_t mq_bells_load(const mq_bells *b, int index)
    void mq_bells_kick(mq_bells *b, int index)
    int mq_bells_wait(mq_bells *b, int index, uint32_t expected, int64_t timeout_ns)
    void mq_bells_ring(const mq_bells *b, size_t slot)
    void mq_bells_listen(mq_bells *b, int index, int fd, const volatile int *stop)
    uint32_t *mq_bells_ring_word(const mq_bells *b, int index)


cdef extern from "uring_bell.h" nogil:
    ctypedef struct mq_uring_bell:
        int fd
        int sys_errno

    int mq_uring_bell_open(mq_uring_bell *u)
    int mq_uring_bell_arm(mq_uring_bell *u, uint32_t *word, uint32_t expected)
    int mq_uring_bell_reap(mq_uring_bell *u, int *failed)
    void mq_uring_bell_close(mq_uring_bell *u)


cdef extern from "notify.h" nogil:
    enum:
        MQ_NOTIFY_RETURN_ON_EINTR
        MQ_NOTIFY_TELL_WOKEN
        MQ_NOTIFY_WOKEN

    ctypedef struct mq_notify:
        size_t slots
        int sys_errno
        mq_bells *bells

    int mq_notify_open(mq_notify *n, const char *path, size_t slots, unsigned mode)
    void mq_notify_close(mq_notify *n)
    uint32_t mq_notify_load(const mq_notify *n, size_t slot)
    void mq_notify_bump(mq_notify *n, size_t slot)
    void mq_notify_bump_wake(mq_notify *n, size_t slot, int nwake)
    int mq_notify_pass(mq_notify *n, size_t slot)
    void mq_notify_waiters_add(mq_notify *n, size_t slot, int delta)
    enum: MQ_NOTIFY_BELL_UNIT
    int mq_notify_wait(mq_notify *n, size_t slot, uint32_t expected, int64_t timeout_ns,
                       int flags)
    enum: MQ_NOTIFY_WAIT_ANY_MAX
    int mq_notify_wait_any(mq_notify *n, const size_t *slots, const uint32_t *expected,
                           size_t count, int64_t timeout_ns, int flags)


cdef extern from "guard.h" nogil:
    enum:
        MQ_GUARD_REGROW
        MQ_GUARD_ZERO
        MQ_GUARD_FILL

    int mq_guard_add(void *start, size_t len, int fd, int mode)
    void mq_guard_remove(int id)
    int mq_guard_restore(int id)
    uint64_t mq_guard_faults()


cdef extern from "combine.h" nogil:
    enum:
        MQ_COMB_FREE
        MQ_COMB_CLAIMED
        MQ_COMB_FILLED
        MQ_COMB_DONE
        MQ_COMB_F_GATHER

    ctypedef struct mq_comb:
        int fd
        int guard
        uint32_t nslots
        uint32_t slot_bytes
        int sys_errno

    int mq_comb_open(mq_comb *c, const char *path, uint32_t nslots, uint32_t slot_bytes,
                     unsigned mode)
    void mq_comb_close(mq_comb *c)
    int64_t mq_comb_claim(mq_comb *c, uint32_t pid)
    uint64_t mq_comb_fill(mq_comb *c, uint32_t idx, const void *data, uint32_t len)
    uint64_t mq_comb_fill_flags(mq_comb *c, uint32_t idx, const void *data, uint32_t len,
                                uint32_t flags)
    uint32_t mq_comb_filled_gathering(const mq_comb *c)
    uint64_t mq_comb_word(const mq_comb *c, uint32_t idx)
    const uint8_t *mq_comb_payload(const mq_comb *c, uint32_t idx, uint32_t *len)
    uint32_t mq_comb_collect(const mq_comb *c, uint32_t *out, uint64_t *tickets, uint32_t max)
    void mq_comb_set_result(mq_comb *c, uint32_t idx, int32_t status, int64_t r0, int64_t r1,
                            int64_t r2)
    int mq_comb_done(mq_comb *c, uint32_t idx, uint64_t ticket)
    void mq_comb_result(const mq_comb *c, uint32_t idx, int32_t *status, int64_t *r0,
                        int64_t *r1, int64_t *r2)
    int mq_comb_release(mq_comb *c, uint32_t idx, uint64_t ticket)
    int mq_comb_withdraw(mq_comb *c, uint32_t idx, uint64_t ticket)
    uint32_t mq_comb_reclaim(mq_comb *c)
    int mq_comb_trylock(mq_comb *c)
    void mq_comb_unlock(mq_comb *c)
    int mq_comb_wait(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns)
    int mq_comb_sleep(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns)
    void mq_comb_wake(mq_comb *c, uint32_t idx)
    void mq_comb_unclaim(mq_comb *c, uint32_t idx)
    uint32_t mq_comb_filled(const mq_comb *c)
    int mq_comb_intact(const mq_comb *c)
    uint32_t mq_comb_gather(mq_comb *c, uint32_t max_wait_us)
    int mq_comb_gathering(const mq_comb *c)
    int mq_comb_held(const mq_comb *c)
    void mq_comb_note_commit(mq_comb *c, uint32_t taken, uint64_t commit_ns)
    void mq_comb_hints(const mq_comb *c, uint32_t *active, uint32_t *commit_us, uint32_t *seq)
    void mq_comb_note_send(mq_comb *c)
    int64_t mq_comb_since_send(const mq_comb *c)
    int mq_comb_follow(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t window_ns,
                       int64_t max_ns) nogil


cdef extern from "wgate.h" nogil:
    int mq_wgate_open(const char *path)
    int mq_wgate_lock(int fd)
    void mq_wgate_unlock(int fd)
