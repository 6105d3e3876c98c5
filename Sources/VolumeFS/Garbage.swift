#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Dispatch
public import Metadata
import Synchronization

// Deleting objects nothing refers to any more, after the grace period.
extension VolumeFS {
    /// When the chunk store is nearly out of space (under `margin`): purges what was
    /// unlinked and deletes garbage older than `fullStoreGraceSeconds` rather than the
    /// whole grace period, so that deleting files frees space within seconds. A reader on
    /// another mount that still holds the chunk map of a file deleted since then reads
    /// `EIO` from it. Only the writer reclaims; returns how many objects went.
    ///
    /// For the background thread: its purge runs under the lease's lock, since an unmount
    /// gives the lease back from another thread, and coming between taking the pending
    /// purges and committing them it would fence the commit and leave the files as
    /// orphans for the next writer.
    @discardableResult
    public func reclaimSpace(ifBelow margin: UInt64) -> Int {
        guard isWriter, let room = store.availableBytes(), room < margin else { return 0 }
        whileHoldingLease { flushPurges() }
        return collectGarbageEarly()
    }

    /// The same for a store that answered "no space": on a thread that may hold a file's
    /// lock, which a lease change takes too, so the purge does not wait for the lease's
    /// lock (an unmount serves no writes by then).
    func reclaimSpace() -> Int {
        guard isWriter else { return 0 }
        flushPurges()
        return collectGarbageEarly()
    }

    func collectGarbageEarly() -> Int {
        do {
            let deleted = try collectGarbage(graceSeconds: min(options.gcGraceSeconds, options.fullStoreGraceSeconds))
            if deleted > 0 { logger.notice("the chunk store is short of space: deleted \(deleted) garbage objects early") }
            return deleted
        } catch {
            logger.warning("cannot reclaim space: \(error)")
            return 0
        }
    }

    /// Deletes objects that left the metadata more than the grace period (or
    /// `graceSeconds`) ago, by the database's clock; returns how many.
    @discardableResult
    ///
    /// - Parameter progress: told the number deleted so far after each batch.
    public func collectGarbage(graceSeconds: Int? = nil, progress: ((_ deleted: Int) -> Void)? = nil) throws(FSError) -> Int {
        let grace = Double(graceSeconds ?? options.gcGraceSeconds)
        var total = 0
        while true {
            let due = try Self.lift { () throws(MetadataError) in try metadata.garbage(olderThan: grace, limit: 512) }
            if due.isEmpty { return total }
            var deleted: [ObjectID] = []
            for object in due {
                do {
                    try store.delete(object)
                    deleted.append(object)
                } catch {
                    logger.warning("gc cannot delete object \(object): \(error)")
                }
            }
            try Self.lift { () throws(MetadataError) in try metadata.dropGarbage(deleted) }
            total += deleted.count
            progress?(total)
            if deleted.count < due.count { return total }
        }
    }
}

extension VolumeFS {
    /// Makes every committed change durable (fsync of a directory).
    public func syncMetadata() throws(FSError) {
        commitDeferred()
        try Self.lift { () throws(MetadataError) in try metadata.sync() }
    }
}
