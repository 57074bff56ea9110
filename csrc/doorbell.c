#include "doorbell.h"

#include "shmfile.h"
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
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

static uint32_t *u32_at(const mq_bells *b, size_t off)
{
    return (uint32_t *)(void *)(b->base + off);
}

static size_t entry_off(const mq_bells *b, int index)
{
    return MQ_BELLS_HEADER + (size_t)index * b->entry_len;
}

static uint32_t *ring_of(const mq_bells *b, int index)
{
    return u32_at(b, entry_off(b, index));
}

static uint64_t *bits_of(const mq_bells *b, int index)
{
    return (uint64_t *)(void *)(b->base + entry_off(b, index) + 8);
}

int mq_bells_open(mq_bells *b, const char *path, size_t slots, unsigned mode)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
    b->guard = -1;
    if (slots == 0 || slots > (1u << 24))
        return MQ_EINVAL;
    size_t words = (slots + 63) / 64;
    size_t entry_len = 8 + 8 * words;
    size_t need = MQ_BELLS_HEADER + MQ_BELLS_ENTRIES * entry_len;
    int fd = mq_shm_open(path, mode);
    if (fd < 0) {
        b->sys_errno = errno;
        return MQ_EOPEN;
    }
    int rc = MQ_OK;
    struct stat st;
    if (mq_shm_lock_ex(fd) < 0) {
        b->sys_errno = errno;
        close(fd);
        return MQ_ELOCK;
    }
    if (fstat(fd, &st) < 0 ||
        ((uint64_t)st.st_size < need && ftruncate(fd, (off_t)need) < 0)) {
        b->sys_errno = errno;
        rc = MQ_ESIZE;
    }
    void *m = MAP_FAILED;
    if (rc == MQ_OK) {
        m = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            b->sys_errno = errno;
            rc = MQ_EMAP;
        }
    }
    if (rc == MQ_OK) {
        uint32_t *h = (uint32_t *)m;
        if (__atomic_load_n(&h[0], __ATOMIC_ACQUIRE) != MQ_BELLS_MAGIC) {
            /* first opener (under flock): write the header, magic last */
            h[1] = MQ_BELLS_VERSION;
            h[2] = MQ_BELLS_ENTRIES;
            h[3] = (uint32_t)slots;
            __atomic_store_n(&h[0], MQ_BELLS_MAGIC, __ATOMIC_RELEASE);
        } else if (h[1] != MQ_BELLS_VERSION || h[2] != MQ_BELLS_ENTRIES ||
                   h[3] != (uint32_t)slots) {
            rc = MQ_EINVAL;
        }
    }
    flock(fd, LOCK_UN);
    if (rc != MQ_OK) {
        if (m != MAP_FAILED)
            munmap(m, need);
        close(fd);
        return rc;
    }
    int guard = mq_guard_add(m, need, fd, MQ_GUARD_REGROW);
    if (guard < 0) {
        b->sys_errno = errno;
        munmap(m, need);
        close(fd);
        return MQ_EGUARD;
    }
    b->base = m;
    b->map_len = need;
    b->slots = slots;
    b->entry_len = entry_len;
    b->fd = fd;
    b->guard = guard;
    return MQ_OK;
}

static int lock_entry(mq_bells *b, int index, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)entry_off(b, index);
    fl.l_len = 1;
    return fcntl(b->fd, F_OFD_SETLK, &fl);
}

static void clear_bits(mq_bells *b, int index)
{
    uint64_t *bits = bits_of(b, index);
    for (size_t w = 0; w < (b->slots + 63) / 64; w++)
        __atomic_store_n(&bits[w], 0, __ATOMIC_SEQ_CST);
}

int mq_bells_claim(mq_bells *b)
{
    b->sys_errno = 0;
    for (int i = 0; i < MQ_BELLS_ENTRIES; i++) {
        if (b->mine[i])
            continue;
        if (lock_entry(b, i, F_WRLCK) < 0) {
            if (errno == EAGAIN || errno == EACCES)
                continue; /* owned by another process */
            b->sys_errno = errno;
            return MQ_ELOCK;
        }
        clear_bits(b, i);
        __atomic_fetch_add(u32_at(b, entry_off(b, i) + 4), 1, __ATOMIC_SEQ_CST);
        uint32_t *high = u32_at(b, 16);
        uint32_t h = __atomic_load_n(high, __ATOMIC_SEQ_CST);
        while (h < (uint32_t)i + 1 &&
               !__atomic_compare_exchange_n(high, &h, (uint32_t)i + 1, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST))
            ;
        b->mine[i] = 1;
        return i;
    }
    b->sys_errno = EBUSY;
    return MQ_ELOCK;
}

#ifdef __linux__
static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}
#endif

void mq_bells_kick(mq_bells *b, int index)
{
    uint32_t *ring = ring_of(b, index);
    __atomic_fetch_add(ring, 1, __ATOMIC_SEQ_CST);
#ifdef __linux__
    futex(ring, FUTEX_WAKE, INT_MAX, NULL);
#endif
}

void mq_bells_release(mq_bells *b, int index)
{
    if (index < 0 || index >= MQ_BELLS_ENTRIES || !b->mine[index] || !b->base)
        return;
    clear_bits(b, index);
    mq_bells_kick(b, index);
    lock_entry(b, index, F_UNLCK);
    b->mine[index] = 0;
}

void mq_bells_close(mq_bells *b)
{
    if (b->base) {
        for (int i = 0; i < MQ_BELLS_ENTRIES; i++)
            if (b->mine[i])
                mq_bells_release(b, i);
        mq_guard_remove(b->guard);
        munmap(b->base, b->map_len);
        close(b->fd);
    }
    b->base = NULL;
    b->fd = -1;
    b->guard = -1;
}

void mq_bells_arm(mq_bells *b, int index, size_t slot)
{
    __atomic_fetch_or(&bits_of(b, index)[slot / 64], (uint64_t)1 << (slot % 64),
                      __ATOMIC_SEQ_CST);
}

void mq_bells_disarm(mq_bells *b, int index, size_t slot)
{
    __atomic_fetch_and(&bits_of(b, index)[slot / 64], ~((uint64_t)1 << (slot % 64)),
                       __ATOMIC_SEQ_CST);
}

uint32_t mq_bells_load(const mq_bells *b, int index)
{
    return __atomic_load_n(ring_of(b, index), __ATOMIC_ACQUIRE);
}

uint32_t *mq_bells_ring_word(const mq_bells *b, int index)
{
    return ring_of(b, index);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int mq_bells_wait(mq_bells *b, int index, uint32_t expected, int64_t timeout_ns)
{
    uint32_t *ring = ring_of(b, index);
    int64_t deadline;
    if (__builtin_add_overflow(now_ns(), timeout_ns, &deadline))
        deadline = INT64_MAX;
    for (;;) {
        if (__atomic_load_n(ring, __ATOMIC_SEQ_CST) != expected)
            return 1;
        int64_t left = deadline - now_ns();
        if (left <= 0)
            return 0;
#ifdef __linux__
        struct timespec ts = {(time_t)(left / 1000000000), (long)(left % 1000000000)};
        if (futex(ring, FUTEX_WAIT, expected, &ts) == 0)
            return 1;
        if (errno == EAGAIN || errno == ETIMEDOUT)
            continue;
        if (errno == EINTR)
            return MQ_EINTR;
#endif
        /* sleep-poll: at most 1 ms per step */
        int64_t step_ns = left < 1000000 ? left : 1000000;
        struct timespec step = {0, (long)step_ns};
        if (nanosleep(&step, NULL) < 0 && errno == EINTR)
            return MQ_EINTR;
    }
}

void mq_bells_listen(mq_bells *b, int index, int fd, const volatile int *stop)
{
    uint32_t seen = mq_bells_load(b, index);
    uint64_t one = 1;
    while (!*stop) {
        mq_bells_wait(b, index, seen, 250000000); /* EINTR or timeout: re-check and go on */
        uint32_t cur = mq_bells_load(b, index);
        if (cur == seen)
            continue;
        seen = cur;
        ssize_t w = write(fd, &one, sizeof(one));
        (void)w;
    }
}

void mq_bells_ring(const mq_bells *b, size_t slot)
{
    uint32_t high = __atomic_load_n(u32_at(b, 16), __ATOMIC_SEQ_CST);
    if (high > MQ_BELLS_ENTRIES)
        high = MQ_BELLS_ENTRIES; /* a damaged header costs a scan, never a read past the map */
    uint64_t mask = (uint64_t)1 << (slot % 64);
    for (uint32_t i = 0; i < high; i++) {
        if (!(__atomic_load_n(&bits_of(b, (int)i)[slot / 64], __ATOMIC_SEQ_CST) & mask))
            continue;
        uint32_t *ring = ring_of(b, (int)i);
        __atomic_fetch_add(ring, 1, __ATOMIC_SEQ_CST);
#ifdef __linux__
        futex(ring, FUTEX_WAKE, INT_MAX, NULL);
#endif
    }
}
