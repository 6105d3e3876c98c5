// ChunkStore: where the bytes of files live.
//
// A store holds immutable objects named by `ObjectID`. It knows nothing about files,
// chunks maps or checksums: the layer above decides what an object means, writes it
// whole under a fresh id before anything refers to it, and never changes it after.
// That is what lets readers use an object without locks and lets a crash leave, at
// worst, an object nothing refers to (which garbage collection reclaims).

@_exported public import VolumeTypes

/// Why a chunk store could not do what was asked.
public enum StoreError: Error, Equatable, Sendable {
    /// The object does not exist (deleted or never written).
    case notFound(ObjectID)
    /// `put` was given an id that is already taken.
    case exists(ObjectID)
    /// The backing store has no room left.
    case noSpace
    /// Any other failure of the backing store, with the system's errno where there is one.
    case io(errno: Int32, String)
}

extension StoreError: CustomStringConvertible {
    /// One line for a log or a person: the store's own words for `.io`.
    public var description: String {
        switch self {
        case .notFound(let id): "object \(id) does not exist"
        case .exists(let id): "object \(id) exists already"
        case .noSpace: "the chunk store is out of space"
        case .io(_, let message): message
        }
    }
}

/// A place that keeps immutable objects.
///
/// Every requirement is safe to call from many threads at once.
public protocol ChunkStore: Sendable {
    /// Stores `bytes` as object `id`, durably: when `put` returns, the object survives a
    /// crash of the process or the machine. Fails with `.exists` if `id` is taken.
    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError)

    /// `put`, for bytes the caller can give back later (a streaming writer's, which stay
    /// in the kernel's pages of the file): a store keeping local copies may then leave
    /// writing its copy until `keep(unwritten:_:)`, and list the object as unwritten.
    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer, writingLater: Bool) throws(StoreError)

    /// Reads from object `id` starting at `offset` into `buffer`, and returns how many
    /// bytes were read: fewer than `buffer.count` only at the end of the object.
    func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int

    /// `read`, also giving the object's whole length when the store learns it in passing
    /// (an S3 ranged GET's `Content-Range`), so that a caller fetching a whole object
    /// needs no `size` call, which over a network is a round trip of its own. nil when
    /// the store did not learn it.
    ///
    /// `progress`, when given, is told as the bytes land, so that a reader waiting for the
    /// first of them need not wait for the last: how many are in `buffer`, contiguous from
    /// its start, and the object's length once known. It may be called on any thread, or
    /// not at all. A retry after a broken transfer starts counting again, over bytes that
    /// stay as they were: objects never change.
    func readReportingSize(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                           progress: ReadProgress?) throws(StoreError) -> (count: Int, objectSize: Int?)

    /// Calls `body` with bytes `[offset, offset + count)` of object `id` (fewer at its end)
    /// where the store holds them in memory, without copying them, and returns how many
    /// it passed; nil, without calling `body`, where it does not hold them. The bytes are
    /// valid only while `body` runs. `body` is not called when the count is 0.
    func withBytesInMemory(_ id: ObjectID, offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) -> Void) -> Int?

    /// Whether `withBytesInMemory` can ever lend anything: a caller asks a store that
    /// cannot for nothing, and spends nothing on every read to find out.
    var lendsFromMemory: Bool { get }

    /// Hints that object `id` will be read soon, so that fetching it overlaps the reads
    /// before it; returns without waiting. A missing object is not an error here.
    func prefetch(_ id: ObjectID)

    /// `prefetch`, for a streaming reader whose bytes the caller can give back later: a
    /// store keeping local copies may then leave writing its copy until `keep(unwritten:_:)`.
    func prefetch(_ id: ObjectID, writingLater: Bool)

    /// `prefetch`, for an object wanted in the store's local copies only (one whose copy
    /// could not be written from the caller's bytes): no reader waits for it, so a store
    /// need not keep it in memory once it is written.
    func cache(_ id: ObjectID)

    /// Whether `prefetch(_:writingLater:)` can leave anything for later: a caller asks a
    /// store that cannot for nothing.
    var writesCopiesLater: Bool { get }

    /// Objects fetched by `prefetch(_:writingLater:)` or stored by `put(_:_:writingLater:)`
    /// whose local copy is not written yet,
    /// with their sizes, oldest first.
    var unwrittenObjects: [(id: ObjectID, size: Int)] { get }

    /// Writes the local copy of an object listed in `unwrittenObjects` from `bytes`
    /// (checked by the caller), or from memory the store still holds it in when `bytes`
    /// is nil; true when it was written.
    @discardableResult
    func keep(unwritten id: ObjectID, _ bytes: UnsafeRawBufferPointer?) -> Bool

    /// Stops listing `id` in `unwrittenObjects`.
    func forget(unwritten id: ObjectID)

    /// The length of object `id` in bytes.
    func size(of id: ObjectID) throws(StoreError) -> Int

    /// Removes object `id`. Removing an object that does not exist is not an error.
    func delete(_ id: ObjectID) throws(StoreError)

    /// Every object in the store, in no particular order (for garbage collection and fsck).
    func list() throws(StoreError) -> [ObjectID]

    /// Says that the bytes just read from object `id` did not match their checksums: a
    /// store that keeps a local copy drops it, so that the next read fetches the object
    /// again. Stores without copies need not implement it.
    func discard(_ id: ObjectID)

    /// Bytes the store can still take, when it lives on a filesystem of bounded size (a
    /// local directory); nil when it cannot tell or has no bound (an object service).
    /// `statfs` reports the smaller of this and the volume's own free space.
    func availableBytes() -> UInt64?

    /// Waits, at most `timeout` seconds, for what the store finishes after a call has
    /// returned (a cache's downloads, which a reader leaves as soon as its own bytes have
    /// landed); true when nothing is left under way.
    func settle(timeout: Double) -> Bool
}

/// Bytes landed so far in a read's buffer, and the object's length once known.
public typealias ReadProgress = @Sendable (_ landed: Int, _ objectSize: Int?) -> Void

extension ChunkStore {
    public func readReportingSize(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                                  progress: ReadProgress?) throws(StoreError) -> (count: Int, objectSize: Int?) {
        (try read(id, offset: offset, into: buffer), nil)
    }

    public func readReportingSize(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> (count: Int, objectSize: Int?) {
        try readReportingSize(id, offset: offset, into: buffer, progress: nil)
    }

    public func withBytesInMemory(_ id: ObjectID, offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) -> Void) -> Int? { nil }
    public var lendsFromMemory: Bool { false }
    public func discard(_ id: ObjectID) {}
    public func availableBytes() -> UInt64? { nil }
    public func settle(timeout: Double) -> Bool { true }
    public func prefetch(_ id: ObjectID, writingLater: Bool) { prefetch(id) }
    public func cache(_ id: ObjectID) { prefetch(id) }
    public func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer, writingLater: Bool) throws(StoreError) {
        try put(id, bytes)
    }
    public var writesCopiesLater: Bool { false }
    public var unwrittenObjects: [(id: ObjectID, size: Int)] { [] }
    @discardableResult
    public func keep(unwritten id: ObjectID, _ bytes: UnsafeRawBufferPointer?) -> Bool { false }
    public func forget(unwritten id: ObjectID) {}
}
