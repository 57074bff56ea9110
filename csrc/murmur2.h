/* murmur2.h - Kafka's key hash and default partitioner.
 *
 * mq_murmur2() is org.apache.kafka.common.utils.Utils.murmur2 bit for bit:
 * MurmurHash2 with seed 0x9747b28c, m = 0x5bd1e995, r = 24, the key read in
 * 4-byte little-endian chunks, a 1-3 byte tail, then the final mixes.  Java
 * does this on signed 32-bit ints with logical shifts (>>>); here everything
 * is uint32_t and the result is returned as the same bits in an int32_t, so
 * it equals Java's int.  As in Java, only the low 32 bits of the length take
 * part.  Known values: "21" -> -973932308, "foobar" -> -790332482.
 *
 * mq_partition_for_key() is the partition Kafka's Java producer picks for a
 * keyed record: toPositive(murmur2(key)) % partitions, toPositive being
 * `& 0x7fffffff` (not abs(), which would collide differently).  The caller
 * guarantees partitions >= 1.
 *
 * Both read exactly `n` bytes from `data` (NULL allowed when n == 0), any
 * alignment, and are pure functions.
 */
#ifndef MQLITE_MURMUR2_H
#define MQLITE_MURMUR2_H

#include <stddef.h>
#include <stdint.h>

int32_t mq_murmur2(const void *data, size_t n);
uint32_t mq_partition_for_key(const void *data, size_t n, uint32_t partitions);

#endif
