#ifndef CSYSCALLS_H
#define CSYSCALLS_H
#include <sys/types.h>
#include <sys/xattr.h>

// Swift's Glibc module is built without _GNU_SOURCE, so these Linux calls are not
// visible to the tests; each wrapper forwards one call.
int CSyscalls_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
int CSyscalls_fallocate(int fd, int mode, off_t offset, off_t len);
extern const unsigned int CSyscalls_RENAME_NOREPLACE;
extern const unsigned int CSyscalls_RENAME_EXCHANGE;
extern const long CSyscalls_UTIME_NOW;
extern const long CSyscalls_UTIME_OMIT;
#endif
