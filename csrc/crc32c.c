#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define MQ_HAVE_SSE42_PATH 1
#endif

#define POLY 0x82F63B78u

/* table[k][b]: the CRC contribution of byte b followed by k zero bytes,
 * which lets the software path fold eight bytes per step with independent
 * lookups instead of a serial chain of eight. */
static uint32_t table[8][256];
static int hw_available;

#ifdef MQ_HAVE_SSE42_PATH
/* The hardware path runs three independent crc32 streams over adjacent
 * blocks (the instruction has a 3-cycle latency but a 1-cycle throughput)
 * and joins them.  Joining needs "the CRC register after n more zero bytes",
 * a linear map on 32 bits; shift_long/shift_short hold it for n = LONG and
 * n = SHORT as four byte-indexed tables, like the slicing tables above. */
#define LONG 8192
#define SHORT 256
static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];

/* The image of `vec` under the GF(2) matrix whose column i is mat[i]. */
static uint32_t gf2_apply(const uint32_t mat[32], uint32_t vec)
{
    uint32_t sum = 0;
    for (int i = 0; vec; i++, vec >>= 1)
        if (vec & 1)
            sum ^= mat[i];
    return sum;
}

/* Fills t with the operator "feed `bytes` zero bytes" (bytes a power of 2). */
static void make_shift_table(uint32_t t[4][256], size_t bytes)
{
    uint32_t op[32], sq[32];
    for (int i = 0; i < 32; i++) { /* one zero byte */
        uint32_t c = (uint32_t)1 << i;
        op[i] = table[0][c & 0xff] ^ (c >> 8);
    }
    for (size_t n = 1; n < bytes; n <<= 1) { /* square: twice as many zero bytes */
        for (int i = 0; i < 32; i++)
            sq[i] = gf2_apply(op, op[i]);
        memcpy(op, sq, sizeof op);
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            t[k][b] = gf2_apply(op, b << (8 * k));
}

static inline uint32_t shift(const uint32_t t[4][256], uint32_t c)
{
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}
#endif

/* Runs when the shared object is loaded, before any caller can reach the
 * functions below: the tables are then read-only and need no locking. */
__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
#ifdef MQ_HAVE_SSE42_PATH
    make_shift_table(shift_long, LONG);
    make_shift_table(shift_short, SHORT);
    __builtin_cpu_init(); /* required when probing from a constructor */
    hw_available = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

static inline uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t mq_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo = c ^ load_le32(p);
        uint32_t hi = load_le32(p + 4);
        c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
            table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
            table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#ifdef MQ_HAVE_SSE42_PATH
static inline uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8); /* x86 is little-endian, as the instruction expects */
    return w;
}

/* Three streams over [p, p + 3 * block): the register after the whole run,
 * given register c before it, joined as
 *   reg(A B C) = shift(shift(reg(A, c)) ^ reg(B, 0)) ^ reg(C, 0)
 * since the register is linear in (initial value, data). */
__attribute__((target("sse4.2"))) static inline uint64_t crc3(uint64_t c, const uint8_t *p,
                                                               size_t block,
                                                               const uint32_t t[4][256])
{
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < block; i += 8) {
        c = _mm_crc32_u64(c, load64(p + i));
        c1 = _mm_crc32_u64(c1, load64(p + block + i));
        c2 = _mm_crc32_u64(c2, load64(p + 2 * block + i));
    }
    c = shift(t, (uint32_t)c) ^ c1;
    return shift(t, (uint32_t)c) ^ c2;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p,
                                                                size_t n)
{
    uint64_t c = ~crc;
    while (n >= 3 * LONG) {
        c = crc3(c, p, LONG, shift_long);
        p += 3 * LONG;
        n -= 3 * LONG;
    }
    while (n >= 3 * SHORT) {
        c = crc3(c, p, SHORT, shift_short);
        p += 3 * SHORT;
        n -= 3 * SHORT;
    }
    while (n >= 8) {
        c = _mm_crc32_u64(c, load64(p));
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif

uint32_t mq_crc32c_hw(uint32_t crc, const void *data, size_t n)
{
#ifdef MQ_HAVE_SSE42_PATH
    if (hw_available)
        return crc32c_sse42(crc, data, n);
#endif
    return mq_crc32c_sw(crc, data, n);
}

int mq_crc32c_hw_available(void)
{
    return hw_available;
}

uint32_t mq_crc32c(uint32_t crc, const void *data, size_t n)
{
    return mq_crc32c_hw(crc, data, n);
}
