#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Synchronization

/// The bytes written to one chunk and not yet committed.
///
/// A value with copy-on-write, like an array: a read or an upload that took a copy keeps
/// the bytes it saw while a later write changes the chunk. Unlike an array, the bytes are
/// page-aligned and a full chunk's buffer is reused: a streaming writer's chunks go to the
/// store as they are, with `O_DIRECT` and no copy into an aligned buffer first, and into
/// pages already faulted in rather than fresh ones the kernel must zero.
struct ChunkBuffer: Sendable {
    final class Storage: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let capacity: Int
        /// Where a full-chunk buffer goes back when the last copy lets go.
        let pool: ChunkBufferPool

        init(capacity: Int, pool: ChunkBufferPool) {
            self.capacity = capacity
            self.pool = pool
            if capacity == pool.chunkSize {
                self.base = pool.take()
            } else {
                self.base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: DirectIO.alignment)
            }
        }

        deinit {
            if capacity == pool.chunkSize { pool.giveBack(base) } else { base.deallocate() }
        }
    }

    private var storage: Storage
    private(set) var count: Int

    /// Below this, a chunk grows by doubling; past it, it takes a whole chunk's buffer at
    /// once, which a sequential writer fills without another copy.
    static let smallLimit = 256 << 10

    init(pool: ChunkBufferPool) {
        storage = Storage(capacity: DirectIO.alignment, pool: pool)
        count = 0
    }

    func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: storage.base, count: count))
    }

    mutating func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        makeRoom(for: count)
        return try body(UnsafeMutableRawBufferPointer(start: storage.base, count: count))
    }

    /// The bytes as an array, for a chunk kept inline in the metadata.
    var array: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Puts `source` at `offset`; bytes between the end and `offset` read as zeros.
    mutating func write(_ source: UnsafeRawBufferPointer, at offset: Int) {
        let end = offset + source.count
        makeRoom(for: max(end, count))
        if offset > count { (storage.base + count).initializeMemory(as: UInt8.self, repeating: 0, count: offset - count) }
        if let from = source.baseAddress, source.count > 0 { (storage.base + offset).copyMemory(from: from, byteCount: source.count) }
        count = max(count, end)
    }

    /// Cuts the chunk to its first `length` bytes, or pads it with zeros to them.
    mutating func resize(to length: Int) {
        if length > count {
            write(UnsafeRawBufferPointer(start: nil, count: 0), at: length)
        } else {
            makeRoom(for: length)
            count = length
        }
    }

    /// Sets the bytes of `range` (inside the chunk) to zero.
    mutating func zero(_ range: Range<Int>) {
        makeRoom(for: count)
        (storage.base + range.lowerBound).initializeMemory(as: UInt8.self, repeating: 0, count: range.count)
    }

    /// Moves the bytes into storage of their own size when they fill less than half of
    /// what they hold: a file closed with a few hundred KiB in a whole chunk's buffer, and
    /// kept for a group commit, would otherwise hold the whole chunk.
    mutating func compact() {
        let fitted = max(DirectIO.alignment, DirectIO.padded(count))
        guard storage.capacity >= 2 * fitted else { return }
        // The pool stays with the bytes: a writer may go on filling the chunk afterwards,
        // and growth past `smallLimit` takes the pool's whole-chunk buffer.
        let smaller = Storage(capacity: fitted, pool: storage.pool)
        smaller.base.copyMemory(from: storage.base, byteCount: count)
        storage = smaller
    }

    /// Makes the storage this value's own and at least `needed` bytes long.
    private mutating func makeRoom(for needed: Int) {
        let unique = isKnownUniquelyReferenced(&storage)
        if unique && needed <= storage.capacity { return }
        var capacity = storage.capacity
        if needed > capacity {
            let chunkSize = storage.pool.chunkSize
            capacity = needed > Self.smallLimit ? max(needed, chunkSize) : max(needed, capacity * 2)
            capacity = DirectIO.padded(capacity)
            if needed <= chunkSize { capacity = min(capacity, chunkSize) }
        }
        let grown = Storage(capacity: capacity, pool: storage.pool)
        grown.base.copyMemory(from: storage.base, byteCount: count)
        storage = grown
    }
}

/// Full-chunk buffers kept for the next chunks written: a sequential writer releases one
/// as each upload finishes and takes one for each chunk it starts.
///
/// It keeps as many as a writer holds at once (uploads in flight, stored chunks waiting
/// for their commit, the chunk being filled): a commit gives back several at once, and
/// with fewer kept the writer's next chunks were fresh memory, whose zeroing by the
/// kernel took a third of the daemon's CPU while streaming to the network. They go back
/// to the system once no writer has taken one for a while (`trim`).
final class ChunkBufferPool: Sendable {
    let chunkSize: Int
    let kept: Int
    private let state = Mutex<(free: [UInt], lastTake: ContinuousClock.Instant)>(([], .now))

    init(chunkSize: Int, kept: Int) {
        self.chunkSize = chunkSize
        self.kept = kept
    }

    /// Buffers allocated since the pool was made.
    let allocations = Atomic<Int>(0)

    func take() -> UnsafeMutableRawPointer {
        let address = state.withLock { state -> UInt? in
            state.lastTake = .now
            return state.free.popLast()
        }
        if let address { return UnsafeMutableRawPointer(bitPattern: address)! }
        allocations.add(1, ordering: .relaxed)
        return DirectIO.allocate(byteCount: chunkSize)
    }

    func giveBack(_ base: UnsafeMutableRawPointer) {
        let keep = state.withLock { state in
            guard state.free.count < kept else { return false }
            state.free.append(UInt(bitPattern: base))
            return true
        }
        if !keep { base.deallocate() }
    }

    /// Gives the kept buffers back to the system if none was taken for `idle`.
    func trim(idleFor idle: Duration) {
        let dropped = state.withLock { state -> [UInt] in
            guard ContinuousClock.now - state.lastTake >= idle else { return [] }
            defer { state.free.removeAll() }
            return state.free
        }
        for address in dropped { UnsafeMutableRawPointer(bitPattern: address)!.deallocate() }
    }

    /// Buffers kept now.
    var keptCount: Int { state.withLock { $0.free.count } }

    deinit {
        for address in state.withLock({ $0.free }) { UnsafeMutableRawPointer(bitPattern: address)!.deallocate() }
    }
}
