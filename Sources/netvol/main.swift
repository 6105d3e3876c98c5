#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Metadata
import VolumeBackends
import VolumeFS

// Every mistake a person can make ends here as one line on stderr and a non-zero exit.
do {
    var arguments = Array(CommandLine.arguments.dropFirst())
    if let helper = try mountHelperRun(CommandLine.arguments) {
        if helper.fake { exit(0) }
        arguments = helper.arguments
    }
    var command = try Netvol.parseAsRoot(arguments)
    try command.run()
} catch let error as ExitCode {
    // The command has said what it had to say (fsck lists its problems, then fails).
    exit(error.rawValue)
} catch let error where error is CLIError || error is VolumeError || error is MetadataError || error is FSError {
    // Our own errors describe themselves in one line.
    printError("netvol: \(error)")
    exit(1)
} catch {
    if Netvol.exitCode(for: error) == .success {
        Netvol.exit(withError: error)
    }
    let message = Netvol.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    printError("netvol: \(message)")
    exit(Netvol.exitCode(for: error).rawValue == 0 ? 1 : Netvol.exitCode(for: error).rawValue)
}
