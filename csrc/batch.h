/* batch.h - record batch format v1: encoder, reader and deep validator.
 *
 * The byte format is specified in docs/format.md and drawn below, above the
 * encoder.  Summary of the contract:
 *
 *  - Fixed-width integers are big-endian; varints are Kafka zig-zag varints
 *    (varint.h).  A batch is at most 4 GiB - 1 bytes (its length is a u32).
 *  - Bytes handed to the reader functions are untrusted: no function here
 *    reads at or past `buf + len` (or `end`), and no stored length or count
 *    is used before it has been checked against the bytes that remain.
 *  - Untrusted bytes are checked apart from the trusted encoder path, as
 *    Redis has lpValidateIntegrity() next to its asserts, at three depths:
 *      mq_batch_read_header()  header only (magic, length, reserved bits,
 *                              record_count >= 1); no CRC, no records.
 *      mq_record_read()        one record's structure and bounds: memory-safe
 *                              on any input, but no batch-level rules.
 *      mq_batch_validate() and the mq_batch_iter_*() iterator
 *                              everything: header, codec, CRC (optional),
 *                              every record's structure, dense offsets,
 *                              UTF-8 header names, record_count and the
 *                              base/max timestamps.  Run one of them on
 *                              anything read from disk before trusting it;
 *                              decoders use the iterator to parse once.
 *  - The encoder trusts its caller: mq_records describes valid in-memory
 *    records, and the output buffer has exactly the size mq_batch_plan()
 *    reported.
 *
 * Return codes (mqerr.h): MQ_OK or a negative MQ_E* code; each function
 * lists the ones it can return.
 */
#ifndef MQLITE_BATCH_H
#define MQLITE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_BATCH_MAGIC 0xB1
#define MQ_BATCH_HEADER_SIZE 43
#define MQ_BATCH_MAX_SIZE 0xFFFFFFFFu
#define MQ_BATCH_ATTR_CODEC_MASK 0x0007u /* bits 0-2: compression codec, 0 = none */

/* ---- encoding ---------------------------------------------------------- */

/* A byte string that may be null: len == -1 means null (ptr ignored), which
 * the format keeps distinct from an empty string (len == 0). */
typedef struct mq_slice {
    const uint8_t *ptr;
    int64_t len;
} mq_slice;

/* One header to encode: the name already UTF-8 encoded by the caller. */
typedef struct mq_header_in {
    const uint8_t *name;
    size_t name_len;
    const uint8_t *value;
    size_t value_len;
} mq_header_in;

/* The records to encode, as parallel arrays (the binding fills them while
 * holding the GIL, then encodes without it).  Record i has:
 *   value      values[i]
 *   key        keys[i], or null for every record when keys == NULL
 *   timestamp  timestamps[i], or `timestamp` when timestamps == NULL
 *   headers    headers[header_index[i] .. header_index[i + 1]), or none when
 *              headers == NULL (header_index then has count + 1 entries). */
typedef struct mq_records {
    size_t count;
    const mq_slice *values;
    const mq_slice *keys;
    const int64_t *timestamps;
    int64_t timestamp;
    const mq_header_in *headers;
    const size_t *header_index;
} mq_records;

/*
 * Record batch v1.  Fixed-width fields big-endian, varints zig-zag LEB128.
 *
 *   0        1        5        9       11       15               23
 *   +--------+--------+--------+-------+--------+----------------+
 *   | magic  |  crc   | length | attrs | record | base_timestamp |
 *   |  0xB1  |  u32   |  u32   |  u16  | _count |      i64       |
 *   |        |        |        |       |  u32   |                |
 *   +--------+--------+--------+-------+--------+----------------+
 *                     |<----- covered by the crc, up to `length` ...
 *
 *   23               31              39              43
 *   +----------------+---------------+---------------+---- ... ----+
 *   | max_timestamp  |  producer_id  | base_sequence |   records   |
 *   |      i64       |      i64      |      i32      |             |
 *   +----------------+---------------+---------------+---- ... ----+
 *   ... covered by the crc --------------------------------------->|
 *
 *   length          whole batch, header included; equals the stored size
 *   attrs           bits 0-2 compression codec (0 = none), bits 3-15 zero
 *   record_count    >= 1; the records end exactly at `length`
 *   base_timestamp  timestamp of record 0;  max_timestamp: largest one
 *   producer_id     -1 = none;  base_sequence: -1 = none
 *
 * Each record, all varints:
 *
 *   record_length | attributes | timestamp_delta | offset_delta |
 *   key_length | key bytes | value_length | value bytes |
 *   header_count | { name_length | name (UTF-8) | value_length | value } *
 *
 *   record_length    bytes of the record after this varint
 *   attributes       0
 *   timestamp_delta  record timestamp - base_timestamp (0 for record 0)
 *   offset_delta     the record's index in the batch (offsets are dense;
 *                    record offset = batch base offset, the LMDB key, + delta)
 *   key/value_length -1 = null, else >= 0
 *   header lengths   >= 0 (header values are never null)
 *
 * What the CRC covers, and why: CRC32C of bytes [5, length), i.e. every
 * byte after the CRC field itself.  That includes the length, attributes,
 * counts, timestamps and producer fields as well as the records, so a flipped
 * bit anywhere except the magic byte fails the CRC; the magic byte is checked
 * by value.  The length is inside the CRC so that a truncated or extended
 * value is caught twice (the length must also equal the stored size).  The
 * CRC sits near the front so readers can check it without knowing the layout
 * of the rest.  CRC32C rather than CRC32 because x86-64 computes it in
 * hardware (crc32c.h), which makes checking every batch on every read cheap.
 */

/* Sizes and cuts the batch that starts with record `first` (< r->count):
 * records are taken in order while the batch stays within `max_bytes`
 * (0 = no limit); the first record is always taken, so a record larger than
 * `max_bytes` gets a batch of its own.  A batch also stops before it would
 * exceed MQ_BATCH_MAX_SIZE bytes or UINT32_MAX records.  On MQ_OK stores the
 * number of records (>= 1) in *count and the batch size in *size.
 * Returns MQ_OK;
 *         MQ_ETOOBIG     record `first` alone does not fit in 4 GiB - 1;
 *         MQ_ETIMESTAMP  a record's timestamp minus that of record `first`
 *                        does not fit in an int64 (its delta could not be
 *                        stored); *count then holds that record's index. */
int mq_batch_plan(const mq_records *r, size_t first, size_t max_bytes, size_t *count,
                  size_t *size);

/* Writes records [first, first + count) as one batch, CRC included, into
 * `out`, whose `size` must be the size mq_batch_plan() reported for this
 * cut.  base_sequence is stored as given.  Never writes outside
 * [out, out + size).  Returns MQ_OK, or MQ_ELENGTH if `size` is not the
 * planned size (nothing useful is written then). */
int mq_batch_encode(const mq_records *r, size_t first, size_t count, int64_t producer_id,
                    int32_t base_sequence, uint8_t *out, size_t size);

/* ---- reading ----------------------------------------------------------- */

typedef struct mq_batch_header {
    uint32_t crc;
    uint32_t length;
    uint16_t attributes;
    uint32_t record_count;
    int64_t base_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int32_t base_sequence;
} mq_batch_header;

/* Parses the 43-byte header of the batch stored in [buf, buf + len).
 * Checks, in order: len >= 43, magic, length == len, attribute bits 3-15
 * zero, record_count >= 1.  Does not check the CRC, the codec bits or the
 * records.  Returns MQ_OK (header filled), MQ_ETRUNC, MQ_EMAGIC, MQ_ELENGTH,
 * MQ_EATTR or MQ_ECOUNT. */
int mq_batch_read_header(const uint8_t *buf, size_t len, mq_batch_header *h);

/* One parsed record.  Pointers point into the batch; key/value are NULL
 * when their length is -1 (null).  The headers are left encoded in
 * [headers, end) for mq_header_read(), already bounds-checked. */
typedef struct mq_record {
    int64_t timestamp; /* absolute: base_timestamp + timestamp_delta */
    int64_t offset_delta;
    const uint8_t *key;
    int64_t key_len;
    const uint8_t *value;
    int64_t value_len;
    int64_t header_count;
    const uint8_t *headers;
    const uint8_t *end; /* one past the record */
} mq_record;

/* Parses the record at *pos (records end at `end`) and advances *pos past
 * it.  Checks the record's own structure: every varint, record_length >= 0
 * and within `end`, attributes 0, key/value lengths >= -1, header count and
 * lengths >= 0, every field inside the record, the fields ending exactly at
 * record_length, and base_timestamp + delta not overflowing.  Batch-level
 * rules (offset_delta == index, UTF-8, counts) are the iterator's.
 * Returns MQ_OK, MQ_ETRUNC, MQ_EVARINT, MQ_ERECLEN, MQ_ERECATTR,
 * MQ_EFIELDLEN or MQ_ETIMESTAMP; *pos is unchanged on failure. */
int mq_record_read(const uint8_t **pos, const uint8_t *end, int64_t base_timestamp,
                   mq_record *rec);

typedef struct mq_header_view {
    const uint8_t *name;
    size_t name_len;
    const uint8_t *value;
    size_t value_len;
} mq_header_view;

/* Parses one header at *pos (a record's headers end at rec->end) and
 * advances *pos.  Returns MQ_OK, MQ_ETRUNC, MQ_EVARINT or MQ_EFIELDLEN. */
int mq_header_read(const uint8_t **pos, const uint8_t *end, mq_header_view *hv);

#define MQ_VALIDATE_CRC 1 /* flag: also check the CRC */

/* Validating iterator over the records of a batch: the one implementation of
 * the batch rules, used by mq_batch_validate() and by decoders, so that a
 * decoder parses each record once.  It checks, in order: the header (as
 * mq_batch_read_header), codec 0, the CRC when `flags` has MQ_VALIDATE_CRC
 * (before any record is parsed); then per record mq_record_read(),
 * offset_delta == index, timestamp_delta 0 for record 0, UTF-8 header
 * names; at the end exactly record_count records ending at `length` and
 * max_timestamp equal to the largest record timestamp.
 *
 * A record returned by mq_batch_iter_next() has passed its own checks, but
 * the batch as a whole is valid only once mq_batch_iter_next() returned 0:
 * callers that must not act on a corrupt batch keep what they build from
 * the records aside until then. */
typedef struct mq_batch_iter {
    mq_batch_header h;
    const uint8_t *p;
    const uint8_t *end;
    uint32_t index;     /* records returned so far */
    int64_t max_ts;     /* largest timestamp returned so far */
    int64_t bad_record; /* after an error: index of the failing record, or -1 */
} mq_batch_iter;

/* Starts iterating over the batch in [buf, buf + len), which must outlive
 * the iterator.  Returns MQ_OK, or MQ_ETRUNC, MQ_EMAGIC, MQ_ELENGTH,
 * MQ_EATTR, MQ_ECOUNT, MQ_ECODEC, MQ_ECRC. */
int mq_batch_iter_init(mq_batch_iter *it, const uint8_t *buf, size_t len, int flags);

/* Returns 1 with the next record in *rec, 0 when the batch ended and passed
 * its batch-level checks, or an error: MQ_ECOUNT, MQ_ETIMESTAMP (batch
 * level), or for the record at it->bad_record MQ_ETRUNC, MQ_EVARINT,
 * MQ_ERECLEN, MQ_ERECATTR, MQ_EFIELDLEN, MQ_EOFFSET, MQ_ETIMESTAMP,
 * MQ_EUTF8.  Do not call again after it returned 0 or an error. */
int mq_batch_iter_next(mq_batch_iter *it, mq_record *rec);

/* Deep validation of the batch in [buf, buf + len): runs the iterator to
 * the end.  Fills *h when the header parsed.  *bad_record gets the index of
 * the record that failed, or -1 for header- and batch-level failures.
 * Returns MQ_OK or the first failed check (see the iterator). */
int mq_batch_validate(const uint8_t *buf, size_t len, int flags, mq_batch_header *h,
                      int64_t *bad_record);

/* Index of the first record whose timestamp is >= ts, or -1 when none is,
 * stored in *index.  Validates the whole batch (CRC included) and returns
 * its error code if that fails, else MQ_OK: an answer is never drawn from a
 * corrupt batch. */
int mq_batch_find_timestamp(const uint8_t *buf, size_t len, int64_t ts, int64_t *index);

/* 1 when [p, p + n) is well-formed UTF-8 by the same rules as Python's
 * strict decoder (no overlong forms, no surrogates, nothing above
 * U+10FFFF), else 0. */
int mq_utf8_valid(const uint8_t *p, size_t n);

#endif
