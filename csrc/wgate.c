/* wgate.c - the write gate (see wgate.h). */
#include "wgate.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>

int mq_wgate_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

int mq_wgate_lock(int fd)
{
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

void mq_wgate_unlock(int fd)
{
    flock(fd, LOCK_UN);
}
