#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate */
#endif
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct guard {
    uintptr_t start; /* 0: free slot; published last, withdrawn first */
    uintptr_t end;
    uintptr_t zeroed; /* MQ_GUARD_ZERO: lowest page mapped to zeros, 0 if none */
    uintptr_t filled; /* MQ_GUARD_FILL: the page the last repair allocated, 0 if none */
    int fd;
    int mode;
} guard;

#define CLAIMED ((uintptr_t)1) /* a slot being filled: the handler skips it */

static guard guards[MQ_GUARD_MAX];
static uint64_t repaired;
static struct sigaction previous;
static uintptr_t page_mask;

static int repair(guard *g, uintptr_t addr)
{
    if (g->mode == MQ_GUARD_REGROW) {
        struct stat st;
        off_t need = (off_t)(g->end - g->start);
        if (fstat(g->fd, &st) < 0)
            return 0;
        if (st.st_size >= need)
            return 1; /* grown meanwhile (by another process's handler or open) */
        return ftruncate(g->fd, need) == 0;
    }
    uintptr_t page = addr & page_mask;
    if (g->mode == MQ_GUARD_FILL) {
        struct stat st;
        off_t off = (off_t)(page - g->start);
        off_t len = (off_t)MQ_GUARD_FILL_CHUNK;
        off_t range = (off_t)(g->end - g->start);
        if (len > range - off)
            len = range - off;
        if (fstat(g->fd, &st) < 0)
            return 0;
        if (off >= st.st_size) {
            /* Past the end (the file was cut back, D47): extend it over the page
             * and a stretch after it.  A read then sees zeros; a write allocates
             * as any write to a file does (and faults again if it cannot). */
            __atomic_store_n(&g->filled, 0, __ATOMIC_RELEASE);
            return ftruncate(g->fd, off + len) == 0;
        }
        /* Inside the file: a hole whose block the file system could not give.
         * The same page again right after allocating it is not a hole (an I/O
         * error): give up rather than loop. */
        if (__atomic_exchange_n(&g->filled, page, __ATOMIC_ACQ_REL) == page)
            return 0;
        /* fallocate(2) is a plain system call: safe in a signal handler. */
        return fallocate(g->fd, 0, off, len) == 0;
    }
    void *m = mmap((void *)page, g->end - page, PROT_READ,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return 0;
    uintptr_t low = __atomic_load_n(&g->zeroed, __ATOMIC_ACQUIRE);
    while ((low == 0 || page < low) &&
           !__atomic_compare_exchange_n(&g->zeroed, &low, page, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
        ;
    return 1;
}

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    int saved = errno;
    if (si && si->si_code > 0) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        for (int i = 0; i < MQ_GUARD_MAX; i++) {
            uintptr_t start = __atomic_load_n(&guards[i].start, __ATOMIC_ACQUIRE);
            if (start > CLAIMED && addr >= start && addr < guards[i].end && repair(&guards[i], addr)) {
                __atomic_fetch_add(&repaired, 1, __ATOMIC_SEQ_CST);
                errno = saved;
                return; /* the faulting access is retried */
            }
        }
    }
    errno = saved;
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, si, ctx);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* The default action: returning re-runs the access, which faults again
     * and now kills the process as if no handler had been installed. */
    signal(sig, SIG_DFL);
}

int mq_guard_install(void)
{
    struct sigaction cur, sa;
    if (sigaction(SIGBUS, NULL, &cur) < 0)
        return MQ_EGUARD;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
        return MQ_OK;
    page_mask = ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) < 0)
        return MQ_EGUARD;
    return MQ_OK;
}

int mq_guard_add(void *start, size_t len, int fd, int mode)
{
    if (!start || len == 0 ||
        (mode != MQ_GUARD_REGROW && mode != MQ_GUARD_ZERO && mode != MQ_GUARD_FILL) || fd < 0 ||
        mq_guard_install() < 0)
        return MQ_EGUARD;
    for (int i = 0; i < MQ_GUARD_MAX; i++) {
        uintptr_t free_slot = 0;
        /* Claim the slot (CLAIMED is never a published start) before filling it. */
        if (!__atomic_compare_exchange_n(&guards[i].start, &free_slot, CLAIMED, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        guards[i].end = (uintptr_t)start + len;
        guards[i].zeroed = 0;
        guards[i].filled = 0;
        guards[i].fd = fd;
        guards[i].mode = mode;
        __atomic_store_n(&guards[i].start, (uintptr_t)start, __ATOMIC_RELEASE);
        return i;
    }
    return MQ_EGUARD;
}

void mq_guard_remove(int id)
{
    if (id >= 0 && id < MQ_GUARD_MAX)
        __atomic_store_n(&guards[id].start, 0, __ATOMIC_RELEASE);
}

int mq_guard_restore(int id)
{
    if (id < 0 || id >= MQ_GUARD_MAX)
        return MQ_OK;
    guard *g = &guards[id];
    if (__atomic_load_n(&g->start, __ATOMIC_ACQUIRE) <= CLAIMED || g->mode != MQ_GUARD_ZERO)
        return MQ_OK;
    uintptr_t low = __atomic_exchange_n(&g->zeroed, 0, __ATOMIC_ACQ_REL);
    if (low == 0)
        return MQ_OK;
    /* The same file pages at the same addresses: a reader inside the range
     * sees zeros or the file, and a page still past the end faults again. */
    void *m = mmap((void *)low, g->end - low, PROT_READ, MAP_SHARED | MAP_FIXED, g->fd,
                   (off_t)(low - g->start));
    return m == MAP_FAILED ? MQ_EGUARD : MQ_OK;
}

uint64_t mq_guard_faults(void)
{
    return __atomic_load_n(&repaired, __ATOMIC_SEQ_CST);
}
