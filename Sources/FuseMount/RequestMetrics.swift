#if canImport(Glibc)
import Glibc
#endif
import CoreMetrics
import Synchronization

/// What the kernel asks of the mount, for the metrics system: requests and their latency
/// by operation, failures by errno, bytes read and written. The metric objects come from
/// whatever factory the process bootstrapped (the daemon's Prometheus registry; none, and
/// they cost next to nothing, in tests), made once per operation and kept.
final class RequestMetrics: Sendable {
    private struct PerOperation: Sendable {
        let requests: Counter
        let latency: Timer

        init(_ name: String) {
            requests = Counter(label: "netvol_requests_total", dimensions: [("op", name)])
            latency = Timer(label: "netvol_request_duration_seconds", dimensions: [("op", name)])
        }
    }
    /// Made up front and never changed, so that recording a request takes no lock: every
    /// FUSE request passes through here.
    private let known: [String: PerOperation]
    /// Operations missing from `knownOperations`, made at their first request.
    private let others = Mutex<[String: PerOperation]>([:])
    private let failures = Mutex<[Int32: Counter]>([:])
    let bytesRead = Counter(label: "netvol_read_bytes_total")
    let bytesWritten = Counter(label: "netvol_written_bytes_total")

    static let knownOperations = [
        "lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename",
        "link", "open", "create", "read", "write", "flush", "fsync", "opendir", "fsyncdir", "statfs",
        "setxattr", "getxattr", "listxattr", "removexattr", "fallocate",
    ]

    init() {
        known = Dictionary(uniqueKeysWithValues: Self.knownOperations.map { ($0, PerOperation($0)) })
    }

    func record(_ op: StaticString, since start: ContinuousClock.Instant, errno code: Int32) {
        let elapsed = ContinuousClock.now - start
        let name = op.description
        let metrics = known[name] ?? others.withLock { table in
            if let made = table[name] { return made }
            let made = PerOperation(name)
            table[name] = made
            return made
        }
        metrics.requests.increment()
        metrics.latency.recordNanoseconds(elapsed.inNanoseconds)
        guard code != 0 else { return }
        failures.withLock { table in
            if table[code] == nil {
                table[code] = Counter(label: "netvol_errors_total", dimensions: [("errno", Self.errnoName(code))])
            }
            return table[code]!
        }.increment()
    }

    /// The symbolic name of an errno, as people search for it (ENOTSUP is EOPNOTSUPP on Linux).
    static func errnoName(_ code: Int32) -> String { errnoNames[code] ?? "errno\(code)" }

    private static let errnoNames: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", EBADF: "EBADF", EACCES: "EACCES", EEXIST: "EEXIST",
        EXDEV: "EXDEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EFBIG: "EFBIG",
        ENOSPC: "ENOSPC", EROFS: "EROFS", EMLINK: "EMLINK", ERANGE: "ERANGE", ENAMETOOLONG: "ENAMETOOLONG",
        ENOTEMPTY: "ENOTEMPTY", ENODATA: "ENODATA", EOPNOTSUPP: "EOPNOTSUPP", ENOSYS: "ENOSYS",
        E2BIG: "E2BIG", EAGAIN: "EAGAIN", EINTR: "EINTR", ESTALE: "ESTALE",
    ]
}
