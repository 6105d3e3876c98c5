#if canImport(Glibc)
import Glibc
#endif
public import ChunkStore
import Synchronization

/// An open descriptor of one object, closed when the last user lets go: readers keep
/// it alive while they read, even if the cache evicts it meanwhile.
final class ObjectFile: Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// Recently read objects' descriptors, so a read costs one pread instead of an open,
/// a pread and a close. Objects never change, so a cached descriptor never goes stale.
struct DescriptorCache {
    var files: [ObjectID: ObjectFile] = [:]
    /// Insertion order, for evicting the oldest.
    var order: [ObjectID] = []
    let capacity: Int

    mutating func insert(_ id: ObjectID, _ file: ObjectFile) {
        if files.updateValue(file, forKey: id) == nil { order.append(id) }
        if order.count > capacity {
            let overflow = order.count - capacity
            for old in order.prefix(overflow) { files[old] = nil }
            order.removeFirst(overflow)
        }
    }

    mutating func remove(_ id: ObjectID) {
        if files.removeValue(forKey: id) != nil { order.removeAll { $0 == id } }
    }
}

/// A chunk store in a local directory: object `id` is the file `ROOT/xx/<16 hex digits>`,
/// fanned out over 256 subdirectories by the id's low byte so no directory grows huge.
///
/// The objects are every file's bytes, unencrypted: only the daemon's user may reach them.
/// Directories are made 0700 and objects 0400 (never written again) from the first byte;
/// permissions inside the volume are enforced by the mount, not here.
public final class LocalChunkStore: ChunkStore {
    static let directoryMode: mode_t = 0o700
    static let objectMode: mode_t = 0o400

    public let root: String
    let descriptors = Mutex(DescriptorCache(capacity: 128))

    /// Room objects leave free on their disk. The metadata shares the disk, and deleting
    /// a file must commit a transaction before its objects can go: with the disk filled
    /// to the last block by objects, that commit failed and no deletion could free space.
    public static let metadataReserve: UInt64 = 16 << 20

    /// Opens the store at `root`, creating the directory if needed.
    public init(root: String) throws(StoreError) {
        self.root = root
        if mkdir(root, Self.directoryMode) != 0 && errno != EEXIST {
            throw .io(errno: errno, "cannot create \(root): \(Self.describe(errno))")
        }
    }

    func directory(of id: ObjectID) -> String {
        let hex = id.description
        return root + "/" + hex.suffix(2)
    }

    /// The file that holds object `id`.
    public func path(of id: ObjectID) -> String {
        directory(of: id) + "/" + id.description
    }

    public func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        if let room = availableBytes(), room < UInt64(bytes.count) { throw .noSpace }
        let dir = directory(of: id)
        let path = dir + "/" + id.description
        var fd = Self.create(path)
        if fd < 0 && errno == ENOENT {
            if mkdir(dir, Self.directoryMode) != 0 && errno != EEXIST {
                throw Self.failure(errno, "cannot create \(dir)")
            }
            fd = Self.create(path)
        }
        if fd < 0 {
            let code = errno
            if code == EEXIST { throw .exists(id) }
            throw Self.failure(code, "cannot create \(path)")
        }
        func fail(_ code: Int32, _ what: String) -> StoreError {
            close(fd)
            unlink(path)
            return Self.failure(code, "cannot \(what) \(path)")
        }
        if let code = writeAll(fd, bytes) { throw fail(code, "write") }
        // The object must be on disk before any metadata that names it can be.
        if fdatasync(fd) != 0 { throw fail(errno, "sync") }
        close(fd)
        Self.syncDirectory(dir)
    }

    /// Aligned buffers kept for the next objects: filling fresh pages (a fault and a
    /// zeroing for each) costs more than the copy into them.
    static let buffersKept = 4

    /// Creates an object's file, with `O_DIRECT` where the filesystem allows it.
    static func create(_ path: String) -> Int32 {
        DirectIO.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: objectMode)
    }

    /// Writes `bytes` from the start of `fd`; an errno if it could not.
    ///
    /// Objects are written past the page cache (`O_DIRECT`): an aligned chunk as it is,
    /// anything else from an aligned copy padded to a whole block and then cut to length.
    /// A chunk written once is read back through the mounted file's own pages, so its
    /// object's pages would only be a second copy, and filling them cost the daemon more
    /// CPU than the disk took to write them (half of the CPU of a streaming write went to
    /// the kernel copying objects into the page cache).
    /// A filesystem that refuses the direct write gets an ordinary one.
    func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return nil }
        if DirectIO.isDirect(fd) {
            let failed: Int32?
            if DirectIO.isAligned(bytes) {
                // A full chunk from the volume's aligned write buffers: no copy.
                failed = Self.pwriteAll(fd, bytes)
            } else {
                let padded = DirectIO.padded(bytes.count)
                let buffer = takeBuffer(padded)
                defer { giveBack(buffer) }
                buffer.copyMemory(from: bytes)
                if padded > bytes.count {
                    (buffer.baseAddress! + bytes.count).initializeMemory(as: UInt8.self, repeating: 0, count: padded - bytes.count)
                }
                failed = Self.pwriteAll(fd, UnsafeRawBufferPointer(rebasing: buffer[0..<padded]))
                if failed == nil { return ftruncate(fd, off_t(bytes.count)) == 0 ? nil : errno }
            }
            guard let failed else { return nil }
            guard failed == EINVAL else { return failed }
            // Refused after all (some filesystems accept the flag, not the write).
            DirectIO.drop(fd)
            if ftruncate(fd, 0) != 0 { return errno }
        }
        return Self.pwriteAll(fd, UnsafeRawBufferPointer(start: base, count: bytes.count))
    }

    static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
        var written = 0
        while written < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + written, bytes.count - written, off_t(written))
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            written += n
        }
        return nil
    }

    /// An aligned buffer, held by one put at a time: the pool only passes it on.
    struct AlignedBuffer: @unchecked Sendable {
        let bytes: UnsafeMutableRawBufferPointer
    }

    let buffers = Mutex<[AlignedBuffer]>([])

    func takeBuffer(_ size: Int) -> UnsafeMutableRawBufferPointer {
        let kept = buffers.withLock { buffers -> AlignedBuffer? in
            guard let index = buffers.firstIndex(where: { $0.bytes.count >= size }) else { return nil }
            return buffers.remove(at: index)
        }
        return kept?.bytes ?? UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: DirectIO.alignment)
    }

    func giveBack(_ buffer: UnsafeMutableRawBufferPointer) {
        let dropped = buffers.withLock { buffers -> AlignedBuffer? in
            buffers.append(AlignedBuffer(bytes: buffer))
            guard buffers.count > Self.buffersKept else { return nil }
            // The smallest goes: the rest fit the chunks that come most.
            let smallest = buffers.indices.min { buffers[$0].bytes.count < buffers[$1].bytes.count }!
            return buffers.remove(at: smallest)
        }
        dropped?.bytes.deallocate()
    }

    deinit {
        for buffer in buffers.withLock({ $0 }) { buffer.bytes.deallocate() }
    }

    public func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        let file = try openFile(id)
        var done = 0
        while done < buffer.count {
            let n = pread(file.fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw Self.failure(code, "cannot read \(path(of: id))")
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func prefetch(_ id: ObjectID) {
        // The kernel starts reading the whole object into its page cache and returns.
        guard let file = try? openFile(id) else { return }
        _ = posix_fadvise(file.fd, 0, 0, POSIX_FADV_WILLNEED)
    }

    func openFile(_ id: ObjectID) throws(StoreError) -> ObjectFile {
        if let file = descriptors.withLock({ $0.files[id] }) { return file }
        let path = path(of: id)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT { throw .notFound(id) }
            throw Self.failure(code, "cannot open \(path)")
        }
        let file = ObjectFile(fd: fd)
        descriptors.withLock { $0.insert(id, file) }
        return file
    }

    public func size(of id: ObjectID) throws(StoreError) -> Int {
        var info = stat()
        if stat(path(of: id), &info) != 0 {
            let code = errno
            if code == ENOENT { throw .notFound(id) }
            throw Self.failure(code, "cannot stat \(path(of: id))")
        }
        return Int(info.st_size)
    }

    public func delete(_ id: ObjectID) throws(StoreError) {
        descriptors.withLock { $0.remove(id) }
        if unlink(path(of: id)) != 0 {
            let code = errno
            if code == ENOENT { return }
            throw Self.failure(code, "cannot delete \(path(of: id))")
        }
    }

    /// Takes group and other access away from the store's directories (and, with
    /// `objects`, from every object), for stores made before they were created private.
    /// Closing the directories is enough to shut everyone else out at once; the objects'
    /// own modes follow for tidiness and can be left to a background pass.
    public func restrictPermissions(objects: Bool) {
        Self.restrict(root, to: Self.directoryMode)
        guard let subdirectories = try? Self.entries(of: root) else { return }
        for sub in subdirectories where sub.count == 2 {
            let dir = root + "/" + sub
            Self.restrict(dir, to: Self.directoryMode)
            guard objects, let names = try? Self.entries(of: dir) else { continue }
            for name in names where ObjectID(hex: name) != nil {
                Self.restrict(dir + "/" + name, to: Self.objectMode)
            }
        }
    }

    /// Sets `path`'s permission bits to `mode` if it grants more than that; failures are
    /// left alone (a file may vanish, or belong to someone else).
    public static func restrict(_ path: String, to mode: mode_t) {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & 0o7777 & ~mode != 0 else { return }
        _ = chmod(path, mode)
    }

    public func availableBytes() -> UInt64? {
        var info = statvfs()
        guard statvfs(root, &info) == 0 else { return nil }
        let free = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        return free > Self.metadataReserve ? free - Self.metadataReserve : 0
    }

    public func list() throws(StoreError) -> [ObjectID] {
        var ids: [ObjectID] = []
        for sub in try Self.entries(of: root) where sub.count == 2 {
            for name in try Self.entries(of: root + "/" + sub) {
                if let id = ObjectID(hex: name) { ids.append(id) }
            }
        }
        return ids
    }

    static func entries(of dir: String) throws(StoreError) -> [String] {
        guard let handle = opendir(dir) else {
            if errno == ENOENT || errno == ENOTDIR { return [] }
            throw failure(errno, "cannot list \(dir)")
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// A new directory entry is durable only once its directory is synced.
    static func syncDirectory(_ dir: String) {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    static func failure(_ code: Int32, _ what: String) -> StoreError {
        if code == ENOSPC || code == EDQUOT { return .noSpace }
        return .io(errno: code, "\(what): \(describe(code))")
    }

    static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}
