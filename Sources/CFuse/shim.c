#ifndef _GNU_SOURCE
#error "CFuse needs _GNU_SOURCE (set in Package.swift) for the rename flags"
#endif
#include "CFuse.h"
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <sched.h>
#include <stdio.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(fuse_ino_t) == 8, "netvol stores inode numbers as 64-bit integers");

// A request answered by a thread already awake costs its caller one wakeup (its own,
// when the reply comes) instead of two: a caller working through files one by one (cat,
// cp, tar: lookup, open, create, flush, ...) sends its next request a few tens of
// microseconds after the last reply, and a worker thread that just replied finds it by
// polling instead of being woken for it. Polling needs a nonblocking descriptor of the
// thread's own: a /dev/fuse clone (libfuse's clone_fd), since the kernel takes a reply
// only on the descriptor its request was read from, and libfuse replies on the clone it
// read from. Sleeping stays a blocking read, so that the kernel wakes one thread per
// request, not every thread.
static _Atomic long poll_ns = 0;
// Sessions' own descriptors, shared by the threads whose clone failed: never polled.
#define SHARED_FDS 16
static _Atomic int shared_fds[SHARED_FDS] = { [0 ... SHARED_FDS - 1] = -1 };
static atomic_int pollers;
static atomic_ullong polled_requests;
static __thread int nonblocking_fd = -1;
// Whether this thread's last request moved bulk data: the next bulk request is then
// already queued (readahead, writeback) or comes from a stream whose core a poller
// would take, so the thread sleeps at once.
static __thread int last_was_bulk;

static int is_shared(int fd) {
    for (int i = 0; i < SHARED_FDS; i++) {
        if (atomic_load(&shared_fds[i]) == fd) return 1;
    }
    return 0;
}

static void set_nonblocking(int fd, int on) {
    if ((nonblocking_fd == fd) == on) return;
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
    nonblocking_fd = on ? fd : -1;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int is_bulk(const void *buf, ssize_t got) {
    if (got < (ssize_t)sizeof(struct fuse_in_header)) return 0;
    const struct fuse_in_header *in = buf;
    if (in->opcode == FUSE_WRITE) return in->len > 65536;
    if (in->opcode == FUSE_READ && got >= (ssize_t)(sizeof(*in) + sizeof(struct fuse_read_in))) {
        return ((const struct fuse_read_in *)(in + 1))->size > 65536;
    }
    return 0;
}

// The kernel asks the daemon for a file's security.capability before every write, to
// learn whether the write must remove it, unless the daemon takes over removing setuid,
// setgid and capabilities itself (FUSE_HANDLE_KILLPRIV_V2): one round trip in two of a
// streaming write, one in seven of a small file's creation. libfuse 3.14 cannot ask for
// it, so the INIT reply is amended on its way out, and the kernel's per-request "kill
// setuid/setgid" flags (which libfuse drops) are kept for the thread serving the request.
static __thread uint64_t init_unique;
static __thread int init_offers_killpriv_v2;
static __thread int request_kills_suidgid;

static void note_request(const void *buf, ssize_t got) {
    request_kills_suidgid = 0;
    if (got < (ssize_t)sizeof(struct fuse_in_header)) return;
    const struct fuse_in_header *in = buf;
    const void *arg = in + 1;
    ssize_t room = got - (ssize_t)sizeof(*in);
    switch (in->opcode) {
    case FUSE_INIT:
        if (room >= (ssize_t)(offsetof(struct fuse_init_in, flags) + sizeof(uint32_t))) {
            init_unique = in->unique;
            init_offers_killpriv_v2 = (((const struct fuse_init_in *)arg)->flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
        }
        break;
    // Whether the request's argument, of TYPE, has FLAG in FIELD.
#define ASKS(TYPE, FIELD, FLAG) (room >= (ssize_t)sizeof(TYPE) && (((const TYPE *)arg)->FIELD & (FLAG)) != 0)
    case FUSE_WRITE: request_kills_suidgid = ASKS(struct fuse_write_in, write_flags, FUSE_WRITE_KILL_SUIDGID); break;
    case FUSE_SETATTR: request_kills_suidgid = ASKS(struct fuse_setattr_in, valid, FATTR_KILL_SUIDGID); break;
    case FUSE_OPEN: request_kills_suidgid = ASKS(struct fuse_open_in, open_flags, FUSE_OPEN_KILL_SUIDGID); break;
    case FUSE_CREATE: request_kills_suidgid = ASKS(struct fuse_create_in, open_flags, FUSE_OPEN_KILL_SUIDGID); break;
#undef ASKS
    }
}

int CFuse_request_kills_suidgid(void) { return request_kills_suidgid; }

static ssize_t plain_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    ssize_t got = read(fd, buf, len);
    note_request(buf, got);
    return got;
}

static ssize_t polling_read(int fd, void *buf, size_t len, void *userdata) {
    if (poll_ns <= 0 || is_shared(fd)) return plain_read(fd, buf, len, userdata);
    ssize_t got = 0;
    int waiting = 1;
    // One poller at a time: on a machine of few cores a second one would take the core
    // the caller needs to send its next request.
    if (!last_was_bulk) {
        if (atomic_fetch_add(&pollers, 1) == 0) {
            set_nonblocking(fd, 1);
            long long deadline = now_ns() + poll_ns;
            do {
                got = read(fd, buf, len);
                waiting = got < 0 && errno == EAGAIN;
                if (got >= 0) atomic_fetch_add(&polled_requests, 1);
                // The daemon's own background work (commits, uploads) may want this core.
                if (waiting) sched_yield();
            } while (waiting && now_ns() < deadline);
        }
        atomic_fetch_sub(&pollers, 1);
    }
    if (waiting) {
        set_nonblocking(fd, 0);
        got = read(fd, buf, len);
    }
    last_was_bulk = is_bulk(buf, got);
    note_request(buf, got);
    return got;
}

unsigned long long CFuse_polled_requests(void) { return atomic_load(&polled_requests); }

static ssize_t amending_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    // libfuse answers INIT on the thread that read it, before any other request.
    if (init_unique != 0 && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        const struct fuse_out_header *out = iov[0].iov_base;
        if (out->unique == init_unique) {
            init_unique = 0;
            if (out->error == 0 && init_offers_killpriv_v2
                && iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
                ((struct fuse_init_out *)iov[1].iov_base)->flags |= FUSE_HANDLE_KILLPRIV_V2;
            }
        }
    }
    return writev(fd, iov, count);
}

int CFuse_session_custom_io(struct fuse_session *se, long spin_ns) {
    static const struct fuse_custom_io plain = { .writev = amending_writev, .read = plain_read };
    static const struct fuse_custom_io polling = { .writev = amending_writev, .read = polling_read };
    int fd = fuse_session_fd(se);
    if (spin_ns <= 0) return fuse_session_custom_io(se, &plain, fd);
    for (int i = 0; i < SHARED_FDS; i++) {
        int free_slot = -1;
        if (atomic_compare_exchange_strong(&shared_fds[i], &free_slot, fd)) break;
        if (i == SHARED_FDS - 1) return -1;
    }
    poll_ns = spin_ns;
    return fuse_session_custom_io(se, &polling, fd);
}

int CFuse_session_loop_mt(struct fuse_session *se, unsigned int max_threads, unsigned int max_idle_threads, int clone_fd) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_idle_threads(config, max_idle_threads);
    if (clone_fd) fuse_loop_cfg_set_clone_fd(config, 1);
    int result = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    // The descriptor is closed with the session; its number may come back as a clone.
    int fd = fuse_session_fd(se);
    for (int i = 0; i < SHARED_FDS; i++) {
        int expected = fd;
        atomic_compare_exchange_strong(&shared_fds[i], &expected, -1);
    }
    return result;
}

ssize_t CFuse_copy_bufvec(struct fuse_bufvec *src, void *dst, size_t size) {
    struct fuse_bufvec out = FUSE_BUFVEC_INIT(size);
    out.buf[0].mem = dst;
    return fuse_buf_copy(&out, src, 0);
}

struct fuse_args CFuse_args_init(int argc, char **argv) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    return args;
}

const unsigned int CFuse_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned int CFuse_RENAME_EXCHANGE = RENAME_EXCHANGE;
const int CFuse_XATTR_CREATE = XATTR_CREATE;
const int CFuse_XATTR_REPLACE = XATTR_REPLACE;
const int CFuse_SET_ATTR_MODE = FUSE_SET_ATTR_MODE;
const int CFuse_SET_ATTR_UID = FUSE_SET_ATTR_UID;
const int CFuse_SET_ATTR_GID = FUSE_SET_ATTR_GID;
const int CFuse_SET_ATTR_SIZE = FUSE_SET_ATTR_SIZE;
const int CFuse_SET_ATTR_ATIME = FUSE_SET_ATTR_ATIME;
const int CFuse_SET_ATTR_MTIME = FUSE_SET_ATTR_MTIME;
const int CFuse_SET_ATTR_ATIME_NOW = FUSE_SET_ATTR_ATIME_NOW;
const int CFuse_SET_ATTR_MTIME_NOW = FUSE_SET_ATTR_MTIME_NOW;
const int CFuse_SET_ATTR_CTIME = FUSE_SET_ATTR_CTIME;
