import Foundation
import Testing
@testable import ChunkStore
@testable import LocalChunkStore

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite final class LocalChunkStoreTests {
    let root = temporaryDirectory()

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func bytes(_ count: Int, seed: UInt8 = 7) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    }

    @Test func putThenReadGivesTheSameBytes() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        let data = bytes(200_000)
        try data.withUnsafeBytes { try store.put(id, $0) }
        var back = [UInt8](repeating: 0, count: data.count)
        let count = try back.withUnsafeMutableBytes { try store.read(id, offset: 0, into: $0) }
        #expect(count == data.count)
        #expect(back == data)
        #expect(try store.size(of: id) == data.count)
    }

    @Test func readPastTheEndIsShort() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        try bytes(100).withUnsafeBytes { try store.put(id, $0) }
        var back = [UInt8](repeating: 0, count: 64)
        let count = try back.withUnsafeMutableBytes { try store.read(id, offset: 60, into: $0) }
        #expect(count == 40)
        #expect(Array(back[0..<40]) == Array(bytes(100)[60..<100]))
    }

    @Test func objectsAreNeverOverwritten() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        try bytes(10).withUnsafeBytes { try store.put(id, $0) }
        #expect(throws: StoreError.exists(id)) {
            try bytes(10, seed: 1).withUnsafeBytes { try store.put(id, $0) }
        }
        var back = [UInt8](repeating: 0, count: 10)
        _ = try back.withUnsafeMutableBytes { try store.read(id, offset: 0, into: $0) }
        #expect(back == bytes(10))
    }

    @Test func missingObjectIsNotFound() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        var back = [UInt8](repeating: 0, count: 10)
        #expect(throws: StoreError.notFound(id)) {
            _ = try back.withUnsafeMutableBytes { try store.read(id, offset: 0, into: $0) }
        }
        try store.delete(id)  // deleting what is not there is fine
    }

    @Test func listFindsEveryObjectAndDeleteRemoves() throws {
        let store = try LocalChunkStore(root: root)
        let ids = (0..<20).map { _ in ObjectID.random() }
        for id in ids { try bytes(5).withUnsafeBytes { try store.put(id, $0) } }
        #expect(Set(try store.list()) == Set(ids))
        try store.delete(ids[0])
        #expect(Set(try store.list()) == Set(ids.dropFirst()))
        // Fanned out by the low byte of the id.
        #expect(FileManager.default.fileExists(atPath: root + "/" + ids[1].description.suffix(2) + "/" + ids[1].description))
    }

    @Test func objectIDHexRoundTrips() {
        let id = ObjectID(rawValue: 0xa3f)
        #expect(id.description == "0000000000000a3f")
        #expect(ObjectID(hex: id.description) == id)
        #expect(ObjectID(hex: "xyz") == nil)
    }

    @Test func checksumsCoverEveryBlockAndRoundTrip() {
        let data = bytes(BlockChecksums.blockSize * 2 + 10)
        let sums = data.withUnsafeBytes { BlockChecksums(of: $0) }
        #expect(sums.values.count == 3)
        #expect(BlockChecksums(encoded: sums.encoded) == sums)
        #expect(BlockChecksums(encoded: [1, 2, 3]) == nil)
        var changed = data
        changed[BlockChecksums.blockSize + 5] ^= 1
        let other = changed.withUnsafeBytes { BlockChecksums(of: $0) }
        #expect(other.values[0] == sums.values[0])
        #expect(other.values[1] != sums.values[1])
    }
}
