import CachedChunkStore
import ChunkStore
import LocalChunkStore
import Foundation
import S3ChunkStore
import Synchronization
import Testing

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func bytes(_ count: Int, seed: UInt8 = 7) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
}

func environment(_ name: String) -> String? {
    ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
}

/// Every ChunkStore implementation the conformance suite runs against.
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case local
    case s3
    case cacheOverS3

    var testDescription: String { rawValue }
}

/// A store for one test, with whatever it takes to clean up after it.
final class StoreFixture {
    let store: any ChunkStore
    private let cleanup: () -> Void

    init(_ store: any ChunkStore, cleanup: @escaping () -> Void) {
        self.store = store
        self.cleanup = cleanup
    }

    deinit { cleanup() }
}

/// The S3 server the tests use: `NETVOL_TEST_S3_ENDPOINT` and the AWS_* credentials
/// (scripts/lib/seaweedfs.sh sets all three).
enum TestS3 {
    static let bucket = "netvol-test"

    /// The server's endpoint, or nil after failing the test (when servers are required,
    /// as scripts/test.sh says) or saying why it is skipped.
    static func endpoint(for what: String) -> String? {
        if let endpoint = environment("NETVOL_TEST_S3_ENDPOINT") { return endpoint }
        if environment("NETVOL_REQUIRE_SERVERS") == "1" {
            Issue.record("NETVOL_TEST_S3_ENDPOINT is not set, and NETVOL_REQUIRE_SERVERS=1 requires the S3 tests to run (\(what))")
        } else {
            print("skipping \(what): NETVOL_TEST_S3_ENDPOINT is not set (scripts/test.sh starts a SeaweedFS for it)")
        }
        return nil
    }

    static var credentials: S3Credentials {
        S3Credentials.fromEnvironment() ?? S3Credentials(accessKeyID: "missing", secretAccessKey: "missing")
    }

    static func configuration(endpoint: String, prefix: String, listPageSize: Int = 1000) -> S3Configuration {
        S3Configuration(endpoint: endpoint, bucket: bucket, prefix: prefix, credentials: credentials,
                        deadline: .seconds(20), listPageSize: listPageSize)
    }

    /// Made once per test process; every test then works under a prefix of its own.
    static let bucketCreated: Result<Void, StoreError> = {
        guard let endpoint = environment("NETVOL_TEST_S3_ENDPOINT") else { return .success(()) }
        do throws(StoreError) {
            let store = try S3ChunkStore(configuration: configuration(endpoint: endpoint, prefix: ""))
            defer { store.close() }
            try store.createBucket()
            return .success(())
        } catch {
            return .failure(error)
        }
    }()

    /// A store under a fresh prefix, emptied and closed when the fixture goes.
    static func store(for what: String, listPageSize: Int = 1000) throws -> S3ChunkStore? {
        guard let endpoint = endpoint(for: what) else { return nil }
        try bucketCreated.get()
        return try S3ChunkStore(configuration: configuration(endpoint: endpoint, prefix: "t/\(UUID().uuidString)",
                                                             listPageSize: listPageSize))
    }
}

extension S3ChunkStore {
    /// Deletes whatever a test left under its prefix.
    func removeEverything() {
        for id in (try? list()) ?? [] { try? delete(id) }
        close()
    }
}

extension Backend {
    /// A fresh, empty store of this kind, or nil when this kind cannot run here (the
    /// reason is printed, or recorded as a failure when servers are required).
    func open(listPageSize: Int = 1000, test: String = #function) throws -> StoreFixture? {
        switch self {
        case .local:
            let root = temporaryDirectory()
            return StoreFixture(try LocalChunkStore(root: root)) { try? FileManager.default.removeItem(atPath: root) }
        case .s3:
            guard let store = try TestS3.store(for: "\(test) on \(rawValue)", listPageSize: listPageSize) else { return nil }
            return StoreFixture(store) { store.removeEverything() }
        case .cacheOverS3:
            guard let s3 = try TestS3.store(for: "\(test) on \(rawValue)", listPageSize: listPageSize) else { return nil }
            let directory = temporaryDirectory()
            let cache = try CachedChunkStore(directory: directory + "/cache", capacityBytes: 64 << 20, backing: s3)
            return StoreFixture(cache) {
                s3.removeEverything()
                try? FileManager.default.removeItem(atPath: directory)
            }
        }
    }
}

/// Wraps a store and counts what reaches it, to tell a cache hit from a fetch.
final class CountingStore: ChunkStore {
    let inner: any ChunkStore
    let puts = Atomic<Int>(0)
    let reads = Atomic<Int>(0)
    let sizes = Atomic<Int>(0)
    /// Slows `size(of:)` down, so that concurrent fetches surely overlap.
    let sizeDelay: Duration

    init(_ inner: any ChunkStore, sizeDelay: Duration = .zero) {
        self.inner = inner
        self.sizeDelay = sizeDelay
    }

    var backendCalls: Int { reads.load(ordering: .relaxed) + sizes.load(ordering: .relaxed) }

    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        puts.add(1, ordering: .relaxed)
        try inner.put(id, bytes)
    }

    func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        reads.add(1, ordering: .relaxed)
        return try inner.read(id, offset: offset, into: buffer)
    }

    func prefetch(_ id: ObjectID) {}

    func size(of id: ObjectID) throws(StoreError) -> Int {
        sizes.add(1, ordering: .relaxed)
        if sizeDelay > .zero { Thread.sleep(forTimeInterval: sizeDelay.inSeconds) }
        return try inner.size(of: id)
    }

    func delete(_ id: ObjectID) throws(StoreError) { try inner.delete(id) }
    func list() throws(StoreError) -> [ObjectID] { try inner.list() }
}

/// Wraps a store whose reads deliver the first half of what was asked, tell it, and hold
/// the rest back until `release` is signalled: a download still under way.
final class TricklingStore: ChunkStore {
    let inner: any ChunkStore
    let reads = Atomic<Int>(0)
    let release = DispatchSemaphore(value: 0)

    init(_ inner: any ChunkStore) { self.inner = inner }

    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) { try inner.put(id, bytes) }

    func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try readReportingSize(id, offset: offset, into: buffer, progress: nil).count
    }

    func readReportingSize(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                           progress: ReadProgress?) throws(StoreError) -> (count: Int, objectSize: Int?) {
        reads.add(1, ordering: .relaxed)
        let size = try inner.size(of: id)
        let count = try inner.read(id, offset: offset, into: buffer)
        let half = count / 2
        // Bytes past the first half are not there yet: a reader copying them early would see zeros.
        UnsafeMutableRawBufferPointer(rebasing: buffer[half..<count]).initializeMemory(as: UInt8.self, repeating: 0)
        progress?(half, size)
        release.wait()
        _ = try inner.read(id, offset: offset, into: buffer)
        progress?(count, size)
        return (count, size)
    }

    func prefetch(_ id: ObjectID) {}
    func size(of id: ObjectID) throws(StoreError) -> Int { try inner.size(of: id) }
    func delete(_ id: ObjectID) throws(StoreError) { try inner.delete(id) }
    func list() throws(StoreError) -> [ObjectID] { try inner.list() }
}

extension ChunkStore {
    func put(_ id: ObjectID, _ data: [UInt8]) throws {
        try data.withUnsafeBytes { buffer in try put(id, buffer) }
    }

    /// `count` bytes from `offset`, as many as the store returned; then waits for what
    /// the store finishes after (a cache's download), so that its state can be checked.
    func read(_ id: ObjectID, offset: Int = 0, count: Int) throws -> [UInt8] {
        let back = try readNow(id, offset: offset, count: count)
        _ = settle(timeout: 60)
        return back
    }

    /// `count` bytes from `offset` as soon as the store returns them.
    func readNow(_ id: ObjectID, offset: Int = 0, count: Int) throws -> [UInt8] {
        var back = [UInt8](repeating: 0, count: count)
        let got = try back.withUnsafeMutableBytes { buffer in try read(id, offset: offset, into: buffer) }
        return Array(back[0..<got])
    }
}
