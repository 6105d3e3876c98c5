#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import AsyncHTTPClient
import Dispatch
import Foundation
import FuseMount
import NIOCore
import Synchronization
import VolumeBackends

struct Warmup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fetch files of a mounted volume into this host's cache before they are needed.",
        discussion: """
            Reads the files (directories: everything under them) through the mount, in \
            parallel, so that a network volume's chunks land in the host's local cache and \
            the next reader does not wait for the object store. On an embedded volume the \
            chunks are on this host already: the files are read into the page cache. \
            --check reports how much of each path is cached, --evict drops it from the \
            cache. Interrupting it leaves nothing half-done: every cached object is whole.
            """)

    @Argument(help: "Files or directories inside a mounted netvol volume.")
    var paths: [String]

    @Option(help: "Reads in parallel.")
    var threads: Int = 8

    @Flag(help: "Report how much of each path is in this host's cache; fetch nothing.")
    var check = false

    @Flag(help: "Drop each path's chunks from this host's cache.")
    var evict = false

    func validate() throws {
        guard threads >= 1, threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
        guard !(check && evict) else { throw ValidationError("--check and --evict exclude each other") }
    }

    func run() throws {
        let files = try collectFiles()
        if check || evict {
            try report(files)
            return
        }
        try fetch(files)
    }

    struct File {
        var path: String
        var ino: UInt64
        var size: Int
        var socket: String
    }

    /// Every regular file the paths name, with the daemon serving it; one line for a path
    /// that is not on a netvol mount.
    func collectFiles() throws -> [File] {
        var files: [File] = []
        for path in paths.map(absolutePath) {
            guard let mount = MountEntry.all().filter({ path == $0.mountpoint || path.hasPrefix($0.mountpoint + "/") })
                .max(by: { $0.mountpoint.count < $1.mountpoint.count }), mount.fsType == "fuse.netvol" else {
                throw CLIError("\(path) is not inside a mounted netvol volume")
            }
            guard let daemon = Unmount.daemon(serving: mount.mountpoint) else {
                throw CLIError("no netvol daemon serving \(mount.mountpoint) is visible from here")
            }
            let socket = metricsSocketPath(pid: daemon)
            var info = stat()
            guard lstat(path, &info) == 0 else { throw CLIError("cannot stat \(path): \(String(cString: strerror(errno)))") }
            if info.st_mode & S_IFMT == S_IFREG {
                files.append(File(path: path, ino: UInt64(info.st_ino), size: Int(info.st_size), socket: socket))
                continue
            }
            guard info.st_mode & S_IFMT == S_IFDIR else { continue }
            guard let walker = FileManager.default.enumerator(atPath: path) else { throw CLIError("cannot list \(path)") }
            while let relative = walker.nextObject() as? String {
                let full = path + "/" + relative
                var entry = stat()
                guard lstat(full, &entry) == 0, entry.st_mode & S_IFMT == S_IFREG else { continue }
                files.append(File(path: full, ino: UInt64(entry.st_ino), size: Int(entry.st_size), socket: socket))
            }
        }
        return files
    }

    /// --check and --evict: what the daemon says of each file's objects.
    func report(_ files: [File]) throws {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { try? client.syncShutdown() }
        var total = (bytes: 0, cached: 0)
        var embedded = false
        for file in files {
            let answer = try ask(client, file, evicting: evict)
            guard answer["cache"] as? Bool == true else {
                embedded = true
                continue
            }
            let bytes = answer["bytes"] as? Int ?? 0
            let cached = answer["cached_bytes"] as? Int ?? 0
            total.bytes += bytes
            total.cached += cached
            let share = bytes > 0 ? Double(cached) / Double(bytes) * 100 : 100
            // A small file's bytes live in the metadata: there is no object to fetch.
            let what = bytes == 0 && file.size > 0 ? "kept in the metadata" : "\(formatBytes(UInt64(cached))) of \(formatBytes(UInt64(bytes))) cached"
            print("\(String(format: "%5.1f%%", share))  \(what)  \(file.path)")
        }
        if embedded {
            print("embedded volume: its chunks are on this host's disk already; there is no cache to \(evict ? "empty" : "check")")
        }
        if files.count > 1 || total.bytes == 0, !embedded {
            let share = total.bytes > 0 ? Double(total.cached) / Double(total.bytes) * 100 : 100
            print("\(String(format: "%5.1f%%", share))  \(formatBytes(UInt64(total.cached))) of \(formatBytes(UInt64(total.bytes))) cached in \(files.count) files")
        }
    }

    func ask(_ client: HTTPClient, _ file: File, evicting: Bool) throws -> [String: Any] {
        guard let url = URL(httpURLWithSocketPath: file.socket, uri: "/\(evicting ? "evict" : "cache")?ino=\(file.ino)") else {
            throw CLIError("cannot address the socket \(file.socket)")
        }
        let response: HTTPClient.Response
        do {
            let request = try HTTPClient.Request(url: url, method: evicting ? .POST : .GET)
            response = try client.execute(request: request, deadline: NIODeadline.now() + TimeAmount.seconds(60)).wait()
        } catch {
            throw CLIError("cannot ask the daemon at \(file.socket): \(error)")
        }
        guard let body = response.body,
              let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
            throw CLIError("the daemon at \(file.socket) answered \(response.status.code) without a report")
        }
        if let error = object["error"] as? String { throw CLIError("\(file.path): \(error)") }
        return object
    }

    /// Reads every file through the mount, in pieces spread over the threads, with
    /// progress; a SIGINT stops it between pieces.
    func fetch(_ files: [File]) throws {
        let piece = 64 << 20
        var jobs: [(file: Int, offset: Int, length: Int)] = []
        for (index, file) in files.enumerated() {
            if file.size == 0 { jobs.append((index, 0, 0)); continue }
            for offset in stride(from: 0, to: file.size, by: piece) {
                jobs.append((index, offset, min(piece, file.size - offset)))
            }
        }
        let pieces = jobs
        let totalBytes = files.reduce(0) { $0 + $1.size }
        let progress = Progress(files: files.count, bytes: totalBytes, pieces: jobs.map(\.file))
        let next = Atomic<Int>(0)
        let failure = Mutex<String?>(nil)
        interrupted.store(false, ordering: .relaxed)
        signal(SIGINT) { _ in interrupted.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in interrupted.store(true, ordering: .relaxed) }
        let reporter = Thread { progress.run() }
        reporter.start()
        // Threads of their own: the work waits on the network, and Dispatch would run only
        // as many at once as there are cores.
        let workers = DispatchGroup()
        for _ in 0..<min(threads, max(1, pieces.count)) {
            workers.enter()
            Thread {
                defer { workers.leave() }
                readPieces(pieces, of: files, next: next, progress: progress, failure: failure)
            }.start()
        }
        workers.wait()
        progress.stop()
        reporter.cancel()
        while !reporter.isFinished { usleep(10_000) }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        // What the reads fetched but left for the daemon to write once they went quiet
        // is written now, so that the cache is warm when this returns.
        for socket in Set(files.map(\.socket)) { _ = post(socket, "/cache-pages", seconds: 300) }
        if let failure = failure.withLock({ $0 }) { throw CLIError(failure) }
        if interrupted.load(ordering: .relaxed) {
            printError("netvol: warmup interrupted: \(progress.summary); what was fetched stays cached")
            throw ExitCode(130)
        }
        print("warmed \(progress.summary)")
    }
    /// One worker: reads the next piece until none is left, a read fails or SIGINT comes.
    func readPieces(_ pieces: [(file: Int, offset: Int, length: Int)], of files: [File], next: borrowing Atomic<Int>,
                    progress: Progress, failure: borrowing Mutex<String?>) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        while !interrupted.load(ordering: .relaxed), failure.withLock({ $0 == nil }) {
            let slot = next.add(1, ordering: .relaxed).oldValue
            guard slot < pieces.count else { return }
            let job = pieces[slot]
            let fd = open(files[job.file].path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                failure.withLock { $0 = $0 ?? "cannot open \(files[job.file].path): \(String(cString: strerror(errno)))" }
                return
            }
            // Pages the kernel holds (a file written on this host, say) would answer the
            // reads without the daemon, and the host's cache would stay cold: drop them.
            _ = posix_fadvise(fd, off_t(job.offset), off_t(job.length), POSIX_FADV_DONTNEED)
            var offset = job.offset
            while offset < job.offset + job.length, !interrupted.load(ordering: .relaxed) {
                let got = pread(fd, buffer, min(1 << 20, job.offset + job.length - offset), off_t(offset))
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else {
                    if got < 0 { failure.withLock { $0 = $0 ?? "cannot read \(files[job.file].path): \(String(cString: strerror(errno)))" } }
                    break
                }
                offset += got
                progress.add(bytes: got)
            }
            close(fd)
            progress.finished(file: job.file)
        }
    }
}

/// Set by SIGINT or SIGTERM during a warmup.
let interrupted = Atomic<Bool>(false)

/// A warmup's progress: a bar redrawn in place on a terminal (files, bytes, rate, time
/// left), a plain line every five seconds otherwise.
final class Progress: Sendable {
    let files: Int
    let bytes: Int
    let started = ContinuousClock.now
    let done = Atomic<Int>(0)
    /// Pieces left per file: a file is done when its last piece is.
    let left: Mutex<[Int: Int]>
    let filesDone = Atomic<Int>(0)
    let stopped = Atomic<Bool>(false)
    let terminal = isatty(STDERR_FILENO) == 1

    init(files: Int, bytes: Int, pieces: [Int]) {
        self.files = files
        self.bytes = bytes
        var count: [Int: Int] = [:]
        for file in pieces { count[file, default: 0] += 1 }
        left = Mutex(count)
    }

    func add(bytes count: Int) { done.add(count, ordering: .relaxed) }

    func finished(file: Int) {
        let last = left.withLock { table -> Bool in
            table[file, default: 1] -= 1
            return table[file] == 0
        }
        if last { filesDone.add(1, ordering: .relaxed) }
    }

    var summary: String {
        let seconds = elapsedSeconds
        let fetched = done.load(ordering: .relaxed)
        return "\(fileCount()) of \(files) files, \(formatBytes(UInt64(fetched))) of \(formatBytes(UInt64(bytes))) in \(String(format: "%.1f", seconds)) s (\(String(format: "%.0f", Double(fetched) / 1_048_576 / max(seconds, 0.001))) MiB/s)"
    }

    func fileCount() -> Int { filesDone.load(ordering: .relaxed) }

    var elapsedSeconds: Double {
        let elapsed = ContinuousClock.now - started
        return elapsed.inSeconds
    }

    func run() {
        var lastLine = ContinuousClock.now
        while !stopped.load(ordering: .relaxed) {
            usleep(200_000)
            if terminal {
                draw()
            } else if ContinuousClock.now - lastLine >= .seconds(5) {
                lastLine = .now
                printError("warmup: \(line())")
            }
        }
        if terminal { draw(); printError("") }
    }

    func stop() { stopped.store(true, ordering: .relaxed) }

    func line() -> String {
        let fetched = done.load(ordering: .relaxed)
        let rate = Double(fetched) / max(elapsedSeconds, 0.001)
        let remaining = rate > 0 ? Double(bytes - fetched) / rate : 0
        return "\(fileCount())/\(files) files  \(formatBytes(UInt64(fetched)))/\(formatBytes(UInt64(bytes)))  \(String(format: "%.0f", rate / 1_048_576)) MiB/s  \(String(format: "%.0f", remaining)) s left"
    }

    func draw() {
        let fetched = done.load(ordering: .relaxed)
        let width = 30
        let filled = bytes > 0 ? min(width, fetched * width / bytes) : width
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let text = "\r[\(bar)] \(line())\u{1B}[K"
        _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }
}
