// Maintenance of a volume that needs no mount: checking every chunk (fsck) and adopting
// objects no transaction ever referred to (gc). Typed on the two protocols, so every
// backend gets them and tests reach them.

public import ChunkStore
public import Metadata

/// What `fsck` found.
public struct FsckReport: Sendable {
    public var inodes = 0
    public var chunks = 0
    public var problems: [String] = []

    /// Reads every chunk the metadata refers to and checks its length and checksums, and
    /// that the recorded usage is the sum of the chunks.
    public static func check(metadata: any Metadata, store: any ChunkStore) throws(FSError) -> FsckReport {
        var report = FsckReport()
        let usage = try VolumeFS.lift { () throws(MetadataError) in try metadata.usage() }
        report.inodes = Int(usage.inodes)
        var used: UInt64 = 0
        for (ino, refs) in try VolumeFS.lift({ () throws(MetadataError) in try metadata.allChunks() }) {
            for ref in refs {
                report.chunks += 1
                used += UInt64(ref.length)
                let place = "inode \(ino.rawValue) chunk \(ref.index): \(ref.location)"
                do {
                    let bytes = try contents(of: ref, in: store)
                    if bytes.count != ref.length {
                        report.problems.append("\(place) has \(bytes.count) bytes, expected \(ref.length)")
                    } else if bytes.withUnsafeBytes({ BlockChecksums(of: $0) }) != ref.checksums {
                        store.discard(for: ref)
                        report.problems.append("\(place) does not match its checksums")
                    }
                } catch {
                    report.problems.append("\(place): \(error)")
                }
            }
        }
        let recorded = try VolumeFS.lift { () throws(MetadataError) in try metadata.usage().usedBytes }
        if recorded != used {
            report.problems.append("usage is recorded as \(recorded) bytes but chunks add up to \(used)")
        }
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

extension ChunkStore {
    /// `discard` for a stored chunk; inline chunks have no copy to drop.
    func discard(for ref: ChunkRef) {
        if let object = ref.object { discard(object) }
    }
}

/// Makes objects of the store that no transaction ever referred to (an upload that a
/// crash cut off before its commit) garbage as of `now`, so they go after the grace
/// period like any other; returns how many were new.
public func adoptStrays(metadata: any Metadata, store: any ChunkStore, now: Timestamp = VolumeFS.now()) throws(FSError) -> Int {
    let known = try VolumeFS.lift { () throws(MetadataError) in try metadata.knownObjects() }
    let listed: [ObjectID]
    do {
        listed = try store.list()
    } catch {
        throw .storeFailure(error)
    }
    let strays = listed.filter { !known.contains($0) }
    return try VolumeFS.lift { () throws(MetadataError) in try metadata.adoptStrays(strays, now: now) }
}
