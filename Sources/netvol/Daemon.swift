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

/// glibc's mallopt(3), which the Glibc module leaves out (malloc.h), and its M_ARENA_MAX.
@_silgen_name("mallopt") private func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
private let arenaMax: Int32 = -8

// The daemon: `netvol mount --foreground` (which `netvol mount` starts detached) serves
// the filesystem in this process until it is unmounted or signalled.
extension Mount {
    /// Runs the filesystem in this process until it is unmounted or signalled.
    func serve(_ address: VolumeAddress, at target: String) throws {
        // Chunk buffers (4 MiB) come and go on many threads (uploads, downloads, FUSE's
        // own). With glibc's default of eight arenas a core, memory one thread freed sat
        // in its arena while another's grew: streaming 4 GiB peaked at 278 MiB. Two
        // arenas share what is freed (172 MiB over 2 GiB, against 223 MiB before) at no
        // cost in CPU; a fixed mmap threshold bounded memory as well but faulted in
        // every buffer anew.
        _ = mallopt(arenaMax, 2)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = debug ? .debug : .info
            return handler
        }
        let logger = Logger(label: "netvol")
        do {
            address.restrictPermissions(slowParts: false)
            let opened: OpenedVolume
            do {
                opened = try address.open(OpenOptions(credentials: credentials.load(), cache: cacheSettings(),
                                                      timeoutSeconds: timeout))
            } catch let error as VolumeError {
                throw CLIError(error.description)
            }
            var volumeOptions = VolumeOptions()
            volumeOptions.gcGraceSeconds = gcGrace
            volumeOptions.mode = mode
            volumeOptions.leaseTTLSeconds = leaseTtl
            volumeOptions.leaseIdleSeconds = leaseIdle
            // Every other mount registers its session and waits for the group first.
            volumeOptions.deferCommitsWhileAlone = true
            if case .directory = address {} else { volumeOptions.prefetchListings = 32 }
            let volumeFS: VolumeFS
            do {
                volumeFS = try VolumeFS(metadata: opened.metadata, store: opened.store, options: volumeOptions, logger: logger)
            } catch {
                throw CLIError("cannot open volume \(address): \(error)")
            }
            if mode == .writer {
                try takeLease(volumeFS, logger: logger)
                do {
                    // Waiting for the lease can take long: the mountpoint may be taken by now.
                    try prepareMountpoint(target)
                } catch {
                    volumeFS.releaseLease()
                    throw error
                }
            }

            // Before the mount makes its first metric, so that every one is registered.
            let metrics = MetricsEndpoint(volume: volumeFS, opened: opened)
            do {
                // `netvol stats`, `status` and `warmup` reach the daemon here; a mount
                // without it (no /run/netvol for this user) still serves files.
                do {
                    try metrics.listen(unixSocket: metricsSocketPath(pid: getpid()))
                } catch {
                    logger.warning("no metrics socket at \(metricsSocketPath(pid: getpid())) (netvol stats and warmup cannot reach this mount): \(error)")
                }
                if let metricsAddress { try metrics.listen(tcp: metricsAddress) }
            } catch {
                metrics.stop()
                volumeFS.releaseLease()
                if let error = error as? CLIError { throw error }
                throw CLIError("cannot serve metrics on \(metricsAddress ?? metricsSocketPath(pid: getpid())): \(error)")
            }
            defer { metrics.stop() }

            var mountOptions = MountOptions(mountpoint: target)
            mountOptions.fuseOptions = options.flatMap { $0.split(separator: ",").map(String.init) }
            // Handlers often run as another user than the one who mounts: let them in, and
            // let the kernel check permissions (default_permissions) as on any filesystem.
            if geteuid() == 0 && !mountOptions.fuseOptions.contains("allow_other") {
                mountOptions.fuseOptions.append("allow_other")
            }
            if readOnly && !mountOptions.fuseOptions.contains("ro") { mountOptions.fuseOptions.append("ro") }
            mountOptions.pollMicroseconds = pollUs
            mountOptions.source = "netvol:" + address.description.replacingOccurrences(of: ",", with: "\\,")
            let mount = FuseMount(volume: volumeFS, options: mountOptions, logger: logger)
            do {
                try mount.mount()
            } catch {
                volumeFS.releaseLease()
                throw CLIError(error.description)
            }
            let session = Session(id: volumeFS.holder, host: hostName(), pid: getpid(),
                                  mountpoint: target, device: MountEntry.find(target)?.device ?? "?",
                                  mode: mode.rawValue, startedAt: VolumeFS.now(), heartbeatAt: VolumeFS.now())
            logger.info("mounted \(address) at \(target) as \(volumeFS.holder), \(mode.rawValue), pid \(getpid())")
            let background = BackgroundWork(volume: volumeFS, session: session, logger: logger) {
                // The objects of a volume made before volumes were private; its
                // directories were closed before the mount.
                address.restrictPermissions(slowParts: true)
            }
            background.start()
            if let readyFd {
                _ = "ready\n".withCString { write(readyFd, $0, strlen($0)) }
                close(readyFd)
            }
            notifyServiceManager("READY=1\nSTATUS=serving \(address) at \(target)\nMAINPID=\(getpid())")
            mount.run()
            notifyServiceManager("STOPPING=1\nSTATUS=unmounting \(target)")
            background.stop()
            logger.info("unmounted \(target)")
        } catch let error as CLIError {
            report(error)
            throw error
        }
    }

    /// --writer: the lease before the mount, or one line naming who has it.
    func takeLease(_ volumeFS: VolumeFS, logger: Logger) throws {
        let parent = getppid()
        while true {
            // A `netvol mount --wait` that was interrupted must not mount later on its own.
            if readyFd != nil && getppid() != parent {
                throw CLIError("the mount command waiting for this daemon is gone; giving up on the lease")
            }
            do {
                try volumeFS.acquireLease()
                return
            } catch .readOnly(let holder) {
                guard wait else {
                    var detail = ""
                    if let lease = try? volumeFS.currentLease(), lease.isHeld {
                        let seconds = Double(lease.expiresAt.nanoseconds - lease.now.nanoseconds) / 1e9
                        detail = " (token \(lease.token), expires in \(String(format: "%.0f", seconds)) s unless renewed)"
                    }
                    throw CLIError("the writer lease of \(volume) is held by \(holder ?? "another worker")\(detail); use --wait to wait for it")
                }
                logger.info("waiting for the writer lease held by \(holder ?? "another worker")")
                sleep(1)
            } catch {
                throw CLIError("cannot take the writer lease: \(error)")
            }
        }
    }
}
