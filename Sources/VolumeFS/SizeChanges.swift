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
}
