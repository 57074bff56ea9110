/*
 * LD_PRELOAD shim for benchmarks/acceptance_producer.py: make every
 * fsync() and fdatasync() take MQLITE_BENCH_FSYNC_US microseconds longer,
 * the way a device with a slower cache flush would (consumer SSDs and cloud
 * block volumes often take 0.5-2 ms; this machine's virtual disk ~0.2 ms).
 *
 * Contract: the real call is made first and its result and errno returned
 * unchanged; the delay is added after it (a sleep, no CPU burnt).  Unset or
 * non-positive MQLITE_BENCH_FSYNC_US: no delay.  Benchmark use only.
 *
 * Build:  gcc -shared -fPIC -O2 -Wall -Wextra -o slow_fsync.so _slow_fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

static long delay_us(void)
{
    static long cached = -1;
    if (cached < 0) {
        const char *s = getenv("MQLITE_BENCH_FSYNC_US");
        long v = s ? strtol(s, NULL, 10) : 0;
        cached = v > 0 ? v : 0;
    }
    return cached;
}

/* Sleep the configured delay, keeping errno; return the real call's result. */
static int pause_after_sync(int result)
{
    long us = delay_us();
    if (us > 0) {
        int saved = errno;
        struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        errno = saved;
    }
    return result;
}

typedef int (*sync_fn)(int);

static sync_fn real_fn(sync_fn *slot, const char *name)
{
    if (!*slot)
        *slot = (sync_fn)dlsym(RTLD_NEXT, name);
    return *slot;
}

int fdatasync(int fd)
{
    static sync_fn real;
    return pause_after_sync(real_fn(&real, "fdatasync")(fd));
}

int fsync(int fd)
{
    static sync_fn real;
    return pause_after_sync(real_fn(&real, "fsync")(fd));
}
