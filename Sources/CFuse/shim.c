#ifndef _GNU_SOURCE
#error "CFuse needs _GNU_SOURCE (set in Package.swift) for the rename flags"
#endif
#include "CFuse.h"
#include <stdio.h>

_Static_assert(sizeof(fuse_ino_t) == 8, "netvol stores inode numbers as 64-bit integers");

int CFuse_session_loop_mt(struct fuse_session *se, unsigned int max_threads, unsigned int max_idle_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_idle_threads(config, max_idle_threads);
    int result = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    return result;
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
