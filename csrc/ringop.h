/* ringop.h - the append operation a sender hands to the commit ring (D27, D35, D50).
 *
 * A slot of the commit ring (combine.h) carries one operation; its first
 * byte is its kind.  Kind 0 is an append of encoded record batches to one
 * partition, written by Engine.ring_payload (src/mqlite/_engine.py,
 * `_SLOT_HEAD`) and applied by the committer (_core.RingApply, or
 * Engine._stage_slot for what that leaves to Python).  Other kinds (offset
 * commits, queue acks) are parsed in Python by the module that registered
 * them.
 *
 * Layout (big-endian; sizes in bytes):
 *
 *   offset  size  field
 *   0       1     kind (0 = append)
 *   1       2     topic_len (u16)
 *   3       2     dedup_len (i16; -1 = no dedup id, >= 0 = that many key bytes)
 *   5       4     partition (i32; must be >= 0)
 *   9       8     timestamp_ms (i64; the sender's send time)
 *   17      4     max_message_bytes (u32; the topic's cap the sender encoded with)
 *   21      2     batch_count (u16; must be >= 1)
 *   23            topic (topic_len bytes; UTF-8 is the caller's check)
 *                 dedup key (dedup_len bytes, when dedup_len >= 0)
 *                 batch_count x u32 batch length
 *                 the batches, back to back, each exactly its length
 *   end           nothing may follow the last batch
 *
 * Contract of mq_ringop_parse():
 *  - The payload is untrusted (a ring file may have been written by a dying
 *    process or by another version): nothing at or past `buf + len` is read,
 *    and every length is checked against the bytes left before it is used.
 *  - Each batch's 43-byte header is checked with mq_batch_read_header()
 *    (batch.h: magic, length equal to its slot length, record_count >= 1);
 *    not its CRC or records (the sender encoded them in this process's
 *    library; LMDB stores them as given, readers validate).
 *  - Pointers in the result point into `buf`.
 *
 * Return codes (mqerr.h):
 *   MQ_OK        parsed: `op` filled, `batches[0 .. op->batch_count)` filled
 *   MQ_ETRUNC    shorter than its header or one of its fields
 *   MQ_EINVAL    kind is not 0, partition < 0, batch_count 0, or bytes left
 *                after the last batch
 *   MQ_ETOOBIG   batch_count > cap: `op` is filled up to batch_count, no
 *                batch is; call again with room for op->batch_count batches
 *   MQ_EMAGIC, MQ_ELENGTH, MQ_EATTR, MQ_ECOUNT, MQ_ETRUNC
 *                from mq_batch_read_header() for a bad batch header
 * A payload that does not parse is answered "retry" by the committer (its
 * sender commits alone), never applied.
 */
#ifndef MQLITE_RINGOP_H
#define MQLITE_RINGOP_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_RINGOP_APPEND 0
#define MQ_RINGOP_HEAD 23 /* bytes before the topic */

typedef struct mq_ringop_batch {
    const uint8_t *ptr;     /* the batch's first byte, inside the payload */
    uint32_t len;           /* its length */
    uint32_t record_count;  /* from its header */
    int64_t base_timestamp; /* from its header */
    int64_t max_timestamp;  /* from its header */
} mq_ringop_batch;

typedef struct mq_ringop {
    uint8_t kind;
    const uint8_t *topic;
    uint32_t topic_len;
    const uint8_t *dedup; /* NULL when dedup_len < 0 */
    int32_t dedup_len;
    int32_t partition;
    int64_t timestamp;
    uint32_t max_message_bytes;
    uint32_t batch_count;
    uint64_t records;     /* sum of the batches' record counts */
    uint64_t bytes;       /* sum of the batches' lengths */
} mq_ringop;

int mq_ringop_parse(const uint8_t *buf, size_t len, mq_ringop *op, mq_ringop_batch *batches,
                    uint32_t cap);

#endif
