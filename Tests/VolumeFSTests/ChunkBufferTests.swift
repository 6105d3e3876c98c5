import ChunkStore
import Testing
@testable import VolumeFS

struct ChunkBufferTests {
    let chunkSize = 1 << 20

    func filled(_ bytes: UnsafeRawBufferPointer, _ pool: ChunkBufferPool) -> ChunkBuffer {
        var buffer = ChunkBuffer(pool: pool)
        buffer.write(bytes, at: 0)
        return buffer
    }

    func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) &+ seed }
    }

    /// Random writes, resizes, zeroings and compactions against an array doing the same.
    @Test(arguments: [1, 2, 3])
    func matchesAnArrayUnderRandomEdits(seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 2)
        var buffer = ChunkBuffer(pool: pool)
        var model: [UInt8] = []
        for step in 0..<300 {
            switch Int.random(in: 0..<11, using: &generator) {
            case 0..<6:
                let offset = Int.random(in: 0...min(chunkSize - 1, model.count + 70_000), using: &generator)
                let count = Int.random(in: 0...min(chunkSize - offset, [100, 5000, 300_000].randomElement(using: &generator)!), using: &generator)
                let data = pattern(count, seed: UInt8(step % 256))
                data.withUnsafeBytes { buffer.write($0, at: offset) }
                if model.count < offset { model += [UInt8](repeating: 0, count: offset - model.count) }
                for (i, byte) in data.enumerated() {
                    if offset + i < model.count { model[offset + i] = byte } else { model.append(byte) }
                }
            case 6..<8:
                let length = Int.random(in: 0...min(chunkSize, model.count + 10_000), using: &generator)
                buffer.resize(to: length)
                model = length <= model.count ? Array(model[0..<length]) : model + [UInt8](repeating: 0, count: length - model.count)
            case 8:
                // What a close kept for a group commit does, while the file stays open.
                buffer.compact()
            default:
                guard !model.isEmpty else { continue }
                let low = Int.random(in: 0..<model.count, using: &generator)
                let high = Int.random(in: low...model.count, using: &generator)
                buffer.zero(low..<high)
                for i in low..<high { model[i] = 0 }
            }
            #expect(buffer.count == model.count)
            #expect(buffer.array == model, "after step \(step)")
        }
    }

    /// A copy (an upload's, a reader's) keeps what it saw while the original changes.
    @Test func copiesAreUnaffectedByLaterWrites() {
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 2)
        var original = pattern(chunkSize, seed: 1).withUnsafeBytes { filled($0, pool) }
        let snapshot = original
        pattern(1000, seed: 9).withUnsafeBytes { original.write($0, at: 10) }
        original.resize(to: 50)
        #expect(snapshot.array == pattern(chunkSize, seed: 1))
        #expect(original.count == 50)
        #expect(Array(original.array[10..<50]) == Array(pattern(1000, seed: 9)[0..<40]))
    }

    /// Big chunks get a whole chunk's buffer, aligned for direct writes, and give it back
    /// to the pool for the next; small ones stay small.
    @Test func fullChunksUseAlignedPooledBuffers() {
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 2)
        var first: UnsafeRawPointer?
        do {
            var buffer = ChunkBuffer(pool: pool)
            pattern(chunkSize, seed: 3).withUnsafeBytes { buffer.write($0, at: 0) }
            buffer.withUnsafeBytes { bytes in
                first = bytes.baseAddress
                #expect(DirectIO.isAligned(bytes))
            }
        }
        var next = ChunkBuffer(pool: pool)
        pattern(ChunkBuffer.smallLimit + 1, seed: 4).withUnsafeBytes { next.write($0, at: 0) }
        next.withUnsafeBytes { #expect($0.baseAddress == first) }
        #expect(next.array == pattern(ChunkBuffer.smallLimit + 1, seed: 4))

        var small = ChunkBuffer(pool: pool)
        pattern(10, seed: 5).withUnsafeBytes { small.write($0, at: 0) }
        small.withUnsafeBytes { #expect($0.baseAddress != first && Int(bitPattern: $0.baseAddress) % DirectIO.alignment == 0) }
    }

    /// A chunk filled to a few hundred KiB in a whole chunk's buffer gives the rest back
    /// when compacted; its bytes, and a copy taken before, are unchanged.
    @Test func compactingFitsTheBytes() {
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 2)
        let content = pattern(ChunkBuffer.smallLimit + 5000, seed: 6)
        var buffer = content.withUnsafeBytes { filled($0, pool) }
        let before = buffer
        buffer.compact()
        #expect(buffer.array == content && before.array == content)
        buffer.withUnsafeBytes { bytes in before.withUnsafeBytes { #expect(bytes.baseAddress != $0.baseAddress) } }
        // Already fitted: left alone.
        var full = pattern(chunkSize, seed: 7).withUnsafeBytes { filled($0, pool) }
        let address = full.withUnsafeBytes { $0.baseAddress }
        full.compact()
        full.withUnsafeBytes { #expect($0.baseAddress == address) }
    }

    /// The pool keeps at most `kept` buffers given back, and gives them up once no writer
    /// has taken one for the idle time.
    @Test func thePoolKeepsBuffersUntilNoWriterTakesThem() {
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 3)
        let taken = (0..<5).map { _ in pool.take() }
        for base in taken { pool.giveBack(base) }
        #expect(pool.keptCount == 3)
        pool.trim(idleFor: .seconds(3600))
        #expect(pool.keptCount == 3, "one was taken a moment ago")
        let again = pool.take()
        #expect(taken.contains(again) && pool.allocations.load(ordering: .relaxed) == 5)
        pool.giveBack(again)
        pool.trim(idleFor: .zero)
        #expect(pool.keptCount == 0)
    }

    /// Another writer of the file may go on filling a chunk compacted at one writer's
    /// close: it grows back into a whole chunk's buffer from the pool.
    @Test func aCompactedChunkGrowsAgain() {
        let pool = ChunkBufferPool(chunkSize: chunkSize, kept: 2)
        let head = pattern(1000, seed: 8)
        var buffer = head.withUnsafeBytes { filled($0, pool) }
        pattern(ChunkBuffer.smallLimit + 1, seed: 9).withUnsafeBytes { buffer.write($0, at: 0) }
        buffer.resize(to: 1000)
        head.withUnsafeBytes { buffer.write($0, at: 0) }
        buffer.compact()
        let tail = pattern(chunkSize - 1000, seed: 10)
        tail.withUnsafeBytes { buffer.write($0, at: 1000) }
        #expect(buffer.array == head + tail)
        buffer.withUnsafeBytes { #expect(DirectIO.isAligned($0)) }
    }
}
