/* shmfile.c - see shmfile.h. */
#include "shmfile.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int mq_shm_open(const char *path, unsigned mode)
{
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
        if (fd >= 0) {
            if (fchmod(fd, (mode_t)mode) < 0) { /* exact mode, umask not applied */
                int e = errno;
                close(fd);
                errno = e;
                return -1;
            }
            return fd;
        }
        if (errno != EEXIST)
            return -1;
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0 || errno != ENOENT)
            return fd;
        /* deleted between the two opens: create it again */
    }
}

int mq_shm_lock_ex(int fd)
{
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}
