import CachedChunkStore
import ChunkStore
import Foundation
import LocalChunkStore
import Metadata
import PostgresMetadata
import S3ChunkStore
import SQLiteMetadata
import Testing
@testable import VolumeFS

/// Where a test volume lives: the embedded pair (SQLite and a directory), or the network
/// pair (PostgreSQL, and S3 behind a local cache) on the servers scripts/test.sh starts.
enum TestBackend: String, Sendable, CustomStringConvertible {
    case embedded
    case network

    var description: String { rawValue }

    static let environment = ProcessInfo.processInfo.environment

    /// The backends that can run here. Without servers the network one is skipped with a
    /// message, unless NETVOL_REQUIRE_SERVERS=1, which makes its tests fail instead.
    static let available: [TestBackend] = {
        let ready = environment["NETVOL_TEST_PG_URL"] != nil && environment["NETVOL_TEST_S3_ENDPOINT"] != nil
        if !ready && environment["NETVOL_REQUIRE_SERVERS"] != "1" {
            print("VolumeFS tests on PostgreSQL + S3 skipped: NETVOL_TEST_PG_URL or NETVOL_TEST_S3_ENDPOINT is unset (scripts/test.sh starts the servers)")
            return [.embedded]
        }
        return [.embedded, .network]
    }()

    struct Unavailable: Error, CustomStringConvertible {
        var description: String { "NETVOL_TEST_PG_URL and NETVOL_TEST_S3_ENDPOINT must be set: NETVOL_REQUIRE_SERVERS=1 requires the network tests to run" }
    }
}

/// One test volume's two halves, and how to open its metadata again (another mount).
struct TestStorage {
    let metadata: any Metadata
    let store: any ChunkStore
    let reopen: ((@Sendable () -> Timestamp)?) throws -> any Metadata
    let remove: () -> Void

    /// A new, empty volume.
    static func make(_ backend: TestBackend, chunkSize: Int, sizeLimit: UInt64, directory: String) throws -> TestStorage {
        switch backend {
        case .embedded:
            let path = directory + "/volume.db"
            let metadata = try SQLiteMetadata.create(path: path, chunkSize: chunkSize, sizeLimit: sizeLimit, now: VolumeFS.now())
            return TestStorage(metadata: metadata, store: try LocalChunkStore(root: directory + "/chunks"),
                               reopen: { clock in try SQLiteMetadata(path: path, clock: clock) },
                               remove: { try? FileManager.default.removeItem(atPath: directory) })
        case .network:
            let environment = TestBackend.environment
            guard let base = environment["NETVOL_TEST_PG_URL"], let endpoint = environment["NETVOL_TEST_S3_ENDPOINT"],
                  let credentials = S3Credentials.fromEnvironment() else { throw TestBackend.Unavailable() }
            let name = "vfs-" + UUID().uuidString.lowercased()
            let url = base + (base.contains("?") ? "&" : "?") + "volume=" + name
            let s3 = try S3ChunkStore(configuration: S3Configuration(endpoint: endpoint, bucket: "netvol-vfs-tests", prefix: name,
                                                                     credentials: credentials))
            try s3.createBucket()
            let metadata = try PostgresMetadata.create(url: url, chunkSize: chunkSize, sizeLimit: sizeLimit, store: [:],
                                                       now: VolumeFS.now())
            let cache = try CachedChunkStore(directory: directory + "/cache", capacityBytes: 64 << 20, backing: s3)
            return TestStorage(metadata: metadata, store: cache,
                               reopen: { clock in try PostgresMetadata(url: url, clock: clock) },
                               remove: {
                                   for object in (try? s3.list()) ?? [] { try? s3.delete(object) }
                                   try? metadata.destroy()
                                   metadata.close()
                                   try? FileManager.default.removeItem(atPath: directory)
                               })
        }
    }
}
