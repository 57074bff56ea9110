/* shmfile.h - opening the small shared files that live beside data.mdb.
 *
 * notify.shm (notify.h), bells.shm (doorbell.h) and commit-<mode>.shm
 * (combine.h) are fixed-layout files mapped MAP_SHARED by every process of a
 * broker.  They are opened the same way, here:
 *
 *  - mq_shm_open creates the file with exactly `mode` (O_EXCL create, then
 *    fchmod: the umask is not applied, so a shared group mode 0660 is not
 *    narrowed and the other members can open it read-write), or opens the
 *    existing one.  O_CLOEXEC and O_NOFOLLOW always: a symlink is refused
 *    with ELOOP.  A file deleted between the create attempt and the open is
 *    created again.  Returns a descriptor, or -1 with errno set.
 *  - mq_shm_lock_ex takes flock(LOCK_EX) on it, retrying on EINTR; the caller
 *    holds it while it checks and grows the file, so two openers cannot race
 *    a resize.  Returns 0, or -1 with errno set.
 *
 * No byte layout here: each file's layout is drawn in its own header.
 */
#ifndef MQLITE_SHMFILE_H
#define MQLITE_SHMFILE_H

int mq_shm_open(const char *path, unsigned mode);
int mq_shm_lock_ex(int fd);

#endif
