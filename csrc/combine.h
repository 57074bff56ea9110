/* combine.h - cross-process commit combining: a shared-memory ring of slots.
 *
 * Several processes append to one LMDB environment and each durable commit
 * pays its syncs under LMDB's one write lock.  Combining lets whoever holds
 * that lock next commit the already-encoded operations of every process
 * waiting for it, so N waiting senders share one commit (and its fsyncs).
 *
 * Roles
 *  - A *sender* claims a FREE slot, copies its encoded operation in, takes a
 *    ticket and publishes the slot FILLED; then it tries the combining lock,
 *    an flock on the ring file (mq_comb_trylock; the kernel drops it when its
 *    holder dies).  Not got: it futex-waits on its slot word with a short
 *    timeout (mq_comb_sleep) and tries again, until its slot is DONE.  While
 *    the header's holder word says a holder has the lock (mq_comb_held), it
 *    waits without trying, except after a wait that timed out (D60, below).
 *  - The lock holder is the *committer* (leader): it begins an LMDB write
 *    transaction, collects the oldest FILLED slots (its own included),
 *    applies each through the engine's one append path, records
 *    `ticket -> result` in LMDB inside the same transaction, writes each
 *    result into its slot (still FILLED, lock held), commits (the syncs the
 *    durability mode requires, once for all), marks each slot DONE and wakes
 *    its waiters (mq_comb_wake).  It repeats until its own slots are DONE,
 *    releases the lock, then wakes the owners of slots still FILLED so one of
 *    them takes over (a wake-up lost to a race costs one wait timeout).
 *  - A sender that finds its slot DONE reads the result and frees the slot.
 *
 * File layout (native endianness; every process on one machine agrees):
 *
 *   offset  size  header (MQ_COMB_HEADER = 64 bytes)
 *   0       4     magic  'MQCB' (0x4243514d)
 *   4       4     version (1)
 *   8       4     nslots
 *   12      4     slot_bytes (payload capacity of one slot)
 *   16      8     next_ticket (atomic fetch-add; seeded from CLOCK_REALTIME
 *                 nanoseconds when the file is created, so tickets of a
 *                 re-created file never repeat those of an older one)
 *   24      16    boot id of the kernel that created the file (from
 *                 /proc/sys/kernel/random/boot_id; zeros where unreadable)
 *   40      4     fill_seq: +1 by every mq_comb_fill (a futex word: a gathering
 *                 committer sleeps on it)
 *   44      4     holder word (D60; "gatherer" in version 1 files, which held
 *                 only bit 0):
 *                 bit 0 MQ_COMB_H_GATHERING: the lock holder sleeps on fill_seq
 *                 (a filler wakes it only then); a gather clears a bit 0 left
 *                 by a holder that died in one
 *                 bit 1 MQ_COMB_H_LEADING: the combining lock is held; set by
 *                 mq_comb_trylock right after it took the lock, cleared by
 *                 mq_comb_unlock right before it releases it
 *   48      4     active: the committers' estimate of how many gathering
 *                 operations (slots with MQ_COMB_F_GATHER, i.e. sends) a commit
 *                 can expect (those FILLED when the last commit returned: its
 *                 own plus those filled while it ran; lowered to what arrived
 *                 when a gather times out)
 *   52      4     commit_us: moving average of a combined commit's duration
 *                 in microseconds (bounds a gather)
 *   56      8     last_send_ns: CLOCK_MONOTONIC nanoseconds of the last fill
 *                 of a send (mq_comb_note_send); 0 = none seen
 * The fields at 40-63 are hints: any value is safe (a wrong one costs at most
 * one bounded gather, one bounded deferral or one sender's wait); a file
 * written by a version without them reads zeros, which means "do not gather",
 * "no sender seen" and "no holder known".  Bit 1 of the holder word is new in
 * the same version 1 layout (no version change: the bytes and every older
 * meaning stay): a process built before it never sets it, so its senders try
 * the lock as before, and it reads the word as "nonzero = gathering", so a
 * filler of such a process pays a spare futex wake while a newer holder leads
 * and a sender of it waits once before trying (both bounded, both as after a
 * dead gatherer); a gather of such a process clears the whole word (the
 * hint then says "no holder": senders try the lock, as before).
 *
 * The holder word's bit 1 (the leading hint, D60) and every transition:
 *
 *   0 -> LEADING   mq_comb_trylock, after flock(LOCK_EX|LOCK_NB) succeeded
 *                  (atomic or, seq_cst).  Another holder cannot exist then.
 *   LEADING -> 0   mq_comb_unlock, before flock(LOCK_UN) (atomic and, seq_cst):
 *                  on every way out of a lead (the binding unlocks in a
 *                  finally), and on the idle-ring path's unlock.
 *   LEADING stale  the holder died between the two (SIGKILL): the kernel
 *                  dropped the lock, the bit stays until the next holder's
 *                  trylock/unlock pair rewrites it.
 * Senders read it (mq_comb_held, seq_cst) after their FILLED store (whose
 * seq_cst fill_seq increment orders it before the load): when they see it
 * set, the holder's clear, its unlock and its hand-over collect come after
 * their FILLED, so the holder either takes their slot or hands the lock over
 * to the oldest FILLED slots, exactly as when their trylock had failed; they
 * wait instead of calling flock.  The kernel lock stays the only truth: a
 * sender waits at most one timeout on a set bit (mq_comb_sleep returns -1)
 * and then tries the lock whatever the bit says, so a stale bit costs each
 * sender one bounded wait; a bit seen clear while a lock is held costs the
 * failed trylock of before.
 *
 *   slot i at MQ_COMB_HEADER + i * (MQ_COMB_SLOT_HEADER + slot_bytes):
 *   0       8     word = ticket << 2 | state   (atomic; the only sync point)
 *   8       4     owner pid
 *   12      4     len (payload bytes)
 *   16      4     status (result code; the caller's meaning, 0 = ok)
 *   20      4     flags, written by mq_comb_fill before FILLED (a hint, D46):
 *                 bit 0 MQ_COMB_F_GATHER = a commit may wait for operations
 *                 like this one (sends); offset commits and acks leave it 0.
 *                 A file written by a version without flags holds zeros or a
 *                 stale value here: at most one bounded gather more or less
 *   24      8     r0 \
 *   32      8     r1  } result values (e.g. partition, offset, timestamp)
 *   40      8     r2 /
 *   48      16    reserved
 *   64      slot_bytes payload
 *
 * States (low 2 bits of word) and every transition:
 *
 *   FREE(t)    -> CLAIMED(p)  sender, CAS (mq_comb_claim); while CLAIMED the
 *                             ticket bits hold the owner pid p, so the owner is
 *                             set in the same CAS (a reclaimer never sees a
 *                             previous owner's pid for a fresh claim); the owner
 *                             field is then stored too, for DONE's reclaim
 *   CLAIMED(p) -> FREE(p)     sender handing back an unfilled slot (mq_comb_unclaim)
 *   CLAIMED(p) -> FILLED(T)   sender, after copying the payload, with a new
 *                             ticket T (release store; mq_comb_fill)
 *   FILLED(T)  -> FILLED(T)   committer holding the lock writes status/r0-r2
 *                             (mq_comb_set_result); nobody reads them yet
 *   FILLED(T)  -> DONE(T)     committer after its commit returned, CAS on the
 *                             exact word (mq_comb_done): a stale committer
 *                             whose slot was already finished and reused
 *                             fails the CAS (tickets never repeat: no ABA)
 *   DONE(T)    -> FREE(T)     owner after reading the result (mq_comb_release)
 *   FILLED(T)  -> FREE(T)     owner withdrawing (its begin failed) by CAS
 *                             (mq_comb_withdraw); a committer that copied the
 *                             payload re-reads the word afterwards and skips
 *                             the slot if it changed
 *   CLAIMED/DONE -> FREE      any claimer, when the owner pid no longer
 *                             exists (mq_comb_reclaim; kill(pid, 0) == ESRCH)
 *
 * Crash semantics (the LMDB side is the caller's, see docs/decisions.md D27):
 *  - sender dies CLAIMED: reclaimed as above; nothing was handed over.
 *  - sender dies FILLED: the next committer may commit its operation (the
 *    sender got no answer: "may or may not"); the slot then goes DONE and is
 *    reclaimed.
 *  - committer dies before its commit: LMDB aborts the transaction; the slots
 *    are still FILLED and the next lock holder takes them.
 *  - committer dies after its commit, before DONE: the slots are FILLED and
 *    their tickets are in LMDB's ticket table; the next committer finds them
 *    there, writes the stored results and marks them DONE without appending
 *    again.
 * Gathering (mq_comb_gather, D35, D46): a committer about to begin its
 * transaction may wait, holding the combining lock, when at most half of
 * `active` gathering slots are FILLED, until `active` are or
 * min(max_wait, commit_us / 2) has passed, so senders that alternate with it
 * (each arriving just after the other's commit began) share commits.  Only
 * slots filled with MQ_COMB_F_GATHER (sends) count: an offset commit or ack is
 * never waited for (it follows the senders instead, below).  It changes no
 * slot state; a filler that sees the gatherer flag wakes it.  Only the holder
 * of the combining lock may call it.
 *
 * Following (mq_comb_follow, D43): an operation that is not a send (an offset
 * commit, a queue ack) whose filler finds a send filled within the last
 * `window_ns` waits up to about two commit durations for a sender's commit to
 * take its slot before it tries the lock itself, so consumers ride the
 * producers' commits instead of queueing commits of their own in front of
 * them.  It changes no slot state; a follower that is not taken in time
 * goes on as any sender (tries the lock, waits, ...).
 *
 * Results are written only by the lock holder of a FILLED slot and read only
 * by the owner after an acquire load saw DONE of its own ticket, so a reader
 * never sees a half-written result.
 *
 * Bounds: indexes are checked by the binding (idx < nslots).  The file is
 * never truncated by mqlite.  Another program truncating it under a live
 * process would make the next access fault: the mapping is registered with
 * the SIGBUS guard (guard.h, MQ_GUARD_REGROW), which grows the file back
 * (zeros) and retries the access.  Zeros mean: the header no longer matches
 * (mq_comb_intact() false), so mq_comb_claim() hands out no slot and every
 * sender of that process commits alone, as without a ring (a process opening
 * the file later gets MQ_EMAGIC and does the same); a slot that was zeroed
 * reads FREE(0), so its owner sees its FILLED(T) gone without DONE(T) and
 * reports the operation as of unknown outcome (it may have been committed).
 * Unlinking the file under live processes faults nothing (their mapping stays
 * valid); processes that open the broker afterwards create a new ring, and
 * the two rings' committers serialise on LMDB's write lock.  Pid reuse can keep a dead owner's slot CLAIMED/DONE until
 * the reused pid exits (a leaked slot, never a wrong result); owners in
 * another pid namespace are invisible to kill(2), so brokers shared across
 * pid namespaces must not enable combining.
 */
#ifndef MQLITE_COMBINE_H
#define MQLITE_COMBINE_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_COMB_MAGIC 0x4243514du
#define MQ_COMB_VERSION 1u
#define MQ_COMB_HEADER 64u
#define MQ_COMB_SLOT_HEADER 64u

enum { MQ_COMB_FREE = 0, MQ_COMB_CLAIMED = 1, MQ_COMB_FILLED = 2, MQ_COMB_DONE = 3 };
/* The holder word's bits (header offset 44, see the layout). */
#define MQ_COMB_H_GATHERING 1u
#define MQ_COMB_H_LEADING 2u
/* Slot flags (mq_comb_fill_flags): a commit may gather for this operation. */
#define MQ_COMB_F_GATHER 1u

typedef struct mq_comb {
    uint8_t *base;       /* NULL when closed */
    size_t map_len;
    uint32_t nslots;
    uint32_t slot_bytes;
    int fd;              /* the ring file, kept open for the combining lock; -1 closed */
    int guard;           /* SIGBUS guard id (guard.h), -1 when none */
    int sys_errno;       /* errno behind the last failed mq_comb_open, else 0 */
} mq_comb;

/* Opens (creating with exactly `mode`, O_NOFOLLOW|O_CLOEXEC) and maps the
 * ring file `path`.  A new or empty file is sized and initialised under an
 * exclusive flock, so concurrent openers agree.  A file written under another
 * boot (an OS crash or reboot since) is initialised again, every slot FREE and
 * tickets continuing above its old next_ticket: its operations were never
 * answered after the OS went down (callers died with it), and its pages may
 * have reached the disk torn.  Returns MQ_OK; MQ_EINVAL
 * for 0 slots, slot_bytes < 64 or not a multiple of 64, or a size overflow;
 * MQ_EMAGIC when an existing file has another magic, version, nslots or
 * slot_bytes (or is shorter than that layout); MQ_EOPEN / MQ_ELOCK /
 * MQ_ESIZE / MQ_EMAP / MQ_EGUARD (SIGBUS guard table full or handler not
 * installable) with errno in c->sys_errno. */
int mq_comb_open(mq_comb *c, const char *path, uint32_t nslots, uint32_t slot_bytes,
                 unsigned mode);
void mq_comb_close(mq_comb *c);

/* FREE -> CLAIMED for `pid`, scanning from pid % nslots; when none is free,
 * reclaims slots of dead owners once and scans again.  Returns the slot
 * index, or -1 when every slot is busy or the header is not intact. */
int64_t mq_comb_claim(mq_comb *c, uint32_t pid);
/* CLAIMED -> FREE: the owner hands back a slot it claimed and did not fill. */
void mq_comb_unclaim(mq_comb *c, uint32_t idx);
/* Copies `len` (<= slot_bytes) payload bytes into claimed slot `idx`, takes
 * a ticket and publishes FILLED (release).  Returns the ticket. */
uint64_t mq_comb_fill(mq_comb *c, uint32_t idx, const void *data, uint32_t len);
/* mq_comb_fill with the slot's flags (MQ_COMB_F_*) stored before FILLED;
 * mq_comb_fill is this with MQ_COMB_F_GATHER. */
uint64_t mq_comb_fill_flags(mq_comb *c, uint32_t idx, const void *data, uint32_t len,
                            uint32_t flags);
/* Acquire load of slot `idx`'s word (ticket << 2 | state). */
uint64_t mq_comb_word(const mq_comb *c, uint32_t idx);
/* Pointer to / length of the payload of slot `idx` (valid while FILLED). */
const uint8_t *mq_comb_payload(const mq_comb *c, uint32_t idx, uint32_t *len);
/* Indexes of the (at most `max`) FILLED slots with the oldest tickets, ordered by
 * ticket, into `out` (and their tickets into `tickets`).  Returns how many. */
uint32_t mq_comb_collect(const mq_comb *c, uint32_t *out, uint64_t *tickets, uint32_t max);
/* Lock holder only, slot FILLED: store the result fields. */
void mq_comb_set_result(mq_comb *c, uint32_t idx, int32_t status, int64_t r0, int64_t r1,
                        int64_t r2);
/* FILLED(ticket) -> DONE(ticket).  Returns 1 when this call did it, 0 when
 * the word was something else (already done by a recovering committer). */
int mq_comb_done(mq_comb *c, uint32_t idx, uint64_t ticket);
/* Owner, after seeing DONE(ticket): read the result fields. */
void mq_comb_result(const mq_comb *c, uint32_t idx, int32_t *status, int64_t *r0,
                    int64_t *r1, int64_t *r2);
/* DONE(ticket) -> FREE(ticket).  Returns 1 when done, 0 otherwise. */
int mq_comb_release(mq_comb *c, uint32_t idx, uint64_t ticket);
/* FILLED(ticket) -> FREE(ticket).  Returns 1 when withdrawn, 0 when the word
 * moved on (the slot is DONE: read the result and release it instead). */
int mq_comb_withdraw(mq_comb *c, uint32_t idx, uint64_t ticket);
/* CLAIMED/DONE slots whose owner no longer exists -> FREE.  Returns how many. */
uint32_t mq_comb_reclaim(mq_comb *c);
/* The combining lock: an exclusive flock on the ring file (the kernel drops it
 * when its holder dies).  trylock sets the holder word's LEADING bit once the
 * lock is taken, unlock clears it before releasing (D60).  flock belongs to
 * the open file description, so threads of one process must also exclude each
 * other (the binding's caller does, with a thread lock), and a forked child
 * must reopen the ring.
 * trylock returns 1 (taken), 0 (held by another) or -errno. */
int mq_comb_trylock(mq_comb *c);
void mq_comb_unlock(mq_comb *c);
/* Sender: sleep (futex on the low 32 bits of the slot word) while slot `idx`
 * is FILLED(ticket), at most `timeout_ns`.  Returns 1 when the word moved on,
 * 0 otherwise (timeout, spurious or hand-off wake-up).  Other systems sleep
 * at most 1 ms. */
int mq_comb_wait(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns);
/* mq_comb_wait telling its ways out apart: 1 when the word moved on; 0 when
 * woken (or interrupted) with the slot still FILLED(ticket); -1 when the
 * timeout passed (or timeout_ns <= 0) with it still FILLED(ticket).  Other
 * systems sleep at most 1 ms and report -1. */
int mq_comb_sleep(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t timeout_ns);
/* Committer: wake the waiters of slot `idx` (after DONE, or to hand the lock
 * over when it leaves FILLED slots behind). */
void mq_comb_wake(mq_comb *c, uint32_t idx);

/* 1 when the header still holds this ring's magic, version and layout (a
 * truncated and regrown file reads zeros), else 0. */
int mq_comb_intact(const mq_comb *c);
/* Number of FILLED slots now. */
uint32_t mq_comb_filled(const mq_comb *c);
/* Number of FILLED slots now whose flags have MQ_COMB_F_GATHER. */
uint32_t mq_comb_filled_gathering(const mq_comb *c);
/* Committer holding the lock, before it collects: when at most half of
 * `active` gathering slots (MQ_COMB_F_GATHER) are FILLED, sleeps (futex on
 * fill_seq) until `active` are or min(max_wait_us, commit_us / 2)
 * microseconds passed; when it times out short, `active` becomes what arrived.
 * Returns the number of FILLED gathering slots at the end (at once when
 * active <= 1). */
uint32_t mq_comb_gather(mq_comb *c, uint32_t max_wait_us);
/* 1 while the lock holder sleeps in mq_comb_gather (the header's gatherer
 * flag, seq_cst load), else 0.  A sender that sees 1 right after its fill
 * knows the lock is held and that the gather, which ends before its holder
 * collects, will take its slot: it may wait without trying the lock (D56).  A
 * flag left by a holder that died in a gather makes such a sender wait one
 * timeout before it tries. */
int mq_comb_gathering(const mq_comb *c);
/* 1 when the holder word has any bit set (a holder has the combining lock, or
 * a dead one left its hint), else 0; seq_cst load.  A sender that sees 1 after
 * its fill may wait without trying the lock, but must try it after a wait
 * that timed out (D60). */
int mq_comb_held(const mq_comb *c);
/* Committer after a combined commit of `taken` gathering slots (sends) that
 * took `commit_ns`, before it marks them DONE: active = the gathering slots
 * FILLED now (the taken ones and those that arrived during the commit; at
 * least `taken`); commit_us moves a quarter of the way to commit_ns / 1000
 * (at most 1 s). */
void mq_comb_note_commit(mq_comb *c, uint32_t taken, uint64_t commit_ns);
/* Sender of a send, after mq_comb_fill: last_send_ns = now (relaxed store). */
void mq_comb_note_send(mq_comb *c);
/* Nanoseconds since the last mq_comb_note_send of any process (INT64_MAX when
 * none was seen or the hint is from the future). */
int64_t mq_comb_since_send(const mq_comb *c);
/* Follower of slot `idx`, FILLED(ticket): when a send was filled less than
 * `window_ns` ago, sleep while the slot is FILLED(ticket), at most
 * min(2 * commit_us + 200 us, max_ns) in all (hand-over wake-ups do not end
 * it).  Returns 1 when the slot moved on (a committer took it), else 0 (no
 * sender lately, or the time ran out): the caller then leads or waits as any
 * sender. */
int mq_comb_follow(mq_comb *c, uint32_t idx, uint64_t ticket, int64_t window_ns,
                   int64_t max_ns);
/* (active, commit_us, fill_seq), for tests and tools. */
void mq_comb_hints(const mq_comb *c, uint32_t *active, uint32_t *commit_us, uint32_t *seq);

#endif
