/* doorbell.h - one futex word per event loop, rung by every bump of a word it armed.
 *
 * A futex has no file descriptor, so an asyncio loop cannot wait on the
 * notify words (notify.h) directly, and parking one thread per waiting task
 * in futex_wait costs a thread per wait.  Instead each event loop claims a
 * doorbell: an entry of a shared table holding a bitmap of the notify slots
 * its tasks wait on and one 32-bit ring word.  A process that bumps an armed
 * slot increments the ring word of every entry that armed it and FUTEX_WAKEs
 * it; one thread per loop sleeps on its ring word (mq_bells_listen) and
 * hands each ring to the loop through a pipe (docs/decisions.md D26 has the
 * measurements: a FIFO written by every bumper and watched by the loop
 * directly was slower here: a pipe write wakes the reader with the
 * scheduler's "sync" hint, so the reader waits for the bumper's CPU, while
 * the bell thread sleeps again right after its write).  Where the kernel can
 * wait on a futex through io_uring (Linux >= 6.7), the loop watches the ring
 * word itself instead, with no bell thread (uring_bell.h, D41).
 *
 * File bells.shm (in the broker directory), mapped MAP_SHARED by every
 * process; byte layout (native endian, fields naturally aligned):
 *
 *   0   uint32 magic    0x4C42514D ("MQBL" little-endian); 0 in a fresh file
 *   4   uint32 version  2
 *   8   uint32 entries  MQ_BELLS_ENTRIES
 *   12  uint32 slots    notify slots per bitmap (the notify file's slot count)
 *   16  uint32 high     1 + the highest entry index ever claimed (ringers scan
 *                       entries [0, high)); only grows
 *   20  ...            zero up to byte 64
 *   64 + i * E  entry i, E = 8 + 8 * ceil(slots / 64) bytes:
 *        uint32 ring    incremented (wrapping) by every ring; the futex word
 *        uint32 gen     incremented by every claim of the entry
 *        uint64 bits[ceil(slots / 64)]   bit s set: ring this entry when
 *                                        notify slot s is bumped
 *
 * Ownership: an entry is owned by whoever holds an open-file-description
 * lock (F_OFD_SETLK, write) on its first byte; the kernel drops it when the
 * owner's process dies, so a crashed process's entry is free again.  A
 * claimer clears the bitmap a previous owner may have left.  Entries of one
 * process share one file description, so the process remembers its own
 * entries (b->mine) and never claims one twice.
 *
 * Concurrency contract - a ring is a hint, exactly like a notify bump:
 *  - A waiter arms bit s, then increments the notify slot's waiter count,
 *    then re-reads the slot's seq (all seq_cst).  A bumper increments seq,
 *    reads the waiter count and, when non-zero, reads the bits (seq_cst).
 *    So either the waiter sees the new seq, or the bumper sees the bit and
 *    rings.  The loop re-reads the armed slots after every ring, whatever
 *    caused it, and every wait has a timeout.
 *  - The ring word's waiter loads it, handles rings, then futex-waits on the
 *    loaded value: an increment in between makes the wait return at once.
 *  - Ringers never take a lock: mq_bells_ring may run in any thread of any
 *    process, concurrently with claims and releases.  A ring racing a
 *    release or re-claim rings an entry nobody (or a new owner) waits on: a
 *    spurious wake-up at worst.  claim / release / arm / disarm of one
 *    mq_bells are serialised by the caller (the binding holds the GIL).
 *  - Futex operations are the shared ones (the word lives in a file mapping
 *    shared between processes).  Other systems than Linux sleep-poll the
 *    ring word (at most 1 ms per step), as notify.h does.
 *
 * Bounds: slot indexes are not checked here; the caller guarantees
 * slot < slots.  Entry indexes passed in come from mq_bells_claim.  A
 * truncated bells.shm is grown back by the SIGBUS guard (guard.h,
 * MQ_GUARD_REGROW): the lost bits read as zero, which costs at most one
 * missed ring (a waiter's timeout of latency).
 */
#ifndef MQLITE_DOORBELL_H
#define MQLITE_DOORBELL_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_BELLS_ENTRIES 256
#define MQ_BELLS_MAGIC 0x4C42514Du
#define MQ_BELLS_VERSION 2u
#define MQ_BELLS_HEADER 64

typedef struct mq_bells {
    unsigned char *base; /* NULL when closed */
    size_t map_len;
    size_t slots;
    size_t entry_len;
    int fd;        /* the table's descriptor: its OFD locks own entries; -1 when closed */
    int guard;     /* SIGBUS guard id, -1 when none */
    int sys_errno; /* errno behind the last failed call, else 0 */
    unsigned char mine[MQ_BELLS_ENTRIES]; /* entries this process claimed */
} mq_bells;

/* Opens (creating with exactly `mode`, O_NOFOLLOW | O_CLOEXEC) the table at
 * `path`, grows it to its size for `slots` under flock and maps it.
 * Returns MQ_OK, or (b left closed) MQ_EINVAL (slots 0 or above 2**24, a
 * table made for another slot count or version), MQ_EOPEN / MQ_ELOCK /
 * MQ_ESIZE / MQ_EMAP with errno in b->sys_errno, or MQ_EGUARD. */
int mq_bells_open(mq_bells *b, const char *path, size_t slots, unsigned mode);

/* Releases every entry this process still owns, withdraws the guard,
 * unmaps and closes; idempotent.  No other call may run on b meanwhile. */
void mq_bells_close(mq_bells *b);

/* Claims a free entry (bits cleared, gen incremented); returns its index
 * (>= 0), or MQ_ELOCK with sys_errno EBUSY when every entry is owned (or
 * another errno when fcntl failed otherwise). */
int mq_bells_claim(mq_bells *b);

/* Clears entry `index`'s bits, rings it once (a thread sleeping on it
 * wakes and sees the release) and gives it up.  Waiter counts incremented
 * for its bits are the caller's. */
void mq_bells_release(mq_bells *b, int index);

/* Sets / clears bit `slot` of entry `index` (seq_cst). */
void mq_bells_arm(mq_bells *b, int index, size_t slot);
void mq_bells_disarm(mq_bells *b, int index, size_t slot);

/* The ring word of entry `index` (acquire load). */
uint32_t mq_bells_load(const mq_bells *b, int index);

/* The address of entry `index`'s ring word (for a futex wait through io_uring,
 * uring_bell.h; valid while b is open). */
uint32_t *mq_bells_ring_word(const mq_bells *b, int index);

/* Increments entry `index`'s ring word and wakes its waiter. */
void mq_bells_kick(mq_bells *b, int index);

/* Waits until entry `index`'s ring word differs from `expected`, a wake-up
 * arrives or `timeout_ns` passes.  Returns 1 (differs / woken), 0 (timeout)
 * or MQ_EINTR (a signal arrived; the caller runs its handlers and calls
 * again with the time left). */
int mq_bells_wait(mq_bells *b, int index, uint32_t expected, int64_t timeout_ns);

/* The listener loop of one event loop's bell thread: waits on entry
 * `index`'s ring word and, for every change, writes an 8-byte 1 to `fd` (an
 * eventfd or a pipe the loop watches; EAGAIN, a full pipe, is ignored: a
 * wake-up is pending anyway), without touching anything else, so the thread
 * never needs the Python GIL.  Re-checks `*stop` at least every 250 ms and
 * after every ring; returns when it is non-zero. */
void mq_bells_listen(mq_bells *b, int index, int fd, const volatile int *stop);

/* Rings every entry with bit `slot` set.  Any thread, no lock; called by
 * mq_notify_bump when the slot's waiters word counts an armed event loop. */
void mq_bells_ring(const mq_bells *b, size_t slot);

#endif
