import ChunkStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A cached file, open: its descriptor is closed when the last reader lets go, so a
/// file evicted (unlinked) while being read stays readable to the end.
///
/// Cached files are read and written with `O_DIRECT` where the filesystem allows it:
/// the bytes a reader gets already sit in the kernel's page cache of the mounted file,
/// so a second copy in the cache file's pages would only double the memory a model
/// takes, and filling fresh page-cache pages cost about as much CPU as the download
/// itself (a second of system time per GiB on a VM whose freed pages go back to its
/// host). A filesystem that refuses `O_DIRECT` gets ordinary I/O on the same descriptor.
final class OpenObject: Sendable {
    let fd: Int32
    private let direct: Atomic<Bool>

    init(fd: Int32) {
        self.fd = fd
        self.direct = Atomic(DirectIO.isDirect(fd))
    }

    deinit { close(fd) }

    var isDirect: Bool { direct.load(ordering: .relaxed) }

    /// Goes on with ordinary I/O after the filesystem refused a direct transfer.
    private func dropDirect() {
        DirectIO.drop(fd)
        direct.store(false, ordering: .relaxed)
    }

    static func isAligned(_ offset: Int, _ count: Int, _ address: UnsafeRawPointer?) -> Bool {
        guard let address else { return false }
        let alignment = DirectIO.alignment
        return offset % alignment == 0 && count % alignment == 0 && Int(bitPattern: address) % alignment == 0
    }

    /// Reads from `offset` until `buffer` is full or the file ends; nil with errno set
    /// on an error.
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard buffer.baseAddress != nil, buffer.count > 0 else { return 0 }
        if isDirect && !Self.isAligned(offset, buffer.count, buffer.baseAddress) {
            return readAround(at: offset, into: buffer)
        }
        return readAll(at: offset, into: buffer)
    }

    /// A direct read of the aligned range around `[offset, offset + buffer.count)`,
    /// through a scratch buffer.
    private func readAround(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let a = DirectIO.alignment
        let low = offset / a * a
        let high = (offset + buffer.count + a - 1) / a * a
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: high - low, alignment: a)
        defer { scratch.deallocate() }
        guard let got = readAll(at: low, into: scratch) else { return nil }
        let available = max(0, min(got - (offset - low), buffer.count))
        if available > 0 {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[(offset - low)..<(offset - low + available)]))
        }
        return available
    }

    private func readAll(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, base + done, buffer.count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL && isDirect {
                dropDirect()
                continue
            }
            if n < 0 { return nil }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes `bytes` at `offset`. A direct write of a tail shorter than a block writes
    /// the whole block from `bytes`' storage, which must extend that far (`room`), and
    /// the caller truncates the file to its length afterwards.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int, room: Int) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        let a = DirectIO.alignment
        var count = bytes.count
        if isDirect {
            let padded = (count + a - 1) / a * a
            if padded <= room && Self.isAligned(offset, padded, base) { count = padded } else { dropDirect() }
        }
        var done = 0
        while done < count {
            let n = pwrite(fd, base + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL && isDirect {
                dropDirect()
                count = bytes.count
                continue
            }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// The file's length now (not when it was opened: that is how truncation shows).
    var currentSize: Int {
        var info = stat()
        return fstat(fd, &info) == 0 ? Int(info.st_size) : 0
    }
}

/// What this process knows of the cache directory: every object's size, in order of
/// last use, plus the open descriptors of the recently used ones. Not thread-safe; the
/// store keeps it behind a lock and never does I/O while holding it.
struct CacheIndex {
    struct Entry {
        var size: Int
        /// The object's size as the backing store reported it, once someone asked; a
        /// cached file shorter than this was truncated.
        var verifiedSize: Int?
        /// Last time the file's mtime was set, in seconds; the mtime is what orders
        /// the cache after a restart, so it is refreshed, but not on every read.
        var touchedAt: Int
        var file: OpenObject?
        var older: ObjectID?
        var newer: ObjectID?
    }

    private(set) var entries: [ObjectID: Entry] = [:]
    private(set) var totalBytes = 0
    /// Least recently used end of the list, where eviction starts.
    private(set) var oldest: ObjectID?
    private var newest: ObjectID?

    /// Ids whose descriptors are open, as a ring: opening one more closes the one opened
    /// longest ago (if it is still open), so the number of descriptors stays bounded.
    private var opened: [ObjectID?]
    private var nextSlot = 0

    init(descriptorLimit: Int) {
        opened = Array(repeating: nil, count: max(1, descriptorLimit))
    }

    var count: Int { entries.count }

    subscript(id: ObjectID) -> Entry? { entries[id] }

    /// Adds `id` as the most recently used, or marks it so if it is known.
    mutating func insertNewest(_ id: ObjectID, size: Int, touchedAt: Int) {
        if entries[id] != nil {
            use(id)
            return
        }
        entries[id] = Entry(size: size, touchedAt: touchedAt, older: newest)
        if let newest { entries[newest]?.newer = id }
        newest = id
        if oldest == nil { oldest = id }
        totalBytes += size
    }

    /// Adds `id` as the least recently used: for files another process cached, which
    /// this one has not used yet.
    mutating func insertOldest(_ id: ObjectID, size: Int, touchedAt: Int) {
        guard entries[id] == nil else { return }
        entries[id] = Entry(size: size, touchedAt: touchedAt, newer: oldest)
        if let oldest { entries[oldest]?.older = id }
        oldest = id
        if newest == nil { newest = id }
        totalBytes += size
    }

    mutating func use(_ id: ObjectID) {
        guard newest != id, let entry = entries[id] else { return }
        unlink(id, entry)
        entries[id]?.newer = nil
        entries[id]?.older = newest
        if let newest { entries[newest]?.newer = id }
        newest = id
        if oldest == nil { oldest = id }
    }

    @discardableResult
    mutating func remove(_ id: ObjectID) -> Entry? {
        guard let entry = entries[id] else { return nil }
        unlink(id, entry)
        entries[id] = nil
        totalBytes -= entry.size
        return entry
    }

    private mutating func unlink(_ id: ObjectID, _ entry: Entry) {
        if let older = entry.older { entries[older]?.newer = entry.newer } else { oldest = entry.newer }
        if let newer = entry.newer { entries[newer]?.older = entry.older } else { newest = entry.older }
    }

    mutating func setVerifiedSize(_ id: ObjectID, _ size: Int) { entries[id]?.verifiedSize = size }
    mutating func setTouched(_ id: ObjectID, at time: Int) { entries[id]?.touchedAt = time }

    /// Keeps `file` as `id`'s descriptor, closing (once its readers are done) the
    /// descriptor that has been open longest.
    mutating func keep(_ file: OpenObject, for id: ObjectID) {
        guard entries[id] != nil, entries[id]?.file == nil else { return }
        if let previous = opened[nextSlot] { entries[previous]?.file = nil }
        opened[nextSlot] = id
        nextSlot = (nextSlot + 1) % opened.count
        entries[id]?.file = file
    }
}
