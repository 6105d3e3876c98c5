import CachedChunkStore
import ChunkStore
import LocalChunkStore
import Foundation
import Metadata
import SQLiteMetadata
import Synchronization
import Testing
@testable import VolumeFS

@Suite struct VolumeFSTests {
    @Test func writesAcrossChunkBoundariesReadBack() throws {
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (attr, fh) = try fx.create("f")
        let data = pattern(100_000, seed: 1)
        #expect(try fx.write(attr.ino, fh, 5000, data) == data.count)
        #expect(try fx.volume.read(attr.ino, fh, offset: 5000, count: data.count) == data)
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 5000) == [UInt8](repeating: 0, count: 5000))
        try fx.volume.flush(attr.ino, fh)
        fx.volume.release(attr.ino, fh)
        let again = try fx.volume.open(attr.ino, flags: O_RDONLY)
        #expect(try fx.volume.read(attr.ino, again, offset: 0, count: 200_000) == [UInt8](repeating: 0, count: 5000) + data)
        #expect(try fx.volume.getattr(attr.ino).size == 105_000)
    }

    /// A streaming writer holds at most its uploads in flight, its stored chunks waiting
    /// for their commit and the chunk it fills: the buffers they give back are the next
    /// chunks' (fresh ones cost the kernel a zeroing of every page), however long the file.
    @Test func aStreamingWriterReusesItsChunkBuffers() throws {
        let chunk = 64 * 1024
        let fx = try Fixture(chunkSize: chunk)
        let (attr, fh) = try fx.create("stream")
        let piece = pattern(chunk / 2, seed: 2)
        for i in 0..<(40 * 2 * fx.volume.chunkBuffers.kept) {
            _ = try fx.write(attr.ino, fh, UInt64(i * piece.count), piece)
        }
        try fx.volume.flush(attr.ino, fh)
        fx.volume.release(attr.ino, fh)
        let allocated = fx.volume.chunkBuffers.allocations.load(ordering: .relaxed)
        #expect(allocated <= fx.volume.chunkBuffers.kept, "\(allocated) buffers for 40 × \(fx.volume.chunkBuffers.kept) chunks")
        #expect(try fx.volume.getattr(attr.ino).size == UInt64(40 * fx.volume.chunkBuffers.kept * chunk))
    }

    @Test func holesReadAsZerosAndTakeNoChunk() throws {
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (attr, fh) = try fx.create("sparse")
        let far: UInt64 = 5 << 30
        _ = try fx.write(attr.ino, fh, far, [1, 2, 3])
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.volume.getattr(attr.ino).size == far + 3)
        #expect(try fx.volume.read(attr.ino, fh, offset: far - 2, count: 10) == [0, 0, 1, 2, 3])
        #expect(try fx.metadata.chunks(attr.ino).map(\.index) == [Int(far / (16 * 1024))])
        #expect(try fx.volume.getattr(attr.ino).storedBytes == 3)
    }

    /// Kept chunk maps stay within their bounds however often one file is opened and
    /// closed, and the oldest go first.
    @Test func keptChunkMapsStayBoundedAndForgetTheOldestFirst() {
        var maps = KeptChunkMaps()
        let stamp = CacheStamp(Attr(ino: InodeNumber(1), mode: 0o100644, nlink: 1, uid: 0, gid: 0, rdev: 0, size: 3,
                                    atime: Timestamp(nanoseconds: 1), mtime: Timestamp(nanoseconds: 1), ctime: Timestamp(nanoseconds: 1)))
        let map = [0: ChunkRef(index: 0, inline: [1, 2, 3], checksums: [UInt8]([1, 2, 3]).withUnsafeBytes { BlockChecksums(of: $0) })]
        for _ in 0..<200_000 {
            maps.keep(InodeNumber(7), stamp: stamp, map: map)
            #expect(maps.take(InodeNumber(7), at: stamp) == map)
            maps.keep(InodeNumber(7), stamp: stamp, map: map)
        }
        #expect(maps.count == 1)
        #expect(maps.places <= 2 * maps.count + 1024)
        for ino in 1...UInt64(KeptChunkMaps.entriesKept + 10) { maps.keep(InodeNumber(ino + 100), stamp: stamp, map: map) }
        #expect(maps.count == KeptChunkMaps.entriesKept)
        #expect(!maps.contains(InodeNumber(7)) && !maps.contains(InodeNumber(101)))
        #expect(maps.contains(InodeNumber(UInt64(KeptChunkMaps.entriesKept + 110))))
        #expect(maps.places <= 2 * maps.count + 1024)
    }

    @Test func truncateDownThenUpExposesZerosNotOldBytes() throws {
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (attr, fh) = try fx.create("t")
        let data = pattern(50_000, seed: 2)
        _ = try fx.write(attr.ino, fh, 0, data)
        try fx.volume.flush(attr.ino, fh)
        _ = try fx.volume.setattr(attr.ino, AttrChanges(), size: 20_000)
        _ = try fx.volume.setattr(attr.ino, AttrChanges(), size: 60_000)
        let back = try fx.volume.read(attr.ino, fh, offset: 0, count: 60_000)
        #expect(Array(back[0..<20_000]) == Array(data[0..<20_000]))
        #expect(Array(back[20_000...]) == [UInt8](repeating: 0, count: 40_000))
        #expect(try fx.metadata.usage().usedBytes == 20_000 - 16_384 + 16_384)
    }

    @Test func unlinkedFileStaysUsableUntilLastClose() throws {
        let fx = try Fixture()
        let (attr, fh) = try fx.create("gone")
        _ = try fx.write(attr.ino, fh, 0, [1, 2, 3])
        try fx.volume.unlink(.root, "gone")
        #expect(throws: FSError.metadata(.notFound)) { try fx.volume.lookup(.root, "gone") }
        _ = try fx.write(attr.ino, fh, 3, [4])
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 10) == [1, 2, 3, 4])
        fx.volume.release(attr.ino, fh)
        // The kernel still holds the lookup from create: the inode lives until forget.
        #expect(try fx.volume.getattr(attr.ino).nlink == 0)
        fx.volume.forget(attr.ino, 1)
        // Purges run in batches; a statfs (df) or a write short of space runs them at once.
        _ = try fx.volume.statfs()
        #expect(throws: FSError.metadata(.notFound)) { try fx.volume.getattr(attr.ino) }
        #expect(try fx.metadata.usage().usedBytes == 0)
    }

    @Test func orphansOfACrashArePurgedAtMount() throws {
        let fx = try Fixture()
        let (attr, fh) = try fx.create("orphan")
        _ = try fx.write(attr.ino, fh, 0, [1])
        try fx.volume.flush(attr.ino, fh)
        try fx.volume.unlink(.root, "orphan")
        try fx.volume.syncMetadata()
        // Applied (the writer's tick would, within a second); then no release and no
        // forget: the daemon died. Its lease is revoked (or expires), and the next writer
        // purges the orphan when it takes the lease.
        fx.volume = try VolumeFS(metadata: try fx.storage.reopen(nil), store: fx.store)
        #expect(try fx.volume.getattr(attr.ino).nlink == 0)
        _ = try fx.metadata.breakLease()
        try fx.volume.acquireLease()
        #expect(throws: FSError.metadata(.notFound)) { try fx.volume.getattr(attr.ino) }
    }

    @Test func writePastTheSizeLimitFailsAndChangesNothing() throws {
        let fx = try Fixture(chunkSize: 16 * 1024, sizeLimit: 64 * 1024)
        let (attr, fh) = try fx.create("f")
        _ = try fx.write(attr.ino, fh, 0, pattern(60_000, seed: 3))
        #expect(throws: FSError.noSpace) { try fx.write(attr.ino, fh, 60_000, pattern(10_000, seed: 4)) }
        #expect(try fx.volume.getattr(attr.ino).size == 60_000)
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 100_000) == pattern(60_000, seed: 3))
        // Overwriting in place needs no new space.
        _ = try fx.write(attr.ino, fh, 0, pattern(60_000, seed: 5))
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.metadata.usage().usedBytes == 60_000)
        #expect(try fx.volume.statfs().freeBlocks == (65_536 - 60_000) / 4096)
        #expect(throws: FSError.noSpace) { try fx.volume.fallocate(attr.ino, fh, mode: 0, offset: 0, length: 70_000) }
    }

    @Test func corruptOrMissingChunksGiveEIOAndNothingElse() throws {
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (a, fa) = try fx.create("a")
        let (b, fb) = try fx.create("b")
        _ = try fx.write(a.ino, fa, 0, pattern(40_000, seed: 6))
        _ = try fx.write(b.ino, fb, 0, pattern(40_000, seed: 7))
        try fx.volume.flush(a.ino, fa)
        try fx.volume.flush(b.ino, fb)
        fx.volume.release(a.ino, fa)
        fx.volume.release(b.ino, fb)
        let chunksOfA = try fx.metadata.chunks(a.ino)
        // Flip one byte of a's middle chunk on disk (objects are read-only files).
        let path = try #require(fx.store as? LocalChunkStore).path(of: chunksOfA[1].object!)
        chmod(path, 0o644)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[100] ^= 0xff
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try fx.store.delete(try fx.metadata.chunks(b.ino)[2].object!)

        let ra = try fx.volume.open(a.ino, flags: O_RDONLY)
        #expect(try fx.volume.read(a.ino, ra, offset: 0, count: 16_384) == Array(pattern(40_000, seed: 6)[0..<16_384]))
        #expect(throws: FSError.corrupt(ino: a.ino, chunk: 1, "checksum mismatch in block 0")) {
            try fx.volume.read(a.ino, ra, offset: 16_384, count: 10)
        }
        do {
            _ = try fx.volume.read(a.ino, ra, offset: 0, count: 40_000)
            Issue.record("a read spanning a corrupt chunk returned bytes")
        } catch {
            #expect(error.errno == EIO)
        }
        let rb = try fx.volume.open(b.ino, flags: O_RDONLY)
        do {
            _ = try fx.volume.read(b.ino, rb, offset: 32_768, count: 10)
            Issue.record("a missing chunk was read")
        } catch {
            #expect(error.errno == EIO)
        }
        #expect(try fx.volume.read(b.ino, rb, offset: 0, count: 100) == Array(pattern(40_000, seed: 7)[0..<100]))
    }

    /// A file `model` holding `data`, written to `remote` through `writerStore` by one
    /// mount, and another host's mount of the volume with an empty cache over `remote`.
    func modelOnAnotherHost(_ directory: String, chunk: Int, _ data: [UInt8], remote: any ChunkStore, writerStore: any ChunkStore)
        throws -> (Attr, CachedChunkStore, SQLiteMetadata, VolumeFS) {
        let metadata = try SQLiteMetadata.create(path: directory + "/volume.db", chunkSize: chunk, sizeLimit: 1 << 30,
                                                 now: VolumeFS.now())
        let writer = try VolumeFS(metadata: metadata, store: writerStore)
        let (attr, fh) = try writer.create(.root, FileName("model"), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try data.withUnsafeBytes { try writer.write(attr.ino, fh, offset: 0, $0) }
        try writer.flush(attr.ino, fh)
        writer.release(attr.ino, fh)
        writer.shutdown()
        let cache = try CachedChunkStore(directory: directory + "/reader", capacityBytes: 64 << 20, backing: remote)
        let readerMetadata = try SQLiteMetadata(path: directory + "/volume.db")
        return (attr, cache, readerMetadata, try VolumeFS(metadata: readerMetadata, store: cache))
    }

    /// What the kernel holds of a file a streaming reader read, for `setPageRetriever`.
    enum KernelPages: CaseIterable { case intact, changed, dropped, deletedWithTheFile }

    /// A streaming read's prefetches leave their cache copies for later; once the reads
    /// are done they are written from the kernel's pages of the file, checked first:
    /// pages that changed or went are not written, and those objects are downloaded into
    /// the cache again, unless the file itself went.
    @Test(arguments: KernelPages.allCases)
    func cacheCopiesOfAStreamingReadAreWrittenFromTheKernelsPages(pages: KernelPages) throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let chunk = 4 * BlockChecksums.blockSize
        let remote = CountingStore(try LocalChunkStore(root: directory + "/remote"))
        let data = pattern(6 * chunk + 10_000, seed: 22)
        let (attr, cache, readerMetadata, reader) = try modelOnAnotherHost(directory, chunk: chunk, data, remote: remote, writerStore: remote)
        defer { reader.shutdown() }
        var kernel = data
        if pages == .changed { kernel[3 * chunk + 5] ^= 0xff }
        let held = kernel
        let asked = Mutex(0)
        reader.setPageRetriever { ino, offset, buffer in
            asked.withLock { $0 += 1 }
            let gone = pages == .dropped || pages == .deletedWithTheFile
            guard ino == attr.ino, !gone, offset < UInt64(held.count) else { return gone ? 0 : nil }
            // At most 1 MiB at a time, as the kernel answers.
            let count = min(buffer.count, held.count - Int(offset), 1 << 20)
            held.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + count)])) }
            return count
        }
        let objects = try readerMetadata.chunks(attr.ino).compactMap(\.object)
        let rh = try reader.open(attr.ino, flags: O_RDONLY)
        var offset = 0
        while offset < data.count {
            let got = try reader.read(attr.ino, rh, offset: UInt64(offset), count: 64 << 10)
            #expect(got == Array(data[offset..<min(offset + (64 << 10), data.count)]))
            offset += got.count
            #expect(cache.settle(timeout: 30))
        }
        reader.release(attr.ino, rh)
        // The first chunk is the reader's own fetch, written at once; the rest were
        // prefetched, each downloaded once, and are not written yet.
        #expect(cache.isCached(objects[0]))
        let unwritten = Set(cache.unwrittenObjects.map(\.id))
        #expect(unwritten == Set(objects.dropFirst()))
        for object in objects.dropFirst() { #expect(!cache.isCached(object)) }
        let downloads = remote.reads
        #expect(downloads == objects.count)

        if pages == .deletedWithTheFile { try reader.unlink(.root, FileName("model")) }
        let written = reader.writeCacheFromPages()
        #expect(cache.unwrittenObjects.isEmpty)
        #expect(asked.withLock { $0 } > 0)
        #expect(cache.settle(timeout: 30))
        let fetchedAgain = switch pages {
            case .intact, .deletedWithTheFile: 0
            case .changed: 1
            case .dropped: objects.count - 1
        }
        #expect(written == (pages == .deletedWithTheFile ? 0 : objects.count - 1 - fetchedAgain))
        #expect(remote.reads == downloads + fetchedAgain)
        #expect(cache.statistics.fetchedAgain == fetchedAgain)
        if pages == .deletedWithTheFile {
            for object in objects.dropFirst() { #expect(!cache.isCached(object)) }
            return
        }
        if pages == .changed { #expect(cache.statistics.writtenLater == objects.count - 2) }
        // Either way the host's cache holds the whole file, the checked bytes only: a
        // new reader reads it all from there.
        for object in objects { #expect(cache.isCached(object)) }
        let again = try reader.open(attr.ino, flags: O_RDONLY)
        #expect(try reader.read(attr.ino, again, offset: 0, count: data.count) == data)
        reader.release(attr.ino, again)
        #expect(remote.reads == downloads + fetchedAgain)
    }

    /// A volume on a local store that counts what reaches it, behind a host cache.
    func cachedVolume(_ directory: String, chunk: Int, options: VolumeOptions = VolumeOptions()) throws
        -> (remote: CountingStore, cache: CachedChunkStore, metadata: SQLiteMetadata, volume: VolumeFS) {
        let remote = CountingStore(try LocalChunkStore(root: directory + "/remote"))
        let cache = try CachedChunkStore(directory: directory + "/cache", capacityBytes: 64 << 20, backing: remote)
        let metadata = try SQLiteMetadata.create(path: directory + "/volume.db", chunkSize: chunk, sizeLimit: 1 << 30,
                                                 now: VolumeFS.now())
        return (remote, cache, metadata, try VolumeFS(metadata: metadata, store: cache, options: options))
    }

    /// A streaming writer's full chunks are stored without their cache copies, which are
    /// written from the kernel's pages once the writes are done; chunks whose pages
    /// changed or went are downloaded into the cache again, so that the host's cache ends
    /// up holding the whole file either way. A file opened with `O_DIRECT` leaves no
    /// pages: its chunks are cached as they are stored.
    @Test(arguments: [KernelPages.intact, .changed, .dropped, nil])
    func cacheCopiesOfAStreamingWriteAreWrittenFromTheKernelsPages(pages: KernelPages?) throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let chunk = 4 * BlockChecksums.blockSize
        let (remote, cache, metadata, volume) = try cachedVolume(directory, chunk: chunk)
        defer { volume.shutdown() }
        let data = pattern(6 * chunk + 10_000, seed: 23)
        var kernel = data
        if pages == .changed { kernel[2 * chunk + 7] ^= 0xff }
        let held = kernel
        volume.setPageRetriever { _, offset, buffer in
            guard pages != .dropped, offset < UInt64(held.count) else { return 0 }
            let count = min(buffer.count, held.count - Int(offset), 1 << 20)
            held.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + count)])) }
            return count
        }
        let flags = O_RDWR | (pages == nil ? DirectIO.flag : 0)
        let (attr, fh) = try volume.create(.root, FileName("written"), mode: 0o644, flags: flags, uid: 0, gid: 0)
        var offset = 0
        while offset < data.count {
            let end = min(offset + (64 << 10), data.count)
            _ = try data[offset..<end].withUnsafeBytes { try volume.write(attr.ino, fh, offset: UInt64(offset), $0) }
            offset = end
        }
        try volume.fsync(attr.ino, fh)
        volume.release(attr.ino, fh)
        let objects = try metadata.chunks(attr.ino).compactMap(\.object)
        #expect(objects.count == 7)
        #expect(remote.reads == 0)
        guard let pages else {
            #expect(cache.unwrittenObjects.isEmpty)
            for object in objects { #expect(cache.isCached(object)) }
            return
        }
        // The six full chunks wait for their copies; the last, partial one was cached at
        // once (its pages may still change).
        #expect(Set(cache.unwrittenObjects.map(\.id)) == Set(objects.prefix(6)))
        for object in objects.prefix(6) { #expect(!cache.isCached(object)) }
        #expect(cache.isCached(objects[6]))

        let written = volume.writeCacheFromPages()
        #expect(cache.unwrittenObjects.isEmpty)
        #expect(cache.settle(timeout: 30))
        let fetchedAgain = switch pages {
            case .intact: 0
            case .changed: 1
            default: 6
        }
        #expect(written == 6 - fetchedAgain)
        #expect(cache.statistics.writtenLater == 6 - fetchedAgain)
        #expect(cache.statistics.fetchedAgain == fetchedAgain)
        #expect(remote.reads == fetchedAgain)
        // The cache holds the whole file, the checked bytes only: it reads from there.
        for object in objects { #expect(cache.isCached(object)) }
        let rh = try volume.open(attr.ino, flags: O_RDONLY)
        #expect(try volume.read(attr.ino, rh, offset: 0, count: data.count) == data)
        volume.release(attr.ino, rh)
        #expect(remote.reads == fetchedAgain)
    }

    /// Copies whose pages went while the writer is still writing are downloaded again
    /// too, though the metadata names none of those chunks yet: they are the open file's,
    /// stored and not committed.
    @Test func copiesOfChunksNotCommittedYetAreDownloadedAgainWhenTheirPagesWent() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let chunk = 4 * BlockChecksums.blockSize
        var options = VolumeOptions()
        // Nothing is committed before the fsync.
        options.fullChunksPerCommit = 100
        let (remote, cache, metadata, volume) = try cachedVolume(directory, chunk: chunk, options: options)
        defer { volume.shutdown() }
        volume.setPageRetriever { _, _, _ in 0 }
        let data = pattern(6 * chunk, seed: 24)
        let (attr, fh) = try volume.create(.root, FileName("written"), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        for offset in stride(from: 0, to: data.count, by: 64 << 10) {
            _ = try data[offset..<(offset + (64 << 10))].withUnsafeBytes { try volume.write(attr.ino, fh, offset: UInt64(offset), $0) }
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while cache.unwrittenObjects.count < 6 && ContinuousClock.now < deadline { usleep(1000) }
        #expect(cache.unwrittenObjects.count == 6, "the six chunks are stored, their copies left for later")
        #expect(try metadata.chunks(attr.ino).isEmpty, "and not committed")
        #expect(volume.writeCacheFromPages() == 0)
        #expect(cache.settle(timeout: 30))
        #expect(cache.statistics.fetchedAgain == 6)
        #expect(remote.reads == 6)
        try volume.fsync(attr.ino, fh)
        volume.release(attr.ino, fh)
        let objects = try metadata.chunks(attr.ino).compactMap(\.object)
        #expect(objects.count == 6)
        for object in objects { #expect(cache.isCached(object)) }
        let rh = try volume.open(attr.ino, flags: O_RDONLY)
        #expect(try volume.read(attr.ino, rh, offset: 0, count: data.count) == data)
        volume.release(attr.ino, rh)
        #expect(remote.reads == 6)
    }

    /// A cold reader behind the cache's prefetches is answered from the downloads'
    /// buffers in place, each read checked first; whatever the buffers cannot answer (not
    /// fetched, across chunks, damaged) is left to the copying read, which says why.
    @Test func coldReadsAreAnsweredFromDownloadsInPlaceOnlyWhenChecked() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let chunk = 4 * BlockChecksums.blockSize
        let remote = try LocalChunkStore(root: directory + "/remote")
        let data = pattern(4 * chunk + 10_000, seed: 21)
        let (attr, cache, readerMetadata, reader) = try modelOnAnotherHost(
            directory, chunk: chunk, data, remote: remote,
            writerStore: try CachedChunkStore(directory: directory + "/writer", capacityBytes: 64 << 20, backing: remote))
        defer { reader.shutdown() }
        let rh = try reader.open(attr.ino, flags: O_RDONLY)
        func fromMemory(_ offset: Int, _ count: Int) throws -> [UInt8]? {
            var sent: [UInt8]?
            let answered = try reader.read(attr.ino, rh, offset: UInt64(offset), count: count) { bytes in
                #expect(sent == nil, "sent twice")
                sent = Array(bytes)
            }
            #expect(answered == (sent != nil))
            return sent
        }
        // Nothing fetched yet: the copying read answers, and starts the prefetches.
        #expect(try fromMemory(0, 4096) == nil)
        #expect(try reader.read(attr.ino, rh, offset: 0, count: 4096) == Array(data[0..<4096]))
        #expect(cache.settle(timeout: 30))
        #expect(try fromMemory(chunk, chunk) == Array(data[chunk..<(2 * chunk)]))
        #expect(try fromMemory(2 * chunk + 100, 5000) == Array(data[(2 * chunk + 100)..<(2 * chunk + 5100)]))
        // Across two chunks: not from one buffer.
        #expect(try fromMemory(2 * chunk - 10, 20) == nil)
        #expect(try reader.read(attr.ino, rh, offset: UInt64(2 * chunk - 10), count: 20) == Array(data[(2 * chunk - 10)..<(2 * chunk + 10)]))
        // A prefetch still queued is neither landed nor landing: wait for it to land.
        #expect(cache.settle(timeout: 30))
        #expect(try fromMemory(3 * chunk, chunk) == Array(data[(3 * chunk)..<(4 * chunk)]))
        #expect(cache.settle(timeout: 30))
        // The file's short last chunk, asked past the end of the file.
        #expect(try fromMemory(4 * chunk + 1000, chunk) == Array(data[(4 * chunk + 1000)...]))
        #expect(try fromMemory(data.count, 100) == nil)

        // A damaged object: the landed bytes fail their check and are not sent; the
        // copying read drops them, fetches the object again and reports the damage.
        let damagedID = try #require(try readerMetadata.chunks(attr.ino)[1].object)
        let path = remote.path(of: damagedID)
        chmod(path, 0o644)
        var stored = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        stored[70] ^= 0xff
        try Data(stored).write(to: URL(fileURLWithPath: path))
        cache.evict(damagedID)
        cache.prefetch(damagedID)
        #expect(cache.settle(timeout: 30))
        #expect(try fromMemory(chunk, 4096) == nil)
        #expect(throws: FSError.corrupt(ino: attr.ino, chunk: 1, "checksum mismatch in block 0")) {
            try reader.read(attr.ino, rh, offset: UInt64(chunk), count: 4096)
        }
        // Blocks of the same object that are sound are still answered.
        cache.prefetch(damagedID)
        #expect(cache.settle(timeout: 30))
        let sound = chunk + BlockChecksums.blockSize + 100
        #expect(try fromMemory(sound, 4096) == Array(data[sound..<(sound + 4096)]))
    }

    @Test func smallFilesLiveInlineUntilTheyGrow() throws {
        var options = VolumeOptions()
        options.inlineLimit = 4096
        let fx = try Fixture(chunkSize: 16 * 1024, options: options)
        let (attr, fh) = try fx.create("small")
        _ = try fx.write(attr.ino, fh, 0, pattern(4096, seed: 3))
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.metadata.chunks(attr.ino).map(\.object) == [nil])
        #expect(try fx.store.list().isEmpty)
        #expect(try fx.volume.read(attr.ino, fh, offset: 100, count: 5000) == Array(pattern(4096, seed: 3)[100...]))
        #expect(try fx.volume.getattr(attr.ino).storedBytes == 4096)

        // One byte more and the chunk moves to an object; nothing is left for gc.
        _ = try fx.write(attr.ino, fh, 4096, [9])
        try fx.volume.flush(attr.ino, fh)
        let moved = try fx.metadata.chunks(attr.ino)
        #expect(moved.count == 1 && moved[0].object != nil && moved[0].length == 4097)
        #expect(try fx.metadata.garbage(olderThan: 0, limit: 10).isEmpty)
        // Truncating back under the limit brings the bytes inline again.
        try fx.volume.truncate(attr.ino, to: 10)
        #expect(try fx.metadata.chunks(attr.ino).map(\.object) == [nil])
        #expect(try fx.metadata.garbage(olderThan: 0, limit: 10) == [moved[0].object!])
        fx.volume.release(attr.ino, fh)
        let again = try fx.volume.open(attr.ino, flags: O_RDONLY)
        #expect(try fx.volume.read(attr.ino, again, offset: 0, count: 100) == Array(pattern(4096, seed: 3)[0..<10]))
        fx.volume.release(attr.ino, again)
        #expect(try fx.metadata.usage().usedBytes == 10)

        // Inline bytes are checked like objects: damaged ones give EIO.
        let damaged: [UInt8] = [1, 2, 3]
        let wrong: [UInt8] = [1, 2, 4]
        try fx.metadata.commitData(attr.ino, chunks: [ChunkRef(index: 0, inline: damaged, checksums: wrong.withUnsafeBytes { BlockChecksums(of: $0) })],
                                   drop: nil, size: 3, mtime: nil, now: VolumeFS.now())
        // Damaged behind the writer's back, where a mount finds them: the writer's own
        // copy of the file's map is sound.
        try fx.remount()
        let third = try fx.volume.open(attr.ino, flags: O_RDONLY)
        #expect(throws: FSError.corrupt(ino: attr.ino, chunk: 0, "checksum mismatch in block 0")) {
            try fx.volume.read(attr.ino, third, offset: 0, count: 3)
        }
        fx.volume.release(attr.ino, third)
    }

    @Test func sequentialReadsFetchTheNextChunksAheadAndRandomOnesDoNot() throws {
        var reads = ReadPattern()
        // From the start, in order: each read names the chunks after it, each once.
        #expect(reads.ahead(of: 0...0, by: 2) == 1..<3)
        #expect(reads.ahead(of: 0...0, by: 2).isEmpty)
        #expect(reads.ahead(of: 1...1, by: 2) == 3..<4)
        #expect(reads.ahead(of: 1...2, by: 2) == 4..<5)
        #expect(reads.ahead(of: 3...3, by: 2) == 5..<6)
        // A jump is not sequential; continuing from there is.
        #expect(reads.ahead(of: 6...6, by: 2).isEmpty)
        #expect(reads.ahead(of: 7...7, by: 2) == 8..<10)
        // Reading from the top again fetches ahead again.
        #expect(reads.ahead(of: 0...0, by: 2) == 1..<3)
        #expect(reads.ahead(of: 1...1, by: 0).isEmpty)

        // A reader that keeps going earns a window that doubles up to the maximum, and
        // loses it when it jumps.
        var streaming = ReadPattern()
        #expect(streaming.ahead(of: 0...0, by: 2, growingTo: 16) == 1..<3)
        #expect(streaming.ahead(of: 1...1, by: 2, growingTo: 16) == 3..<6)
        #expect(streaming.ahead(of: 2...2, by: 2, growingTo: 16) == 6..<11)
        #expect(streaming.ahead(of: 2...2, by: 2, growingTo: 16).isEmpty)
        #expect(streaming.ahead(of: 3...3, by: 2, growingTo: 16) == 11..<20)
        #expect(streaming.ahead(of: 4...4, by: 2, growingTo: 16) == 20..<21)
        #expect(streaming.window == 16)
        #expect(streaming.ahead(of: 40...40, by: 2, growingTo: 16).isEmpty)
        #expect(streaming.ahead(of: 41...41, by: 2, growingTo: 16) == 42..<44)

        // Each handle keeps its own pattern: two readers of one file, interleaved, both
        // stay sequential, and the bytes they get are right.
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (attr, fh) = try fx.create("f")
        let data = pattern(10 * 16 * 1024, seed: 4)
        _ = try fx.write(attr.ino, fh, 0, data)
        fx.volume.release(attr.ino, fh)
        let a = try fx.volume.open(attr.ino, flags: O_RDONLY)
        let b = try fx.volume.open(attr.ino, flags: O_RDONLY)
        let chunk = 16 * 1024
        for index in 0..<4 {
            let start = index * chunk
            let other = start + 5 * chunk
            let fromA = try fx.volume.read(attr.ino, a, offset: UInt64(start), count: chunk)
            let fromB = try fx.volume.read(attr.ino, b, offset: UInt64(other), count: 100)
            #expect(fromA == Array(data[start..<(start + chunk)]))
            #expect(fromB == Array(data[other..<(other + 100)]))
        }
        let progress = fx.volume.handles.withLock { [$0[a]!.reads.prefetchedUpTo, $0[b]!.reads.prefetchedUpTo] }
        // A read four chunks in order (windows 2, 4, 8, 16); B three after its jump (2, 4, 8).
        #expect(progress == [3 + 1 + 16, 8 + 1 + 8])
        fx.volume.release(attr.ino, a)
        fx.volume.release(attr.ino, b)
    }

    @Test func lookupCountsFollowRepliesAndForgets() throws {
        let fx = try Fixture()
        _ = try fx.volume.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        let d = try fx.volume.lookup(.root, "d")
        #expect(fx.volume.lookupCount(d.ino) == 2)
        var seen: [String] = []
        try fx.volume.readdir(.root, offset: 0, plus: true) { listing in
            seen.append(listing.name.description)
            return true
        }
        #expect(seen == [".", "..", "d"])
        #expect(fx.volume.lookupCount(d.ino) == 3)
        fx.volume.forget(d.ino, 3)
        #expect(fx.volume.lookupCount(d.ino) == 0)
        // Over-forgetting is survived.
        fx.volume.forget(d.ino, 5)
        #expect(fx.volume.lookupCount(.root) == 1)
    }

    @Test func readdirResumesAtAnyOffsetAndStopsWhenFull() throws {
        let fx = try Fixture()
        for i in 0..<600 { _ = try fx.create("f\(i)") }
        let names = try list(fx.volume, .root, handle: nil).map(\.name.description)
        #expect(names.count == 602)
        #expect(Set(names) == Set([".", ".."] + (0..<600).map { "f\($0)" }))
    }

    /// The writer lists a directory whose names it keeps from memory: files it answered
    /// for and has not made in the metadata yet are listed, with the sizes written to them,
    /// without making them (nothing asked the metadata), each entry once across replies.
    @Test func theWritersListingThroughAHandleComesFromMemory() throws {
        let fx = try Fixture()
        let d = try fx.volume.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        var open: [(Attr, FileHandleID)] = []
        for i in 0..<300 {
            let (attr, fh) = try fx.volume.create(d.ino, FileName("f\(i)"), mode: 0o644, flags: O_RDWR | O_EXCL, uid: 0, gid: 0)
            _ = try fx.write(attr.ino, fh, 0, [UInt8](repeating: 1, count: i))
            open.append((attr, fh))
        }
        #expect(open.allSatisfy { fx.volume.cache.isUnmade($0.0.ino) }, "the files wait for their commits to be made")
        let handle = try fx.volume.openDirectory(d.ino)
        let listed = try list(fx.volume, d.ino, handle: handle, plus: true)
        #expect(listed.map(\.name.description) == [".", ".."] + (0..<300).map { "f\($0)" }, "in the order they were made")
        #expect(listed.dropFirst(2).map(\.attr.size) == (0..<300).map { UInt64($0) })
        #expect(open.allSatisfy { fx.volume.cache.isUnmade($0.0.ino) }, "the listing did not make them")
        // A second name of a file comes where it was made, not beside the first (`tar`
        // archives the first it meets as the file, the other as a link to it).
        _ = try fx.volume.link(open[5].0.ino, d.ino, "a")
        #expect(try list(fx.volume, d.ino, handle: handle).last?.name == "a")
        // Starting over takes the directory as it is now.
        try fx.volume.unlink(d.ino, "f0")
        let again = try list(fx.volume, d.ino, handle: handle)
        #expect(again.count == 302 && !again.contains { $0.name == "f0" })
        for offset: Int64 in [302, 303, 100_000, .max] {
            var past = 0
            try fx.volume.readdir(d.ino, handle: handle, offset: offset, plus: false) { _ in
                past += 1
                return true
            }
            #expect(past == 0, "an offset past the end (\(offset)) reads nothing")
        }
        fx.volume.releaseDirectory(handle)
        #expect(fx.volume.directoryHandles.withLock { $0.isEmpty })
        // From the metadata, which makes them first, the same names.
        let fromMetadata = try list(fx.volume, d.ino, handle: nil)
        #expect(Set(fromMetadata.map(\.name)) == Set(again.map(\.name)))
        for (attr, fh) in open { fx.volume.release(attr.ino, fh) }
    }

    @Test func namesAreChecked() throws {
        let fx = try Fixture()
        let long = String(repeating: "x", count: 256)
        #expect(throws: FSError.nameTooLong) { try fx.create(long) }
        #expect(throws: FSError.nameTooLong) { try fx.volume.lookup(.root, FileName(long)) }
        _ = try fx.create(String(repeating: "y", count: 255))
        #expect(throws: FSError.metadata(.exists)) { try fx.volume.mkdir(.root, "..", mode: 0o755, uid: 0, gid: 0) }
        #expect(throws: FSError.invalidArgument("bad name")) { try fx.volume.mkdir(.root, "a/b", mode: 0o755, uid: 0, gid: 0) }
        _ = try fx.create("x")
        #expect(throws: FSError.metadata(.exists)) { try fx.create("x") }
    }

    @Test func fileTooBigAndXattrsNetvolDoesNotKeep() throws {
        let fx = try Fixture()
        let (attr, fh) = try fx.create("f")
        #expect(throws: FSError.fileTooBig) { try fx.write(attr.ino, fh, VolumeFS.maxFileSize, [1]) }
        #expect(throws: FSError.fileTooBig) { try fx.volume.setattr(attr.ino, AttrChanges(), size: VolumeFS.maxFileSize + 1) }
        #expect(throws: FSError.notSupported("system.* extended attributes")) {
            try fx.volume.setxattr(attr.ino, "system.posix_acl_access", [1], mode: .any)
        }
        // ls -l stops asking a mount for ACLs and labels once it answers EOPNOTSUPP.
        #expect(throws: FSError.notSupported("system.* extended attributes")) {
            try fx.volume.getxattr(attr.ino, "system.posix_acl_access")
        }
        #expect(throws: FSError.notSupported("SELinux labels")) { try fx.volume.getxattr(attr.ino, "security.selinux") }
        #expect(throws: FSError.notSupported("SELinux labels")) {
            try fx.volume.setxattr(attr.ino, "security.selinux", Array("u:r:t:s0".utf8), mode: .any)
        }
        #expect(throws: FSError.metadata(.noAttribute)) { try fx.volume.getxattr(attr.ino, "security.capability") }
        try fx.volume.setxattr(attr.ino, "security.capability", [1, 2], mode: .create)
        #expect(try fx.volume.getxattr(attr.ino, "security.capability") == [1, 2])
        try fx.volume.setxattr(attr.ino, "user.k", [9], mode: .create)
        #expect(try fx.volume.getxattr(attr.ino, "user.k") == [9])
        #expect(throws: FSError.valueTooBig) { try fx.volume.setxattr(attr.ino, "user.big", [UInt8](repeating: 0, count: 70_000), mode: .any) }
    }

    @Test func openWithTruncEmptiesTheFile() throws {
        let fx = try Fixture()
        let (attr, fh) = try fx.create("f")
        _ = try fx.write(attr.ino, fh, 0, pattern(1000, seed: 8))
        fx.volume.release(attr.ino, fh)
        let again = try fx.volume.open(attr.ino, flags: O_WRONLY | O_TRUNC)
        #expect(try fx.volume.getattr(attr.ino).size == 0)
        fx.volume.release(attr.ino, again)
        #expect(try fx.metadata.usage().usedBytes == 0)
    }

    @Test func pendingWritesShowInAttributesBeforeClose() throws {
        let fx = try Fixture()
        let (attr, fh) = try fx.create("f")
        let before = try fx.volume.getattr(attr.ino)
        usleep(2000)
        _ = try fx.write(attr.ino, fh, 0, [1, 2, 3])
        let during = try fx.volume.getattr(attr.ino)
        #expect(during.size == 3)
        #expect(during.mtime > before.mtime)
        #expect(try fx.metadata.getattr(attr.ino).size == 0)
        fx.volume.release(attr.ino, fh)
        #expect(try fx.metadata.getattr(attr.ino).size == 3)
        #expect(try fx.metadata.getattr(attr.ino).mtime == during.mtime)
    }

    @Test func garbageWaitsForTheGracePeriod() throws {
        var options = VolumeOptions()
        options.gcGraceSeconds = 60
        options.inlineLimit = 0
        let fx = try Fixture(options: options)
        let (attr, fh) = try fx.create("f")
        _ = try fx.write(attr.ino, fh, 0, [1])
        try fx.volume.flush(attr.ino, fh)
        let old = try fx.metadata.chunks(attr.ino)[0].object!
        _ = try fx.write(attr.ino, fh, 0, [2])
        try fx.volume.flush(attr.ino, fh)
        #expect(try fx.volume.collectGarbage() == 0)
        #expect(try fx.store.size(of: old) == 1)
        // Past the grace period (here: one of zero seconds), the old object goes.
        #expect(try fx.volume.collectGarbage(graceSeconds: 0) == 1)
        #expect(throws: StoreError.notFound(old)) { try fx.store.size(of: old) }
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 1) == [2])
    }

    @Test func punchedHolesAndZeroedRangesReadAsZerosAndTakeNoSpace() throws {
        let fx = try Fixture(chunkSize: 16 * 1024)
        let (attr, fh) = try fx.create("f")
        var expected = pattern(81_920, seed: 9)
        _ = try fx.write(attr.ino, fh, 0, expected)
        try fx.volume.flush(attr.ino, fh)
        let keepSize: Int32 = 0x01, punchHole: Int32 = 0x02, zeroRange: Int32 = 0x10
        // Chunks 1 and 2 are covered whole, 0 and 3 in part.
        try fx.volume.fallocate(attr.ino, fh, mode: punchHole | keepSize, offset: 10_000, length: 50_000)
        expected.replaceSubrange(10_000..<60_000, with: repeatElement(0, count: 50_000))
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 200_000) == expected)
        #expect(try fx.volume.getattr(attr.ino).size == 81_920)
        #expect(try fx.metadata.chunks(attr.ino).map(\.index) == [0, 3, 4])
        // Chunk 0 keeps only what comes before the hole; chunk 3 keeps its length.
        #expect(try fx.metadata.usage().usedBytes == 10_000 + 16_384 + 16_384)
        // Zeroing past the end grows the file; the chunk at the end keeps only its data.
        try fx.volume.fallocate(attr.ino, fh, mode: zeroRange, offset: 80_000, length: 20_000)
        expected.replaceSubrange(80_000..<81_920, with: repeatElement(0, count: 1_920))
        expected += [UInt8](repeating: 0, count: 100_000 - 81_920)
        #expect(try fx.volume.getattr(attr.ino).size == 100_000)
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 200_000) == expected)
        #expect(try fx.metadata.usage().usedBytes == 10_000 + 16_384 + (80_000 - 65_536))
        // A hole over a whole file's data leaves nothing stored, and the size as it was.
        try fx.volume.fallocate(attr.ino, fh, mode: punchHole | keepSize, offset: 0, length: 1 << 20)
        #expect(try fx.metadata.chunks(attr.ino).isEmpty)
        #expect(try fx.volume.getattr(attr.ino).size == 100_000)
        #expect(try fx.volume.read(attr.ino, fh, offset: 0, count: 200_000) == [UInt8](repeating: 0, count: 100_000))
        // KEEP_SIZE alone checks for room and changes nothing; collapse and insert are refused.
        try fx.volume.fallocate(attr.ino, fh, mode: keepSize, offset: 0, length: 1 << 20)
        #expect(try fx.volume.getattr(attr.ino).size == 100_000)
        #expect(throws: FSError.notSupported("fallocate mode 8")) { try fx.volume.fallocate(attr.ino, fh, mode: 0x08, offset: 0, length: 16_384) }
        fx.volume.release(attr.ino, fh)
    }
}
