/* crc32c.h - CRC32C (Castagnoli), as used by record batches and by iSCSI,
 * ext4 and Kafka.
 *
 * Parameters: reflected polynomial 0x82F63B78 (0x1EDC6F41 bit-reversed),
 * initial value and final xor 0xFFFFFFFF, bytes processed LSB first.  Check
 * value: mq_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * Continuation: `crc` is a previous *result* (0 to start), so
 *     mq_crc32c(mq_crc32c(0, a, na), b, nb) == mq_crc32c(0, a ++ b, na + nb)
 * as in zlib's crc32().  The functions read exactly `n` bytes from `data`
 * (any alignment; `data` may be NULL when n == 0) and keep no state.
 *
 * Two implementations give bit-identical results:
 *  - software: slicing-by-8 tables, portable C, any byte order;
 *  - hardware: the SSE4.2 crc32 instruction (x86-64 only).
 * mq_crc32c() picks the hardware path when the CPU has SSE4.2 (probed once
 * when the library is loaded) and is safe to call from any thread at any
 * time after that.  mq_crc32c_hw() must only be called when
 * mq_crc32c_hw_available() is true; elsewhere it falls back to software so
 * that a wrong call is slow rather than a SIGILL.
 */
#ifndef MQLITE_CRC32C_H
#define MQLITE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t mq_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t mq_crc32c_sw(uint32_t crc, const void *data, size_t n);
uint32_t mq_crc32c_hw(uint32_t crc, const void *data, size_t n);
int mq_crc32c_hw_available(void);

#endif
