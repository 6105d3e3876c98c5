#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Metadata
import VolumeBackends
import VolumeFS

struct Netvol: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netvol",
        abstract: "A persistent network volume, mounted with FUSE.",
        subcommands: [Create.self, Mount.self, Unmount.self, Status.self, LeaseCommand.self, Resize.self, GC.self, Fsck.self])
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create an embedded volume in a directory.")

    @Argument(help: "The volume: a directory (created if missing; must be empty).")
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
        let address = VolumeAddress(volume)
        try address.create(VolumeSpec(sizeLimit: sizeLimit, chunkSize: Int(chunk), now: VolumeFS.now()))
        print("created volume \(address): size \(formatBytes(sizeLimit)), chunk size \(formatBytes(chunk))")
    }
}

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Grow a volume's size limit.")

    @Argument(help: "The volume: its directory.")
    var volume: String

    @Option(help: "New size limit, e.g. 100G; must not be smaller than the current one.")
    var size: String

    func run() throws {
        let newLimit = try parseSize(size, what: "--size")
        let metadata = try VolumeAddress(volume).open().metadata
        let current = try metadata.settings().sizeLimit
        guard newLimit >= current else {
            throw CLIError("cannot shrink a volume: it is \(formatBytes(current)), asked for \(formatBytes(newLimit)); volumes can only grow")
        }
        try metadata.resize(sizeLimit: newLimit)
        print("volume \(VolumeAddress(volume)) is now \(formatBytes(newLimit))")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a volume's size, usage and mounts.")

    @Argument(help: "The volume: its directory.")
    var volume: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let address = VolumeAddress(volume)
        let metadata = try address.open().metadata
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
                "volume": address.description, "size_bytes": usage.sizeLimit, "used_bytes": usage.usedBytes,
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
        print("volume:     \(address)")
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

    @Argument(help: "The volume: its directory.")
    var volume: String

    @Flag(name: .customLong("break"), help: "Revoke the lease from its holder.")
    var breakLease = false

    func run() throws {
        let metadata = try VolumeAddress(volume).open().metadata
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

    @Argument(help: "The volume: its directory.")
    var volume: String

    @Option(help: "Seconds an unreferenced object is kept before it is deleted.")
    var grace: Int = 600

    func run() throws {
        guard grace >= 0, grace <= 315_360_000 else { throw CLIError("--grace must be between 0 and 315360000 seconds (ten years)") }
        let opened = try VolumeAddress(volume).open()
        let (metadata, store) = (opened.metadata, opened.store)
        // Objects no transaction ever referred to (a crash between upload and commit)
        // become garbage now and go after the grace period like any other.
        let adopted = try adoptStrays(metadata: metadata, store: store)
        var options = VolumeOptions()
        options.gcGraceSeconds = grace
        let volumeFS = try VolumeFS(metadata: metadata, store: store, options: options)
        let deleted = try volumeFS.collectGarbage()
        print("deleted \(deleted) objects; \(adopted) unreferenced objects will go after the grace period")
    }
}

struct Fsck: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that every chunk the metadata refers to is present and intact.")

    @Argument(help: "The volume: its directory.")
    var volume: String

    func run() throws {
        let opened = try VolumeAddress(volume).open()
        let report = try FsckReport.check(metadata: opened.metadata, store: opened.store)
        for problem in report.problems { print(problem) }
        print("checked \(report.inodes) inodes, \(report.chunks) chunks: \(report.problems.isEmpty ? "no problems" : "\(report.problems.count) problems")")
        if !report.problems.isEmpty { throw ExitCode(1) }
    }
}
