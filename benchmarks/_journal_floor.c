/* _journal_floor.c - the floor of a design that issue 14 keeps pointing to: P processes each
 * send one 100-byte record at a time and wait until it is durable, and whoever holds the
 * lock appends every waiting record to one log file with ONE fdatasync (the step a
 * checksummed journal in front of LMDB would add; D43, D58, D64's closing note).  No
 * LMDB, no Python: what the device and the hand-over between processes allow at best.
 *
 * Protocol (a simplified csrc/combine.h): a shared array of P slots, one per process,
 * each {state word, 100-byte record}.  A sender writes its record, sets its state FILLED
 * (1), then loops: DONE (2)? return.  Else try the lock (flock LOCK_EX|LOCK_NB on the
 * lock file); holding it, it collects every FILLED slot, writes them with one pwrite
 * at the log's end (4-byte length + record each), fdatasync()s, sets each DONE and wakes
 * its owner (FUTEX_WAKE), then unlocks and wakes one owner of a slot still FILLED (the
 * hand-over).  Not holding it, it waits on its state word (FUTEX_WAIT, 2 ms bound).
 *
 * Log modes: "append" (the file grows: each fdatasync also writes the inode's new size),
 * "prezeroed" (the file is written with zeros first and records overwrite it in place:
 * fdatasync writes data only, as databases do with their write-ahead logs) and "nosync"
 * (appends, no fdatasync: what the hand-over between the processes costs alone).
 *
 *   cc -O2 -o /tmp/journal_floor benchmarks/_journal_floor.c
 *   /tmp/journal_floor DIR PROCS SENDS_PER_PROC append|prezeroed|nosync [GATHER_US]
 * GATHER_US: a leader that finds fewer than PROCS records waiting sleeps that long once
 * before it collects (csrc/combine.h's gather, D35/D46).
 * prints: procs, sends, seconds, msgs/s, flushes, msgs per flush.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REC 100
#define MAXP 256

typedef struct {
    uint32_t state; /* 0 free, 1 filled, 2 done */
    uint32_t pad;
    char rec[REC];
} slot_t;

typedef struct {
    uint64_t log_end;   /* next write offset (under the lock) */
    uint64_t flushes;   /* fdatasyncs done */
    uint32_t start;     /* start gate: all processes spin-wait on it (futex) */
    uint32_t pad;
    slot_t slots[MAXP];
} shared_t;

static shared_t *sh;
static int nprocs;
static long gather_us; /* leader: sleep this long once when not every slot is FILLED */
static int nosync;     /* mode "nosync": no fdatasync (the hand-over alone) */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long futex(uint32_t *w, int op, uint32_t val, const struct timespec *t)
{
    return syscall(SYS_futex, w, op, val, t, NULL, 0);
}

static void lead(int logfd)
{
    static char buf[MAXP * (REC + 4)];
    int taken[MAXP];
    int n = 0;
    size_t len = 0;
    if (gather_us > 0) {
        int filled = 0;
        for (int i = 0; i < nprocs; i++)
            filled += __atomic_load_n(&sh->slots[i].state, __ATOMIC_ACQUIRE) == 1;
        if (filled < nprocs) {
            struct timespec g = {0, gather_us * 1000};
            nanosleep(&g, NULL);
        }
    }
    for (int i = 0; i < nprocs; i++) {
        if (__atomic_load_n(&sh->slots[i].state, __ATOMIC_ACQUIRE) != 1)
            continue;
        uint32_t l = REC;
        memcpy(buf + len, &l, 4);
        memcpy(buf + len + 4, sh->slots[i].rec, REC);
        len += 4 + REC;
        taken[n++] = i;
    }
    if (n == 0)
        return;
    if (pwrite(logfd, buf, len, (off_t)sh->log_end) != (ssize_t)len) {
        perror("pwrite");
        exit(2);
    }
    sh->log_end += len;
    if (!nosync && fdatasync(logfd) < 0) {
        perror("fdatasync");
        exit(2);
    }
    sh->flushes++;
    for (int k = 0; k < n; k++) {
        __atomic_store_n(&sh->slots[taken[k]].state, 2, __ATOMIC_RELEASE);
        futex(&sh->slots[taken[k]].state, FUTEX_WAKE, INT_MAX, NULL);
    }
}

static void sender(int me, int sends, const char *lockpath, int logfd)
{
    int lockfd = open(lockpath, O_RDWR);
    if (lockfd < 0) {
        perror("open lock");
        exit(2);
    }
    while (__atomic_load_n(&sh->start, __ATOMIC_ACQUIRE) == 0)
        futex(&sh->start, FUTEX_WAIT, 0, NULL);
    slot_t *s = &sh->slots[me];
    struct timespec bound = {0, 2000000};
    for (int j = 0; j < sends; j++) {
        memset(s->rec, 'a' + (j % 26), REC);
        __atomic_store_n(&s->state, 1, __ATOMIC_RELEASE);
        for (;;) {
            if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 2)
                break;
            if (flock(lockfd, LOCK_EX | LOCK_NB) == 0) {
                lead(logfd);
                flock(lockfd, LOCK_UN);
                for (int i = 0; i < nprocs; i++) /* hand over to one that waits */
                    if (__atomic_load_n(&sh->slots[i].state, __ATOMIC_ACQUIRE) == 1) {
                        futex(&sh->slots[i].state, FUTEX_WAKE, 1, NULL);
                        break;
                    }
                continue;
            }
            futex(&s->state, FUTEX_WAIT, 1, &bound);
        }
        __atomic_store_n(&s->state, 0, __ATOMIC_RELEASE);
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s DIR PROCS SENDS_PER_PROC append|prezeroed|nosync [GATHER_US]\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    nprocs = atoi(argv[2]);
    int sends = atoi(argv[3]);
    int prezeroed = strcmp(argv[4], "prezeroed") == 0;
    nosync = strcmp(argv[4], "nosync") == 0;
    gather_us = argc > 5 ? atol(argv[5]) : 0;
    if (nprocs < 1 || nprocs > MAXP || sends < 1)
        return 2;
    char logpath[PATH_MAX], lockpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s/journal.log", dir);
    snprintf(lockpath, sizeof lockpath, "%s/journal.lock", dir);
    int logfd = open(logpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int lk = open(lockpath, O_RDWR | O_CREAT, 0600);
    if (logfd < 0 || lk < 0) {
        perror("open");
        return 2;
    }
    close(lk);
    if (prezeroed) {
        size_t total = (size_t)nprocs * (size_t)sends * (REC + 4) + (1 << 20);
        static char zeros[1 << 20];
        for (size_t off = 0; off < total; off += sizeof zeros)
            if (write(logfd, zeros, sizeof zeros) != (ssize_t)sizeof zeros) {
                perror("write");
                return 2;
            }
        if (fsync(logfd) < 0)
            return 2;
    }
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 2;
    memset(sh, 0, sizeof *sh);
    for (int p = 0; p < nprocs; p++)
        if (fork() == 0)
            sender(p, sends, lockpath, logfd);
    struct timespec settle = {0, 100000000};
    nanosleep(&settle, NULL);
    double t0 = now_s();
    __atomic_store_n(&sh->start, 1, __ATOMIC_RELEASE);
    futex(&sh->start, FUTEX_WAKE, INT_MAX, NULL);
    int st;
    while (wait(&st) > 0) {
    }
    double dt = now_s() - t0;
    long total = (long)nprocs * sends;
    printf("%d %ld %.3f %.0f %llu %.2f\n", nprocs, total, dt, total / dt,
           (unsigned long long)sh->flushes, (double)total / (double)sh->flushes);
    return 0;
}
