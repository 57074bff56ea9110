/*
 * LD_PRELOAD shim for tests/crash/test_io_faults.py: fail the Nth write or
 * sync of a broker's data.mdb, the way a dying or full disk would.
 *
 * Build:  gcc -shared -fPIC -O2 -o shim.so _iofault_shim.c -ldl
 *
 * Interposes pwrite, pwrite64, pwritev, pwritev64, write, writev,
 * fdatasync and fsync.  Only calls on a descriptor whose path (readlink of
 * /proc/self/fd/N, cached per descriptor; close() forgets the entry) ends
 * with "/data.mdb" are counted.  Each such call has one kind:
 *
 *   meta   a positional write below MQLITE_FAULT_META_BELOW bytes (default
 *          two pages: LMDB's two meta pages live there)
 *   write  any other write (LMDB's data pages: pwrite, or lseek + writev)
 *   fsync  fdatasync / fsync
 *
 * Environment:
 *   MQLITE_FAULT_OPS     comma-separated kinds that are counted ("write",
 *                        "meta", "fsync"); unset or empty: nothing fails
 *   MQLITE_FAULT_AFTER   N >= 1: the Nth counted call fails (0: never)
 *   MQLITE_FAULT_ERRNO   errno of the failure (default EIO = 5)
 *   MQLITE_FAULT_STICKY  "1": every counted call after the Nth fails too
 *   MQLITE_FAULT_LATE    "1": a failing call is first done for real, then
 *                        reported failed (the data reached the page cache
 *                        but the device said EIO); default: it does nothing
 *
 * A failing call returns -1 with errno set.  A process can re-arm the shim
 * with mqlite_fault_arm() (resets the count) and read its counters with
 * mqlite_fault_stats(), e.g. through ctypes.CDLL(None).
 *
 * Tracing (tests/crash/test_power_loss.py): with MQLITE_TRACE_FILE set, every
 * successful write and sync on data.mdb is appended to that file, in the
 * order the calls returned, as records of a 16-byte little-endian header
 * { u8 kind, u8 pad[3], u32 length, i64 offset } followed by `length` bytes:
 *
 *   'W'  bytes written at `offset` (pwrite*, or write/writev at the file
 *        position read just before the call)
 *   'D'  the same through a descriptor opened with O_DSYNC: durable on return
 *   'S'  fdatasync / fsync returned 0 (length 0): every earlier write is durable
 *
 * mqlite_trace_count() returns the number of records written so far, so a
 * process can mark "this call returned after record N".  A write the shim
 * failed is not traced; a short write is traced with the bytes it wrote.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 4096
enum { K_WRITE = 0, K_META = 1, K_FSYNC = 2, K_N = 3 };

/* per-fd cache: 0 unknown, 1 data.mdb, 2 something else */
static unsigned char fd_kind[MAX_FDS];
static int inited;
static unsigned selected;          /* bit mask of counted kinds */
static long fail_at;               /* N; 0 = never */
static int fail_errno = 5;
static int sticky;
static int late;
static long long meta_below;
static long counted;               /* counted calls so far (all selected kinds) */
static long seen[K_N];             /* data.mdb calls seen per kind */
static long failed[K_N];           /* failures injected per kind */
static unsigned char fd_dsync[MAX_FDS]; /* 0 unknown, 1 O_DSYNC, 2 not */
static int trace_fd = -1;
static long long trace_records;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_close)(int);

static unsigned parse_ops(const char *s)
{
    unsigned m = 0;
    if (s) {
        if (strstr(s, "write"))
            m |= 1u << K_WRITE;
        if (strstr(s, "meta"))
            m |= 1u << K_META;
        if (strstr(s, "fsync"))
            m |= 1u << K_FSYNC;
    }
    return m;
}

static void init(void)
{
    const char *s;
    if (inited)
        return;
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = dlsym(RTLD_NEXT, "pwritev64");
    real_write = dlsym(RTLD_NEXT, "write");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_close = dlsym(RTLD_NEXT, "close");
    selected = parse_ops(getenv("MQLITE_FAULT_OPS"));
    s = getenv("MQLITE_FAULT_AFTER");
    fail_at = s ? atol(s) : 0;
    s = getenv("MQLITE_FAULT_ERRNO");
    if (s && atoi(s) > 0)
        fail_errno = atoi(s);
    s = getenv("MQLITE_FAULT_STICKY");
    sticky = s && s[0] == '1';
    s = getenv("MQLITE_FAULT_LATE");
    late = s && s[0] == '1';
    s = getenv("MQLITE_FAULT_META_BELOW");
    meta_below = (s && atoll(s) > 0) ? atoll(s) : 2LL * sysconf(_SC_PAGESIZE);
    s = getenv("MQLITE_TRACE_FILE");
    if (s && s[0])
        trace_fd = open(s, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    inited = 1;
}

static int is_data_mdb(int fd)
{
    char link[64], target[PATH_MAX];
    ssize_t n;
    static const char suffix[] = "/data.mdb";
    size_t sl = sizeof(suffix) - 1;
    int kind;

    if (fd < 0)
        return 0;
    if (fd < MAX_FDS && fd_kind[fd])
        return fd_kind[fd] == 1;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof(target) - 1);
    kind = 2;
    if (n > 0) {
        target[n] = '\0';
        if ((size_t)n >= sl && memcmp(target + n - sl, suffix, sl) == 0)
            kind = 1;
    }
    if (fd < MAX_FDS)
        fd_kind[fd] = (unsigned char)kind;
    return kind == 1;
}

/* 0: do the call; 1: fail without doing it; 2: do it, then report failure. */
static int should_fail(int fd, int kind)
{
    long n;
    init();
    if (!is_data_mdb(fd))
        return 0;
    __atomic_add_fetch(&seen[kind], 1, __ATOMIC_SEQ_CST);
    if (!(selected & (1u << kind)) || fail_at <= 0)
        return 0;
    n = __atomic_add_fetch(&counted, 1, __ATOMIC_SEQ_CST);
    if (n == fail_at || (sticky && n > fail_at)) {
        __atomic_add_fetch(&failed[kind], 1, __ATOMIC_SEQ_CST);
        return late ? 2 : 1;
    }
    return 0;
}

static int fd_is_dsync(int fd)
{
    int fl;
    if (fd >= 0 && fd < MAX_FDS && fd_dsync[fd])
        return fd_dsync[fd] == 1;
    fl = fcntl(fd, F_GETFL);
    fl = fl >= 0 && (fl & O_DSYNC) == O_DSYNC;
    if (fd >= 0 && fd < MAX_FDS)
        fd_dsync[fd] = fl ? 1 : 2;
    return fl;
}

static void put_all(const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = real_write(trace_fd, c, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            abort(); /* a lost trace record would make every later check meaningless */
        }
        c += w;
        n -= (size_t)w;
    }
}

static void put_header(char kind, uint32_t len, int64_t off)
{
    unsigned char h[16] = { (unsigned char)kind, 0, 0, 0 };
    memcpy(h + 4, &len, 4); /* x86-64 and aarch64 are little-endian, as the reader expects */
    memcpy(h + 8, &off, 8);
    put_all(h, sizeof(h));
}

/* Trace `done` bytes written to fd at off from the iovec (one buffer: iovcnt 1). */
static void trace_write(int fd, off_t off, const struct iovec *iov, int iovcnt, ssize_t done)
{
    int saved = errno, i;
    size_t left;
    if (trace_fd < 0 || done <= 0 || !is_data_mdb(fd))
        return;
    pthread_mutex_lock(&trace_lock);
    put_header(fd_is_dsync(fd) ? 'D' : 'W', (uint32_t)done, (int64_t)off);
    left = (size_t)done;
    for (i = 0; i < iovcnt && left > 0; i++) {
        size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
        put_all(iov[i].iov_base, n);
        left -= n;
    }
    trace_records++;
    pthread_mutex_unlock(&trace_lock);
    errno = saved;
}

static void trace_sync(int fd, int r)
{
    int saved = errno;
    if (trace_fd < 0 || r != 0 || !is_data_mdb(fd))
        return;
    pthread_mutex_lock(&trace_lock);
    put_header('S', 0, 0);
    trace_records++;
    pthread_mutex_unlock(&trace_lock);
    errno = saved;
}

static void trace_one(int fd, off_t off, const void *buf, ssize_t done)
{
    struct iovec v = { (void *)buf, done > 0 ? (size_t)done : 0 };
    trace_write(fd, off, &v, 1, done);
}

/* For ctypes: trace records written so far. */
long long mqlite_trace_count(void)
{
    long long n;
    init();
    pthread_mutex_lock(&trace_lock);
    n = trace_records;
    pthread_mutex_unlock(&trace_lock);
    return n;
}

static int pos_kind(off_t off)
{
    init();
    return (long long)off < meta_below ? K_META : K_WRITE;
}

static int fail_now(void)
{
    errno = fail_errno;
    return -1;
}

/* Re-arm: count `ops` calls from now on and fail the `after`-th (0: never). */
void mqlite_fault_arm(const char *ops, long after, int err, int is_sticky, int is_late)
{
    init();
    __atomic_store_n(&counted, 0, __ATOMIC_SEQ_CST);
    selected = parse_ops(ops);
    fail_errno = err > 0 ? err : 5;
    sticky = is_sticky;
    late = is_late;
    __atomic_store_n(&fail_at, after, __ATOMIC_SEQ_CST);
}

/* For ctypes: out[0..2] = calls seen (write, meta, fsync), out[3..5] = failures injected. */
void mqlite_fault_stats(long *out)
{
    int i;
    for (i = 0; i < K_N; i++) {
        out[i] = __atomic_load_n(&seen[i], __ATOMIC_SEQ_CST);
        out[K_N + i] = __atomic_load_n(&failed[i], __ATOMIC_SEQ_CST);
    }
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
    int f = should_fail(fd, pos_kind(off));
    ssize_t r;
    if (f == 1)
        return fail_now();
    r = real_pwrite(fd, buf, count, off);
    if (f != 2)
        trace_one(fd, off, buf, r);
    if (f == 2)
        return fail_now();
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off)
{
    int f = should_fail(fd, pos_kind(off));
    ssize_t r;
    if (f == 1)
        return fail_now();
    r = real_pwrite64(fd, buf, count, off);
    if (f != 2)
        trace_one(fd, off, buf, r);
    if (f == 2)
        return fail_now();
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    int f = should_fail(fd, pos_kind(off));
    ssize_t r;
    if (f == 1)
        return fail_now();
    r = real_pwritev(fd, iov, iovcnt, off);
    if (f != 2)
        trace_write(fd, off, iov, iovcnt, r);
    if (f == 2)
        return fail_now();
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    int f = should_fail(fd, pos_kind(off));
    ssize_t r;
    if (f == 1)
        return fail_now();
    r = real_pwritev64(fd, iov, iovcnt, off);
    if (f != 2)
        trace_write(fd, off, iov, iovcnt, r);
    if (f == 2)
        return fail_now();
    return r;
}

ssize_t write(int fd, const void *buf, size_t count)
{
    int f = should_fail(fd, K_WRITE);
    ssize_t r;
    off_t pos;
    if (f == 1)
        return fail_now();
    pos = trace_fd >= 0 ? lseek(fd, 0, SEEK_CUR) : -1;
    r = real_write(fd, buf, count);
    if (f != 2 && pos >= 0)
        trace_one(fd, pos, buf, r);
    if (f == 2)
        return fail_now();
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    int f = should_fail(fd, K_WRITE);
    ssize_t r;
    off_t pos;
    if (f == 1)
        return fail_now();
    pos = trace_fd >= 0 ? lseek(fd, 0, SEEK_CUR) : -1;
    r = real_writev(fd, iov, iovcnt);
    if (f != 2 && pos >= 0)
        trace_write(fd, pos, iov, iovcnt, r);
    if (f == 2)
        return fail_now();
    return r;
}

int fdatasync(int fd)
{
    int f = should_fail(fd, K_FSYNC);
    int r;
    if (f == 1)
        return fail_now();
    r = real_fdatasync(fd);
    if (f != 2)
        trace_sync(fd, r);
    if (f == 2)
        return fail_now();
    return r;
}

int fsync(int fd)
{
    int f = should_fail(fd, K_FSYNC);
    int r;
    if (f == 1)
        return fail_now();
    r = real_fsync(fd);
    if (f != 2)
        trace_sync(fd, r);
    if (f == 2)
        return fail_now();
    return r;
}

int close(int fd)
{
    init();
    if (fd >= 0 && fd < MAX_FDS) {
        fd_kind[fd] = 0;
        fd_dsync[fd] = 0;
    }
    return real_close(fd);
}
