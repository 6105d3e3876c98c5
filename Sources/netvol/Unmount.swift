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

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount a volume, after everything buffered is committed.")

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    func run() throws {
        let target = absolutePath(mountpoint)
        guard let entry = MountEntry.find(target) else { throw CLIError("\(target) is not mounted") }
        guard entry.fsType == "fuse.netvol" else { throw CLIError("\(target) is not a netvol mount (it is \(entry.fsType))") }
        // The daemon serving this mount, found without asking the volume's metadata
        // (which may be a database that is down, or need credentials).
        let daemon = Self.daemon(serving: target)
        guard let fusermount = findProgram("fusermount3") else {
            throw CLIError("fusermount3 is missing; install the fuse3 package")
        }
        // The cache copies a streaming read left for later are written from the kernel's
        // pages of the files, which the unmount drops.
        if let daemon, access(metricsSocketPath(pid: daemon), F_OK) == 0 {
            _ = post(metricsSocketPath(pid: daemon), "/cache-pages", seconds: 120)
        }
        let (status, errors) = runProgram(fusermount, ["-u", target])
        guard status == 0 else {
            let reason = errors.split(separator: "\n").first.map(String.init) ?? "exit status \(status)"
            throw CLIError("cannot unmount \(target): \(reason)")
        }
        // The daemon commits what it buffered and exits; wait so that a script can
        // mount the volume again on the next line.
        if let daemon {
            let deadline = Date().addingTimeInterval(60)
            while kill(daemon, 0) == 0 {
                if Date() > deadline { throw CLIError("unmounted, but daemon pid \(daemon) has not exited after 60 s") }
                usleep(20_000)
            }
        }
    }

    /// The `netvol mount ... --foreground` process of this mount namespace that serves
    /// `target`, if any.
    static func daemon(serving target: String) -> Int32? {
        let namespace = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry), pid != getpid(),
                  let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let arguments = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard arguments.count > 3, (arguments[0] as NSString).lastPathComponent == "netvol",
                  arguments[1] == "mount", arguments.contains("--foreground"), arguments.contains(target),
                  (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/ns/mnt")) == namespace
            else { continue }
            return pid
        }
        return nil
    }
}
