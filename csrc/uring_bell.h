/* uring_bell.h - a doorbell's ring word watched through io_uring, without a bell thread.
 *
 * An asyncio loop can only wait on file descriptors; a doorbell (doorbell.h) is a futex
 * word.  Since Linux 6.7 io_uring can wait on a futex (IORING_OP_FUTEX_WAIT) and post a
 * completion when it is woken, and an io_uring descriptor is readable while completions
 * are queued, so the loop's selector can watch the ring word directly: a ring
 * (FUTEX_WAKE by any process) makes the loop thread runnable with no thread in between
 * (the bell thread of mq_bells_listen costs one more wake-up and a pipe write per ring;
 * docs/decisions.md D41 has the measurements).
 *
 * Protocol (loop thread only; nothing here is thread-safe):
 *   mq_uring_bell_open   set up a ring of 4 entries and check that the kernel runs
 *                        FUTEX_WAIT (a wait on a word whose value differs must complete
 *                        at once with -EAGAIN); else MQ_EOPEN with sys_errno (ENOSYS,
 *                        EPERM: io_uring disabled or forbidden; EINVAL: no futex ops)
 *   mq_uring_bell_arm    submit one FUTEX_WAIT(word, expected); at most one is pending
 *   mq_uring_bell_reap   consume every completion: the number consumed, with the last
 *                        failed result (other than -EAGAIN) in *failed (0: none)
 *   mq_uring_bell_close  close the ring (the kernel cancels a pending wait) and unmap.
 *
 * The futex is the shared kind (no FUTEX2_PRIVATE): the word lives in bells.shm, mapped
 * by every process.  A wait whose word changed before the kernel looked completes at
 * once (-EAGAIN), so "load the word, arm with it, then re-read state" loses no ring.
 * Other systems than Linux: open fails with ENOSYS and callers use the bell thread.
 */
#ifndef MQLITE_URING_BELL_H
#define MQLITE_URING_BELL_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

typedef struct mq_uring_bell {
    int fd; /* the io_uring descriptor (watch it for reading); -1 when closed */
    unsigned char *sq_ring, *cq_ring;
    size_t sq_len, cq_len, sqes_len;
    void *sqes;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    void *cqes;
    int sys_errno; /* errno behind the last failure, else 0 */
} mq_uring_bell;

int mq_uring_bell_open(mq_uring_bell *u);
int mq_uring_bell_arm(mq_uring_bell *u, uint32_t *word, uint32_t expected);
int mq_uring_bell_reap(mq_uring_bell *u, int *failed);
void mq_uring_bell_close(mq_uring_bell *u);

#endif
