#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Dispatch
public import Metadata
import Synchronization

// Truncation and fallocate.
extension VolumeFS {
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
        var rewritten: [(Int, ChunkBuffer)] = []
        var drop: Range<Int>? = nil
        if size < currentSize {
            let cs = UInt64(chunkSize)
            let index = Int(size / cs)
            let keep = Int(size % cs)
            drop = .from(keep == 0 ? index : index + 1)
            if keep > 0, let ref = chunkMap[index], ref.length > keep {
                var bytes = ChunkBuffer(pool: chunkBuffers)
                bytes.resize(to: keep)
                _ = try bytes.withUnsafeMutableBytes { buffer throws(FSError) in
                    try readVerified(ino, ref, from: 0, to: keep, into: buffer)
                }
                rewritten.append((index, bytes))
            }
        }
        try recommit(ino, file, chunkMap: chunkMap, rewritten: rewritten, drop: drop, size: size)
    }

    /// Commits a change to the chunks of `ino` made outside its write buffers: chunks
    /// `rewritten` whole (stored as new objects or inline), the chunks in `drop` removed,
    /// and the size set, in one transaction. The caller holds `file`'s lock, if it is open.
    func recommit(_ ino: InodeNumber, _ file: OpenFile?, chunkMap: [Int: ChunkRef], rewritten: [(Int, ChunkBuffer)],
                  drop: Range<Int>?, size: UInt64) throws(FSError) {
        let refs = try storeChunks(ino, rewritten, fileSize: size)
        var delta: Int64 = 0
        for ref in refs { delta += Int64(ref.length) - Int64(chunkMap[ref.index]?.length ?? 0) }
        if let drop {
            for (index, ref) in chunkMap where drop.contains(index) { delta -= Int64(ref.length) }
        }
        let now = Self.now()
        let committed: Committed
        do {
            committed = try metadata.commitData(ino, chunks: refs, drop: drop, size: size, mtime: now, now: now)
        } catch {
            deleteObjects(refs)
            throw .metadata(error)
        }
        if let file {
            if let drop { file.chunkMap = file.chunkMap.filter { !drop.contains($0.key) } }
            for ref in refs { file.chunkMap[ref.index] = ref }
            file.size = size
            file.committedSize = size
            file.mtime = nil
            if file.mapStamp != nil { file.mapStamp = CacheStamp(committed.attr) }
        }
        accounting.withLock { $0.used = UInt64(max(0, Int64($0.used) + delta)) }
        restamp(committed.attr)
    }

    /// fallocate(2). Mode 0 makes sure the volume has room for the range and extends the
    /// file over it; `FALLOC_FL_KEEP_SIZE` alone checks the room and changes nothing (a
    /// chunk takes space only once written). `FALLOC_FL_PUNCH_HOLE` (always with
    /// KEEP_SIZE) and `FALLOC_FL_ZERO_RANGE` make the range read as zeros: chunks it
    /// covers whole leave the file's map and take no space any more, the chunks at its
    /// ends are rewritten. ZERO_RANGE without KEEP_SIZE also extends the file. Other modes
    /// (collapse, insert, unshare) answer EOPNOTSUPP.
    public func fallocate(_ ino: InodeNumber, _ fh: FileHandleID, mode: Int32, offset: UInt64, length: UInt64) throws(FSError) {
        let keepSize: Int32 = 0x01, punchHole: Int32 = 0x02, zeroRange: Int32 = 0x10
        guard mode & ~(keepSize | punchHole | zeroRange) == 0, mode & (punchHole | zeroRange) != (punchHole | zeroRange) else {
            throw .notSupported("fallocate mode \(mode)")
        }
        guard length > 0 else { throw .invalidArgument("fallocate of length 0") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= Self.maxFileSize else { throw .fileTooBig }
        let file = try file(fh, ino)
        try ensureWritable()
        file.lock.lock()
        defer { file.lock.unlock() }
        if mode & (punchHole | zeroRange) != 0 {
            try zero(file, from: offset, to: end, keepSize: mode & keepSize != 0)
            return
        }
        guard end > file.size else { return }
        let needed = Int64(end - file.size)
        flushPurges()
        refreshUsage()
        try accounting.withLock { state throws(FSError) in
            if Int64(state.used) + state.reserved + needed > Int64(state.limit) { throw .noSpace }
        }
        guard mode & keepSize == 0 else { return }
        file.size = end
        file.mtime = Self.now()
        try commit(file)
    }

    /// Makes bytes `[offset, end)` of `file` read as zeros (within its size when
    /// `keepSize`, else growing it to `end`). Caller holds `file.lock`.
    func zero(_ file: OpenFile, from offset: UInt64, to end: UInt64, keepSize: Bool) throws(FSError) {
        try commit(file)
        let size = file.size
        let newSize = keepSize ? size : max(size, end)
        let stop = min(end, newSize)
        let cs = UInt64(chunkSize)
        var drop: Range<Int>? = nil
        var rewritten: [(Int, ChunkBuffer)] = []
        if offset < stop {
            let firstWhole = Int((offset + cs - 1) / cs)
            var pastWhole = Int(stop / cs)
            for index in Set([Int(offset / cs), Int((stop - 1) / cs)]).sorted() where index < firstWhole || index >= pastWhole {
                // A hole, or bytes past what the chunk stores, already read as zeros.
                guard let ref = file.chunkMap[index] else { continue }
                let chunkStart = UInt64(index) * cs
                let low = Int(max(offset, chunkStart) - chunkStart)
                let high = Int(min(stop, chunkStart + cs) - chunkStart)
                guard low < ref.length else { continue }
                if low == 0 && high >= ref.length {
                    // Nothing stored is left: the chunk goes, with the whole ones before it.
                    pastWhole = index + 1
                    continue
                }
                var bytes = try load(file, index)
                if high >= bytes.count {
                    bytes.resize(to: low)
                } else {
                    bytes.zero(low..<high)
                }
                rewritten.append((index, bytes))
            }
            if firstWhole < pastWhole { drop = firstWhole..<pastWhole }
        }
        if rewritten.isEmpty && (drop.map { range in !file.chunkMap.keys.contains { range.contains($0) } } ?? true) && newSize == size {
            return
        }
        try recommit(file.ino, file, chunkMap: file.chunkMap, rewritten: rewritten, drop: drop, size: newSize)
    }
}
