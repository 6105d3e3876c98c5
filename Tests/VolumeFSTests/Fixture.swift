import ChunkStore
import LocalChunkStore
import Foundation
import Metadata
import SQLiteMetadata
@testable import VolumeFS

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A volume in a temporary directory, opened as a mount would open it, except that no
/// background thread renews the writer lease: the lease lasts an hour, so that a long
/// randomized run on a slow machine never outlives it.
final class Fixture {
    let directory = temporaryDirectory()
    let storage: TestStorage
    var metadata: any Metadata { storage.metadata }
    var store: any ChunkStore { storage.store }
    var volume: VolumeFS
    let options: VolumeOptions

    init(chunkSize: Int = 16 * 1024, sizeLimit: UInt64 = 1 << 30, options: VolumeOptions = VolumeOptions(),
         backend: TestBackend = .embedded) throws {
        storage = try TestStorage.make(backend, chunkSize: chunkSize, sizeLimit: sizeLimit, directory: directory)
        var options = options
        options.leaseTTLSeconds = 3600
        self.options = options
        volume = try VolumeFS(metadata: storage.metadata, store: storage.store, options: options)
    }

    deinit { storage.remove() }

    /// A new VolumeFS over the same metadata and chunks, as after unmount and mount.
    func remount() throws {
        volume.shutdown()
        volume = try VolumeFS(metadata: try storage.reopen(nil), store: store, options: options)
    }

    func create(_ name: String, in parent: InodeNumber = .root) throws -> (Attr, FileHandleID) {
        try volume.create(parent, FileName(name), mode: 0o644, flags: O_RDWR | O_EXCL, uid: 0, gid: 0)
    }

    func write(_ ino: InodeNumber, _ fh: FileHandleID, _ offset: UInt64, _ bytes: [UInt8]) throws -> Int {
        try bytes.withUnsafeBytes { try volume.write(ino, fh, offset: offset, $0) }
    }
}

/// Lists `dir` as the kernel does, through `handle` if any, `perReply` entries to a reply,
/// each reply continuing at the offset the last entry gave.
func list(_ volume: VolumeFS, _ dir: InodeNumber, handle: FileHandleID?, plus: Bool = false,
          perReply: Int = 7) throws -> [Listing] {
    var entries: [Listing] = []
    var offset: Int64 = 0
    while true {
        var batch = 0
        try volume.readdir(dir, handle: handle, offset: offset, plus: plus) { listing in
            if batch == perReply { return false }
            batch += 1
            entries.append(listing)
            offset = listing.nextOffset
            return true
        }
        if batch == 0 { return entries }
    }
}

/// A small deterministic generator (SplitMix64), so a failing seed replays exactly.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
}
