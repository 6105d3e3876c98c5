internal import CXXHash

/// Checksums of an object, one per block.
///
/// A whole-object checksum would make a 4 KiB random read fetch and hash a whole chunk;
/// per-block checksums let a read verify only the blocks it touches.
public struct BlockChecksums: Equatable, Sendable {
    /// Bytes covered by each checksum; the last block may be shorter.
    public static let blockSize = 64 * 1024

    public var values: [UInt64]

    public init(values: [UInt64]) { self.values = values }

    /// Checksums of every block of `bytes`.
    public init(of bytes: UnsafeRawBufferPointer) {
        var values: [UInt64] = []
        values.reserveCapacity((bytes.count + Self.blockSize - 1) / Self.blockSize)
        var start = 0
        while start < bytes.count {
            let end = min(start + Self.blockSize, bytes.count)
            values.append(Self.hash(UnsafeRawBufferPointer(rebasing: bytes[start..<end])))
            start = end
        }
        self.values = values
    }

    /// The XXH3 64-bit hash of `bytes`.
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        UInt64(XXH3_64bits(bytes.baseAddress, bytes.count))
    }

    /// The checksums as little-endian bytes, for storing in metadata.
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(values.count * 8)
        for value in values {
            withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
        }
        return out
    }

    /// Decodes what `encoded` produced; nil when the length is not a multiple of 8.
    public init?(encoded: [UInt8]) {
        guard encoded.count % 8 == 0 else { return nil }
        var values: [UInt64] = []
        values.reserveCapacity(encoded.count / 8)
        var index = 0
        while index < encoded.count {
            var value: UInt64 = 0
            for byte in 0..<8 { value |= UInt64(encoded[index + byte]) << (8 * UInt64(byte)) }
            values.append(value)
            index += 8
        }
        self.values = values
    }
}
