#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Dispatch
public import Metadata
import Synchronization

extension VolumeFS {
    // MARK: - Open and close

    /// Opens `ino` with open(2) `flags`; the handle must be released with `release`.
    public func open(_ ino: InodeNumber, flags: Int32) throws(FSError) -> FileHandleID {
        try open(ino, flags: flags, touchingAtime: options.relatime)
    }

    func open(_ ino: InodeNumber, flags: Int32, touchingAtime: Bool) throws(FSError) -> FileHandleID {
        try open(Self.lift { () throws(MetadataError) in try metadata.getattr(ino) }, flags: flags, touchingAtime: touchingAtime)
    }

    /// Opens the file whose attributes were just read (or made).
    func open(_ attr: Attr, flags: Int32, touchingAtime: Bool) throws(FSError) -> FileHandleID {
        let ino = attr.ino
        if attr.isDirectory { throw .metadata(.isDirectory) }
        guard attr.isRegular else { throw .notSupported("opening special files") }
        let access = flags & O_ACCMODE
        _ = try attach(attr)
        var handle = Handle(ino: ino, readable: access != O_WRONLY, writable: access != O_RDONLY)
        // Pages the kernel cached stay valid while the file is as it was when they were
        // read: a second open (or a second process) then reads from memory.
        let stamp = CacheStamp(pending(attr))
        handle.keepCache = cacheStamps.withLock { stamps in
            defer { stamps[ino] = stamp }
            return stamps[ino] == stamp
        }
        let id = FileHandleID(rawValue: nextHandle.add(1, ordering: .relaxed).oldValue)
        handles.withLock { $0[id] = handle }
        if flags & O_TRUNC != 0 && handle.writable {
            do {
                try truncate(ino, to: 0)
            } catch {
                release(ino, id)
                throw error
            }
        }
        if handle.readable && touchingAtime { touchAtime(attr) }
        return id
    }

    /// Creates a regular file and opens it.
    public func create(_ parent: InodeNumber, _ name: FileName, mode: UInt32, flags: Int32,
                       uid: UInt32, gid: UInt32) throws(FSError) -> (Attr, FileHandleID) {
        try Self.checkNew(name)
        let attr: Attr
        do {
            attr = try mutating { () throws(MetadataError) in
                try metadata.mknode(parent, name, mode: FileType.regular.rawValue | (mode & 0o7777), uid: uid, gid: gid,
                                    rdev: 0, target: nil, now: Self.now())
            }
        } catch .metadata(.exists) where flags & O_EXCL == 0 {
            let existing = try Self.lift { () throws(MetadataError) in try metadata.lookup(parent, name) }
            let handle = try open(existing.ino, flags: flags)
            remember(existing.ino)
            return (try getattr(existing.ino), handle)
        }
        remember(attr.ino)
        // A new file's atime is already now: no relatime update on this open.
        let handle = try open(attr, flags: flags & ~O_TRUNC, touchingAtime: false)
        return (attr, handle)
    }

    /// The open state of `attr`'s inode, made on first open; counts one more open.
    func attach(_ attr: Attr) throws(FSError) -> OpenFile {
        // Counting under the table lock keeps a racing last release from dropping the
        // state this open is about to use (lock order: openFiles, then the file's lock).
        let file = try openFiles.withLock { files throws(FSError) -> OpenFile in
            let file: OpenFile
            if let existing = files[attr.ino] {
                file = existing
            } else {
                // Close-to-open: a first open reads the chunk map afresh (an empty file has none).
                let chunks = attr.size == 0 && attr.storedBytes == 0 ? []
                    : try Self.lift { () throws(MetadataError) in try metadata.chunks(attr.ino) }
                file = OpenFile(attr: attr, chunkMap: Dictionary(uniqueKeysWithValues: chunks.map { ($0.index, $0) }))
                files[attr.ino] = file
            }
            file.lock.lock()
            file.opens += 1
            file.lock.unlock()
            return file
        }
        refs.withLock { $0[attr.ino, default: KernelRefs()].opens += 1 }
        return file
    }

    func touchAtime(_ attr: Attr) {
        let now = Self.now()
        let day: Int64 = 86_400 * 1_000_000_000
        // atime is best effort: a reader does not take the lease for it.
        guard isWriter else { return }
        guard attr.atime <= attr.mtime || attr.atime <= attr.ctime || attr.atime.nanoseconds < now.nanoseconds - day else { return }
        // Written lazily (like lazytime): one transaction a tick for every file read,
        // instead of one per open.
        pendingAtimes.withLock { pending in
            if pending[attr.ino] == nil { pending[attr.ino] = now }
        }
    }

    /// Writes the access times gathered since the last call.
    public func flushAtimes() {
        let atimes = pendingAtimes.withLock { pending in
            defer { pending = [:] }
            return pending
        }
        guard !atimes.isEmpty, isWriter else { return }
        do {
            try metadata.touch(atimes)
        } catch {
            logger.warning("cannot record access times of \(atimes.count) files: \(error)")
        }
    }

    /// Forgets what `file` buffered and gives back the space reserved for it; the file is
    /// as last committed. Caller holds `file.lock`.
    func discardBuffered(_ file: OpenFile) {
        let dropped = file.reserved.values.reduce(0, +)
        accounting.withLock { $0.reserved -= dropped }
        file.dirty = [:]
        file.reserved = [:]
        file.size = file.committedSize
        file.mtime = nil
    }

    /// Whether the kernel may keep the pages it cached when it opens `fh` (FOPEN_KEEP_CACHE).
    public func keepsCache(_ fh: FileHandleID) -> Bool {
        handles.withLock { $0[fh]?.keepCache ?? false }
    }

    /// After this mount changed a file, the kernel's pages are its new contents (writes
    /// go through the page cache): record that version as the cached one.
    func restamp(_ attr: Attr) {
        cacheStamps.withLock { stamps in
            if stamps[attr.ino] != nil { stamps[attr.ino] = CacheStamp(attr) }
        }
    }

    func file(_ fh: FileHandleID, _ ino: InodeNumber) throws(FSError) -> OpenFile {
        guard let handle = handles.withLock({ $0[fh] }), handle.ino == ino,
              let file = openFiles.withLock({ $0[ino] }) else { throw .badHandle }
        return file
    }

    /// Commits what was written through any handle of the file (close(2) calls this).
    public func flush(_ ino: InodeNumber, _ fh: FileHandleID) throws(FSError) {
        let file = try file(fh, ino)
        file.lock.lock()
        defer { file.lock.unlock() }
        try commit(file)
    }

    /// Commits the file and makes it durable against a crash of the process or machine.
    public func fsync(_ ino: InodeNumber, _ fh: FileHandleID) throws(FSError) {
        try flush(ino, fh)
        try Self.lift { () throws(MetadataError) in try metadata.sync() }
    }

    /// Drops a handle. The last release of a file commits what is left and forgets its
    /// open state; an unlinked file is purged once nothing refers to it.
    public func release(_ ino: InodeNumber, _ fh: FileHandleID) {
        guard handles.withLock({ $0.removeValue(forKey: fh) }) != nil,
              let file = openFiles.withLock({ $0[ino] }) else {
            logger.warning("release of unknown handle \(fh.rawValue) of inode \(ino.rawValue)")
            return
        }
        file.lock.lock()
        if file.opens == 1 {
            do {
                try commit(file)
            } catch {
                logger.error("data written to inode \(ino.rawValue) is lost: the last close could not commit it: \(error)")
                discardBuffered(file)
            }
        }
        file.lock.unlock()
        openFiles.withLock { files in
            file.lock.lock()
            file.opens -= 1
            if file.opens == 0 && files[ino] === file { files[ino] = nil }
            file.lock.unlock()
        }
        let released = refs.withLock { table -> Bool in
            guard var entry = table[ino] else { return false }
            entry.opens -= 1
            if entry.opens <= 0 && entry.lookups == 0 && ino != .root {
                table[ino] = nil
                return true
            }
            table[ino] = entry
            return false
        }
        if released { purgeIfUnlinked(ino) }
    }

    /// Commits every open file (at unmount).
    public func flushAll() {
        for file in openFiles.withLock({ Array($0.values) }) {
            file.lock.lock()
            do {
                try commit(file)
            } catch {
                logger.error("cannot commit inode \(file.ino.rawValue) at unmount: \(error)")
            }
            file.lock.unlock()
        }
    }

    // MARK: - Read

    /// Reads up to `count` bytes of `ino` from `offset`; fewer only at the end of the file.
    ///
    /// Chunks missing from the file's map read as zeros. Every stored block read is checked
    /// against its recorded checksum before any byte is returned.
    ///
    /// - Throws: `.corrupt` or `.store` (EIO) when a chunk is damaged or missing.
    public func read(_ ino: InodeNumber, _ fh: FileHandleID, offset: UInt64, count: Int) throws(FSError) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: max(0, count))
        let got = try Self.typed { try output.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) throws in
            try read(ino, fh, offset: offset, into: buffer)
        } }
        output.removeLast(output.count - got)
        return output
    }

    /// Reads into `buffer` from `offset`, as `read(_:_:offset:count:)` does; returns how
    /// many bytes were read. The kernel's request is answered from this buffer with no
    /// further copy or allocation.
    public func read(_ ino: InodeNumber, _ fh: FileHandleID, offset: UInt64,
                     into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let file = try file(fh, ino)
        file.lock.lock()
        let size = file.size
        guard offset < size, buffer.count > 0 else {
            file.lock.unlock()
            return 0
        }
        let end = min(offset + UInt64(buffer.count), size)
        let cs = UInt64(chunkSize)
        let first = Int(offset / cs)
        let last = Int((end - 1) / cs)
        // Snapshot under the lock, read outside it: objects are immutable and buffers are
        // copied on write, so other readers and writers are not held up by our I/O.
        let parts = (first...last).map { index in (index, file.dirty[index], file.chunkMap[index]) }
        file.lock.unlock()
        let ahead = handles.withLock { $0[fh]?.reads.ahead(of: first...last, by: options.prefetchChunks) } ?? 0..<0
        if !ahead.isEmpty {
            let objects = file.lock.withLock { ahead.compactMap { file.chunkMap[$0]?.object } }
            for object in objects { store.prefetch(object) }
        }

        for (index, dirty, ref) in parts {
            let chunkStart = UInt64(index) * cs
            let low = Int(max(offset, chunkStart) - chunkStart)
            let high = Int(min(end, chunkStart + cs) - chunkStart)
            let destination = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(chunkStart + UInt64(low) - offset)...])
            var filled = 0
            if let dirty {
                let available = min(high, dirty.count) - low
                if available > 0 {
                    dirty.withUnsafeBytes { source in
                        destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[low..<(low + available)]))
                    }
                    filled = available
                }
            } else if let ref {
                filled = try readVerified(ino, ref, from: low, to: high, into: destination)
            }
            // Holes, and bytes past the end of what a chunk stores, read as zeros.
            if filled < high - low {
                UnsafeMutableRawBufferPointer(rebasing: destination[filled..<(high - low)]).initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
        return Int(end - offset)
    }

    /// Reads bytes `[low, high)` of a stored chunk into `destination`, checking every block
    /// touched; returns how many it wrote, fewer than asked where the chunk's stored bytes end.
    @discardableResult
    func readVerified(_ ino: InodeNumber, _ ref: ChunkRef, from low: Int, to high: Int,
                      into destination: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let stop = min(high, ref.length)
        guard low < stop else { return 0 }
        let blockSize = BlockChecksums.blockSize
        guard ref.checksums.values.count == (ref.length + blockSize - 1) / blockSize else {
            throw corrupt(ino, ref, "has \(ref.checksums.values.count) checksums for \(ref.length) bytes")
        }
        let firstBlock = low / blockSize
        let lastBlock = (stop - 1) / blockSize
        let readStart = firstBlock * blockSize
        let readEnd = min((lastBlock + 1) * blockSize, ref.length)
        func verify(_ buffer: UnsafeRawBufferPointer) throws(FSError) {
            for block in firstBlock...lastBlock {
                let start = block * blockSize - readStart
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[start..<min(start + blockSize, buffer.count)])
                if BlockChecksums.hash(bytes) != ref.checksums.values[block] {
                    throw corrupt(ino, ref, "checksum mismatch in block \(block)")
                }
            }
        }
        switch ref.location {
        case .inline(let bytes):
            guard bytes.count == ref.length else {
                throw corrupt(ino, ref, "inline data is \(bytes.count) bytes, expected \(ref.length)")
            }
            try Self.typed { try bytes.withUnsafeBytes { (all: UnsafeRawBufferPointer) throws in
                try verify(UnsafeRawBufferPointer(rebasing: all[readStart..<readEnd]))
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[low..<stop]))
            } }
        case .object(let object):
            // Block-aligned reads (the kernel's readahead) land in place; others go through
            // a scratch buffer so that only checked bytes reach the caller.
            let inPlace = low == readStart && stop == readEnd
            let buffer = inPlace ? UnsafeMutableRawBufferPointer(rebasing: destination[0..<(readEnd - readStart)])
                                 : UnsafeMutableRawBufferPointer.allocate(byteCount: readEnd - readStart, alignment: 16)
            defer { if !inPlace { buffer.deallocate() } }
            // A store that keeps local copies (a cache) may hold a damaged one: it is
            // dropped and the object read once more from where it really lives.
            for attempt in 1...2 {
                let got: Int
                do {
                    got = try store.read(object, offset: readStart, into: buffer)
                } catch {
                    logger.error("read of inode \(ino.rawValue) chunk \(ref.index) (object \(object)) failed: \(error)")
                    throw .store(error, ino: ino, chunk: ref.index)
                }
                do throws(FSError) {
                    guard got == buffer.count else {
                        throw corrupt(ino, ref, "object is \(readStart + got) bytes, expected \(ref.length)")
                    }
                    try verify(UnsafeRawBufferPointer(buffer))
                    break
                } catch {
                    store.discard(object)
                    if attempt == 2 { throw error }
                }
            }
            if !inPlace {
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[(low - readStart)..<(stop - readStart)]))
            }
        }
        return stop - low
    }

    func corrupt(_ ino: InodeNumber, _ ref: ChunkRef, _ why: String) -> FSError {
        logger.error("inode \(ino.rawValue) chunk \(ref.index) (\(ref.location)) \(why): answering EIO")
        return .corrupt(ino: ino, chunk: ref.index, why)
    }

    /// The whole stored content of chunk `index`, verified (empty if the chunk is a hole).
    func load(_ file: OpenFile, _ index: Int) throws(FSError) -> [UInt8] {
        guard let ref = file.chunkMap[index] else { return [] }
        var bytes = [UInt8](repeating: 0, count: ref.length)
        bytes.reserveCapacity(chunkSize)
        try Self.typed { try bytes.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) throws in
            try readVerified(file.ino, ref, from: 0, to: ref.length, into: buffer)
        } }
        return bytes
    }

    // MARK: - Write

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
            if file.dirty[index]!.count < high {
                file.dirty[index]!.append(contentsOf: repeatElement(0, count: high - file.dirty[index]!.count))
            }
            let sourceStart = Int(chunkStart + UInt64(low) - offset)
            file.dirty[index]!.withUnsafeMutableBytes { buffer in
                UnsafeMutableRawBufferPointer(rebasing: buffer[low..<high])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: data[sourceStart..<(sourceStart + high - low)]))
            }
            file.reserved[index, default: 0] += growth[index] ?? 0
        }
        file.size = max(file.size, end)
        file.mtime = Self.now()

        if file.dirty.count > options.maxDirtyChunksPerFile {
            try commit(file)
        } else {
            // Full chunks are committed in groups, whose objects are stored in parallel:
            // a sequential writer then waits for one round of syncs per group, not per chunk.
            let full = file.dirty.compactMap { $0.value.count == chunkSize ? $0.key : nil }
            if full.count >= options.fullChunksPerCommit { try commit(file, only: full) }
        }
        return data.count
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
        if file.lostWrites { throw .lostWrites }
        let indices = (only ?? Array(file.dirty.keys)).filter { file.dirty[$0] != nil }.sorted()
        if indices.isEmpty && file.size == file.committedSize && file.mtime == nil { return }
        let refs = try storeChunks(file.ino, indices.map { ($0, file.dirty[$0]!) }, fileSize: file.size)
        var size = file.size
        let committed: Committed
        if only != nil {
            // Commit no size that covers data still buffered: a crash would show it as zeros.
            let reach = refs.map { UInt64($0.index * chunkSize + $0.length) }.max() ?? 0
            size = min(file.size, max(file.committedSize, reach))
        }
        do {
            committed = try metadata.commitData(file.ino, chunks: refs, dropFrom: nil, size: size, mtime: file.mtime, now: Self.now())
        } catch {
            deleteObjects(refs)
            logger.error("commit of inode \(file.ino.rawValue) failed: \(error)")
            if case .fenced(let holder) = error {
                file.lock.unlock()
                loseLease("a commit found the lease with \(holder ?? "nobody")")
                file.lock.lock()
                throw .lostWrites
            }
            throw .metadata(error)
        }
        var delta: Int64 = 0
        var released: Int64 = 0
        for ref in refs {
            delta += Int64(ref.length) - Int64(file.chunkMap[ref.index]?.length ?? 0)
            released += file.reserved.removeValue(forKey: ref.index) ?? 0
            file.chunkMap[ref.index] = ref
            file.dirty[ref.index] = nil
        }
        file.committedSize = size
        if file.dirty.isEmpty && file.size == size { file.mtime = nil }
        restamp(committed.attr)
        accounting.withLock { state in
            state.used = UInt64(max(0, Int64(state.used) + delta))
            state.reserved -= released
        }
    }

    /// Stores chunks as new objects, several at once; on any failure, stores none.
    func storeObjects(_ ino: InodeNumber, _ chunks: [(Int, [UInt8])]) throws(FSError) -> [ChunkRef] {
        if chunks.count == 1 {
            return [try Self.typed { try chunks[0].1.withUnsafeBytes { bytes throws in try storeObject(ino, chunks[0].0, bytes) } }]
        }
        let results = Mutex<[Result<ChunkRef, FSError>?]>(Array(repeating: nil, count: chunks.count))
        let workers = min(chunks.count, 4)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for slot in stride(from: worker, to: chunks.count, by: workers) {
                let (index, bytes) = chunks[slot]
                let result: Result<ChunkRef, FSError> = bytes.withUnsafeBytes { buffer in
                    do throws(FSError) { return .success(try storeObject(ino, index, buffer)) } catch { return .failure(error) }
                }
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
    func storeChunks(_ ino: InodeNumber, _ chunks: [(Int, [UInt8])], fileSize: UInt64) throws(FSError) -> [ChunkRef] {
        guard fileSize <= UInt64(min(options.inlineLimit, chunkSize)) else { return try storeObjects(ino, chunks) }
        return chunks.map { index, bytes in
            ChunkRef(index: index, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
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
    func storeObject(_ ino: InodeNumber, _ index: Int, _ bytes: UnsafeRawBufferPointer) throws(FSError) -> ChunkRef {
        let checksums = BlockChecksums(of: bytes)
        var attempts = 0
        var reclaimed = false
        while true {
            let id = ObjectID.random()
            do {
                try store.put(id, bytes)
                return ChunkRef(index: index, object: id, length: bytes.count, checksums: checksums)
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

    // MARK: - Size changes

    /// Sets the size of `ino`: shrinking drops whole chunks past the end and rewrites the
    /// one the new end falls in; growing adds a hole, which takes no space.
    public func truncate(_ ino: InodeNumber, to size: UInt64) throws(FSError) {
        guard size <= Self.maxFileSize else { throw .fileTooBig }
        try ensureWritable()
        let attr = try Self.lift { () throws(MetadataError) in try metadata.getattr(ino) }
        if attr.isDirectory { throw .metadata(.isDirectory) }
        guard attr.isRegular else { throw .invalidArgument("truncate of a special file") }
        let file = openFiles.withLock { $0[ino] }
        file?.lock.lock()
        defer { file?.lock.unlock() }
        var chunkMap: [Int: ChunkRef]
        var currentSize = attr.size
        if let file {
            try commit(file)
            chunkMap = file.chunkMap
            currentSize = file.size
        } else {
            chunkMap = Dictionary(uniqueKeysWithValues: try Self.lift { () throws(MetadataError) in
                try metadata.chunks(ino)
            }.map { ($0.index, $0) })
        }
        if size == currentSize { return }

        var boundary: [ChunkRef] = []
        var dropFrom: Int? = nil
        var delta: Int64 = 0
        if size < currentSize {
            let cs = UInt64(chunkSize)
            let index = Int(size / cs)
            let keep = Int(size % cs)
            dropFrom = keep == 0 ? index : index + 1
            if keep > 0, let ref = chunkMap[index], ref.length > keep {
                var bytes = [UInt8](repeating: 0, count: keep)
                try Self.typed { try bytes.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) throws in
                    try readVerified(ino, ref, from: 0, to: keep, into: buffer)
                } }
                boundary += try storeChunks(ino, [(index, bytes)], fileSize: size)
                delta += Int64(keep - ref.length)
            }
            for (chunkIndex, ref) in chunkMap where chunkIndex >= dropFrom! { delta -= Int64(ref.length) }
        }
        let now = Self.now()
        let committed: Committed
        do {
            committed = try metadata.commitData(ino, chunks: boundary, dropFrom: dropFrom, size: size, mtime: now, now: now)
        } catch {
            deleteObjects(boundary)
            throw .metadata(error)
        }
        if let file {
            if let dropFrom { file.chunkMap = file.chunkMap.filter { $0.key < dropFrom } }
            for ref in boundary { file.chunkMap[ref.index] = ref }
            file.size = size
            file.committedSize = size
            file.mtime = nil
        }
        accounting.withLock { $0.used = UInt64(max(0, Int64($0.used) + delta)) }
        restamp(committed.attr)
    }

    /// fallocate(2) with mode 0: makes sure the volume has room for the range and extends
    /// the file over it. Other modes answer EOPNOTSUPP.
    public func fallocate(_ ino: InodeNumber, _ fh: FileHandleID, mode: Int32, offset: UInt64, length: UInt64) throws(FSError) {
        guard mode == 0 else { throw .notSupported("fallocate mode \(mode)") }
        guard length > 0 else { throw .invalidArgument("fallocate of length 0") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= Self.maxFileSize else { throw .fileTooBig }
        let file = try file(fh, ino)
        try ensureWritable()
        file.lock.lock()
        defer { file.lock.unlock() }
        guard end > file.size else { return }
        let needed = Int64(end - file.size)
        flushPurges()
        refreshUsage()
        try accounting.withLock { state throws(FSError) in
            if Int64(state.used) + state.reserved + needed > Int64(state.limit) { throw .noSpace }
        }
        file.size = end
        file.mtime = Self.now()
        try commit(file)
    }

    // MARK: - Garbage

    /// When the chunk store is out of space (or nearly, under `fullStoreMargin`): deletes
    /// garbage older than `fullStoreGraceSeconds` rather than the whole grace period, so
    /// that deleting files frees space within seconds. A reader on another mount that
    /// still holds the chunk map of a file deleted since then reads `EIO` from it. Only
    /// the writer reclaims; returns how many objects went.
    @discardableResult
    public func reclaimSpace(ifBelow margin: UInt64? = nil) -> Int {
        guard isWriter else { return 0 }
        if let margin {
            guard let room = store.availableBytes(), room < margin else { return 0 }
        }
        flushPurges()
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
    /// `graceSeconds`) ago; returns how many.
    @discardableResult
    public func collectGarbage(now: Timestamp = VolumeFS.now(), graceSeconds: Int? = nil) throws(FSError) -> Int {
        let grace = Int64(graceSeconds ?? options.gcGraceSeconds)
        let cutoff = Timestamp(nanoseconds: now.nanoseconds - grace * 1_000_000_000)
        var total = 0
        while true {
            let due = try Self.lift { () throws(MetadataError) in try metadata.garbage(before: cutoff, limit: 512) }
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
            if deleted.count < due.count { return total }
        }
    }
}

extension VolumeFS {
    /// Makes every committed change durable (fsync of a directory).
    public func syncMetadata() throws(FSError) {
        try Self.lift { () throws(MetadataError) in try metadata.sync() }
    }
}
