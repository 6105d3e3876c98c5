#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import FuseMount
import Logging
import Metadata
import VolumeBackends
import VolumeFS

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount a volume (in the background unless --foreground).",
        discussion: "Returns once the mount answers, so the next line of a script can use it.")

    @Argument(help: "The volume: its directory, or postgres://USER@HOST:PORT/DB?volume=NAME.")
    var volume: String

    @Argument(help: "Where to mount it (created if missing).")
    var mountpoint: String = "/runpod-volume"

    @Flag(help: "Stay attached and log to stderr.")
    var foreground = false

    @Option(name: .customShort("o"), help: "FUSE mount options, comma separated (allow_other, ro, ...).")
    var options: [String] = []

    @Option(help: "Log file of the background daemon (default: VOLUME/netvol.log).")
    var logFile: String?

    @Flag(help: "Log every failed operation.")
    var debug = false

    @Option(help: "Seconds a replaced chunk is kept for readers that may still use it.")
    var gcGrace: Int = 600

    @Flag(help: "Never write; every change answers 'Read-only file system'.")
    var readOnly = false

    @Flag(help: "Take the writer lease now and keep it; fail if another worker holds it.")
    var writer = false

    @Flag(help: "With --writer: wait for the lease instead of failing.")
    var wait = false

    @Option(help: "Seconds the writer lease lasts without renewal.")
    var leaseTtl: Double = 15

    @Option(help: "Seconds without writes after which an on-demand mount gives the lease back.")
    var leaseIdle: Double = 30

    @Option(help: "Network volumes: the local cache of chunk objects (default /var/cache/netvol/<volume>).")
    var cacheDir: String?

    @Option(help: "Network volumes: the local cache's size limit, e.g. 20G.")
    var cacheSize: String = "10G"

    @Option(help: "Network volumes: seconds a call to the database or the object store keeps retrying before the operation fails with EIO.")
    var timeout: Double = OpenOptions.defaultTimeoutSeconds

    @Option(help: "Microseconds a FUSE thread that answered a request stays awake for the next one (0: it sleeps at once); for hosts with cores to spare.")
    var pollUs: Int = 0

    @Option(name: .customLong("metrics"), help: "Serve Prometheus metrics at http://HOST:PORT/metrics (PORT alone: 127.0.0.1).")
    var metricsAddress: String?

    @OptionGroup var credentials: CredentialOptions

    @Option(help: .hidden)
    var readyFd: Int32?

    func validate() throws {
        guard gcGrace >= 0, gcGrace <= 315_360_000 else { throw ValidationError("--gc-grace must be between 0 and 315360000 seconds (ten years)") }
        guard !(readOnly && writer) else { throw ValidationError("--read-only and --writer exclude each other") }
        guard !wait || writer else { throw ValidationError("--wait goes with --writer") }
        guard leaseTtl >= 1, leaseTtl <= 3600 else { throw ValidationError("--lease-ttl must be between 1 and 3600 seconds") }
        guard leaseIdle >= 0, leaseIdle <= 31_536_000 else { throw ValidationError("--lease-idle must be between 0 and 31536000 seconds (a year)") }
        _ = try parseSize(cacheSize, what: "--cache-size")
        guard pollUs >= 0, pollUs <= 10_000 else { throw ValidationError("--poll-us must be between 0 and 10000") }
        guard timeout >= 1, timeout <= 3600 else { throw ValidationError("--timeout must be between 1 and 3600 seconds") }
        if let metricsAddress {
            do { _ = try MetricsEndpoint.parse(metricsAddress) } catch let error as CLIError { throw ValidationError(error.description) }
        }
    }

    /// The local cache a network volume's mount reads through.
    func cacheSettings() throws -> CacheSettings {
        CacheSettings(directory: cacheDir.map(absolutePath), capacityBytes: try parseSize(cacheSize, what: "--cache-size"))
    }

    var mode: AccessMode { readOnly ? .readOnly : writer ? .writer : .onDemand }

    func run() throws {
        let target = absolutePath(mountpoint)
        var created: String?
        let address: VolumeAddress
        let opened: OpenedVolume
        do {
            do {
                address = try VolumeAddress(volume)
                opened = try address.open(OpenOptions(credentials: credentials.load(), timeoutSeconds: timeout))
            } catch let error as VolumeError {
                throw CLIError(error.description)
            }
            try checkFuseDevice()
            created = try prepareMountpoint(target)
        } catch let error as CLIError {
            report(error)
            throw error
        }
        do {
            if foreground {
                try serve(address, at: target)
            } else {
                try spawnDaemon(address, at: target, defaultLogPath: opened.defaultLogPath)
            }
        } catch {
            // A mount that failed leaves the disk as it found it.
            if let created { removeCreated(from: target, upTo: created) }
            throw error
        }
    }

    /// Removes the (empty) directories from `path` up to `top`, which this command made.
    func removeCreated(from path: String, upTo top: String) {
        var current = path
        while current.hasPrefix(top) {
            guard rmdir(current) == 0 else { return }
            if current == top { return }
            current = (current as NSString).deletingLastPathComponent
        }
    }

    /// Tells the waiting parent (if any) why the daemon stops before serving.
    func report(_ error: CLIError) {
        guard let readyFd else { return }
        let line = "error: \(error.description)\n"
        _ = line.withCString { write(readyFd, $0, strlen($0)) }
        close(readyFd)
    }

    func checkFuseDevice() throws {
        let fd = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT {
                throw CLIError("/dev/fuse is missing; in a container run with --device /dev/fuse --cap-add SYS_ADMIN")
            }
            throw CLIError("cannot open /dev/fuse: \(String(cString: strerror(code))); in a container run with --device /dev/fuse --cap-add SYS_ADMIN")
        }
        close(fd)
    }

    /// Makes sure `path` is a directory nothing is mounted on, creating it if missing;
    /// returns the topmost directory it created, if any.
    @discardableResult
    func prepareMountpoint(_ path: String) throws -> String? {
        let files = FileManager.default
        var created: String?
        if !files.fileExists(atPath: path) {
            var top = path
            while case let parent = (top as NSString).deletingLastPathComponent, parent != top,
                  !files.fileExists(atPath: parent) {
                top = parent
            }
            created = top
            do {
                try files.createDirectory(atPath: path, withIntermediateDirectories: true)
            } catch {
                throw CLIError("cannot create mountpoint \(path): \(error.localizedDescription)")
            }
        }
        guard isDirectory(path) else { throw CLIError("mountpoint \(path) is not a directory") }
        if let entry = MountEntry.find(path) {
            throw CLIError("\(path) is already a mountpoint (\(entry.fsType) from \(entry.source)); unmount it first")
        }
        return created
    }

    /// Starts this program again as a detached `--foreground` daemon and waits until the
    /// mount answers or the daemon says why it cannot. A fresh process rather than fork():
    /// forking after threads exist can deadlock the child.
    func spawnDaemon(_ address: VolumeAddress, at target: String, defaultLogPath: String) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CLIError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let logPath = logFile.map(absolutePath) ?? defaultLogPath
        // The default log of a network volume is under /var/log/netvol, made private.
        let logDirectory = (logPath as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: logDirectory) {
            guard mkdir(logDirectory, 0o700) == 0 || errno == EEXIST else {
                throw CLIError("cannot create the log directory \(logDirectory): \(String(cString: strerror(errno)))")
            }
        }
        var arguments = ["netvol", "mount", address.description, target, "--foreground", "--ready-fd", "3", "--gc-grace", "\(gcGrace)",
                         "--lease-ttl", "\(leaseTtl)", "--lease-idle", "\(leaseIdle)", "--timeout", "\(timeout)",
                         "--poll-us", "\(pollUs)"]
        for option in options { arguments += ["-o", option] }
        if debug { arguments.append("--debug") }
        if readOnly { arguments.append("--read-only") }
        if writer { arguments.append("--writer") }
        if wait { arguments.append("--wait") }
        if let cacheDir { arguments += ["--cache-dir", absolutePath(cacheDir)] }
        if let metricsAddress { arguments += ["--metrics", metricsAddress] }
        arguments += ["--cache-size", cacheSize] + credentials.arguments

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // The log names files: private like the rest of the volume.
        var info = stat()
        if stat(logPath, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o077 != 0 {
            _ = chmod(logPath, logFileMode)
        }
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, logFileMode)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26): the daemon leaves our session and terminal.
        posix_spawnattr_setflags(&attributes, Int16(0x80))

        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
        close(fds[1])
        defer { close(fds[0]) }
        guard spawned == 0 else { throw CLIError("cannot start the mount daemon: \(String(cString: strerror(spawned)))") }

        var message = ""
        var buffer = [UInt8](repeating: 0, count: 512)
        // --wait may wait for the lease as long as its holder keeps it.
        let deadline = Date().addingTimeInterval(wait ? 365 * 86_400 : 60)
        while !message.contains("\n") {
            var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let remaining = Int32(min(1000, max(0, deadline.timeIntervalSinceNow) * 1000))
            if remaining == 0 {
                kill(pid, SIGTERM)
                throw CLIError("the mount daemon did not answer within 60 s; see \(logPath)")
            }
            let ready = poll(&poller, 1, remaining)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { continue }
            let count = read(fds[0], &buffer, buffer.count)
            if count <= 0 { break }
            message += String(decoding: buffer[0..<count], as: UTF8.self)
        }
        let line = message.split(separator: "\n").first.map(String.init) ?? ""
        if line == "ready" { return }
        if line.hasPrefix("error: ") { throw CLIError(String(line.dropFirst(7))) }
        throw CLIError("the mount daemon exited before mounting; see \(logPath)")
    }
}
