import ChunkStore
import Foundation
import Metadata
import Testing
@testable import VolumeFS

/// The reference: what a POSIX filesystem must show for the same operations, with no
/// chunks, buffers or databases in the way.
struct Model {
    typealias FileID = Int
    var names: [String: FileID] = [:]
    var contents: [FileID: [UInt8]] = [:]
    var nextID = 0

    func nlink(_ id: FileID) -> Int { names.values.filter { $0 == id }.count }
}

/// One random operation; indices are taken modulo the current lists, so every sequence is valid.
enum Op: CustomStringConvertible {
    case create(name: Int)
    case write(file: Int, offset: Int, length: Int, seed: UInt64)
    case truncate(file: Int, size: Int)
    case read(file: Int, offset: Int, length: Int)
    case unlink(name: Int)
    case rename(from: Int, to: Int)
    case link(from: Int, to: Int)
    case reopen(file: Int)
    case fsync(file: Int)
    case remount

    var description: String {
        switch self {
        case .create(let n): "create(n\(n))"
        case .write(let f, let o, let l, let s): "write(file \(f), offset \(o), length \(l), seed \(s))"
        case .truncate(let f, let s): "truncate(file \(f), size \(s))"
        case .read(let f, let o, let l): "read(file \(f), offset \(o), length \(l))"
        case .unlink(let n): "unlink(n\(n))"
        case .rename(let a, let b): "rename(n\(a) -> n\(b))"
        case .link(let a, let b): "link(n\(a) -> n\(b))"
        case .reopen(let f): "reopen(file \(f))"
        case .fsync(let f): "fsync(file \(f))"
        case .remount: "remount"
        }
    }

    static func random(using g: inout SeededGenerator, chunkSize: Int) -> Op {
        let span = chunkSize * 6
        switch Int.random(in: 0..<100, using: &g) {
        case 0..<10: return .create(name: .random(in: 0..<8, using: &g))
        case 10..<40:
            let length = Bool.random(using: &g) ? Int.random(in: 1...64, using: &g) : Int.random(in: 1...(chunkSize * 2), using: &g)
            return .write(file: .random(in: 0..<100, using: &g), offset: .random(in: 0..<span, using: &g), length: length, seed: g.next())
        case 40..<48: return .truncate(file: .random(in: 0..<100, using: &g), size: .random(in: 0..<span, using: &g))
        case 48..<68: return .read(file: .random(in: 0..<100, using: &g), offset: .random(in: 0..<span, using: &g), length: .random(in: 0...(chunkSize * 3), using: &g))
        case 68..<74: return .unlink(name: .random(in: 0..<8, using: &g))
        case 74..<80: return .rename(from: .random(in: 0..<8, using: &g), to: .random(in: 0..<8, using: &g))
        case 80..<84: return .link(from: .random(in: 0..<8, using: &g), to: .random(in: 0..<8, using: &g))
        case 84..<92: return .reopen(file: .random(in: 0..<100, using: &g))
        case 92..<98: return .fsync(file: .random(in: 0..<100, using: &g))
        default: return .remount
        }
    }
}

/// Drives VolumeFS and the model through the same operations and compares what they show.
final class ModelRun {
    var model = Model()
    let fx: Fixture
    /// For each model file: its inode and the handle kept open on it.
    var open: [Model.FileID: (ino: InodeNumber, fh: FileHandleID)] = [:]
    let seed: UInt64

    init(seed: UInt64, chunkSize: Int, backend: TestBackend) throws {
        self.seed = seed
        var options = VolumeOptions()
        options.maxDirtyChunksPerFile = 3
        // Full chunks stored in the background and committed in groups, and chunks
        // written again while their store is under way, happen within a few steps.
        options.fullChunksPerCommit = 2
        fx = try Fixture(chunkSize: chunkSize, options: options, backend: backend)
    }

    var liveFiles: [Model.FileID] { open.keys.sorted() }

    func name(_ index: Int) -> String { "n\(index)" }

    /// Applies `op` to both; returns the errno each gave (nil for success), which must agree.
    func apply(_ op: Op, step: Int) throws {
        let context = "seed \(seed) step \(step) \(op)"
        switch op {
        case .create(let n):
            let expected: Int32? = model.names[name(n)] == nil ? nil : EEXIST
            var actual: Int32?
            do {
                let (attr, fh) = try fx.create(name(n))
                let id = model.nextID
                model.nextID += 1
                model.names[name(n)] = id
                model.contents[id] = []
                open[id] = (attr.ino, fh)
            } catch { actual = (error as? FSError)?.errno ?? -1 }
            #expect(actual == expected, "\(context)")
        case .write(let f, let offset, let length, let seed):
            guard let id = pick(f) else { return }
            let data = pattern(length, seed: seed)
            _ = try fx.write(open[id]!.ino, open[id]!.fh, UInt64(offset), data)
            var content = model.contents[id]!
            if content.count < offset + length { content += [UInt8](repeating: 0, count: offset + length - content.count) }
            content.replaceSubrange(offset..<(offset + length), with: data)
            model.contents[id] = content
        case .truncate(let f, let size):
            guard let id = pick(f) else { return }
            _ = try fx.volume.setattr(open[id]!.ino, AttrChanges(), size: UInt64(size))
            var content = model.contents[id]!
            if content.count > size { content.removeLast(content.count - size) } else { content += [UInt8](repeating: 0, count: size - content.count) }
            model.contents[id] = content
        case .read(let f, let offset, let length):
            guard let id = pick(f) else { return }
            let content = model.contents[id]!
            let expected = offset >= content.count ? [] : Array(content[offset..<min(content.count, offset + length)])
            let actual = try fx.volume.read(open[id]!.ino, open[id]!.fh, offset: UInt64(offset), count: length)
            #expect(actual == expected, "\(context): read \(actual.count) bytes, expected \(expected.count)")
        case .unlink(let n):
            let expected: Int32? = model.names[name(n)] == nil ? ENOENT : nil
            var actual: Int32?
            do { try fx.volume.unlink(.root, FileName(name(n))) } catch { actual = error.errno }
            #expect(actual == expected, "\(context)")
            model.names[name(n)] = nil
        case .rename(let a, let b):
            let expected: Int32? = model.names[name(a)] == nil ? ENOENT : nil
            var actual: Int32?
            do { try fx.volume.rename(.root, FileName(name(a)), .root, FileName(name(b))) } catch { actual = error.errno }
            #expect(actual == expected, "\(context)")
            if let id = model.names[name(a)], model.names[name(b)] != id {
                model.names[name(a)] = nil
                model.names[name(b)] = id
            }
        case .link(let a, let b):
            let expected: Int32? = model.names[name(a)] == nil ? ENOENT : model.names[name(b)] != nil ? EEXIST : nil
            var actual: Int32?
            do {
                let source = try fx.volume.lookup(.root, FileName(name(a)))
                _ = try fx.volume.link(source.ino, .root, FileName(name(b)))
            } catch { actual = error.errno }
            #expect(actual == expected, "\(context)")
            if expected == nil { model.names[name(b)] = model.names[name(a)] }
        case .reopen(let f):
            guard let id = pick(f) else { return }
            let (ino, fh) = open[id]!
            try fx.volume.flush(ino, fh)
            fx.volume.release(ino, fh)
            open[id] = (ino, try fx.volume.open(ino, flags: O_RDWR))
        case .fsync(let f):
            guard let id = pick(f) else { return }
            try fx.volume.fsync(open[id]!.ino, open[id]!.fh)
        case .remount:
            for (_, (ino, fh)) in open {
                try fx.volume.flush(ino, fh)
                fx.volume.release(ino, fh)
            }
            try fx.remount()
            // Files with no name left are gone after a remount; the rest are looked up
            // (the kernel holds a reference to every inode it has open) and reopened.
            let named = Set(model.names.values)
            for id in Array(open.keys) {
                if named.contains(id), let name = model.names.first(where: { $0.value == id })?.key {
                    let attr = try fx.volume.lookup(.root, FileName(name))
                    open[id] = (attr.ino, try fx.volume.open(attr.ino, flags: O_RDWR))
                } else {
                    open[id] = nil
                    model.contents[id] = nil
                }
            }
        }
    }

    func pick(_ index: Int) -> Model.FileID? {
        let files = liveFiles
        return files.isEmpty ? nil : files[index % files.count]
    }

    /// Compares every name's attributes and every file's whole content.
    func compareAll(step: Int) throws {
        let context = "seed \(seed) step \(step)"
        // As the kernel lists: through a handle (the writer's from memory, before the
        // listing below makes what it answered for), a few entries to a reply.
        let handle = try fx.volume.openDirectory(.root)
        defer { fx.volume.releaseDirectory(handle) }
        let paged = try list(fx.volume, .root, handle: handle, perReply: 5).map(\.name.description)
        #expect(paged.sorted() == ([".", ".."] + model.names.keys).sorted(), "\(context): listing through a handle")
        var listed: [String] = []
        try fx.volume.readdir(.root, offset: 0, plus: false) { listing in
            listed.append(listing.name.description)
            return true
        }
        #expect(Set(listed) == Set([".", ".."] + model.names.keys), "\(context): directory listing")
        for (name, id) in model.names {
            let attr = try fx.volume.lookup(.root, FileName(name))
            #expect(attr.ino == open[id]?.ino, "\(context): \(name) names the wrong inode")
            #expect(attr.size == UInt64(model.contents[id]!.count), "\(context): size of \(name)")
            #expect(Int(attr.nlink) == model.nlink(id), "\(context): nlink of \(name)")
        }
        for (id, (ino, fh)) in open {
            let content = model.contents[id]!
            let actual = try fx.volume.read(ino, fh, offset: 0, count: content.count + 10)
            #expect(actual == content, "\(context): content of file \(id)")
        }
    }
}

@Suite struct ModelTests {
    static var seed: UInt64 {
        if let text = ProcessInfo.processInfo.environment["NETVOL_TEST_SEED"], let seed = UInt64(text) { return seed }
        return UInt64.random(in: 1...UInt64(UInt32.max))
    }

    static var steps: Int {
        ProcessInfo.processInfo.environment["NETVOL_TEST_STEPS"].flatMap(Int.init) ?? 3000
    }

    /// Every chunk size on the embedded volume; one on PostgreSQL + S3, whose round trips
    /// make each step slower.
    static let cases: [(TestBackend, Int)] = [(.embedded, 4096), (.embedded, 16 * 1024), (.embedded, 192 * 1024)]
        + (TestBackend.available.contains(.network) ? [(.network, 16 * 1024)] : [])

    @Test(arguments: cases)
    func randomOperationsMatchTheModel(backend: TestBackend, chunkSize: Int) throws {
        let seed = Self.seed
        print("model test: \(backend), chunk size \(chunkSize), seed \(seed) (replay with NETVOL_TEST_SEED=\(seed))")
        var generator = SeededGenerator(seed: seed)
        let run = try ModelRun(seed: seed, chunkSize: chunkSize, backend: backend)
        for step in 0..<Self.steps {
            let op = Op.random(using: &generator, chunkSize: chunkSize)
            do {
                try run.apply(op, step: step)
                if step % 25 == 0 { try run.compareAll(step: step) }
            } catch {
                Issue.record("seed \(seed) step \(step) \(op) threw \(error)")
                return
            }
        }
        try run.compareAll(step: Self.steps)
        // After everything is closed, usage adds up to the chunks that remain.
        for (_, (ino, fh)) in run.open { run.fx.volume.release(ino, fh) }
        var stored: UInt64 = 0
        for (_, refs) in try run.fx.metadata.allChunks() { stored += refs.reduce(0) { $0 + UInt64($1.length) } }
        #expect(try run.fx.metadata.usage().usedBytes == stored, "seed \(seed): usage")
    }
}
