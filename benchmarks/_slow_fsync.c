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

static void pause_after_sync(void)
{
    long us = delay_us();
    if (us > 0) {
        int saved = errno;
        struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        errno = saved;
    }
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    pause_after_sync();
    return r;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    pause_after_sync();
    return r;
}
