import Foundation
@testable import Metadata
@testable import SQLiteMetadata
@testable import PostgresMetadata
import Testing

/// A fresh volume of one backend, with what the conformance suite needs around it.
final class TestVolume {
    let meta: any Metadata
    /// Opens the same volume again, as another worker would (with its own clock).
    let reopen: ((@Sendable () -> Timestamp)?) throws -> any Metadata
    /// Creates a volume of the same name again: must fail with `.exists`.
    let createAgain: () throws -> Void
    /// Opens a volume that does not exist: must fail.
    let openMissing: () throws -> Void
    /// Deletes the change feed up to and including a sequence number, as a long-running
    /// writer's renewals do.
    let pruneFeed: (Int64) throws -> Void
    /// Adds to the recorded usage behind the backend's back, as damage would.
    let skewUsage: (Int64) throws -> Void
    private let cleanup: () -> Void

    init(meta: any Metadata, reopen: @escaping ((@Sendable () -> Timestamp)?) throws -> any Metadata,
         createAgain: @escaping () throws -> Void, openMissing: @escaping () throws -> Void,
         pruneFeed: @escaping (Int64) throws -> Void, skewUsage: @escaping (Int64) throws -> Void,
         cleanup: @escaping () -> Void) {
        self.meta = meta; self.reopen = reopen; self.createAgain = createAgain; self.openMissing = openMissing
        self.pruneFeed = pruneFeed; self.skewUsage = skewUsage; self.cleanup = cleanup
    }

    /// Deletes the volume; tests call it in a `defer`, which also keeps the volume alive.
    func remove() { cleanup() }

    func file(_ name: FileName, in parent: InodeNumber = .root) throws -> Attr {
        try meta.mknode(parent, name, mode: fileMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
    }

    func dir(_ name: FileName, in parent: InodeNumber = .root) throws -> Attr {
        try meta.mknode(parent, name, mode: dirMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
    }
}

/// A metadata implementation the conformance suite runs against.
struct Backend: Sendable, CustomStringConvertible {
    let name: String
    /// A new volume (chunk size 4096, size limit 1 MiB); with a clock, `meta` uses it.
    let make: @Sendable ((@Sendable () -> Timestamp)?) throws -> TestVolume
    var description: String { name }

    func volume(clock: (@Sendable () -> Timestamp)? = nil) throws -> TestVolume { try make(clock) }

    static let sqlite = Backend(name: "SQLite") { clock in
        let directory = temporaryDirectory()
        let path = directory + "/volume.db"
        let created = try SQLiteMetadata.create(path: path, chunkSize: 4096, sizeLimit: 1 << 20, now: t0)
        let meta: any Metadata = clock == nil ? created : try SQLiteMetadata(path: path, clock: clock)
        return TestVolume(
            meta: meta,
            reopen: { clock in try SQLiteMetadata(path: path, clock: clock) },
            createAgain: { _ = try SQLiteMetadata.create(path: path, chunkSize: 4096, sizeLimit: 1 << 20, now: t0) },
            openMissing: { _ = try SQLiteMetadata(path: path + ".missing") },
            pruneFeed: { sequence in
                try created.pool.write { db in try db.execute(sql: "DELETE FROM changes WHERE seq <= ?", arguments: [sequence]) }
            },
            skewUsage: { delta in
                try created.pool.write { db in
                    try db.execute(sql: "UPDATE settings SET value = value + ? WHERE key = 'used_bytes'", arguments: [delta])
                }
            },
            cleanup: { try? FileManager.default.removeItem(atPath: directory) })
    }

    static let postgres = Backend(name: "PostgreSQL") { clock in
        let url = try PostgresServer.volumeURL()
        let created = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        let meta: PostgresMetadata = clock == nil ? created : try PostgresMetadata(url: url, clock: clock)
        return TestVolume(
            meta: meta,
            reopen: { clock in try PostgresMetadata(url: url, clock: clock) },
            createAgain: { _ = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0) },
            openMissing: { _ = try PostgresMetadata(url: url + "-missing") },
            pruneFeed: { sequence in
                try created.pool.transaction { tx in
                    _ = try tx.execute("DELETE FROM changes WHERE volume = $1 AND seq <= $2", [.int(created.id), .int(sequence)])
                }
            },
            skewUsage: { delta in
                try created.pool.transaction { tx in
                    _ = try tx.execute("UPDATE volumes SET used_bytes = used_bytes + $2 WHERE id = $1", [.int(created.id), .int(delta)])
                }
            },
            cleanup: {
                try? meta.destroy()
                meta.close()
                created.close()
            })
    }

    /// Every backend that can run here; PostgreSQL only with a server (see PostgresServer).
    static let all: [Backend] = PostgresServer.available ? [.sqlite, .postgres] : [.sqlite]
}

/// The PostgreSQL server the tests use: `NETVOL_TEST_PG_URL` (scripts/test.sh starts one).
/// Without it the PostgreSQL tests are skipped, saying so, unless
/// `NETVOL_REQUIRE_SERVERS=1`, which makes them fail.
enum PostgresServer {
    static let environment = ProcessInfo.processInfo.environment
    static let baseURL = environment["NETVOL_TEST_PG_URL"].flatMap { $0.isEmpty ? nil : $0 }
    static let required = environment["NETVOL_REQUIRE_SERVERS"] == "1"

    static let available: Bool = {
        if baseURL == nil && !required {
            print("PostgreSQL metadata tests skipped: NETVOL_TEST_PG_URL is unset (scripts/test.sh starts a server)")
        }
        return baseURL != nil || required
    }()

    struct Unavailable: Error, CustomStringConvertible {
        var description: String { "NETVOL_TEST_PG_URL is unset but NETVOL_REQUIRE_SERVERS=1: the PostgreSQL tests need a server" }
    }

    static func url() throws -> String {
        guard let baseURL else { throw Unavailable() }
        return baseURL
    }

    /// The URL of a volume no test has used: every test makes its own in the shared database.
    static func volumeURL(_ extra: String = "") throws -> String {
        let base = try url()
        let name = "t-" + UUID().uuidString.lowercased()
        return base + (base.contains("?") ? "&" : "?") + "volume=" + name + extra
    }
}

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

let t0 = Timestamp(seconds: 1_700_000_000, nanoseconds: 0)
let t1 = Timestamp(seconds: 1_700_000_100, nanoseconds: 5)
let fileMode = FileType.regular.rawValue | 0o644
let dirMode = FileType.directory.rawValue | 0o755

func ref(_ index: Int, _ length: Int) -> ChunkRef {
    let bytes = [UInt8](repeating: 1, count: length)
    return ChunkRef(index: index, object: .random(), length: length, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
}
