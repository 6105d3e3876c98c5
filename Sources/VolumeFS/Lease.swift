// The single-writer lease, seen from one mount.
//
// Exactly one mount may write a volume at a time. Its right to write is the lease row in
// the metadata; what makes that safe is not the timer but the fence: every namespace and
// data transaction checks, inside itself, that this mount's token is still the volume's
// token. A writer paused past its expiry (SIGSTOP, a long GC pause, a partition) whose
// lease another mount took can therefore never commit again.
//
// On top of that a writer fences itself: it renews every ttl/3, and once a renewal has
// not succeeded for ttl minus a margin (by its own monotonic clock) it refuses new writes
// with EROFS, before its lease can expire anywhere else. Buffered data it can no longer
// commit is dropped, and the files it belonged to answer EIO on their next flush, fsync
// or close.
//
// Mounts that do not hold the lease follow the change feed every poll interval and
// invalidate what they and the kernel cached; a mount that gains the lease does the
// same first.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import Metadata
import Synchronization

/// How a mount may write.
public enum AccessMode: String, Sendable {
    /// Never writes; every mutation answers EROFS.
    case readOnly = "read-only"
    /// Takes the lease at mount and keeps it.
    case writer
    /// Takes the lease at the first mutation when it is free, and gives it back after
    /// `leaseIdleSeconds` without writes.
    case onDemand = "on-demand"
}

/// What the kernel should forget: an inode's attributes and pages, or a directory entry.
public enum Invalidation: Equatable, Sendable {
    case inode(InodeNumber)
    case entry(parent: InodeNumber, name: FileName)
}

struct WriterState {
    /// The lease this mount holds, if any.
    var fence: Fence?
    /// Past this instant, by our own clock, we no longer trust that we hold it.
    var validUntil: ContinuousClock.Instant = .now
    var lastWrite: ContinuousClock.Instant = .now
    var lastRenewal: ContinuousClock.Instant = .now
    /// The change feed position this mount has caught up with.
    var seenChanges: Int64 = 0
    /// When this mount last read the change feed to its end.
    var followedAt: ContinuousClock.Instant = .now
    /// When this mount last began to read the change feed, whether or not it could.
    var feedAskedAt: ContinuousClock.Instant = .now
    /// Until this instant nothing can change in the volume without this mount having
    /// heard of it: the last read of the change feed found the lease free, and whoever
    /// takes it next waits `Lease.quietSeconds` before changing anything (nil: not so).
    var quietUntil: ContinuousClock.Instant?
    /// Until this instant the other mounts count this one as attached, so that a new
    /// writer waits for it (from its last heartbeat; nil: not registered).
    var attachedUntil: ContinuousClock.Instant?
}

/// A mount's state for the metrics and `netvol stats`.
public struct VolumeStatistics: Sendable {
    public var holdsLease: Bool
    /// The token of the lease this mount holds (0 when it holds none).
    public var leaseToken: Int64
    /// Bytes written to open files and not committed yet.
    public var bufferedBytes: Int
    /// Seconds since this mount last caught up with the change feed; 0 for the writer,
    /// whose own changes are the feed. Grows while the database cannot be reached.
    public var changeFeedAgeSeconds: Double
}

/// This machine's name as the kernel knows it (its UTS name). Foundation's `hostName`
/// asks the resolver for a canonical name, which on a host without a reachable DNS server
/// blocks for seconds.
public func hostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
    return String(cString: name)
}

/// A worker id: the pod id where there is one, else host name and pid; plus a random
/// suffix so two mounts in one process (or a recycled pid) never share an identity.
public func defaultHolderName() -> String {
    let environment = ProcessInfo.processInfo.environment
    let base = environment["RUNPOD_POD_ID"].flatMap { $0.isEmpty ? nil : $0 }
        ?? "\(hostName())-\(getpid())"
    return base + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
}

extension VolumeFS {
    /// True while this mount holds the lease and trusts that it does.
    public var isWriter: Bool {
        writer.withLock { $0.fence != nil && ContinuousClock.now < $0.validUntil }
    }

    public func statistics() -> VolumeStatistics {
        let state = writer.withLock { $0 }
        let holds = state.fence != nil && ContinuousClock.now < state.validUntil
        var buffered = 0
        for file in openFiles.withLock({ Array($0.values) }) {
            file.lock.lock()
            buffered += file.dirty.values.reduce(0) { $0 + $1.count }
            file.lock.unlock()
        }
        let age = ContinuousClock.now - state.followedAt
        return VolumeStatistics(holdsLease: holds, leaseToken: holds ? state.fence?.token.rawValue ?? 0 : 0,
                                bufferedBytes: buffered,
                                changeFeedAgeSeconds: holds ? 0 : age.inSeconds)
    }

    /// The lease state of the volume as the database sees it.
    public func currentLease() throws(FSError) -> Lease {
        try Self.lift { () throws(MetadataError) in try metadata.lease() }
    }

    /// Makes sure this mount may write, taking the lease if the mode allows.
    ///
    /// - Throws: `.readOnly` (EROFS) on a read-only mount, or naming the worker that
    ///   holds the lease.
    func ensureWritable() throws(FSError) {
        if options.mode == .readOnly { throw .readOnly(holder: nil) }
        if holdsValidLease() { return }
        // Past this mount's own deadline the lease may well still be ours: the background
        // thread that renews it can be late on a loaded machine. A renewal that finds the
        // token unchanged proves that no other mount has taken it since, so nothing this
        // mount buffered is stale; only a renewal that fails loses what was buffered.
        leaseChange.withLock { _ in
            // Another thread may have renewed it while this one waited.
            if !holdsValidLease(), let fence = writer.withLock({ $0.fence }) { renewLease(fence) }
        }
        if holdsValidLease() { return }
        try acquireLease()
    }

    /// True, noting a write, while this mount holds the lease within its own deadline.
    private func holdsValidLease() -> Bool {
        let now = ContinuousClock.now
        return writer.withLock { state -> Bool in
            guard state.fence != nil, now < state.validUntil else { return false }
            state.lastWrite = now
            return true
        }
    }

    /// Refuses to open a file for writing where every write would fail: on a read-only
    /// mount, or while another mount holds the lease. As on any read-only filesystem the
    /// refusal comes at open, not at the first write, which may reach us only from the
    /// kernel's writeback after write(2) returned, and whose EROFS would then surface as
    /// EIO at close. The lease itself is left to the first change, so that opening for
    /// writing does not keep other mounts from writing.
    func checkMayWrite() throws(FSError) {
        if options.mode == .readOnly { throw .readOnly(holder: nil) }
        if isWriter { return }
        let lease = try currentLease()
        if let current = lease.holder, current != holder, lease.expiresAt > lease.now {
            throw .readOnly(holder: current)
        }
    }

    /// Takes the lease (if free, expired or ours), then revalidates what this mount cached.
    public func acquireLease() throws(FSError) {
        try leaseChange.withLock { _ throws(FSError) in
            if isWriter { return }
            if writer.withLock({ $0.fence != nil }) {
                // We held it but could not renew in time: whatever we buffered is gone.
                loseLease("it expired before it could be renewed")
            }
            let started = ContinuousClock.now
            let lease: Lease
            do throws(MetadataError) {
                lease = try metadata.acquireLease(holder: holder, ttlSeconds: options.leaseTTLSeconds)
            } catch {
                if case .leaseHeld(let current) = error {
                    let seconds = Double(current.expiresAt.nanoseconds - current.now.nanoseconds) / 1e9
                    logger.notice("write refused: the writer lease is held by \(current.holder ?? "?") (token \(current.token), expires in \(String(format: "%.1f", seconds)) s)")
                    throw .readOnly(holder: current.holder)
                }
                throw .metadata(error)
            }
            if lease.quietFirst {
                // Other mounts may be answering opens from their caches until then.
                Thread.sleep(forTimeInterval: Lease.quietSeconds)
            }
            let fence = Fence(holder: holder, token: lease.token)
            metadata.setFence(fence)
            // Kept while this mount last wrote; another writer may have changed them since.
            keptMaps.withLock { $0.removeAll() }
            // Another writer may have changed the volume since we last looked.
            followChanges()
            refreshUsage()
            writer.withLock { state in
                state.fence = fence
                state.quietUntil = nil
                state.validUntil = started + .seconds(options.leaseTTLSeconds * 2 / 3)
                state.lastRenewal = started
                state.lastWrite = .now
            }
            logger.info("took the writer lease (token \(lease.token))")
            let orphans = ((try? metadata.orphans()) ?? []).filter { !isReferenced($0) }
            try? purge(orphans)
        }
    }

    /// Gives the lease back after committing everything buffered.
    public func releaseLease() {
        leaseChange.withLock { _ in
            guard let fence = writer.withLock({ $0.fence }) else { return }
            flushAll()
            flushAtimes()
            flushPurges()
            // Giving the lease back turns the lease row's flag off as well.
            deferred.withLock { $0.on = false }
            do {
                try metadata.releaseLease(holder: fence.holder, token: fence.token)
                logger.info("released the writer lease (token \(fence.token))")
            } catch {
                logger.warning("cannot release the writer lease: \(error); it expires by itself")
            }
            let latest = (try? metadata.changes(after: Int64.max - 1, limit: 1).latest) ?? 0
            writer.withLock { state in
                state.fence = nil
                // Our own changes need no invalidating.
                state.seenChanges = max(state.seenChanges, latest)
            }
        }
    }

    /// Stops writing: called when a renewal finds the token changed or time ran out.
    func loseLease(_ why: String) {
        let had = writer.withLock { state -> Bool in
            let had = state.fence != nil
            state.fence = nil
            return had
        }
        guard had else { return }
        logger.error("lost the writer lease: \(why); writes now fail with EROFS")
        cache.loseUnmade(.fenced(holder: nil))
        keptMaps.withLock { $0.removeAll() }
        for file in openFiles.withLock({ Array($0.values) }) {
            file.lock.lock()
            if !file.dirty.isEmpty || file.size != file.committedSize {
                logger.error("dropping uncommitted writes to inode \(file.ino.rawValue): the next flush, fsync or close answers EIO")
                file.lost = .lostWrites
                discardBuffered(file)
            }
            file.lock.unlock()
        }
        dropDeferred()
    }

    /// One turn of the background work: renew or idle-release the lease, or follow the
    /// change feed when another mount writes, then send the kernel what it must forget.
    /// Call it about twice a second from a thread that serves no requests.
    public func tick() {
        defer { deliverInvalidations() }
        let now = ContinuousClock.now
        let state = writer.withLock { $0 }
        guard let fence = state.fence else {
            followChanges()
            return
        }
        whileHoldingLease {
            flushAtimes()
            flushPurges()
        }
        // A file kept open is made within about a second of its creation, as a local
        // filesystem commits its journal every few seconds.
        cache.makeUnmade(answeredBefore: Timestamp(nanoseconds: Self.now().nanoseconds - Self.unmadeFilesKept))
        if options.mode == .onDemand, now - state.lastWrite > .seconds(options.leaseIdleSeconds), !hasWritableHandles() {
            releaseLease()
            return
        }
        guard now - state.lastRenewal >= .seconds(options.leaseTTLSeconds / 3) else { return }
        renewLease(fence)
    }

    /// Runs `work` (a commit of pending atimes or purges) only while this mount still
    /// holds the lease, with lease changes waiting for it: an unmount gives the lease back
    /// from another thread, and coming between taking the pending work and committing it,
    /// it would fence the commit and leave the unlinked files to the next writer. Not for
    /// a thread that may hold a file's lock (a lease change takes those).
    func whileHoldingLease(_ work: () -> Void) {
        leaseChange.withLock { _ in
            guard writer.withLock({ $0.fence }) != nil else { return }
            work()
        }
    }

    /// Extends the lease now; a renewal that finds the token changed loses the lease.
    public func renewLease() {
        guard let fence = writer.withLock({ $0.fence }) else { return }
        renewLease(fence)
    }

    func renewLease(_ fence: Fence) {
        let now = ContinuousClock.now
        do throws(MetadataError) {
            let lease = try metadata.renewLease(holder: fence.holder, token: fence.token, ttlSeconds: options.leaseTTLSeconds)
            writer.withLock { state in
                guard state.fence == fence else { return }
                state.validUntil = now + .seconds(options.leaseTTLSeconds * 2 / 3)
                state.lastRenewal = now
            }
            _ = lease
        } catch {
            if case .fenced(let holder) = error {
                loseLease("the lease now belongs to \(holder ?? "nobody") (taken over or broken)")
            } else {
                logger.warning("cannot renew the writer lease: \(error)")
            }
        }
    }

    /// Runs one namespace transaction as the writer. A transaction refused by the fence
    /// means the lease was lost (taken over, broken or expired): note it, take the lease
    /// again if the mode and its holder allow, and try once more.
    func mutating<T>(_ body: () throws(MetadataError) -> T) throws(FSError) -> T {
        try ensureWritable()
        do {
            return try body()
        } catch .fenced(let holder) {
            loseLease("the lease now belongs to \(holder ?? "nobody")")
            try ensureWritable()
            return try Self.lift(body)
        } catch {
            throw .metadata(error)
        }
    }

    func hasWritableHandles() -> Bool {
        handles.withLock { $0.values.contains { $0.writable } }
    }

    /// Applies the changes other mounts committed since we last looked: open files reload
    /// their chunk maps, and the kernel forgets what it cached of what changed.
    public func followChanges() {
        following.withLock { _ in followChangesNow() }
    }

    /// `isQuiet`, or, when the background tick is late, `isQuiet` after reading the
    /// change feed now, as the tick would have: late means the feed was last asked over a
    /// second ago, or it last found the lease free and that quiet has run out since. On a
    /// loaded machine a reader then pays one round trip for the next second of opens
    /// instead of one per open, and at most one more a second while the tick stays late.
    /// Close-to-open holds: the read is the tick's own.
    func isQuietAfterFollowing() -> Bool {
        if isQuiet { return true }
        guard tickIsLate() else { return false }
        following.withLock { _ in
            // Another open may have read it while this one waited.
            if tickIsLate() { followChangesNow() }
        }
        return isQuiet
    }

    private func tickIsLate() -> Bool {
        let now = ContinuousClock.now
        return writer.withLock { state in
            guard state.fence == nil else { return false }
            if let quiet = state.quietUntil, now >= quiet { return true }
            return now - state.feedAskedAt >= .seconds(Lease.quietSeconds)
        }
    }

    /// Reads the change feed to its end. Call it holding `following`.
    private func followChangesNow() {
        var position = writer.withLock { state in
            state.feedAskedAt = .now
            return state.seenChanges
        }
        var asked = ContinuousClock.now
        var free = false
        while true {
            let batch: ChangeBatch
            do {
                asked = .now
                batch = try metadata.changes(after: position, limit: 2048)
            } catch {
                logger.warning("cannot read the change feed: \(error)")
                // Not known to be quiet any more; opens try the feed again a second later.
                writer.withLock { $0.quietUntil = nil }
                return
            }
            free = batch.leaseFree
            if batch.truncated {
                cacheStamps.withLock { $0 = [:] }
                keptMaps.withLock { $0.removeAll() }
                xattrInodes.withLock { $0 = nil }
                for ino in refs.withLock({ Array($0.keys) }) {
                    refresh(ino)
                    invalidate(.inode(ino))
                }
                position = batch.latest
                break
            }
            var inodes = Set<InodeNumber>()
            var entries: [(InodeNumber, FileName)] = []
            for change in batch.changes {
                if let ino = change.ino { inodes.insert(ino) }
                if let parent = change.parent, let name = change.name { entries.append((parent, name)) }
                position = change.sequence
            }
            let known = refs.withLock { table in inodes.filter { table[$0] != nil } }
            cacheStamps.withLock { stamps in for ino in inodes { stamps[ino] = nil } }
            keptMaps.withLock { maps in for ino in inodes { maps.take(ino) } }
            if !inodes.isEmpty { xattrInodes.withLock { $0 = nil } }
            for ino in known {
                refresh(ino)
                invalidate(.inode(ino))
            }
            for (parent, name) in entries where isReferenced(parent) {
                invalidate(.entry(parent: parent, name: name))
            }
            if batch.changes.count < 2048 { break }
        }
        writer.withLock {
            $0.seenChanges = max($0.seenChanges, position)
            $0.followedAt = .now
            // Counted from when the last read was sent, which is before the moment the
            // server found the lease free; a little short of the writer's wait, for the
            // two clocks' rates.
            $0.quietUntil = free ? asked + .seconds(Lease.quietSeconds * 0.8) : nil
        }
    }

    /// True while this mount, not the writer, knows its cache to be exact: nobody holds
    /// the lease, and whoever takes it waits for this mount before changing anything.
    /// Opens are then answered from memory (close-to-open holds: nothing has been closed
    /// since that this mount has not heard of), and chunk maps are read for several
    /// files at once.
    public var isQuiet: Bool {
        let now = ContinuousClock.now
        return writer.withLock { state in
            guard state.fence == nil, let quiet = state.quietUntil, let attached = state.attachedUntil else { return false }
            return now < quiet && now < attached
        }
    }

    /// A heartbeat sent at `sent` registered this mount's session, which the others keep
    /// for `staleSeconds` after it, and never less than `Session.keptSeconds`.
    public func noteHeartbeat(sent: ContinuousClock.Instant, staleSeconds: Double) {
        writer.withLock { $0.attachedUntil = sent + .seconds(min(staleSeconds, Session.keptSeconds) / 2) }
    }

    /// Reloads an open file's chunk map and attributes after another mount changed it.
    func refresh(_ ino: InodeNumber) {
        guard let file = openFiles.withLock({ $0[ino] }) else { return }
        // Both from one moment: a commit between two reads would pair a size with the
        // chunks of another version.
        guard let (attr, chunks) = try? metadata.attrAndChunks(ino) else { return }
        file.lock.lock()
        if file.dirty.isEmpty {
            file.chunkMap = Dictionary(uniqueKeysWithValues: chunks.map { ($0.index, $0) })
            file.size = attr.size
            file.committedSize = attr.size
            file.attr = attr
            file.mapStamp = CacheStamp(attr)
        }
        file.lock.unlock()
    }

    func refreshUsage() {
        guard let usage = try? metadata.usage() else { return }
        accounting.withLock { state in
            state.used = usage.usedBytes
            state.limit = usage.sizeLimit
        }
    }

    /// Commits everything and gives the lease back (unmount).
    public func shutdown() {
        flushAll()
        releaseLease()
        // What readers were given is in the cache for the next mount, unless the store
        // is too slow to finish it soon.
        if !store.settle(timeout: 10) { logger.warning("unmounting with downloads into the cache still under way") }
    }
}
