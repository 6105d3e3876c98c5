import Foundation
import Synchronization
import Testing
@testable import Metadata

/// Runs every body on its own thread at once; returns when all are done.
func runConcurrently(_ bodies: [@Sendable () -> Void]) {
    let group = DispatchGroup()
    for body in bodies {
        group.enter()
        Thread.detachNewThread {
            body()
            group.leave()
        }
    }
    group.wait()
}

/// The contract of the `Metadata` protocol that concurrency makes hard: fencing against a
/// takeover, a change feed in commit order, truncation, snapshots.
@Suite struct ContractTests {
    /// Another mount opening a file that the writer keeps rewriting and replacing (as `pip`
    /// and editors save files) gets its attributes and its chunk map from one moment: a
    /// size paired with the chunks of another (none, once purged) would read as zeros.
    @Test(arguments: Backend.all) func attributesAndChunksOfAFileBeingReplacedAreOneSnapshot(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let writer = volume.meta
        let reader = try volume.reopen(nil)
        let current = Atomic<UInt64>(0)
        let done = Atomic<Bool>(false)
        let problems = Mutex<[String]>([])
        let reads = Atomic<Int>(0)
        runConcurrently([
            {
                defer { done.store(true, ordering: .releasing) }
                let until = ContinuousClock.now + .seconds(2)
                var version = 0
                while ContinuousClock.now < until {
                    version += 1
                    do {
                        let file = try writer.mknode(.root, FileName("v\(version)"), mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
                        current.store(file.ino.rawValue, ordering: .releasing)
                        for length in [1000 + version % 3000, 17, 2500] {
                            let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: version), count: length)
                            let chunk = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
                            try writer.commitData(file.ino, chunks: [chunk], drop: nil, size: UInt64(length), mtime: t1, now: t1)
                        }
                        _ = try writer.unlink(.root, FileName("v\(version)"), now: t1)
                        try writer.purge([file.ino], now: t1)
                    } catch {
                        problems.withLock { $0.append("writer: \(error)") }
                        return
                    }
                }
            },
            {
                while !done.load(ordering: .acquiring) {
                    let ino = InodeNumber(current.load(ordering: .acquiring))
                    guard ino.rawValue != 0 else { continue }
                    do {
                        let (attr, chunks) = try reader.attrAndChunks(ino)
                        reads.add(1, ordering: .relaxed)
                        let stored = chunks.reduce(0) { $0 + $1.length }
                        if UInt64(stored) != attr.size {
                            problems.withLock { $0.append("inode \(ino.rawValue): size \(attr.size) with \(stored) bytes of chunks") }
                        }
                    } catch MetadataError.notFound {
                        continue  // purged: as it should be
                    } catch {
                        problems.withLock { $0.append("reader: \(error)") }
                        return
                    }
                }
            },
        ])
        #expect(reads.load(ordering: .relaxed) > 0)
        #expect(problems.withLock { Array($0.prefix(5)) } == [])
    }

    @Test(arguments: Backend.all) func aTakeoverNeverInterleavesWithAStaleWritersCommit(_ backend: Backend) throws {
        let clock = ManualClock()
        let volume = try backend.volume(clock: { clock.now })
        defer { volume.remove() }
        let a = volume.meta
        let b = try volume.reopen({ clock.now })
        let lease = try a.acquireLease(holder: "a", ttlSeconds: 10)
        a.setFence(Fence(holder: "a", token: lease.token))
        clock.advance(11)

        struct Outcome { var committed: [String] = []; var fencedAfter: Int?; var other: [String] = [] }
        let outcome = Mutex(Outcome())
        let seenAtTakeover = Mutex<Set<FileName>?>(nil)
        runConcurrently([
            {
                for i in 0..<5000 {
                    // A few more tries once refused, then stop.
                    if let first = outcome.withLock({ $0.fencedAfter }), i > first + 20 { break }
                    do {
                        _ = try a.mknode(.root, FileName("a\(i)"), mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
                        outcome.withLock { $0.committed.append("a\(i)") }
                        // SQLite's busy handler is not fair: back-to-back commits could hold
                        // the takeover off until this loop ended.
                        usleep(200)
                    } catch MetadataError.fenced(_) {
                        outcome.withLock { if $0.fencedAfter == nil { $0.fencedAfter = i } }
                    } catch {
                        outcome.withLock { $0.other.append("\(error)") }
                    }
                }
            },
            {
                // Once a is well under way (bounded: a may fail outright, which is reported).
                let limit = ContinuousClock.now + .seconds(10)
                while outcome.withLock({ $0.committed.count < 5 && $0.other.isEmpty }) && ContinuousClock.now < limit {
                    usleep(100)
                }
                do {
                    _ = try b.acquireLease(holder: "b", ttlSeconds: 10)
                    // What is committed when the takeover has committed: nothing of a's may follow.
                    let names = try b.readdir(.root, after: 0, limit: 10000).map(\.name)
                    seenAtTakeover.withLock { $0 = Set(names) }
                } catch {
                    outcome.withLock { $0.other.append("takeover: \(error)") }
                }
            },
        ])
        let result = outcome.withLock { $0 }
        #expect(result.other.isEmpty)
        let atTakeover = try #require(seenAtTakeover.withLock { $0 })
        let now = Set(try b.readdir(.root, after: 0, limit: 10000).map(\.name))
        #expect(now == atTakeover, "a stale writer committed after the takeover")
        #expect(Set(result.committed.map { FileName($0) }) == now)
        // The takeover landed while a was writing; once refused, a is refused for good.
        let first = try #require(result.fencedAfter)
        #expect(result.committed.allSatisfy { (Int($0.dropFirst()) ?? .max) < first })
        #expect(!result.committed.isEmpty)
    }

    @Test(arguments: Backend.all) func theChangeFeedIsInCommitOrderUnderConcurrentWriters(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let writers = 4
        let perWriter = 40
        var directories: [InodeNumber] = []
        for w in 0..<writers { directories.append(try volume.dir(FileName("w\(w)")).ino) }
        let start = try meta.changes(after: 0, limit: 1).latest
        let done = Atomic<Int>(0)
        let problems = Mutex<[String]>([])
        let observed = Mutex<[Int64]>([])
        var bodies: [@Sendable () -> Void] = []
        for w in 0..<writers {
            let parent = directories[w]
            bodies.append {
                for i in 0..<perWriter {
                    do {
                        _ = try meta.mknode(parent, FileName("f\(i)"), mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
                    } catch {
                        problems.withLock { $0.append("writer \(w): \(error)") }
                    }
                }
                done.add(1, ordering: .releasing)
            }
        }
        bodies.append {
            var position = start
            var finishing = false
            while true {
                if done.load(ordering: .acquiring) == writers { finishing = true }
                do {
                    let batch = try meta.changes(after: position, limit: 50)
                    if batch.truncated { problems.withLock { $0.append("truncated") }; return }
                    for change in batch.changes {
                        if change.sequence != position + 1 {
                            problems.withLock { $0.append("after \(position) came \(change.sequence)") }
                        }
                        position = change.sequence
                        observed.withLock { $0.append(change.sequence) }
                    }
                    if finishing && batch.changes.isEmpty { return }
                } catch {
                    problems.withLock { $0.append("reader: \(error)") }
                    return
                }
            }
        }
        runConcurrently(bodies)
        #expect(problems.withLock { $0 } == [])
        let latest = try meta.changes(after: 0, limit: 1).latest
        let seen = observed.withLock { $0 }
        #expect(seen == Array((start + 1)...latest))
        // Every file noted its entry.
        #expect(seen.count >= writers * perWriter)
    }

    @Test(arguments: Backend.all) func aReaderBehindATruncatedFeedIsToldSo(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        for i in 0..<10 { _ = try volume.file(FileName("f\(i)")) }
        let latest = try meta.changes(after: 0, limit: 100).latest
        #expect(latest >= 10)
        try volume.pruneFeed(latest - 5)
        #expect(try meta.changes(after: 0, limit: 100).truncated)
        #expect(try meta.changes(after: latest - 7, limit: 100).truncated)
        let caughtUp = try meta.changes(after: latest - 5, limit: 100)
        #expect(!caughtUp.truncated && caughtUp.changes.map(\.sequence) == Array((latest - 4)...latest))
        #expect(try !meta.changes(after: latest, limit: 100).truncated)
    }
}
