#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ChunkStore
import Foundation
import FuseMount
import Logging
import Metadata
import VolumeFS

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount a volume (in the background unless --foreground).",
        discussion: "Returns once the mount answers, so the next line of a script can use it.")

    @Argument(help: "The volume directory.")
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

    @Option(help: .hidden)
    var readyFd: Int32?

    func validate() throws {
        guard gcGrace >= 0 else { throw ValidationError("--gc-grace must not be negative") }
    }

    func run() throws {
        let dir = VolumeDirectory(volume)
        let target = absolutePath(mountpoint)
        do {
            try dir.validate()
            try checkFuseDevice()
            try prepareMountpoint(target)
            if let holder = dir.mountHolder() {
                throw CLIError("volume \(dir.path) is already mounted at \(holder.mountpoint) by pid \(holder.pid)")
            }
        } catch let error as CLIError {
            report(error)
            throw error
        }
        if foreground {
            try serve(dir, at: target)
        } else {
            try spawnDaemon(dir, at: target)
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

    func prepareMountpoint(_ path: String) throws {
        let files = FileManager.default
        if !files.fileExists(atPath: path) {
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
    }

    /// Runs the filesystem in this process until it is unmounted or signalled.
    func serve(_ dir: VolumeDirectory, at target: String) throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = debug ? .debug : .info
            return handler
        }
        let logger = Logger(label: "netvol")
        do {
            let lock = try lockVolume(dir, mountpoint: target)
            let (metadata, store) = try dir.open()
            var volumeOptions = VolumeOptions()
            volumeOptions.gcGraceSeconds = gcGrace
            let volumeFS: VolumeFS
            do {
                volumeFS = try VolumeFS(metadata: metadata, store: store, options: volumeOptions, logger: logger)
            } catch {
                throw CLIError("cannot open volume \(dir.path): \(error)")
            }
            var mountOptions = MountOptions(mountpoint: target)
            mountOptions.fuseOptions = options.flatMap { $0.split(separator: ",").map(String.init) }
            // Handlers often run as another user than the one who mounts: let them in, and
            // let the kernel check permissions (default_permissions) as on any filesystem.
            if geteuid() == 0 && !mountOptions.fuseOptions.contains("allow_other") {
                mountOptions.fuseOptions.append("allow_other")
            }
            mountOptions.source = "netvol:" + dir.path.replacingOccurrences(of: ",", with: "\\,")
            let mount = FuseMount(volume: volumeFS, options: mountOptions, logger: logger)
            do {
                try mount.mount()
            } catch {
                throw CLIError(error.description)
            }
            logger.info("mounted \(dir.path) at \(target), pid \(getpid())")
            if let readyFd {
                _ = "ready\n".withCString { write(readyFd, $0, strlen($0)) }
                close(readyFd)
            }
            startCollector(volumeFS, logger: logger)
            mount.run()
            logger.info("unmounted \(target)")
            close(lock)
        } catch let error as CLIError {
            report(error)
            throw error
        }
    }

    /// Holds the volume's mount lock for the life of the process; one mount per volume
    /// until the writer lease lets several share it safely.
    func lockVolume(_ dir: VolumeDirectory, mountpoint: String) throws -> Int32 {
        let fd = Glibc.open(dir.lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("cannot open \(dir.lockPath): \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            let holder = dir.mountHolder()
            throw CLIError("volume \(dir.path) is already mounted\(holder.map { " at \($0.mountpoint) by pid \($0.pid)" } ?? "")")
        }
        ftruncate(fd, 0)
        let line = "\(getpid()) \(mountpoint)\n"
        _ = line.withCString { pwrite(fd, $0, strlen($0), 0) }
        return fd
    }

    func startCollector(_ volumeFS: VolumeFS, logger: Logger) {
        let interval = UInt32(max(10, min(gcGrace / 4, 300)))
        Thread.detachNewThread {
            while true {
                sleep(interval)
                do {
                    let deleted = try volumeFS.collectGarbage()
                    if deleted > 0 { logger.info("gc deleted \(deleted) objects") }
                } catch {
                    logger.warning("gc failed: \(error)")
                }
            }
        }
    }

    /// Starts this program again as a detached `--foreground` daemon and waits until the
    /// mount answers or the daemon says why it cannot. A fresh process rather than fork():
    /// forking after threads exist can deadlock the child.
    func spawnDaemon(_ dir: VolumeDirectory, at target: String) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CLIError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let logPath = logFile.map(absolutePath) ?? dir.logPath
        var arguments = ["netvol", "mount", dir.path, target, "--foreground", "--ready-fd", "3", "--gc-grace", "\(gcGrace)"]
        for option in options { arguments += ["-o", option] }
        if debug { arguments.append("--debug") }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
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
        let deadline = Date().addingTimeInterval(60)
        while !message.contains("\n") {
            var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let remaining = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
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

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount a volume, after everything buffered is committed.")

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    func run() throws {
        let target = absolutePath(mountpoint)
        guard let entry = MountEntry.find(target) else { throw CLIError("\(target) is not mounted") }
        guard entry.fsType == "fuse.netvol" else { throw CLIError("\(target) is not a netvol mount (it is \(entry.fsType))") }
        var holder: (pid: Int32, mountpoint: String)?
        if entry.source.hasPrefix("netvol:") {
            holder = VolumeDirectory(String(entry.source.dropFirst("netvol:".count))).mountHolder()
        }
        guard let fusermount = findProgram("fusermount3") else {
            throw CLIError("fusermount3 is missing; install the fuse3 package")
        }
        let (status, errors) = runProgram(fusermount, ["-u", target])
        guard status == 0 else {
            let reason = errors.split(separator: "\n").first.map(String.init) ?? "exit status \(status)"
            throw CLIError("cannot unmount \(target): \(reason)")
        }
        // The daemon commits what it buffered and exits; wait so that a script can
        // mount the volume again on the next line.
        if let holder, holder.mountpoint == target {
            let deadline = Date().addingTimeInterval(60)
            while kill(holder.pid, 0) == 0 {
                if Date() > deadline { throw CLIError("unmounted, but daemon pid \(holder.pid) has not exited after 60 s") }
                usleep(20_000)
            }
        }
    }
}
