// VolumeFS: POSIX semantics over Metadata and a ChunkStore, with no FUSE types.
//
// What it owns:
// - Kernel references: how many lookups the kernel holds on each inode (`remember`,
//   `forget`) and how many handles are open. An inode that lost its last name stays
//   readable and writable until both drop to zero; then it is purged.
// - Open files: per inode, the committed chunk map (loaded at open: close-to-open), the
//   chunks written but not yet committed, and the pending size and mtime.
// - The data path. A write changes an in-memory copy of each chunk it touches; a chunk
//   that fills starts being stored at once, in the background, and full chunks are
//   committed in groups as their objects land; everything is committed when too much is
//   buffered, and on flush, release and fsync. A commit swaps the references to the new
//   objects in one metadata transaction, so a crash leaves every chunk old or new.
// - Every read of a stored chunk verifies the checksums of the blocks it touches.
// - The size limit: a write that would take the volume past it fails before it changes
//   anything, counting what is buffered as well as what is committed.
//
// Lock order: a file's `lock`, then `accounting`; `refs` and `handles` are leaves.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import ChunkStore
public import Metadata
public import Logging
import Synchronization

/// The id of one open file handle.
public struct FileHandleID: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
}

/// Tunables of a mounted volume.
public struct VolumeOptions: Sendable {
    /// Seconds an object that left the metadata is kept before gc deletes it, so that a
    /// reader holding an older chunk map still finds it.
    public var gcGraceSeconds: Int = 600
    /// Buffered chunks per open file before they are committed without waiting for close.
    public var maxDirtyChunksPerFile: Int = 16
    /// Full chunks an open file gathers before committing them together.
    public var fullChunksPerCommit: Int = 4
    /// Chunk objects stored at once: by one commit, and by one open file in the background
    /// while it is being written.
    public var storeConcurrency: Int = 8
    /// Chunks past the one being read that a sequential reader has fetched ahead at first.
    public var prefetchChunks: Int = 2
    /// How far ahead (in bytes) that grows while the reader keeps reading in order.
    public var prefetchWindowBytes: Int = 64 << 20
    /// Files no larger than this keep their bytes in the metadata row rather than in a
    /// chunk object of their own: creating or reading one costs no file of the store.
    public var inlineLimit: Int = 64 << 10
    /// Update atime on open when it is older than mtime, ctime or a day (like relatime).
    public var relatime: Bool = true
    /// Who may write through this mount, and when it takes the writer lease.
    public var mode: AccessMode = .onDemand
    /// Seconds a lease lasts without renewal; it is renewed every third of that.
    public var leaseTTLSeconds: Double = 15
    /// On-demand mounts give the lease back after this many seconds without writes and
    /// with no file open for writing.
    public var leaseIdleSeconds: Double = 30
    /// Garbage older than this is deleted at once when the chunk store runs out of space.
    public var fullStoreGraceSeconds: Int = 5
    /// Subdirectories whose listings are read together, in the background, when a
    /// directory is listed from its start (0: none). Worth it where every query is a
    /// network round trip: a walk of a tree then waits for one per level.
    public var prefetchListings: Int = 0
    /// The writer answers the creation of a regular file or a directory, an unlink and an
    /// rmdir at once, and applies them to the metadata with the next change that reaches
    /// it, at the latest about a second later (MetadataCache): a create costs no
    /// transaction of its own, and an `rm -rf` a transaction per batch.
    public var namesAtCommit: Bool = true
    /// While no other mount is attached, the writer commits the files it closes in
    /// groups, a tenth of a second apart, rather than each at its close (GroupCommits).
    /// Mounts that attach wait for the group first (`awaitWriterCommits`), which only
    /// mounts that register a session do (`BackgroundWork`).
    public var deferCommitsWhileAlone: Bool = false
    /// Bytes a streaming read may fetch ahead of their copy in the local cache, which is
    /// then written from the kernel's pages of the file once the reads go quiet
    /// (CacheFromPages); 0 writes each copy as it is fetched. By default an eighth of the
    /// memory this process may use: pages that recent stay in the page cache.
    public var unwrittenCacheBytes: Int = VolumeOptions.defaultUnwrittenCacheBytes
    public init() {}
}

/// What a file's buffered writes change in its attributes (`pending`).
struct PendingWrite {
    var size: UInt64
    var storedBytes: UInt64
    var mtime: Timestamp?

    /// Caller holds `file.lock`; `attr` is the file's attributes as the metadata has them.
    init(_ file: OpenFile, _ attr: Attr) {
        size = file.size
        storedBytes = UInt64(max(0, Int64(attr.storedBytes) + file.reserved.values.reduce(0, +)))
        mtime = file.mtime
    }

    func apply(to attr: inout Attr) {
        attr.size = size
        attr.storedBytes = storedBytes
        if let mtime {
            attr.mtime = mtime
            attr.ctime = max(attr.ctime, mtime)
        }
    }
}

/// Where an open directory's listing comes from, decided where it starts.
enum DirectoryHandle {
    case undecided
    /// Taken whole from memory (`MetadataCache.keptListing`).
    case memory([DirEntry])
    /// Read from the metadata, a page at a time.
    case metadata
}

/// One entry of a directory listing as the kernel sees it.
public struct Listing: Sendable {
    public var name: FileName
    public var attr: Attr
    /// The offset at which a listing continues after this entry.
    public var nextOffset: Int64
}

/// Filesystem-wide figures for `statfs`.
public struct FSStats: Sendable, Equatable {
    public var blockSize: UInt64
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var nameMax: UInt64
}

/// An inode's open state; every field but `opens` is guarded by `lock`.
final class OpenFile: @unchecked Sendable {
    let lock = NSLock()
    let ino: InodeNumber
    /// Handles open on it, and a group commit that holds it. Counted without `lock`, under
    /// the open files' table lock where it may reach or leave zero: an open does not wait
    /// for a group commit's transaction, which holds `lock` throughout.
    let opens = Atomic<Int>(0)
    /// Committed chunks, by index, as of open or our last commit.
    var chunkMap: [Int: ChunkRef]
    /// Chunks written but not committed: the whole stored content of each.
    var dirty: [Int: ChunkBuffer] = [:]
    /// Bytes of the size limit reserved for each dirty chunk's growth.
    var reserved: [Int: Int64] = [:]
    var size: UInt64
    var committedSize: UInt64
    var mtime: Timestamp?
    /// The attributes at open or last refresh: an open file another mount deleted still
    /// answers getattr with them.
    var attr: Attr
    /// The version of the file `chunkMap` is, where it is known to be that version's
    /// whole map: what a close keeps the map under (`KeptChunkMaps`).
    var mapStamp: CacheStamp?
    /// Why writes accepted into buffers were dropped (the lease was lost, or a close's
    /// group commit failed with no handle left to retry it): what the file's next
    /// commit answers.
    var lost: FSError?
    /// Full dirty chunks already being stored, by index, ahead of the commit that will
    /// name them: a sequential writer keeps uploads in flight while it fills the next.
    var uploads: [Int: Upload] = [:]
    /// A handle opened with `O_DIRECT` may write it: its bytes need not be in the kernel's
    /// pages, so cache copies of its chunks cannot wait to be written from there.
    var writtenPastPageCache = false

    init(attr: Attr, chunkMap: [Int: ChunkRef]) {
        self.ino = attr.ino
        self.chunkMap = chunkMap
        self.size = attr.size
        self.committedSize = attr.size
        self.attr = attr
        self.mapStamp = CacheStamp(attr)
    }
}

/// One chunk object being stored in the background; `wait` gives its outcome.
final class Upload: Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let outcome = Mutex<Result<ChunkRef, FSError>?>(nil)

    func finish(_ result: Result<ChunkRef, FSError>) {
        outcome.withLock { $0 = result }
        finished.signal()
    }

    var isFinished: Bool { outcome.withLock { $0 != nil } }

    func wait() -> Result<ChunkRef, FSError> {
        if let done = outcome.withLock({ $0 }) { return done }
        finished.wait()
        finished.signal()
        return outcome.withLock { $0 }!
    }
}

struct Handle {
    var ino: InodeNumber
    var readable: Bool
    var writable: Bool
    /// The kernel may keep the pages it cached of this file: nothing changed it since.
    var keepCache = false
    /// Per handle, so that several processes loading one file each count as sequential.
    var reads = ReadPattern()
}

/// Sequential-read detection for prefetch.
struct ReadPattern {
    /// Chunks below this were already fetched ahead.
    var prefetchedUpTo = 0
    /// The chunk the last read ended in.
    var lastChunkRead = -2
    /// Chunks ahead the reader has earned (0: none yet).
    var window = 0

    /// The chunks to fetch ahead of a read of chunks `range`, each once; none for a read
    /// out of order. The window starts at `count` chunks and doubles with every new chunk
    /// read in order, up to `maximum`, as mountpoint-s3's prefetcher grows its own: a
    /// reader of a file's first bytes costs little, and one that streams it keeps many
    /// fetches under way, which is what a download over a network needs to reach speed.
    mutating func ahead(of range: ClosedRange<Int>, by count: Int, growingTo maximum: Int = 0) -> Range<Int> {
        guard count > 0 else { return 0..<0 }
        // Starting over from the top (not the kernel's several requests within chunk 0).
        if range.lowerBound == 0 && lastChunkRead > 0 {
            prefetchedUpTo = 0
            window = 0
        }
        // A read in the chunk of the last one, or the next, continues a sequential pass.
        let sequential = range.lowerBound == 0 || (lastChunkRead...(lastChunkRead + 1)).contains(range.lowerBound)
        let advanced = range.upperBound > lastChunkRead
        lastChunkRead = range.upperBound
        guard sequential else {
            window = 0
            return 0..<0
        }
        window = window == 0 ? count : advanced ? min(max(count, maximum), window * 2) : window
        let start = max(prefetchedUpTo, range.upperBound + 1)
        let end = range.upperBound + 1 + window
        guard start < end else { return 0..<0 }
        prefetchedUpTo = end
        return start..<end
    }
}

/// What a file looked like when the kernel last cached its pages.
struct CacheStamp: Equatable {
    var size: UInt64
    var mtime: Timestamp
    var ctime: Timestamp
    init(_ attr: Attr) { size = attr.size; mtime = attr.mtime; ctime = attr.ctime }
}

/// Chunk maps kept in memory, each with the version of the file it is of: those of files
/// this mount closed, and those read with the map of a file beside them (`loadMap`). Where
/// this mount's attributes are exact (the writer's; a reader's while the lease is free), an
/// open that finds the file still at a kept version needs no round trip for its map: `cat`
/// or `tar` of files just written, or of a directory just opened, reads from memory.
/// Bounded by entries and by the bytes their references hold (inline data included); the
/// oldest go first.
struct KeptChunkMaps {
    struct Entry {
        var stamp: CacheStamp
        var map: [Int: ChunkRef]
        var cost: Int
        /// Which of the inode's places in `order` is its own.
        var serial: UInt64
    }

    static let entriesKept = 65_536
    static let costKept = 32 << 20

    private var entries: [InodeNumber: Entry] = [:]
    /// Insertion order. A place whose serial is not its entry's is stale (the map was taken,
    /// or kept again later) and is skipped; stale places are dropped once they are most.
    private var order: [(ino: InodeNumber, serial: UInt64)] = []
    private var head = 0
    private var serial: UInt64 = 0
    private(set) var cost = 0

    var count: Int { entries.count }
    /// Places in `order`, stale ones included (what bounds its memory).
    var places: Int { order.count - head }

    func contains(_ ino: InodeNumber) -> Bool { entries[ino] != nil }

    mutating func keep(_ ino: InodeNumber, stamp: CacheStamp, map: [Int: ChunkRef]) {
        let cost = 64 + map.values.reduce(0) { $0 + 64 + ($1.inlineBytes?.count ?? 0) + $1.checksums.values.count * 8 }
        take(ino)
        guard cost <= Self.costKept / 8 else { return }
        while entries.count >= Self.entriesKept || self.cost + cost > Self.costKept {
            let oldest = order[head]
            head += 1
            if entries[oldest.ino]?.serial == oldest.serial { take(oldest.ino) }
        }
        if order.count - head > 2 * entries.count + 1024 {
            order = order[head...].filter { entries[$0.ino]?.serial == $0.serial }
            head = 0
        }
        serial += 1
        entries[ino] = Entry(stamp: stamp, map: map, cost: cost, serial: serial)
        order.append((ino, serial))
        self.cost += cost
    }

    /// The map of `ino` if it is of version `stamp`; it is forgotten either way (the
    /// file's last close keeps it again).
    mutating func take(_ ino: InodeNumber, at stamp: CacheStamp) -> [Int: ChunkRef]? {
        guard let entry = take(ino), entry.stamp == stamp else { return nil }
        return entry.map
    }

    @discardableResult
    mutating func take(_ ino: InodeNumber) -> Entry? {
        guard let entry = entries.removeValue(forKey: ino) else { return nil }
        cost -= entry.cost
        return entry
    }

    mutating func removeAll() {
        entries.removeAll()
        order.removeAll()
        head = 0
        cost = 0
    }
}

struct KernelRefs {
    var lookups: UInt64 = 0
    var opens: Int = 0
}

public final class VolumeFS: Sendable {
    /// The volume's metadata, through `cache`.
    public let metadata: any Metadata
    /// Names and attributes in memory (see MetadataCache).
    public let cache: MetadataCache
    public let store: any ChunkStore
    public let options: VolumeOptions
    public let chunkSize: Int
    let logger: Logger
    /// Full-chunk write buffers, reused: a sequential writer has about as many in use as
    /// uploads in flight, and a few spare save the faults of fresh ones.
    let chunkBuffers: ChunkBufferPool

    /// Nanoseconds a file created and kept open may stay unmade in the metadata (see
    /// MetadataCache): the writer's commit interval for creates.
    static let unmadeFilesKept: Int64 = 1_000_000_000

    /// Largest file size netvol keeps (16 TiB); past it writes fail with EFBIG.
    public static let maxFileSize: UInt64 = 1 << 44

    let refs = Mutex<[InodeNumber: KernelRefs]>([.root: KernelRefs(lookups: 1)])
    /// Inodes that lost their last name while the kernel or a handle still referred to them.
    let unlinked = Mutex<Set<InodeNumber>>([])
    let handles = Mutex<[FileHandleID: Handle]>([:])
    let directoryHandles = Mutex<[FileHandleID: DirectoryHandle]>([:])
    let nextHandle = Atomic<UInt64>(1)
    let openFiles = Mutex<[InodeNumber: OpenFile]>([:])
    /// Committed usage and limit as last read, plus growth reserved by buffered writes.
    let accounting: Mutex<(used: UInt64, limit: UInt64, reserved: Int64)>
    /// This mount's worker id in the lease.
    public let holder: String
    let writer = Mutex(WriterState())
    /// Serializes taking and giving back the lease.
    let leaseChange = Mutex(())
    /// Serializes reads of the change feed (the background tick's and an open's).
    let following = Mutex(())
    let invalidator = Mutex<(@Sendable (Invalidation) -> Void)?>(nil)
    let pageRetriever = Mutex<PageRetriever?>(nil)
    /// Where in the kernel's pages the objects a streaming read fetched, or a streaming
    /// write stored, unwritten are.
    let pageSources = Mutex<[ObjectID: PageSource]>([:])
    /// When a streaming read or write last came (CLOCK_MONOTONIC nanoseconds), so that
    /// cache copies wait until they go quiet.
    let lastStreamed = Atomic<UInt64>(0)
    /// Set while a thread writes cache copies from the kernel's pages.
    let cachingFromPages = Atomic<Bool>(false)
    /// Since when (CLOCK_MONOTONIC nanoseconds) cache copies have been waiting; 0: none.
    let unwrittenSince = Atomic<UInt64>(0)
    let pendingInvalidations = Mutex<[Invalidation]>([])
    /// For each file the kernel may hold pages of: the version those pages are of.
    let cacheStamps = Mutex<[InodeNumber: CacheStamp]>([:])
    let keptMaps = Mutex(KeptChunkMaps())
    /// Files beside one opened whose chunk maps are read with its own, at most, and the
    /// stored bytes between them (inline data travels with the map).
    static let mapsReadAhead = 127
    static let mapBytesReadAhead: UInt64 = 8 << 20
    /// Unlinked inodes nothing refers to any more, to purge in the next batch.
    let pendingPurges = Mutex<Set<InodeNumber>>([])
    /// Closed files whose commits wait for the next group (GroupCommits).
    let deferred = Mutex(DeferredCommits())
    /// Held by a group commit from taking its files to giving them back (`commitDeferred`).
    let groupCommitting = NSLock()
    /// What the files of the group being committed pend, published while it holds their
    /// locks, so that `pending` (a `stat`, a listing) does not wait for its transaction.
    let groupPending = Mutex<[InodeNumber: PendingWrite]>([:])
    /// Access times not written yet.
    let pendingAtimes = Mutex<[InodeNumber: Timestamp]>([:])
    /// Inodes that have extended attributes (nil: not known, ask the metadata): most
    /// files have none, and `ls -l` asks every file for some.
    let xattrInodes = Mutex<Set<InodeNumber>?>(nil)

    /// Opens a volume for use. Nothing is written until this mount takes the writer
    /// lease (at the first mutation, or `acquireLease`); inodes a crash left without
    /// names are purged then.
    public init(metadata: any Metadata, store: any ChunkStore, options: VolumeOptions = VolumeOptions(),
                holder: String = defaultHolderName(), logger: Logger = Logger(label: "netvol")) throws(FSError) {
        let cache = MetadataCache(metadata, prefetchListings: options.prefetchListings, logger: logger)
        self.cache = cache
        self.metadata = cache
        self.store = store
        self.options = options
        self.logger = logger
        self.holder = holder
        let usage = try Self.lift { () throws(MetadataError) in try metadata.usage() }
        self.chunkSize = usage.chunkSize
        // What one streaming writer holds at once (see ChunkBufferPool), and a few more.
        self.chunkBuffers = ChunkBufferPool(chunkSize: usage.chunkSize, kept: options.storeConcurrency + options.fullChunksPerCommit + 4)
        self.accounting = Mutex((used: usage.usedBytes, limit: usage.sizeLimit, reserved: 0))
        // No token is ever -1: until we hold the lease, no transaction of ours can commit.
        metadata.setFence(Fence(holder: holder, token: LeaseToken(rawValue: -1)))
        metadata.setLeaseTTL(options.leaseTTLSeconds)
        let latest = try Self.lift { () throws(MetadataError) in try metadata.changes(after: Int64.max - 1, limit: 1).latest }
        writer.withLock { $0.seenChanges = latest }
    }

    /// Sets what tells the kernel to forget cached names, attributes and pages.
    public func setInvalidator(_ invalidate: @escaping @Sendable (Invalidation) -> Void) {
        invalidator.withLock { $0 = invalidate }
    }

    /// Queues a kernel cache invalidation; `deliverInvalidations` sends them.
    ///
    /// Never sent from inside a request: the kernel may hold the very page or directory
    /// locks an invalidation waits for (a write holds its pages, a create its directory)
    /// until we answer, and the two would wait for each other forever.
    func invalidate(_ what: Invalidation) {
        pendingInvalidations.withLock { $0.append(what) }
    }

    /// Sends the queued invalidations to the kernel. Call it from a thread that serves
    /// no requests (the background tick).
    public func deliverInvalidations() {
        let queued = pendingInvalidations.withLock { pending in
            defer { pending = [] }
            return pending
        }
        guard !queued.isEmpty, let send = invalidator.withLock({ $0 }) else { return }
        for what in queued { send(what) }
    }

    static func lift<T>(_ body: () throws(MetadataError) -> T) throws(FSError) -> T {
        do { return try body() } catch { throw .metadata(error) }
    }

    /// Runs `body`, whose errors the standard library's buffer methods erase to `any Error`,
    /// and gives them back their type.
    static func typed<T>(_ body: () throws -> T) throws(FSError) -> T {
        do {
            return try body()
        } catch let error as FSError {
            throw error
        } catch {
            throw .invalidArgument("unexpected error \(error)")
        }
    }

    public static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: Int64(spec.tv_nsec))
    }

    static func check(_ name: FileName) throws(FSError) {
        if name.bytes.count > FileName.maxLength { throw .nameTooLong }
        if name.bytes.isEmpty || name.bytes.contains(UInt8(ascii: "/")) || name.bytes.contains(0) {
            throw .invalidArgument("bad name")
        }
    }

    static func checkNew(_ name: FileName) throws(FSError) {
        try check(name)
        if name.bytes == [UInt8(ascii: ".")] || name.bytes == [UInt8(ascii: "."), UInt8(ascii: ".")] {
            throw .metadata(.exists)
        }
    }

    // MARK: - Kernel references

    /// Counts one more kernel reference to `ino`; call once per entry handed to the kernel.
    public func remember(_ ino: InodeNumber) {
        refs.withLock { $0[ino, default: KernelRefs()].lookups += 1 }
    }

    /// Drops `count` kernel references to `ino`, purging it if it has no names left and
    /// nothing else refers to it.
    public func forget(_ ino: InodeNumber, _ count: UInt64) {
        let released = refs.withLock { table -> Bool in
            guard var entry = table[ino] else {
                logger.warning("forget of inode \(ino.rawValue) the kernel did not hold")
                return false
            }
            if entry.lookups < count {
                logger.warning("forget of \(count) references to inode \(ino.rawValue), kernel held \(entry.lookups)")
            }
            entry.lookups -= min(entry.lookups, count)
            if entry.lookups == 0 && entry.opens == 0 && ino != .root {
                table[ino] = nil
                return true
            }
            table[ino] = entry
            return false
        }
        if released {
            cacheStamps.withLock { $0[ino] = nil }
            purgeIfUnlinked(ino)
        }
    }

    /// How many lookups the kernel holds on `ino` (for tests and diagnostics).
    public func lookupCount(_ ino: InodeNumber) -> UInt64 {
        refs.withLock { $0[ino]?.lookups ?? 0 }
    }

    func isReferenced(_ ino: InodeNumber) -> Bool {
        refs.withLock { $0[ino] != nil }
    }

    func noteUnlinked(_ attr: Attr) {
        guard attr.nlink == 0 else { return }
        unlinked.withLock { _ = $0.insert(attr.ino) }
        if !isReferenced(attr.ino) { purgeIfUnlinked(attr.ino) }
    }

    func purgeIfUnlinked(_ ino: InodeNumber) {
        guard unlinked.withLock({ $0.remove(ino) }) != nil else { return }
        keptMaps.withLock { $0.take(ino) }
        // Only the writer purges; otherwise the next writer does, when it takes the lease.
        guard isWriter else { return }
        // Batched: `rm -rf` of many files then costs one purge transaction a tick, not
        // one per file. Space is counted back when the batch runs (or when a write needs it).
        pendingPurges.withLock { _ = $0.insert(ino) }
    }

    /// Purges the inodes whose last reference went since the last call.
    public func flushPurges() {
        let inodes = pendingPurges.withLock { pending in
            defer { pending = [] }
            return pending
        }
        guard !inodes.isEmpty else { return }
        do {
            try purge(Array(inodes))
        } catch .noSpace {
            // Tried again at the next flush: a purge is what frees the space it lacked.
            pendingPurges.withLock { $0.formUnion(inodes) }
            logger.error("cannot purge \(inodes.count) unlinked inodes: the disk under the metadata is full; trying again")
        } catch {
            logger.error("cannot purge \(inodes.count) unlinked inodes: \(error); they are purged when a mount next takes the lease")
        }
    }

    /// Purges in transactions of a bounded size: lookups and other commits wait for each
    /// one (they share the writer's connection), so after an `rm -rf` of a big tree none
    /// waits for the whole of it.
    func purge(_ inodes: [InodeNumber]) throws(MetadataError) {
        for start in stride(from: 0, to: inodes.count, by: 256) {
            try metadata.purge(Array(inodes[start..<min(start + 256, inodes.count)]), now: Self.now())
        }
    }

    // MARK: - Attributes and names

    /// The inode named `name` in `parent`, counting a kernel reference to it.
    public func lookup(_ parent: InodeNumber, _ name: FileName) throws(FSError) -> Attr {
        try Self.check(name)
        let exact = isWriter || isQuiet
        let attr = try pending(Self.lift { () throws(MetadataError) in try cache.lookup(parent, name, trustingMisses: exact) })
        remember(attr.ino)
        return attr
    }

    public func getattr(_ ino: InodeNumber) throws(FSError) -> Attr {
        do {
            return try pending(Self.lift { () throws(MetadataError) in try metadata.getattr(ino) })
        } catch .metadata(.notFound) {
            // Another mount deleted a file we have open: it stays usable until we close it.
            if let file = openFiles.withLock({ $0[ino] }) {
                file.lock.lock()
                var attr = file.attr
                file.lock.unlock()
                attr.nlink = 0
                return pending(attr)
            }
            throw .metadata(.notFound)
        }
    }

    /// `attr` with the size and mtime of writes not yet committed.
    func pending(_ attr: Attr) -> Attr {
        var attr = attr
        if let atime = pendingAtimes.withLock({ $0[attr.ino] }) { attr.atime = max(attr.atime, atime) }
        guard attr.isRegular else { return attr }
        // A commit of the file may have ended since `attr` was read (a group commit runs
        // beside requests, and then lets the file go): what it committed is newer. Looked
        // at once the file's lock is held, or once the file is found closed, both of which
        // come after the commit put its attributes in the cache.
        func newest(_ attr: inout Attr) {
            guard let committed = cache.cachedAttr(attr.ino), committed.ctime > attr.ctime else { return }
            let atime = attr.atime
            attr = committed
            attr.atime = max(attr.atime, atime)
        }
        guard let file = openFiles.withLock({ $0[attr.ino] }) else {
            newest(&attr)
            return attr
        }
        if !file.lock.try() {
            // A group commit holds its files' locks through its transaction; what they
            // pend was published before it, and cannot change until it ends.
            if let published = groupPending.withLock({ $0[attr.ino] }) {
                published.apply(to: &attr)
                return attr
            }
            file.lock.lock()
        }
        defer { file.lock.unlock() }
        newest(&attr)
        PendingWrite(file, attr).apply(to: &attr)
        return attr
    }

    /// Changes attributes; `size` truncates or extends the file.
    /// `attr`'s mode without the bits a write, truncation or change of owner by someone
    /// without CAP_FSETID removes, as Linux does: setuid always; setgid where the group may
    /// execute, or where the caller is not in the file's group. Nil when there are none.
    public static func withoutSetIDBits(_ attr: Attr, callerInGroup: (UInt32) -> Bool) -> UInt32? {
        let mode = attr.mode
        var kept = mode & ~UInt32(S_ISUID)
        if mode & UInt32(S_ISGID) != 0 && (mode & UInt32(S_IXGRP) != 0 || !callerInGroup(attr.gid)) {
            kept &= ~UInt32(S_ISGID)
        }
        return kept == mode ? nil : kept
    }

    /// Removes `ino`'s setuid and setgid bits as `withoutSetIDBits` says, for a write or a
    /// truncating open the kernel left this to the daemon for; whether there were any.
    @discardableResult
    public func dropSetIDBits(_ ino: InodeNumber, callerInGroup: (UInt32) -> Bool) throws(FSError) -> Bool {
        guard let mode = Self.withoutSetIDBits(try getattr(ino), callerInGroup: callerInGroup) else { return false }
        _ = try setattr(ino, AttrChanges(mode: mode))
        return true
    }

    public func setattr(_ ino: InodeNumber, _ changes: AttrChanges, size: UInt64? = nil) throws(FSError) -> Attr {
        if size != nil || !changes.isEmpty { try ensureWritable() }
        if let size { try truncate(ino, to: size) }
        if !changes.isEmpty {
            // Buffered writes would carry their own mtime over an explicit one.
            if let file = openFiles.withLock({ $0[ino] }) {
                file.lock.lock()
                defer { file.lock.unlock() }
                try commit(file)
            }
            _ = try mutating { () throws(MetadataError) in try metadata.setattr(ino, changes, now: Self.now()) }
        }
        return try getattr(ino)
    }

    public func mknod(_ parent: InodeNumber, _ name: FileName, mode: UInt32, rdev: UInt64, uid: UInt32, gid: UInt32) throws(FSError) -> Attr {
        try Self.checkNew(name)
        guard let type = FileType(rawValue: mode & FileType.mask), type != .directory, type != .symlink else {
            throw .invalidArgument("mknod of this type")
        }
        return try make(parent, name, mode: mode, rdev: rdev, uid: uid, gid: gid, target: nil)
    }

    public func mkdir(_ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32) throws(FSError) -> Attr {
        try Self.checkNew(name)
        return try make(parent, name, mode: FileType.directory.rawValue | (mode & 0o7777), rdev: 0, uid: uid, gid: gid, target: nil)
    }

    public func symlink(_ parent: InodeNumber, _ name: FileName, target: [UInt8], uid: UInt32, gid: UInt32) throws(FSError) -> Attr {
        try Self.checkNew(name)
        guard !target.isEmpty else { throw .metadata(.notFound) }
        guard target.count <= 4096 else { throw .nameTooLong }
        return try make(parent, name, mode: FileType.symlink.rawValue | 0o777, rdev: 0, uid: uid, gid: gid, target: target)
    }

    func make(_ parent: InodeNumber, _ name: FileName, mode: UInt32, rdev: UInt64, uid: UInt32, gid: UInt32, target: [UInt8]?) throws(FSError) -> Attr {
        let type = FileType(rawValue: mode & FileType.mask)
        let attr = try mutating { () throws(MetadataError) -> Attr in
            let now = Self.now()
            // The writer answers a directory or a symlink at once and makes it with the
            // next change that reaches the metadata (MetadataCache).
            if options.namesAtCommit, isWriter, type == .directory || type == .symlink,
               let answered = try cache.deferCreate(parent, name, directory: type == .directory, target: target,
                                                    mode: mode & 0o7777, uid: uid, gid: gid, now: now) {
                return answered
            }
            return try metadata.mknode(parent, name, mode: mode, uid: uid, gid: gid, rdev: rdev, target: target, now: now)
        }
        remember(attr.ino)
        return attr
    }

    public func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName) throws(FSError) -> Attr {
        try Self.checkNew(newName)
        let attr = try pending(mutating { () throws(MetadataError) in try metadata.link(ino, newParent, newName, now: Self.now()) })
        remember(attr.ino)
        return attr
    }

    public func unlink(_ parent: InodeNumber, _ name: FileName) throws(FSError) {
        try Self.check(name)
        noteUnlinked(try remove(parent, name, directory: false))
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName) throws(FSError) {
        try Self.check(name)
        if name.bytes == [UInt8(ascii: ".")] { throw .invalidArgument("rmdir of .") }
        if name.bytes == [UInt8(ascii: "."), UInt8(ascii: ".")] { throw .metadata(.notEmpty) }
        noteUnlinked(try remove(parent, name, directory: true))
    }

    /// The writer answers from its cache where it can and applies the removal with the
    /// next change that reaches the metadata (MetadataCache.deferRemove): an `rm -rf`
    /// then costs a transaction per batch, not per name.
    func remove(_ parent: InodeNumber, _ name: FileName, directory: Bool) throws(FSError) -> Attr {
        try mutating { () throws(MetadataError) in
            let now = Self.now()
            if options.namesAtCommit, isWriter, let answered = cache.deferRemove(parent, name, directory: directory, now: now) {
                return answered
            }
            return directory ? try metadata.rmdir(parent, name, now: now) : try metadata.unlink(parent, name, now: now)
        }
    }

    public func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                       flags: RenameFlags = []) throws(FSError) {
        try Self.check(name)
        try Self.checkNew(newName)
        if let replaced = try mutating({ () throws(MetadataError) in
            try metadata.rename(parent, name, newParent, newName, flags: flags, now: Self.now())
        }) {
            noteUnlinked(replaced)
        }
    }

    public func readlink(_ ino: InodeNumber) throws(FSError) -> [UInt8] {
        try Self.lift { () throws(MetadataError) in try metadata.readlink(ino) }
    }

    /// Opens directory `ino` for listing; the handle must be released with `releaseDirectory`.
    public func openDirectory(_ ino: InodeNumber) throws(FSError) -> FileHandleID {
        guard try getattr(ino).isDirectory else { throw .metadata(.notDirectory) }
        let id = FileHandleID(rawValue: nextHandle.add(1, ordering: .relaxed).oldValue)
        directoryHandles.withLock { $0[id] = .undecided }
        return id
    }

    public func releaseDirectory(_ id: FileHandleID) {
        directoryHandles.withLock { $0[id] = nil }
    }

    /// Lists `ino` from `offset` (0 at the start), offering each entry to `add` until it
    /// returns false (the reply is full). With `plus`, each entry `add` accepted counts as
    /// a kernel reference, as readdirplus replies do.
    ///
    /// Through a `handle` from `openDirectory`, the writer lists a directory whose names it
    /// keeps from memory, taken whole at the start: a listing then neither waits for the
    /// files it answered for to be made in the metadata nor asks the metadata at all.
    public func readdir(_ ino: InodeNumber, handle: FileHandleID? = nil, offset: Int64, plus: Bool,
                        add: (Listing) -> Bool) throws(FSError) {
        // Offsets 1 and 2 are "." and ".."; then, in a listing from memory, the entry at
        // index i continues at i + 3; in one from the metadata, an entry with cookie c at c + 2.
        if offset < 1 {
            let attr = try getattr(ino)
            guard attr.isDirectory else { throw .metadata(.notDirectory) }
            if !add(Listing(name: ".", attr: attr, nextOffset: 1)) { return }
        }
        if offset < 2 {
            let attr = try getattr(ino)
            if !add(Listing(name: "..", attr: attr, nextOffset: 2)) { return }
        }
        if let handle, let entries = listingFromMemory(ino, handle, offset: offset) {
            // An offset past the end (a `seekdir` to a made-up position) reads nothing.
            for index in Int(min(max(0, offset - 2), Int64(entries.count)))..<entries.count {
                let entry = entries[index]
                // Taken at the start; its attributes as they are now.
                var attr = cache.keptAttr(entry.attr.ino) ?? entry.attr
                if plus { attr = pending(attr) }
                if !add(Listing(name: entry.name, attr: attr, nextOffset: Int64(index) + 3)) { return }
                if plus { remember(attr.ino) }
            }
            return
        }
        var cookie = max(0, offset - 2)
        while true {
            let batch = try Self.lift { () throws(MetadataError) in try metadata.readdir(ino, after: cookie, limit: 256) }
            for entry in batch {
                let attr = plus ? pending(entry.attr) : entry.attr
                if !add(Listing(name: entry.name, attr: attr, nextOffset: entry.cookie + 2)) { return }
                if plus { remember(attr.ino) }
                cookie = entry.cookie
            }
            if batch.count < 256 { return }
        }
    }

    /// The entries of the listing `handle` took from memory at its start, or nil when it
    /// lists from the metadata; decided where the listing starts, and again where it
    /// starts over.
    func listingFromMemory(_ ino: InodeNumber, _ handle: FileHandleID, offset: Int64) -> [DirEntry]? {
        switch directoryHandles.withLock({ $0[handle] }) {
        case nil: return nil
        case .memory(let entries) where offset != 0: return entries
        case .metadata where offset != 0: return nil
        default:
            // A listing continued at an offset (telldir) that its own handle did not give
            // out is one from the metadata.
            guard offset < 3 else { return nil }
            let entries = isWriter ? cache.keptListing(ino) : nil
            directoryHandles.withLock { handles in
                if handles[handle] != nil { handles[handle] = entries.map { .memory($0) } ?? .metadata }
            }
            return entries
        }
    }

    public func statfs() throws(FSError) -> FSStats {
        // Files closed and removed since the last group hold their space until it is
        // committed and they are purged: `df` after `rm` shows it back.
        commitDeferred()
        flushPurges()
        let usage = try Self.lift { () throws(MetadataError) in try metadata.usage() }
        let reserved = accounting.withLock { state -> Int64 in
            state.used = usage.usedBytes
            state.limit = usage.sizeLimit
            return state.reserved
        }
        let blockSize: UInt64 = 4096
        let used = usage.usedBytes + UInt64(max(0, reserved))
        let total = usage.sizeLimit / blockSize
        var available = usage.sizeLimit > used ? usage.sizeLimit - used : 0
        // A volume larger than the disk under its store can hold no more than the disk.
        if let room = store.availableBytes() { available = min(available, room) }
        let free = available / blockSize
        return FSStats(blockSize: blockSize, totalBlocks: total, freeBlocks: free,
                       files: usage.inodes, freeFiles: UInt64(Int32.max) - min(usage.inodes, UInt64(Int32.max)),
                       nameMax: UInt64(FileName.maxLength))
    }

    // MARK: - Extended attributes

    /// Attributes netvol does not keep, answered EOPNOTSUPP for every file, as a filesystem
    /// mounted without them does (ext4 with `noacl`, NFS without security labels):
    /// - `system.*`, such as POSIX ACLs: meanings the kernel would have to enforce;
    /// - `security.selinux`: a label is one host's policy, and a volume is shared by hosts
    ///   whose policies differ. A host that runs SELinux labels FUSE files itself.
    /// `ls -l` asks for both on every file until a filesystem says it has neither; then it
    /// stops asking for the whole mount, two round trips less per file listed.
    static func checkKept(_ name: FileName) throws(FSError) {
        if name.bytes.isEmpty || name.bytes.count > 255 { throw .range }
        if name.bytes.starts(with: systemNamespace) { throw .notSupported("system.* extended attributes") }
        if name.bytes == selinuxLabel { throw .notSupported("SELinux labels") }
    }

    // Made once: the kernel asks for an attribute before every write.
    static let systemNamespace = Array("system.".utf8)
    static let selinuxLabel = Array("security.selinux".utf8)

    public func getxattr(_ ino: InodeNumber, _ name: FileName) throws(FSError) -> [UInt8] {
        try Self.checkKept(name)
        if try !mayHaveXattrs(ino) { throw .metadata(.noAttribute) }
        return try Self.lift { () throws(MetadataError) in try metadata.getxattr(ino, name) }
    }

    public func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], mode: XattrMode) throws(FSError) {
        try Self.checkKept(name)
        if value.count > 65_536 { throw .valueTooBig }
        try mutating { () throws(MetadataError) in try metadata.setxattr(ino, name, value, mode: mode, now: Self.now()) }
        xattrInodes.withLock { known in _ = known?.insert(ino) }
    }

    func mayHaveXattrs(_ ino: InodeNumber) throws(FSError) -> Bool {
        if let known = xattrInodes.withLock({ $0 }) { return known.contains(ino) }
        let loaded = try Self.lift { () throws(MetadataError) in try metadata.inodesWithXattrs() }
        xattrInodes.withLock { $0 = loaded }
        return loaded.contains(ino)
    }

    public func listxattr(_ ino: InodeNumber) throws(FSError) -> [FileName] {
        if try !mayHaveXattrs(ino) {
            _ = try getattr(ino)
            return []
        }
        return try Self.lift { () throws(MetadataError) in try metadata.listxattr(ino) }
    }

    public func removexattr(_ ino: InodeNumber, _ name: FileName) throws(FSError) {
        try Self.checkKept(name)
        try mutating { () throws(MetadataError) in try metadata.removexattr(ino, name, now: Self.now()) }
    }
}
