/* mqerr.h - the error codes shared by every csrc/ module.
 *
 * Contract: functions that can fail return an int, MQ_OK (0) or a
 * non-negative count on success and one of the negative codes below on
 * failure, in the style of LMDB's MDB_* codes.  A code names the first check
 * that failed; it never depends on bytes past the point where the check
 * failed.  mq_strerror() turns a code into a short, static, lower-case
 * English phrase ("CRC mismatch") that the binding embeds in its exception
 * messages; it never returns NULL, and unknown codes get a generic phrase.
 *
 * Which Python exception a code becomes is decided in one table in the
 * binding (src/mqlite/_core.pyx), not here: csrc/ knows nothing of Python.
 */
#ifndef MQLITE_MQERR_H
#define MQLITE_MQERR_H

enum {
    MQ_OK = 0,
    MQ_ETRUNC = -1,      /* a field or record runs past the end of the buffer */
    MQ_EMAGIC = -2,      /* first byte is not the batch magic 0xB1 */
    MQ_ELENGTH = -3,     /* the batch length field differs from the stored size */
    MQ_ECRC = -4,        /* stored CRC32C differs from the computed one */
    MQ_EATTR = -5,       /* reserved batch attribute bits (3-15) are set */
    MQ_ECODEC = -6,      /* compression codec (attribute bits 0-2) is not 0 */
    MQ_ECOUNT = -7,      /* record_count is 0 or differs from the records present */
    MQ_EVARINT = -8,     /* varint longer than 10 bytes or wider than 64 bits */
    MQ_EOFFSET = -9,     /* offset_delta is not the record's index */
    MQ_ERECLEN = -10,    /* record_length differs from the bytes its fields take */
    MQ_EUTF8 = -11,      /* a header name is not valid UTF-8 */
    MQ_ETIMESTAMP = -12, /* max_timestamp/base_timestamp disagree with the records */
    MQ_EFIELDLEN = -13,  /* a negative length or count where none is allowed */
    MQ_ERECATTR = -14,   /* record attributes are not 0 */
    MQ_ETOOBIG = -15,    /* encoder: a batch would not fit its 32-bit length field;
                          ringop: more batches than the caller made room for */
    MQ_EINTR = -16,      /* notify: a wait was interrupted by a signal */
    MQ_EINVAL = -17,     /* notify: slot count is 0 or too large to map;
                          ringop: not an append, or a malformed one */
    MQ_EOPEN = -18,      /* notify: the file could not be opened or created (errno kept) */
    MQ_ELOCK = -19,      /* notify: flock() on the file failed (errno kept) */
    MQ_ESIZE = -20,      /* notify: fstat()/ftruncate() of the file failed (errno kept) */
    MQ_EMAP = -21,       /* notify: mmap() of the file failed (errno kept) */
    MQ_EGUARD = -22      /* guard: SIGBUS handler not installed or guard table full */
};

const char *mq_strerror(int code);

#endif
