import ChunkStore
import LocalChunkStore
import Foundation
import GRDB
import Metadata
import SQLiteMetadata
import Synchronization
import Testing
@testable import VolumeFS

/// What a thread of a test saw, for the test to look at once it is done.
final class SizesSeen: Sendable {
    let sizes = Mutex<[UInt64]>([])
    let opened = Mutex<(handle: FileHandleID, keepsCache: Bool)?>(nil)
}

/// A clock the test moves by hand, standing in for the database's clock.
final class TestClock: Sendable {
    let time = Mutex(Timestamp(seconds: 1_800_000_000, nanoseconds: 0))
    var now: Timestamp { time.withLock { $0 } }
    func advance(seconds: Double) { time.withLock { $0.nanoseconds += Int64(seconds * 1e9) } }
}

/// Several mounts of one volume, each with its own metadata connection, sharing a clock.
final class SharedVolume {
    let directory = temporaryDirectory()
    let clock = TestClock()
    let storage: TestStorage
    let store: CountingStore

    init(_ backend: TestBackend, chunkSize: Int = 16 * 1024) throws {
        storage = try TestStorage.make(backend, chunkSize: chunkSize, sizeLimit: 1 << 30, directory: directory)
        store = CountingStore(storage.store)
    }

    deinit { storage.remove() }

    /// A writer "a" makes ten files in a directory (file i holds 100 + i bytes of i) and
    /// gives the lease back; a reader "r" then registers and reads the change feed.
    func quietReaderOfTenFiles() throws -> (dir: Attr, files: [InodeNumber], reader: VolumeFS) {
        let a = try mount("a", idle: 0)
        let d = try a.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        var files: [InodeNumber] = []
        for i in 0..<10 {
            let (attr, fh) = try a.create(d.ino, FileName("f\(i)"), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
            _ = try [UInt8](repeating: UInt8(i), count: 100 + i).withUnsafeBytes { try a.write(attr.ino, fh, offset: 0, $0) }
            a.release(attr.ino, fh)
            files.append(attr.ino)
        }
        a.tick()
        #expect(!a.isWriter)

        let r = try mount("r")
        let session = Session(id: "r", host: "h", pid: 2, mountpoint: "/mnt", device: "0:50", mode: "on-demand",
                              startedAt: clock.now, heartbeatAt: clock.now)
        #expect(!r.isQuiet, "not before its session is registered and the feed read")
        try r.metadata.heartbeat(session, staleSeconds: 60)
        r.noteHeartbeat(sent: .now, staleSeconds: 60)
        r.followChanges()
        #expect(r.isQuiet)
        return (d, files, r)
    }

    func mount(_ name: String, mode: AccessMode = .onDemand, idle: Double = 30, deferring: Bool = false) throws -> VolumeFS {
        var options = VolumeOptions()
        options.deferCommitsWhileAlone = deferring
        options.mode = mode
        options.leaseTTLSeconds = 15
        options.leaseIdleSeconds = idle
        let clock = self.clock
        let metadata = try storage.reopen { clock.now }
        return try VolumeFS(metadata: metadata, store: store, options: options, holder: name)
    }
}

func writeFile(_ volume: VolumeFS, _ name: String, _ bytes: [UInt8]) throws -> InodeNumber {
    let (attr, fh) = try volume.create(.root, FileName(name), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
    _ = try bytes.withUnsafeBytes { try volume.write(attr.ino, fh, offset: 0, $0) }
    volume.release(attr.ino, fh)
    return attr.ino
}

func readFile(_ volume: VolumeFS, _ name: String) throws -> [UInt8] {
    let attr = try volume.lookup(.root, FileName(name))
    let fh = try volume.open(attr.ino, flags: O_RDONLY)
    defer { volume.release(attr.ino, fh) }
    return try volume.read(attr.ino, fh, offset: 0, count: Int(attr.size) + 1)
}

@Suite struct LeaseTests {
    @Test(arguments: TestBackend.available)
    func theFirstToWriteGetsTheLeaseAndTheOtherIsReadOnly(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let b = try shared.mount("b")
        _ = try writeFile(a, "f", [1, 2, 3])
        #expect(a.isWriter && !b.isWriter)
        #expect(throws: FSError.readOnly(holder: "a")) { try writeFile(b, "g", [4]) }
        #expect(throws: FSError.readOnly(holder: "a")) { try b.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0) }
        #expect(FSError.readOnly(holder: "a").errno == EROFS)
        // Reads work on the other mount and show the writer's committed data.
        #expect(try readFile(b, "f") == [1, 2, 3])
        #expect(try b.currentLease().holder == "a")
    }

    @Test(arguments: TestBackend.available)
    func openingForWritingIsRefusedWhileAnotherHoldsTheLeaseAndTakesNoLease(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", idle: 0)
        let b = try shared.mount("b", idle: 0)
        let ino = try writeFile(a, "f", [1, 2, 3])
        for flags in [O_WRONLY, O_RDWR, O_WRONLY | O_APPEND] {
            #expect(throws: FSError.readOnly(holder: "a")) { try b.open(ino, flags: flags) }
        }
        let reading = try b.open(ino, flags: O_RDONLY)
        b.release(ino, reading)
        a.tick()  // idle: a gives the lease back
        #expect(try a.currentLease().holder == nil)
        // Free: b may open for writing, and the lease waits for b's first change.
        let writing = try b.open(ino, flags: O_RDWR)
        #expect(try b.currentLease().holder == nil && !b.isWriter)
        _ = try [UInt8]([7]).withUnsafeBytes { try b.write(ino, writing, offset: 0, $0) }
        #expect(b.isWriter)
        b.release(ino, writing)
        #expect(try readFile(a, "f") == [7, 2, 3])
        let r = try shared.mount("r", mode: .readOnly)
        #expect(throws: FSError.readOnly(holder: nil)) { try r.open(ino, flags: O_WRONLY) }
    }

    @Test(arguments: TestBackend.available)
    func anIdleWriterGivesTheLeaseBack(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", idle: 0)
        let b = try shared.mount("b")
        _ = try writeFile(a, "f", [1])
        a.tick()
        #expect(!a.isWriter)
        #expect(try a.currentLease().isHeld == false)
        _ = try writeFile(b, "g", [2])
        #expect(b.isWriter)
        // A file open for writing keeps the lease however idle.
        let c = try shared.mount("c", idle: 0)
        _ = try shared.mount("x")
        b.releaseLease()
        let (attr, fh) = try c.create(.root, "h", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        c.tick()
        #expect(c.isWriter)
        c.release(attr.ino, fh)
        c.tick()
        #expect(!c.isWriter)
    }

    /// The writer answers a create at once and makes the file when it commits it: other
    /// mounts find it once it is closed (or fsynced), with its data, and not before; and
    /// anything else that reaches the metadata makes it first.
    @Test(arguments: TestBackend.available)
    func aCreatedFileIsMadeInTheVolumeAtItsClose(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let other = try shared.storage.reopen(nil)
        // A new directory's names are known: creates in it need not ask whether the name is free.
        let d = try a.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        let (f, fh) = try a.create(d.ino, "f", mode: 0o600, flags: O_RDWR, uid: 5, gid: 6)
        #expect(a.cache.state.withLock { $0.unmade[f.ino] != nil }, "answered without a transaction")
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "f") }
        #expect(try a.lookup(d.ino, "f") == f)
        _ = try [UInt8]([1, 2, 3]).withUnsafeBytes { try a.write(f.ino, fh, offset: 0, $0) }
        try a.flush(f.ino, fh)
        let made = try other.lookup(d.ino, "f")
        #expect(made.ino == f.ino && made.size == 3 && made.mode == f.mode && made.uid == 5 && made.gid == 6)
        #expect(try other.getattr(d.ino).mtime == f.ctime)
        a.release(f.ino, fh)

        // Closed with nothing written, a file is made all the same.
        let (e, efh) = try a.create(d.ino, "empty", mode: 0o644, flags: O_WRONLY, uid: 0, gid: 0)
        a.release(e.ino, efh)
        #expect(try other.lookup(d.ino, "empty").ino == e.ino)

        // A rename (or any other change, or a read the cache cannot answer) makes the
        // files first: they are in the metadata when it runs.
        let (g, gfh) = try a.create(d.ino, "g", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        let (h, hfh) = try a.create(d.ino, "h", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        try a.rename(d.ino, "g", .root, "g2", flags: [])
        #expect(try other.lookup(.root, "g2").ino == g.ino)
        #expect(try other.lookup(d.ino, "h").ino == h.ino)
        #expect(a.cache.state.withLock { $0.unmade.isEmpty })
        a.release(g.ino, gfh)
        a.release(h.ino, hfh)

        // Kept open, a file is made by the writer's tick about a second after its creation.
        // As the kernel does before a create: the lookup that misses lists the directory again.
        #expect(throws: FSError.metadata(.notFound)) { try a.lookup(d.ino, "kept open") }
        let (kept, keptfh) = try a.create(d.ino, "kept open", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        #expect(a.cache.state.withLock { $0.unmade[kept.ino] != nil }, "answered without a transaction after a rename too")
        a.tick()
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "kept open") }
        Thread.sleep(forTimeInterval: 1.2)
        a.tick()
        #expect(try other.lookup(d.ino, "kept open").ino == kept.ino)
        a.release(kept.ino, keptfh)

        // Numbers are reserved in the metadata: another writer never gives them out again.
        let (k, kfh) = try a.create(d.ino, "k", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        a.release(k.ino, kfh)
        a.shutdown()
        let b = try shared.mount("b")
        let (m, mfh) = try b.create(.root, "m", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        b.release(m.ino, mfh)
        #expect(m.ino.rawValue > k.ino.rawValue && Set([f.ino, e.ino, g.ino, h.ino, k.ino]).count == 5)
    }

    /// The writer answers an unlink or an rmdir from its cache at once and applies it with
    /// the next change that reaches the metadata: a close, an fsync of the directory, any
    /// change it cannot answer so, or its tick about a second later. Until then other
    /// mounts still find the name; a crash brings it back.
    @Test(arguments: TestBackend.available)
    func removalsAreAnsweredAtOnceAndAppliedWithTheNextChange(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        var a: VolumeFS? = try shared.mount("a")
        let other = try shared.storage.reopen(nil)
        let d = try a!.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        var made: [String: InodeNumber] = [:]
        for name in ["x", "y", "z", "w"] {
            let (f, fh) = try a!.create(d.ino, FileName(name), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
            _ = try [UInt8](name.utf8).withUnsafeBytes { try a!.write(f.ino, fh, offset: 0, $0) }
            a!.release(f.ino, fh)
            made[name] = f.ino
        }
        let sub = try a!.mkdir(d.ino, "sub", mode: 0o755, uid: 0, gid: 0)
        try a!.syncMetadata()
        #expect(a!.cache.state.withLock { $0.queued.isEmpty })

        // Answered from memory: the name is gone here and still there for the others.
        try a!.unlink(d.ino, "x")
        #expect(a!.cache.state.withLock { $0.queued.count } == 1)
        #expect(throws: FSError.metadata(.notFound)) { try a!.lookup(d.ino, "x") }
        #expect(try other.lookup(d.ino, "x").ino == made["x"])
        #expect(try a!.getattr(made["x"]!).nlink == 0)
        // What the cache cannot answer goes to the metadata, after what is queued.
        #expect(throws: FSError.metadata(.notFound)) { try a!.unlink(d.ino, "x") }
        #expect(throws: FSError.metadata(.isDirectory)) { try a!.unlink(d.ino, "sub") }
        #expect(throws: FSError.metadata(.notEmpty)) { try a!.rmdir(.root, "d") }
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "x") }

        // A close carries the removals answered before it. (Refusals drop what the cache
        // kept; a lookup reads a directory's names again.)
        #expect(throws: FSError.metadata(.notFound)) { try a!.lookup(sub.ino, "nothing") }
        _ = try a!.lookup(.root, "d")
        _ = try a!.getattr(.root)
        try a!.unlink(d.ino, "y")
        try a!.rmdir(d.ino, "sub")
        #expect(a!.cache.state.withLock { $0.queued.count } == 2)
        #expect(try other.lookup(d.ino, "sub").isDirectory)
        let (v, vfh) = try a!.create(.root, "v", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try [UInt8]([7]).withUnsafeBytes { try a!.write(v.ino, vfh, offset: 0, $0) }
        #expect(a!.cache.state.withLock { $0.queued.count } == 3, "the create is answered at once too")
        a!.release(v.ino, vfh)
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "y") }
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "sub") }
        #expect(try other.getattr(d.ino).nlink == 2)

        // An fsync of the directory applies them; so does the tick, a second later.
        try a!.unlink(d.ino, "z")
        try a!.syncMetadata()
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "z") }
        try a!.unlink(d.ino, "w")
        a!.tick()
        #expect(try other.lookup(d.ino, "w").ino == made["w"])
        Thread.sleep(forTimeInterval: 1.2)
        a!.tick()
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "w") }
        try a!.rmdir(.root, "d")
        Thread.sleep(forTimeInterval: 1.2)
        a!.tick()
        #expect(throws: MetadataError.notFound) { try other.lookup(.root, "d") }

        // A crash forgets a removal not applied yet, as it forgets a create.
        try a!.unlink(.root, "v")
        #expect(throws: FSError.metadata(.notFound)) { try a!.lookup(.root, "v") }
        a = nil
        shared.clock.advance(seconds: 60)
        let b = try shared.mount("b")
        #expect(try readFile(b, "v") == [7])
    }

    /// Attributes read from the cache before a group commit, answered after it (a
    /// getattr, a lookup or a listing running beside the writer's turn), carry what the
    /// group committed, also once the group has let the file go: the kernel would take a
    /// size of 0 from them and read a just-written file as empty.
    @Test(arguments: TestBackend.available)
    func attributesReadBeforeAGroupCommitAreAnsweredWithWhatItCommitted(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", deferring: true)
        let f = try writeFile(a, "f", [1, 2, 3])
        let before = try a.metadata.getattr(f)
        #expect(before.size == 0, "the cache has the file as it was made, not committed yet")
        a.groupCommitTurn()
        #expect(a.openFiles.withLock { $0[f] == nil }, "the group let the file go")
        #expect(a.pending(before).size == 3)
        #expect(try a.getattr(f).size == 3)
    }

    /// A large file closed while the writer defers is kept for the group as a small one
    /// is: its close starts storing the chunk it buffers and returns, and the group
    /// commits it once the object is stored. A `cp -R` waited at such closes for the store.
    /// While the group waits for that store, a `stat` of a small file closed beside it
    /// answers at once.
    @Test func aLargeFileClosedWhileDeferringIsLeftToTheGroupWithoutWaitingForItsStore() throws {
        let shared = try SharedVolume(.embedded, chunkSize: 4 << 20)
        let a = try shared.mount("a", deferring: true)
        let small = try writeFile(a, "small", [1, 2, 3])
        let bytes = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let (attr, fh) = try a.create(.root, FileName("big"), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try bytes.withUnsafeBytes { try a.write(attr.ino, fh, offset: 0, $0) }
        let puts = shared.store.puts
        shared.store.held.withLock { $0 = true }
        let closed = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            a.release(attr.ino, fh)
            closed.signal()
        }
        guard closed.wait(timeout: .now() + 10) == .success else {
            shared.store.held.withLock { $0 = false }
            _ = closed.wait(timeout: .now() + 30)
            Issue.record("the close of 3 MiB waited for its store")
            return
        }
        #expect(a.deferred.withLock { $0.files[attr.ino] != nil && $0.files[small] != nil }, "both kept for the group")

        let grouped = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            a.groupCommitTurn()
            grouped.signal()
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while !a.deferred.withLock({ $0.files.isEmpty }) && ContinuousClock.now < deadline { usleep(1000) }
        // The group has taken its files, and has time to reach its wait for the store.
        usleep(200_000)
        let stated = DispatchSemaphore(value: 0)
        let seen = SizesSeen()
        Thread.detachNewThread {
            if let size = try? a.getattr(small).size { seen.sizes.withLock { $0.append(size) } }
            stated.signal()
        }
        let answered = stated.wait(timeout: .now() + 5) == .success
        shared.store.held.withLock { $0 = false }
        #expect(answered, "a stat of a small file of the group waited for the store of the large one")
        #expect(grouped.wait(timeout: .now() + 30) == .success)
        if !answered { _ = stated.wait(timeout: .now() + 30) }
        #expect(seen.sizes.withLock { $0 } == [3])
        #expect(shared.store.puts == puts + 1)
        #expect(a.deferred.withLock { $0.files.isEmpty })
        let b = try shared.mount("b")
        #expect(try readFile(b, "big") == bytes)
    }

    /// A group commit holds its files' locks through its transaction, which may wait (for
    /// the database's lock here, for the network elsewhere): a listing, a `stat` and an
    /// `open` of those files meanwhile answer at once, with the sizes written, and the
    /// open keeps the kernel's pages of what was written.
    @Test func aListingAStatAndAnOpenDoNotWaitForAGroupCommitsTransaction() throws {
        let shared = try SharedVolume(.embedded)
        let a = try shared.mount("a", deferring: true)
        let d = try a.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        var files: [InodeNumber] = []
        for i in 0..<50 {
            let (attr, fh) = try a.create(d.ino, FileName("f\(i)"), mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
            _ = try [UInt8](repeating: 2, count: 100 + i).withUnsafeBytes { try a.write(attr.ino, fh, offset: 0, $0) }
            a.release(attr.ino, fh)
            files.append(attr.ino)
        }
        #expect(a.deferred.withLock { $0.files.count } == 50, "the closes were kept for the group")
        var configuration = Configuration()
        configuration.allowsUnsafeTransactions = true
        let other = try DatabaseQueue(path: shared.directory + "/volume.db", configuration: configuration)
        try other.inDatabase { try $0.execute(sql: "BEGIN IMMEDIATE") }
        var locked = true
        defer { if locked { try? other.inDatabase { try $0.execute(sql: "COMMIT") } } }
        let committed = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            a.commitDeferred()
            committed.signal()
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while a.groupPending.withLock({ $0.count }) < 50 && ContinuousClock.now < deadline { usleep(1000) }
        try #require(a.groupPending.withLock { $0.count } == 50, "the group took its files and waits for the database")
        let answered = DispatchSemaphore(value: 0)
        let seen = SizesSeen()
        Thread.detachNewThread { [files] in
            let handle = try? a.openDirectory(d.ino)
            var sizes: [UInt64] = []
            try? a.readdir(d.ino, handle: handle, offset: 0, plus: true) { listing in
                if listing.attr.isRegular { sizes.append(listing.attr.size) }
                return true
            }
            for ino in files { sizes.append((try? a.getattr(ino).size) ?? 0) }
            seen.sizes.withLock { $0 = sizes }
            if let fh = try? a.open(files[0], flags: O_RDONLY) { seen.opened.withLock { $0 = (fh, a.keepsCache(fh)) } }
            answered.signal()
        }
        #expect(answered.wait(timeout: .now() + 10) == .success, "the listing waited for the group's transaction")
        let sizes = (0..<50).map { UInt64(100 + $0) }
        #expect(seen.sizes.withLock { $0 } == sizes + sizes)
        let opened = seen.opened.withLock { $0 }
        #expect(opened?.keepsCache == true, "the open kept the pages of what was written")
        try other.inDatabase { try $0.execute(sql: "COMMIT") }
        locked = false
        #expect(committed.wait(timeout: .now() + 30) == .success, "the group committed once the database was free")
        #expect(a.groupPending.withLock { $0.isEmpty })
        if let opened { a.release(files[0], opened.handle) }
        #expect(try files.map { try a.getattr($0).size } == sizes)
        let b = try shared.mount("b")
        #expect(try b.lookup(d.ino, "f49").size == 149)
    }

    /// Two writers of disjoint ranges of one file that share a chunk: the first one's close,
    /// kept for the group, fits the shared chunk's bytes into a smaller buffer; the second
    /// goes on filling that chunk, and every byte ends up where it was written.
    @Test(arguments: TestBackend.available)
    func aWriterGoesOnFillingAChunkAnotherWritersCloseKeptForTheGroup(backend: TestBackend) throws {
        let chunk = 1 << 20
        let shared = try SharedVolume(backend, chunkSize: chunk)
        let a = try shared.mount("a", deferring: true)
        let content = (0..<(3 * chunk)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 16) }
        let (attr, first) = try a.create(.root, "shared", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        let second = try a.open(attr.ino, flags: O_RDWR)
        // Past the size at which a chunk takes a whole chunk's buffer, and under half of it.
        let half = 400 << 10
        func write(_ fh: FileHandleID, _ range: Range<Int>) throws {
            for start in stride(from: range.lowerBound, to: range.upperBound, by: 64 << 10) {
                let end = min(start + (64 << 10), range.upperBound)
                _ = try content[start..<end].withUnsafeBytes { try a.write(attr.ino, fh, offset: UInt64(start), $0) }
            }
        }
        try write(first, 0..<half)
        try a.flush(attr.ino, first)
        a.release(attr.ino, first)
        #expect(a.deferred.withLock { $0.files[attr.ino] != nil }, "the close was kept for the group")
        try write(second, half..<(3 * chunk))
        try a.flush(attr.ino, second)
        a.release(attr.ino, second)
        #expect(try readFile(a, "shared") == content)
        a.groupCommitTurn()
        let b = try shared.mount("b")
        #expect(try readFile(b, "shared") == content)
    }

    /// While no other mount is attached, the writer's closes are committed together at its
    /// next turn (or by an fsync); a mount that attaches waits until the writer has seen it
    /// and committed what it kept, and from then on closes commit at once. A crash of the
    /// writer, or the loss of its lease, forgets what it kept; a mount attaching then waits
    /// until the lease has expired.
    @Test(arguments: TestBackend.available)
    func closesAreCommittedInGroupsWhileNoOtherMountIsAttached(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        func register(_ volume: VolumeFS, _ id: String) throws {
            try volume.metadata.heartbeat(Session(id: id, host: "h", pid: 1, mountpoint: "/mnt/\(id)", device: "0:50",
                                                  mode: "on-demand", startedAt: shared.clock.now, heartbeatAt: shared.clock.now),
                                          staleSeconds: 60)
        }
        /// Signalled once `volume`, registered, may answer requests.
        func attaching(_ volume: VolumeFS) -> DispatchSemaphore {
            let attached = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                volume.awaitWriterCommits()
                attached.signal()
            }
            return attached
        }
        var a: VolumeFS? = try shared.mount("a", deferring: true)
        try register(a!, "a")
        let other = try shared.storage.reopen(nil)
        let f = try writeFile(a!, "f", [1, 2, 3])
        #expect(try other.lease().deferring)
        #expect(try readFile(a!, "f") == [1, 2, 3], "this mount answers with what it kept")
        #expect(try a!.getattr(f).size == 3)
        // Its name may be made by then (a load of this mount's cache makes the names it
        // answered first), its data is not.
        #expect(((try? other.lookup(.root, "f"))?.size ?? 0) == 0)
        a!.groupCommitTurn()
        #expect(try other.lookup(.root, "f").size == 3)
        #expect(try other.chunks(f).count == 1)

        // An fsync commits the files closed before it as well.
        let g = try writeFile(a!, "g", [4])
        let (h, hfh) = try a!.create(.root, "h", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try [UInt8]([5, 5]).withUnsafeBytes { try a!.write(h.ino, hfh, offset: 0, $0) }
        try a!.fsync(h.ino, hfh)
        a!.release(h.ino, hfh)
        #expect(try other.getattr(g).size == 1)
        #expect(try other.lookup(.root, "h").size == 2)

        // A mount that attaches waits for the group, which the writer commits once it
        // sees that mount; then it stops deferring.
        _ = try writeFile(a!, "i", [6, 6, 6])
        let b = try shared.mount("b")
        try register(b, "b")
        let attached = attaching(b)
        #expect(attached.wait(timeout: .now() + 0.3) == .timedOut, "it waits while the writer defers")
        a!.groupCommitTurn()
        #expect(attached.wait(timeout: .now() + 10) == .success)
        #expect(try readFile(b, "i") == [6, 6, 6])
        #expect(try !other.lease().deferring)
        _ = try writeFile(a!, "j", [7])
        #expect(try other.lookup(.root, "j").size == 1, "with another mount attached, a close commits")
        try b.metadata.removeSession(id: "b")

        // Alone again (the writer asks after a while): a crash forgets the group, and a
        // mount attaching waits until the lease has expired.
        a!.deferred.withLock { $0.askAgain = nil }
        _ = try writeFile(a!, "k", [8])
        #expect(try other.lease().deferring)
        a = nil
        let c = try shared.mount("c")
        try register(c, "c")
        let expired = attaching(c)
        #expect(expired.wait(timeout: .now() + 0.3) == .timedOut)
        shared.clock.advance(seconds: 60)
        #expect(expired.wait(timeout: .now() + 10) == .success)
        #expect(((try? c.lookup(.root, "k"))?.size ?? 0) == 0)

        // A writer that lost its lease commits nothing it kept. (The crashed mount's
        // session would keep the next writer from deferring until it went stale.)
        try c.metadata.removeSession(id: "c")
        try other.removeSession(id: "a")
        let d = try shared.mount("d", deferring: true)
        try register(d, "d")
        _ = try writeFile(d, "m", [9])
        #expect(d.deferred.withLock { $0.files.count } == 1)
        _ = try other.breakLease()
        d.groupCommitTurn()
        #expect(!d.isWriter)
        #expect(d.deferred.withLock { $0.files.isEmpty && !$0.on })
        #expect(((try? other.lookup(.root, "m"))?.size ?? 0) == 0)
        #expect(d.openFiles.withLock { $0.isEmpty }, "the files kept for the group are closed")
    }

    /// A close defers the commit of a file other handles still write (`dd of=F` opens F,
    /// `dup2`s it onto its output and closes the first descriptor). When that group commit
    /// fails, nothing written is lost: the handle left commits it again, and answers the
    /// store's error (ENOSPC here), not the EIO of a lost lease.
    @Test(arguments: TestBackend.available)
    func aFailedGroupCommitLeavesAFileStillOpenToItsOtherHandles(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", deferring: true)
        let (f, writing) = try a.create(.root, "f", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        let duplicate = try a.open(f.ino, flags: O_WRONLY)
        // Past the inline limit (one chunk here): its chunks go to the store.
        let bytes = pattern(40_000, seed: 3)
        _ = try bytes.withUnsafeBytes { try a.write(f.ino, writing, offset: 0, $0) }
        try a.flush(f.ino, duplicate)
        a.release(f.ino, duplicate)
        #expect(a.deferred.withLock { $0.files.count } == 1, "the close was kept for the group")
        shared.store.full.withLock { $0 = true }
        a.groupCommitTurn()
        do {
            try a.fsync(f.ino, writing)
            Issue.record("an fsync with the store full succeeded")
        } catch {
            #expect(error.errno == ENOSPC, "\(error)")
        }
        shared.store.full.withLock { $0 = false }
        try a.fsync(f.ino, writing)
        a.release(f.ino, writing)
        let other = try shared.mount("b")
        #expect(try readFile(other, "f") == bytes)
    }

    /// A shell's redirection or `dd` closes a duplicate of the file it just created, then
    /// writes through the other: the group commit owes the file's making and what was
    /// buffered at that close, not the chunk being filled since, which would be stored
    /// twice (half-full now, full later). Each chunk is stored once, and all of it lands.
    @Test(arguments: TestBackend.available)
    func aGroupCommitLeavesTheChunkAnotherHandleIsFillingToThatHandle(backend: TestBackend) throws {
        let chunk = 1 << 20
        let shared = try SharedVolume(backend, chunkSize: chunk)
        let a = try shared.mount("a", deferring: true)
        // In a new directory, whose names are known, a create is answered at once and the
        // file made later.
        let d = try a.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        let (f, writing) = try a.create(d.ino, "f", mode: 0o644, flags: O_WRONLY, uid: 0, gid: 0)
        #expect(a.cache.isUnmade(f.ino))
        let duplicate = try a.open(f.ino, flags: O_WRONLY)
        try a.flush(f.ino, duplicate)
        a.release(f.ino, duplicate)
        #expect(a.deferred.withLock { $0.files[f.ino] != nil }, "the close was kept for the group")
        let bytes = pattern(2 * chunk, seed: 9)
        func write(_ range: Range<Int>) throws {
            for start in stride(from: range.lowerBound, to: range.upperBound, by: 128 << 10) {
                let end = min(start + (128 << 10), range.upperBound)
                _ = try bytes[start..<end].withUnsafeBytes { try a.write(f.ino, writing, offset: UInt64(start), $0) }
            }
        }
        try write(0..<(chunk + chunk / 2))
        let puts = shared.store.puts
        a.groupCommitTurn()
        #expect(a.deferred.withLock { $0.files.isEmpty })
        #expect(!a.cache.isUnmade(f.ino), "the group made the file")
        // The full first chunk is the writing handle's to store (it may be storing it);
        // the half-full second one is still buffered.
        #expect(shared.store.puts <= 1, "the group stored the chunk being filled (\(shared.store.puts - puts) objects)")
        try write((chunk + chunk / 2)..<(2 * chunk))
        try a.flush(f.ino, writing)
        a.release(f.ino, writing)
        a.groupCommitTurn()
        #expect(shared.store.puts == 2, "two chunks, each stored once")
        let b = try shared.mount("b")
        let made = try b.lookup(try b.lookup(.root, "d").ino, "f")
        let fh = try b.open(made.ino, flags: O_RDONLY)
        #expect(try b.read(made.ino, fh, offset: 0, count: bytes.count + 1) == bytes)
        b.release(made.ino, fh)
    }

    /// A directory the writer makes is answered at once too, and made before the files in
    /// it, in the transaction of the first of them to be closed.
    @Test(arguments: TestBackend.available)
    func aDirectoryIsMadeWithTheFirstChangeThatReachesTheMetadata(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        var a: VolumeFS? = try shared.mount("a")
        let other = try shared.storage.reopen(nil)
        let top = try a!.mkdir(.root, "top", mode: 0o2775, uid: 0, gid: 0)
        try a!.syncMetadata()
        _ = try a!.setattr(top.ino, AttrChanges(gid: 7))
        let d = try a!.mkdir(top.ino, "d", mode: 0o755, uid: 3, gid: 4)
        let e = try a!.mkdir(d.ino, "e", mode: 0o700, uid: 3, gid: 4)
        #expect(a!.cache.state.withLock { $0.queued.count } == 2, "answered without a transaction")
        #expect(d.mode == FileType.directory.rawValue | 0o2755 && d.gid == 7 && d.nlink == 2, "the set-group-id rule")
        #expect(try a!.getattr(top.ino).nlink == 3)
        #expect(throws: MetadataError.notFound) { try other.lookup(top.ino, "d") }
        let (f, fh) = try a!.create(e.ino, "f", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try [UInt8]([1]).withUnsafeBytes { try a!.write(f.ino, fh, offset: 0, $0) }
        a!.release(f.ino, fh)
        let made = try other.lookup(top.ino, "d")
        #expect(made.ino == d.ino && made.mode == d.mode && made.gid == 7 && made.nlink == 3)
        #expect(try other.lookup(d.ino, "e").ino == e.ino)
        #expect(try other.getattr(e.ino).mode == e.mode)
        #expect(try other.lookup(e.ino, "f").size == 1)
        #expect(try other.getattr(top.ino).nlink == 3)

        // Not applied when the writer dies: forgotten.
        #expect(throws: FSError.metadata(.notFound)) { try a!.lookup(.root, "gone") }
        _ = try a!.mkdir(.root, "gone", mode: 0o755, uid: 0, gid: 0)
        #expect(a!.cache.state.withLock { $0.queued.count } == 1)
        a = nil
        shared.clock.advance(seconds: 60)
        let b = try shared.mount("b")
        #expect(throws: FSError.metadata(.notFound)) { try b.lookup(.root, "gone") }
        #expect(try b.lookup(e.ino, "f").ino == f.ino)
    }

    /// A symbolic link the writer makes is answered at once, read back from memory, and
    /// made with the next change that reaches the metadata, as a directory is.
    @Test(arguments: TestBackend.available)
    func aSymbolicLinkIsMadeWithTheNextChangeThatReachesTheMetadata(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let other = try shared.storage.reopen(nil)
        let d = try a.mkdir(.root, "d", mode: 0o2755, uid: 0, gid: 9)
        try a.syncMetadata()
        let target = Array("../lib/x.so.1".utf8)
        let l = try a.symlink(d.ino, "x.so", target: target, uid: 3, gid: 4)
        #expect(l.mode == FileType.symlink.rawValue | 0o777 && l.size == UInt64(target.count) && l.gid == 9)
        #expect(try a.readlink(l.ino) == target)
        #expect(try a.lookup(d.ino, "x.so").ino == l.ino)
        #expect(a.cache.state.withLock { $0.queued.count } == 1, "answered without a transaction")
        #expect(throws: MetadataError.notFound) { try other.lookup(d.ino, "x.so") }
        try a.syncMetadata()
        let made = try other.lookup(d.ino, "x.so")
        #expect(made.ino == l.ino && made.mode == l.mode && made.size == l.size && made.uid == 3 && made.gid == 9)
        #expect(try other.readlink(l.ino) == target)
        #expect(try a.readlink(l.ino) == target)
        // Removed before it was made: never seen elsewhere.
        _ = try a.symlink(.root, "gone", target: [UInt8(ascii: "t")], uid: 0, gid: 0)
        try a.unlink(.root, "gone")
        try a.syncMetadata()
        #expect(throws: MetadataError.notFound) { try other.lookup(.root, "gone") }
    }

    /// A crash forgets the files created since their last close, as a local filesystem
    /// forgets what it did not commit, and leaves nothing of them behind.
    @Test(arguments: TestBackend.available)
    func aCrashForgetsFilesCreatedAndNotClosed(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        var a: VolumeFS? = try shared.mount("a")
        let d = try a!.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        let kept = try writeFile(a!, "kept", [1])
        let (f, fh) = try a!.create(d.ino, "f", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try [UInt8](repeating: 9, count: 100).withUnsafeBytes { try a!.write(f.ino, fh, offset: 0, $0) }
        _ = fh
        a = nil  // the process dies: no close, no unmount
        shared.clock.advance(seconds: 60)
        let b = try shared.mount("b")
        _ = try writeFile(b, "after", [2])
        #expect(try readFile(b, "kept") == [1])
        #expect(throws: FSError.metadata(.notFound)) { try b.lookup(d.ino, "f") }
        var listed: [String] = []
        try b.readdir(d.ino, offset: 0, plus: false) { listed.append($0.name.description); return true }
        #expect(listed == [".", ".."])
        #expect(try b.metadata.orphans().isEmpty)
        #expect(try b.metadata.allChunks().allSatisfy { $0.0 != f.ino })
        #expect(kept != f.ino)
    }

    /// A writer that lost its lease never makes the files it answered for, nor removes the
    /// names: another writer may have changed the volume since. The files' close answers EIO.
    @Test(arguments: TestBackend.available)
    func filesNotMadeBeforeTheLeaseIsLostAreLost(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        _ = try writeFile(a, "old", [3])
        _ = try a.lookup(.root, "old")
        let d = try a.mkdir(.root, "d", mode: 0o755, uid: 0, gid: 0)
        let (f, fh) = try a.create(d.ino, "f", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        let (e, efh) = try a.create(d.ino, "e", mode: 0o644, flags: O_RDWR, uid: 0, gid: 0)
        _ = try [UInt8]([1]).withUnsafeBytes { try a.write(f.ino, fh, offset: 0, $0) }
        try a.unlink(.root, "old")
        let b = try shared.mount("b")
        _ = try b.metadata.breakLease()
        _ = try writeFile(b, "x", [2])
        #expect(throws: FSError.lostWrites) { try a.flush(f.ino, fh) }
        #expect(throws: FSError.lostWrites) { try a.flush(e.ino, efh) }
        a.release(f.ino, fh)
        a.release(e.ino, efh)
        #expect(throws: FSError.metadata(.notFound)) { try b.lookup(d.ino, "f") }
        #expect(throws: FSError.metadata(.notFound)) { try b.lookup(d.ino, "e") }
        // Nor does it apply a removal it answered: the name is still there.
        #expect(try readFile(b, "old") == [3])
    }

    /// An open that builds a file's open state afresh takes the size and the chunk map of
    /// one moment, even when the attributes it was handed are older: another handle had
    /// the file open when they were read, and the writer has replaced and purged the file
    /// since. A size paired with the later, empty map would read as zeros.
    @Test(arguments: TestBackend.available)
    func anOpenNeverPairsAnOlderSizeWithALaterChunkMap(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let b = try shared.mount("b")
        let old = try writeFile(a, "model", [1, 2, 3])
        let stale = try b.cache.freshAttr(old)
        _ = try writeFile(a, "model.tmp", [4, 5, 6, 7])
        try a.rename(.root, "model.tmp", .root, "model")
        try a.metadata.purge([old], now: VolumeFS.now())
        #expect(throws: FSError.metadata(.notFound)) { try b.attach(stale) }
        #expect(b.openFiles.withLock { $0[old] == nil })
        #expect(try readFile(b, "model") == [4, 5, 6, 7])
    }

    /// The writer reopens a file it closed from the chunk map it kept at the close, with
    /// no round trip, but only while the file is still at that version: not after a
    /// truncate without a handle, nor after another writer changed it while this mount
    /// did not hold the lease.
    @Test(arguments: TestBackend.available)
    func theWriterReopensAClosedFileFromTheMapItKeptOnlyWhileTheFileIsUnchanged(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", idle: 0)
        let b = try shared.mount("b", idle: 0)
        // Past the inline limit: chunks in objects, the last one partial.
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let ino = try writeFile(a, "f", bytes)
        let small = try writeFile(a, "small", [5, 6, 7])
        #expect(a.keptMaps.withLock { $0.count } == 2)
        let fh = try a.open(ino, flags: O_RDONLY)
        #expect(a.keptMaps.withLock { $0.count } == 1, "the open took the kept map")
        #expect(try a.read(ino, fh, offset: 0, count: bytes.count + 1) == bytes)
        a.release(ino, fh)
        #expect(try readFile(a, "small") == [5, 6, 7])
        #expect(a.keptMaps.withLock { $0.count } == 2, "each close keeps its map again")

        // Cut and grown again, the file reads zeros where its old map would give old bytes.
        let cut = Array(bytes[..<20_000]) + [UInt8](repeating: 0, count: 80_000)
        try a.truncate(ino, to: 20_000)
        try a.truncate(ino, to: 100_000)
        #expect(try readFile(a, "f") == cut)
        try a.truncate(small, to: 1)
        try a.truncate(small, to: 3)
        #expect(try readFile(a, "small") == [5, 0, 0])

        a.tick()
        #expect(!a.isWriter)
        _ = try writeFile(b, "f", [2, 2, 2, 2])
        b.tick()
        _ = try writeFile(a, "g", [1])
        #expect(a.isWriter)
        #expect(try readFile(a, "f") == [2, 2, 2, 2] + Array(cut[4...]))
    }

    /// While nobody holds the lease, a reader answers opens from its cache and reads the
    /// chunk maps of the files beside the one it opens in the same round trip. A writer
    /// that takes the lease then waits until the reader can no longer trust its cache,
    /// so an open after the writer's close sees the new data even before the reader has
    /// read the change feed again (close-to-open).
    @Test(arguments: TestBackend.available)
    func aReaderTrustsItsCacheOnlyWhileTheLeaseIsFree(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let (d, files, r) = try shared.quietReaderOfTenFiles()
        var listed = 0
        try r.readdir(d.ino, offset: 0, plus: false) { _ in
            listed += 1
            return true
        }
        #expect(listed == 12)
        let first = try r.open(files[0], flags: O_RDONLY)
        #expect(r.keptMaps.withLock { $0.count } == 9, "the maps of the files beside it came with its own")
        #expect(try r.read(files[0], first, offset: 0, count: 1000) == [UInt8](repeating: 0, count: 100))
        r.release(files[0], first)
        let second = try r.open(files[1], flags: O_RDONLY)
        #expect(r.keptMaps.withLock { $0.count } == 9, "taken from memory, kept again by the first's close")
        #expect(try r.read(files[1], second, offset: 0, count: 1000) == [UInt8](repeating: 1, count: 101))
        r.release(files[1], second)

        // Another writer takes the lease: it waits for the reader first.
        let b = try shared.mount("b")
        let started = ContinuousClock.now
        let fh = try b.open(files[2], flags: O_RDWR)
        _ = try [UInt8](repeating: 9, count: 50).withUnsafeBytes { try b.write(files[2], fh, offset: 0, $0) }
        #expect(ContinuousClock.now - started >= .seconds(Lease.quietSeconds))
        b.release(files[2], fh)
        // The reader has not read the feed since: it asks, and sees the new data.
        #expect(!r.isQuiet)
        let third = try r.open(files[2], flags: O_RDONLY)
        #expect(try r.read(files[2], third, offset: 0, count: 1000) == [UInt8](repeating: 9, count: 50) + [UInt8](repeating: 2, count: 52))
        r.release(files[2], third)
        r.followChanges()
        #expect(!r.isQuiet, "the lease is held")
    }

    /// On a loaded machine the background tick can come later than the reader's quiet
    /// lasts, or stall for seconds. The next open then reads the change feed itself: one
    /// round trip buys the next opens from memory again, and it never trusts the cache
    /// once the lease is held.
    @Test(arguments: TestBackend.available)
    func aReaderWhoseQuietRanOutReadsTheFeedOnItsNextOpen(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let (d, files, r) = try shared.quietReaderOfTenFiles()
        try r.readdir(d.ino, offset: 0, plus: false) { _ in true }
        Thread.sleep(forTimeInterval: Lease.quietSeconds)
        #expect(!r.isQuiet, "no tick came to read the feed again")

        let followed = r.writer.withLock { $0.followedAt }
        let first = try r.open(files[0], flags: O_RDONLY)
        #expect(r.writer.withLock { $0.followedAt } > followed, "the open read the feed")
        #expect(r.isQuiet)
        #expect(r.keptMaps.withLock { $0.count } == 9, "answered as a quiet open: the maps beside it came with its own")
        #expect(try r.read(files[0], first, offset: 0, count: 1000) == [UInt8](repeating: 0, count: 100))
        r.release(files[0], first)

        // A writer takes the lease and changes a file while the reader's quiet runs out.
        let b = try shared.mount("b")
        let fh = try b.open(files[2], flags: O_RDWR)
        _ = try [UInt8](repeating: 9, count: 50).withUnsafeBytes { try b.write(files[2], fh, offset: 0, $0) }
        b.release(files[2], fh)
        #expect(!r.isQuiet)
        let second = try r.open(files[2], flags: O_RDONLY)
        #expect(!r.isQuiet, "the feed says the lease is held")
        #expect(try r.read(files[2], second, offset: 0, count: 1000) == [UInt8](repeating: 9, count: 50) + [UInt8](repeating: 2, count: 52))
        r.release(files[2], second)
        // While it is held, opens ask the metadata and leave the feed to the tick.
        let heard = r.writer.withLock { $0.followedAt }
        let third = try r.open(files[3], flags: O_RDONLY)
        #expect(r.writer.withLock { $0.followedAt } == heard)
        r.release(files[3], third)

        // The writer gives the lease back while no tick comes: the feed was last read
        // when the lease was held, so only its age tells the next open to read it.
        b.releaseLease()
        Thread.sleep(forTimeInterval: Lease.quietSeconds)
        let fourth = try r.open(files[4], flags: O_RDONLY)
        #expect(r.writer.withLock { $0.followedAt } > heard)
        #expect(r.isQuiet)
        #expect(try r.read(files[4], fourth, offset: 0, count: 1000) == [UInt8](repeating: 4, count: 104))
        r.release(files[4], fourth)
    }

    /// A writer whose renewals came late (its background thread held up past the mount's
    /// own deadline) renews at its next write: nobody has taken the lease since, so what
    /// it buffered stays, and commits.
    @Test(arguments: TestBackend.available)
    func aWriterPastItsOwnDeadlineRenewsAndKeepsWhatItBuffered(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let ino = try writeFile(a, "f", [1, 1, 1])
        let fh = try a.open(ino, flags: O_RDWR)
        _ = try [UInt8]([9, 9]).withUnsafeBytes { try a.write(ino, fh, offset: 0, $0) }
        let token = a.writer.withLock { $0.fence?.token }
        a.writer.withLock { $0.validUntil = .now - .seconds(1) }
        _ = try [UInt8]([8]).withUnsafeBytes { try a.write(ino, fh, offset: 2, $0) }
        #expect(a.writer.withLock { $0.fence?.token } == token, "renewed, not taken again")
        #expect(a.writer.withLock { $0.validUntil } > .now)
        try a.flush(ino, fh)
        a.release(ino, fh)
        #expect(try readFile(a, "f") == [9, 9, 8])
        let b = try shared.mount("b")
        #expect(try readFile(b, "f") == [9, 9, 8])

        // Once another mount has taken it, the late writer's buffered writes are lost.
        let fh2 = try a.open(ino, flags: O_RDWR)
        _ = try [UInt8]([7]).withUnsafeBytes { try a.write(ino, fh2, offset: 0, $0) }
        a.writer.withLock { $0.validUntil = .now - .seconds(1) }
        shared.clock.advance(seconds: 16)
        _ = try writeFile(b, "g", [2])
        #expect(throws: FSError.lostWrites) { try a.flush(ino, fh2) }
        a.release(ino, fh2)
        #expect(try readFile(b, "f") == [9, 9, 8])
    }

    @Test(arguments: TestBackend.available)
    func aReadOnlyMountNeverWrites(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let r = try shared.mount("r", mode: .readOnly)
        #expect(throws: FSError.readOnly(holder: nil)) { try writeFile(r, "f", [1]) }
        #expect(try r.currentLease().isHeld == false)
    }

    @Test(arguments: TestBackend.available)
    func aWriterModeMountFailsWhileAnotherHoldsTheLease(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", mode: .writer)
        try a.acquireLease()
        let b = try shared.mount("b", mode: .writer)
        #expect(throws: FSError.readOnly(holder: "a")) { try b.acquireLease() }
        a.shutdown()
        try b.acquireLease()
        #expect(b.isWriter)
    }

    @Test(arguments: TestBackend.available)
    func aWriterPausedPastExpiryIsFencedAndItsBufferedWritesAreLost(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        let b = try shared.mount("b")
        let ino = try writeFile(a, "f", [1, 1, 1])
        // a buffers a write, then stops (SIGSTOP, a long pause) past its lease's expiry.
        let fh = try a.open(ino, flags: O_RDWR)
        _ = try [UInt8]([9, 9, 9]).withUnsafeBytes { try a.write(ino, fh, offset: 0, $0) }
        shared.clock.advance(seconds: 16)
        // b takes the lease over and writes.
        _ = try writeFile(b, "f", [2, 2, 2, 2])
        #expect(b.isWriter)
        // a wakes up: its commit is refused inside the transaction, and it knows why.
        #expect(throws: FSError.lostWrites) { try a.flush(ino, fh) }
        #expect(FSError.lostWrites.errno == EIO)
        #expect(!a.isWriter)
        #expect(throws: FSError.readOnly(holder: "b")) { try [UInt8]([7]).withUnsafeBytes { try a.write(ino, fh, offset: 0, $0) } }
        a.release(ino, fh)
        // The volume holds exactly b's data.
        let c = try shared.mount("c", mode: .readOnly)
        #expect(try readFile(c, "f") == [2, 2, 2, 2])
    }

    @Test(arguments: TestBackend.available)
    func aCommitRacingATakeoverNeverLands(backend: TestBackend) throws {
        let shared = try SharedVolume(backend, chunkSize: 1 << 20)
        let a = try shared.mount("a")
        let ino = try writeFile(a, "f", [1])
        let fh = try a.open(ino, flags: O_RDWR)
        // Past the inline limit, so that fsync uploads an object, and less than a chunk,
        // so that it stays buffered until then.
        let size = a.options.inlineLimit * 3
        #expect(size < a.chunkSize)
        _ = try [UInt8](repeating: 5, count: size).withUnsafeBytes { try a.write(ino, fh, offset: 0, $0) }
        // The takeover lands between a's upload and its metadata commit: a's token is stale
        // by the time the transaction checks it.
        shared.clock.advance(seconds: 16)
        let b = try shared.mount("b")
        try b.acquireLease()
        let objectsBefore = Set(try shared.store.list())
        let putsBefore = shared.store.puts
        #expect(throws: FSError.lostWrites) { try a.fsync(ino, fh) }
        #expect(shared.store.puts == putsBefore + 1, "fsync uploaded the chunk before its commit was refused")
        // The refused commit's upload is deleted again, and the file is as it was.
        let c = try shared.mount("c", mode: .readOnly)
        #expect(try readFile(c, "f") == [1])
        #expect(Set(try shared.store.list()) == objectsBefore)
        a.release(ino, fh)
    }

    @Test(arguments: TestBackend.available)
    func aBrokenLeaseFencesItsHolder(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a")
        _ = try writeFile(a, "f", [1])
        let metadata = try shared.storage.reopen(nil)
        let before = try metadata.lease().token
        #expect(try metadata.breakLease().token > before)
        // a notices at its next renewal.
        a.renewLease()
        #expect(!a.isWriter)
        // Nobody holds it now, so a (on demand) can take it again, with a new token.
        _ = try writeFile(a, "g", [2])
        #expect(a.isWriter)
        #expect(try metadata.lease().token.rawValue > before.rawValue + 1)
        // A break between two of a's transactions: the next one notices and retries.
        _ = try metadata.breakLease()
        _ = try writeFile(a, "h", [3])
        #expect(try readFile(a, "h") == [3])
    }

    @Test(arguments: TestBackend.available)
    func readersFollowTheWritersChanges(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let w = try shared.mount("w")
        let r = try shared.mount("r", mode: .readOnly)
        let seen = Mutex<[Invalidation]>([])
        r.setInvalidator { what in seen.withLock { $0.append(what) } }
        let ino = try writeFile(w, "f", [1, 2])
        let attr = try r.lookup(.root, "f")
        let fh = try r.open(attr.ino, flags: O_RDONLY)
        #expect(try r.read(ino, fh, offset: 0, count: 10) == [1, 2])
        // The writer rewrites the file; the reader's open handle sees it after a poll.
        let wh = try w.open(ino, flags: O_RDWR)
        _ = try [UInt8]([3, 4, 5]).withUnsafeBytes { try w.write(ino, wh, offset: 0, $0) }
        w.release(ino, wh)
        r.tick()
        #expect(seen.withLock { $0.contains(.inode(ino)) })
        #expect(try r.read(ino, fh, offset: 0, count: 10) == [3, 4, 5])
        #expect(try r.getattr(ino).size == 3)
        // A new name invalidates the directory entry and the directory.
        _ = try writeFile(w, "g", [6])
        r.tick()
        #expect(seen.withLock { $0.contains(.entry(parent: .root, name: "g")) && $0.contains(.inode(.root)) })
        // Deleted by the writer while the reader has it open: still readable.
        try w.unlink(.root, "f")
        w.forget(ino, 1)
        try w.syncMetadata()  // the writer applies the removal (its tick would, within a second)
        r.tick()
        #expect(try r.getattr(ino).nlink == 0)
        #expect(try r.read(ino, fh, offset: 0, count: 10) == [3, 4, 5])
        r.release(ino, fh)
    }

    /// An unmount gives the lease back while the background turn may be purging files
    /// removed a moment before: they are purged all the same, by one or the other, not
    /// left as orphans for the next writer (a fenced purge would leave them).
    @Test(arguments: TestBackend.available)
    func anUnmountDuringABackgroundTurnLeavesNoOrphans(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        for round in 0..<100 {
            let a = try shared.mount("a\(round)")
            for i in 0..<10 {
                let ino = try writeFile(a, "f\(i)", [UInt8(i)])
                try a.unlink(.root, FileName("f\(i)"))
                a.forget(ino, 1)
            }
            let turn = DispatchGroup()
            DispatchQueue.global().async(group: turn) { a.tick() }
            a.shutdown()
            #expect(turn.wait(timeout: .now() + 30) == .success)
            #expect(try a.metadata.orphans().isEmpty, "round \(round)")
        }
    }

    /// The same race with the background's reclaiming of space, which purges too; only a
    /// store that knows its free space (the embedded one) reclaims early.
    @Test
    func anUnmountDuringAReclaimOfSpaceLeavesNoOrphans() throws {
        let shared = try SharedVolume(.embedded)
        for round in 0..<100 {
            let a = try shared.mount("a\(round)")
            #expect(a.store.availableBytes() != nil)
            for i in 0..<10 {
                let ino = try writeFile(a, "f\(i)", [UInt8(i)])
                try a.unlink(.root, FileName("f\(i)"))
                a.forget(ino, 1)
            }
            let turn = DispatchGroup()
            DispatchQueue.global().async(group: turn) { a.reclaimSpace(ifBelow: .max) }
            a.shutdown()
            #expect(turn.wait(timeout: .now() + 30) == .success)
            #expect(try a.metadata.orphans().isEmpty, "round \(round)")
        }
    }

    @Test(arguments: TestBackend.available)
    func aMountThatGainsTheLeaseRevalidatesFirst(backend: TestBackend) throws {
        let shared = try SharedVolume(backend)
        let a = try shared.mount("a", idle: 0)
        let b = try shared.mount("b", idle: 0)
        let ino = try writeFile(a, "f", [1, 1])
        a.tick()  // a gives the lease back, so that b may open for writing
        let bAttr = try b.lookup(.root, "f")
        let bh = try b.open(bAttr.ino, flags: O_RDWR)  // b's chunk map: [1, 1]
        let ah = try a.open(ino, flags: O_RDWR)
        _ = try [UInt8]([2, 2, 2]).withUnsafeBytes { try a.write(ino, ah, offset: 0, $0) }
        a.release(ino, ah)
        a.tick()  // a gives the lease back; b has not polled yet
        // b writes one byte at offset 3: it must build on [2, 2, 2], not on its stale [1, 1].
        _ = try [UInt8]([9]).withUnsafeBytes { try b.write(ino, bh, offset: 3, $0) }
        b.release(ino, bh)
        #expect(try readFile(a, "f") == [2, 2, 2, 9])
    }
}

/// A chunk store that counts the objects stored and the reads made through it, and
/// refuses objects while `full`.
final class CountingStore: ChunkStore {
    let inner: any ChunkStore
    let stored = Mutex(0)
    let readCount = Mutex(0)
    let full = Mutex(false)
    /// Puts wait while this is set.
    let held = Mutex(false)
    init(_ inner: any ChunkStore) { self.inner = inner }
    var puts: Int { stored.withLock { $0 } }
    var reads: Int { readCount.withLock { $0 } }
    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        if full.withLock({ $0 }) { throw .noSpace }
        while held.withLock({ $0 }) { usleep(1000) }
        try inner.put(id, bytes)
        stored.withLock { $0 += 1 }
    }
    func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        readCount.withLock { $0 += 1 }
        return try inner.read(id, offset: offset, into: buffer)
    }
    func prefetch(_ id: ObjectID) { inner.prefetch(id) }
    func size(of id: ObjectID) throws(StoreError) -> Int { try inner.size(of: id) }
    func delete(_ id: ObjectID) throws(StoreError) { try inner.delete(id) }
    func list() throws(StoreError) -> [ObjectID] { try inner.list() }
    func availableBytes() -> UInt64? { inner.availableBytes() }
    func discard(_ id: ObjectID) { inner.discard(id) }
}
