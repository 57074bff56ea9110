#include "combine.h"

#include "guard.h"
#include "shmfile.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

/* Field offsets inside one slot (see the layout in combine.h). */
#define W_OFF 0
#define OWNER_OFF 8
#define LEN_OFF 12
#define STATUS_OFF 16
#define FLAGS_OFF 20
#define R0_OFF 24
#define R1_OFF 32
#define R2_OFF 40

static inline uint8_t *slot_at(const mq_comb *c, uint32_t idx)
{
    return c->base + MQ_COMB_HEADER + (size_t)idx * (MQ_COMB_SLOT_HEADER + c->slot_bytes);
}

static inline uint64_t *word_of(const mq_comb *c, uint32_t idx)
{
    return (uint64_t *)(void *)(slot_at(c, idx) + W_OFF);
}

static inline uint64_t *next_ticket(const mq_comb *c)
{
    return (uint64_t *)(void *)(c->base + 16);
}

/* The gather hints of the header (see combine.h). */
#define FILL_SEQ_OFF 40
#define HOLDER_OFF 44 /* the holder word: MQ_COMB_H_GATHERING | MQ_COMB_H_LEADING */
#define ACTIVE_OFF 48
#define COMMIT_US_OFF 52
#define LAST_SEND_OFF 56

static inline uint32_t *hdr_u32(const mq_comb *c, size_t off)
{
    return (uint32_t *)(void *)(c->base + off);
}

/* The kernel's boot id (16 bytes from the 36-character UUID text); zeros when
 * unreadable (then no check is made). */
static void read_boot_id(uint8_t out[16])
{
    char text[64];
    memset(out, 0, 16);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 32)
        return;
    int k = 0;
    for (ssize_t i = 0; i < n && k < 32; i++) {
        char ch = text[i];
        int v;
        if (ch >= '0' && ch <= '9')
            v = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            v = ch - 'a' + 10;
        else
            continue;
        out[k / 2] = (uint8_t)(out[k / 2] | (k % 2 ? v : v << 4));
        k++;
    }
    if (k != 32)
        memset(out, 0, 16);
}

static int init_file(int fd, size_t need, uint32_t nslots, uint32_t slot_bytes,
                     const uint8_t boot[16], uint64_t floor)
{
    uint8_t hdr[MQ_COMB_HEADER];
    struct timespec ts;
    uint32_t v;
    uint64_t seed;
    memset(hdr, 0, sizeof hdr);
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (seed < floor)
        seed = floor;
    v = MQ_COMB_MAGIC;
    memcpy(hdr, &v, 4);
    v = MQ_COMB_VERSION;
    memcpy(hdr + 4, &v, 4);
    memcpy(hdr + 8, &nslots, 4);
    memcpy(hdr + 12, &slot_bytes, 4);
    memcpy(hdr + 16, &seed, 8);
    memcpy(hdr + 24, boot, 16);
    /* truncate to 0 first: every slot reads FREE (zero) again */
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)need) < 0 ||
        pwrite(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr)
        return -1;
    return 0;
}

int mq_comb_open(mq_comb *c, const char *path, uint32_t nslots, uint32_t slot_bytes,
                 unsigned mode)
{
    uint8_t boot[16];
    read_boot_id(boot);
    c->base = NULL;
    c->map_len = 0;
    c->nslots = 0;
    c->slot_bytes = 0;
    c->sys_errno = 0;
    c->fd = -1;
    c->guard = -1;
    if (nslots == 0 || nslots > (1u << 20) || slot_bytes < 64 || slot_bytes % 64 ||
        slot_bytes > (1u << 24))
        return MQ_EINVAL;
    size_t need = MQ_COMB_HEADER + (size_t)nslots * (MQ_COMB_SLOT_HEADER + slot_bytes);
    int fd = mq_shm_open(path, mode);
    if (fd < 0) {
        c->sys_errno = errno;
        return MQ_EOPEN;
    }
    int rc = MQ_OK;
    struct stat st;
    if (mq_shm_lock_ex(fd) < 0) {
        c->sys_errno = errno;
        close(fd);
        return MQ_ELOCK;
    }
    if (fstat(fd, &st) < 0) {
        c->sys_errno = errno;
        rc = MQ_ESIZE;
    } else if (st.st_size == 0) {
        if (init_file(fd, need, nslots, slot_bytes, boot, 0) < 0) {
            c->sys_errno = errno;
            rc = MQ_ESIZE;
        }
    } else {
        uint8_t hdr[40];
        uint32_t magic, version, ns, sb;
        uint64_t next;
        static const uint8_t zero[16];
        if ((uint64_t)st.st_size < need || pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
            rc = MQ_EMAGIC;
        } else {
            memcpy(&magic, hdr, 4);
            memcpy(&version, hdr + 4, 4);
            memcpy(&ns, hdr + 8, 4);
            memcpy(&sb, hdr + 12, 4);
            memcpy(&next, hdr + 16, 8);
            if (magic != MQ_COMB_MAGIC || version != MQ_COMB_VERSION || ns != nslots ||
                sb != slot_bytes) {
                rc = MQ_EMAGIC;
            } else if (memcmp(boot, zero, 16) != 0 && memcmp(hdr + 24, boot, 16) != 0) {
                /* Written before the last boot: every process that used it is gone
                 * and none of its operations was answered after the OS went down,
                 * and its pages may be torn.  Start empty, tickets above the old. */
                if (init_file(fd, need, nslots, slot_bytes, boot, next + 1) < 0) {
                    c->sys_errno = errno;
                    rc = MQ_ESIZE;
                }
            }
        }
    }
    flock(fd, LOCK_UN);
    if (rc != MQ_OK) {
        close(fd);
        return rc;
    }
    void *m = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        c->sys_errno = errno;
        close(fd);
        return MQ_EMAP;
    }
    int guard = mq_guard_add(m, need, fd, MQ_GUARD_REGROW);
    if (guard < 0) {
        c->sys_errno = errno ? errno : ENOSPC;
        munmap(m, need);
        close(fd);
        return MQ_EGUARD;
    }
    c->guard = guard;
    c->fd = fd; /* kept: the combining lock is an flock on it, and the guard regrows it */
    c->base = m;
    c->map_len = need;
    c->nslots = nslots;
    c->slot_bytes = slot_bytes;
    return MQ_OK;
}

void mq_comb_close(mq_comb *c)
{
    if (c->guard >= 0)
        mq_guard_remove(c->guard); /* before unmapping and closing: see guard.h */
    c->guard = -1;
    if (c->base)
        munmap(c->base, c->map_len);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->base = NULL;
    c->map_len = 0;
    c->nslots = 0;
}

static int pid_gone(uint32_t pid)
{
    return pid == 0 || (kill((pid_t)pid, 0) < 0 && errno == ESRCH);
}

uint32_t mq_comb_reclaim(mq_comb *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        uint64_t w = __atomic_load_n(word_of(c, i), __ATOMIC_ACQUIRE);
        uint32_t st = (uint32_t)(w & 3u);
        if (st != MQ_COMB_CLAIMED && st != MQ_COMB_DONE)
            continue;
        /* CLAIMED carries its owner in the word itself (claim_scan); DONE(T)'s owner
         * field was stored by the claimer before its FILLED release store, so the
         * acquire load of DONE above sees it. */
        uint32_t owner = st == MQ_COMB_CLAIMED
            ? (uint32_t)(w >> 2)
            : __atomic_load_n((uint32_t *)(void *)(slot_at(c, i) + OWNER_OFF),
                              __ATOMIC_RELAXED);
        if (!pid_gone(owner))
            continue;
        uint64_t freed = (w & ~(uint64_t)3u) | MQ_COMB_FREE;
        if (__atomic_compare_exchange_n(word_of(c, i), &w, freed, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            n++;
    }
    return n;
}

static int64_t claim_scan(mq_comb *c, uint32_t pid)
{
    uint32_t start = pid % c->nslots;
    for (uint32_t k = 0; k < c->nslots; k++) {
        uint32_t i = (start + k) % c->nslots;
        uint64_t w = __atomic_load_n(word_of(c, i), __ATOMIC_RELAXED);
        if ((w & 3u) != MQ_COMB_FREE)
            continue;
        /* The owner goes into the word with the CAS: a reclaimer must never read a
         * previous (dead) owner's pid for this claim (the owner field is written
         * after the CAS, and is only trusted once the slot is FILLED). */
        uint64_t claimed = ((uint64_t)pid << 2) | MQ_COMB_CLAIMED;
        if (__atomic_compare_exchange_n(word_of(c, i), &w, claimed, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            __atomic_store_n((uint32_t *)(void *)(slot_at(c, i) + OWNER_OFF), pid,
                             __ATOMIC_RELAXED);
            return (int64_t)i;
        }
    }
    return -1;
}

int mq_comb_intact(const mq_comb *c)
{
    uint32_t h[4];
    memcpy(h, c->base, sizeof h);
    return h[0] == MQ_COMB_MAGIC && h[1] == MQ_COMB_VERSION && h[2] == c->nslots &&
           h[3] == c->slot_bytes;
}

int64_t mq_comb_claim(mq_comb *c, uint32_t pid)
{
    if (!mq_comb_intact(c))
        return -1; /* the file was truncated under us: commit alone */
    int64_t i = claim_scan(c, pid);
    if (i < 0 && mq_comb_reclaim(c) > 0)
        i = claim_scan(c, pid);
    return i;
}

uint64_t mq_comb_fill(mq_comb *c, uint32_t idx, const void *data, uint32_t len)
{
    return mq_comb_fill_flags(c, idx, data, len, MQ_COMB_F_GATHER);
}

uint64_t mq_comb_fill_flags(mq_comb *c, uint32_t idx, const void *data, uint32_t len,
                            uint32_t flags)
{
    uint8_t *s = slot_at(c, idx);
    memcpy(s + MQ_COMB_SLOT_HEADER, data, len);
    memcpy(s + LEN_OFF, &len, 4);
    /* a hint read by other processes without ordering: relaxed atomic, published
     * with the FILLED release store below */
    __atomic_store_n((uint32_t *)(void *)(s + FLAGS_OFF), flags, __ATOMIC_RELAXED);
    uint64_t t = __atomic_fetch_add(next_ticket(c), 1, __ATOMIC_RELAXED) & (UINT64_MAX >> 2);
    __atomic_store_n(word_of(c, idx), (t << 2) | MQ_COMB_FILLED, __ATOMIC_RELEASE);
    /* seq_cst pair with mq_comb_gather: either it sees this FILLED or we see it waiting */
    __atomic_fetch_add(hdr_u32(c, FILL_SEQ_OFF), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(hdr_u32(c, HOLDER_OFF), __ATOMIC_SEQ_CST) & MQ_COMB_H_GATHERING) {
#ifdef __linux__
        syscall(SYS_futex, hdr_u32(c, FILL_SEQ_OFF), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#endif
    }
    return t;
}

uint32_t mq_comb_filled(const mq_comb *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nslots; i++)
        if ((__atomic_load_n(word_of(c, i), __ATOMIC_ACQUIRE) & 3u) == MQ_COMB_FILLED)
            n++;
    return n;
}

uint32_t mq_comb_filled_gathering(const mq_comb *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        if ((__atomic_load_n(word_of(c, i), __ATOMIC_ACQUIRE) & 3u) != MQ_COMB_FILLED)
            continue;
        uint32_t f = __atomic_load_n((uint32_t *)(void *)(slot_at(c, i) + FLAGS_OFF),
                                     __ATOMIC_RELAXED);
        if (f & MQ_COMB_F_GATHER)
            n++;
    }
    return n;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int mq_comb_gathering(const mq_comb *c)
{
    return (__atomic_load_n(hdr_u32(c, HOLDER_OFF), __ATOMIC_SEQ_CST) & MQ_COMB_H_GATHERING) != 0;
}

int mq_comb_held(const mq_comb *c)
{
    /* either bit: a version-1 holder sets only the gathering one (as 1) */
    return __atomic_load_n(hdr_u32(c, HOLDER_OFF), __ATOMIC_SEQ_CST) != 0;
}

uint32_t mq_comb_gather(mq_comb *c, uint32_t max_wait_us)
{
    uint32_t want = __atomic_load_n(hdr_u32(c, ACTIVE_OFF), __ATOMIC_RELAXED);
    /* Only the lock holder gathers: a flag still set is a dead holder's; clear it,
     * or every fill would go on paying a futex wake for nobody. */
    if (__atomic_load_n(hdr_u32(c, HOLDER_OFF), __ATOMIC_RELAXED) & MQ_COMB_H_GATHERING)
        __atomic_fetch_and(hdr_u32(c, HOLDER_OFF), ~MQ_COMB_H_GATHERING, __ATOMIC_SEQ_CST);
    uint32_t n = mq_comb_filled_gathering(c);
    if (want > c->nslots)
        want = c->nslots;
    /* Gather only while at most half of the expected are here: waiting for the
     * last stragglers leaves the disk idle for less gain than the next commit,
     * which starts as soon as this one ends, will bring (D35). */
    if (want <= 1 || 2 * n > want)
        return n;
    uint32_t cu = __atomic_load_n(hdr_u32(c, COMMIT_US_OFF), __ATOMIC_RELAXED) / 2;
    int64_t budget = (int64_t)(cu < max_wait_us ? cu : max_wait_us) * 1000;
    if (budget <= 0)
        return n;
    int64_t deadline = mono_ns() + budget;
    uint32_t *seq = hdr_u32(c, FILL_SEQ_OFF);
    __atomic_fetch_or(hdr_u32(c, HOLDER_OFF), MQ_COMB_H_GATHERING, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t s = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
        n = mq_comb_filled_gathering(c);
        if (n >= want)
            break;
        int64_t left = deadline - mono_ns();
        if (left <= 0) {
            /* fewer came than the last commits suggested: expect what did */
            __atomic_store_n(hdr_u32(c, ACTIVE_OFF), n, __ATOMIC_RELAXED);
            break;
        }
#ifdef __linux__
        struct timespec ts;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        syscall(SYS_futex, seq, FUTEX_WAIT, s, &ts, NULL, 0);
#else
        struct timespec ts;
        ts.tv_sec = 0;
        ts.tv_nsec = left < 50000 ? (long)left : 50000L;
        nanosleep(&ts, NULL);
#endif
    }
    __atomic_fetch_and(hdr_u32(c, HOLDER_OFF), ~MQ_COMB_H_GATHERING, __ATOMIC_SEQ_CST);
    return n;
}

void mq_comb_note_commit(mq_comb *c, uint32_t taken, uint64_t commit_ns)
{
    /* before DONE: the taken slots are still FILLED, and so are the arrivals */
    uint32_t active = mq_comb_filled_gathering(c);
    if (active < taken)
        active = taken > c->nslots ? c->nslots : taken;
    __atomic_store_n(hdr_u32(c, ACTIVE_OFF), active, __ATOMIC_RELAXED);
    uint64_t us = commit_ns / 1000;
    if (us > 1000000)
        us = 1000000; /* one stalled commit must not make every gather long */
    uint32_t old = __atomic_load_n(hdr_u32(c, COMMIT_US_OFF), __ATOMIC_RELAXED);
    uint32_t avg = old == 0 ? (uint32_t)us : (uint32_t)((3 * (uint64_t)old + us) / 4);
    __atomic_store_n(hdr_u32(c, COMMIT_US_OFF), avg, __ATOMIC_RELAXED);
}

static uint64_t *hdr_u64(const mq_comb *c, size_t off)
{
    return (uint64_t *)(void *)(c->base + off);
}

void mq_comb_note_send(mq_comb *c)
{
    __atomic_store_n(hdr_u64(c, LAST_SEND_OFF), (uint64_t)mono_ns(), __ATOMIC_RELAXED);
}

int64_t mq_comb_since_send(const mq_comb *c)
{
    uint64_t last = __atomic_load_n(hdr_u64(c, LAST_SEND_OFF), __ATOMIC_RELAXED);
    int64_t now = mono_ns();
    if (last == 0 || last > (uint64_t)now)
        return INT64_MAX;
    return now - (int64_t)last;
}

int mq_comb_follow(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t window_ns,
                   int64_t max_ns)
{
    if (mq_comb_since_send(c) >= window_ns)
        return 0;
    int64_t us = (int64_t)__atomic_load_n(hdr_u32(c, COMMIT_US_OFF), __ATOMIC_RELAXED);
    int64_t budget = (2 * us + 200) * 1000;
    if (budget > max_ns)
        budget = max_ns;
    int64_t deadline = mono_ns() + budget;
    for (;;) {
        if (mq_comb_wait(c, idx, ticket, deadline - mono_ns()))
            return 1;
        if (mono_ns() >= deadline)
            return 0;
    }
}

void mq_comb_hints(const mq_comb *c, uint32_t *active, uint32_t *commit_us, uint32_t *seq)
{
    *active = __atomic_load_n(hdr_u32(c, ACTIVE_OFF), __ATOMIC_RELAXED);
    *commit_us = __atomic_load_n(hdr_u32(c, COMMIT_US_OFF), __ATOMIC_RELAXED);
    *seq = __atomic_load_n(hdr_u32(c, FILL_SEQ_OFF), __ATOMIC_RELAXED);
}

uint64_t mq_comb_word(const mq_comb *c, uint32_t idx)
{
    return __atomic_load_n(word_of(c, idx), __ATOMIC_ACQUIRE);
}

const uint8_t *mq_comb_payload(const mq_comb *c, uint32_t idx, uint32_t *len)
{
    const uint8_t *s = slot_at(c, idx);
    uint32_t n;
    memcpy(&n, s + LEN_OFF, 4);
    if (n > c->slot_bytes)
        n = c->slot_bytes; /* never read past the slot, whatever is stored */
    *len = n;
    return s + MQ_COMB_SLOT_HEADER;
}

uint32_t mq_comb_collect(const mq_comb *c, uint32_t *out, uint64_t *tickets, uint32_t max)
{
    /* The `max` oldest FILLED slots, by ticket: a sender's slots are applied in the
     * order it filled them even when a committer cannot take them all at once.
     * Insertion into a sorted array of at most `max` entries (max <= nslots). */
    uint32_t n = 0;
    if (max == 0)
        return 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        uint64_t w = __atomic_load_n(word_of(c, i), __ATOMIC_ACQUIRE);
        if ((w & 3u) != MQ_COMB_FILLED)
            continue;
        uint64_t t = w >> 2;
        if (n == max && tickets[n - 1] <= t)
            continue;
        uint32_t j = n < max ? n++ : n - 1;
        while (j > 0 && tickets[j - 1] > t) {
            tickets[j] = tickets[j - 1];
            out[j] = out[j - 1];
            j--;
        }
        tickets[j] = t;
        out[j] = i;
    }
    return n;
}

void mq_comb_set_result(mq_comb *c, uint32_t idx, int32_t status, int64_t r0, int64_t r1,
                        int64_t r2)
{
    uint8_t *s = slot_at(c, idx);
    memcpy(s + STATUS_OFF, &status, 4);
    memcpy(s + R0_OFF, &r0, 8);
    memcpy(s + R1_OFF, &r1, 8);
    memcpy(s + R2_OFF, &r2, 8);
}

int mq_comb_done(mq_comb *c, uint32_t idx, uint64_t ticket)
{
    uint64_t w = (ticket << 2) | MQ_COMB_FILLED;
    return __atomic_compare_exchange_n(word_of(c, idx), &w, (ticket << 2) | MQ_COMB_DONE, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

void mq_comb_result(const mq_comb *c, uint32_t idx, int32_t *status, int64_t *r0,
                    int64_t *r1, int64_t *r2)
{
    const uint8_t *s = slot_at(c, idx);
    memcpy(status, s + STATUS_OFF, 4);
    memcpy(r0, s + R0_OFF, 8);
    memcpy(r1, s + R1_OFF, 8);
    memcpy(r2, s + R2_OFF, 8);
}

int mq_comb_release(mq_comb *c, uint32_t idx, uint64_t ticket)
{
    uint64_t w = (ticket << 2) | MQ_COMB_DONE;
    return __atomic_compare_exchange_n(word_of(c, idx), &w, (ticket << 2) | MQ_COMB_FREE, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

int mq_comb_withdraw(mq_comb *c, uint32_t idx, uint64_t ticket)
{
    uint64_t w = (ticket << 2) | MQ_COMB_FILLED;
    return __atomic_compare_exchange_n(word_of(c, idx), &w, (ticket << 2) | MQ_COMB_FREE, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

int mq_comb_trylock(mq_comb *c)
{
    for (;;) {
        if (flock(c->fd, LOCK_EX | LOCK_NB) == 0) {
            /* the leading hint, after the lock is ours (the flock is a full barrier);
             * seq_cst: pairs with a sender's FILLED store and mq_comb_held load */
            __atomic_fetch_or(hdr_u32(c, HOLDER_OFF), MQ_COMB_H_LEADING, __ATOMIC_SEQ_CST);
            return 1;
        }
        if (errno == EWOULDBLOCK)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

void mq_comb_unlock(mq_comb *c)
{
    /* Cleared before the lock goes (seq_cst, then the flock's barrier): a sender that
     * saw the hint filled its slot before this store, so the hand-over collect that
     * follows the unlock sees its slot FILLED (combine.h, "The holder word"). */
    __atomic_fetch_and(hdr_u32(c, HOLDER_OFF), ~MQ_COMB_H_LEADING, __ATOMIC_SEQ_CST);
    flock(c->fd, LOCK_UN);
}

/* The futex word is the low 32 bits of the slot word: they hold the state
 * bits, so every transition changes them. */
static inline uint32_t *low_word(const mq_comb *c, uint32_t idx)
{
    uint8_t *w = (uint8_t *)word_of(c, idx);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w += 4;
#endif
    return (uint32_t *)(void *)w;
}

int mq_comb_sleep(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns)
{
    uint64_t filled = (ticket << 2) | MQ_COMB_FILLED;
    if (__atomic_load_n(word_of(c, idx), __ATOMIC_ACQUIRE) != filled)
        return 1;
    if (timeout_ns <= 0)
        return -1;
    int timed_out;
#ifdef __linux__
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000);
    ts.tv_nsec = (long)(timeout_ns % 1000000000);
    timed_out = syscall(SYS_futex, low_word(c, idx), FUTEX_WAIT, (uint32_t)filled, &ts, NULL,
                        0) < 0 && errno == ETIMEDOUT;
#else
    struct timespec ts;
    ts.tv_sec = 0;
    ts.tv_nsec = timeout_ns < 1000000 ? (long)timeout_ns : 1000000L;
    nanosleep(&ts, NULL);
    timed_out = 1; /* no wake-ups here: every sleep counts as timed out */
#endif
    if (__atomic_load_n(word_of(c, idx), __ATOMIC_ACQUIRE) != filled)
        return 1;
    return timed_out ? -1 : 0;
}

int mq_comb_wait(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns)
{
    return mq_comb_sleep(c, idx, ticket, timeout_ns) == 1;
}

void mq_comb_wake(mq_comb *c, uint32_t idx)
{
#ifdef __linux__
    syscall(SYS_futex, low_word(c, idx), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#else
    (void)c;
    (void)idx;
#endif
}

void mq_comb_unclaim(mq_comb *c, uint32_t idx)
{
    uint64_t w = __atomic_load_n(word_of(c, idx), __ATOMIC_ACQUIRE);
    if ((w & 3u) == MQ_COMB_CLAIMED)
        __atomic_compare_exchange_n(word_of(c, idx), &w, (w & ~(uint64_t)3u) | MQ_COMB_FREE, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
