// CachedChunkStore: a bounded on-disk cache of whole objects in front of another store
// (typically S3), one per worker host.
//
// Owns: the cache directory (`DIR/xx/<16 hex id>`, like a local store, plus `DIR/tmp/`
// for downloads under way), its size bound, and which objects stay in it.
// Assumes: objects never change once written, so a cached copy is never stale and the
// cache can outlive the process; the backing store is the durable one and the only one
// `put`, `delete` and `list` answer for.
//
// A fetched object is written to a uniquely named temporary file and renamed into place,
// so a torn file is never visible under its final name, and several processes (mounts)
// can share one directory: the worst a race does is fetch an object twice. A file that
// one process evicts while another reads it stays readable through the open descriptor.
//
// Damage: the layer above checks every read against its checksums and calls `discard`
// on a mismatch, which deletes the cached file so that the next read fetches it again.
// A truncated file shows as a short read: the object's size is then asked of the backing
// store (once; it is remembered), and a cached file shorter than that is dropped and
// fetched again. Fetches themselves check that they got as many bytes as the backing
// store said the object has. Cached files are not fsynced (the backing store is the
// durable copy): after a machine crash one may be short or hold zeros, which the two
// checks above catch.
//
// Size: least recently used objects are evicted to keep the total at most the capacity,
// and the cache's filesystem at most 90% full. Use is ordered in memory and on disk by
// the files' mtimes (refreshed at most once a minute per object), which is what orders
// the cache again after a restart. Each process bounds what it knows of; files other
// processes add are learned at start and by a rescan every few hundred insertions.

import ChunkStore
import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The cache's counters since the store was opened (sizes: now).
public struct CacheStatistics: Sendable, Equatable {
    /// Reads served from a cached file.
    public var hits: Int
    /// Reads that had to fetch the object first.
    public var misses: Int
    /// Bytes read from the backing store into the cache.
    public var bytesFetched: Int
    /// Objects removed to stay within the bounds.
    public var evictions: Int
    /// Objects whose copy was written after their read or write (`keep(unwritten:_:)`).
    public var writtenLater: Int
    /// Objects downloaded only to be cached (`cache(_:)`): copies that could not be
    /// written later, since the kernel's pages they were to come from had gone.
    public var fetchedAgain: Int
    /// Bytes and objects in the cache, as far as this process knows.
    public var bytesCached: Int
    public var objectsCached: Int
}

public final class CachedChunkStore: ChunkStore {
    public let directory: String
    public let capacityBytes: Int
    public let backing: any ChunkStore
    /// The fraction of the cache's filesystem the cache stops filling at.
    let maxFilesystemUse: Double

    let index: Mutex<CacheIndex>
    let fetches = Mutex<[ObjectID: Fetch]>([:])
    let prefetches = Mutex(PrefetchQueue())
    /// Download buffers not in use (see `takePiece`).
    let pieces = Mutex<[Piece]>([])
    struct Piece: @unchecked Sendable {
        // Unchecked: a buffer in the list belongs to no thread; `takePiece` hands it to one.
        let buffer: UnsafeMutableRawBufferPointer
    }
    /// Objects whose download ended a moment ago, their bytes still in the download's
    /// buffer. A sequential reader asks for each chunk right after the prefetch that
    /// fetched it; copying it from memory spares reading back from the disk what was just
    /// written there (a direct read of it cost the daemon about a tenth of its CPU in a
    /// cold read, and waits for the disk). Each stays until it has been read whole once,
    /// or until newer ones push it out.
    let landed = Mutex(LandedPieces())
    /// Objects a streaming read fetched or a streaming write stored whose copy in the
    /// cache was left for later (see `prefetch(_:writingLater:)`, `put(_:_:writingLater:)`),
    /// with their sizes, oldest first.
    let unwritten = Mutex(UnwrittenObjects())
    /// Objects `cache(_:)` asked for, until their download ends: no reader waits for
    /// them, so their buffers are not landed for one.
    let cachingOnly = Mutex<Set<ObjectID>>([])
    let insertionsSinceScan = Atomic<Int>(0)

    let hits = Atomic<Int>(0)
    let misses = Atomic<Int>(0)
    let bytesFetched = Atomic<Int>(0)
    let evictions = Atomic<Int>(0)
    let writtenLater = Atomic<Int>(0)
    let fetchedAgain = Atomic<Int>(0)

    /// Fetches under way at once for prefetches: a download from an object store needs
    /// about this many requests in flight to reach its speed (and the reading thread's
    /// own fetch comes on top).
    static let prefetchConcurrency = 8
    /// Landed downloads kept in memory: as many chunks as a sequential reader's window
    /// fetches ahead of it (64 MiB at 4 MiB chunks).
    static let landedLimit = 16
    static let prefetchQueueLimit = 256
    static let rescanInterval = 256
    /// How long a read waits for another thread's fetch of the same object: several
    /// backing-store calls, each bounded by the backing store's own deadline.
    static let fetchWait: Double = 300
    /// Downloads are read from the backing store this much at a time.
    static let fetchPiece = 4 << 20
    /// Temporary files older than this were left by a process that died mid-fetch.
    static let staleTemporary = 3600

    /// Opens (creating it 0700 if needed) the cache in `directory` and learns what it
    /// already holds, evicting down to `capacityBytes` if it holds more.
    public init(directory: String, capacityBytes: Int, backing: any ChunkStore,
                maxFilesystemUse: Double = 0.9, descriptorLimit: Int = 128) throws(StoreError) {
        self.directory = directory
        self.capacityBytes = capacityBytes
        self.backing = backing
        self.maxFilesystemUse = maxFilesystemUse
        self.index = Mutex(CacheIndex(descriptorLimit: descriptorLimit))
        try Self.makeDirectory(directory)
        try Self.makeDirectory(directory + "/tmp")
        // All of them now: made on demand, each of the first few hundred objects a cold
        // read lands costs a failed rename, a mkdir and a second rename. An id's last byte
        // names its directory, so ids 0 to 255 name them all.
        for byte in UInt64(0)..<256 {
            try? Self.makeDirectory(subdirectory(of: ObjectID(rawValue: byte)))
        }
        removeStaleTemporaries()
        learn(scanning: true)
        evict(toFit: 0)
    }

    deinit {
        for piece in pieces.withLock({ $0 }) { piece.buffer.deallocate() }
        for piece in landed.withLock({ $0.pieces.values }) { piece.withdraw()?.deallocate() }
    }

    public var statistics: CacheStatistics {
        let (bytes, objects) = index.withLock { ($0.totalBytes, $0.count) }
        return CacheStatistics(hits: hits.load(ordering: .relaxed), misses: misses.load(ordering: .relaxed),
                               bytesFetched: bytesFetched.load(ordering: .relaxed),
                               evictions: evictions.load(ordering: .relaxed),
                               writtenLater: writtenLater.load(ordering: .relaxed),
                               fetchedAgain: fetchedAgain.load(ordering: .relaxed),
                               bytesCached: bytes, objectsCached: objects)
    }

    // MARK: Paths

    func subdirectory(of id: ObjectID) -> String { directory + "/" + id.description.suffix(2) }

    /// The cached file of object `id`, whether it is there or not.
    public func path(of id: ObjectID) -> String { subdirectory(of: id) + "/" + id.description }

    // MARK: ChunkStore

    public func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        try put(id, bytes, writingLater: false)
    }

    /// The writer is likely to read what it wrote, so its objects are cached too; a
    /// failure to cache one costs nothing but a later fetch. `writingLater`: the copy is
    /// not written now but listed in `unwrittenObjects`, for the layer above to write
    /// from the kernel's pages of the file once the writes have gone quiet. Written during
    /// the write, the copy doubles the bytes going to the disk while the writer waits,
    /// for a read that may never come.
    public func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer, writingLater: Bool) throws(StoreError) {
        try backing.put(id, bytes)
        if writingLater {
            unwritten.withLock { $0.add(id, size: bytes.count) }
        } else {
            _ = keep(id, bytes)
        }
    }

    /// Writes `bytes`, the whole of object `id`, into the cache; false when the cache
    /// cannot take them.
    func keep(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= capacityBytes, evict(toFit: bytes.count),
              let (file, temporary) = try? createTemporary(for: id) else { return false }
        guard writeThroughPieces(file, bytes) && install(temporary, as: id, size: bytes.count) else {
            Glibc.unlink(temporary)
            return false
        }
        index.withLock {
            $0.setVerifiedSize(id, bytes.count)
            $0.keep(file, for: id)
        }
        return true
    }

    /// Writes `bytes` into a new cached file by way of the aligned download buffers, which
    /// a direct write needs; the copy costs less than the page-cache pages it saves.
    func writeThroughPieces(_ file: OpenObject, _ bytes: UnsafeRawBufferPointer) -> Bool {
        if DirectIO.isAligned(bytes) {
            // Already aligned (a full chunk from the volume's write buffers): no copy.
            return file.write(bytes, at: 0, room: bytes.count) && ftruncate(file.fd, off_t(bytes.count)) == 0
        }
        let piece = takePiece()
        defer { givePieceBack(piece) }
        var offset = 0
        while offset < bytes.count {
            let count = min(piece.count, bytes.count - offset)
            piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]))
            guard file.write(UnsafeRawBufferPointer(rebasing: piece[0..<count]), at: offset, room: piece.count) else { return false }
            offset += count
        }
        return ftruncate(file.fd, off_t(bytes.count)) == 0
    }

    public func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        for attempt in 0..<2 {
            let file: OpenObject
            switch try obtain(id, countingUse: attempt == 0, for: attempt == 0 ? Wanted(offset: offset, buffer: buffer) : nil) {
            case .copied(let count):
                return count
            case .uncacheable:
                // The cache cannot hold it (full disk, or bigger than the capacity).
                return try backing.read(id, offset: offset, into: buffer)
            case .file(let cached):
                file = cached
            }
            guard let done = file.read(at: offset, into: buffer) else {
                throw Self.failure(errno, "cannot read \(path(of: id))")
            }
            if done == buffer.count { return done }
            // A short read is the end of the object, or of a truncated file.
            let expected = try verifiedSize(id)
            if file.currentSize >= expected { return done }
            discard(id)
        }
        throw .io(errno: EIO, "object \(id) is shorter in the cache at \(path(of: id)) than in its store, even after fetching it again")
    }

    /// Hands `body` the bytes in place when they are in a download's buffer: one that
    /// just landed, or one under way (waiting for them to land). A sequential cold reader
    /// is answered from there, sparing a copy of every byte it reads.
    public var lendsFromMemory: Bool { true }

    public func withBytesInMemory(_ id: ObjectID, offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) -> Void) -> Int? {
        if let lent = lendLanded(id, offset, count, to: body) {
            hits.add(1, ordering: .relaxed)
            return lent
        }
        guard let fetch = fetches.withLock({ $0[id] }) else { return nil }
        let deadline = Date(timeIntervalSinceNow: Self.fetchWait)
        var lent = fetch.lend(offset, count, before: deadline, to: body)
        if lent == nil, fetch.running.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .success {
            // The download ended while this waited for it: its buffer may have landed.
            lent = lendLanded(id, offset, count, to: body)
        }
        if lent != nil { misses.add(1, ordering: .relaxed) }
        return lent
    }

    public func prefetch(_ id: ObjectID) { prefetch(id, writingLater: false) }

    /// A download kept in memory waits there for a reader; one made only to fill the
    /// cache (a copy whose pages went) would hold a piece until newer ones push it out,
    /// and a streaming write that lost a few pages per object held 80 MiB more.
    public func cache(_ id: ObjectID) {
        if index.withLock({ $0[id] != nil }) { return }
        // Asked for by a reader already: that download fills the cache as well, and must
        // still land for the reader.
        if prefetches.withLock({ $0.pending.contains(id) }) || fetches.withLock({ $0[id] != nil }) { return }
        cachingOnly.withLock { _ = $0.insert(id) }
        prefetch(id, writingLater: false)
        // Not queued (the queue is full, or the object landed already): nothing will
        // take it out.
        if !prefetches.withLock({ $0.pending.contains(id) }) { cachingOnly.withLock { _ = $0.remove(id) } }
    }

    public var writesCopiesLater: Bool { true }

    /// Fetching an object for a streaming reader, the cache can leave its copy for later:
    /// the object is then kept in memory until the reader has read it, and listed in
    /// `unwrittenObjects`. The layer above writes it when the reads have gone quiet, from
    /// the kernel's pages of the file (`keep(unwritten:_:)`). Written during the read,
    /// the copy competes for the disk with whatever the read itself waits for.
    public func prefetch(_ id: ObjectID, writingLater: Bool) {
        if landed.withLock({ $0.pieces[id] != nil }) { return }
        if index.withLock({ $0[id] != nil }) {
            guard let file = openCached(id) else { return }
            if !file.isDirect {
                // Read through the page cache (a filesystem without O_DIRECT): the disk
                // reads it ahead, as a local store's object would be.
                _ = posix_fadvise(file.fd, 0, 0, POSIX_FADV_WILLNEED)
                return
            }
            // Read past the page cache: a worker reads it into memory (`landCached`).
        }
        let startWorker = prefetches.withLock { queue in
            queue.add(id, writingLater: writingLater, limit: Self.prefetchQueueLimit, workers: Self.prefetchConcurrency)
        }
        if startWorker {
            // A thread of its own: Dispatch on Linux runs about as many blocked work items
            // at once as there are cores, and each prefetch mostly waits for the network.
            Thread.detachNewThread { self.drainPrefetches() }
        }
    }

    public func size(of id: ObjectID) throws(StoreError) -> Int {
        if let size = index.withLock({ $0[id]?.verifiedSize }) { return size }
        return try backing.size(of: id)
    }

    public func delete(_ id: ObjectID) throws(StoreError) {
        try backing.delete(id)
        discard(id)
    }

    public func list() throws(StoreError) -> [ObjectID] {
        try backing.list()
    }

    /// Whether a whole copy of `id` is in the cache (put there by this process or by
    /// another mount of this host sharing the directory).
    public func isCached(_ id: ObjectID) -> Bool {
        index.withLock({ $0[id] != nil }) || access(path(of: id), F_OK) == 0
    }

    /// Objects fetched or stored but not written to the cache yet (`prefetch(_:writingLater:)`,
    /// `put(_:_:writingLater:)`), with their sizes, oldest first.
    public var unwrittenObjects: [(id: ObjectID, size: Int)] {
        unwritten.withLock { $0.all }
    }

    /// Writes an object listed in `unwrittenObjects` into the cache from `bytes`, which
    /// the caller has checked against the object's checksums; or, when `bytes` is nil,
    /// from the memory a download left it in, if it is still there. False when it was
    /// not written; it is listed no more either way, except when `bytes` was nil and the
    /// object was not in memory.
    @discardableResult
    public func keep(unwritten id: ObjectID, _ bytes: UnsafeRawBufferPointer?) -> Bool {
        guard let size = unwritten.withLock({ $0.size(of: id) }) else { return false }
        guard let bytes else {
            guard let piece = landed.withLock({ $0.pieces[id] }) else { return false }
            return keep(unwritten: id, from: piece)
        }
        let kept = bytes.count == size && keep(id, bytes)
        forget(unwritten: id)
        if kept { writtenLater.add(1, ordering: .relaxed) }
        return kept
    }

    /// Writes unwritten object `id` from the download buffer `piece` holds it in, and
    /// lists it no more.
    func keep(unwritten id: ObjectID, from piece: LandedPiece) -> Bool {
        let kept = piece.withBytes { keep(id, $0) } ?? false
        forget(unwritten: id)
        if kept { writtenLater.add(1, ordering: .relaxed) }
        return kept
    }

    /// Stops listing `id` among the unwritten objects; the next read of it fetches it.
    public func forget(unwritten id: ObjectID) {
        unwritten.withLock { $0.remove(id) }
    }

    /// Drops `id` from the cache only; the backing store keeps it.
    public func evict(_ id: ObjectID) {
        forget(unwritten: id)
        index.withLock { _ = $0.remove(id) }
        retireLanded(id)
        Glibc.unlink(path(of: id))
    }

    /// Deletes the cached file; the next read fetches the object again (and a backing
    /// store with copies of its own is told too).
    public func discard(_ id: ObjectID) {
        forget(unwritten: id)
        index.withLock { _ = $0.remove(id) }
        retireLanded(id)
        Glibc.unlink(path(of: id))
        backing.discard(id)
    }

    public func settle(timeout: Double) -> Bool {
        waitUntil(timeout) { fetches.withLock { $0.isEmpty } && prefetches.withLock { $0.workers == 0 } }
    }

    /// `settle` for the downloads of `ids` alone, whatever else is being fetched.
    public func settle(_ ids: Set<ObjectID>, timeout: Double) -> Bool {
        waitUntil(timeout) { fetches.withLock { fetches in !ids.contains { fetches[$0] != nil } } }
    }

    func waitUntil(_ timeout: Double, _ done: () -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !done() {
            if Date() >= deadline { return false }
            usleep(1000)
        }
        return true
    }

    // MARK: Fetching

    /// One fetch under way, which reads of the same object wait for instead of starting
    /// their own. While its first piece downloads, they take what they need from it as it
    /// lands: a cold open's first read waits for its own bytes, not for the whole chunk.
    final class Fetch: @unchecked Sendable {
        // Unchecked: `piece`, `landed` and `size` are only touched under `arrival`.
        /// Entered by the fetching thread until it is done, so that any number of
        /// waiters, even late ones, see the end.
        let running = DispatchGroup()
        let error = Mutex<StoreError?>(nil)
        private let arrival = NSCondition()
        /// The download buffer holding the object's first bytes, while it does.
        private var piece: UnsafeMutableRawBufferPointer?
        /// Until the download has its buffer, readers wait for it to.
        private var started = false
        private var landed = 0
        private var size: Int?
        /// What readers copied out of the first piece while it landed.
        private var taken = ReadCoverage()
        /// Readers reading the first piece in place: it is not reused until they are done.
        private var borrowers = 0

        var bytesTaken: ReadCoverage {
            arrival.lock()
            defer { arrival.unlock() }
            return taken
        }

        func expose(_ buffer: UnsafeMutableRawBufferPointer) {
            arrival.lock()
            piece = buffer
            started = true
            landed = 0
            arrival.unlock()
        }

        func arrived(_ count: Int, objectSize: Int?) {
            arrival.lock()
            // A retried transfer counts from 0 again over the same bytes.
            landed = max(landed, count)
            if let objectSize { size = objectSize }
            arrival.broadcast()
            arrival.unlock()
        }

        /// The buffer is about to be reused: nobody reads from it once this returns.
        func withdraw() {
            arrival.lock()
            piece = nil
            started = true
            arrival.broadcast()
            while borrowers > 0 { arrival.wait() }
            arrival.unlock()
        }

        /// Copies `wanted` (less at the object's end) from the first piece once it has
        /// landed there; nil when the piece cannot give it (past the piece, withdrawn, or
        /// not there by `deadline`), and the caller waits for the whole fetch instead.
        func copy(_ wanted: Wanted, before deadline: Date) -> Int? {
            lend(wanted.offset, wanted.buffer.count, before: deadline) { wanted.buffer.copyMemory(from: $0) }
        }

        /// `copy`, handing `body` the bytes where they landed instead: the piece is not
        /// reused until `body` returns. `body` is not called when the count is 0 or nil.
        func lend(_ offset: Int, _ count: Int, before deadline: Date, to body: (UnsafeRawBufferPointer) -> Void) -> Int? {
            arrival.lock()
            while !started {
                if !arrival.wait(until: deadline) {
                    arrival.unlock()
                    return nil
                }
            }
            while let piece {
                let end = min(offset + count, size ?? Int.max)
                guard end <= piece.count else { break }
                if landed >= end {
                    guard end > offset else {
                        arrival.unlock()
                        return 0
                    }
                    taken.insert(contentsOf: offset..<end)
                    borrowers += 1
                    arrival.unlock()
                    body(UnsafeRawBufferPointer(rebasing: piece[offset..<end]))
                    arrival.lock()
                    borrowers -= 1
                    if borrowers == 0 { arrival.broadcast() }
                    arrival.unlock()
                    return end - offset
                }
                if !arrival.wait(until: deadline) { break }
            }
            arrival.unlock()
            return nil
        }
    }

    /// The bytes a reader waits for.
    struct Wanted {
        let offset: Int
        let buffer: UnsafeMutableRawBufferPointer
    }

    enum Obtained {
        /// The cached copy, open.
        case file(OpenObject)
        /// The reader's bytes, taken from a download as it landed.
        case copied(Int)
        /// The cache cannot take the object: read it from the backing store.
        case uncacheable
    }

    /// The open cached file of `id`, fetching it first if needed; or, for a reader
    /// (`wanted`), its bytes as soon as a download under way has them.
    func obtain(_ id: ObjectID, countingUse: Bool, for wanted: Wanted? = nil, writingLater: Bool = false) throws(StoreError) -> Obtained {
        if let wanted, let count = copyLanded(id, wanted) {
            if countingUse { hits.add(1, ordering: .relaxed) }
            return .copied(count)
        }
        if let file = openCached(id) {
            if countingUse { hits.add(1, ordering: .relaxed) }
            return .file(file)
        }
        if countingUse { misses.add(1, ordering: .relaxed) }
        let (fetch, leader) = fetches.withLock { fetches in
            if let fetch = fetches[id] { return (fetch, false) }
            let fetch = Fetch()
            fetch.running.enter()
            fetches[id] = fetch
            return (fetch, true)
        }
        if leader {
            guard wanted != nil else { return try lead(id, fetch, writingLater: writingLater).map { .file($0) } ?? .uncacheable }
            // A reader leaves the download to a thread of its own and takes its bytes
            // from it as they land, like any other reader of the object.
            Thread.detachNewThread { _ = try? self.lead(id, fetch) }
        }
        let deadline = Date(timeIntervalSinceNow: Self.fetchWait)
        if let wanted, let count = fetch.copy(wanted, before: deadline) { return .copied(count) }
        if fetch.running.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .timedOut {
            throw .io(errno: EIO, "object \(id): another fetch of it took more than \(Int(Self.fetchWait)) s")
        }
        if let error = fetch.error.withLock({ $0 }) { throw error }
        if let wanted, let count = copyLanded(id, wanted) { return .copied(count) }
        return openCached(id).map { .file($0) } ?? .uncacheable
    }

    /// Copies a reader's bytes from a landed download, if `id` is one.
    func copyLanded(_ id: ObjectID, _ wanted: Wanted) -> Int? {
        lendLanded(id, wanted.offset, wanted.buffer.count) { wanted.buffer.copyMemory(from: $0) }
    }

    /// Hands `body` a reader's bytes in a landed download, if `id` is one.
    func lendLanded(_ id: ObjectID, _ offset: Int, _ count: Int, to body: (UnsafeRawBufferPointer) -> Void) -> Int? {
        guard let piece = landed.withLock({ $0.pieces[id] }), let (count, finished) = piece.lend(offset, count, to: body) else { return nil }
        if finished { retireLanded(id, only: piece) }
        index.withLock { $0.use(id) }
        return count
    }

    /// Keeps a downloaded object's buffer for the readers about to ask for it.
    func land(_ id: ObjectID, _ buffer: UnsafeMutableRawBufferPointer, size: Int, taken: ReadCoverage) {
        let piece = LandedPiece(buffer: buffer, size: size, read: taken)
        let pushedOut = landed.withLock { $0.add(id, piece, limit: Self.landedLimit) }
        for (old, piece) in pushedOut {
            // Pushed out before its reader came, an object not written yet would be
            // fetched again: it is written now instead.
            if piece.unreadBytes > 0, unwritten.withLock({ $0.size(of: old) != nil }) {
                _ = keep(unwritten: old, from: piece)
            }
            if let buffer = piece.withdraw() { givePieceBack(buffer) }
        }
    }

    /// Drops `id`'s landed buffer (only `piece`, when given: a newer download of the same
    /// object may have landed since).
    func retireLanded(_ id: ObjectID, only piece: LandedPiece? = nil) {
        guard let removed = landed.withLock({ $0.remove(id, only: piece) }), let buffer = removed.withdraw() else { return }
        givePieceBack(buffer)
    }

    /// Downloads `id` as the one fetch of it; the fetch's waiters see the end.
    func lead(_ id: ObjectID, _ fetch: Fetch, writingLater: Bool = false) throws(StoreError) -> OpenObject? {
        defer {
            fetches.withLock { $0[id] = nil }
            fetch.withdraw()
            fetch.running.leave()
        }
        // A fetch that ended between our look and our claim has left the file.
        if let file = openCached(id) { return file }
        do {
            return try download(id, fetch, writingLater: writingLater)
        } catch {
            fetch.error.withLock { $0 = error }
            throw error
        }
    }

    /// Reads the whole object into a temporary file, checks its length, and renames it
    /// into place. Errors of the backing store are thrown; a cache that cannot take the
    /// object (no room, a local I/O error) gives nil.
    ///
    /// The first piece is read before the object's size is known: its reply says the
    /// size (an S3 `Content-Range`), which saves a HEAD per object, half the requests of
    /// a cold read of chunk-sized objects.
    /// `writingLater`: an object that fits one piece is not written at all, but listed as
    /// unwritten and kept in memory for its readers (`prefetch(_:writingLater:)`).
    func download(_ id: ObjectID, _ fetch: Fetch, writingLater: Bool = false) throws(StoreError) -> OpenObject? {
        if cachingOnly.withLock({ $0.contains(id) }) { fetchedAgain.add(1, ordering: .relaxed) }
        let piece = takePiece()
        fetch.expose(piece)
        // Set once the whole object is cached and still in `piece`.
        var wholeInPiece: Int?
        defer {
            fetch.withdraw()
            let taken = fetch.bytesTaken
            if let wholeInPiece, taken.bytes < wholeInPiece, !cachingOnly.withLock({ $0.contains(id) }) {
                land(id, piece, size: wholeInPiece, taken: taken)
            } else {
                givePieceBack(piece)
            }
        }
        let (firstCount, reported) = try backing.readReportingSize(id, offset: 0, into: piece) { landed, size in
            fetch.arrived(landed, objectSize: size)
        }
        let size: Int
        if let reported { size = reported } else { size = try backing.size(of: id) }
        guard firstCount == min(size, piece.count) else {
            throw .io(errno: EIO, "object \(id) gave \(firstCount) bytes at its start while its store says it has \(size)")
        }
        // For a store that tells no progress: readers take the first piece now.
        fetch.arrived(firstCount, objectSize: size)
        if writingLater && size <= piece.count {
            bytesFetched.add(size, ordering: .relaxed)
            unwritten.withLock { $0.add(id, size: size) }
            wholeInPiece = size
            return nil
        }
        guard size <= capacityBytes, evict(toFit: size),
              let (file, temporary) = try? createTemporary(for: id) else { return nil }
        var installed = false
        defer { if !installed { Glibc.unlink(temporary) } }
        var offset = 0
        var got = firstCount
        while true {
            guard file.write(UnsafeRawBufferPointer(rebasing: piece[0..<got]), at: offset, room: piece.count) else { return nil }
            offset += got
            bytesFetched.add(got, ordering: .relaxed)
            guard offset < size else { break }
            // The buffer takes the next piece: readers wait for the file from here.
            fetch.withdraw()
            let want = UnsafeMutableRawBufferPointer(rebasing: piece[0..<min(piece.count, size - offset)])
            got = try backing.read(id, offset: offset, into: want)
            if got == 0 {
                throw .io(errno: EIO, "object \(id) ended at \(offset) bytes while its store says it has \(size)")
            }
        }
        // A direct write of the last block wrote it whole.
        guard ftruncate(file.fd, off_t(size)) == 0, install(temporary, as: id, size: size) else { return nil }
        installed = true
        index.withLock {
            $0.setVerifiedSize(id, size)
            $0.keep(file, for: id)
        }
        if size <= piece.count { wholeInPiece = size }
        return file
    }

    /// A download's buffer, reused: allocated and freed by each of the fetching threads in
    /// turn, 4 MiB buffers stay behind in glibc's per-thread arenas, and a streaming cold
    /// read held over 300 MiB.
    func takePiece() -> UnsafeMutableRawBufferPointer {
        pieces.withLock { $0.popLast() }.map { $0.buffer }
            ?? UnsafeMutableRawBufferPointer(start: DirectIO.allocate(byteCount: Self.fetchPiece), count: Self.fetchPiece)
    }

    func givePieceBack(_ piece: UnsafeMutableRawBufferPointer) {
        let kept = pieces.withLock { pieces in
            guard pieces.count < Self.prefetchConcurrency + 2 else { return false }
            pieces.append(Piece(buffer: piece))
            return true
        }
        if !kept { piece.deallocate() }
    }

    /// The cached file of `id` if it is there, opened (or its kept descriptor), and
    /// marked as just used.
    func openCached(_ id: ObjectID) -> OpenObject? {
        let now = Int(time(nil))
        // (known, its kept descriptor, whether its mtime is due a refresh)
        let (known, kept, stale) = index.withLock { index -> (Bool, OpenObject?, Bool) in
            guard let entry = index[id] else { return (false, nil, true) }
            index.use(id)
            let stale = now - entry.touchedAt >= 60
            if stale { index.setTouched(id, at: now) }
            return (true, entry.file, stale)
        }
        if let kept {
            if stale { futimens(kept.fd, nil) }
            return kept
        }
        let fd = DirectIO.open(path(of: id), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            // Gone: evicted by another process, or discarded.
            if known { index.withLock { _ = $0.remove(id) } }
            return nil
        }
        let file = OpenObject(fd: fd)
        if stale { futimens(fd, nil) }
        let size = file.currentSize
        index.withLock { index in
            index.insertNewest(id, size: size, touchedAt: now)
            index.keep(file, for: id)
        }
        return file
    }

    func verifiedSize(_ id: ObjectID) throws(StoreError) -> Int {
        if let size = index.withLock({ $0[id]?.verifiedSize }) { return size }
        let size = try backing.size(of: id)
        index.withLock { $0.setVerifiedSize(id, size) }
        return size
    }

    func drainPrefetches() {
        while let (id, writingLater) = prefetches.withLock({ $0.next() }) {
            if index.withLock({ $0[id] != nil }) && cachingOnly.withLock({ $0.contains(id) }) {
                // Wanted in the cache only, and there already.
            } else if index.withLock({ $0[id] != nil }), let file = openCached(id) {
                landCached(id, file)
            } else if landed.withLock({ $0.pieces[id] == nil }) {
                _ = try? obtain(id, countingUse: false, writingLater: writingLater)
            }
            prefetches.withLock { $0.finished(id) }
            cachingOnly.withLock { _ = $0.remove(id) }
        }
    }

    /// Reads the cached copy of `id` into a buffer landed as a download's is, for the
    /// sequential reader about to ask for it. Cached copies are read past the page cache
    /// (`O_DIRECT`), so without this that reader waited for the disk at each request,
    /// one at a time, where a local store's reads find the kernel's read-ahead: a read
    /// from a warm cache ran at two thirds of the embedded volume's.
    func landCached(_ id: ObjectID, _ file: OpenObject) {
        let size = file.currentSize
        guard file.isDirect, size > 0, DirectIO.padded(size) <= Self.fetchPiece,
              landed.withLock({ $0.pieces[id] == nil }) else { return }
        let piece = takePiece()
        guard file.read(at: 0, into: UnsafeMutableRawBufferPointer(rebasing: piece[0..<DirectIO.padded(size)])) == size else {
            givePieceBack(piece)
            return
        }
        land(id, piece, size: size, taken: ReadCoverage())
    }

    // MARK: Files

    /// A new file in `DIR/tmp`, 0600 whatever the umask, named so that no other thread
    /// or process picks the same name.
    func createTemporary(for id: ObjectID) throws(StoreError) -> (OpenObject, String) {
        let name = "\(directory)/tmp/\(id).\(getpid()).\(UInt64.random(in: 0...UInt64.max)).part"
        let fd = DirectIO.open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        guard fd >= 0 else { throw Self.failure(errno, "cannot create \(name)") }
        fchmod(fd, 0o600)
        return (OpenObject(fd: fd), name)
    }

    /// Renames a complete temporary file into place and records it; an object that is
    /// already there (another process fetched it too) is the same bytes, so either copy
    /// may win.
    func install(_ temporary: String, as id: ObjectID, size: Int) -> Bool {
        let final = path(of: id)
        var result = rename(temporary, final)
        if result != 0 && errno == ENOENT {
            try? Self.makeDirectory(subdirectory(of: id))
            result = rename(temporary, final)
        }
        guard result == 0 else { return false }
        index.withLock { $0.insertNewest(id, size: size, touchedAt: Int(time(nil))) }
        forget(unwritten: id)
        if insertionsSinceScan.add(1, ordering: .relaxed).newValue % Self.rescanInterval == 0 {
            // A scan stats every file; the read that happened to trigger it need not wait.
            DispatchQueue.global(qos: .utility).async {
                self.learn(scanning: false)
                self.evict(toFit: 0)
            }
        }
        evict(toFit: 0)
        return true
    }

    // MARK: Size bounds

    /// Evicts least recently used objects until `incoming` more bytes fit within the
    /// capacity and the filesystem bound; false if they cannot.
    @discardableResult
    func evict(toFit incoming: Int) -> Bool {
        while true {
            let over = index.withLock { $0.totalBytes + incoming > capacityBytes }
            let full = !filesystemHasRoom(for: incoming)
            guard over || full else { return true }
            guard let victim = index.withLock({ index -> ObjectID? in
                guard let oldest = index.oldest else { return nil }
                index.remove(oldest)
                return oldest
            }) else { return false }
            Glibc.unlink(path(of: victim))
            evictions.add(1, ordering: .relaxed)
        }
    }

    func filesystemHasRoom(for incoming: Int) -> Bool {
        var info = statvfs()
        guard statvfs(directory, &info) == 0, info.f_blocks > 0 else { return true }
        let block = Double(info.f_frsize)
        let total = Double(info.f_blocks) * block
        let used = Double(info.f_blocks - info.f_bavail) * block
        return used + Double(incoming) <= total * maxFilesystemUse
    }

    /// Reads the directory: at start, every object in mtime order; later, the objects
    /// other processes added (as least recently used) and the ones they removed.
    func learn(scanning: Bool) {
        let started = Int(time(nil))
        var found: [(ObjectID, Int, Int)] = []
        let files = FileManager.default
        for sub in (try? files.contentsOfDirectory(atPath: directory)) ?? [] where sub.count == 2 {
            for name in (try? files.contentsOfDirectory(atPath: directory + "/" + sub)) ?? [] {
                guard let id = ObjectID(hex: name), name.hasSuffix(sub) else { continue }
                var info = stat()
                guard stat(directory + "/" + sub + "/" + name, &info) == 0 else { continue }
                found.append((id, Int(info.st_size), Int(info.st_mtim.tv_sec)))
            }
        }
        let present = Set(found.map(\.0))
        index.withLock { index in
            if !scanning {
                // Entries used since the scan began may be files it did not see yet.
                for (id, entry) in index.entries where !present.contains(id) && entry.touchedAt < started {
                    index.remove(id)
                }
            }
            // Newest first into the old end leaves the oldest file at the very end.
            for (id, size, mtime) in found.sorted(by: { $0.2 > $1.2 }) {
                index.insertOldest(id, size: size, touchedAt: mtime)
            }
        }
    }

    func removeStaleTemporaries() {
        let now = Int(time(nil))
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory + "/tmp")) ?? [] {
            let path = directory + "/tmp/" + name
            var info = stat()
            if stat(path, &info) == 0 && now - Int(info.st_mtim.tv_sec) > Self.staleTemporary { Glibc.unlink(path) }
        }
    }

    /// Creates a directory 0700 whatever the umask, and its missing parents.
    static func makeDirectory(_ path: String) throws(StoreError) {
        if mkdir(path, 0o700) == 0 {
            chmod(path, 0o700)
            return
        }
        switch errno {
        case EEXIST:
            return
        case ENOENT where path.contains("/") && path != "/":
            let parent = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
            if !parent.isEmpty { try makeDirectory(parent) }
            if mkdir(path, 0o700) == 0 || errno == EEXIST {
                chmod(path, 0o700)
                return
            }
            throw failure(errno, "cannot create \(path)")
        default:
            throw failure(errno, "cannot create \(path)")
        }
    }

    static func failure(_ code: Int32, _ what: String) -> StoreError {
        if code == ENOSPC || code == EDQUOT { return .noSpace }
        return .io(errno: code, "\(what): \(String(cString: strerror(code)))")
    }
}

/// The parts of an object readers have read.
typealias ReadCoverage = RangeSet<Int>

extension RangeSet<Int> {
    /// How many bytes the ranges cover, each once.
    var bytes: Int { ranges.reduce(0) { $0 + $1.count } }
}

/// A downloaded object still in its download buffer (see `CachedChunkStore.landed`).
final class LandedPiece: @unchecked Sendable {
    // Unchecked: `buffer`, `read` and `borrowers` are only touched under `lock`.
    private let lock = NSCondition()
    private var buffer: UnsafeMutableRawBufferPointer?
    /// The bytes readers have copied out. Reads overlap (each is widened to whole
    /// checksum blocks, and the kernel may ask again), so a count of bytes lent would
    /// reach the size early, and the piece go while bytes of it were still to be read:
    /// those were then downloaded again.
    private var read: ReadCoverage
    /// Readers reading the buffer in place: it is not given back until they are done.
    private var borrowers = 0
    let size: Int

    /// `read`: what readers have copied from the download already.
    init(buffer: UnsafeMutableRawBufferPointer, size: Int, read: ReadCoverage) {
        self.buffer = buffer
        self.size = size
        self.read = read
    }

    /// Copies the wanted bytes (fewer at the object's end); nil once withdrawn.
    /// `finished` says that every byte of the object has been copied out.
    func copy(_ wanted: CachedChunkStore.Wanted) -> (count: Int, finished: Bool)? {
        lend(wanted.offset, wanted.buffer.count) { wanted.buffer.copyMemory(from: $0) }
    }

    /// `copy`, handing `body` the bytes in place instead: the buffer is not given back
    /// until `body` returns. `body` is not called when the count is 0 or nil.
    func lend(_ offset: Int, _ count: Int, to body: (UnsafeRawBufferPointer) -> Void) -> (count: Int, finished: Bool)? {
        lock.lock()
        guard let buffer else {
            lock.unlock()
            return nil
        }
        let end = min(offset + count, size)
        guard end > offset else {
            lock.unlock()
            return (0, false)
        }
        read.insert(contentsOf: offset..<end)
        let finished = read.bytes >= size
        borrowers += 1
        lock.unlock()
        body(UnsafeRawBufferPointer(rebasing: buffer[offset..<end]))
        lock.lock()
        borrowers -= 1
        if borrowers == 0 { lock.broadcast() }
        lock.unlock()
        return (end - offset, finished)
    }

    /// Bytes no reader has copied out yet.
    var unreadBytes: Int { lock.withLock { buffer == nil ? 0 : size - read.bytes } }

    /// Hands `body` the whole object in place, without counting it as read; nil once
    /// withdrawn.
    func withBytes<T>(_ body: (UnsafeRawBufferPointer) -> T) -> T? {
        lock.lock()
        guard let buffer else {
            lock.unlock()
            return nil
        }
        borrowers += 1
        lock.unlock()
        let result = body(UnsafeRawBufferPointer(rebasing: buffer[0..<size]))
        lock.lock()
        borrowers -= 1
        if borrowers == 0 { lock.broadcast() }
        lock.unlock()
        return result
    }

    /// Takes the buffer back, once no reader reads it in place.
    func withdraw() -> UnsafeMutableRawBufferPointer? {
        lock.lock()
        defer { lock.unlock() }
        let taken = buffer
        buffer = nil
        while borrowers > 0 { lock.wait() }
        return taken
    }
}

/// The landed downloads, oldest first.
struct LandedPieces {
    var pieces: [ObjectID: LandedPiece] = [:]
    var order: [ObjectID] = []

    /// Adds `piece` as the newest; returns the pieces it replaced or pushed out.
    mutating func add(_ id: ObjectID, _ piece: LandedPiece, limit: Int) -> [(ObjectID, LandedPiece)] {
        var out: [(ObjectID, LandedPiece)] = []
        if let old = remove(id) { out.append((id, old)) }
        pieces[id] = piece
        order.append(id)
        while order.count > limit, let oldest = order.first, let old = remove(oldest) { out.append((oldest, old)) }
        return out
    }

    mutating func remove(_ id: ObjectID, only piece: LandedPiece? = nil) -> LandedPiece? {
        guard let found = pieces[id], piece == nil || found === piece else { return nil }
        pieces[id] = nil
        order.removeAll { $0 == id }
        return found
    }
}

/// Prefetches waiting for a worker: bounded, without duplicates, served by at most a
/// few workers at once.
struct PrefetchQueue {
    var waiting: [(ObjectID, writingLater: Bool)] = []
    var pending: Set<ObjectID> = []
    var workers = 0

    /// Queues `id`; true when the caller should start one more worker.
    mutating func add(_ id: ObjectID, writingLater: Bool = false, limit: Int, workers maxWorkers: Int) -> Bool {
        guard !pending.contains(id), waiting.count < limit else { return false }
        pending.insert(id)
        waiting.append((id, writingLater))
        guard workers < maxWorkers else { return false }
        workers += 1
        return true
    }

    /// The next id to fetch, or nil, and then the worker stops.
    mutating func next() -> (ObjectID, writingLater: Bool)? {
        guard !waiting.isEmpty else {
            workers -= 1
            return nil
        }
        return waiting.removeFirst()
    }

    mutating func finished(_ id: ObjectID) { pending.remove(id) }
}

/// Objects fetched and not written to the cache yet, with their sizes, oldest first.
struct UnwrittenObjects {
    private var sizes: [ObjectID: Int] = [:]
    private var order: [ObjectID] = []

    var all: [(id: ObjectID, size: Int)] { order.compactMap { id in sizes[id].map { (id, $0) } } }

    func size(of id: ObjectID) -> Int? { sizes[id] }

    mutating func add(_ id: ObjectID, size: Int) {
        if sizes.updateValue(size, forKey: id) == nil { order.append(id) }
    }

    mutating func remove(_ id: ObjectID) {
        guard sizes.removeValue(forKey: id) != nil else { return }
        order.removeAll { $0 == id }
    }
}
