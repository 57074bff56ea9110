#include "notify.h"

#include "shmfile.h"
#include "doorbell.h"
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

int mq_notify_open(mq_notify *n, const char *path, size_t slots, unsigned mode)
{
    n->slots_base = NULL;
    n->slots = 0;
    n->map_len = 0;
    n->fd = -1;
    n->guard = -1;
    n->sys_errno = 0;
    n->bells = NULL;
    if (slots == 0 || slots > (size_t)INT64_MAX / sizeof(mq_notify_slot))
        return MQ_EINVAL;
    size_t need = slots * sizeof(mq_notify_slot);

    int fd = mq_shm_open(path, mode);
    if (fd < 0) {
        n->sys_errno = errno;
        return MQ_EOPEN;
    }
    int rc = MQ_OK;
    struct stat st;
    /* Check-and-grow under an exclusive lock: without it, an opener that
     * wants fewer slots could ftruncate the file back down after another
     * grew it, and a mapping past the new end would fault. */
    if (mq_shm_lock_ex(fd) < 0) {
        n->sys_errno = errno;
        rc = MQ_ELOCK;
        goto out;
    }
    if (fstat(fd, &st) < 0 ||
        ((uint64_t)st.st_size < need && ftruncate(fd, (off_t)need) < 0)) {
        n->sys_errno = errno;
        rc = MQ_ESIZE;
    }
    flock(fd, LOCK_UN);
    if (rc != MQ_OK)
        goto out;
    void *m = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        n->sys_errno = errno;
        rc = MQ_EMAP;
        goto out;
    }
    int guard = mq_guard_add(m, need, fd, MQ_GUARD_REGROW);
    if (guard < 0) {
        n->sys_errno = errno;
        munmap(m, need);
        rc = MQ_EGUARD;
        goto out;
    }
    n->slots_base = m;
    n->slots = slots;
    n->map_len = need;
    n->fd = fd;
    n->guard = guard;
    return MQ_OK;
out:
    close(fd);
    return rc;
}

void mq_notify_close(mq_notify *n)
{
    if (n->slots_base) { /* else never opened (or all zero bytes): nothing is ours */
        mq_guard_remove(n->guard); /* before unmapping and closing: see guard.h */
        munmap(n->slots_base, n->map_len);
        close(n->fd);
    }
    n->guard = -1;
    n->fd = -1;
    n->slots_base = NULL;
    n->slots = 0;
    n->map_len = 0;
}

uint32_t mq_notify_load(const mq_notify *n, size_t slot)
{
    return __atomic_load_n(&n->slots_base[slot].seq, __ATOMIC_ACQUIRE);
}

#ifdef __linux__
static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}
#endif

void mq_notify_bump_wake(mq_notify *n, size_t slot, int nwake)
{
    mq_notify_slot *s = &n->slots_base[slot];
    /* seq_cst on both sides (see the header): a release increment followed
     * by a load of `waiters` could be reordered before the increment, and a
     * waiter that registered just then would sleep through this bump. */
    __atomic_fetch_add(&s->seq, 1, __ATOMIC_SEQ_CST);
    uint32_t waiters = __atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST);
    if (waiters == 0)
        return;
    /* the doorbells first: their wake-up goes through an event loop, the
     * longer way (the futex sleepers are woken a few hundred ns later) */
    struct mq_bells *b = n->bells;
    if (b && waiters >= MQ_NOTIFY_BELL_UNIT)
        mq_bells_ring(b, slot);
#ifdef __linux__
    if (waiters & (MQ_NOTIFY_BELL_UNIT - 1))
        futex(&s->seq, FUTEX_WAKE, nwake < 1 ? 1 : nwake, NULL);
#else
    (void)nwake;
#endif
}

void mq_notify_bump(mq_notify *n, size_t slot)
{
    mq_notify_bump_wake(n, slot, INT_MAX);
}

int mq_notify_pass(mq_notify *n, size_t slot)
{
    if (__atomic_load_n(&n->slots_base[slot].waiters, __ATOMIC_SEQ_CST) == 0)
        return 0;
    mq_notify_bump_wake(n, slot, 1);
    return 1;
}

void mq_notify_waiters_add(mq_notify *n, size_t slot, int delta)
{
    __atomic_fetch_add(&n->slots_base[slot].waiters, (uint32_t)delta, __ATOMIC_SEQ_CST);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec to_timespec(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

int mq_notify_wait(mq_notify *n, size_t slot, uint32_t expected, int64_t timeout_ns, int flags)
{
    mq_notify_slot *s = &n->slots_base[slot];
    if (__atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) != expected)
        return 1;
    if (timeout_ns <= 0)
        return 0;
    int64_t start = now_ns(), deadline;
    if (__builtin_add_overflow(start, timeout_ns, &deadline))
        deadline = INT64_MAX;

    int rc = 0;
    __atomic_fetch_add(&s->waiters, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        if (__atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) != expected) {
            rc = 1;
            break;
        }
        int64_t left = deadline - now_ns();
        if (left <= 0) {
            rc = 0;
            break;
        }
#ifdef __linux__
        struct timespec ts = to_timespec(left);
        if (futex(&s->seq, FUTEX_WAIT, expected, &ts) == 0) {
            /* woken by a bump (or spuriously: callers re-read anyway) */
            rc = (flags & MQ_NOTIFY_TELL_WOKEN) ? MQ_NOTIFY_WOKEN : 1;
            break;
        }
        int e = errno;
        /* EAGAIN: seq already differed; ETIMEDOUT: the loop re-checks the
         * clock.  Anything else (ENOSYS under odd sandboxes) degrades to the
         * sleep-poll below rather than spinning. */
        if (e == EAGAIN || e == ETIMEDOUT)
            continue;
        if (e == EINTR) {
            if ((flags & MQ_NOTIFY_RETURN_ON_EINTR) &&
                __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) == expected) {
                rc = MQ_EINTR;
                break;
            }
            continue;
        }
#endif
        /* Sleep-poll: at most 1 ms per step, so a bump is seen within ~1 ms. */
        struct timespec step = to_timespec(left < 1000000 ? left : 1000000);
        if (nanosleep(&step, NULL) < 0 && errno == EINTR &&
            (flags & MQ_NOTIFY_RETURN_ON_EINTR) &&
            __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) == expected) {
            rc = MQ_EINTR;
            break;
        }
    }
    __atomic_fetch_sub(&s->waiters, 1, __ATOMIC_SEQ_CST);
    return rc;
}

#ifdef __linux__
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
struct mq_futex_waitv { /* struct futex_waitv of <linux/futex.h> (5.16+) */
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};
#define MQ_FUTEX2_SIZE_U32 0x02u /* shared (no FUTEX2_PRIVATE): the words are in a file map */
#endif

static int any_moved(mq_notify *n, const size_t *slots, const uint32_t *expected, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (__atomic_load_n(&n->slots_base[slots[i]].seq, __ATOMIC_SEQ_CST) != expected[i])
            return 1;
    return 0;
}

int mq_notify_wait_any(mq_notify *n, const size_t *slots, const uint32_t *expected,
                       size_t count, int64_t timeout_ns, int flags)
{
    if (count == 0 || count > MQ_NOTIFY_WAIT_ANY_MAX)
        return MQ_EINVAL;
    if (count == 1)
        return mq_notify_wait(n, slots[0], expected[0], timeout_ns, flags);
    if (any_moved(n, slots, expected, count))
        return 1;
    if (timeout_ns <= 0)
        return 0;
    int64_t start = now_ns(), deadline;
    if (__builtin_add_overflow(start, timeout_ns, &deadline))
        deadline = INT64_MAX;

    int rc = 0;
    for (size_t i = 0; i < count; i++)
        __atomic_fetch_add(&n->slots_base[slots[i]].waiters, 1, __ATOMIC_SEQ_CST);
#ifdef __linux__
    int polling = 0; /* futex_waitv missing: sleep-poll */
    struct mq_futex_waitv w[MQ_NOTIFY_WAIT_ANY_MAX];
    for (size_t i = 0; i < count; i++) {
        w[i].val = expected[i];
        w[i].uaddr = (uint64_t)(uintptr_t)&n->slots_base[slots[i]].seq;
        w[i].flags = MQ_FUTEX2_SIZE_U32;
        w[i].reserved = 0;
    }
#endif
    for (;;) {
        if (any_moved(n, slots, expected, count)) {
            rc = 1;
            break;
        }
        int64_t now = now_ns();
        if (now >= deadline) {
            rc = 0;
            break;
        }
#ifdef __linux__
        if (!polling) {
            /* futex_waitv's timeout is absolute, on the clock named by its last argument */
            struct timespec abs = to_timespec(deadline);
            long r = syscall(SYS_futex_waitv, w, (unsigned)count, 0u, &abs,
                             (int)CLOCK_MONOTONIC);
            if (r >= 0) {
                /* woken (or spuriously: callers re-read anyway) */
                rc = (flags & MQ_NOTIFY_TELL_WOKEN) ? MQ_NOTIFY_WOKEN : 1;
                break;
            }
            int e = errno;
            if (e == EAGAIN || e == ETIMEDOUT)
                continue; /* a value differed / the deadline: the loop re-checks */
            if (e == EINTR) {
                if ((flags & MQ_NOTIFY_RETURN_ON_EINTR) && !any_moved(n, slots, expected, count)) {
                    rc = MQ_EINTR;
                    break;
                }
                continue;
            }
            polling = 1; /* ENOSYS (before 5.16), or a sandbox refusing it */
        }
#endif
        int64_t left = deadline - now;
        struct timespec step = to_timespec(left < 1000000 ? left : 1000000);
        if (nanosleep(&step, NULL) < 0 && errno == EINTR && (flags & MQ_NOTIFY_RETURN_ON_EINTR) &&
            !any_moved(n, slots, expected, count)) {
            rc = MQ_EINTR;
            break;
        }
    }
    for (size_t i = 0; i < count; i++)
        __atomic_fetch_sub(&n->slots_base[slots[i]].waiters, 1, __ATOMIC_SEQ_CST);
    return rc;
}
