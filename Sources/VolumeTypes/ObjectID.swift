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
