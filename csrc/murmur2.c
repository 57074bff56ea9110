#include "murmur2.h"

#define SEED 0x9747b28cu
#define M 0x5bd1e995u
#define R 24

int32_t mq_murmur2(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t h = SEED ^ (uint32_t)n;
    size_t whole = n & ~(size_t)3;
    for (size_t i = 0; i < whole; i += 4) {
        uint32_t k = (uint32_t)p[i] | (uint32_t)p[i + 1] << 8 | (uint32_t)p[i + 2] << 16 |
                     (uint32_t)p[i + 3] << 24;
        k *= M;
        k ^= k >> R;
        k *= M;
        h *= M;
        h ^= k;
    }
    /* Java's switch falls through 3 -> 2 -> 1; the multiply happens once. */
    switch (n & 3) {
    case 3:
        h ^= (uint32_t)p[whole + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)p[whole + 1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)p[whole];
        h *= M;
    }
    h ^= h >> 13;
    h *= M;
    h ^= h >> 15;
    return (int32_t)h;
}

uint32_t mq_partition_for_key(const void *data, size_t n, uint32_t partitions)
{
    return ((uint32_t)mq_murmur2(data, n) & 0x7fffffffu) % partitions;
}
