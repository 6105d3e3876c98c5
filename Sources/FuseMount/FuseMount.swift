// FuseMount: owns the libfuse session for one mounted volume.
//
// It sets the connection up in `init` (large writes and readahead, readdirplus), and
// turns each kernel request into one call of VolumeFS (Callbacks.swift). Entry and
// attribute timeouts are decided here, once.

#if canImport(Glibc)
import Glibc
#endif
internal import CFuse
import Dispatch
import Logging
import Metadata
import Synchronization
public import VolumeFS

/// How a volume is mounted.
public struct MountOptions: Sendable {
    public var mountpoint: String
    /// Extra `-o` options for libfuse and the kernel (`allow_other`, `ro`, ...).
    public var fuseOptions: [String] = []
    /// Names the mount in /proc/mounts and `df` (fsname).
    public var source: String = "netvol"
    /// Seconds the kernel may cache names and attributes. Changes made by other mounts
    /// are pushed out of the kernel's caches as they are seen in the change feed (within
    /// a poll, half a second), so these bound only how long a missed notification could
    /// matter; long ones spare `du`, `tar` and `stat` a round trip per file.
    public var entryTimeout: Double = 30
    public var attrTimeout: Double = 30
    public var maxThreads: UInt32 = 16
    /// Microseconds a thread that answered a request (other than a bulk read or write)
    /// polls for the next before it sleeps: a caller working through files one at a time
    /// then finds a thread awake (see CFuse's shim.c). 0, the default: threads sleep at
    /// once. On two cores polling made creates and `cat` faster but `rm -rf` and `cp -R`
    /// slower (the poller takes the core the daemon's own background work needs).
    public var pollMicroseconds = 0
    /// Unmount on SIGTERM, SIGINT and SIGHUP. libfuse keeps one such session per process,
    /// so a process serving several mounts (tests) turns this off.
    public var handleSignals = true
    public init(mountpoint: String) { self.mountpoint = mountpoint }
}

/// Why mounting failed, in words a person can act on.
public struct MountError: Error, CustomStringConvertible {
    public let description: String
}

/// The state every callback reaches through the session's userdata.
final class FuseContext: Sendable {
    let volume: VolumeFS
    let logger: Logger
    let entryTimeout: Double
    let attrTimeout: Double
    /// The libfuse session (as an address: pointers are not Sendable) once it exists,
    /// for the kernel cache notifications.
    let session = Atomic<UInt>(0)
    let metrics = RequestMetrics()
    let retrievals = Retrievals()

    init(volume: VolumeFS, logger: Logger, options: MountOptions) {
        self.volume = volume
        self.logger = logger
        self.entryTimeout = options.entryTimeout
        self.attrTimeout = options.attrTimeout
    }

    /// Tells the kernel to forget what it cached of something another mount changed.
    func notify(_ what: Invalidation) {
        let address = session.load(ordering: .acquiring)
        guard address != 0, let session = OpaquePointer(bitPattern: address) else { return }
        switch what {
        case .inode(let ino):
            _ = fuse_lowlevel_notify_inval_inode(session, ino.rawValue, 0, 0)
        case .entry(let parent, let name):
            _ = withCString(name.bytes) { pointer in
                fuse_lowlevel_notify_inval_entry(session, parent.rawValue, pointer, name.bytes.count)
            }
        }
    }

    /// Copies the kernel's cached pages of `ino` from `offset` into `buffer`, up to the
    /// first page it does not hold (or the end of the file); nil when it holds no such
    /// file or did not answer in time. Never call it from a thread that serves requests:
    /// the answer comes as one.
    func retrieve(_ ino: InodeNumber, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let address = session.load(ordering: .acquiring)
        guard address != 0, let session = OpaquePointer(bitPattern: address), buffer.count > 0 else { return nil }
        let (cookie, waiter) = retrievals.register(buffer)
        let status = fuse_lowlevel_notify_retrieve(session, ino.rawValue, buffer.count, off_t(offset),
                                                   UnsafeMutableRawPointer(bitPattern: cookie))
        guard status == 0 else {
            _ = retrievals.take(cookie)
            return nil
        }
        return retrievals.wait(cookie, waiter, seconds: 5)
    }

    /// Tells the kernel that `ino`'s attributes changed behind a reply that carried none (a
    /// write that removed setuid): only the attributes, since pages of the file may be
    /// locked by the very write being answered.
    func forgetAttributes(_ ino: InodeNumber) {
        let address = session.load(ordering: .acquiring)
        guard address != 0, let session = OpaquePointer(bitPattern: address) else { return }
        _ = fuse_lowlevel_notify_inval_inode(session, ino.rawValue, -1, 0)
    }

    func configure(_ conn: UnsafeMutablePointer<fuse_conn_info>) {
        // Fewer, larger requests: the kernel sends up to 1 MiB per write and reads ahead
        // 4 MiB, instead of its 128 KiB defaults.
        conn.pointee.max_write = 1 << 20
        conn.pointee.max_readahead = UInt32(FuseMount.readahead)
        // Symlink targets never change (a new target is a new inode, and inode numbers are
        // never reused), so the kernel may keep them in its page cache.
        let wanted = UInt32(FUSE_CAP_READDIRPLUS | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC
                            | FUSE_CAP_CACHE_SYMLINKS)
        conn.pointee.want |= wanted & conn.pointee.capable
        // The kernel would drop a file's pages whenever fresh attributes show an mtime it
        // had not seen, and the daemon stamps writes with its own clock: every file written
        // here would be read from the daemon again after the next `ls -l`. The pages need no
        // such guess: an open keeps them only while the file is as it was when they were
        // cached (`keep_cache`), and a change made by another mount invalidates them as the
        // change feed reports it.
        conn.pointee.want &= ~UInt32(FUSE_CAP_AUTO_INVAL_DATA)
        logger.info("connection ready: protocol \(conn.pointee.proto_major).\(conn.pointee.proto_minor), max_write \(conn.pointee.max_write)")
    }

    func entry(_ attr: Attr) -> fuse_entry_param {
        var entry = fuse_entry_param()
        entry.ino = attr.ino.rawValue
        entry.generation = 1
        entry.attr = statOf(attr)
        entry.attr_timeout = attrTimeout
        entry.entry_timeout = entryTimeout
        return entry
    }

    func replyEntry(_ req: fuse_req_t?, _ attr: Attr) {
        var entry = entry(attr)
        if fuse_reply_entry(req, &entry) != 0 {
            // The request was interrupted: the kernel never got this reference.
            volume.forget(attr.ino, 1)
        }
    }

    func replyAttr(_ req: fuse_req_t?, _ attr: Attr) {
        var st = statOf(attr)
        fuse_reply_attr(req, &st, attrTimeout)
    }

    /// getxattr/listxattr: size 0 asks for the length; a smaller buffer is ERANGE.
    func replyXattr(_ req: fuse_req_t?, _ value: [UInt8], _ size: Int) {
        if size == 0 {
            fuse_reply_xattr(req, value.count)
        } else if value.count > size {
            fuse_reply_err(req, ERANGE)
        } else {
            value.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
        }
    }

    func fail(_ req: fuse_req_t?, _ op: StaticString, _ ino: fuse_ino_t, _ error: FSError, errno code: Int32? = nil) {
        let code = code ?? error.errno
        switch code {
        case ENOENT, ESTALE, EEXIST, ENOTEMPTY, ENODATA, ERANGE, ENOTDIR, EISDIR, ENAMETOOLONG:
            logger.debug("\(op) on inode \(ino) failed with errno \(code): \(error)")
        case EIO:
            logger.error("\(op) on inode \(ino) failed with errno \(code): \(error)")
        default:
            logger.notice("\(op) on inode \(ino) failed with errno \(code): \(error)")
        }
        fuse_reply_err(req, code)
    }

    func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ handle: UInt64?, _ size: Int, _ offset: off_t, plus: Bool) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 8)
        defer { buffer.deallocate() }
        var used = 0
        let op: StaticString = plus ? "readdirplus" : "readdir"
        do {
            try volume.readdir(InodeNumber(ino), handle: handle.map(FileHandleID.init(rawValue:)), offset: Int64(offset),
                               plus: plus) { listing in
                let added = withCString(listing.name.bytes) { name -> Int in
                    let target = buffer.advanced(by: used).assumingMemoryBound(to: CChar.self)
                    if plus {
                        var entry = entry(listing.attr)
                        return fuse_add_direntry_plus(req, target, size - used, name, &entry, off_t(listing.nextOffset))
                    }
                    var st = statOf(listing.attr)
                    return fuse_add_direntry(req, target, size - used, name, &st, off_t(listing.nextOffset))
                }
                guard added <= size - used else { return false }
                used += added
                return true
            }
        } catch {
            // Entries already added count as lookups: answer with them rather than an error.
            if used == 0 {
                fail(req, op, ino, error)
                return
            }
            logger.warning("\(op) of inode \(ino) stopped early: \(error)")
        }
        fuse_reply_buf(req, buffer.assumingMemoryBound(to: CChar.self), used)
    }
}

/// One mounted volume: mount, serve until unmounted or signalled, then clean up.
// @unchecked: `session` and `arguments` are set by `mount()` before `run()` starts on
// whichever thread serves the mount, and only `run()` touches them after that.
public final class FuseMount: @unchecked Sendable {
    let context: FuseContext
    let options: MountOptions
    var session: OpaquePointer?
    /// Whether the session's threads poll for requests (see `MountOptions.pollMicroseconds`).
    var polling = false
    var arguments: [UnsafeMutablePointer<CChar>?] = []

    public init(volume: VolumeFS, options: MountOptions, logger: Logger) {
        self.context = FuseContext(volume: volume, logger: logger, options: options)
        self.options = options
    }

    deinit {
        for argument in arguments { free(argument) }
    }

    /// Creates the session and mounts it. On return the mountpoint is live, and requests
    /// wait for `run`.
    public func mount() throws(MountError) {
        var fuseOptions = ["default_permissions", "fsname=\(options.source)", "subtype=netvol"]
        fuseOptions += options.fuseOptions
        let argv = ["netvol", "-o", fuseOptions.joined(separator: ",")]
        arguments = argv.map { strdup($0) } + [nil]
        var args = CFuse_args_init(Int32(argv.count), &arguments)
        var ops = makeOperations()
        let userdata = Unmanaged.passUnretained(context).toOpaque()
        guard let session = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
            fuse_opt_free_args(&args)
            throw MountError(description: "libfuse refused the mount options \(fuseOptions.joined(separator: ","))")
        }
        fuse_opt_free_args(&args)
        context.session.store(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(session))), ordering: .releasing)
        let context = self.context
        context.volume.setInvalidator { what in context.notify(what) }
        context.volume.setPageRetriever { ino, offset, buffer in context.retrieve(ino, offset: offset, into: buffer) }
        if fuse_session_mount(session, options.mountpoint) != 0 {
            context.session.store(0, ordering: .releasing)
            fuse_session_destroy(session)
            throw MountError(description: "cannot mount at \(options.mountpoint) (see the message above)")
        }
        if options.handleSignals && fuse_set_signal_handlers(session) != 0 {
            fuse_session_unmount(session)
            fuse_session_destroy(session)
            throw MountError(description: "cannot install signal handlers")
        }
        self.session = session
        let ownIO = CFuse_session_custom_io(session, options.pollMicroseconds * 1000) == 0
        polling = ownIO && options.pollMicroseconds > 0
        if !ownIO {
            context.logger.notice("cannot read requests through netvol's own I/O: no polling, and the kernel asks for security.capability before each write")
        }
        raiseReadahead()
    }

    /// Requests a polling thread found awake, over every mount of the process.
    public static var requestsFoundByPolling: UInt64 { UInt64(CFuse_polled_requests()) }

    /// Bytes the kernel reads ahead of a sequential reader (and of page faults on a
    /// mapping): a default chunk's worth, so that four 1 MiB requests are in flight at once
    /// and the daemon's threads fill them in parallel. Against 1 MiB, cold reads from an
    /// object store and warm reads from the local cache both gained a fifth, cold `mmap`
    /// loads a third.
    public static let readahead = 4 << 20

    /// The kernel caps a FUSE mount's readahead at its 128 KiB default whatever `init`
    /// asks for; only the mount's backing device setting raises it. Cold sequential reads
    /// and mmap loads then arrive as 1 MiB requests instead of 128 KiB ones.
    func raiseReadahead() {
        guard let device = Self.device(of: options.mountpoint) else {
            context.logger.notice("cannot find \(options.mountpoint) in /proc/self/mountinfo; readahead stays at the kernel's default")
            return
        }
        let path = "/sys/class/bdi/\(device)/read_ahead_kb"
        let value = "\(Self.readahead >> 10)\n"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0, value.withCString({ write(fd, $0, strlen($0)) }) > 0 else {
            context.logger.notice("cannot set \(path) (\(String(cString: strerror(errno)))); readahead stays at the kernel's default")
            if fd >= 0 { close(fd) }
            return
        }
        close(fd)
    }

    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The major:minor of the netvol mount at `mountpoint` (the most recent one there).
    static func device(of mountpoint: String) -> String? {
        guard let table = readFile("/proc/self/mountinfo") else { return nil }
        // Only the parent is resolved: a call that reached the mountpoint itself would
        // wait for this daemon, which does not serve requests yet.
        var path = mountpoint
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        let slash = path.lastIndex(of: "/")
        let parent = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let resolved = realpath(parent, nil).map { pointer in
            defer { free(pointer) }
            let dir = String(cString: pointer)
            return (dir == "/" ? "" : dir) + "/" + name
        } ?? mountpoint
        // mountinfo escapes space, tab, newline and backslash as octal.
        let escaped = resolved.unicodeScalars.map { scalar -> String in
            switch scalar {
            case " ": return "\\040"
            case "\t": return "\\011"
            case "\n": return "\\012"
            case "\\": return "\\134"
            default: return String(scalar)
            }
        }.joined()
        var found: String?
        for line in table.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, fields[4] == escaped,
                  let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count, fields[dash + 1] == "fuse.netvol" else { continue }
            found = String(fields[2])
        }
        return found
    }

    /// Serves requests until the volume is unmounted or the process gets SIGTERM, SIGINT
    /// or SIGHUP; then commits everything buffered and unmounts.
    public func run() {
        guard let session else { return }
        let result = CFuse_session_loop_mt(session, options.maxThreads, 4, polling ? 1 : 0)
        if result != 0 && result != -EINTR {
            context.logger.warning("session loop ended with \(result)")
        }
        context.session.store(0, ordering: .releasing)
        // Nothing reads the kernel's answers any more.
        context.retrievals.abandonAll()
        context.volume.shutdown()
        if options.handleSignals { fuse_remove_signal_handlers(session) }
        fuse_session_unmount(session)
        fuse_session_destroy(session)
        self.session = nil
    }
}

/// Retrievals of the kernel's pages under way: each waits for the kernel's answer, which
/// a request-serving thread delivers (`retrieve_reply`), matched by its cookie.
final class Retrievals: Sendable {
    final class Waiter: @unchecked Sendable {
        // Unchecked: `got` is written by the one thread that took the waiter out of the
        // table, before it signals `answered`; the waiting thread reads it after.
        let buffer: UnsafeMutableRawBufferPointer
        var got: Int?
        let answered = DispatchSemaphore(value: 0)
        init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }
    }

    let waiting = Mutex<[UInt: Waiter]>([:])
    let nextCookie = Atomic<UInt>(1)

    func register(_ buffer: UnsafeMutableRawBufferPointer) -> (UInt, Waiter) {
        let cookie = nextCookie.add(1, ordering: .relaxed).oldValue
        let waiter = Waiter(buffer)
        waiting.withLock { $0[cookie] = waiter }
        return (cookie, waiter)
    }

    func take(_ cookie: UInt) -> Waiter? { waiting.withLock { $0.removeValue(forKey: cookie) } }

    /// Ends every wait unanswered.
    func abandonAll() {
        let all = waiting.withLock { waiting in
            defer { waiting = [:] }
            return Array(waiting.values)
        }
        for waiter in all { waiter.answered.signal() }
    }

    /// The kernel's answer: its bytes copied into the waiter's buffer.
    func deliver(_ cookie: UInt, _ data: UnsafeMutablePointer<fuse_bufvec>) {
        guard let waiter = take(cookie) else { return }
        let copied = CFuse_copy_bufvec(data, waiter.buffer.baseAddress, min(fuse_buf_size(data), waiter.buffer.count))
        waiter.got = copied >= 0 ? copied : nil
        waiter.answered.signal()
    }

    func wait(_ cookie: UInt, _ waiter: Waiter, seconds: Double) -> Int? {
        if waiter.answered.wait(timeout: .now() + seconds) == .timedOut {
            // Not answered in time: no answer may write into the buffer once this returns,
            // so one being delivered right now is waited for.
            if take(cookie) != nil { return nil }
            waiter.answered.wait()
        }
        return waiter.got
    }
}
