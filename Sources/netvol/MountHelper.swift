#if canImport(Glibc)
import Glibc
#endif
import Foundation

// netvol as mount(8)'s helper. `mount -t fuse.netvol VOLUME DIR -o OPTIONS` (and an
// /etc/fstab line of that type) runs /sbin/mount.fuse.netvol, `-t netvol` runs
// /sbin/mount.netvol; both are links to this program, which then takes mount(8)'s
// arguments
//
//     mount.netvol VOLUME DIR [-sfnv] [-o OPTION[,OPTION...]] [-t TYPE]
//
// and turns them into `netvol mount VOLUME DIR` with the same settings as flags.

/// The helper's names: what argv[0] is when mount(8) runs us.
let mountHelperNames: Set<String> = ["mount.netvol", "mount.fuse.netvol"]

/// mount(8)'s options netvol has a flag for: `name=value` becomes `--flag value`.
private let valueOptions: [String: String] = [
    "lease_ttl": "--lease-ttl", "lease_idle": "--lease-idle", "gc_grace": "--gc-grace",
    "cache_dir": "--cache-dir", "cache_size": "--cache-size", "timeout": "--timeout", "poll_us": "--poll-us",
    "log_file": "--log-file", "password_file": "--password-file",
    "s3_credentials_file": "--s3-credentials-file", "metrics": "--metrics",
]

/// Options that are flags on their own.
private let flagOptions: [String: String] = [
    "ro": "--read-only", "read_only": "--read-only", "writer": "--writer", "wait": "--wait", "debug": "--debug",
]

/// Options the kernel or libfuse take as they are.
private let fuseOptions: Set<String> = [
    "allow_other", "default_permissions", "nodev", "dev", "nosuid", "suid", "noexec", "exec",
    "noatime", "atime", "relatime", "norelatime", "strictatime", "nodiratime", "diratime", "dirsync",
]

/// Options for mount(8), fstab or systemd, not for the filesystem: accepted and left alone.
private func isForOthers(_ option: String) -> Bool {
    let name = option.split(separator: "=", maxSplits: 1).first.map(String.init) ?? option
    if name.hasPrefix("x-") || name.hasPrefix("comment") { return true }
    return ["_netdev", "nofail", "noauto", "auto", "defaults", "user", "nouser", "users", "group", "owner",
            "rw", "async", "sync", "loud", "silent", "helper", "fsname", "subtype"].contains(name)
}

/// What a run as mount(8)'s helper asks for.
struct MountHelperRun {
    /// The `netvol` arguments it stands for.
    var arguments: [String]
    /// `mount -f`: check everything, mount nothing.
    var fake: Bool
}

/// The run as mount(8)'s helper that `argv` asks for, or nil when this run is not one
/// (argv[0] is not a helper name).
///
/// - Throws: `CLIError` for a missing volume or directory, or an option netvol does not
///   know, naming it.
func mountHelperRun(_ argv: [String]) throws -> MountHelperRun? {
    guard let first = argv.first, mountHelperNames.contains((first as NSString).lastPathComponent) else { return nil }
    var positional: [String] = []
    var options: [String] = []
    var index = 1
    var fake = false
    while index < argv.count {
        let argument = argv[index]
        index += 1
        switch argument {
        case "-o":
            guard index < argv.count else { throw CLIError("mount option -o needs a value") }
            options += argv[index].split(separator: ",").map(String.init)
            index += 1
        case "-t":
            // The type mount(8) was asked for: we are its helper, so it is ours.
            index += 1
        case "-f":
            fake = true
        case "-s", "-n", "-v", "-i":
            // Sloppy, no mtab, verbose, no helper: mount(8)'s concerns.
            break
        default:
            if argument.hasPrefix("-o"), argument.count > 2 {
                options += argument.dropFirst(2).split(separator: ",").map(String.init)
            } else if argument.hasPrefix("-") {
                throw CLIError("unknown mount option \(argument)")
            } else {
                positional.append(argument)
            }
        }
    }
    guard positional.count == 2 else {
        throw CLIError("usage: \((first as NSString).lastPathComponent) VOLUME DIRECTORY [-o OPTIONS]")
    }
    var arguments = ["mount", positional[0], positional[1]]
    var passed: [String] = []
    for option in options where !option.isEmpty {
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        if let flag = valueOptions[parts[0]] {
            guard parts.count == 2, !parts[1].isEmpty else { throw CLIError("mount option \(parts[0]) needs a value: \(parts[0])=...") }
            arguments += [flag, parts[1]]
        } else if let flag = flagOptions[option] {
            if !arguments.contains(flag) { arguments.append(flag) }
        } else if fuseOptions.contains(option) {
            passed.append(option)
        } else if isForOthers(option) {
            continue
        } else {
            throw CLIError("unknown mount option \(option); netvol's are ro, writer, wait, lease_ttl=, lease_idle=, gc_grace=, cache_dir=, cache_size=, timeout=, log_file=, password_file=, s3_credentials_file=, metrics=, debug")
        }
    }
    if !passed.isEmpty { arguments += ["-o", passed.joined(separator: ",")] }
    return MountHelperRun(arguments: arguments, fake: fake)
}
