#include "uring_bell.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__) && __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#ifndef IORING_OP_FUTEX_WAIT
#define IORING_OP_FUTEX_WAIT 51 /* Linux 6.7; older headers lack it */
#endif
#define MQ_FUTEX2_SIZE_U32 0x02u
#define MQ_FUTEX_BITSET_MATCH_ANY 0xffffffffu
#define MQ_URING_ENTRIES 4u

static void unmap_all(mq_uring_bell *u)
{
    if (u->sqes && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_len);
    if (u->cq_ring && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_len);
    if (u->sq_ring && u->sq_ring != MAP_FAILED)
        munmap(u->sq_ring, u->sq_len);
    u->sqes = NULL;
    u->sq_ring = u->cq_ring = NULL;
}

void mq_uring_bell_close(mq_uring_bell *u)
{
    unmap_all(u);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
}

static int fail(mq_uring_bell *u, int err)
{
    u->sys_errno = err;
    mq_uring_bell_close(u);
    return MQ_EOPEN;
}

static int enter(mq_uring_bell *u, unsigned submit, unsigned wait)
{
    for (;;) {
        long rc = syscall(__NR_io_uring_enter, u->fd, submit, wait,
                          wait ? IORING_ENTER_GETEVENTS : 0u, NULL, 0);
        if (rc >= 0 || errno != EINTR)
            return rc < 0 ? -errno : (int)rc;
    }
}

int mq_uring_bell_arm(mq_uring_bell *u, uint32_t *word, uint32_t expected)
{
    if (u->fd < 0)
        return MQ_EINVAL;
    unsigned tail = *u->sq_tail, idx = tail & *u->sq_mask;
    struct io_uring_sqe *s = &((struct io_uring_sqe *)u->sqes)[idx];
    memset(s, 0, sizeof *s);
    s->opcode = IORING_OP_FUTEX_WAIT;
    s->fd = (int)MQ_FUTEX2_SIZE_U32; /* futex2 flags: 32-bit, shared */
    s->addr = (uint64_t)(uintptr_t)word;
    s->off = expected;                /* addr2: the value to wait while equal to */
    s->addr3 = MQ_FUTEX_BITSET_MATCH_ANY;
    u->sq_array[idx] = idx;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    int rc = enter(u, 1, 0);
    if (rc < 0) {
        u->sys_errno = -rc;
        return MQ_EOPEN;
    }
    return MQ_OK;
}

int mq_uring_bell_reap(mq_uring_bell *u, int *failed)
{
    *failed = 0;
    if (u->fd < 0)
        return 0;
    unsigned head = *u->cq_head, n = 0;
    while (head != __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE)) {
        int res = ((struct io_uring_cqe *)u->cqes)[head & *u->cq_mask].res;
        if (res < 0 && res != -EAGAIN)
            *failed = res;
        head++;
        n++;
    }
    __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    return (int)n;
}

int mq_uring_bell_open(mq_uring_bell *u)
{
    struct io_uring_params p;
    memset(u, 0, sizeof *u);
    u->fd = -1;
    memset(&p, 0, sizeof p);
    long fd = syscall(__NR_io_uring_setup, MQ_URING_ENTRIES, &p);
    if (fd < 0)
        return fail(u, errno);
    u->fd = (int)fd; /* close-on-exec: io_uring descriptors are created O_CLOEXEC */
    u->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && u->cq_len > u->sq_len)
        u->sq_len = u->cq_len;
    u->sq_ring = mmap(NULL, u->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      u->fd, IORING_OFF_SQ_RING);
    if (u->sq_ring == MAP_FAILED)
        return fail(u, errno);
    if (single) {
        u->cq_ring = u->sq_ring;
    } else {
        u->cq_ring = mmap(NULL, u->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                          u->fd, IORING_OFF_CQ_RING);
        if (u->cq_ring == MAP_FAILED)
            return fail(u, errno);
    }
    u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                   IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED)
        return fail(u, errno);
    u->sq_head = (unsigned *)(void *)(u->sq_ring + p.sq_off.head);
    u->sq_tail = (unsigned *)(void *)(u->sq_ring + p.sq_off.tail);
    u->sq_mask = (unsigned *)(void *)(u->sq_ring + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(void *)(u->sq_ring + p.sq_off.array);
    u->cq_head = (unsigned *)(void *)(u->cq_ring + p.cq_off.head);
    u->cq_tail = (unsigned *)(void *)(u->cq_ring + p.cq_off.tail);
    u->cq_mask = (unsigned *)(void *)(u->cq_ring + p.cq_off.ring_mask);
    u->cqes = u->cq_ring + p.cq_off.cqes;
    /* Probe: a wait on a word that differs from the expected value completes at once with
     * -EAGAIN where the kernel has futex ops; -EINVAL (or anything else) where it has not. */
    uint32_t probe = 0;
    if (mq_uring_bell_arm(u, &probe, 1u) != MQ_OK)
        return fail(u, u->sys_errno);
    int rc = enter(u, 0, 1);
    if (rc < 0)
        return fail(u, -rc);
    unsigned head = *u->cq_head;
    if (head == __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE))
        return fail(u, EIO);
    int res = ((struct io_uring_cqe *)u->cqes)[head & *u->cq_mask].res;
    __atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
    if (res != -EAGAIN)
        return fail(u, res < 0 ? -res : EINVAL);
    u->sys_errno = 0;
    return MQ_OK;
}

#else /* no io_uring here: callers use the bell thread */

int mq_uring_bell_open(mq_uring_bell *u)
{
    memset(u, 0, sizeof *u);
    u->fd = -1;
    u->sys_errno = ENOSYS;
    return MQ_EOPEN;
}

int mq_uring_bell_arm(mq_uring_bell *u, uint32_t *word, uint32_t expected)
{
    (void)u;
    (void)word;
    (void)expected;
    return MQ_EINVAL;
}

int mq_uring_bell_reap(mq_uring_bell *u, int *failed)
{
    (void)u;
    *failed = 0;
    return 0;
}

void mq_uring_bell_close(mq_uring_bell *u)
{
    u->fd = -1;
}

#endif
