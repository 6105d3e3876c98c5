// The libfuse low-level callbacks: one callback, one call of VolumeFS, one reply.
//
// libfuse calls these on its own worker threads, so they are @convention(c) functions in
// this ordinary source file (top-level code in main.swift would be main-actor isolated),
// they reach only the Sendable `FuseContext` behind the session's userdata, and nothing
// thrown crosses the C boundary: every path ends in exactly one fuse_reply_*.

#if canImport(Glibc)
import Glibc
#endif
internal import CFuse
import ChunkStore
import Logging
import Metadata
import VolumeFS

/// Whether the caller of `req` is a member of a group (or root): its own group, or (asked
/// only then, as it reads the caller's /proc status) one of its supplementary groups.
func callerIsInGroup(_ req: fuse_req_t?) -> (UInt32) -> Bool {
    { gid in
        let caller = fuse_req_ctx(req)!.pointee
        // Root has CAP_FSETID as a rule; the kernel asks on its chown all the same.
        if caller.uid == 0 || caller.gid == gid { return true }
        var groups = [gid_t](repeating: 0, count: 256)
        let count = fuse_req_getgroups(req, Int32(groups.count), &groups)
        return count > 0 && groups.prefix(Int(min(count, Int32(groups.count)))).contains(gid)
    }
}

func context(_ req: fuse_req_t?) -> FuseContext {
    Unmanaged<FuseContext>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

/// Runs one operation; a thrown error becomes the reply's errno, logged once here.
///
/// An inode that no longer exists answers ESTALE, not ENOENT, unless the operation is
/// about a name (`unlink`, `rmdir`, `rename`), where ENOENT says the name is missing. The
/// kernel may still hold a name pointing at an inode another mount has since deleted (a
/// file replaced by a rename, until the change feed invalidates the name). On ESTALE the
/// kernel's path walk looks every name up again and retries once, as it does over NFS, so
/// an `open` or `stat` of a file just replaced finds the new file instead of failing.
@inline(__always)
func serve(_ req: fuse_req_t?, _ op: StaticString, _ ino: fuse_ino_t, aboutName: Bool = false,
           _ body: (FuseContext) throws(FSError) -> Void) {
    let ctx = context(req)
    let start = ContinuousClock.now
    do {
        try body(ctx)
        ctx.metrics.record(op, since: start, errno: 0)
    } catch {
        let code = error.errno == ENOENT && !aboutName ? ESTALE : error.errno
        ctx.fail(req, op, ino, error, errno: code)
        ctx.metrics.record(op, since: start, errno: code)
    }
}

func fileName(_ name: UnsafePointer<CChar>?) -> FileName {
    guard let name else { return FileName([]) }
    return FileName(Array(UnsafeRawBufferPointer(start: name, count: strlen(name))))
}

func inode(_ ino: fuse_ino_t) -> InodeNumber { InodeNumber(ino) }

func timespecOf(_ time: Timestamp) -> timespec {
    timespec(tv_sec: Int(time.seconds), tv_nsec: Int(time.subsecondNanoseconds))
}

func timestampOf(_ spec: timespec) -> Timestamp {
    Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: Int64(spec.tv_nsec))
}

func statOf(_ attr: Attr) -> stat {
    var st = stat()
    st.st_ino = UInt(attr.ino.rawValue)
    st.st_mode = attr.mode
    st.st_nlink = UInt(attr.nlink)
    st.st_uid = attr.uid
    st.st_gid = attr.gid
    st.st_rdev = UInt(attr.rdev)
    st.st_size = Int(attr.size)
    st.st_blksize = 128 * 1024
    st.st_blocks = Int((attr.storedBytes + 511) / 512)
    st.st_atim = timespecOf(attr.atime)
    st.st_mtim = timespecOf(attr.mtime)
    st.st_ctim = timespecOf(attr.ctime)
    return st
}

func withCString<T>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> T) -> T {
    (bytes + [0]).withUnsafeBufferPointer { buffer in
        buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
    }
}

func fileInfo(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> FileHandleID {
    FileHandleID(rawValue: fi?.pointee.fh ?? 0)
}

/// Builds the table of callbacks handed to fuse_session_new.
func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { userdata, conn in
        guard let userdata, let conn else { return }
        let ctx = Unmanaged<FuseContext>.fromOpaque(userdata).takeUnretainedValue()
        ctx.configure(conn)
    }
    ops.destroy = { userdata in
        guard let userdata else { return }
        Unmanaged<FuseContext>.fromOpaque(userdata).takeUnretainedValue().volume.flushAll()
    }

    ops.lookup = { req, parent, name in
        let ctx = context(req)
        let start = ContinuousClock.now
        do throws(FSError) {
            ctx.replyEntry(req, try ctx.volume.lookup(inode(parent), fileName(name)))
            ctx.metrics.record("lookup", since: start, errno: 0)
        } catch {
            ctx.metrics.record("lookup", since: start, errno: error.errno)
            guard case .metadata(.notFound) = error else {
                ctx.fail(req, "lookup", parent, error)
                return
            }
            // A negative entry lets the kernel answer the next miss itself.
            var entry = fuse_entry_param()
            entry.ino = 0
            entry.entry_timeout = ctx.entryTimeout
            fuse_reply_entry(req, &entry)
        }
    }
    ops.forget = { req, ino, count in
        context(req).volume.forget(inode(ino), count)
        fuse_reply_none(req)
    }
    ops.forget_multi = { req, count, forgets in
        let ctx = context(req)
        if let forgets {
            for item in UnsafeBufferPointer(start: forgets, count: count) {
                ctx.volume.forget(inode(item.ino), item.nlookup)
            }
        }
        fuse_reply_none(req)
    }
    ops.getattr = { req, ino, _ in
        serve(req, "getattr", ino) { ctx throws(FSError) in
            ctx.replyAttr(req, try ctx.volume.getattr(inode(ino)))
        }
    }
    ops.setattr = { req, ino, attr, toSet, _ in
        serve(req, "setattr", ino) { ctx throws(FSError) in
            guard let attr else { throw .invalidArgument("setattr without attributes") }
            let now = VolumeFS.now()
            var changes = AttrChanges()
            if toSet & CFuse_SET_ATTR_MODE != 0 { changes.mode = attr.pointee.st_mode }
            if toSet & CFuse_SET_ATTR_UID != 0 { changes.uid = attr.pointee.st_uid }
            if toSet & CFuse_SET_ATTR_GID != 0 { changes.gid = attr.pointee.st_gid }
            if toSet & CFuse_SET_ATTR_ATIME_NOW != 0 { changes.atime = now }
            else if toSet & CFuse_SET_ATTR_ATIME != 0 { changes.atime = timestampOf(attr.pointee.st_atim) }
            if toSet & CFuse_SET_ATTR_MTIME_NOW != 0 { changes.mtime = now }
            else if toSet & CFuse_SET_ATTR_MTIME != 0 { changes.mtime = timestampOf(attr.pointee.st_mtim) }
            var size: UInt64? = nil
            if toSet & CFuse_SET_ATTR_SIZE != 0 {
                guard attr.pointee.st_size >= 0 else { throw .invalidArgument("negative size") }
                size = UInt64(attr.pointee.st_size)
            }
            // A chown, or a truncation by someone without CAP_FSETID, in the same change.
            if CFuse_request_kills_suidgid() != 0 && changes.mode == nil {
                changes.mode = VolumeFS.withoutSetIDBits(try ctx.volume.getattr(inode(ino)), callerInGroup: callerIsInGroup(req))
            }
            // A ctime-only change (FUSE_SET_ATTR_CTIME) still has to move ctime.
            if changes.isEmpty && size == nil && toSet & CFuse_SET_ATTR_CTIME != 0 {
                changes.atime = try ctx.volume.getattr(inode(ino)).atime
            }
            ctx.replyAttr(req, try ctx.volume.setattr(inode(ino), changes, size: size))
        }
    }
    ops.readlink = { req, ino in
        serve(req, "readlink", ino) { ctx throws(FSError) in
            let target = try ctx.volume.readlink(inode(ino))
            withCString(target) { _ = fuse_reply_readlink(req, $0) }
        }
    }
    ops.mknod = { req, parent, name, mode, rdev in
        serve(req, "mknod", parent) { ctx throws(FSError) in
            let caller = fuse_req_ctx(req)!.pointee
            ctx.replyEntry(req, try ctx.volume.mknod(inode(parent), fileName(name), mode: mode, rdev: UInt64(rdev),
                                                     uid: caller.uid, gid: caller.gid))
        }
    }
    ops.mkdir = { req, parent, name, mode in
        serve(req, "mkdir", parent) { ctx throws(FSError) in
            let caller = fuse_req_ctx(req)!.pointee
            ctx.replyEntry(req, try ctx.volume.mkdir(inode(parent), fileName(name), mode: mode, uid: caller.uid, gid: caller.gid))
        }
    }
    ops.unlink = { req, parent, name in
        serve(req, "unlink", parent, aboutName: true) { ctx throws(FSError) in
            try ctx.volume.unlink(inode(parent), fileName(name))
            fuse_reply_err(req, 0)
        }
    }
    ops.rmdir = { req, parent, name in
        serve(req, "rmdir", parent, aboutName: true) { ctx throws(FSError) in
            try ctx.volume.rmdir(inode(parent), fileName(name))
            fuse_reply_err(req, 0)
        }
    }
    ops.symlink = { req, link, parent, name in
        serve(req, "symlink", parent) { ctx throws(FSError) in
            let caller = fuse_req_ctx(req)!.pointee
            let target = fileName(link).bytes
            ctx.replyEntry(req, try ctx.volume.symlink(inode(parent), fileName(name), target: target, uid: caller.uid, gid: caller.gid))
        }
    }
    ops.rename = { req, parent, name, newParent, newName, flags in
        serve(req, "rename", parent, aboutName: true) { ctx throws(FSError) in
            let known = CFuse_RENAME_NOREPLACE | CFuse_RENAME_EXCHANGE
            guard flags & ~known == 0 else { throw .invalidArgument("rename flags \(flags)") }
            try ctx.volume.rename(inode(parent), fileName(name), inode(newParent), fileName(newName),
                                  flags: RenameFlags(rawValue: flags))
            fuse_reply_err(req, 0)
        }
    }
    ops.link = { req, ino, newParent, newName in
        serve(req, "link", ino) { ctx throws(FSError) in
            ctx.replyEntry(req, try ctx.volume.link(inode(ino), inode(newParent), fileName(newName)))
        }
    }
    ops.open = { req, ino, fi in
        serve(req, "open", ino) { ctx throws(FSError) in
            guard let fi else { throw .invalidArgument("open without file info") }
            let killsSetID = CFuse_request_kills_suidgid() != 0
            let handle = try ctx.volume.open(inode(ino), flags: fi.pointee.flags)
            if killsSetID {
                do throws(FSError) {
                    if try ctx.volume.dropSetIDBits(inode(ino), callerInGroup: callerIsInGroup(req)) { ctx.forgetAttributes(inode(ino)) }
                } catch {
                    ctx.volume.release(inode(ino), handle)
                    throw error
                }
            }
            fi.pointee.fh = handle.rawValue
            fi.pointee.keep_cache = ctx.volume.keepsCache(handle) ? 1 : 0
            // Closing a handle that cannot write commits nothing of its own: the kernel
            // need not send a flush for it (one round trip less per `cat` or `tar`'d file).
            fi.pointee.noflush = fi.pointee.flags & O_ACCMODE == O_RDONLY ? 1 : 0
            if fuse_reply_open(req, fi) != 0 {
                // The opener was interrupted and will never release this handle.
                ctx.volume.release(inode(ino), handle)
            }
        }
    }
    ops.create = { req, parent, name, mode, fi in
        serve(req, "create", parent) { ctx throws(FSError) in
            guard let fi else { throw .invalidArgument("create without file info") }
            let caller = fuse_req_ctx(req)!.pointee
            let (attr, handle) = try ctx.volume.create(inode(parent), fileName(name), mode: mode, flags: fi.pointee.flags,
                                                       uid: caller.uid, gid: caller.gid)
            fi.pointee.fh = handle.rawValue
            var entry = ctx.entry(attr)
            if fuse_reply_create(req, &entry, fi) != 0 {
                ctx.volume.release(attr.ino, handle)
                ctx.volume.forget(attr.ino, 1)
            }
        }
    }
    ops.read = { req, ino, size, offset, fi in
        serve(req, "read", ino) { ctx throws(FSError) in
            guard offset >= 0 else { throw .invalidArgument("negative offset") }
            var sent = 0
            if try ctx.volume.read(inode(ino), fileInfo(fi), offset: UInt64(offset), count: size, sendingFromMemory: { bytes in
                _ = fuse_reply_buf(req, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
                sent = bytes.count
            }) {
                ctx.metrics.bytesRead.increment(by: Int64(sent))
                return
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 4096)
            defer { buffer.deallocate() }
            let got = try ctx.volume.read(inode(ino), fileInfo(fi), offset: UInt64(offset),
                                          into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size]))
            _ = fuse_reply_buf(req, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), got)
            ctx.metrics.bytesRead.increment(by: Int64(got))
        }
    }
    ops.write = { req, ino, buffer, size, offset, fi in
        serve(req, "write", ino) { ctx throws(FSError) in
            guard offset >= 0 else { throw .invalidArgument("negative offset") }
            if CFuse_request_kills_suidgid() != 0, try ctx.volume.dropSetIDBits(inode(ino), callerInGroup: callerIsInGroup(req)) {
                ctx.forgetAttributes(inode(ino))
            }
            let written = try ctx.volume.write(inode(ino), fileInfo(fi), offset: UInt64(offset),
                                               UnsafeRawBufferPointer(start: buffer, count: size))
            fuse_reply_write(req, written)
            ctx.metrics.bytesWritten.increment(by: Int64(written))
        }
    }
    ops.flush = { req, ino, fi in
        serve(req, "flush", ino) { ctx throws(FSError) in
            try ctx.volume.flush(inode(ino), fileInfo(fi))
            fuse_reply_err(req, 0)
        }
    }
    ops.release = { req, ino, fi in
        context(req).volume.release(inode(ino), fileInfo(fi))
        fuse_reply_err(req, 0)
    }
    ops.fsync = { req, ino, _, fi in
        serve(req, "fsync", ino) { ctx throws(FSError) in
            try ctx.volume.fsync(inode(ino), fileInfo(fi))
            fuse_reply_err(req, 0)
        }
    }
    ops.opendir = { req, ino, fi in
        serve(req, "opendir", ino) { ctx throws(FSError) in
            fi?.pointee.fh = try ctx.volume.openDirectory(inode(ino)).rawValue
            fuse_reply_open(req, fi)
        }
    }
    ops.releasedir = { req, _, fi in
        context(req).volume.releaseDirectory(fileInfo(fi))
        fuse_reply_err(req, 0)
    }
    ops.fsyncdir = { req, ino, _, _ in
        serve(req, "fsyncdir", ino) { ctx throws(FSError) in
            try ctx.volume.syncMetadata()
            fuse_reply_err(req, 0)
        }
    }
    ops.readdir = { req, ino, size, offset, fi in
        context(req).readdir(req, ino, fi?.pointee.fh, size, offset, plus: false)
    }
    ops.readdirplus = { req, ino, size, offset, fi in
        context(req).readdir(req, ino, fi?.pointee.fh, size, offset, plus: true)
    }
    ops.statfs = { req, ino in
        serve(req, "statfs", ino) { ctx throws(FSError) in
            let stats = try ctx.volume.statfs()
            var out = statvfs()
            out.f_bsize = UInt(stats.blockSize)
            out.f_frsize = UInt(stats.blockSize)
            out.f_blocks = UInt(stats.totalBlocks)
            out.f_bfree = UInt(stats.freeBlocks)
            out.f_bavail = UInt(stats.freeBlocks)
            out.f_files = UInt(stats.files + stats.freeFiles)
            out.f_ffree = UInt(stats.freeFiles)
            out.f_favail = UInt(stats.freeFiles)
            out.f_namemax = UInt(stats.nameMax)
            fuse_reply_statfs(req, &out)
        }
    }
    ops.setxattr = { req, ino, name, value, size, flags in
        serve(req, "setxattr", ino) { ctx throws(FSError) in
            let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            let mode: XattrMode = flags & CFuse_XATTR_CREATE != 0 ? .create : flags & CFuse_XATTR_REPLACE != 0 ? .replace : .any
            try ctx.volume.setxattr(inode(ino), fileName(name), bytes, mode: mode)
            fuse_reply_err(req, 0)
        }
    }
    ops.getxattr = { req, ino, name, size in
        serve(req, "getxattr", ino) { ctx throws(FSError) in
            ctx.replyXattr(req, try ctx.volume.getxattr(inode(ino), fileName(name)), size)
        }
    }
    ops.listxattr = { req, ino, size in
        serve(req, "listxattr", ino) { ctx throws(FSError) in
            var names: [UInt8] = []
            for name in try ctx.volume.listxattr(inode(ino)) {
                names += name.bytes
                names.append(0)
            }
            ctx.replyXattr(req, names, size)
        }
    }
    ops.removexattr = { req, ino, name in
        serve(req, "removexattr", ino) { ctx throws(FSError) in
            try ctx.volume.removexattr(inode(ino), fileName(name))
            fuse_reply_err(req, 0)
        }
    }
    ops.retrieve_reply = { req, cookie, _, _, data in
        if let data { context(req).retrievals.deliver(UInt(bitPattern: cookie), data) }
        fuse_reply_none(req)
    }
    ops.fallocate = { req, ino, mode, offset, length, fi in
        serve(req, "fallocate", ino) { ctx throws(FSError) in
            guard offset >= 0, length > 0 else { throw .invalidArgument("bad range") }
            try ctx.volume.fallocate(inode(ino), fileInfo(fi), mode: mode, offset: UInt64(offset), length: UInt64(length))
            fuse_reply_err(req, 0)
        }
    }
    return ops
}
