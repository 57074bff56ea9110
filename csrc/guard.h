/* guard.h - survive SIGBUS on file mappings whose file another party shrank.
 *
 * Touching a page of a MAP_SHARED file mapping that lies past the file's end
 * raises SIGBUS, which kills the process.  Two mappings of mqlite can meet
 * that: notify.shm (another process truncates it) and LMDB's map of
 * data.mdb (a damaged record size makes py-lmdb touch pages past the end of
 * the file before any check of ours can run).  A guard registers an address
 * range and what to do when an access inside it faults:
 *
 *   MQ_GUARD_REGROW  grow the file (fd, kept open by the caller) back to
 *                    the range's length with ftruncate(); the faulting
 *                    access is retried and reads the (zeroed) file page.
 *                    Never shrinks: a file already long enough is left as it
 *                    is.  For files whose content is a hint (notify.shm).
 *   MQ_GUARD_ZERO    map private zero pages over the rest of the range
 *                    (MAP_FIXED) and retry: the access reads zeros, which
 *                    the reader's own checks (lengths, CRC) then reject.  The
 *                    mapping no longer shows the file past that point (where
 *                    the file may yet grow), so the owner, noticing that
 *                    mq_guard_faults() moved, calls mq_guard_restore(): it
 *                    maps the file (fd, offset 0 at `start`, read-only,
 *                    shared, as LMDB does) back over the zeroed pages, at the
 *                    same addresses, so pointers held by concurrent readers
 *                    stay valid.
 *   MQ_GUARD_FILL    for LMDB's map under `writemap` (durability "none", D47),
 *                    where the process *writes* through the map: zero pages
 *                    would swallow those writes, and a commit could then point
 *                    at pages never stored.  The owner keeps the file short
 *                    (its last page plus a preallocated stretch, not the whole
 *                    map) and allocates ahead of LMDB's last page.  A fault on
 *                    a page at or past the end of the file grows the file
 *                    (ftruncate, never shrinking) to that page plus
 *                    MQ_GUARD_FILL_CHUNK bytes (clipped to the range) and
 *                    retries: a read sees zeros, a write allocates as any
 *                    write does.  A fault on a page inside the file (a hole
 *                    the file system could not back: a full disk) allocates
 *                    the page and the chunk after it (fallocate, fd open
 *                    read-write) and retries.  When that allocation fails, or
 *                    the same page faults again right after it was allocated
 *                    (an I/O error, not a hole), the fault goes to the
 *                    previous disposition: by default the process dies, which
 *                    loses only its uncommitted transaction (as kill -9 does),
 *                    never a committed one.
 *
 * Contract:
 *  - The handler only acts on kernel-generated SIGBUS (si_code > 0) whose
 *    address lies in a registered range; anything else goes to the
 *    disposition that was in place when mq_guard_install() ran (a Python
 *    faulthandler, or the default action: the process dies as before).
 *  - The handler calls only async-signal-safe functions (fstat, ftruncate,
 *    mmap) and touches no lock; the table is read with atomic loads.
 *  - mq_guard_add claims a free slot with a compare-and-swap, so any thread
 *    may call it; the handler may run meanwhile.  A range is published only
 *    after its fields are set; the caller withdraws it (mq_guard_remove)
 *    before it unmaps the range or closes the descriptor.
 *  - At most MQ_GUARD_MAX ranges at a time.
 *
 * Return codes: mq_guard_install() MQ_OK or MQ_EGUARD (sigaction failed,
 * errno set); mq_guard_add() a guard id >= 0, or MQ_EGUARD when the table is
 * full or the arguments are invalid.
 */
#ifndef MQLITE_GUARD_H
#define MQLITE_GUARD_H

#include <stddef.h>
#include <stdint.h>

#include "mqerr.h"

#define MQ_GUARD_MAX 64
#define MQ_GUARD_REGROW 1
#define MQ_GUARD_ZERO 2
#define MQ_GUARD_FILL 3
#define MQ_GUARD_FILL_CHUNK (1u << 20)

/* Installs the SIGBUS handler unless it already is the current one (another
 * library may have replaced it since: then it is installed again, chaining
 * to that one).  Idempotent. */
int mq_guard_install(void);

/* Registers [start, start + len) with the descriptor of the mapped file
 * (kept open by the caller while the guard exists).  Installs the handler. */
int mq_guard_add(void *start, size_t len, int fd, int mode);

/* Withdraws guard `id` (from mq_guard_add; a negative id is ignored). */
void mq_guard_remove(int id);

/* MQ_GUARD_ZERO: maps the file back over the pages the handler zeroed (a
 * no-op when none were).  Returns MQ_OK, or MQ_EGUARD when mmap failed. */
int mq_guard_restore(int id);

/* How many faults the handler repaired since the process started. */
uint64_t mq_guard_faults(void);

#endif
