/* wgate.h - the write gate: one process at a time inside LMDB's write lock.
 *
 * Why: LMDB's write lock is a process-shared robust pthread mutex.  Robust
 * mutexes survive an owner's death, but not every waiter's: when an unlock
 * (or the kernel, for a dead owner) wakes exactly one sleeping waiter and
 * that waiter is SIGKILLed before it takes the lock, a process that locks it
 * on the uncontended fast path meanwhile leaves no "waiters" mark behind, so
 * its unlock wakes nobody and the other sleepers sleep on with the lock free
 * (seen in the kill -9 torture: every writer of the broker waited behind one
 * sleeping commit-ring leader until a stray signal woke it; D42).  The kernel
 * hands flock locks over by itself, with no user-space state to lose, so
 * taking a flock before LMDB's lock leaves at most one process's threads
 * ever waiting in LMDB's mutex, and their process cannot die without them.
 *
 * Contract:
 *  - mq_wgate_open opens `path` (data.mdb: every broker has it) read-only,
 *    O_CLOEXEC | O_NOFOLLOW, for the gate's own open file description.
 *    Returns the descriptor, or -errno.
 *  - mq_wgate_lock takes flock(LOCK_EX) on it, waiting as long as another
 *    process holds it and retrying on EINTR.  Returns 0 or -errno.
 *  - mq_wgate_unlock drops it (flock(LOCK_UN)).
 *  - flock belongs to the open file description: the threads of one process
 *    share the gate (the binding counts them, WriteGate in _core.pyx), and a
 *    forked child must open its own (the inherited one is its parent's).
 *  - The kernel drops the gate when its holder dies, however it dies.
 *  - Nothing is stored: the gate has no byte layout and data.mdb is never
 *    written through this descriptor.
 */
#ifndef MQLITE_WGATE_H
#define MQLITE_WGATE_H

int mq_wgate_open(const char *path);
int mq_wgate_lock(int fd);
void mq_wgate_unlock(int fd);

#endif
