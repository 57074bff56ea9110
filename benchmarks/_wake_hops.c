/* _wake_hops.c - the kernel-level cost of each way a waiter in one process learns that a
 * writer in another bumped a shared futex word (no Python): "futex" (a thread in
 * FUTEX_WAIT: the synchronous poll), "thread-pipe" (a bell thread in FUTEX_WAIT writes a
 * pipe an epoll loop watches: mqlite.aio's doorbell listener, D26), "uring" (the epoll
 * loop watches an io_uring whose FUTEX_WAIT completes: mqlite.aio since D41),
 * "uring-defer-evfd" (the same ring set up with IORING_SETUP_DEFER_TASKRUN and an eventfd
 * registered with it, which the loop watches instead: no task-work signal interrupts the
 * loop's epoll_wait; the loop runs the completion itself; tried for D44).  Run through
 * benchmarks/bench_wake_hops.py (compiles this file), or by hand:
 *   cc -O2 -o /tmp/wake_hops benchmarks/_wake_hops.c -lpthread && /tmp/wake_hops 4000 2000 5
 * Arguments: wake-ups per run, rate per second, rounds (modes interleaved), [one mode 0-3].
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_OP_FUTEX_WAIT
#define IORING_OP_FUTEX_WAIT 51
#endif
#define FUTEX2_SIZE_U32 0x02

typedef struct {
    uint32_t word;     /* the notify word */
    uint32_t ring;     /* the bell's ring word */
    volatile int64_t sent_ns;
    volatile int done;
    int64_t lat[];     /* latencies written by the waiter */
} shared_t;

static shared_t *sh;
static int n_msgs;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static long futex(uint32_t *w, int op, uint32_t val, const struct timespec *t)
{
    return syscall(SYS_futex, w, op, val, t, NULL, 0);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* -- waiters ---------------------------------------------------------------------------- */
static void wait_futex(void)
{
    uint32_t seen = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
    for (int i = 0; seen < (uint32_t)n_msgs;) {
        while (__atomic_load_n(&sh->word, __ATOMIC_SEQ_CST) == seen)
            futex(&sh->word, FUTEX_WAIT, seen, NULL);
        seen = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
        sh->lat[i++] = now_ns() - sh->sent_ns;
        sh->done = i;
    }
}

static int pipe_w;
static void *bell_thread(void *arg)
{
    (void)arg;
    uint32_t seen = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
    uint64_t one = 1;
    for (;;) {
        futex(&sh->word, FUTEX_WAIT, seen, NULL);
        uint32_t cur = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
        if (cur == seen)
            continue;
        seen = cur;
        if (write(pipe_w, &one, sizeof one) < 0 && errno != EAGAIN)
            return NULL;
    }
}

static void wait_thread_pipe(void)
{
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
        exit(2);
    pipe_w = p[1];
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p[0]};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    pthread_t t;
    pthread_create(&t, NULL, bell_thread, NULL);
    uint32_t seen = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
    char buf[512];
    for (int i = 0; seen < (uint32_t)n_msgs;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) < 1)
            continue;
        while (read(p[0], buf, sizeof buf) > 0) {
        }
        uint32_t cur = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
        if (cur == seen)
            continue;
        seen = cur;
        sh->lat[i++] = now_ns() - sh->sent_ns;
        sh->done = i;
    }
}

struct uring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static unsigned uring_flags = 0; /* io_uring_setup flags (0, or DEFER_TASKRUN) */
static int uring_setup(struct uring *u)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = uring_flags;
    u->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (u->fd < 0)
        return -1;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    unsigned char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                             u->fd, IORING_OFF_SQ_RING);
    unsigned char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                             u->fd, IORING_OFF_CQ_RING);
    u->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || u->sqes == MAP_FAILED)
        return -1;
    u->sq_head = (unsigned *)(sq + p.sq_off.head);
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

static int uring_futex_wait(struct uring *u, uint32_t *word, uint32_t val)
{
    unsigned tail = *u->sq_tail, idx = tail & *u->sq_mask;
    struct io_uring_sqe *s = &u->sqes[idx];
    memset(s, 0, sizeof *s);
    s->opcode = IORING_OP_FUTEX_WAIT;
    s->fd = FUTEX2_SIZE_U32; /* shared (no FUTEX2_PRIVATE): the word is in a shared mapping */
    s->addr = (uint64_t)(uintptr_t)word;
    s->off = val;            /* addr2: the expected value */
    s->addr3 = 0xffffffffu;  /* FUTEX_BITSET_MATCH_ANY */
    u->sq_array[idx] = idx;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return (int)syscall(__NR_io_uring_enter, u->fd, 1, 0,
                        uring_flags ? IORING_ENTER_GETEVENTS : 0u, NULL, 0);
}

static void wait_uring(void)
{
    struct uring u;
    if (uring_setup(&u) < 0) {
        perror("io_uring");
        exit(3);
    }
    int ep = epoll_create1(0);
    int efd = -1;
    if (uring_flags) {
        efd = eventfd(0, EFD_NONBLOCK);
        if (syscall(__NR_io_uring_register, u.fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0) {
            perror("io_uring_register");
            exit(3);
        }
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = efd >= 0 ? efd : u.fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd >= 0 ? efd : u.fd, &ev);
    uint32_t seen = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
    if (uring_futex_wait(&u, &sh->word, seen) < 0) {
        perror("submit");
        exit(3);
    }
    for (int i = 0; seen < (uint32_t)n_msgs;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) < 1)
            continue;
        if (efd >= 0) { /* consume the eventfd, then run the deferred completion */
            uint64_t v;
            if (read(efd, &v, sizeof v) < 0 && errno != EAGAIN)
                perror("read");
            syscall(__NR_io_uring_enter, u.fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
        }
        unsigned head = *u.cq_head;
        int completed = 0;
        while (head != __atomic_load_n(u.cq_tail, __ATOMIC_ACQUIRE)) {
            if (u.cqes[head & *u.cq_mask].res < 0 && u.cqes[head & *u.cq_mask].res != -EAGAIN)
                fprintf(stderr, "cqe %d\n", u.cqes[head & *u.cq_mask].res);
            head++;
            completed++;
        }
        __atomic_store_n(u.cq_head, head, __ATOMIC_RELEASE);
        uint32_t cur = __atomic_load_n(&sh->word, __ATOMIC_SEQ_CST);
        if (completed)
            uring_futex_wait(&u, &sh->word, cur);
        if (cur == seen)
            continue;
        seen = cur;
        sh->lat[i++] = now_ns() - sh->sent_ns;
        sh->done = i;
    }
}

/* -- one run ----------------------------------------------------------------------------- */
static void run(const char *mode, int rate, int64_t *p50, int64_t *p99)
{
    memset(sh, 0, sizeof *sh + sizeof(int64_t) * (size_t)n_msgs);
    pid_t pid = fork();
    if (pid == 0) {
        if (!strcmp(mode, "futex"))
            wait_futex();
        else if (!strcmp(mode, "thread-pipe"))
            wait_thread_pipe();
        else if (!strcmp(mode, "uring"))
            wait_uring();
        else {
            uring_flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
            wait_uring();
        }
        _exit(0);
    }
    struct timespec settle = {0, 200000000};
    nanosleep(&settle, NULL);
    int64_t gap = 1000000000 / rate, next = now_ns();
    for (int i = 0; i < n_msgs; i++) {
        next += gap;
        int64_t d = next - now_ns();
        if (d > 0) {
            struct timespec ts = {d / 1000000000, d % 1000000000};
            nanosleep(&ts, NULL);
        }
        sh->sent_ns = now_ns();
        __atomic_fetch_add(&sh->word, 1, __ATOMIC_SEQ_CST);
        futex(&sh->word, FUTEX_WAKE, INT_MAX, NULL);
    }
    int st;
    waitpid(pid, &st, 0);
    int got = sh->done;
    qsort(sh->lat, (size_t)got, sizeof(int64_t), cmp64);
    *p50 = sh->lat[got / 2];
    *p99 = sh->lat[(size_t)got * 99 / 100];
}

int main(int argc, char **argv)
{
    n_msgs = argc > 1 ? atoi(argv[1]) : 10000;
    int rate = argc > 2 ? atoi(argv[2]) : 2000;
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    sh = mmap(NULL, sizeof *sh + sizeof(int64_t) * (size_t)n_msgs, PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    const char *modes[] = {"futex", "thread-pipe", "uring", "uring-defer-evfd"};
    int64_t r50[4][64], r99[4][64];
    int only = argc > 4 ? atoi(argv[4]) : -1;
    for (int r = 0; r < rounds && r < 64; r++)
        for (int m = 0; m < 4; m++)
            if (only < 0 || only == m)
            run(modes[m], rate, &r50[m][r], &r99[m][r]);
    printf("%d wake-ups at %d/s, %d rounds interleaved, median over rounds, us\n", n_msgs, rate,
           rounds);
    for (int m = 0; m < 4; m++) {
        qsort(r50[m], (size_t)rounds, sizeof(int64_t), cmp64);
        qsort(r99[m], (size_t)rounds, sizeof(int64_t), cmp64);
        printf("%-17s p50 %7.1f  p99 %8.1f\n", modes[m], r50[m][rounds / 2] / 1000.0,
               r99[m][rounds / 2] / 1000.0);
    }
    return 0;
}
