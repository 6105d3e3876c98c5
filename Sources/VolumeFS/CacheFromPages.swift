#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Foundation
public import Metadata
import Synchronization

// Cache copies written after a streaming read or write, from the kernel's pages of the file.
//
// A cold streaming read fetches each object once: its bytes go to the reader, and used
// to go to the host's local cache at the same time. That copy is as many bytes written
// as the read brings in, and it competes for the disk with whatever the read waits for
// (an object store on the same host reads from it; a disk slower than the network bounds
// the read outright). So the objects a sequential reader's prefetch fetches are left
// unwritten (`ChunkStore.prefetch(_:writingLater:)`) while the reads go on. Their bytes
// stay in the kernel's page cache of the file, which the reader filled: once no read has
// come for `quietNanoseconds`, a thread of its own asks the kernel for those pages back
// (`fuse_lowlevel_notify_retrieve`), checks them against the chunk's block checksums and
// writes the cache copy. Objects the reader never took whole are still in the store's
// memory and are written from there.
//
// A streaming write is the same case turned around: each full chunk is stored in the
// object store and used to be written to the local cache as well, while the writer
// waited for both, and the writer's own bytes stay in the kernel's pages of the file
// (`ChunkStore.put(_:_:writingLater:)`). Its copies wait for the writes to go quiet the
// same way. The kernel keeps a written file's pages less surely than a read one's: a few
// pages of a file just written through the mount can go within a second, with no
// memory pressure (seen on kernel 6.18, never on a local filesystem's files), and their
// chunks are then downloaded again, as a read's are. A file opened with `O_DIRECT`
// leaves no pages at all, so its chunks are cached as they are stored.
//
// What it costs: an object whose pages the kernel dropped meanwhile (memory pressure,
// `POSIX_FADV_DONTNEED`, the file changed) is downloaded once more, into the cache (and
// when the store cannot be reached, by the next read of it). To keep that rare, no more
// than `unwrittenCacheBytes` (an eighth of memory) wait: past it, the oldest are written
// while the read goes on; and none waits more than 30 s for reads that never pause.
// `netvol unmount` and `netvol warmup` write everything left first
// (`writeCacheFromPages`), since an unmount drops the pages. Until its copy is written,
// an object read on this host is not in its cache: an object store that stops within
// that moment leaves it unreadable here.

/// Copies `buffer.count` bytes of the kernel's pages of a file from an offset, up to the
/// first page it does not hold; nil when it does not answer.
public typealias PageRetriever = @Sendable (InodeNumber, UInt64, UnsafeMutableRawBufferPointer) -> Int?

/// Where the bytes of an unwritten object sit in the kernel's pages.
struct PageSource {
    let ino: InodeNumber
    /// The chunk's offset in the file.
    let offset: UInt64
    let ref: ChunkRef
    /// When it was noted (CLOCK_MONOTONIC nanoseconds). The object is listed as unwritten
    /// only once its download or upload ends, so a pass that finds nothing waiting must
    /// not drop the sources of those still under way.
    var noted = VolumeFS.monotonicNanoseconds()
}

extension VolumeOptions {
    /// An eighth of the memory this process may use (the machine's, or its cgroup's
    /// limit), between 256 MiB and 8 GiB.
    public static let defaultUnwrittenCacheBytes: Int = {
        var memory = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            memory = min(memory, limit)
        }
        return min(max(memory / 8, 256 << 20), 8 << 30)
    }()
}

extension VolumeFS {
    /// How long streaming reads and writes stay away before cache copies are written.
    static let quietNanoseconds: UInt64 = 300_000_000
    /// How long copies wait at most: reads that never pause (a server's random reads)
    /// must not leave them until the kernel has dropped the pages.
    static let longestWaitNanoseconds: UInt64 = 30_000_000_000
    /// Page sources remembered at most (an object each).
    static let pageSourceLimit = 65_536
    /// How long a page source is kept for an object not listed as unwritten: longer than
    /// any download or upload takes.
    static let pageSourceLifetimeNanoseconds: UInt64 = 60_000_000_000

    /// Sets what copies the kernel's pages of a file (FuseMount); until it is set, every
    /// cache copy is written as its object is fetched.
    public func setPageRetriever(_ retrieve: @escaping PageRetriever) {
        pageRetriever.withLock { $0 = retrieve }
    }

    var canCacheFromPages: Bool {
        options.unwrittenCacheBytes > 0 && store.writesCopiesLater && pageRetriever.withLock({ $0 != nil })
    }

    static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    func noteStreaming() {
        lastStreamed.store(Self.monotonicNanoseconds(), ordering: .relaxed)
    }

    var streamingIsQuiet: Bool {
        Self.monotonicNanoseconds() &- lastStreamed.load(ordering: .relaxed) >= Self.quietNanoseconds
    }

    func notePageSource(_ object: ObjectID, _ source: PageSource) {
        pageSources.withLock { sources in
            if sources.count < Self.pageSourceLimit || sources[object] != nil { sources[object] = source }
        }
    }

    /// Drops the page sources of objects that are not waiting, but for those noted lately,
    /// whose objects may still be on their way (prefetched, say, then found in the cache).
    func dropStalePageSources() {
        let now = Self.monotonicNanoseconds()
        pageSources.withLock { sources in
            sources = sources.filter { now &- $0.value.noted < Self.pageSourceLifetimeNanoseconds }
        }
    }

    /// From the background thread: starts writing cache copies when streaming has gone
    /// quiet, or when more than `unwrittenCacheBytes` wait.
    func cacheFromPagesIfDue() {
        guard store.writesCopiesLater, !cachingFromPages.load(ordering: .relaxed) else { return }
        let waiting = store.unwrittenObjects
        guard !waiting.isEmpty else {
            unwrittenSince.store(0, ordering: .relaxed)
            if pageSources.withLock({ !$0.isEmpty }) && streamingIsQuiet { dropStalePageSources() }
            return
        }
        let now = Self.monotonicNanoseconds()
        if unwrittenSince.load(ordering: .relaxed) == 0 { unwrittenSince.store(now, ordering: .relaxed) }
        let waitedLong = now &- unwrittenSince.load(ordering: .relaxed) >= Self.longestWaitNanoseconds
        let bytes = waiting.reduce(0) { $0 + $1.size }
        guard streamingIsQuiet || waitedLong || bytes > options.unwrittenCacheBytes else { return }
        guard cachingFromPages.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        // A thread of its own: the background thread's group commits must not wait for
        // the disk.
        Thread.detachNewThread { [self] in
            defer { cachingFromPages.store(false, ordering: .releasing) }
            writeUnwritten(yieldingToStreams: !waitedLong)
            unwrittenSince.store(0, ordering: .relaxed)
        }
    }

    /// Writes every cache copy left for later, from memory or from the kernel's pages;
    /// returns how many were written. For `netvol unmount` (the pages go with the mount)
    /// and `netvol warmup`. Waits for a background run of the same to end first, and for
    /// the downloads of copies whose pages went, so that the cache holds them when this
    /// returns (an unmount would cut them short).
    @discardableResult
    public func writeCacheFromPages(timeout: Double = 60) -> Int {
        let deadline = Self.monotonicNanoseconds() + UInt64(timeout * 1e9)
        while !cachingFromPages.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            guard Self.monotonicNanoseconds() < deadline else { return 0 }
            usleep(2_000)
        }
        defer { cachingFromPages.store(false, ordering: .releasing) }
        let written = writeUnwritten(yieldingToStreams: false, deadline: deadline)
        let left = Double(deadline &- min(deadline, Self.monotonicNanoseconds())) / 1e9
        _ = store.settle(timeout: left)
        return written
    }

    /// Writes the unwritten objects, oldest first. `yieldingToStreams`: stops when
    /// streaming reads or writes come again and no more than `unwrittenCacheBytes` wait.
    @discardableResult
    func writeUnwritten(yieldingToStreams: Bool, deadline: UInt64 = .max) -> Int {
        var waiting = store.unwrittenObjects
        var bytes = waiting.reduce(0) { $0 + $1.size }
        guard !waiting.isEmpty else { return 0 }
        let retrieve = pageRetriever.withLock { $0 }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DirectIO.padded(chunkSize), alignment: DirectIO.alignment)
        defer { buffer.deallocate() }
        var written = 0
        var lost: [InodeNumber: Set<ObjectID>] = [:]
        while let (object, size) = waiting.first {
            if yieldingToStreams && !streamingIsQuiet && bytes <= options.unwrittenCacheBytes { break }
            guard Self.monotonicNanoseconds() < deadline else { break }
            waiting.removeFirst()
            bytes -= size
            let source = pageSources.withLock { $0.removeValue(forKey: object) }
            // Still in memory (prefetched but never read whole): no need for the pages.
            if store.keep(unwritten: object, nil) {
                written += 1
                continue
            }
            guard let source, let retrieve, source.ref.length == size, size <= buffer.count,
                  source.ref.checksums.values.count == (size + BlockChecksums.blockSize - 1) / BlockChecksums.blockSize else {
                logger.debug("cache copy of object \(object): no page source (\(source == nil ? "none" : "size differs"))")
                store.forget(unwritten: object)
                if let source { lost[source.ino, default: []].insert(object) }
                continue
            }
            var got = 0
            while got < size {
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[got..<size])
                guard let count = retrieve(source.ino, source.offset + UInt64(got), piece), count > 0 else { break }
                got += count
            }
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<size])
            // Pages of a file changed since, or dropped, fail here: the object is then
            // fetched again by the next read of it.
            guard got == size, firstMismatch(source.ref, bytes, from: 0) == nil else {
                logger.debug("cache copy of object \(object): the kernel gave \(got) of \(size) bytes\(got == size ? ", not matching its checksums" : "")")
                store.forget(unwritten: object)
                lost[source.ino, default: []].insert(object)
                continue
            }
            if store.keep(unwritten: object, bytes) { written += 1 }
        }
        if store.unwrittenObjects.isEmpty { dropStalePageSources() }
        fetchAgain(lost)
        return written
    }

    /// Objects whose copies could not be written from the kernel's pages (they went, or
    /// changed) are fetched into the cache again, so that what this host read stays
    /// cached; a store that cannot be reached leaves them to the next read. Only those
    /// their file still holds: pages also go because the file was deleted or rewritten.
    func fetchAgain(_ lost: [InodeNumber: Set<ObjectID>]) {
        for (ino, objects) in lost {
            for object in objectsHeld(by: ino).intersection(objects) { store.cache(object) }
        }
    }

    /// The objects the content of `ino` is made of. A file open on this mount holds, besides
    /// what it committed, the chunks it stored and has not committed yet: a streaming
    /// writer's copies are written while it goes on, and the metadata does not name the
    /// chunks of its last few seconds (nor, before its `fsync`, of any).
    func objectsHeld(by ino: InodeNumber) -> Set<ObjectID> {
        if let file = openFiles.withLock({ $0[ino] }) {
            if unlinked.withLock({ $0.contains(ino) }) { return [] }
            file.lock.lock()
            defer { file.lock.unlock() }
            var held = Set(file.chunkMap.values.compactMap(\.object))
            for upload in file.uploads.values where upload.isFinished {
                if case .success(let ref) = upload.wait(), let object = ref.object { held.insert(object) }
            }
            return held
        }
        guard let (attr, chunks) = try? metadata.attrAndChunks(ino), attr.nlink > 0 else { return [] }
        return Set(chunks.compactMap(\.object))
    }
}
