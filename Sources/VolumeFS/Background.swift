#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import Logging
public import Metadata
import Synchronization

/// What a mount does besides answering requests, on two threads of its own that serve
/// none. One runs, every tenth of a second, the writer's group commit (GroupCommits) and
/// the writing of cache copies left for later. The other runs every half second a `tick`
/// (renew or give back the lease, or follow the change feed), a heartbeat of the mount's
/// session every third of the lease's ttl, and, while this mount is the writer, garbage
/// collection every quarter of the grace period (between 10 s and 5 minutes), and early
/// reclaiming whenever the chunk store is nearly out of space. A group commit waits for
/// its files' uploads and its transaction, which on a loaded machine or a slow link took
/// seconds; on the same thread it held back the renewal of the lease past its deadline.
///
/// The session row is what `netvol status` lists and what `netvol unmount` finds the
/// daemon by; it is registered by `start` and removed by `stop`, and sessions whose
/// heartbeat is older than four ttls, and than a minute, are dropped by the others' heartbeats.
public final class BackgroundWork: Sendable {
    let volume: VolumeFS
    let session: Session
    let logger: Logger
    let firstly: (@Sendable () -> Void)?
    /// Whether the threads should go on, and how many of the two have ended.
    let state = Mutex<(running: Bool, finished: Int)>((false, 0))

    /// - Parameters:
    ///   - firstly: work to do once on the thread before the first turn (a slow repair
    ///     that must not hold the mount up).
    public init(volume: VolumeFS, session: Session, logger: Logger, firstly: (@Sendable () -> Void)? = nil) {
        self.volume = volume
        self.session = session
        self.logger = logger
        self.firstly = firstly
    }

    var staleSeconds: Double { volume.options.leaseTTLSeconds * 4 }

    /// Registers the session and starts the thread.
    public func start() {
        heartbeat()
        // Registered: a writer that defers commits sees this mount from now on.
        volume.awaitWriterCommits()
        // A first read of the change feed, now: while nobody holds the lease it lets
        // opens be answered from memory (`VolumeFS.isQuiet`) before the first tick.
        if !volume.isWriter { volume.followChanges() }
        state.withLock { $0 = (true, 0) }
        Thread.detachNewThread { [self] in run() }
        Thread.detachNewThread { [self] in runGroupCommits() }
    }

    /// Stops the threads (waiting at most a few seconds for their turns to end) and removes
    /// the session.
    public func stop() {
        state.withLock { $0.running = false }
        let deadline = ContinuousClock.now + .seconds(5)
        while state.withLock({ $0.finished < 2 }) && ContinuousClock.now < deadline { usleep(10_000) }
        do {
            try volume.metadata.removeSession(id: session.id)
        } catch {
            logger.warning("cannot remove the session of this mount: \(error)")
        }
    }

    func heartbeat() {
        do {
            let sent = ContinuousClock.now
            try volume.metadata.heartbeat(session, staleSeconds: staleSeconds)
            volume.noteHeartbeat(sent: sent, staleSeconds: staleSeconds)
        } catch {
            logger.warning("session heartbeat failed: \(error)")
        }
    }

    func runGroupCommits() {
        defer { state.withLock { $0.finished += 1 } }
        while state.withLock({ $0.running }) {
            usleep(100_000)
            guard state.withLock({ $0.running }) else { return }
            volume.groupCommitTurn()
            volume.cacheFromPagesIfDue()
        }
    }

    func run() {
        defer { state.withLock { $0.finished += 1 } }
        firstly?()
        let heartbeatEvery = max(1, volume.options.leaseTTLSeconds / 3)
        let grace = volume.options.gcGraceSeconds
        let gcEvery = Double(max(10, min(grace / 4, 300)))
        var lastHeartbeat = ContinuousClock.now
        var lastGC = ContinuousClock.now
        var lastSpaceCheck = ContinuousClock.now
        while state.withLock({ $0.running }) {
            // In steps, so that a stop need not wait for the whole half second.
            for _ in 0..<5 where state.withLock({ $0.running }) { usleep(100_000) }
            guard state.withLock({ $0.running }) else { return }
            volume.tick()
            let now = ContinuousClock.now
            if now - lastHeartbeat >= .seconds(heartbeatEvery) {
                lastHeartbeat = now
                heartbeat()
            }
            if now - lastSpaceCheck >= .seconds(2) {
                lastSpaceCheck = now
                // Deleting files on a full disk frees space within seconds, before the
                // next write has to ask for it.
                volume.reclaimSpace(ifBelow: UInt64(volume.chunkSize) * 4)
                volume.chunkBuffers.trim(idleFor: .seconds(2))
            }
            if now - lastGC >= .seconds(gcEvery), volume.isWriter {
                lastGC = now
                do {
                    let deleted = try volume.collectGarbage()
                    if deleted > 0 { logger.info("gc deleted \(deleted) objects") }
                } catch {
                    logger.warning("gc failed: \(error)")
                }
            }
        }
    }
}
