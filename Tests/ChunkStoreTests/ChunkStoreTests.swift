import Dispatch
import Foundation
import Synchronization
import Testing
@testable import ChunkStore
@testable import LocalChunkStore

/// What every ChunkStore promises, checked against each implementation.
@Suite struct ChunkStoreConformanceTests {
    @Test(arguments: Backend.allCases)
    func putThenReadGivesTheSameBytes(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        let data = bytes(200_000)
        try store.put(id, data)
        #expect(try store.read(id, count: data.count) == data)
        #expect(try store.read(id, offset: 70_000, count: 1000) == Array(data[70_000..<71_000]))
        #expect(try store.size(of: id) == data.count)
    }

    /// A store may lend bytes it holds in memory, or decline; what it lends is what a
    /// read gives, and a store that declines does not call the body.
    @Test(arguments: Backend.allCases)
    func bytesLentFromMemoryAreWhatAReadGives(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        let data = bytes(300_000)
        try store.put(id, data)
        store.prefetch(id)
        _ = store.settle(timeout: 30)
        for (offset, count) in [(0, 4096), (65_536, 100_000), (299_990, 100), (300_000, 10)] {
            var lent: [UInt8]?
            let answered = store.withBytesInMemory(id, offset: offset, count: count) { lent = Array($0) }
            let expected = Array(data[min(offset, data.count)..<min(offset + count, data.count)])
            if let lent {
                #expect(answered == lent.count)
                #expect(lent == expected)
            } else {
                #expect(answered == nil || (answered == 0 && expected.isEmpty))
            }
        }
        #expect(store.withBytesInMemory(ObjectID.random(), offset: 0, count: 10) { _ in Issue.record("a missing object was lent") } == nil)
    }

    @Test(arguments: Backend.allCases)
    func readPastTheEndIsShort(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        try store.put(id, bytes(100))
        #expect(try store.read(id, offset: 60, count: 64) == Array(bytes(100)[60..<100]))
        #expect(try store.read(id, offset: 100, count: 10) == [])
        #expect(try store.read(id, offset: 150, count: 10) == [])
    }

    @Test(arguments: Backend.allCases)
    func emptyObjectsExist(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        try store.put(id, [])
        #expect(try store.size(of: id) == 0)
        #expect(try store.read(id, count: 10) == [])
    }

    @Test(arguments: Backend.allCases)
    func objectsAreNeverOverwritten(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        try store.put(id, bytes(10))
        #expect(throws: StoreError.exists(id)) { try store.put(id, bytes(10, seed: 1)) }
        #expect(try store.read(id, count: 10) == bytes(10))
    }

    @Test(arguments: Backend.allCases)
    func missingObjectIsNotFound(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        #expect(throws: StoreError.notFound(id)) { try store.read(id, count: 10) }
        #expect(throws: StoreError.notFound(id)) { try store.size(of: id) }
        try store.delete(id)  // deleting what is not there is fine
    }

    @Test(arguments: Backend.allCases)
    func listFindsEveryObjectAcrossPagesAndDeleteRemoves(_ backend: Backend) throws {
        // Pages of 7 keys make 20 objects take three pages where the store pages.
        guard let fixture = try backend.open(listPageSize: 7) else { return }
        let store = fixture.store
        let ids = (0..<20).map { _ in ObjectID.random() }
        for id in ids { try store.put(id, bytes(5)) }
        #expect(Set(try store.list()) == Set(ids))
        try store.delete(ids[0])
        #expect(Set(try store.list()) == Set(ids.dropFirst()))
        #expect(throws: StoreError.notFound(ids[0])) { try store.read(ids[0], count: 5) }
    }

    @Test(arguments: Backend.allCases)
    func racingPutsOfOneIDLetExactlyOneWin(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let id = ObjectID.random()
        let outcomes = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { index in
            do {
                try store.put(id, bytes(100_000, seed: UInt8(index)))
                outcomes.withLock { $0.append("won \(index)") }
            } catch StoreError.exists {
                outcomes.withLock { $0.append("exists") }
            } catch {
                outcomes.withLock { $0.append("\(error)") }
            }
        }
        let all = outcomes.withLock { $0 }
        let winners = all.filter { $0.hasPrefix("won") }
        #expect(winners.count == 1 && all.filter { $0 == "exists" }.count == 7, "\(all)")
        if let winner = winners.first, let seed = UInt8(winner.dropFirst(4)) {
            #expect(try store.read(id, count: 100_000) == bytes(100_000, seed: seed))
        }
    }

    @Test(arguments: Backend.allCases)
    func concurrentPutsAndReadsFromManyThreads(_ backend: Backend) throws {
        guard let fixture = try backend.open() else { return }
        let store = fixture.store
        let ids = (0..<32).map { _ in ObjectID.random() }
        @Sendable func data(_ index: Int) -> [UInt8] { bytes(50_000 + index, seed: UInt8(index)) }
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: ids.count) { index in
            do {
                try store.put(ids[index], data(index))
                if try store.read(ids[index], count: data(index).count) != data(index) {
                    failures.withLock { $0.append("object \(index) read back different bytes") }
                }
            } catch {
                failures.withLock { $0.append("object \(index): \(error)") }
            }
        }
        // Then every thread reads objects others wrote (no one reads an object before
        // its put returned: the layer above never does).
        DispatchQueue.concurrentPerform(iterations: ids.count) { index in
            for other in [(index + 1) % ids.count, (index + 7) % ids.count] {
                do {
                    if try store.read(ids[other], offset: 1000, count: 2000) != Array(data(other)[1000..<3000]) {
                        failures.withLock { $0.append("object \(other) read by another thread is wrong") }
                    }
                } catch {
                    failures.withLock { $0.append("object \(other) read by another thread: \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(Set(try store.list()) == Set(ids))
    }
}

@Suite final class LocalChunkStoreTests {
    let root = temporaryDirectory()

    deinit { try? FileManager.default.removeItem(atPath: root) }

    @Test func objectsAreFannedOutByTheLowByteOfTheID() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        try store.put(id, bytes(5))
        #expect(FileManager.default.fileExists(atPath: root + "/" + id.description.suffix(2) + "/" + id.description))
    }

    /// Objects are written past the page cache, padded to a whole block and cut back:
    /// every length reads back exactly, from buffers the store reuses.
    @Test func objectsOfEveryLengthAreWrittenExactlyWherePagesAreBypassed() throws {
        let store = try LocalChunkStore(root: root)
        // Whether this filesystem took O_DIRECT is not asserted (tmpfs, say, may refuse it);
        // the lengths must come out right either way.
        for length in [1, 511, 4095, 4096, 4097, 65_536 + 3, (1 << 20) + 4095, 4 << 20, 3 << 20, 5] {
            let id = ObjectID.random()
            let data = bytes(length, seed: UInt8(length % 251))
            try store.put(id, data)
            #expect(try store.size(of: id) == length)
            #expect(try store.read(id, count: length + 10) == data)
        }
        #expect(store.buffers.withLock { $0.count } <= LocalChunkStore.buffersKept)
        #expect(store.buffers.withLock { $0.allSatisfy { Int(bitPattern: $0.bytes.baseAddress) % DirectIO.alignment == 0 } })
    }

    /// A page-aligned chunk (what a volume's write buffers hold) is written from the
    /// caller's memory: no aligned copy is taken for it.
    @Test func alignedObjectsAreWrittenWithoutACopy() throws {
        let store = try LocalChunkStore(root: root)
        for size in [DirectIO.alignment, 4 << 20] {
            let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: DirectIO.alignment)
            defer { aligned.deallocate() }
            let data = bytes(size, seed: 7)
            aligned.copyBytes(from: data)
            let id = ObjectID.random()
            try store.put(id, UnsafeRawBufferPointer(aligned))
            #expect(try store.size(of: id) == size)
            #expect(try store.read(id, count: size + 10) == data)
        }
        #expect(store.buffers.withLock { $0.isEmpty })
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

    @Test func discardIsANoOpForAStoreWithoutLocalCopies() throws {
        let store = try LocalChunkStore(root: root)
        let id = ObjectID.random()
        try store.put(id, bytes(5))
        store.discard(id)
        #expect(try store.read(id, count: 5) == bytes(5))
    }
}
