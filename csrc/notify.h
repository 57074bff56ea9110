/* notify.h - cross-process wake-ups on a shared file of sequence words.
 *
 * A notify file is an array of slots, each two native-endian uint32 words
 * { seq, waiters }, mapped MAP_SHARED by every process that opens it (and
 * inherited across fork()).  Writers bump a slot after they commit data;
 * readers that found nothing wait until the slot's seq moves or a timeout
 * passes.  Which slot stands for which partition is the caller's choice
 * (usually a hash); all processes must open the file with the same slot
 * count for their hashes to agree.
 *
 * Concurrency contract - a wake-up is a hint, never a message:
 *  - The writer bumps the counter only after its commit has returned, so a
 *    woken reader that re-reads committed state sees the new data.
 *  - Waiters always re-read the state they care about after mq_notify_wait
 *    returns, whatever it returned, and always pass a finite timeout.  A lost
 *    wake-up (a process died between commit and bump, two slots collide, a
 *    counter wrapped) then costs at most one timeout of latency, and a
 *    spurious one costs a re-read; neither costs correctness.
 *  - The waiter count only decides whether bump() makes a futex syscall.  A
 *    process killed inside wait() leaves the count one too high forever; that
 *    is harmless, bumps of that slot just always call FUTEX_WAKE.
 *  - A waiter registers (waiters++) and then re-reads seq; a bumper
 *    increments seq and then reads waiters.  Both sides use sequentially
 *    consistent atomics, so at least one of them sees the other: either the
 *    waiter sees the new seq and does not sleep, or the bumper sees the
 *    waiter and wakes it.  The futex syscall itself re-checks seq == expected
 *    atomically with going to sleep.
 *  - The futex operations are the shared (non-PRIVATE) ones: the words live
 *    in a file mapping shared between processes.
 *
 *  - The waiters word counts two kinds of waiter:
 *
 *        bits 31..16  event loops armed on the slot (doorbells), in units of
 *                     MQ_NOTIFY_BELL_UNIT
 *        bits 15..0   threads asleep in mq_notify_wait (futex sleepers)
 *
 *    A bump makes the FUTEX_WAKE syscall only when the low half is non-zero
 *    and scans the doorbells only when the high half is: a slot watched only
 *    by event loops costs no futex syscall on the way to their rings, and
 *    one watched only by threads no doorbell scan.  (65,535 sleepers at
 *    once, or as many processes killed inside a wait, would carry into the
 *    high half: then bumps also scan the doorbells, which is harmless.)
 *
 *  - Doorbells (doorbell.h): when `bells` is set, a bump whose waiters word
 *    has a non-zero high half rings the doorbells of the event loops that
 *    armed the slot.  An event loop registers with
 *    mq_notify_waiters_add(+MQ_NOTIFY_BELL_UNIT) after arming, so the bump's
 *    waiter check covers it too.
 *
 * Linux uses futex(2).  Other systems sleep-poll: re-read seq every 1 ms at
 * most until it changes or the timeout passes.
 *
 * Bounds: slot indexes are not checked here; the caller guarantees
 * slot < n->slots (the binding raises ValueError otherwise).  mqlite never
 * shrinks a notify file; if another program truncates it, the next access
 * past the new end faults, and the SIGBUS guard (guard.h, MQ_GUARD_REGROW)
 * grows the file back and retries the access: the truncated slots read as
 * zero, which costs at most one missed wake-up (a timeout of latency) per
 * waiter, like any lost wake-up.  The hot paths pay nothing for this: no
 * size check precedes an access.
 */
#ifndef MQLITE_NOTIFY_H
#define MQLITE_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

typedef struct mq_notify_slot {
    uint32_t seq;
    uint32_t waiters;
} mq_notify_slot;

typedef struct mq_notify {
    mq_notify_slot *slots_base; /* NULL when closed */
    size_t slots;
    size_t map_len;
    int fd;        /* kept open for the SIGBUS guard; -1 when closed */
    int guard;     /* guard id (guard.h), -1 when none */
    int sys_errno; /* the errno behind the last failed mq_notify_open, else 0 */
    struct mq_bells *bells; /* doorbells rung by bump (doorbell.h), or NULL; set by the owner */
} mq_notify;

/* Opens `path` (creating it with exactly `mode`, umask not applied, when it
 * does not exist; O_CLOEXEC, O_NOFOLLOW: a symlink is refused), grows it to
 * `slots` slots when smaller (never shrinks it; growth is serialised with
 * flock so two openers cannot race a shrink), and maps the first `slots`
 * slots.  New slots read as zero.  The descriptor stays open (O_CLOEXEC)
 * until mq_notify_close: the SIGBUS guard uses it to grow a truncated file
 * back.  slots must be >= 1.
 * Returns MQ_OK, or (n is then left closed) MQ_EINVAL for a slot count of 0
 * or one whose size overflows, MQ_EGUARD when the guard cannot be set up,
 * or MQ_EOPEN / MQ_ELOCK / MQ_ESIZE / MQ_EMAP
 * naming the system call that failed, with its errno in n->sys_errno
 * (ELOOP: the path is a symlink; EACCES; ENOSPC ...).  Codes never collide
 * with errno values: the caller reads errno from sys_errno, not from the
 * return value. */
int mq_notify_open(mq_notify *n, const char *path, size_t slots, unsigned mode);

/* Withdraws the guard, unmaps and closes the descriptor; idempotent.  No
 * other call may be running on `n` at the time. */
void mq_notify_close(mq_notify *n);

/* The slot's seq (acquire load). */
uint32_t mq_notify_load(const mq_notify *n, size_t slot);

/* Increments the slot's seq (wrapping) and wakes every process or thread
 * waiting on it, making the syscall only when the waiter count is non-zero. */
void mq_notify_bump(mq_notify *n, size_t slot);

/* As mq_notify_bump, but the FUTEX_WAKE wakes at most `nwake` (>= 1) of the threads
 * asleep on the slot (doorbells are all rung, as by mq_notify_bump).  For words whose
 * waiters compete for the same work (a queue's receivers, D67): the others sleep on,
 * and a woken waiter that leaves work behind wakes the next one. */
void mq_notify_bump_wake(mq_notify *n, size_t slot, int nwake);

/* Passes a wake-up on (D69): when the slot has a waiter (a thread asleep in
 * mq_notify_wait or an event loop armed on it), as mq_notify_bump_wake(n, slot, 1);
 * when it has none, nothing (no store to the word).  Returns 1 when it bumped, else 0.
 * For a waiter of a one-at-a-time word that was woken (or may have been: it cannot
 * tell) and leaves without doing the work it may have been woken for.  Skipping the
 * bump when nobody waits loses nothing: a waiter that registers after this load
 * re-reads seq and then state before it sleeps (see the contract), and the work it
 * was woken for was committed before the bump that woke the caller. */
int mq_notify_pass(mq_notify *n, size_t slot);

/* One event loop armed on a slot, in the waiters word (see the contract). */
#define MQ_NOTIFY_BELL_UNIT (1u << 16)

/* Adds `delta` to the slot's waiters word (seq_cst): an event loop waiting
 * through a doorbell adds +MQ_NOTIFY_BELL_UNIT while it waits and the same
 * negated after. */
void mq_notify_waiters_add(mq_notify *n, size_t slot, int delta);

#define MQ_NOTIFY_RETURN_ON_EINTR 1 /* mq_notify_wait flag */
#define MQ_NOTIFY_TELL_WOKEN 2      /* mq_notify_wait flag (D76) */
#define MQ_NOTIFY_WOKEN 2           /* returned under MQ_NOTIFY_TELL_WOKEN */

/* Waits until the slot's seq differs from `expected`, a wake-up arrives or
 * `timeout_ns` nanoseconds pass (CLOCK_MONOTONIC).  timeout_ns <= 0 only
 * compares.  Returns 1 when seq differs or the waiter was woken, 0 on
 * timeout.  A signal (EINTR) makes it re-check and keep waiting for the
 * remaining time, unless `flags` has MQ_NOTIFY_RETURN_ON_EINTR: then it
 * returns MQ_EINTR so the caller can run its signal handlers (Python's
 * KeyboardInterrupt) and call again with the time left.
 *
 * With MQ_NOTIFY_TELL_WOKEN in `flags` it tells the two ways of "1" apart
 * (D76): MQ_NOTIFY_WOKEN when a FUTEX_WAKE took this thread off the futex
 * queue (a bump woke it; rarely a spurious futex return, counted as woken),
 * 1 when it saw seq differ at one of its checks (before sleeping, after
 * EAGAIN, a timeout or a signal, and always in the sleep-poll fallback).
 * Only the first can have taken one of the wake-ups of
 * mq_notify_bump_wake(..., 1): such a wake-up goes to a thread in the futex
 * queue at the time, or to nobody.  A waiter of a one-at-a-time word that
 * leaves without doing the work passes a wake-up on (mq_notify_pass) only
 * after MQ_NOTIFY_WOKEN; after 1 the wake-up, if any, went to another
 * sleeper, which does the work. */
int mq_notify_wait(mq_notify *n, size_t slot, uint32_t expected, int64_t timeout_ns, int flags);

/* At most this many slots per mq_notify_wait_any (futex_waitv takes up to 128). */
#define MQ_NOTIFY_WAIT_ANY_MAX 16

/* As mq_notify_wait, on `count` slots at once (1 <= count <= MQ_NOTIFY_WAIT_ANY_MAX,
 * slots distinct): returns 1 as soon as any slot's seq differs from its `expected`
 * or a wake-up of any of them arrives, 0 on timeout, MQ_EINTR as above (and
 * MQ_NOTIFY_WOKEN under MQ_NOTIFY_TELL_WOKEN, as above); MQ_EINVAL
 * for a count out of range.  It registers as a waiter of every slot first (so a bump
 * of any of them makes the futex syscall) and re-checks them all before sleeping.
 * Linux >= 5.16 sleeps in futex_waitv(2) on the shared words; where that call is
 * missing (ENOSYS) it sleep-polls every slot at most every 1 ms, as other systems do
 * for one slot. */
int mq_notify_wait_any(mq_notify *n, const size_t *slots, const uint32_t *expected,
                       size_t count, int64_t timeout_ns, int flags);

#endif
