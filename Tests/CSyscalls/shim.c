#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include "CSyscalls.h"

int CSyscalls_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

int CSyscalls_fallocate(int fd, int mode, off_t offset, off_t len) {
    return fallocate(fd, mode, offset, len);
}

const unsigned int CSyscalls_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned int CSyscalls_RENAME_EXCHANGE = RENAME_EXCHANGE;
const long CSyscalls_UTIME_NOW = UTIME_NOW;
const long CSyscalls_UTIME_OMIT = UTIME_OMIT;
