import Dispatch
import Foundation
import Synchronization
import Testing
@testable import CachedChunkStore
import ChunkStore
import LocalChunkStore
#if canImport(Glibc)
import Glibc
#endif

/// The cache's own promises, over a local store that counts what reaches it.
@Suite final class CachedChunkStoreTests {
    let root = temporaryDirectory()
    let backing: CountingStore
    var cacheDirectory: String { root + "/cache" }

    init() throws {
        backing = CountingStore(try LocalChunkStore(root: root + "/store"))
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func makeCache(capacity: Int = 64 << 20, over store: (any ChunkStore)? = nil) throws -> CachedChunkStore {
        try CachedChunkStore(directory: cacheDirectory, capacityBytes: capacity, backing: store ?? backing)
    }

    /// Objects written straight to the backing store, so the cache has not seen them.
    func stored(_ count: Int, size: Int = 100_000) throws -> [ObjectID] {
        try (0..<count).map { index in
            let id = ObjectID.random()
            try backing.inner.put(id, bytes(size, seed: UInt8(index)))
            return id
        }
    }

    /// A cache over a store that holds back the second half of each read until released,
    /// and an object of `size` bytes in that store.
    func tricklingObject(_ size: Int, seed: UInt8) throws -> (TricklingStore, CachedChunkStore, ObjectID, [UInt8]) {
        let trickling = TricklingStore(backing.inner)
        let id = ObjectID.random()
        try backing.inner.put(id, bytes(size, seed: seed))
        return (trickling, try makeCache(over: trickling), id, bytes(size, seed: seed))
    }

    func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    @Test func secondReadMakesNoBackingRequest() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: 0))
        let afterFirst = backing.backendCalls
        #expect(afterFirst > 0)
        #expect(try cache.read(id, offset: 500, count: 1000) == Array(bytes(100_000, seed: 0)[500..<1500]))
        #expect(backing.backendCalls == afterFirst)
        let statistics = cache.statistics
        #expect(statistics.hits == 1 && statistics.misses == 1)
        #expect(statistics.bytesFetched == 100_000 && statistics.bytesCached == 100_000 && statistics.objectsCached == 1)
    }

    /// A reader right behind a prefetch copies the object from the download's buffer
    /// instead of reading back the file just written; once it has read it whole, or the
    /// object is discarded, the buffer goes back.
    @Test func aJustFetchedObjectIsReadFromMemoryOnce() throws {
        let cache = try makeCache()
        let ids = try stored(2)
        let id = ids[0]
        cache.prefetch(id)
        #expect(cache.settle(timeout: 30))
        #expect(cache.landed.withLock { $0.pieces[id] != nil })
        // Emptied behind the cache's back, the file could not give these bytes.
        #expect(truncate(cache.path(of: id), 0) == 0)
        let calls = backing.backendCalls
        #expect(try cache.read(id, offset: 0, count: 60_000) == Array(bytes(100_000, seed: 0)[0..<60_000]))
        #expect(cache.landed.withLock { $0.pieces[id] != nil })
        #expect(try cache.read(id, offset: 60_000, count: 50_000) == Array(bytes(100_000, seed: 0)[60_000...]))
        #expect(backing.backendCalls == calls)
        #expect(cache.landed.withLock { $0.pieces[id] == nil })
        // From here the file answers: found short, it is fetched again.
        #expect(try cache.read(id, offset: 0, count: 10) == Array(bytes(100_000, seed: 0)[0..<10]))
        #expect(backing.backendCalls > calls)

        cache.prefetch(ids[1])
        #expect(cache.settle(timeout: 30))
        #expect(cache.landed.withLock { $0.pieces[ids[1]] != nil })
        cache.discard(ids[1])
        #expect(cache.landed.withLock { $0.pieces[ids[1]] == nil && !$0.order.contains(ids[1]) })
        // What a reader takes while the download lands counts too.
        let id2 = try stored(1, size: 1000)[0]
        #expect(try cache.read(id2, count: 1000) == bytes(1000, seed: 0))
        #expect(cache.settle(timeout: 30))
        #expect(cache.landed.withLock { $0.pieces[id2] == nil })
    }

    /// Reads of a landed download overlap (each is widened to whole checksum blocks, and
    /// the kernel may ask again): the buffer stays until every byte has been read, not
    /// until as many bytes as the object has were lent, which sent the last bytes of such
    /// an object to the store a second time.
    @Test func aLandedDownloadStaysUntilEveryByteIsReadThoughReadsOverlap() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        let whole = bytes(100_000, seed: 0)
        cache.prefetch(id, writingLater: true)
        #expect(settled(cache))
        var lent: [UInt8] = []
        for range in [0..<65_536, 0..<65_536, 32_768..<65_536] {
            #expect(cache.withBytesInMemory(id, offset: range.lowerBound, count: range.count) { lent = Array($0) } == range.count)
            let right = lent == Array(whole[range])
            #expect(right, "the bytes of \(range)")
        }
        #expect(cache.landed.withLock { $0.pieces[id] != nil }, "bytes 65536 on are still to be read")
        #expect(cache.withBytesInMemory(id, offset: 65_536, count: 65_536) { lent = Array($0) } == 100_000 - 65_536)
        let right = lent == Array(whole[65_536...])
        #expect(right, "the last bytes")
        #expect(cache.landed.withLock { $0.pieces[id] == nil }, "read whole, it goes")
        #expect(backing.reads.load(ordering: .relaxed) == 1)
    }

    @Test func readCoverageCountsEachByteOnce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var coverage = ReadCoverage()
            var model = [Bool](repeating: false, count: 300)
            for _ in 0..<Int.random(in: 1...12, using: &generator) {
                let start = Int.random(in: 0..<300, using: &generator)
                let end = Int.random(in: start...300, using: &generator)
                coverage.insert(contentsOf: start..<end)
                for i in start..<end { model[i] = true }
                #expect(coverage.bytes == model.filter { $0 }.count)
                let ranges = coverage.ranges
                #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound < $1.lowerBound }, "disjoint, in order: \(ranges)")
                #expect(ranges.allSatisfy { range in range.allSatisfy { model[$0] } })
            }
        }
    }

    /// A prefetch of an object already cached reads it into memory, where a sequential
    /// reader is lent it as from a download: the cached copy is read past the page cache,
    /// so the kernel reads nothing ahead of that reader.
    @Test func aPrefetchOfACachedObjectReadsItIntoMemory() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        let whole = bytes(100_000, seed: 0)
        #expect(try cache.read(id, count: 100_000) == whole)
        #expect(cache.landed.withLock { $0.pieces[id] == nil }, "read whole, the download's buffer went back")
        let file = try #require(cache.openCached(id))
        guard file.isDirect else { return }  // a filesystem without O_DIRECT: the kernel reads ahead
        let calls = backing.backendCalls
        cache.prefetch(id)
        #expect(cache.settle(timeout: 30))
        #expect(cache.landed.withLock { $0.pieces[id] != nil })
        // Emptied behind the cache's back, the file could not give these bytes.
        #expect(truncate(cache.path(of: id), 0) == 0)
        var lent: [UInt8] = []
        #expect(cache.withBytesInMemory(id, offset: 0, count: 100_000) { lent = Array($0) } == 100_000)
        #expect(lent == whole)
        #expect(backing.backendCalls == calls)
        #expect(cache.landed.withLock { $0.pieces[id] == nil }, "lent whole, it goes back")
    }

    /// A reader may be handed the bytes where a download put them instead of a copy:
    /// from a landed download until it has been read whole, and from one still landing
    /// as its bytes arrive; the buffer is not reused while a reader holds it.
    @Test func downloadedBytesAreLentInPlaceUntilReadWhole() throws {
        let cache = try makeCache()
        let whole = bytes(100_000, seed: 0)
        let id = try stored(1)[0]
        func lent(_ offset: Int, _ count: Int) -> [UInt8]? {
            var seen: [UInt8]?
            let count = cache.withBytesInMemory(id, offset: offset, count: count) { seen = Array($0) }
            if let seen {
                #expect(count == seen.count, "the count returned is what the body saw")
            } else {
                #expect(count == nil || count == 0, "a count returned without the bytes")
            }
            return count == 0 ? [] : seen
        }
        // Neither landed nor landing: nothing is lent, and nothing is fetched for it.
        #expect(lent(0, 10) == nil)
        #expect(backing.backendCalls == 0)
        cache.prefetch(id)
        #expect(cache.settle(timeout: 30))
        #expect(truncate(cache.path(of: id), 0) == 0)
        let calls = backing.backendCalls
        let hits = cache.statistics.hits
        #expect(lent(4096, 50_000) == Array(whole[4096..<54_096]))
        #expect(lent(99_990, 100) == Array(whole[99_990...]))
        #expect(lent(100_000, 10) == [])
        #expect(cache.landed.withLock { $0.pieces[id] != nil })
        #expect(lent(0, 4096) == Array(whole[0..<4096]))
        #expect(lent(54_096, 45_894) == Array(whole[54_096..<99_990]))
        // Read whole: the buffer went back, and the (emptied) file is what is left.
        #expect(cache.landed.withLock { $0.pieces[id] == nil })
        #expect(lent(0, 10) == nil)
        #expect(backing.backendCalls == calls)
        #expect(cache.statistics.hits == hits + 5)

        // A reader holding the bytes keeps the buffer from going back (here, a discard).
        let other = try stored(1, size: 300_000)[0]
        let expected = bytes(300_000, seed: 0)
        cache.prefetch(other)
        #expect(cache.settle(timeout: 30))
        let holding = DispatchSemaphore(value: 0)
        let letGo = DispatchSemaphore(value: 0)
        let discarded = DispatchSemaphore(value: 0)
        let sawRight = Mutex<Bool?>(nil)
        Thread.detachNewThread {
            _ = cache.withBytesInMemory(other, offset: 0, count: 300_000) { bytes in
                holding.signal()
                letGo.wait()
                sawRight.withLock { $0 = Array(bytes) == expected }
            }
        }
        #expect(holding.wait(timeout: .now() + 20) == .success)
        Thread.detachNewThread {
            cache.discard(other)
            discarded.signal()
        }
        #expect(discarded.wait(timeout: .now() + 0.3) == .timedOut, "the buffer went back while a reader held it")
        // Buffers given back are reused first: a download now would overwrite the held bytes.
        letGo.signal()
        #expect(discarded.wait(timeout: .now() + 20) == .success)
        #expect(sawRight.withLock { $0 } == true)
        #expect(cache.withBytesInMemory(other, offset: 0, count: 10) { _ in Issue.record("a discarded object was lent") } == nil)
    }

    @Test func bytesStillLandingAreLentAsTheyArrive() throws {
        let size = 1 << 20
        let (trickling, cache, id, whole) = try tricklingObject(size, seed: 9)
        // A reader starts the download, and is answered from its first half.
        #expect(try cache.readNow(id, offset: 0, count: 100) == Array(whole[0..<100]))
        var early: [UInt8]?
        #expect(cache.withBytesInMemory(id, offset: 8192, count: 8192) { early = Array($0) } == 8192)
        #expect(early == Array(whole[8192..<16_384]))
        let late = Mutex<[UInt8]?>(nil)
        let lateDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var seen: [UInt8]?
            _ = cache.withBytesInMemory(id, offset: size - 4096, count: 8192) { seen = Array($0) }
            late.withLock { $0 = seen }
            lateDone.signal()
        }
        #expect(lateDone.wait(timeout: .now() + 0.3) == .timedOut, "bytes not landed yet were lent")
        trickling.release.signal()
        #expect(lateDone.wait(timeout: .now() + 20) == .success)
        #expect(late.withLock { $0 } == Array(whole[(size - 4096)...]))
        #expect(cache.settle(timeout: 20))
        #expect(trickling.reads.load(ordering: .relaxed) == 1)
    }

    @Test func uploadsEnterTheWritersCache() throws {
        let cache = try makeCache()
        let id = ObjectID.random()
        try cache.put(id, bytes(5000))
        #expect(backing.puts.load(ordering: .relaxed) == 1)
        #expect(try backing.inner.read(id, count: 5000) == bytes(5000))  // durable in the backing store
        #expect(try cache.read(id, count: 5000) == bytes(5000))
        #expect(backing.backendCalls == 0)
    }

    @Test func evictionKeepsTheCacheUnderCapacityAndDropsTheLeastRecentlyUsed() throws {
        let cache = try makeCache(capacity: 300_000)
        let ids = try stored(4)
        for id in ids[0..<3] { _ = try cache.read(id, count: 10) }
        _ = try cache.read(ids[0], count: 10)  // now ids[1] is the least recently used
        _ = try cache.read(ids[3], count: 10)
        let statistics = cache.statistics
        #expect(statistics.bytesCached <= 300_000)
        #expect(statistics.evictions == 1)
        #expect(!FileManager.default.fileExists(atPath: cache.path(of: ids[1])))
        for id in [ids[0], ids[2], ids[3]] { #expect(FileManager.default.fileExists(atPath: cache.path(of: id))) }
        // An evicted object is simply fetched again.
        #expect(try cache.read(ids[1], count: 100_000) == bytes(100_000, seed: 1))
        #expect(cache.statistics.bytesCached <= 300_000)
    }

    @Test func aDamagedFileIsDroppedByDiscardAndFetchedAgain() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        _ = try cache.read(id, count: 100_000)
        #expect(cache.settle(timeout: 30))
        let fd = open(cache.path(of: id), O_WRONLY)
        #expect(fd >= 0)
        var garbage: UInt8 = 0xff
        #expect(pwrite(fd, &garbage, 1, 5) == 1)
        close(fd)
        #expect(try cache.read(id, count: 10) != Array(bytes(10, seed: 0)))  // the cache trusts its files...
        cache.discard(id)  // ...until the layer above finds a checksum mismatch
        let before = backing.reads.load(ordering: .relaxed)
        #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: 0))
        #expect(backing.reads.load(ordering: .relaxed) > before)
    }

    @Test(arguments: [false, true])
    func aTruncatedFileIsDetectedAndFetchedAgain(reopen: Bool) throws {
        var cache = try makeCache()
        let id = try stored(1)[0]
        _ = try cache.read(id, count: 10)
        #expect(truncate(cache.path(of: id), 40_000) == 0)
        if reopen { cache = try makeCache() }  // the new instance has not seen the object's size
        #expect(try cache.read(id, offset: 30_000, count: 70_000) == Array(bytes(100_000, seed: 0)[30_000...]))
        #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: 0))
        #expect(mode(cache.path(of: id)) != 0)
    }

    @Test func filesAre0600AndDirectories0700WhateverTheUmask() throws {
        let previous = umask(0)
        defer { umask(previous) }
        let cache = try makeCache()
        let id = try stored(1)[0]
        _ = try cache.read(id, count: 10)
        let written = ObjectID.random()
        try cache.put(written, bytes(10))
        #expect(mode(cacheDirectory) == 0o700)
        #expect(mode(cacheDirectory + "/tmp") == 0o700)
        #expect(mode(cacheDirectory + "/" + id.description.suffix(2)) == 0o700)
        #expect(mode(cache.path(of: id)) == 0o600)
        #expect(mode(cache.path(of: written)) == 0o600)
    }

    @Test func everySubdirectoryIsMadeAtOpenAndOneRemovedLaterIsMadeAgain() throws {
        let cache = try makeCache()
        let names = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory).filter { $0 != "tmp" }
        #expect(Set(names) == Set((0..<256).map { String(format: "%02x", $0) }))
        #expect(names.allSatisfy { mode(cacheDirectory + "/" + $0) == 0o700 })
        let id = try stored(1)[0]
        let subdirectory = cache.subdirectory(of: id)
        #expect(rmdir(subdirectory) == 0)
        #expect(try cache.read(id, count: 10) == Array(bytes(100_000, seed: 0)[0..<10]))
        #expect(cache.settle(timeout: 10))
        #expect(mode(subdirectory) == 0o700)
        #expect(FileManager.default.fileExists(atPath: cache.path(of: id)))
    }

    @Test func theCacheSurvivesReopening() throws {
        let ids = try stored(3)
        do {
            let cache = try makeCache()
            for id in ids { _ = try cache.read(id, count: 10) }
        }
        let calls = backing.backendCalls
        let reopened = try makeCache()
        #expect(reopened.statistics.objectsCached == 3)
        #expect(reopened.statistics.bytesCached == 300_000)
        for (index, id) in ids.enumerated() {
            #expect(try reopened.read(id, offset: 99_990, count: 10) == Array(bytes(100_000, seed: UInt8(index))[99_990...]))
        }
        #expect(backing.backendCalls == calls)
    }

    @Test func reopeningEvictsDownToASmallerCapacityOldestFirst() throws {
        let ids = try stored(3)
        do {
            let cache = try makeCache()
            for id in ids {
                _ = try cache.read(id, count: 10)
                // mtimes order the cache after a restart; make them distinct.
                var times = [timespec(tv_sec: time(nil) - 100 + Int(ids.firstIndex(of: id) ?? 0), tv_nsec: 0),
                             timespec(tv_sec: time(nil) - 100 + Int(ids.firstIndex(of: id) ?? 0), tv_nsec: 0)]
                #expect(utimensat(AT_FDCWD, cache.path(of: id), &times, 0) == 0)
            }
        }
        let smaller = try makeCache(capacity: 200_000)
        #expect(smaller.statistics.bytesCached == 200_000)
        #expect(!FileManager.default.fileExists(atPath: smaller.path(of: ids[0])))
        #expect(FileManager.default.fileExists(atPath: smaller.path(of: ids[2])))
    }

    @Test func twoInstancesShareOneDirectory() throws {
        let first = try makeCache()
        let second = try makeCache()
        let ids = try stored(8)
        _ = try first.read(ids[0], count: 10)
        let calls = backing.backendCalls
        #expect(try second.read(ids[0], count: 100_000) == bytes(100_000, seed: 0))
        #expect(backing.backendCalls == calls)  // found the file the first one fetched
        second.discard(ids[0])
        #expect(try first.read(ids[0], count: 100_000) == bytes(100_000, seed: 0))  // its descriptor still reads

        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 32) { index in
            let cache = index % 2 == 0 ? first : second
            let object = index % ids.count
            do {
                if try cache.read(ids[object], count: 100_000) != bytes(100_000, seed: UInt8(object)) {
                    failures.withLock { $0.append("object \(object) read wrong") }
                }
            } catch {
                failures.withLock { $0.append("object \(object): \(error)") }
            }
        }
        #expect(failures.withLock { $0 } == [])
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory + "/tmp")
        #expect(leftovers == [])
    }

    @Test func aRescanLearnsWhatAnotherInstanceAddedAndRemoved() throws {
        let first = try makeCache()
        let second = try makeCache()
        let ids = try stored(3)
        for id in ids {
            _ = try second.read(id, count: 10)
            var times = [timespec(tv_sec: time(nil) - 10, tv_nsec: 0), timespec(tv_sec: time(nil) - 10, tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, second.path(of: id), &times, 0) == 0)
        }
        #expect(first.statistics.objectsCached == 0)
        first.learn(scanning: false)
        #expect(first.statistics.objectsCached == 3 && first.statistics.bytesCached == 300_000)
        second.discard(ids[0])
        first.learn(scanning: false)
        #expect(first.statistics.objectsCached == 2)
    }

    @Test func concurrentReadsOfAMissingObjectFetchItOnce() throws {
        let slow = CountingStore(backing.inner, sizeDelay: .milliseconds(300))
        let cache = try makeCache(over: slow)
        let id = try stored(1)[0]
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            if (try? cache.read(id, count: 100_000)) != bytes(100_000, seed: 0) {
                failures.withLock { $0.append("a read failed") }
            }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(slow.sizes.load(ordering: .relaxed) == 1)
        #expect(slow.reads.load(ordering: .relaxed) == 1)
    }

    @Test func aReaderGetsItsBytesAsTheyLandNotWhenTheWholeObjectHas() throws {
        let size = 1 << 20
        let (trickling, cache, id, whole) = try tricklingObject(size, seed: 7)
        // The store has given the first half and holds the rest back until released.
        let early = DispatchSemaphore(value: 0)
        let late = DispatchSemaphore(value: 0)
        let got = Mutex<(early: [UInt8], late: [UInt8])>(([], []))
        Thread.detachNewThread {
            let bytes = (try? cache.readNow(id, offset: 1000, count: 4096)) ?? []
            got.withLock { $0.early = bytes }
            early.signal()
        }
        Thread.detachNewThread {
            let bytes = (try? cache.readNow(id, offset: size - 100, count: 4096)) ?? []
            got.withLock { $0.late = bytes }
            late.signal()
        }
        #expect(early.wait(timeout: .now() + 20) == .success, "a read of landed bytes waited for the rest")
        #expect(got.withLock { $0.early == Array(whole[1000..<5096]) })
        #expect(late.wait(timeout: .now() + 0.3) == .timedOut, "a read of bytes not yet landed returned")
        // The download is still under way: waiting for it times out, for another object not.
        #expect(!cache.settle([id], timeout: 0.2))
        #expect(cache.settle([ObjectID.random()], timeout: 0.2))
        trickling.release.signal()
        #expect(late.wait(timeout: .now() + 20) == .success)
        #expect(got.withLock { $0.late == Array(whole[(size - 100)...]) })
        // One download for both, and the object ends up cached whole.
        #expect(trickling.reads.load(ordering: .relaxed) == 1)
        #expect(cache.settle(timeout: 20))
        #expect(cache.isCached(id))
        let cachedRight = try cache.read(id, count: size) == whole
        #expect(cachedRight, "the cached copy")
        #expect(trickling.reads.load(ordering: .relaxed) == 1)
    }

    @Test func prefetchFetchesInTheBackground() throws {
        let cache = try makeCache()
        let ids = try stored(6)
        for id in ids + ids { cache.prefetch(id) }  // duplicates are ignored
        let deadline = Date().addingTimeInterval(10)
        while cache.statistics.objectsCached < ids.count && Date() < deadline { usleep(10_000) }
        #expect(cache.statistics.objectsCached == ids.count)
        #expect(backing.reads.load(ordering: .relaxed) == ids.count)
        let calls = backing.backendCalls
        for (index, id) in ids.enumerated() { #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: UInt8(index))) }
        #expect(backing.backendCalls == calls)
        #expect(cache.statistics.hits == ids.count)
    }

    /// Waits until no download is under way, at most ten seconds.
    func settled(_ cache: CachedChunkStore) -> Bool { cache.settle(timeout: 10) }

    @Test func aStreamingPrefetchLeavesItsCopyForLater() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        let whole = bytes(100_000, seed: 0)
        cache.prefetch(id, writingLater: true)
        #expect(settled(cache))
        #expect(!cache.isCached(id))
        #expect(cache.unwrittenObjects.map(\.id) == [id] && cache.unwrittenObjects.map(\.size) == [100_000])
        // The reader takes it from memory: no second download.
        #expect(try cache.read(id, count: 100_000) == whole)
        #expect(backing.reads.load(ordering: .relaxed) == 1)
        // Read whole, it is no longer in memory: only the caller's bytes can write it.
        #expect(!cache.keep(unwritten: id, nil))
        #expect(cache.unwrittenObjects.map(\.id) == [id])
        let wrong = [UInt8](repeating: 1, count: 99_999)
        #expect(!wrong.withUnsafeBytes { cache.keep(unwritten: id, $0) }, "bytes of another length")
        #expect(cache.unwrittenObjects.isEmpty && !cache.isCached(id))
        cache.prefetch(id, writingLater: true)
        #expect(settled(cache))
        #expect(try cache.read(id, count: 100_000) == whole)
        #expect(whole.withUnsafeBytes { cache.keep(unwritten: id, $0) })
        #expect(cache.isCached(id) && cache.unwrittenObjects.isEmpty)
        let calls = backing.backendCalls
        #expect(try cache.read(id, count: 100_000) == whole)
        #expect(backing.backendCalls == calls)
    }

    @Test func aStreamingWritesCopyIsLeftForLater() throws {
        let cache = try makeCache()
        let now = ObjectID.random(), later = ObjectID.random()
        let written = bytes(100_000, seed: 3)
        try written.withUnsafeBytes { try cache.put(now, $0, writingLater: false) }
        try written.withUnsafeBytes { try cache.put(later, $0, writingLater: true) }
        // Both are in the store; only the first is in the cache.
        for id in [now, later] { #expect(try backing.inner.size(of: id) == 100_000) }
        #expect(cache.isCached(now) && !cache.isCached(later))
        #expect(cache.unwrittenObjects.map(\.id) == [later] && cache.unwrittenObjects.map(\.size) == [100_000])
        // Nothing of it is held in memory: only the caller's bytes can write it.
        #expect(!cache.keep(unwritten: later, nil))
        #expect(written.withUnsafeBytes { cache.keep(unwritten: later, $0) })
        #expect(cache.isCached(later) && cache.unwrittenObjects.isEmpty && cache.statistics.writtenLater == 1)
        let calls = backing.backendCalls
        #expect(try cache.read(later, count: 100_000) == written)
        #expect(backing.backendCalls == calls)
        // A copy never written is fetched by the next read.
        let dropped = ObjectID.random()
        try written.withUnsafeBytes { try cache.put(dropped, $0, writingLater: true) }
        cache.forget(unwritten: dropped)
        #expect(try cache.read(dropped, count: 100_000) == written)
        #expect(backing.reads.load(ordering: .relaxed) > 0)
    }

    @Test func anObjectFetchedOnlyToBeCachedIsNotKeptInMemory() throws {
        let cache = try makeCache()
        let ids = try stored(2)
        cache.prefetch(ids[0])
        cache.cache(ids[1])
        #expect(settled(cache))
        for id in ids { #expect(cache.isCached(id)) }
        // The prefetch waits in memory for its reader; the other does not.
        #expect(cache.landed.withLock { $0.pieces[ids[0]] != nil })
        #expect(cache.landed.withLock { $0.pieces[ids[1]] == nil })
        #expect(cache.cachingOnly.withLock { $0.isEmpty })
        #expect(try cache.read(ids[1], count: 100_000) == bytes(100_000, seed: 1))
        #expect(backing.reads.load(ordering: .relaxed) == 2)
        #expect(cache.statistics.fetchedAgain == 1, "the download made only to cache")
        // Cached already: asked again, nothing is fetched or read into memory.
        cache.cache(ids[1])
        #expect(settled(cache))
        #expect(backing.reads.load(ordering: .relaxed) == 2)
        #expect(cache.statistics.fetchedAgain == 1)
        #expect(cache.landed.withLock { $0.pieces[ids[1]] == nil })
    }

    /// A reader's prefetch under way keeps its landing when the same object is then
    /// asked for only to be cached.
    @Test func aReadersPrefetchStillLandsWhenTheObjectIsAlsoAskedToBeCached() throws {
        let slow = CountingStore(backing.inner, sizeDelay: .milliseconds(300))
        let cache = try makeCache(over: slow)
        let id = try stored(1)[0]
        cache.prefetch(id)
        cache.cache(id)
        #expect(settled(cache))
        #expect(cache.isCached(id))
        #expect(cache.landed.withLock { $0.pieces[id] != nil }, "landed for the reader that asked first")
        #expect(cache.cachingOnly.withLock { $0.isEmpty })
        #expect(slow.reads.load(ordering: .relaxed) == 1)
    }

    @Test func anUnwrittenObjectNotReadWholeIsWrittenFromMemory() throws {
        let cache = try makeCache()
        let id = try stored(1)[0]
        cache.prefetch(id, writingLater: true)
        #expect(settled(cache))
        #expect(try cache.read(id, offset: 0, count: 1000) == Array(bytes(100_000, seed: 0)[0..<1000]))
        #expect(cache.keep(unwritten: id, nil))
        #expect(cache.isCached(id) && cache.unwrittenObjects.isEmpty)
        #expect(try Array(FileManager.default.contents(atPath: cache.path(of: id)) ?? Data()) == bytes(100_000, seed: 0))
    }

    @Test func anUnwrittenObjectPushedOutOfMemoryUnreadIsWritten() throws {
        let cache = try makeCache()
        let ids = try stored(CachedChunkStore.landedLimit + 4)
        for id in ids {
            cache.prefetch(id, writingLater: true)
            #expect(settled(cache))
        }
        // The four oldest were pushed out before anyone read them: written then.
        for id in ids.prefix(4) { #expect(cache.isCached(id)) }
        for id in ids.dropFirst(4) { #expect(!cache.isCached(id)) }
        #expect(cache.unwrittenObjects.map(\.id) == Array(ids.dropFirst(4)))
        let calls = backing.backendCalls
        for (index, id) in ids.enumerated() { #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: UInt8(index))) }
        #expect(backing.backendCalls == calls)
    }

    @Test func prefetchNeverBlocksAndItsQueueIsBounded() throws {
        let slow = CountingStore(backing.inner, sizeDelay: .milliseconds(100))
        let cache = try makeCache(over: slow)
        let start = ContinuousClock.now
        for _ in 0..<2000 { cache.prefetch(ObjectID.random()) }  // none of them exists
        #expect(ContinuousClock.now - start < .seconds(2))
        let queued = cache.prefetches.withLock { ($0.waiting.count, $0.workers) }
        #expect(queued.0 <= CachedChunkStore.prefetchQueueLimit)
        #expect(queued.1 <= CachedChunkStore.prefetchConcurrency)
    }

    @Test func aFullFilesystemIsNotFilledFurther() throws {
        // A bound of 0% stands for a filesystem already past its bound.
        let cache = try CachedChunkStore(directory: cacheDirectory, capacityBytes: 64 << 20, backing: backing, maxFilesystemUse: 0)
        let id = try stored(1)[0]
        #expect(try cache.read(id, count: 100_000) == bytes(100_000, seed: 0))
        #expect(cache.statistics.objectsCached == 0)
        #expect(!FileManager.default.fileExists(atPath: cache.path(of: id)))
    }

    @Test func deleteRemovesTheObjectAndItsCachedCopy() throws {
        let cache = try makeCache()
        let id = ObjectID.random()
        try cache.put(id, bytes(10))
        try cache.delete(id)
        #expect(!FileManager.default.fileExists(atPath: cache.path(of: id)))
        #expect(throws: StoreError.notFound(id)) { try cache.read(id, count: 10) }
    }

    /// Cached files go around the page cache where the filesystem allows it, which needs
    /// whole blocks: tails, unaligned offsets and unaligned buffers must still give back
    /// exactly the object's bytes, and the file exactly the object's length.
    @Test func objectsOfAnyLengthReadBackExactlyAtAnyOffset() throws {
        let cache = try makeCache(capacity: 256 << 20)
        let sizes = [1, 4095, 4096, 4097, 100_000, CachedChunkStore.fetchPiece + 12_345]
        var objects: [(ObjectID, [UInt8])] = []
        for (index, size) in sizes.enumerated() {
            let fetched = ObjectID.random(), uploaded = ObjectID.random()
            let content = bytes(size, seed: UInt8(index))
            try backing.inner.put(fetched, content)
            try cache.put(uploaded, content)
            objects += [(fetched, content), (uploaded, content)]
        }
        let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * DirectIO.alignment, alignment: DirectIO.alignment)
        defer { aligned.deallocate() }
        for (id, content) in objects {
            #expect(try cache.read(id, count: content.count + 10) == content)
            var info = stat()
            #expect(stat(cache.path(of: id), &info) == 0 && Int(info.st_size) == content.count)
            for offset in [0, 1, 4095, 4096, 8192, content.count - 1, content.count] where offset >= 0 && offset <= content.count {
                for count in [1, 100, 4096, 3 * 4096] {
                    let want = Array(content[offset..<min(content.count, offset + count)])
                    #expect(try cache.read(id, offset: offset, count: count) == want)
                    let got = try cache.read(id, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: aligned[0..<count]))
                    #expect(Array(aligned[0..<got]) == want)
                }
            }
        }
    }

    /// A writer's full chunks come in page-aligned buffers and are cached as they are.
    @Test func alignedUploadsAreCachedWhole() throws {
        let cache = try makeCache(capacity: 64 << 20)
        for size in [DirectIO.alignment, 2 * DirectIO.alignment, 4 << 20] {
            let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: DirectIO.alignment)
            defer { aligned.deallocate() }
            let content = bytes(size, seed: UInt8(size % 251))
            aligned.copyBytes(from: content)
            let id = ObjectID.random()
            try cache.put(id, UnsafeRawBufferPointer(aligned))
            var info = stat()
            #expect(stat(cache.path(of: id), &info) == 0 && Int(info.st_size) == size)
            #expect(try cache.read(id, count: size + 10) == content)
            #expect(try backing.inner.read(id, count: size + 10) == content)
        }
        #expect(backing.backendCalls == 0)
    }

    /// A descriptor whose writes cannot go direct (an unaligned buffer here; a
    /// filesystem that refuses O_DIRECT elsewhere) goes on with ordinary I/O.
    @Test func aDirectDescriptorFallsBackToOrdinaryIO() throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let path = root + "/fallback"
        let file = OpenObject(fd: DirectIO.open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600))
        #expect(file.fd >= 0)
        let content = bytes(10_000, seed: 3)
        let unaligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 20_000, alignment: DirectIO.alignment)
        defer { unaligned.deallocate() }
        let start = UnsafeMutableRawBufferPointer(rebasing: unaligned[1..<10_001])
        start.copyBytes(from: content)
        #expect(file.write(UnsafeRawBufferPointer(start), at: 0, room: start.count))
        #expect(!file.isDirect)
        #expect(file.currentSize == content.count)
        var back = [UInt8](repeating: 0, count: content.count)
        let got = back.withUnsafeMutableBytes { file.read(at: 0, into: $0) }
        #expect(got == content.count && back == content)
    }
}
