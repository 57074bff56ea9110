#include "batch.h"

#include <string.h>

#include "crc32c.h"
#include "varint.h"

/* ---- byte order -------------------------------------------------------- */

static inline void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

/* ---- encoding ---------------------------------------------------------- */

static inline int64_t record_timestamp(const mq_records *r, size_t i)
{
    return r->timestamps ? r->timestamps[i] : r->timestamp;
}

static inline size_t slice_size(mq_slice s)
{
    return s.len < 0 ? 1 : (size_t)mq_varint_size(s.len) + (size_t)s.len;
}

/* Bytes of record i's fields that do not depend on its place in a batch:
 * attributes, key, value, headers. */
static size_t record_fixed_size(const mq_records *r, size_t i)
{
    size_t n = 1; /* attributes = 0 */
    n += r->keys ? slice_size(r->keys[i]) : 1;
    n += slice_size(r->values[i]);
    if (!r->headers)
        return n + 1; /* header_count = 0 */
    size_t h0 = r->header_index[i], h1 = r->header_index[i + 1];
    n += (size_t)mq_varint_size((int64_t)(h1 - h0));
    for (size_t h = h0; h < h1; h++) {
        const mq_header_in *hd = &r->headers[h];
        n += (size_t)mq_varint_size((int64_t)hd->name_len) + hd->name_len;
        n += (size_t)mq_varint_size((int64_t)hd->value_len) + hd->value_len;
    }
    return n;
}

/* delta = ts - base without overflow; 0 when it does not fit an int64. */
static inline int timestamp_delta(int64_t ts, int64_t base, int64_t *delta)
{
    return !__builtin_sub_overflow(ts, base, delta);
}

/* Record body size (after record_length) at batch position `index`. */
static inline size_t record_body_size(size_t fixed, int64_t ts_delta, size_t index)
{
    return fixed + (size_t)mq_varint_size(ts_delta) + (size_t)mq_varint_size((int64_t)index);
}

int mq_batch_plan(const mq_records *r, size_t first, size_t max_bytes, size_t *count,
                  size_t *size)
{
    int64_t base_ts = record_timestamp(r, first);
    size_t total = MQ_BATCH_HEADER_SIZE;
    size_t i = first;
    for (; i < r->count; i++) {
        size_t index = i - first;
        int64_t delta;
        if (!timestamp_delta(record_timestamp(r, i), base_ts, &delta)) {
            *count = i;
            return MQ_ETIMESTAMP;
        }
        size_t body = record_body_size(record_fixed_size(r, i), delta, index);
        size_t rec = (size_t)mq_varint_size((int64_t)body) + body;
        if (rec > MQ_BATCH_MAX_SIZE - total) { /* also guards the additions below */
            if (index == 0)
                return MQ_ETOOBIG;
            break;
        }
        if (index > 0 && ((max_bytes && total + rec > max_bytes) || index == UINT32_MAX))
            break;
        total += rec;
    }
    *count = i - first;
    *size = total;
    return MQ_OK;
}

static inline uint8_t *put_bytes(uint8_t *p, const uint8_t *src, size_t n)
{
    if (n) /* memcpy from NULL is undefined even for 0 bytes */
        memcpy(p, src, n);
    return p + n;
}

static inline uint8_t *put_slice(uint8_t *p, mq_slice s)
{
    p += mq_varint_put(s.len < 0 ? -1 : s.len, p);
    return s.len > 0 ? put_bytes(p, s.ptr, (size_t)s.len) : p;
}

int mq_batch_encode(const mq_records *r, size_t first, size_t count, int64_t producer_id,
                    int32_t base_sequence, uint8_t *out, size_t size)
{
    uint8_t *const stop = out + size;
    const int64_t base_ts = record_timestamp(r, first);
    int64_t max_ts = base_ts;
    uint8_t *p = out + MQ_BATCH_HEADER_SIZE;

    /* The planned size bounds every write: each record is checked against
     * the room left before any byte of it is written. */
    if (size < MQ_BATCH_HEADER_SIZE)
        return MQ_ELENGTH;
    for (size_t index = 0; index < count; index++) {
        size_t i = first + index;
        int64_t ts = record_timestamp(r, i), delta;
        if (!timestamp_delta(ts, base_ts, &delta))
            return MQ_ETIMESTAMP;
        if (ts > max_ts)
            max_ts = ts;
        size_t body = record_body_size(record_fixed_size(r, i), delta, index);
        if ((size_t)mq_varint_size((int64_t)body) + body > (size_t)(stop - p))
            return MQ_ELENGTH;
        p += mq_varint_put((int64_t)body, p);
        *p++ = 0; /* attributes */
        p += mq_varint_put(delta, p);
        p += mq_varint_put((int64_t)index, p);
        if (r->keys)
            p = put_slice(p, r->keys[i]);
        else
            *p++ = 1; /* null key: zig-zag(-1) */
        p = put_slice(p, r->values[i]);
        if (!r->headers) {
            *p++ = 0;
            continue;
        }
        size_t h0 = r->header_index[i], h1 = r->header_index[i + 1];
        p += mq_varint_put((int64_t)(h1 - h0), p);
        for (size_t h = h0; h < h1; h++) {
            const mq_header_in *hd = &r->headers[h];
            p += mq_varint_put((int64_t)hd->name_len, p);
            p = put_bytes(p, hd->name, hd->name_len);
            p += mq_varint_put((int64_t)hd->value_len, p);
            p = put_bytes(p, hd->value, hd->value_len);
        }
    }
    if (p != stop)
        return MQ_ELENGTH;

    out[0] = MQ_BATCH_MAGIC;
    put_be32(out + 5, (uint32_t)size);
    put_be16(out + 9, 0);
    put_be32(out + 11, (uint32_t)count);
    put_be64(out + 15, (uint64_t)base_ts);
    put_be64(out + 23, (uint64_t)max_ts);
    put_be64(out + 31, (uint64_t)producer_id);
    put_be32(out + 39, (uint32_t)base_sequence);
    put_be32(out + 1, mq_crc32c(0, out + 5, size - 5));
    return MQ_OK;
}

/* ---- reading ----------------------------------------------------------- */

int mq_batch_read_header(const uint8_t *buf, size_t len, mq_batch_header *h)
{
    if (len < MQ_BATCH_HEADER_SIZE)
        return MQ_ETRUNC;
    if (buf[0] != MQ_BATCH_MAGIC)
        return MQ_EMAGIC;
    h->crc = get_be32(buf + 1);
    h->length = get_be32(buf + 5);
    h->attributes = get_be16(buf + 9);
    h->record_count = get_be32(buf + 11);
    h->base_timestamp = (int64_t)get_be64(buf + 15);
    h->max_timestamp = (int64_t)get_be64(buf + 23);
    h->producer_id = (int64_t)get_be64(buf + 31);
    h->base_sequence = (int32_t)get_be32(buf + 39);
    if (h->length != len)
        return MQ_ELENGTH;
    if (h->attributes & ~MQ_BATCH_ATTR_CODEC_MASK)
        return MQ_EATTR;
    if (h->record_count == 0)
        return MQ_ECOUNT;
    return MQ_OK;
}

/* Reads a varint at *p (bounded by end) into *v and advances *p; on error
 * returns the code from the enclosing function. */
#define GET_VARINT(p, end, v)                                                                      \
    do {                                                                                           \
        int n_ = mq_varint_get((p), (end), (v));                                                   \
        if (n_ < 0)                                                                                \
            return n_;                                                                             \
        (p) += n_;                                                                                 \
    } while (0)

/* A length field: `min` is -1 where null is allowed, else 0.  The bytes it
 * announces must lie before `end`. */
static inline int get_length(const uint8_t **pp, const uint8_t *end, int64_t min, int64_t *len)
{
    const uint8_t *p = *pp;
    GET_VARINT(p, end, len);
    if (*len < min)
        return MQ_EFIELDLEN;
    if (*len > end - p)
        return MQ_ETRUNC;
    *pp = p;
    return MQ_OK;
}

int mq_header_read(const uint8_t **pos, const uint8_t *end, mq_header_view *hv)
{
    const uint8_t *p = *pos;
    int64_t n;
    int rc;
    if ((rc = get_length(&p, end, 0, &n)) < 0)
        return rc;
    hv->name = p;
    hv->name_len = (size_t)n;
    p += n;
    if ((rc = get_length(&p, end, 0, &n)) < 0)
        return rc;
    hv->value = p;
    hv->value_len = (size_t)n;
    *pos = p + n;
    return MQ_OK;
}

/* Where the record at *pos ends, from its record_length. */
static inline int record_bounds(const uint8_t **pos, const uint8_t *end, const uint8_t **rec_end)
{
    const uint8_t *p = *pos;
    int64_t n;
    GET_VARINT(p, end, &n);
    if (n < 0)
        return MQ_ERECLEN;
    if (n > end - p)
        return MQ_ETRUNC;
    *pos = p;
    *rec_end = p + n;
    return MQ_OK;
}

int mq_record_read(const uint8_t **pos, const uint8_t *end, int64_t base_timestamp,
                   mq_record *rec)
{
    const uint8_t *p = *pos, *rend;
    int64_t v;
    int rc;
    if ((rc = record_bounds(&p, end, &rend)) < 0)
        return rc;
    /* From here every read is bounded by the record's own end, so a bad
     * record_length cannot make one record's fields spill into the next. */
    GET_VARINT(p, rend, &v);
    if (v != 0)
        return MQ_ERECATTR;
    GET_VARINT(p, rend, &v);
    if (__builtin_add_overflow(base_timestamp, v, &rec->timestamp))
        return MQ_ETIMESTAMP;
    GET_VARINT(p, rend, &rec->offset_delta);
    if ((rc = get_length(&p, rend, -1, &rec->key_len)) < 0)
        return rc;
    rec->key = rec->key_len < 0 ? NULL : p;
    p += rec->key_len < 0 ? 0 : rec->key_len;
    if ((rc = get_length(&p, rend, -1, &rec->value_len)) < 0)
        return rc;
    rec->value = rec->value_len < 0 ? NULL : p;
    p += rec->value_len < 0 ? 0 : rec->value_len;
    GET_VARINT(p, rend, &rec->header_count);
    if (rec->header_count < 0)
        return MQ_EFIELDLEN;
    rec->headers = p;
    /* Each header takes at least two bytes, so this loop is bounded by the
     * record's size whatever header_count claims. */
    for (int64_t h = 0; h < rec->header_count; h++) {
        mq_header_view hv;
        if ((rc = mq_header_read(&p, rend, &hv)) < 0)
            return rc;
    }
    if (p != rend)
        return MQ_ERECLEN;
    rec->end = rend;
    *pos = rend;
    return MQ_OK;
}

int mq_utf8_valid(const uint8_t *p, size_t n)
{
    const uint8_t *end = p + n;
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* UTF-16 surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else {
            return 0; /* stray continuation byte, C0/C1 overlong, or F5-FF */
        }
        if ((size_t)(end - p) <= need)
            return 0;
        if (p[1] < lo || p[1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if ((p[k] & 0xC0) != 0x80)
                return 0;
        p += need + 1;
    }
    return 1;
}

int mq_batch_iter_init(mq_batch_iter *it, const uint8_t *buf, size_t len, int flags)
{
    it->p = it->end = buf;
    it->index = 0;
    it->max_ts = INT64_MIN;
    it->bad_record = -1;
    memset(&it->h, 0, sizeof it->h);
    int rc = mq_batch_read_header(buf, len, &it->h);
    if (rc < 0)
        return rc;
    if (it->h.attributes & MQ_BATCH_ATTR_CODEC_MASK)
        return MQ_ECODEC;
    if ((flags & MQ_VALIDATE_CRC) && mq_crc32c(0, buf + 5, len - 5) != it->h.crc)
        return MQ_ECRC;
    it->p = buf + MQ_BATCH_HEADER_SIZE;
    it->end = buf + len;
    return MQ_OK;
}

int mq_batch_iter_next(mq_batch_iter *it, mq_record *rec)
{
    int rc;
    if (it->p == it->end) {
        if (it->index != it->h.record_count)
            return MQ_ECOUNT;
        if (it->max_ts != it->h.max_timestamp)
            return MQ_ETIMESTAMP;
        return 0;
    }
    if (it->index >= it->h.record_count)
        return MQ_ECOUNT; /* bytes left over after record_count records */
    it->bad_record = it->index;
    if ((rc = mq_record_read(&it->p, it->end, it->h.base_timestamp, rec)) < 0)
        return rc;
    if (rec->offset_delta != (int64_t)it->index)
        return MQ_EOFFSET;
    if (it->index == 0 && rec->timestamp != it->h.base_timestamp)
        return MQ_ETIMESTAMP;
    const uint8_t *hp = rec->headers;
    for (int64_t k = 0; k < rec->header_count; k++) {
        mq_header_view hv;
        if ((rc = mq_header_read(&hp, rec->end, &hv)) < 0)
            return rc; /* unreachable: mq_record_read checked them */
        if (!mq_utf8_valid(hv.name, hv.name_len))
            return MQ_EUTF8;
    }
    if (rec->timestamp > it->max_ts)
        it->max_ts = rec->timestamp;
    it->bad_record = -1;
    it->index++;
    return 1;
}

int mq_batch_validate(const uint8_t *buf, size_t len, int flags, mq_batch_header *h,
                      int64_t *bad_record)
{
    mq_batch_iter it;
    mq_record rec;
    int rc = mq_batch_iter_init(&it, buf, len, flags);
    while (rc >= 0 && (rc = mq_batch_iter_next(&it, &rec)) > 0)
        ;
    *h = it.h;
    *bad_record = it.bad_record;
    return rc;
}

int mq_batch_find_timestamp(const uint8_t *buf, size_t len, int64_t ts, int64_t *index)
{
    mq_batch_iter it;
    mq_record rec;
    int rc = mq_batch_iter_init(&it, buf, len, MQ_VALIDATE_CRC);
    *index = -1;
    while (rc >= 0 && (rc = mq_batch_iter_next(&it, &rec)) > 0)
        if (*index < 0 && rec.timestamp >= ts)
            *index = (int64_t)it.index - 1; /* keep going: the rest must validate too */
    if (rc < 0)
        *index = -1;
    return rc;
}
