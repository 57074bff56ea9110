/* varint.h - Kafka zig-zag varints.
 *
 * Format: ZigZag maps a signed 64-bit value to an unsigned one,
 * z = (v << 1) ^ (v >> 63), so that small magnitudes of either sign stay
 * small; LEB128 then stores z seven bits per byte, least significant group
 * first, with the high bit set on every byte except the last.  An int64
 * takes 1 to 10 bytes (MQ_VARINT_MAX).
 *
 * Decoding treats its input as untrusted:
 *  - it never reads at or past `end`;
 *  - a varint whose last byte would lie at or past `end` is MQ_ETRUNC;
 *  - a varint of more than 10 bytes, or whose 10th byte carries more than
 *    bit 63 of z (a 10th byte other than 0x00/0x01), is MQ_EVARINT: it does
 *    not fit 64 bits and silently dropping bits would hide corruption;
 *  - non-minimal encodings (0x80 0x00 for 0) are accepted, as LEB128 and
 *    Kafka's reader accept them.
 * On success the decoder returns the number of bytes consumed (1-10) and
 * stores the value; on failure it returns the negative code and leaves *out
 * untouched.
 *
 * Encoding trusts its caller to provide MQ_VARINT_MAX writable bytes.
 */
#ifndef MQLITE_VARINT_H
#define MQLITE_VARINT_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_VARINT_MAX 10

static inline uint64_t mq_zigzag(int64_t v)
{
    /* Shifts done on uint64_t: left-shifting a negative int64 is undefined. */
    return ((uint64_t)v << 1) ^ (0 - ((uint64_t)v >> 63));
}

static inline int64_t mq_unzigzag(uint64_t z)
{
    return (int64_t)((z >> 1) ^ (0 - (z & 1)));
}

/* Bytes needed to encode `v` (1-10). */
static inline int mq_varint_size(int64_t v)
{
    uint64_t z = mq_zigzag(v) | 1; /* |1: clz(0) is undefined, and 0 takes one byte */
    int bits = 64 - __builtin_clzll(z);
    return (bits + 6) / 7;
}

/* Writes `v` at `out` (caller guarantees MQ_VARINT_MAX bytes of room);
 * returns the bytes written (1-10).  Inline for the encoder's per-field use. */
static inline int mq_varint_put(int64_t v, uint8_t *out)
{
    uint64_t z = mq_zigzag(v);
    int n = 0;
    while (z >= 0x80) {
        out[n++] = (uint8_t)(z | 0x80);
        z >>= 7;
    }
    out[n++] = (uint8_t)z;
    return n;
}

/* Out-of-line mq_varint_put, for callers outside csrc/. */
int mq_varint_encode(int64_t v, uint8_t *out);

/* Decodes one varint from [p, end).  Returns bytes consumed (1-10), or
 * MQ_ETRUNC or MQ_EVARINT (see the contract above).  Inline: the batch
 * reader calls it for every field of every record, and record lengths and
 * offset deltas of 64 and up already take two bytes. */
static inline int mq_varint_get(const uint8_t *p, const uint8_t *end, int64_t *out)
{
    ptrdiff_t avail = end - p;
    if (avail > 0 && p[0] < 0x80) {
        *out = mq_unzigzag(p[0]);
        return 1;
    }
    uint64_t z = 0;
    for (int i = 0; i < MQ_VARINT_MAX; i++) {
        if (i >= avail)
            return MQ_ETRUNC;
        uint8_t b = p[i];
        if (i == MQ_VARINT_MAX - 1 && b > 0x01)
            return MQ_EVARINT; /* only bit 63 of z is left for byte 10 */
        z |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = mq_unzigzag(z);
            return i + 1;
        }
    }
    return MQ_EVARINT;
}

/* Out-of-line mq_varint_get, for callers outside csrc/. */
int mq_varint_decode(const uint8_t *p, const uint8_t *end, int64_t *out);

#endif
