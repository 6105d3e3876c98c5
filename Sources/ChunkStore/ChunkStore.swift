// ChunkStore: where the bytes of files live.
//
// A store holds immutable objects named by `ObjectID`. It knows nothing about files,
// chunks maps or checksums: the layer above decides what an object means, writes it
// whole under a fresh id before anything refers to it, and never changes it after.
// That is what lets readers use an object without locks and lets a crash leave, at
// worst, an object nothing refers to (which garbage collection reclaims).

/// The name of one immutable object in a chunk store.
public struct ObjectID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// A fresh random id. Ids are random rather than counted so that writing an object
    /// needs no metadata round trip; `put` refuses an id that already exists.
    public static func random() -> ObjectID {
        var id: UInt64 = 0
        while id == 0 { id = UInt64.random(in: 1...UInt64.max) }
        return ObjectID(rawValue: id)
    }

    public var description: String {
        let hex = String(rawValue, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    public init?(hex: String) {
        guard hex.count == 16, let value = UInt64(hex, radix: 16) else { return nil }
        self.rawValue = value
    }
}

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

/// A place that keeps immutable objects.
///
/// Every requirement is safe to call from many threads at once.
public protocol ChunkStore: Sendable {
    /// Stores `bytes` as object `id`, durably: when `put` returns, the object survives a
    /// crash of the process or the machine. Fails with `.exists` if `id` is taken.
    func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError)

    /// Reads from object `id` starting at `offset` into `buffer`, and returns how many
    /// bytes were read: fewer than `buffer.count` only at the end of the object.
    func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int

    /// Hints that object `id` will be read soon, so that fetching it overlaps the reads
    /// before it; returns without waiting. A missing object is not an error here.
    func prefetch(_ id: ObjectID)

    /// The length of object `id` in bytes.
    func size(of id: ObjectID) throws(StoreError) -> Int

    /// Removes object `id`. Removing an object that does not exist is not an error.
    func delete(_ id: ObjectID) throws(StoreError)

    /// Every object in the store, in no particular order (for garbage collection and fsck).
    func list() throws(StoreError) -> [ObjectID]

    /// Says that the bytes just read from object `id` did not match their checksums:
    /// the store drops any local copy it keeps of the object, so that the next read
    /// fetches it again from where it is kept durably. Returns without waiting.
    func discard(_ id: ObjectID)
}

extension ChunkStore {
    /// A store without local copies has nothing to drop: the next read goes to the
    /// object itself anyway.
    public func discard(_ id: ObjectID) {}
}
