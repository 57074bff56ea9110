/* doorbell.h - wake-ups an event loop can watch: per-waiter FIFOs rung by bumpers.
 *
 * A futex has no file descriptor, so an asyncio loop cannot wait on the
 * notify words (notify.h) without parking a thread in futex_wait.  A
 * doorbell is a named FIFO that one waiter (an event loop) reads and that
 * every process bumping a notify word it armed writes one byte into; the
 * loop watches the FIFO's read end with epoll (loop.add_reader).
 *
 * Files (in the broker directory):
 *   bells.shm      the bell table, mapped MAP_SHARED by every process
 *   bells/<i>      the FIFO of entry i (created by the entry's claimer)
 *
 * Byte layout of bells.shm (native endian, all fields naturally aligned):
 *
 *   0   uint32 magic    0x4C42514D ("MQBL" little-endian); 0 in a fresh file
 *   4   uint32 version  1
 *   8   uint32 entries  MQ_BELLS_ENTRIES
 *   12  uint32 slots    notify slots per bitmap (the notify file's slot count)
 *   16  uint32 high     1 + the highest entry index ever claimed (bumpers scan
 *                       entries [0, high)); only grows
 *   20  ...            zero up to byte 64
 *   64 + i * E  entry i, E = 8 + 8 * ceil(slots / 64) bytes:
 *        uint32 gen     bumped by every claim of the entry
 *        uint32 unused
 *        uint64 bits[ceil(slots / 64)]   bit s set: ring this entry's FIFO
 *                                        when notify slot s is bumped
 *
 * Ownership: an entry is owned by whoever holds an open-file-description
 * lock (F_OFD_SETLK, write) on its first byte; the kernel drops it when the
 * owner's process dies.  A claimer clears the bitmap, recreates the FIFO
 * (unlink + mkfifo, so a dead owner's FIFO never reaches the new owner) and
 * opens it O_RDWR | O_NONBLOCK (holding both ends: the loop never sees a
 * hang-up when a ringer closes).  Entries of one process share one file
 * description, so the process remembers its own entries (b->mine) and never
 * claims one twice.
 *
 * Concurrency contract - a ring is a hint, exactly like a notify bump:
 *  - A waiter arms bit s, then increments the notify slot's waiter count,
 *    then re-reads the slot's seq (all seq_cst).  A bumper increments seq,
 *    reads the waiter count and, when non-zero, reads the bits (seq_cst).
 *    So either the waiter sees the new seq, or the bumper sees the bit and
 *    rings.  The waiter re-reads state after every ring, whatever caused it.
 *  - A ring is open(O_WRONLY | O_NONBLOCK) + write(1 byte) + close.  A full
 *    FIFO (EAGAIN: the owner has unread rings anyway), a FIFO without reader
 *    (ENXIO: its owner died) or a missing one (ENOENT) is ignored.  A dead
 *    owner's bits stay set until the entry is claimed again; that costs
 *    failed opens for bumps of those slots, never correctness.
 *  - Bumpers never take a lock: mq_bells_ring may run in any thread of any
 *    process, concurrently with claims and releases.  claim / release / arm
 *    / disarm of one mq_bells are serialised by the caller (the binding
 *    holds the GIL).
 *
 * Bounds: slot indexes are not checked here; the caller guarantees
 * slot < slots.  Entry indexes passed back in come from mq_bells_claim.
 * A truncated bells.shm is grown back by the SIGBUS guard (guard.h,
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
#define MQ_BELLS_VERSION 1u
#define MQ_BELLS_HEADER 64
#define MQ_BELLS_PATH_MAX 4096

typedef struct mq_bells {
    unsigned char *base; /* NULL when closed */
    size_t map_len;
    size_t slots;
    size_t entry_len;
    int fd;        /* the table's descriptor: its OFD locks own entries; -1 when closed */
    int guard;     /* SIGBUS guard id, -1 when none */
    int sys_errno; /* errno behind the last failed call, else 0 */
    unsigned dir_mode;
    unsigned fifo_mode;
    char dir[MQ_BELLS_PATH_MAX]; /* the FIFO directory */
    unsigned char mine[MQ_BELLS_ENTRIES]; /* entries this process claimed */
} mq_bells;

/* Opens (creating with exactly `mode`, O_NOFOLLOW | O_CLOEXEC) the table at
 * `path`, grows it to its size for `slots` under flock, maps it and records
 * `dir` as the FIFO directory (created with `dir_mode` on first claim).
 * Returns MQ_OK, or (b left closed) MQ_EINVAL (slots 0 or above 2**24, a
 * path too long, a table made for another slot count), MQ_EOPEN / MQ_ELOCK
 * / MQ_ESIZE / MQ_EMAP with errno in b->sys_errno, or MQ_EGUARD. */
int mq_bells_open(mq_bells *b, const char *path, const char *dir, size_t slots,
                  unsigned mode, unsigned dir_mode);

/* Releases every entry this process still owns, withdraws the guard,
 * unmaps and closes; idempotent.  No other call may run on b meanwhile. */
void mq_bells_close(mq_bells *b);

/* Claims a free entry: returns its index (>= 0) and stores the FIFO's
 * descriptor (O_RDWR | O_NONBLOCK | O_CLOEXEC; the caller closes it only
 * through mq_bells_release) in *fd_out.  Errors: MQ_ELOCK with sys_errno
 * EBUSY when every entry is owned, MQ_EOPEN (mkdir, mkfifo or open failed:
 * errno in sys_errno; ELOOP or ENOTDIR for a symlinked directory). */
int mq_bells_claim(mq_bells *b, int *fd_out);

/* Clears entry `index`'s bits, closes `fd`, removes the FIFO and gives the
 * entry up.  Waiter counts incremented for its bits are the caller's. */
void mq_bells_release(mq_bells *b, int index, int fd);

/* Sets / clears bit `slot` of entry `index` (seq_cst). */
void mq_bells_arm(mq_bells *b, int index, size_t slot);
void mq_bells_disarm(mq_bells *b, int index, size_t slot);

/* Rings the FIFO of every entry with bit `slot` set.  Any thread, no lock;
 * called by mq_notify_bump after it saw a non-zero waiter count. */
void mq_bells_ring(const mq_bells *b, size_t slot);

#endif
