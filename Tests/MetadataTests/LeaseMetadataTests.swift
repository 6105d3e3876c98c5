import Foundation
import Synchronization
import Testing
@testable import Metadata
@testable import SQLiteMetadata

final class ManualClock: Sendable {
    let time = Mutex(Timestamp(seconds: 1_800_000_000, nanoseconds: 0))
    var now: Timestamp { time.withLock { $0 } }
    func advance(_ seconds: Double) { time.withLock { $0.nanoseconds += Int64(seconds * 1e9) } }
}

/// The lease, fencing, sessions and the change feed, at the metadata level.
@Suite struct LeaseMetadataTests {
    /// Two workers on one new volume, both on `clock`.
    struct Pair {
        let volume: TestVolume
        let a: any Metadata
        let b: any Metadata
    }

    func pair(_ backend: Backend, _ clock: ManualClock) throws -> Pair {
        let volume = try backend.volume(clock: { clock.now })
        return Pair(volume: volume, a: volume.meta, b: try volume.reopen({ clock.now }))
    }

    @Test(arguments: Backend.all) func acquireRenewReleaseAndTakeover(_ backend: Backend) throws {
        let clock = ManualClock()
        let workers = try pair(backend, clock)
        defer { workers.volume.remove() }
        let a = workers.a, b = workers.b
        let first = try a.acquireLease(holder: "a", ttlSeconds: 10)
        #expect(first.holder == "a" && first.isHeld)
        #expect(first.expiresAt.nanoseconds == clock.now.nanoseconds + 10_000_000_000)
        #expect(throws: MetadataError.leaseHeld(try b.lease())) { try b.acquireLease(holder: "b", ttlSeconds: 10) }
        // Re-acquiring one's own lease bumps the token.
        let again = try a.acquireLease(holder: "a", ttlSeconds: 10)
        #expect(again.token > first.token)
        clock.advance(5)
        let renewed = try a.renewLease(holder: "a", token: again.token, ttlSeconds: 10)
        #expect(renewed.expiresAt.nanoseconds == clock.now.nanoseconds + 10_000_000_000)
        clock.advance(11)
        let taken = try b.acquireLease(holder: "b", ttlSeconds: 10)
        #expect(taken.holder == "b" && taken.token > again.token)
        #expect(throws: MetadataError.fenced(holder: "b")) { try a.renewLease(holder: "a", token: again.token, ttlSeconds: 10) }
        try a.releaseLease(holder: "a", token: again.token)  // not a's any more: no effect
        #expect(try b.lease().holder == "b")
        try b.releaseLease(holder: "b", token: taken.token)
        #expect(try a.lease().isHeld == false)
    }

    @Test(arguments: Backend.all) func everyTransactionOfAFencedWriterIsRefused(_ backend: Backend) throws {
        let clock = ManualClock()
        let workers = try pair(backend, clock)
        defer { workers.volume.remove() }
        let a = workers.a, b = workers.b
        let lease = try a.acquireLease(holder: "a", ttlSeconds: 10)
        a.setFence(Fence(holder: "a", token: lease.token))
        let f = try a.mknode(.root, "f", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        clock.advance(11)
        _ = try b.acquireLease(holder: "b", ttlSeconds: 10)
        #expect(throws: MetadataError.fenced(holder: "b")) {
            try a.mknode(.root, "g", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        }
        #expect(throws: MetadataError.fenced(holder: "b")) { try a.setattr(f.ino, AttrChanges(mode: 0o600), now: t1) }
        #expect(throws: MetadataError.fenced(holder: "b")) { try a.unlink(.root, "f", now: t1) }
        #expect(throws: MetadataError.fenced(holder: "b")) {
            try a.commitData(f.ino, chunks: [], drop: .from(0), size: 0, mtime: t1, now: t1)
        }
        #expect(try b.lookup(.root, "f").mode == fileMode)
        #expect(throws: MetadataError.notFound) { try b.lookup(.root, "g") }
        // Breaking bumps the token: b is fenced in turn.
        let broken = try a.breakLease()
        #expect(broken.holder == nil)
        b.setFence(Fence(holder: "b", token: LeaseToken(rawValue: broken.token.rawValue - 1)))
        #expect(throws: MetadataError.fenced(holder: nil)) { try b.unlink(.root, "f", now: t1) }
    }

    @Test(arguments: Backend.all) func theChangeFeedNamesWhatChanged(_ backend: Backend) throws {
        let clock = ManualClock()
        let workers = try pair(backend, clock)
        defer { workers.volume.remove() }
        let a = workers.a, b = workers.b
        let start = try a.changes(after: 0, limit: 100).latest
        let d = try a.mknode(.root, "d", mode: dirMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let f = try a.mknode(d.ino, "f", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        try a.setxattr(f.ino, "user.x", [1], mode: .any, now: t1)
        let batch = try b.changes(after: start, limit: 100)
        #expect(batch.changes.contains { $0.parent == .root && $0.name == "d" })
        #expect(batch.changes.contains { $0.parent == d.ino && $0.name == "f" })
        #expect(batch.changes.contains { $0.ino == f.ino })
        #expect(!batch.truncated)
        #expect(try b.changes(after: batch.latest, limit: 100).changes.isEmpty)
        #expect(try a.inodesWithXattrs() == [f.ino])
    }

    /// The change feed says whether nobody holds the lease; taking a lease nobody held
    /// while other mounts are attached asks the new holder to wait before changing
    /// anything (they may be trusting their caches), and nothing else does.
    @Test(arguments: Backend.all) func aFreeLeaseIsReportedAndTakingItWithOthersAttachedAsksForQuiet(_ backend: Backend) throws {
        let clock = ManualClock()
        let workers = try pair(backend, clock)
        defer { workers.volume.remove() }
        let a = workers.a, b = workers.b
        #expect(try b.changes(after: 0, limit: 10).leaseFree)
        // Alone: no one to wait for.
        let alone = try a.acquireLease(holder: "a", ttlSeconds: 10)
        #expect(!alone.quietFirst)
        #expect(try b.changes(after: 0, limit: 10).leaseFree == false)
        try a.releaseLease(holder: "a", token: alone.token)
        #expect(try b.changes(after: 0, limit: 10).leaseFree)
        let reader = Session(id: "b", host: "h", pid: 2, mountpoint: "/runpod-volume", device: "0:50", mode: "on-demand",
                             startedAt: t0, heartbeatAt: t0)
        try b.heartbeat(reader, staleSeconds: 60)
        let shared = try a.acquireLease(holder: "a", ttlSeconds: 10)
        #expect(shared.quietFirst)
        // Held, even expired: nobody trusted their cache meanwhile.
        #expect(try a.acquireLease(holder: "a", ttlSeconds: 10).quietFirst == false)
        clock.advance(11)
        #expect(try b.changes(after: 0, limit: 10).leaseFree == false)
        try b.heartbeat(reader, staleSeconds: 60)
        #expect(try b.acquireLease(holder: "b", ttlSeconds: 10).quietFirst == false)
        // Broken: free again.
        _ = try a.breakLease()
        #expect(try b.changes(after: 0, limit: 10).leaseFree)
        #expect(try a.acquireLease(holder: "a", ttlSeconds: 10).quietFirst)
    }

    @Test(arguments: Backend.all) func sessionsHeartbeatAndGoStale(_ backend: Backend) throws {
        let clock = ManualClock()
        let workers = try pair(backend, clock)
        defer { workers.volume.remove() }
        let a = workers.a, b = workers.b
        let one = Session(id: "one", host: "h", pid: 1, mountpoint: "/runpod-volume", device: "0:50", mode: "on-demand",
                          startedAt: t0, heartbeatAt: t0)
        var two = one
        two.id = "two"
        two.device = "0:51"
        try a.heartbeat(one, staleSeconds: 60)
        try b.heartbeat(two, staleSeconds: 60)
        #expect(try a.sessions().map(\.id) == ["one", "two"])
        clock.advance(61)
        try b.heartbeat(two, staleSeconds: 60)
        #expect(try a.sessions().map(\.id) == ["two"])
        try b.removeSession(id: "two")
        #expect(try a.sessions().isEmpty)
        // A mount with a short lease ttl asks for a short staleness: rows younger than
        // `Session.keptSeconds` stay all the same, since their mounts count on them.
        try a.heartbeat(one, staleSeconds: 60)
        clock.advance(10)
        try b.heartbeat(two, staleSeconds: 4)
        #expect(try a.sessions().map(\.id) == ["one", "two"])
        clock.advance(Session.keptSeconds)
        try b.heartbeat(two, staleSeconds: 4)
        #expect(try a.sessions().map(\.id) == ["two"])
    }
}
