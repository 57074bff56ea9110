#include "doorbell.h"

#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t *u32_at(const mq_bells *b, size_t off)
{
    return (uint32_t *)(void *)(b->base + off);
}

static size_t entry_off(const mq_bells *b, int index)
{
    return MQ_BELLS_HEADER + (size_t)index * b->entry_len;
}

static uint64_t *bits_of(const mq_bells *b, int index)
{
    return (uint64_t *)(void *)(b->base + entry_off(b, index) + 8);
}

/* The FIFO path of entry `index`; 0, or -1 when it does not fit. */
static int fifo_path(const mq_bells *b, int index, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%d", b->dir, index);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

static int open_table(const char *path, unsigned mode)
{
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
        if (fd >= 0) {
            if (fchmod(fd, (mode_t)mode) < 0) { /* exact mode, umask not applied */
                int e = errno;
                close(fd);
                errno = e;
                return -1;
            }
            return fd;
        }
        if (errno != EEXIST)
            return -1;
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0 || errno != ENOENT)
            return fd;
    }
}

int mq_bells_open(mq_bells *b, const char *path, const char *dir, size_t slots,
                  unsigned mode, unsigned dir_mode)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
    b->guard = -1;
    if (slots == 0 || slots > (1u << 24) || strlen(dir) + 16 >= MQ_BELLS_PATH_MAX)
        return MQ_EINVAL;
    size_t words = (slots + 63) / 64;
    size_t entry_len = 8 + 8 * words;
    size_t need = MQ_BELLS_HEADER + MQ_BELLS_ENTRIES * entry_len;
    int fd = open_table(path, mode);
    if (fd < 0) {
        b->sys_errno = errno;
        return MQ_EOPEN;
    }
    int rc = MQ_OK;
    struct stat st;
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            b->sys_errno = errno;
            close(fd);
            return MQ_ELOCK;
        }
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
    b->dir_mode = dir_mode;
    b->fifo_mode = mode;
    strcpy(b->dir, dir);
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

/* mkdir the FIFO directory if missing; refuse anything but a real directory. */
static int ensure_dir(mq_bells *b)
{
    if (mkdir(b->dir, (mode_t)b->dir_mode) == 0) {
        if (chmod(b->dir, (mode_t)b->dir_mode) < 0)
            return -1;
        return 0;
    }
    if (errno != EEXIST)
        return -1;
    struct stat st;
    if (lstat(b->dir, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
        return -1;
    }
    return 0;
}

int mq_bells_claim(mq_bells *b, int *fd_out)
{
    b->sys_errno = 0;
    if (ensure_dir(b) < 0) {
        b->sys_errno = errno;
        return MQ_EOPEN;
    }
    for (int i = 0; i < MQ_BELLS_ENTRIES; i++) {
        if (b->mine[i] || lock_entry(b, i, F_WRLCK) < 0)
            continue;
        char path[MQ_BELLS_PATH_MAX];
        int fd = -1;
        if (fifo_path(b, i, path, sizeof(path)) == 0) {
            clear_bits(b, i);
            __atomic_fetch_add(u32_at(b, entry_off(b, i)), 1, __ATOMIC_SEQ_CST);
            if ((unlink(path) == 0 || errno == ENOENT) &&
                mkfifo(path, (mode_t)b->fifo_mode) == 0)
                fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
            if (fd >= 0 && fchmod(fd, (mode_t)b->fifo_mode) < 0) {
                int e = errno;
                close(fd);
                errno = e;
                fd = -1;
            }
        } else {
            errno = ENAMETOOLONG;
        }
        if (fd < 0) {
            b->sys_errno = errno;
            lock_entry(b, i, F_UNLCK);
            return MQ_EOPEN;
        }
        uint32_t *high = u32_at(b, 16);
        uint32_t h = __atomic_load_n(high, __ATOMIC_SEQ_CST);
        while (h < (uint32_t)i + 1 &&
               !__atomic_compare_exchange_n(high, &h, (uint32_t)i + 1, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST))
            ;
        b->mine[i] = 1;
        *fd_out = fd;
        return i;
    }
    b->sys_errno = EBUSY;
    return MQ_ELOCK;
}

void mq_bells_release(mq_bells *b, int index, int fd)
{
    if (index < 0 || index >= MQ_BELLS_ENTRIES || !b->mine[index] || !b->base)
        return;
    clear_bits(b, index);
    if (fd >= 0)
        close(fd);
    char path[MQ_BELLS_PATH_MAX];
    if (fifo_path(b, index, path, sizeof(path)) == 0)
        unlink(path);
    lock_entry(b, index, F_UNLCK);
    b->mine[index] = 0;
}

void mq_bells_close(mq_bells *b)
{
    if (b->base) {
        for (int i = 0; i < MQ_BELLS_ENTRIES; i++)
            if (b->mine[i])
                mq_bells_release(b, i, -1); /* descriptors are the binding's to close */
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

void mq_bells_ring(const mq_bells *b, size_t slot)
{
    uint32_t high = __atomic_load_n(u32_at(b, 16), __ATOMIC_SEQ_CST);
    if (high > MQ_BELLS_ENTRIES)
        high = MQ_BELLS_ENTRIES; /* a damaged header costs a scan, never a read past the map */
    uint64_t mask = (uint64_t)1 << (slot % 64);
    for (uint32_t i = 0; i < high; i++) {
        if (!(__atomic_load_n(&bits_of(b, (int)i)[slot / 64], __ATOMIC_SEQ_CST) & mask))
            continue;
        char path[MQ_BELLS_PATH_MAX];
        if (fifo_path(b, (int)i, path, sizeof(path)) < 0)
            continue;
        int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue; /* ENXIO: owner died; ENOENT: released meanwhile */
        char one = 1;
        ssize_t w = write(fd, &one, 1); /* EAGAIN: full, unread rings are pending anyway */
        (void)w;
        close(fd);
    }
}
