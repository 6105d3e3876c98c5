#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Dispatch
public import Metadata
import Synchronization

// The read path: one buffer per request, filled in place and verified block by block.
extension VolumeFS {
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
        readAhead(file, fh, after: first...last)
        return Int(end - offset)
    }

    /// Answers a read with bytes the store holds in memory (a download that just landed,
    /// or one landing), handing them to `send` checked but uncopied: a cold sequential
    /// reader then costs one copy of each byte fewer. Only a read within one stored chunk
    /// not being written qualifies. False, having sent nothing, when the read cannot be
    /// answered so; the caller then reads into a buffer of its own, which also reports
    /// whatever went wrong here (a checksum mismatch included).
    public func read(_ ino: InodeNumber, _ fh: FileHandleID, offset: UInt64, count: Int,
                     sendingFromMemory send: (UnsafeRawBufferPointer) -> Void) throws(FSError) -> Bool {
        guard store.lendsFromMemory else { return false }
        let file = try file(fh, ino)
        file.lock.lock()
        let size = file.size
        let cs = UInt64(chunkSize)
        let index = Int(offset / cs)
        guard offset < size, count > 0, Int((min(offset + UInt64(count), size) - 1) / cs) == index,
              file.dirty[index] == nil, let ref = file.chunkMap[index], case .object(let object) = ref.location else {
            file.lock.unlock()
            return false
        }
        file.lock.unlock()
        let low = Int(offset - UInt64(index) * cs)
        let high = low + Int(min(offset + UInt64(count), size) - offset)
        let blockSize = BlockChecksums.blockSize
        guard high <= ref.length, ref.checksums.values.count == (ref.length + blockSize - 1) / blockSize else { return false }
        let readStart = low / blockSize * blockSize
        let readEnd = min((high + blockSize - 1) / blockSize * blockSize, ref.length)
        var sent = false
        _ = store.withBytesInMemory(object, offset: readStart, count: readEnd - readStart) { bytes in
            guard bytes.count == readEnd - readStart, firstMismatch(ref, bytes, from: readStart) == nil else { return }
            send(UnsafeRawBufferPointer(rebasing: bytes[(low - readStart)..<(high - readStart)]))
            sent = true
        }
        guard sent else { return false }
        readAhead(file, fh, after: index...index)
        return true
    }

    /// The first of `bytes`' blocks (the whole blocks of `ref` from `start` on) that does
    /// not match its checksum, as a block number of the chunk; nil when all match.
    func firstMismatch(_ ref: ChunkRef, _ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        let blockSize = BlockChecksums.blockSize
        var block = start / blockSize
        var at = 0
        while at < bytes.count {
            let next = min(at + blockSize, bytes.count)
            if BlockChecksums.hash(UnsafeRawBufferPointer(rebasing: bytes[at..<next])) != ref.checksums.values[block] { return block }
            block += 1
            at = next
        }
        return nil
    }

    /// Fetches the chunks ahead of a read once it has its bytes: started before, their
    /// downloads would share the network with the one it waits for.
    func readAhead(_ file: OpenFile, _ fh: FileHandleID, after chunks: ClosedRange<Int>) {
        // Once per answered read: cache copies wait until these go quiet.
        if store.writesCopiesLater { noteStreaming() }
        let ahead = handles.withLock { $0[fh]?.reads.ahead(of: chunks, by: options.prefetchChunks,
                                                                     growingTo: options.prefetchWindowBytes / chunkSize) } ?? 0..<0
        guard !ahead.isEmpty else { return }
        let chunks = file.lock.withLock { ahead.compactMap { index in file.chunkMap[index].flatMap { ref in ref.object.map { (index, $0, ref) } } } }
        let later = canCacheFromPages
        for (index, object, ref) in chunks {
            if later { notePageSource(object, PageSource(ino: file.ino, offset: UInt64(index) * UInt64(chunkSize), ref: ref)) }
            store.prefetch(object, writingLater: later)
        }
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
            if let block = firstMismatch(ref, buffer, from: readStart) {
                throw corrupt(ino, ref, "checksum mismatch in block \(block)")
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
            // a scratch buffer so that only checked bytes reach the caller, page-aligned
            // so that a cache reading with O_DIRECT can fill it without one of its own.
            let inPlace = low == readStart && stop == readEnd
            let buffer = inPlace ? UnsafeMutableRawBufferPointer(rebasing: destination[0..<(readEnd - readStart)])
                                 : UnsafeMutableRawBufferPointer.allocate(byteCount: readEnd - readStart, alignment: 4096)
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
    func load(_ file: OpenFile, _ index: Int) throws(FSError) -> ChunkBuffer {
        var bytes = ChunkBuffer(pool: chunkBuffers)
        guard let ref = file.chunkMap[index] else { return bytes }
        bytes.resize(to: ref.length)
        _ = try bytes.withUnsafeMutableBytes { buffer throws(FSError) in
            try readVerified(file.ino, ref, from: 0, to: ref.length, into: buffer)
        }
        return bytes
    }
}
