#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ChunkStore
import LocalChunkStore
import Foundation
import Metadata
import SQLiteMetadata
import VolumeFS

struct Netvol: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netvol",
        abstract: "A persistent network volume, mounted with FUSE.",
        subcommands: [Create.self, Mount.self, Unmount.self, Status.self, LeaseCommand.self, Resize.self, GC.self, Fsck.self])
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create an embedded volume in a directory.")

    @Argument(help: "Directory for the volume (created if missing; must be empty).")
    var volume: String

    @Option(help: "Size limit, e.g. 10G. It can grow later, never shrink.")
    var size: String

    @Option(help: "Chunk size, a power of two from 64K to 64M.")
    var chunkSize: String = "4M"

    func run() throws {
        let sizeLimit = try parseSize(size, what: "--size")
        let chunk = try parseSize(chunkSize, what: "--chunk-size")
        guard chunk >= 64 << 10, chunk <= 64 << 20, chunk & (chunk - 1) == 0 else {
            throw CLIError("--chunk-size must be a power of two from 64K to 64M, not \(chunkSize)")
        }
        let dir = VolumeDirectory(volume)
        let files = FileManager.default
        if files.fileExists(atPath: dir.path) {
            guard isDirectory(dir.path) else { throw CLIError("\(dir.path) exists and is not a directory") }
            if files.fileExists(atPath: dir.databasePath) { throw CLIError("\(dir.path) is already a netvol volume") }
            let contents = (try? files.contentsOfDirectory(atPath: dir.path)) ?? []
            guard contents.isEmpty else { throw CLIError("\(dir.path) is not empty; a volume needs a directory of its own") }
        }
        var created = false
        do {
            if !files.fileExists(atPath: dir.path) {
                let parent = (dir.path as NSString).deletingLastPathComponent
                try files.createDirectory(atPath: parent, withIntermediateDirectories: true)
                guard mkdir(dir.path, VolumeDirectory.directoryMode) == 0 else {
                    throw CLIError("cannot create \(dir.path): \(String(cString: strerror(errno)))")
                }
                created = true
            } else {
                // An empty directory someone made for the volume: private before anything is in it.
                guard chmod(dir.path, VolumeDirectory.directoryMode) == 0 else {
                    throw CLIError("cannot make \(dir.path) private: \(String(cString: strerror(errno)))")
                }
            }
            _ = try LocalChunkStore(root: dir.chunksPath)
            _ = try SQLiteMetadata.create(path: dir.databasePath, chunkSize: Int(chunk), sizeLimit: sizeLimit, now: VolumeFS.now())
        } catch {
            try? files.removeItem(atPath: dir.chunksPath)
            try? files.removeItem(atPath: dir.databasePath)
            if created { try? files.removeItem(atPath: dir.path) }
            throw CLIError("cannot create volume \(dir.path): \(error)")
        }
        print("created volume \(dir.path): size \(formatBytes(sizeLimit)), chunk size \(formatBytes(chunk))")
    }
}

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Grow a volume's size limit.")

    @Argument(help: "The volume directory.")
    var volume: String

    @Option(help: "New size limit, e.g. 100G; must not be smaller than the current one.")
    var size: String

    func run() throws {
        let newLimit = try parseSize(size, what: "--size")
        let (metadata, _) = try VolumeDirectory(volume).open()
        let current = try metadata.settings().sizeLimit
        guard newLimit >= current else {
            throw CLIError("cannot shrink a volume: it is \(formatBytes(current)), asked for \(formatBytes(newLimit)); volumes can only grow")
        }
        try metadata.resize(sizeLimit: newLimit)
        print("volume \(VolumeDirectory(volume).path) is now \(formatBytes(newLimit))")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a volume's size, usage and mounts.")

    @Argument(help: "The volume directory.")
    var volume: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let dir = VolumeDirectory(volume)
        let (metadata, _) = try dir.open()
        let usage = try metadata.usage()
        let free = usage.sizeLimit > usage.usedBytes ? usage.sizeLimit - usage.usedBytes : 0
        let lease = try metadata.lease()
        let sessions = try metadata.sessions()
        if json {
            var leaseObject: [String: Any] = ["token": lease.token.rawValue, "held": lease.isHeld]
            if lease.isHeld, let holder = lease.holder {
                leaseObject["holder"] = holder
                leaseObject["renewed_at"] = iso8601(lease.renewedAt)
                leaseObject["expires_at"] = iso8601(lease.expiresAt)
                leaseObject["expires_in_seconds"] = Double(lease.expiresAt.nanoseconds - lease.now.nanoseconds) / 1e9
            }
            let object: [String: Any] = [
                "volume": dir.path, "size_bytes": usage.sizeLimit, "used_bytes": usage.usedBytes,
                "free_bytes": free, "files": usage.inodes, "chunk_size_bytes": usage.chunkSize,
                "lease": leaseObject,
                "mounts": sessions.map { session -> [String: Any] in
                    ["id": session.id, "host": session.host, "pid": session.pid, "mountpoint": session.mountpoint,
                     "mode": session.mode, "started_at": iso8601(session.startedAt),
                     "heartbeat_at": iso8601(session.heartbeatAt)]
                },
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("volume:     \(dir.path)")
        print("size:       \(formatBytes(usage.sizeLimit))")
        print("used:       \(formatBytes(usage.usedBytes))")
        print("free:       \(formatBytes(free))")
        print("files:      \(usage.inodes)")
        print("chunk size: \(formatBytes(UInt64(usage.chunkSize)))")
        if lease.isHeld, let holder = lease.holder {
            let seconds = Double(lease.expiresAt.nanoseconds - lease.now.nanoseconds) / 1e9
            print("writer:     \(holder) (token \(lease.token), renewed \(iso8601(lease.renewedAt)), expires in \(String(format: "%.1f", seconds)) s)")
        } else {
            print("writer:     none (token \(lease.token))")
        }
        print("mounts:     \(sessions.isEmpty ? "none" : "\(sessions.count)")")
        for session in sessions {
            print("  \(session.id)  \(session.mode)  pid \(session.pid) on \(session.host) at \(session.mountpoint), heartbeat \(iso8601(session.heartbeatAt))")
        }
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

    @Argument(help: "The volume directory.")
    var volume: String

    @Flag(name: .customLong("break"), help: "Revoke the lease from its holder.")
    var breakLease = false

    func run() throws {
        let (metadata, _) = try VolumeDirectory(volume).open()
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

    @Argument(help: "The volume directory.")
    var volume: String

    @Option(help: "Seconds an unreferenced object is kept before it is deleted.")
    var grace: Int = 600

    func run() throws {
        guard grace >= 0, grace <= 315_360_000 else { throw CLIError("--grace must be between 0 and 315360000 seconds (ten years)") }
        let (metadata, store) = try VolumeDirectory(volume).open()
        // Objects no transaction ever referred to (a crash between upload and commit)
        // become garbage now and go after the grace period like any other.
        let known = try metadata.knownObjects()
        let strays = try store.list().filter { !known.contains($0) }
        let adopted = try metadata.adoptStrays(strays, now: VolumeFS.now())
        var options = VolumeOptions()
        options.gcGraceSeconds = grace
        let volumeFS = try VolumeFS(metadata: metadata, store: store, options: options)
        let deleted = try volumeFS.collectGarbage()
        print("deleted \(deleted) objects; \(adopted) unreferenced objects will go after the grace period")
    }
}

struct Fsck: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that every chunk the metadata refers to is present and intact.")

    @Argument(help: "The volume directory.")
    var volume: String

    func run() throws {
        let dir = VolumeDirectory(volume)
        let (metadata, store) = try dir.open()
        let report = try FsckReport.check(metadata: metadata, store: store)
        for problem in report.problems { print(problem) }
        print("checked \(report.inodes) inodes, \(report.chunks) chunks: \(report.problems.isEmpty ? "no problems" : "\(report.problems.count) problems")")
        if !report.problems.isEmpty { throw ExitCode(1) }
    }
}

/// What `fsck` found.
struct FsckReport {
    var inodes = 0
    var chunks = 0
    var problems: [String] = []

    static func check(metadata: SQLiteMetadata, store: any ChunkStore) throws -> FsckReport {
        var report = FsckReport()
        report.inodes = Int(try metadata.usage().inodes)
        var used: UInt64 = 0
        for (ino, refs) in try metadata.allChunks() {
            for ref in refs {
                report.chunks += 1
                used += UInt64(ref.length)
                let place = "inode \(ino.rawValue) chunk \(ref.index): \(ref.location)"
                do {
                    let bytes = try contents(of: ref, in: store)
                    if bytes.count != ref.length {
                        report.problems.append("\(place) has \(bytes.count) bytes, expected \(ref.length)")
                    } else if bytes.withUnsafeBytes({ BlockChecksums(of: $0) }) != ref.checksums {
                        report.problems.append("\(place) does not match its checksums")
                    }
                } catch {
                    report.problems.append("\(place): \(error)")
                }
            }
        }
        let recorded = try metadata.usage().usedBytes
        if recorded != used {
            report.problems.append("usage is recorded as \(recorded) bytes but chunks add up to \(used)")
        }
        return report
    }

    /// The stored bytes of a chunk, as many as there are.
    // Kept out of line: inlined into `check`, the switch over the chunk's location trips
    // an ownership verifier crash of the Swift 6.3 optimizer.
    @inline(never)
    static func contents(of ref: ChunkRef, in store: any ChunkStore) throws -> [UInt8] {
        switch ref.location {
        case .inline(let bytes):
            return bytes
        case .object(let object):
            var bytes = [UInt8](repeating: 0, count: ref.length)
            let got = try bytes.withUnsafeMutableBytes { try store.read(object, offset: 0, into: $0) }
            return Array(bytes[0..<got])
        }
    }
}
