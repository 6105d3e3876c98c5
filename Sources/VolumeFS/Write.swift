#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Foundation
public import Metadata
import Synchronization

// The write path: buffered chunks, the size limit, and commits of new objects.
extension VolumeFS {
    /// Writes `data` at `offset`; returns the number of bytes written (all of them).
    ///
    /// - Throws: `.noSpace` (ENOSPC) when the volume's size limit would be exceeded, with
    ///   nothing changed; `.fileTooBig` (EFBIG) past `maxFileSize`.
    public func write(_ ino: InodeNumber, _ fh: FileHandleID, offset: UInt64, _ data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        let file = try file(fh, ino)
        guard data.count > 0 else { return 0 }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(data.count))
        guard !overflow, end <= Self.maxFileSize else { throw .fileTooBig }
        try ensureWritable()
        file.lock.lock()
        defer { file.lock.unlock() }

        let cs = UInt64(chunkSize)
        let first = Int(offset / cs)
        let last = Int((end - 1) / cs)
        var growth: [Int: Int64] = [:]
        for index in first...last {
            let current = file.dirty[index]?.count ?? file.chunkMap[index]?.length ?? 0
            let high = Int(min(end, UInt64(index + 1) * cs) - UInt64(index) * cs)
            growth[index] = Int64(max(0, high - current))
        }
        try reserve(growth.values.reduce(0, +))

        for index in first...last {
            if file.dirty[index] == nil {
                do {
                    file.dirty[index] = try load(file, index)
                } catch {
                    let unused = (index...last).reduce(Int64(0)) { $0 + (growth[$1] ?? 0) }
                    accounting.withLock { $0.reserved -= unused }
                    throw error
                }
            }
            let chunkStart = UInt64(index) * cs
            let low = Int(max(offset, chunkStart) - chunkStart)
            let high = Int(min(end, chunkStart + cs) - chunkStart)
            let sourceStart = Int(chunkStart + UInt64(low) - offset)
            let source = UnsafeRawBufferPointer(rebasing: data[sourceStart..<(sourceStart + high - low)])
            file.dirty[index]!.write(source, at: low)
            file.reserved[index, default: 0] += growth[index] ?? 0
            // What was being stored of this chunk is no longer its content.
            if let stale = file.uploads.removeValue(forKey: index) { abandon(stale) }
        }
        file.size = max(file.size, end)
        file.mtime = Self.now()

        if file.dirty.count > options.maxDirtyChunksPerFile {
            try commit(file)
        } else if file.size > UInt64(options.inlineLimit) {
            try uploadFullChunks(file)
            // Full chunks are committed in groups once their objects are stored: a
            // sequential writer waits for one metadata round trip per group, and for a
            // store only when as many are in flight as may be.
            let stored = file.uploads.compactMap { $0.value.isFinished ? $0.key : nil }
            if stored.count >= options.fullChunksPerCommit { try commit(file, only: stored) }
        }
        return data.count
    }

    /// Starts storing each full dirty chunk of `file` (`andPartial`: every dirty chunk)
    /// that is not being stored yet, at most `storeConcurrency` at once: past that, waits
    /// for the oldest. Caller holds
    /// `file.lock` (an upload never takes it).
    func uploadFullChunks(_ file: OpenFile, andPartial partial: Bool = false) throws(FSError) {
        let full = file.dirty.compactMap { (partial || $0.value.count == chunkSize) && file.uploads[$0.key] == nil ? $0.key : nil }
        for index in full.sorted() {
            let inFlight = file.uploads.filter { !$0.value.isFinished }
            if inFlight.count >= options.storeConcurrency, let oldest = inFlight.keys.min() {
                _ = inFlight[oldest]!.wait()
            }
            let upload = Upload()
            file.uploads[index] = upload
            // The buffer is shared, not copied: a later write to the chunk copies it, and
            // drops this upload.
            let bytes = file.dirty[index]!
            let ino = file.ino
            // A full chunk of a streaming writer stays in the kernel's pages of the file:
            // its cache copy can be written from there once the writes go quiet.
            let later = bytes.count == chunkSize && !file.writtenPastPageCache && canCacheFromPages
            // A thread of its own: Dispatch on Linux runs about as many blocked work items
            // at once as there are cores, and a store mostly waits for the network.
            Thread.detachNewThread { [self] in
                upload.finish(bytes.withUnsafeBytes { buffer in
                    do throws(FSError) { return .success(try storeObject(ino, index, buffer, writingLater: later)) } catch { return .failure(error) }
                })
            }
        }
    }

    /// Deletes, once stored, an object no commit will name.
    func abandon(_ upload: Upload) {
        DispatchQueue.global().async { [self] in
            if case .success(let ref) = upload.wait() { deleteObjects([ref]) }
        }
    }

    func reserve(_ bytes: Int64) throws(FSError) {
        guard bytes > 0 else { return }
        func attempt() -> Bool {
            accounting.withLock { state in
                if Int64(state.used) + state.reserved + bytes > Int64(state.limit) { return false }
                state.reserved += bytes
                return true
            }
        }
        if attempt() { return }
        // Deleted files may be waiting for their purge, and `netvol resize` may have grown
        // the volume since we last looked.
        flushPurges()
        refreshUsage()
        if !attempt() { throw .noSpace }
    }

    /// Stores the dirty chunks of `file` (all, or `only` these) as new objects and swaps
    /// them in with one metadata transaction. Caller holds `file.lock`.
    func commit(_ file: OpenFile, only: [Int]? = nil) throws(FSError) {
        if let lost = file.lost { throw lost }
        guard let prepared = try prepareCommit(file, only: only) else {
            // Nothing to commit, but a file created on this mount may not be made yet.
            do {
                try cache.settle(file.ino)
            } catch {
                throw failedCommit(file, error)
            }
            return
        }
        let committed: Committed
        do {
            committed = try metadata.commitData(file.ino, chunks: prepared.refs, drop: nil, size: prepared.size,
                                                mtime: file.mtime, now: Self.now())
        } catch {
            deleteObjects(prepared.refs)
            throw failedCommit(file, error)
        }
        finishCommit(file, prepared, committed)
    }

    /// What a commit of a file names: its new chunks, stored, and its size.
    struct PreparedCommit {
        var refs: [ChunkRef]
        var size: UInt64
    }

    /// Stores what a commit of `file` (all its dirty chunks, or `only` these) will name;
    /// nil when there is nothing to commit. Caller holds `file.lock`.
    func prepareCommit(_ file: OpenFile, only: [Int]?) throws(FSError) -> PreparedCommit? {
        let indices = (only ?? Array(file.dirty.keys)).filter { file.dirty[$0] != nil }.sorted()
        if indices.isEmpty && file.size == file.committedSize && file.mtime == nil { return nil }
        // Chunks already being stored are waited for; the rest are stored now.
        var uploaded: [ChunkRef] = []
        var failure: FSError?
        for index in indices {
            guard let upload = file.uploads.removeValue(forKey: index) else { continue }
            switch upload.wait() {
            case .success(let ref): uploaded.append(ref)
            case .failure(let error): failure = failure ?? error
            }
        }
        if let failure {
            deleteObjects(uploaded)
            throw failure
        }
        let remaining = indices.filter { index in !uploaded.contains { $0.index == index } }
        let refs: [ChunkRef]
        do {
            refs = (uploaded + (try storeChunks(file.ino, remaining.map { ($0, file.dirty[$0]!) }, fileSize: file.size)))
                .sorted { $0.index < $1.index }
        } catch {
            deleteObjects(uploaded)
            throw error
        }
        var size = file.size
        if only != nil {
            // Commit no size that covers data still buffered: a crash would show it as zeros.
            let reach = refs.map { UInt64($0.index * chunkSize + $0.length) }.max() ?? 0
            size = min(file.size, max(file.committedSize, reach))
        }
        return PreparedCommit(refs: refs, size: size)
    }

    /// Takes in what the metadata committed of `prepared`. Caller holds `file.lock`.
    func finishCommit(_ file: OpenFile, _ prepared: PreparedCommit, _ committed: Committed) {
        var delta: Int64 = 0
        var released: Int64 = 0
        for ref in prepared.refs {
            delta += Int64(ref.length) - Int64(file.chunkMap[ref.index]?.length ?? 0)
            released += file.reserved.removeValue(forKey: ref.index) ?? 0
            file.chunkMap[ref.index] = ref
            file.dirty[ref.index] = nil
        }
        file.committedSize = prepared.size
        if file.dirty.isEmpty && file.size == prepared.size { file.mtime = nil }
        if file.mapStamp != nil { file.mapStamp = CacheStamp(committed.attr) }
        restamp(committed.attr)
        accounting.withLock { state in
            state.used = UInt64(max(0, Int64(state.used) + delta))
            state.reserved -= released
        }
    }

    /// What a failed commit of `file` answers; a fenced one means the lease is lost.
    /// Caller holds `file.lock`.
    func failedCommit(_ file: OpenFile, _ error: MetadataError) -> FSError {
        logger.error("commit of inode \(file.ino.rawValue) failed: \(error)")
        guard case .fenced(let holder) = error else { return .metadata(error) }
        file.lock.unlock()
        loseLease("a commit found the lease with \(holder ?? "nobody")")
        file.lock.lock()
        return .lostWrites
    }

    /// Stores chunks as new objects, several at once; on any failure, stores none.
    func storeObjects(_ ino: InodeNumber, _ chunks: [(Int, ChunkBuffer)]) throws(FSError) -> [ChunkRef] {
        if chunks.count == 1 {
            return [try chunks[0].1.withUnsafeBytes { bytes throws(FSError) in try storeObject(ino, chunks[0].0, bytes) }]
        }
        let results = Mutex<[Result<ChunkRef, FSError>?]>(Array(repeating: nil, count: chunks.count))
        // Once one chunk cannot be stored the commit fails anyway: the others are not
        // tried, so an unreachable store costs one wait, not one per round of workers.
        let firstFailure = Mutex<FSError?>(nil)
        let workers = min(chunks.count, options.storeConcurrency)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for slot in stride(from: worker, to: chunks.count, by: workers) {
                if let failure = firstFailure.withLock({ $0 }) {
                    results.withLock { $0[slot] = .failure(failure) }
                    continue
                }
                let (index, bytes) = chunks[slot]
                let result: Result<ChunkRef, FSError> = bytes.withUnsafeBytes { buffer in
                    do throws(FSError) { return .success(try storeObject(ino, index, buffer)) } catch { return .failure(error) }
                }
                if case .failure(let error) = result { firstFailure.withLock { $0 = $0 ?? error } }
                results.withLock { $0[slot] = result }
            }
        }
        let outcomes = results.withLock { $0 }
        var refs: [ChunkRef] = []
        var failure: FSError?
        for outcome in outcomes {
            switch outcome {
            case .success(let ref)?: refs.append(ref)
            case .failure(let error)?: failure = failure ?? error
            case nil: failure = failure ?? .invalidArgument("a chunk was not stored")
            }
        }
        if let failure {
            deleteObjects(refs)
            throw failure
        }
        return refs
    }

    /// Makes refs for chunks about to be committed: a file that will be no larger than
    /// `inlineLimit` keeps its bytes inline, others get objects stored in parallel.
    func storeChunks(_ ino: InodeNumber, _ chunks: [(Int, ChunkBuffer)], fileSize: UInt64) throws(FSError) -> [ChunkRef] {
        guard fileSize <= UInt64(min(options.inlineLimit, chunkSize)) else { return try storeObjects(ino, chunks) }
        return chunks.map { index, bytes in
            ChunkRef(index: index, inline: bytes.array, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        }
    }

    /// Deletes the objects of refs that were never committed.
    func deleteObjects(_ refs: [ChunkRef]) {
        for case let object? in refs.map(\.object) { try? store.delete(object) }
    }

    /// Stores `bytes` as a new object for chunk `index` of `ino`.
    ///
    /// A store that is out of space first gets back the room of garbage past the short
    /// `fullStoreGraceSeconds` (deleted files' objects would otherwise hold it for the
    /// whole grace period), and the object is tried once more.
    ///
    /// `writingLater`: the bytes stay in the kernel's pages of the file, so a cache's copy
    /// of the object may be written from there later (see CacheFromPages.swift).
    func storeObject(_ ino: InodeNumber, _ index: Int, _ bytes: UnsafeRawBufferPointer,
                     writingLater: Bool = false) throws(FSError) -> ChunkRef {
        let checksums = BlockChecksums(of: bytes)
        var attempts = 0
        var reclaimed = false
        while true {
            let id = ObjectID.random()
            let ref = ChunkRef(index: index, object: id, length: bytes.count, checksums: checksums)
            if writingLater {
                // Before the store lists it as unwritten: the thread writing copies must
                // never find it without its pages. One left by a failed put goes with the
                // others once nothing waits and it is a minute old (`dropStalePageSources`).
                noteStreaming()
                notePageSource(id, PageSource(ino: ino, offset: UInt64(index) * UInt64(chunkSize), ref: ref))
            }
            do {
                try store.put(id, bytes, writingLater: writingLater)
                return ref
            } catch .exists(_) where attempts < 3 {
                attempts += 1
            } catch .noSpace where !reclaimed {
                reclaimed = true
                if reclaimSpace() == 0 {
                    logger.error("cannot store chunk \(index) of inode \(ino.rawValue): the chunk store is out of space")
                    throw .store(.noSpace, ino: ino, chunk: index)
                }
            } catch {
                logger.error("cannot store chunk \(index) of inode \(ino.rawValue): \(error)")
                throw .store(error, ino: ino, chunk: index)
            }
        }
    }
}
