#if canImport(Glibc)
import Glibc
#endif
import AsyncHTTPClient
import Foundation
import Metadata
import NIOCore
import VolumeBackends

/// A mistake a person made or a condition they can fix: printed as one line, exit 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Parses sizes like `10G`, `512M`, `4MiB`, `1T` (powers of 1024) or plain bytes.
func parseSize(_ text: String, what: String) throws -> UInt64 {
    let units: [(String, UInt64)] = [("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40), ("p", 1 << 50)]
    var digits = text.trimmingCharacters(in: .whitespaces).lowercased()
    var multiplier: UInt64 = 1
    for suffix in ["ib", "b"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
        digits.removeLast(suffix.count)
        break
    }
    if let (unit, value) = units.first(where: { digits.hasSuffix($0.0) }) {
        digits.removeLast(unit.count)
        multiplier = value
    }
    guard !digits.isEmpty, digits.allSatisfy({ $0.isNumber }), let number = UInt64(digits) else {
        throw CLIError("\(what) '\(text)' is not a size; write it like 10G, 512M or 4M")
    }
    let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
    guard !overflow else { throw CLIError("\(what) '\(text)' is too large") }
    guard bytes > 0 else { throw CLIError("\(what) must be greater than zero") }
    return bytes
}

func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// One line of /proc/self/mountinfo.
struct MountEntry {
    let mountpoint: String
    let fsType: String
    let source: String
    /// "major:minor": tells apart mounts at the same path in different mount namespaces.
    let device: String

    static func all() -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2 else { return nil }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 2 else { return nil }
            return MountEntry(mountpoint: unescape(String(left[4])), fsType: String(right[0]), source: unescape(String(right[1])),
                              device: String(left[2]))
        }
    }

    /// mountinfo writes space, tab, newline and backslash as octal escapes.
    static func unescape(_ text: String) -> String {
        var bytes: [UInt8] = []
        let raw = Array(text.utf8)
        var index = 0
        while index < raw.count {
            if raw[index] == UInt8(ascii: "\\"), index + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(index + 1)...(index + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(raw[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func find(_ mountpoint: String) -> MountEntry? {
        all().last { $0.mountpoint == mountpoint }
    }
}

/// Runs a program and waits for it; returns its exit status and what it wrote to stderr.
func runProgram(_ path: String, _ arguments: [String]) -> (status: Int32, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        return (127, "cannot run \(path): \(error)")
    }
    let data = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}

func findProgram(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":")
        + ["/usr/bin", "/bin", "/usr/local/bin"] {
        let candidate = "\(dir)/\(name)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Tells the service manager that started us (systemd, with `Type=notify`) how the
/// service is doing: the sd_notify protocol, one datagram to the socket $NOTIFY_SOCKET
/// names. Without that variable (any other start) it does nothing.
func notifyServiceManager(_ state: String) {
    guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    // A leading @ names a socket in the abstract namespace.
    if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return }
    defer { close(fd) }
    _ = state.withCString { text in
        withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), 0, $0, length) }
        }
    }
}

/// A line of progress on standard error, redrawn in place at most five times a second,
/// when standard error is a terminal; nothing otherwise (logs and pipes get the result).
final class ProgressLine {
    let terminal = isatty(STDERR_FILENO) == 1
    let started = ContinuousClock.now
    var drawnAt: ContinuousClock.Instant?

    func show(_ text: String, force: Bool = false) {
        guard terminal else { return }
        let now = ContinuousClock.now
        if !force, let drawnAt, now - drawnAt < .milliseconds(200) { return }
        drawnAt = now
        let line = "\r\(text)\u{1B}[K"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }

    /// fsck's progress: chunks checked of all, bytes, rate and time left.
    func fsck(_ checked: Int, _ total: Int, _ bytes: UInt64) {
        let elapsed = ContinuousClock.now - started
        let seconds = max(0.001, elapsed.inSeconds)
        let left = checked > 0 ? seconds / Double(checked) * Double(total - checked) : 0
        let percent = total > 0 ? Double(checked) * 100 / Double(total) : 100
        show("fsck: \(checked) of \(total) chunks (\(String(format: "%.0f", percent))%), \(formatBytes(bytes)) checked, "
             + "\(String(format: "%.0f", Double(bytes) / 1_048_576 / seconds)) MiB/s, \(String(format: "%.0f", left)) s left",
             force: checked == total)
    }

    /// Ends the line, so that what is printed next starts on a fresh one.
    func finish() {
        guard terminal, drawnAt != nil else { return }
        _ = "\r\u{1B}[K".withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }
}

/// POSTs to a daemon's private socket (`MetricsEndpoint`); whether it answered 200.
func post(_ socket: String, _ uri: String, seconds: Int64) -> Bool {
    guard let url = URL(httpURLWithSocketPath: socket, uri: uri),
          let request = try? HTTPClient.Request(url: url, method: .POST) else { return false }
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    defer { try? client.syncShutdown() }
    let response = try? client.execute(request: request, deadline: NIODeadline.now() + TimeAmount.seconds(seconds)).wait()
    return response?.status == .ok
}
