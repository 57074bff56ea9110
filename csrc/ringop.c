/* ringop.c - parse the append operation of a commit-ring slot (see ringop.h). */
#include "ringop.h"

#include <string.h>

#include "batch.h"

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

int mq_ringop_parse(const uint8_t *buf, size_t len, mq_ringop *op, mq_ringop_batch *batches,
                    uint32_t cap) {
    size_t pos, left;
    const uint8_t *lens;
    uint32_t i;

    memset(op, 0, sizeof(*op));
    if (len < MQ_RINGOP_HEAD)
        return MQ_ETRUNC;
    op->kind = buf[0];
    if (op->kind != MQ_RINGOP_APPEND)
        return MQ_EINVAL;
    op->topic_len = be16(buf + 1);
    op->dedup_len = (int16_t)be16(buf + 3);
    op->partition = (int32_t)be32(buf + 5);
    op->timestamp = (int64_t)be64(buf + 9);
    op->max_message_bytes = be32(buf + 17);
    op->batch_count = be16(buf + 21);
    if (op->partition < 0 || op->batch_count == 0)
        return MQ_EINVAL;
    pos = MQ_RINGOP_HEAD;
    left = len - pos;
    if (op->topic_len > left)
        return MQ_ETRUNC;
    op->topic = buf + pos;
    pos += op->topic_len;
    left -= op->topic_len;
    if (op->dedup_len >= 0) {
        if ((size_t)op->dedup_len > left)
            return MQ_ETRUNC;
        op->dedup = buf + pos;
        pos += (size_t)op->dedup_len;
        left -= (size_t)op->dedup_len;
    }
    if ((size_t)op->batch_count * 4 > left)
        return MQ_ETRUNC;
    lens = buf + pos;
    pos += (size_t)op->batch_count * 4;
    left -= (size_t)op->batch_count * 4;
    if (op->batch_count > cap)
        return MQ_ETOOBIG;
    for (i = 0; i < op->batch_count; i++) {
        mq_batch_header h;
        uint32_t n = be32(lens + 4 * (size_t)i);
        int rc;
        if (n > left)
            return MQ_ETRUNC;
        rc = mq_batch_read_header(buf + pos, n, &h);
        if (rc < 0)
            return rc;
        batches[i].ptr = buf + pos;
        batches[i].len = n;
        batches[i].record_count = h.record_count;
        batches[i].base_timestamp = h.base_timestamp;
        batches[i].max_timestamp = h.max_timestamp;
        op->records += h.record_count;
        op->bytes += n;
        pos += n;
        left -= n;
    }
    if (left != 0)
        return MQ_EINVAL;
    return MQ_OK;
}
