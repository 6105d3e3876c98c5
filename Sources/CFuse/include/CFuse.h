#ifndef CFUSE_H
#define CFUSE_H

// The one place netvol chooses the libfuse API level.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/xattr.h>

// fuse_session_loop_mt is a macro that picks a versioned symbol (fuse_session_loop_mt_312),
// which Swift cannot see. It can go once libfuse exports an unversioned name for Swift.
// clone_fd: each worker thread reads from a /dev/fuse clone of its own (needed to poll).
int CFuse_session_loop_mt(struct fuse_session *se, unsigned int max_threads, unsigned int max_idle_threads, int clone_fd);

// Reads the session's requests and writes its replies through netvol's own I/O (see
// shim.c), which asks the kernel to leave removing setuid/setgid to the daemon. With spin_ns
// > 0, each worker thread of CFuse_session_loop_mt also reads from a /dev/fuse clone of its
// own and, after it answered a request, polls that clone for the next for up to spin_ns
// before it sleeps; the loop must then run with clone_fd. Call it after
// fuse_session_mount; the last call's spin_ns applies to every polling session.
int CFuse_session_custom_io(struct fuse_session *se, long spin_ns);
// Whether the request this thread is serving asks the daemon to remove the file's setuid
// and setgid bits (a write, truncate, chown or truncating open by someone without CAP_FSETID).
int CFuse_request_kills_suidgid(void);
// Requests a polling thread found, over every session of the process.
unsigned long long CFuse_polled_requests(void);

// Copies up to size bytes of src (a retrieve reply's data, in memory or in a pipe) to
// dst; returns how many, or a negative errno.
ssize_t CFuse_copy_bufvec(struct fuse_bufvec *src, void *dst, size_t size);

// Swift imports the struct but not the macro FUSE_ARGS_INIT.
struct fuse_args CFuse_args_init(int argc, char **argv);

// Swift cannot import these macros from <sys/stat.h> and <linux/fs.h> as constants.
extern const unsigned int CFuse_RENAME_NOREPLACE;
extern const unsigned int CFuse_RENAME_EXCHANGE;
extern const int CFuse_XATTR_CREATE;
extern const int CFuse_XATTR_REPLACE;
extern const int CFuse_SET_ATTR_MODE;
extern const int CFuse_SET_ATTR_UID;
extern const int CFuse_SET_ATTR_GID;
extern const int CFuse_SET_ATTR_SIZE;
extern const int CFuse_SET_ATTR_ATIME;
extern const int CFuse_SET_ATTR_MTIME;
extern const int CFuse_SET_ATTR_ATIME_NOW;
extern const int CFuse_SET_ATTR_MTIME_NOW;
extern const int CFuse_SET_ATTR_CTIME;

#endif
