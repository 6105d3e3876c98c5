import ChunkStore
import LocalChunkStore
import Foundation
import FuseMount
import Logging
import Metadata
import SQLiteMetadata
import VolumeFS
#if canImport(Glibc)
import Glibc
#endif

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

/// A volume mounted on a fresh temporary mountpoint, served by this process on a thread
/// of its own. `unmount` (or deinit) always unmounts, bounded by a timeout.
final class MountedVolume {
    let directory: String
    let mountpoint: String
    var mount: FuseMount?
    let finished = DispatchSemaphore(value: 0)
    let keepDirectory: Bool

    init(directory: String? = nil, keepDirectory: Bool = false, chunkSize: Int = 64 * 1024, sizeLimit: UInt64 = 1 << 40,
         pollMicroseconds: Int = 0) throws {
        self.directory = directory ?? temporaryDirectory()
        self.keepDirectory = keepDirectory
        mountpoint = temporaryDirectory()
        let databasePath = self.directory + "/" + SQLiteMetadata.fileName
        let metadata = FileManager.default.fileExists(atPath: databasePath)
            ? try SQLiteMetadata(path: databasePath)
            : try SQLiteMetadata.create(path: databasePath, chunkSize: chunkSize, sizeLimit: sizeLimit, now: VolumeFS.now())
        let store = try LocalChunkStore(root: self.directory + "/chunks")
        var logger = Logger(label: "netvol-test")
        logger.logLevel = .warning
        let volume = try VolumeFS(metadata: metadata, store: store, logger: logger)
        var options = MountOptions(mountpoint: mountpoint)
        options.handleSignals = false
        options.source = "netvol-test"
        options.pollMicroseconds = pollMicroseconds
        let mount = FuseMount(volume: volume, options: options, logger: logger)
        try mount.mount()
        self.mount = mount
        let finished = self.finished
        Thread.detachNewThread {
            mount.run()
            finished.signal()
        }
    }

    /// Unmounts and waits (at most 30 s) for the serving thread to finish.
    func unmount() {
        guard mount != nil else { return }
        mount = nil
        if runQuietly("/bin/fusermount3", ["-u", mountpoint]) != 0 {
            _ = runQuietly("/bin/fusermount3", ["-uz", mountpoint])
        }
        if finished.wait(timeout: .now() + 30) == .timedOut {
            _ = umount2(mountpoint, Int32(MNT_DETACH))
        }
    }

    deinit {
        unmount()
        try? FileManager.default.removeItem(atPath: mountpoint)
        if !keepDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    func path(_ relative: String) -> String { mountpoint + "/" + relative }
}

@discardableResult
func runQuietly(_ program: String, _ arguments: [String]) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { return -1 }
    process.waitUntilExit()
    return process.terminationStatus
}

/// Runs a shell command line; returns its status and output.
func shell(_ command: String) -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The errno of a failed call, or 0 when it succeeded.
func errnoOf(_ result: @autoclosure () -> Int32) -> Int32 {
    result() < 0 ? errno : 0
}

func writeFile(_ path: String, _ bytes: [UInt8], flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC) throws {
    let fd = open(path, flags, 0o644)
    guard fd >= 0 else { throw TestFailure(description: "open \(path): errno \(errno)") }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        guard n > 0 else { throw TestFailure(description: "write \(path): errno \(errno)") }
        done += n
    }
}

func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw TestFailure(description: "open \(path): errno \(errno)") }
    defer { close(fd) }
    return try readAll(fd)
}

func readAll(_ fd: Int32) throws -> [UInt8] {
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n < 0 { throw TestFailure(description: "read: errno \(errno)") }
        if n == 0 { return result }
        result += buffer[0..<n]
    }
}

func statOf(_ path: String) throws -> stat {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw TestFailure(description: "stat \(path): errno \(errno)") }
    return st
}

func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 7) &+ seed }
}
