// Group commits: the writer defers the commits of closed files while it is alone.
//
// Close commits (close-to-open: an open on another mount after the close sees the data).
// Where every commit is a network round trip, that is what a `cp -R` or an unpacking pays
// per file. But close-to-open is owed only to mounts that could open the file. While no
// other mount is attached, the writer keeps the files it closes and commits them together,
// in one transaction, a tenth of a second later, as NFSv4 lets a client holding a write
// delegation close without writing back until another client opens the file.
//
// The protocol, in the lease row (`Lease.deferring`):
// - The writer turns deferring on only while no other session is registered, judged under
//   the lease row's lock (`Metadata.deferCommits`), which every heartbeat also takes.
// - A mount that attaches registers its session first, then waits while the flag is on
//   and the lease held (`awaitWriterCommits`), before it answers anything.
// - The writer looks at every turn; once another session is there, it stops deferring,
//   commits what it kept, and only then turns the flag off.
// - A writer that crashes leaves the flag on: the attaching mount waits until the lease
//   has expired.
//
// What a crash costs: files closed in the last tenth of a second, and large files whose
// last chunks were still being stored (or, with the database unreachable, all closed
// since it became so), as a local filesystem loses what its journal had not committed.
// `fsync` still means durable: it commits the group first.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import Metadata
import Synchronization

/// The files whose commits the writer deferred, and whether it may defer.
struct DeferredCommits {
    /// The lease row says this mount defers: no other mount was attached when it said so.
    var on = false
    /// Files closed and not committed, each held open until its commit.
    var files: [InodeNumber: OpenFile] = [:]
    /// The chunks of each that were buffered when it was closed: what the group owes.
    var owed: [InodeNumber: Set<Int>] = [:]
    /// Bytes they buffer.
    var bytes = 0
    var lastClose: ContinuousClock.Instant = .now
    /// Another mount was attached when we last asked: not asked again before this.
    var askAgain: ContinuousClock.Instant?
}

extension VolumeFS {
    /// Files kept for one group, and the bytes they buffer, at most; past either a close
    /// commits at once. A large file is kept too: its close starts storing its last
    /// chunks and returns, and the group waits for them. Committing it at its close made
    /// a `cp -R` wait there for the store (two archives of 12 MiB in the Python standard
    /// library held the copy up 70 to 114 ms, a tenth of its time).
    static let deferredFilesKept = 4096
    static let deferredBytesKept = 64 << 20
    /// After this long without a close the writer stops deferring, so that a mount that
    /// attaches then does not wait.
    static let deferringIdle: Duration = .seconds(2)
    /// How long a writer that found another mount attached commits at every close before
    /// it asks again.
    static let deferringRefused: Duration = .seconds(5)

    /// Keeps the commit of `file`, being closed, for the next group, if this mount may
    /// defer it. Caller holds `file.lock`.
    func deferCommit(_ file: OpenFile) -> Bool {
        guard options.deferCommitsWhileAlone, file.lost == nil, isWriter else { return false }
        let uncommitted = !file.dirty.isEmpty || file.size != file.committedSize || file.mtime != nil
        guard uncommitted || cache.isUnmade(file.ino) else { return false }
        let buffered = file.dirty.values.reduce(0) { $0 + $1.count }
        guard buffered <= Self.deferredBytesKept else { return false }
        let now = ContinuousClock.now
        let (on, mayAsk) = deferred.withLock { ($0.on, $0.askAgain.map { now >= $0 } ?? true) }
        if !on {
            guard mayAsk else { return false }
            let alone = (try? metadata.deferCommits(true)) ?? false
            deferred.withLock { state in
                state.on = alone
                state.askAgain = alone ? nil : now + Self.deferringRefused
            }
            guard alone else { return false }
            logger.debug("no other mount is attached: closes are committed in groups")
        }
        for index in file.dirty.keys { file.dirty[index]!.compact() }
        // Its objects are stored from now on, so that the group commit finds them stored
        // and holds its files for no more than the transaction.
        if file.size > UInt64(options.inlineLimit), (try? uploadFullChunks(file, andPartial: true)) == nil { return false }
        let closedChunks = Set(file.dirty.keys)
        let added = deferred.withLock { state -> Bool in
            guard state.on else { return false }
            if state.files[file.ino] == nil {
                guard state.files.count < Self.deferredFilesKept, state.bytes + buffered <= Self.deferredBytesKept else { return false }
                state.files[file.ino] = file
                // Held open until its commit: the state stays for a reopen, and an unlinked
                // file is purged only after.
                file.opens.add(1, ordering: .sequentiallyConsistent)
                refs.withLock { $0[file.ino, default: KernelRefs()].opens += 1 }
                state.bytes += buffered
            }
            state.owed[file.ino, default: []].formUnion(closedChunks)
            state.lastClose = now
            return true
        }
        // The kernel's pages of the file are what was written to it (writes go through
        // the page cache), as they will be once the group commits it: an open before that
        // keeps them, and reads them without waiting for the group.
        if added, var attr = cache.keptAttr(file.ino) {
            PendingWrite(file, attr).apply(to: &attr)
            restamp(attr)
        }
        return added
    }

    /// One turn of group commits, about every tenth of a second from the background
    /// thread: commits what was closed since the last, and stops deferring once another
    /// mount is attached or closes have stopped for a while.
    public func groupCommitTurn() {
        let (on, idle) = deferred.withLock { state in
            (state.on, state.files.isEmpty && ContinuousClock.now - state.lastClose > Self.deferringIdle)
        }
        guard on else { return }
        commitDeferred()
        if idle || !isWriter {
            stopDeferring(refused: false)
        } else if let alone = try? metadata.deferCommits(true), !alone {
            stopDeferring(refused: true)
        }
    }

    /// Commits at every close from now on; commits what was kept, then says so in the
    /// lease row, which lets a mount waiting to attach go on.
    func stopDeferring(refused: Bool) {
        deferred.withLock { state in
            state.on = false
            if refused { state.askAgain = .now + Self.deferringRefused }
        }
        commitDeferred()
        guard isWriter else { return }
        do {
            _ = try metadata.deferCommits(false)
        } catch {
            logger.warning("cannot say that this mount no longer defers commits: \(error); a mount attaching waits until it can")
            // Asked again at the next turn.
            deferred.withLock { $0.on = true }
        }
    }

    /// Commits the files whose commits were deferred, together in one transaction. Where
    /// the group is refused, each file is committed alone; what cannot be is lost (and
    /// its next flush, fsync or close, if it is open again, answers EIO).
    public func commitDeferred() {
        // One group at a time: a caller that returns has seen every file closed before it
        // committed, by itself or by the group it waited for (`stopDeferring` relies on it).
        groupCommitting.lock()
        defer { groupCommitting.unlock() }
        let (files, owed) = deferred.withLock { state -> ([OpenFile], [InodeNumber: Set<Int>]) in
            defer {
                state.files = [:]
                state.owed = [:]
                state.bytes = 0
            }
            return (state.files.values.sorted { $0.ino.rawValue < $1.ino.rawValue }, state.owed)
        }
        guard !files.isEmpty else { return }
        // The stores the closes started are waited for before the locks are taken, which
        // are then held through the transaction alone: a `stat` or an open of a file of
        // the group does not wait for the store of a larger one closed beside it.
        for file in files {
            file.lock.lock()
            let uploads = Array(file.uploads.values)
            file.lock.unlock()
            for upload in uploads { _ = upload.wait() }
        }
        // In inode order, and nothing else takes two files' locks: no deadlock.
        for file in files { file.lock.lock() }
        var group: [(file: OpenFile, prepared: PreparedCommit)] = []
        var fenced: String?
        var alone: [OpenFile] = []
        for file in files where file.lost == nil {
            // Chunks written since the close, through a handle still open, are that
            // handle's to commit, as they would be had the close committed at once. A
            // shell's redirection or `dd` closes a duplicate of the file just created
            // before writing: committing the chunk it was filling stored it twice.
            let closed = owed[file.ino] ?? []
            let only = file.dirty.keys.allSatisfy(closed.contains) ? nil : Array(closed)
            do {
                if let prepared = try prepareCommit(file, only: only) { group.append((file, prepared)) }
            } catch {
                failed(file, error)
            }
        }
        groupPending.withLock { published in
            for file in files {
                if let attr = cache.keptAttr(file.ino) { published[file.ino] = PendingWrite(file, attr) }
            }
        }
        if !group.isEmpty {
            do throws(MetadataError) {
                let committed = try metadata.commitData(group.map { entry in
                    // Changed when it was written, as this mount has been answering
                    // (`pending`): a reader of the file sees no change when it lands.
                    DataCommit(ino: entry.file.ino, chunks: entry.prepared.refs, size: entry.prepared.size, mtime: entry.file.mtime,
                               ctime: entry.file.mtime)
                }, now: Self.now(), applying: [])
                for (entry, answer) in zip(group, committed) { finishCommit(entry.file, entry.prepared, answer) }
            } catch {
                for entry in group { deleteObjects(entry.prepared.refs) }
                if case .fenced(let holder) = error {
                    fenced = holder ?? "nobody"
                } else {
                    logger.warning("the group commit of \(group.count) files failed (\(error)): committing them one by one")
                    alone = group.map(\.file)
                }
            }
        }
        // Files with nothing to commit may still have to be made.
        for file in files where fenced == nil && alone.isEmpty && file.lost == nil {
            do {
                try cache.settle(file.ino)
            } catch {
                logger.error("file \(file.ino.rawValue), closed on this mount, could not be made: \(error)")
            }
        }
        // Published values stay right until the locks are given back (a commit changes
        // no size or time, and a `pending` of a file it committed overrides what the
        // cache says of it since); after that, a `pending` waits for the lock again.
        groupPending.withLock { $0.removeAll(keepingCapacity: true) }
        for file in files { file.lock.unlock() }
        if let fenced { loseLease("a group commit found the lease with \(fenced)") }
        // One by one once the group's locks are given back: a commit that finds the lease
        // lost takes every open file's lock.
        for file in alone {
            file.lock.lock()
            do {
                try commit(file)
            } catch {
                failed(file, error)
            }
            file.lock.unlock()
        }
        for file in files { dropOpen(file) }
    }

    /// After the deferred commit of `file` failed: a close defers the commit of a file
    /// other handles still write (a `dup2` closes one), and those commit its buffers again
    /// and answer the error at their own `fsync` or close. With no handle left, what was
    /// closed is lost. Caller holds `file.lock`.
    private func failed(_ file: OpenFile, _ error: FSError) {
        // One open is the group's own.
        if file.opens.load(ordering: .sequentiallyConsistent) > 1 {
            logger.warning("the group commit of inode \(file.ino.rawValue) failed (\(error)): it stays buffered for the handles open on it")
            return
        }
        logger.error("data written to inode \(file.ino.rawValue) and closed is lost: it could not be committed: \(error)")
        discardBuffered(file)
        file.lost = error
    }

    /// Forgets the deferred files without committing them (the lease is lost).
    func dropDeferred() {
        let files = deferred.withLock { state -> [OpenFile] in
            defer {
                state.files = [:]
                state.bytes = 0
                state.on = false
            }
            return Array(state.files.values)
        }
        for file in files { dropOpen(file) }
    }

    /// A mount that has just registered its session waits while the writer defers
    /// commits: until the writer has seen this mount and committed what it kept, or the
    /// lease has expired.
    public func awaitWriterCommits() {
        let started = ContinuousClock.now
        var told = false
        while true {
            // A lease that cannot be read is waited for like one still deferring.
            let lease = try? metadata.lease()
            if let lease, !(lease.deferring && lease.isHeld && lease.holder != holder) { return }
            let writer = lease?.holder ?? "?"
            let waited = ContinuousClock.now - started
            if waited > .seconds(options.leaseTTLSeconds * 2) {
                logger.warning("the writer \(writer) may still defer commits: going on without waiting for it")
                return
            }
            if !told && waited > .seconds(1) {
                told = true
                logger.notice("waiting for the writer \(writer) to commit the files it closed")
            }
            usleep(20_000)
        }
    }
}
