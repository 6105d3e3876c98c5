// Maintenance of a volume that needs no mount: checking every chunk (fsck), repairing
// what a check finds (fsck --repair), and adopting objects no transaction ever referred
// to (gc). Typed on the two protocols, so every backend gets them and tests reach them.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import ChunkStore
public import Metadata

/// A chunk whose bytes are missing or do not match what the metadata recorded.
public struct DamagedChunk: Sendable, Equatable {
    public var ino: InodeNumber
    public var index: Int
    public var location: ChunkLocation
    /// The bytes of the file the chunk holds.
    public var range: Range<UInt64>
    public var why: String
}

/// What `fsck` found.
public struct FsckReport: Sendable {
    public var inodes = 0
    public var chunks = 0
    public var damaged: [DamagedChunk] = []
    /// Usage as recorded, when it disagrees with what the chunks add up to.
    public var usageMismatch: (recorded: UInt64, counted: UInt64)?
    /// Inodes without a name, kept for handles a crash dropped: purged when a mount next
    /// takes the writer lease, or by a repair.
    public var orphans: [InodeNumber] = []
    /// Objects of the store that nothing in the metadata knows: uploads a crash cut off
    /// before their commit. gc adopts them; a repair deletes them.
    public var strays: [ObjectID] = []

    /// Problems are what can lose or misreport data; orphans and strays are the normal
    /// leftovers of a crash and are only reported.
    public var problems: [String] {
        damaged.map { "inode \($0.ino.rawValue) chunk \($0.index) (bytes \($0.range.lowerBound)-\($0.range.upperBound)): \($0.location) \($0.why)" }
            + (usageMismatch.map { ["usage is recorded as \($0.recorded) bytes but chunks add up to \($0.counted)"] } ?? [])
    }

    /// Reads every chunk the metadata refers to and checks its length and checksums, that
    /// the recorded usage is the sum of the chunks, and what the store holds that nothing
    /// knows.
    ///
    /// - Parameter progress: told, after each chunk, how many of how many are checked and
    ///   how many bytes they held.
    public static func check(metadata: any Metadata, store: any ChunkStore,
                             progress: ((_ checked: Int, _ total: Int, _ bytes: UInt64) -> Void)? = nil) throws(FSError) -> FsckReport {
        var report = FsckReport()
        let usage = try VolumeFS.lift { () throws(MetadataError) in try metadata.usage() }
        report.inodes = Int(usage.inodes)
        let chunkSize = UInt64(usage.chunkSize)
        var used: UInt64 = 0
        let all = try VolumeFS.lift({ () throws(MetadataError) in try metadata.allChunks() })
        let total = all.reduce(0) { $0 + $1.1.count }
        for (ino, refs) in all {
            for ref in refs {
                defer { progress?(report.chunks, total, used) }
                report.chunks += 1
                used += UInt64(ref.length)
                let start = UInt64(ref.index) * chunkSize
                func damage(_ why: String) {
                    report.damaged.append(DamagedChunk(ino: ino, index: ref.index, location: ref.location,
                                                       range: start..<(start + UInt64(ref.length)), why: why))
                }
                do {
                    let bytes = try contents(of: ref, in: store)
                    if bytes.count != ref.length {
                        damage("has \(bytes.count) bytes, expected \(ref.length)")
                    } else if bytes.withUnsafeBytes({ BlockChecksums(of: $0) }) != ref.checksums {
                        store.discard(for: ref)
                        damage("does not match its checksums")
                    }
                } catch .notFound {
                    damage("is missing")
                } catch {
                    damage("cannot be read: \(error)")
                }
            }
        }
        let recorded = try VolumeFS.lift { () throws(MetadataError) in try metadata.usage().usedBytes }
        if recorded != used { report.usageMismatch = (recorded, used) }
        report.orphans = try VolumeFS.lift { () throws(MetadataError) in try metadata.orphans() }
        report.strays = try unknownObjects(metadata: metadata, store: store)
        return report
    }

    /// The stored bytes of a chunk, as many as there are.
    // Kept out of line: inlined into `check`, the switch over the chunk's location trips
    // an ownership verifier crash of the Swift 6.3 optimizer.
    @inline(never)
    static func contents(of ref: ChunkRef, in store: any ChunkStore) throws(StoreError) -> [UInt8] {
        switch ref.location {
        case .inline(let bytes):
            return bytes
        case .object(let object):
            var bytes = [UInt8](repeating: 0, count: ref.length)
            let got: Result<Int, StoreError> = bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(StoreError) in try store.read(object, offset: 0, into: buffer) }
            }
            return Array(bytes[0..<(try got.get())])
        }
    }
}

/// What `fsck --repair` changed.
public struct RepairReport: Sendable {
    /// Damaged chunks dropped from their files' maps: those ranges now read as zeros, and
    /// the files keep their sizes. With the path of each file, where it has one.
    public var dropped: [(chunk: DamagedChunk, path: String?)] = []
    public var purgedOrphans = 0
    public var deletedStrays = 0
    /// Usage before and after it was recounted, when the two disagreed.
    public var usage: (recorded: UInt64, counted: UInt64)?
}

extension FsckReport {
    /// Repairs what `check` found: damaged chunks leave their files' maps (the range
    /// reads as zeros, the size stays), nameless inodes are purged, objects nothing
    /// knows are deleted, and the usage is recounted.
    ///
    /// It takes the writer lease for the time it works, so no mount writes meanwhile, and
    /// refuses when a mount holds it.
    ///
    /// - Throws: `.readOnly(holder:)` (EROFS) when another worker holds the writer lease.
    public static func repair(metadata: any Metadata, store: any ChunkStore, holder: String,
                              progress: ((_ checked: Int, _ total: Int, _ bytes: UInt64) -> Void)? = nil) throws(FSError) -> (FsckReport, RepairReport) {
        let ttl = 120.0
        let lease: Lease
        do {
            lease = try metadata.acquireLease(holder: holder, ttlSeconds: ttl)
        } catch .leaseHeld(let current) {
            throw .readOnly(holder: current.holder)
        } catch {
            throw .metadata(error)
        }
        // Mounts may be answering opens from their caches until then.
        if lease.quietFirst { Thread.sleep(forTimeInterval: Lease.quietSeconds) }
        let fence = Fence(holder: holder, token: lease.token)
        metadata.setFence(fence)
        defer {
            try? metadata.releaseLease(holder: holder, token: fence.token)
            metadata.setFence(nil)
        }
        func renew() throws(FSError) {
            _ = try VolumeFS.lift { () throws(MetadataError) in try metadata.renewLease(holder: holder, token: fence.token, ttlSeconds: ttl) }
        }
        // Checking a large volume takes longer than the lease lasts: it is renewed as the
        // check goes.
        var renewedAt = ContinuousClock.now
        let found = try check(metadata: metadata, store: store) { checked, total, bytes in
            if ContinuousClock.now - renewedAt > .seconds(ttl / 4) {
                renewedAt = .now
                try? renew()
            }
            progress?(checked, total, bytes)
        }
        var repaired = RepairReport()
        let paths = try VolumeFS.lift { () throws(MetadataError) in try pathsOf(Set(found.damaged.map(\.ino)), in: metadata) }
        for (done, chunk) in found.damaged.enumerated() {
            if done % 256 == 0 { try renew() }
            let attr = try VolumeFS.lift { () throws(MetadataError) in try metadata.getattr(chunk.ino) }
            _ = try VolumeFS.lift { () throws(MetadataError) in
                try metadata.commitData(chunk.ino, chunks: [], drop: chunk.index..<(chunk.index + 1), size: attr.size,
                                        mtime: nil, now: VolumeFS.now())
            }
            repaired.dropped.append((chunk, paths[chunk.ino]))
        }
        try renew()
        try VolumeFS.lift { () throws(MetadataError) in try metadata.purge(found.orphans, now: VolumeFS.now()) }
        repaired.purgedOrphans = found.orphans.count
        try renew()
        // Nothing uploads while we hold the lease, so what nothing knows is no upload in
        // flight: it goes now.
        for stray in try unknownObjects(metadata: metadata, store: store) {
            do throws(StoreError) {
                try store.delete(stray)
                repaired.deletedStrays += 1
            } catch {
                throw .storeFailure(error)
            }
        }
        let usage = try VolumeFS.lift { () throws(MetadataError) in try metadata.recountUsage() }
        if usage.recorded != usage.counted { repaired.usage = usage }
        return (found, repaired)
    }

    /// Paths of `inodes`, found by walking the tree from the root (a file with several
    /// names gets one of them; a nameless one none).
    static func pathsOf(_ inodes: Set<InodeNumber>, in metadata: any Metadata) throws(MetadataError) -> [InodeNumber: String] {
        guard !inodes.isEmpty else { return [:] }
        var found: [InodeNumber: String] = [:]
        var queue: [(InodeNumber, String)] = [(.root, "")]
        var seen: Set<InodeNumber> = [.root]
        while let (dir, path) = queue.popLast(), found.count < inodes.count {
            var cookie: Int64 = 0
            while true {
                let entries = try metadata.readdir(dir, after: cookie, limit: 1024)
                guard let last = entries.last else { break }
                cookie = last.cookie
                for entry in entries {
                    let child = path + "/" + entry.name.description
                    if inodes.contains(entry.attr.ino) && found[entry.attr.ino] == nil { found[entry.attr.ino] = child }
                    if entry.attr.isDirectory && seen.insert(entry.attr.ino).inserted { queue.append((entry.attr.ino, child)) }
                }
            }
        }
        return found
    }
}

extension ChunkStore {
    /// `discard` for a stored chunk; inline chunks have no copy to drop.
    func discard(for ref: ChunkRef) {
        if let object = ref.object { discard(object) }
    }
}

/// Objects of the store the metadata does not know (neither a chunk's nor garbage).
func unknownObjects(metadata: any Metadata, store: any ChunkStore) throws(FSError) -> [ObjectID] {
    let known = try VolumeFS.lift { () throws(MetadataError) in try metadata.knownObjects() }
    let listed: [ObjectID]
    do {
        listed = try store.list()
    } catch {
        throw .storeFailure(error)
    }
    return listed.filter { !known.contains($0) }
}

/// Makes objects of the store that no transaction ever referred to (an upload that a
/// crash cut off before its commit) garbage from now on, so they go after the grace
/// period like any other; returns how many were new.
public func adoptStrays(metadata: any Metadata, store: any ChunkStore) throws(FSError) -> Int {
    let strays = try unknownObjects(metadata: metadata, store: store)
    return try VolumeFS.lift { () throws(MetadataError) in try metadata.adoptStrays(strays) }
}
