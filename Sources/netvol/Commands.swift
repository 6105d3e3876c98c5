#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import AsyncHTTPClient
import Foundation
import Metadata
import NIOCore
import VolumeBackends
import VolumeFS

struct Netvol: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netvol",
        abstract: "A persistent network volume, mounted with FUSE.",
        subcommands: [Create.self, Mount.self, Unmount.self, Status.self, Stats.self, Warmup.self, LeaseCommand.self, Resize.self, GC.self, Fsck.self,
                      List.self, Destroy.self])
}

/// How a command finds a network volume's secrets (an embedded volume needs none).
struct CredentialOptions: ParsableArguments {
    @Option(help: "A file (mode 0600) whose first line is the PostgreSQL password; PGPASSWORD and PGPASSFILE work too.")
    var passwordFile: String?

    @Option(help: "A file (mode 0600) with AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines; the environment works too.")
    var s3CredentialsFile: String?

    func load() throws -> Credentials {
        try Credentials.load(passwordFile: passwordFile.map(absolutePath), s3CredentialsFile: s3CredentialsFile.map(absolutePath))
    }

    /// The options again, for a daemon started with the same secrets.
    var arguments: [String] {
        (passwordFile.map { ["--password-file", absolutePath($0)] } ?? [])
            + (s3CredentialsFile.map { ["--s3-credentials-file", absolutePath($0)] } ?? [])
    }
}

/// Opens the volume a command was given, with its credentials.
func openVolume(_ argument: String, _ credentials: CredentialOptions, cache: CacheSettings? = nil) throws -> OpenedVolume {
    try VolumeAddress(argument).open(OpenOptions(credentials: credentials.load(), cache: cache))
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a volume: embedded in a directory, or shared through PostgreSQL and an object store.",
        discussion: """
            An embedded volume is a directory: netvol create /var/lib/netvol/models --size 50G
            A network volume is named by its metadata URL and keeps its chunks in S3:
              netvol create 'postgres://USER@HOST:PORT/DB?volume=models' --store s3://BUCKET/PREFIX --endpoint http://HOST:PORT --size 50G
            """)

    @Argument(help: "The volume: a directory (created if missing; must be empty), or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @Option(help: "Size limit, e.g. 10G. It can grow later, never shrink.")
    var size: String

    @Option(help: "Chunk size, a power of two from 64K to 64M.")
    var chunkSize: String = "4M"

    @Option(help: "Network volumes: where the chunks go, s3://BUCKET/PREFIX (a prefix of the volume's own).")
    var store: String?

    @Option(help: "Network volumes: the object store's URL, http://HOST:PORT or https://HOST.")
    var endpoint: String?

    @Option(help: "Network volumes: the object store's region.")
    var region: String = "us-east-1"

    @OptionGroup var credentials: CredentialOptions

    func run() throws {
        let sizeLimit = try parseSize(size, what: "--size")
        let chunk = try parseSize(chunkSize, what: "--chunk-size")
        guard chunk >= 64 << 10, chunk <= 64 << 20, chunk & (chunk - 1) == 0 else {
            throw CLIError("--chunk-size must be a power of two from 64K to 64M, not \(chunkSize)")
        }
        let address = try VolumeAddress(volume)
        var spec = VolumeSpec(sizeLimit: sizeLimit, chunkSize: Int(chunk), now: VolumeFS.now())
        if case .postgres = address {
            guard let store, let endpoint else {
                throw CLIError("a network volume needs --store s3://BUCKET/PREFIX and --endpoint URL")
            }
            guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
                throw CLIError("--endpoint '\(endpoint)' must start with http:// or https://")
            }
            spec.store = StoreSpec(url: store, endpoint: endpoint, region: region)
        } else if store != nil || endpoint != nil {
            throw CLIError("--store and --endpoint are for network volumes (postgres:// URLs); an embedded volume keeps its chunks in its directory")
        }
        try address.create(spec, credentials: credentials.load())
        let place = spec.store.map { ", chunks in \($0.url) at \($0.endpoint)" } ?? ""
        print("created volume \(address): size \(formatBytes(sizeLimit)), chunk size \(formatBytes(chunk))\(place)")
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the volumes of a PostgreSQL database.")

    @Argument(help: "The database: postgres://USER@HOST:PORT/DB.")
    var database: String

    @OptionGroup var credentials: CredentialOptions

    func run() throws {
        let volumes = try listVolumes(database, credentials: credentials.load())
        if volumes.isEmpty {
            print("no volumes in \(database)")
            return
        }
        let rows = [["NAME", "SIZE", "USED", "FILES", "WRITER"]] + volumes.map { volume in
            [volume.name, formatBytes(volume.sizeLimit), formatBytes(volume.usedBytes), "\(volume.inodes)",
             volume.leaseHolder ?? "-"]
        }
        let widths = (0..<5).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces))
        }
    }
}

struct Destroy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete a volume: its metadata and every chunk object. Refused while it is mounted.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @Flag(help: "Confirm: everything in the volume is lost.")
    var yes = false

    @OptionGroup var credentials: CredentialOptions

    func run() throws {
        let address = try VolumeAddress(volume)
        guard yes else { throw CLIError("destroying \(address) deletes every file in it; confirm with --yes") }
        try address.destroy(credentials: credentials.load()) { print($0) }
        print("destroyed \(address)")
    }
}

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Grow a volume's size limit.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @OptionGroup var credentials: CredentialOptions

    @Option(help: "New size limit, e.g. 100G; must not be smaller than the current one.")
    var size: String

    func run() throws {
        let newLimit = try parseSize(size, what: "--size")
        let metadata = try openVolume(volume, credentials).metadata
        let current = try metadata.settings().sizeLimit
        guard newLimit >= current else {
            throw CLIError("cannot shrink a volume: it is \(formatBytes(current)), asked for \(formatBytes(newLimit)); volumes can only grow")
        }
        try metadata.resize(sizeLimit: newLimit)
        print("volume \(try VolumeAddress(volume)) is now \(formatBytes(newLimit))")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a volume's size, usage and mounts.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @OptionGroup var credentials: CredentialOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let opened = try openVolume(volume, credentials)
        let address = opened.address
        let metadata = opened.metadata
        var lease = try metadata.lease()
        var sessions = try metadata.sessions()
        if lease.deferring, lease.isHeld, let writer = sessions.first(where: { $0.id == lease.holder }), commitClosed(by: writer) {
            lease = try metadata.lease()
            sessions = try metadata.sessions()
        }
        let usage = try metadata.usage()
        let free = usage.sizeLimit > usage.usedBytes ? usage.sizeLimit - usage.usedBytes : 0
        let caches = Dictionary(sessions.compactMap { session in localCache(of: session).map { (session.id, $0) } },
                                uniquingKeysWith: { first, _ in first })
        if json {
            var leaseObject: [String: Any] = ["token": lease.token.rawValue, "held": lease.isHeld]
            if lease.isHeld, let holder = lease.holder {
                leaseObject["holder"] = holder
                leaseObject["renewed_at"] = iso8601(lease.renewedAt)
                leaseObject["expires_at"] = iso8601(lease.expiresAt)
                leaseObject["expires_in_seconds"] = Double(lease.expiresAt.nanoseconds - lease.now.nanoseconds) / 1e9
            }
            var object: [String: Any] = [
                "volume": address.description, "size_bytes": usage.sizeLimit, "used_bytes": usage.usedBytes,
                "free_bytes": free, "files": usage.inodes, "chunk_size_bytes": usage.chunkSize,
                "lease": leaseObject,
                "mounts": sessions.map { session -> [String: Any] in
                    var mount: [String: Any] = [
                        "id": session.id, "host": session.host, "pid": session.pid, "mountpoint": session.mountpoint,
                        "mode": session.mode, "started_at": iso8601(session.startedAt),
                        "heartbeat_at": iso8601(session.heartbeatAt)]
                    if let cache = caches[session.id] {
                        // Names of their own: the volume's "used_bytes" stays the only one.
                        mount["cache"] = ["capacity_bytes": cache.capacity, "cached_bytes": cache.used, "cached_objects": cache.objects,
                                          "hits": cache.hits, "misses": cache.misses, "hit_ratio": cache.hitRatio as Any]
                    }
                    return mount
                },
            ]
            if let store = opened.storeDescription { object["store"] = store }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("volume:     \(address)")
        print("size:       \(formatBytes(usage.sizeLimit))")
        print("used:       \(formatBytes(usage.usedBytes))")
        print("free:       \(formatBytes(free))")
        print("files:      \(usage.inodes)")
        print("chunk size: \(formatBytes(UInt64(usage.chunkSize)))")
        if let store = opened.storeDescription { print("store:      \(store)") }
        if lease.isHeld, let holder = lease.holder {
            let seconds = Double(lease.expiresAt.nanoseconds - lease.now.nanoseconds) / 1e9
            print("writer:     \(holder) (token \(lease.token), renewed \(iso8601(lease.renewedAt)), expires in \(String(format: "%.1f", seconds)) s)")
        } else {
            print("writer:     none (token \(lease.token))")
        }
        print("mounts:     \(sessions.isEmpty ? "none" : "\(sessions.count)")")
        for session in sessions {
            print("  \(session.id)  \(session.mode)  pid \(session.pid) on \(session.host) at \(session.mountpoint), heartbeat \(iso8601(session.heartbeatAt))")
            if let cache = caches[session.id] {
                let ratio = cache.hitRatio.map { String(format: "%.0f%%", $0 * 100) } ?? "-"
                print("    cache: \(formatBytes(UInt64(cache.used))) used of \(formatBytes(UInt64(cache.capacity))), \(cache.objects) objects, hit ratio \(ratio) (\(cache.hits) hits, \(cache.misses) misses)")
            }
        }
    }

    struct CacheFigures {
        var capacity: Int
        var used: Int
        var objects: Int
        var hits: Int
        var misses: Int
        var hitRatio: Double? { hits + misses > 0 ? Double(hits) / Double(hits + misses) : nil }
    }

    /// Asks the writer's daemon, if it runs on this host, to commit the files it closed
    /// and keeps for its next group commit; whether it did.
    func commitClosed(by writer: Session) -> Bool {
        guard writer.host == hostName(), Unmount.daemon(serving: writer.mountpoint) == writer.pid else { return false }
        return post(metricsSocketPath(pid: writer.pid), "/commit", seconds: 30)
    }

    /// The local cache of a mount of this host (its daemon's metrics, from its socket);
    /// nil for mounts elsewhere, and for mounts without a cache (embedded volumes).
    func localCache(of session: Session) -> CacheFigures? {
        guard session.host == hostName(), Unmount.daemon(serving: session.mountpoint) == session.pid else { return nil }
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { try? client.syncShutdown() }
        guard let sample = try? Sample.fetch(metricsSocketPath(pid: session.pid), client: client),
              sample.total("netvol_cache_capacity_bytes") > 0 else { return nil }
        return CacheFigures(capacity: Int(sample.total("netvol_cache_capacity_bytes")), used: Int(sample.total("netvol_cache_bytes")),
                            objects: Int(sample.total("netvol_cache_objects")), hits: Int(sample.total("netvol_cache_hits_total")),
                            misses: Int(sample.total("netvol_cache_misses_total")))
    }
}

func iso8601(_ time: Timestamp) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: Date(timeIntervalSince1970: Double(time.nanoseconds) / 1e9))
}

struct LeaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lease", abstract: "Show the writer lease, or break it.",
        discussion: "Breaking bumps the lease token: the old holder can never commit again, and its buffered writes are lost.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @OptionGroup var credentials: CredentialOptions

    @Flag(name: .customLong("break"), help: "Revoke the lease from its holder.")
    var breakLease = false

    func run() throws {
        let metadata = try openVolume(volume, credentials).metadata
        let lease = try metadata.lease()
        guard breakLease else {
            if lease.isHeld, let holder = lease.holder {
                print("held by \(holder), token \(lease.token), expires \(iso8601(lease.expiresAt))")
            } else {
                print("free (token \(lease.token))")
            }
            return
        }
        let broken = try metadata.breakLease()
        if lease.isHeld, let holder = lease.holder {
            printError("warning: revoked the writer lease of \(holder); writes it had not committed are lost, and it gets 'Read-only file system' until it takes the lease again")
        }
        print("lease broken; token is now \(broken.token)")
    }
}

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gc", abstract: "Delete chunk objects nothing refers to, after a grace period.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @OptionGroup var credentials: CredentialOptions

    @Option(help: "Seconds an unreferenced object is kept before it is deleted.")
    var grace: Int = 600

    func run() throws {
        guard grace >= 0, grace <= 315_360_000 else { throw CLIError("--grace must be between 0 and 315360000 seconds (ten years)") }
        let opened = try openVolume(volume, credentials)
        let (metadata, store) = (opened.metadata, opened.store)
        // Objects no transaction ever referred to (a crash between upload and commit)
        // become garbage now and go after the grace period like any other.
        let adopted = try adoptStrays(metadata: metadata, store: store)
        var options = VolumeOptions()
        options.gcGraceSeconds = grace
        let volumeFS = try VolumeFS(metadata: metadata, store: store, options: options)
        let line = ProgressLine()
        let deleted = try volumeFS.collectGarbage { deleted in line.show("gc: \(deleted) objects deleted") }
        line.finish()
        print("deleted \(deleted) objects; \(adopted) unreferenced objects will go after the grace period")
    }
}

struct Fsck: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that every chunk the metadata refers to is present and intact; with --repair, mend what is not.",
        discussion: """
            --repair drops damaged or missing chunks from their files (those ranges then read as zeros; every \
            file keeps its size, and each one is listed), purges nameless inodes, deletes objects nothing \
            refers to, and recounts the usage. It takes the writer lease while it works and is refused while \
            a mount holds it.
            """)

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @Flag(help: "Repair what the check finds, and report every change.")
    var repair = false

    @OptionGroup var credentials: CredentialOptions

    func run() throws {
        let opened = try openVolume(volume, credentials)
        guard repair else {
            let line = ProgressLine()
            let report = try FsckReport.check(metadata: opened.metadata, store: opened.store, progress: line.fsck)
            line.finish()
            for problem in report.problems { print(problem) }
            var leftovers: [String] = []
            if !report.orphans.isEmpty { leftovers.append("\(report.orphans.count) nameless inodes") }
            if !report.strays.isEmpty { leftovers.append("\(report.strays.count) objects nothing refers to") }
            if !leftovers.isEmpty {
                print("left by a crash (normal; gc or fsck --repair reclaims them): \(leftovers.joined(separator: ", "))")
            }
            print("checked \(report.inodes) inodes, \(report.chunks) chunks: \(report.problems.isEmpty ? "no problems" : "\(report.problems.count) problems")")
            if !report.problems.isEmpty { throw ExitCode(1) }
            return
        }
        let (found, repaired) = try Self.repair(opened)
        for (chunk, path) in repaired.dropped {
            let name = path ?? "nameless inode \(chunk.ino.rawValue)"
            print("\(name): bytes \(chunk.range.lowerBound)-\(chunk.range.upperBound) now read as zeros (chunk \(chunk.index), \(chunk.location) \(chunk.why))")
        }
        if repaired.purgedOrphans > 0 { print("purged \(repaired.purgedOrphans) nameless inodes") }
        if repaired.deletedStrays > 0 { print("deleted \(repaired.deletedStrays) objects nothing referred to") }
        if let usage = repaired.usage {
            print("usage was recorded as \(usage.recorded) bytes; recounted to \(usage.counted)")
        }
        let changes = repaired.dropped.count + repaired.purgedOrphans + repaired.deletedStrays + (repaired.usage == nil ? 0 : 1)
        print("checked \(found.inodes) inodes, \(found.chunks) chunks: \(changes == 0 ? "nothing to repair" : "\(changes) repairs, \(repaired.dropped.count) damaged chunks dropped from \(Set(repaired.dropped.map(\.chunk.ino)).count) files")")
    }

    // Out of line, and matching on the Result: a typed catch pattern in `run` trips an
    // ownership verifier crash of the Swift 6.3 optimizer.
    @inline(never)
    static func repair(_ opened: OpenedVolume) throws -> (FsckReport, RepairReport) {
        let line = ProgressLine()
        defer { line.finish() }
        let outcome = Result { () throws(FSError) in
            try FsckReport.repair(metadata: opened.metadata, store: opened.store, holder: "fsck-repair-" + defaultHolderName(),
                                  progress: line.fsck)
        }
        switch outcome {
        case .success(let reports):
            return reports
        case .failure(.readOnly(let holder)):
            throw CLIError("\(opened.address) is mounted for writing by \(holder ?? "another worker"); unmount it (or wait until its lease expires) before repairing")
        case .failure(let error):
            throw error
        }
    }
}
