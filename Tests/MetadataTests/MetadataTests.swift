import ChunkStore
import Foundation
import Testing
@testable import Metadata
@testable import SQLiteMetadata

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "netvol-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

let t0 = Timestamp(seconds: 1_700_000_000, nanoseconds: 0)
let t1 = Timestamp(seconds: 1_700_000_100, nanoseconds: 5)
let fileMode = FileType.regular.rawValue | 0o644
let dirMode = FileType.directory.rawValue | 0o755

/// One suite, run against every metadata backend available.
@Suite final class MetadataTests {
    let directory = temporaryDirectory()
    let meta: any Metadata

    init() throws {
        meta = try SQLiteMetadata.create(path: directory + "/volume.db", chunkSize: 4096, sizeLimit: 1 << 20, now: t0)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func file(_ name: FileName, in parent: InodeNumber = .root) throws -> Attr {
        try meta.mknode(parent, name, mode: fileMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
    }

    func dir(_ name: FileName, in parent: InodeNumber = .root) throws -> Attr {
        try meta.mknode(parent, name, mode: dirMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
    }

    func ref(_ index: Int, _ length: Int) -> ChunkRef {
        let bytes = [UInt8](repeating: 1, count: length)
        return ChunkRef(index: index, object: .random(), length: length, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
    }

    @Test func newVolumeHasAnEmptyRoot() throws {
        let root = try meta.getattr(.root)
        #expect(root.isDirectory && root.nlink == 2)
        #expect(try meta.readdir(.root, after: 0, limit: 100).isEmpty)
        #expect(try meta.settings() == VolumeSettings(chunkSize: 4096, sizeLimit: 1 << 20))
    }

    @Test func createdFilesCanBeLookedUp() throws {
        let created = try file("a")
        #expect(try meta.lookup(.root, "a") == created)
        #expect(created.uid == 1 && created.gid == 2 && created.nlink == 1 && created.mode == fileMode)
        #expect(throws: MetadataError.exists) { try file("a") }
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "b") }
        #expect(throws: MetadataError.notDirectory) { try meta.lookup(created.ino, "x") }
    }

    @Test func directoriesCountTheirSubdirectories() throws {
        let d = try dir("d")
        _ = try dir("e", in: d.ino)
        _ = try file("f", in: d.ino)
        #expect(try meta.getattr(.root).nlink == 3)
        #expect(try meta.getattr(d.ino).nlink == 3)
        #expect(throws: MetadataError.notEmpty) { try meta.rmdir(.root, "d", now: t1) }
        _ = try meta.rmdir(d.ino, "e", now: t1)
        #expect(try meta.getattr(d.ino).nlink == 2)
        #expect(try meta.getattr(d.ino).mtime == t1)
        #expect(throws: MetadataError.notDirectory) { try meta.rmdir(d.ino, "f", now: t1) }
        #expect(throws: MetadataError.isDirectory) { try meta.unlink(.root, "d", now: t1) }
    }

    @Test func setgidDirectoriesPassTheirGroupOn() throws {
        let d = try meta.mknode(.root, "g", mode: dirMode | 0o2000, uid: 0, gid: 50, rdev: 0, target: nil, now: t0)
        let f = try meta.mknode(d.ino, "f", mode: fileMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
        let sub = try meta.mknode(d.ino, "s", mode: dirMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
        #expect(f.gid == 50)
        #expect(sub.gid == 50 && sub.mode & 0o2000 != 0)
    }

    @Test func hardLinksCountNames() throws {
        let a = try file("a")
        let linked = try meta.link(a.ino, .root, "b", now: t1)
        #expect(linked.nlink == 2 && linked.ctime == t1)
        #expect(try meta.unlink(.root, "a", now: t1).nlink == 1)
        #expect(try meta.lookup(.root, "b").ino == a.ino)
        let d = try dir("d")
        #expect(throws: MetadataError.notPermitted) { try meta.link(d.ino, .root, "d2", now: t1) }
    }

    @Test func readdirOffsetsStayValidWhileTheDirectoryChanges() throws {
        for i in 0..<10 { _ = try file(FileName("f\(i)")) }
        let first = try meta.readdir(.root, after: 0, limit: 4)
        #expect(first.map(\.name.description) == ["f0", "f1", "f2", "f3"])
        // Remove an entry already listed and one not yet listed, add a new one.
        _ = try meta.unlink(.root, "f1", now: t1)
        _ = try meta.unlink(.root, "f6", now: t1)
        _ = try file("new")
        let rest = try meta.readdir(.root, after: first.last!.cookie, limit: 100)
        #expect(rest.map(\.name.description) == ["f4", "f5", "f7", "f8", "f9", "new"])
    }

    @Test func renameReplacesFilesAndEmptyDirectories() throws {
        let a = try file("a")
        let b = try file("b")
        let replaced = try meta.rename(.root, "a", .root, "b", flags: [], now: t1)
        #expect(replaced?.ino == b.ino && replaced?.nlink == 0)
        #expect(try meta.lookup(.root, "b").ino == a.ino)
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "a") }

        let d1 = try dir("d1")
        let d2 = try dir("d2")
        _ = try file("x", in: d2.ino)
        #expect(throws: MetadataError.notEmpty) { try meta.rename(.root, "d1", .root, "d2", flags: [], now: t1) }
        #expect(throws: MetadataError.isDirectory) { try meta.rename(.root, "b", .root, "d1", flags: [], now: t1) }
        #expect(throws: MetadataError.notDirectory) { try meta.rename(.root, "d1", .root, "b", flags: [], now: t1) }
        _ = try meta.unlink(d2.ino, "x", now: t1)
        _ = try meta.rename(.root, "d1", .root, "d2", flags: [], now: t1)
        #expect(try meta.lookup(.root, "d2").ino == d1.ino)
        #expect(try meta.getattr(.root).nlink == 3)
    }

    @Test func renameFlags() throws {
        let a = try file("a")
        let d = try dir("d")
        #expect(throws: MetadataError.exists) { try meta.rename(.root, "a", .root, "d", flags: .noReplace, now: t1) }
        #expect(throws: MetadataError.notFound) { try meta.rename(.root, "a", .root, "zz", flags: .exchange, now: t1) }
        _ = try meta.rename(.root, "a", .root, "d", flags: .exchange, now: t1)
        #expect(try meta.lookup(.root, "a").ino == d.ino)
        #expect(try meta.lookup(.root, "d").ino == a.ino)
    }

    @Test func exchangeAcrossDirectoriesMovesLinkCounts() throws {
        let p = try dir("p")
        let sub = try dir("sub", in: p.ino)
        let f = try file("f")
        _ = try meta.rename(p.ino, "sub", .root, "f", flags: .exchange, now: t1)
        #expect(try meta.getattr(p.ino).nlink == 2)
        #expect(try meta.getattr(.root).nlink == 4)
        #expect(try meta.lookup(p.ino, "sub").ino == f.ino)
        // `sub` now lives in root: moving root's p into it is fine, moving it into p/... too.
        _ = try meta.rename(.root, "f", p.ino, "moved", flags: [], now: t1)
        #expect(try meta.lookup(p.ino, "moved").ino == sub.ino)
    }

    @Test func aDirectoryCannotMoveIntoItsOwnSubtree() throws {
        let a = try dir("a")
        let b = try dir("b", in: a.ino)
        let c = try dir("c", in: b.ino)
        #expect(throws: MetadataError.invalidArgument("cannot move a directory into itself")) {
            try meta.rename(.root, "a", c.ino, "a", flags: [], now: t1)
        }
        #expect(throws: MetadataError.invalidArgument("cannot move a directory into itself")) {
            try meta.rename(.root, "a", a.ino, "a", flags: [], now: t1)
        }
        _ = try meta.rename(b.ino, "c", .root, "c", flags: [], now: t1)
        #expect(try meta.getattr(b.ino).nlink == 2)
    }

    @Test func renameOfTwoNamesOfOneFileDoesNothing() throws {
        let a = try file("a")
        _ = try meta.link(a.ino, .root, "b", now: t1)
        #expect(try meta.rename(.root, "a", .root, "b", flags: [], now: t1) == nil)
        #expect(try meta.lookup(.root, "a").ino == a.ino)
        #expect(try meta.getattr(a.ino).nlink == 2)
    }

    @Test func commitDataSwapsChunksAndRetiresOldObjects() throws {
        let a = try file("a")
        let first = ref(0, 4096)
        let second = ref(1, 100)
        try meta.commitData(a.ino, chunks: [first, second], dropFrom: nil, size: 4196, mtime: t1, now: t1)
        #expect(try meta.chunks(a.ino) == [first, second])
        #expect(try meta.getattr(a.ino).size == 4196)
        #expect(try meta.getattr(a.ino).storedBytes == 4196)
        #expect(try meta.usage().usedBytes == 4196)

        let replacement = ref(0, 4096)
        let committed = try meta.commitData(a.ino, chunks: [replacement], dropFrom: 1, size: 4096, mtime: t1, now: t1)
        #expect(committed.attr == (try meta.getattr(a.ino)))
        let retired = committed.retired
        #expect(Set(retired) == [first.object!, second.object!])
        #expect(try meta.chunks(a.ino) == [replacement])
        #expect(try meta.usage().usedBytes == 4096)
        #expect(Set(try meta.garbage(before: Timestamp(nanoseconds: t1.nanoseconds + 1), limit: 10)) == [first.object!, second.object!])
        #expect(try meta.garbage(before: t1, limit: 10).isEmpty)
    }

    @Test func inlineChunksKeepTheirBytesAndRetireNoObject() throws {
        let a = try file("a")
        let bytes: [UInt8] = Array(0..<200)
        let small = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        try meta.commitData(a.ino, chunks: [small], dropFrom: nil, size: 200, mtime: t1, now: t1)
        #expect(try meta.chunks(a.ino) == [small])
        #expect(try meta.getattr(a.ino).storedBytes == 200)
        #expect(try meta.usage().usedBytes == 200)

        // Growing into an object leaves nothing for gc: the inline bytes had no object.
        let big = ref(0, 5000)
        #expect(try meta.commitData(a.ino, chunks: [big], dropFrom: nil, size: 5000, mtime: t1, now: t1).retired.allSatisfy { $0.rawValue == 0 })
        #expect(try meta.garbage(before: Timestamp(nanoseconds: t1.nanoseconds + 1), limit: 10).isEmpty)
        #expect(try meta.chunks(a.ino) == [big])
        try meta.commitData(a.ino, chunks: [small], dropFrom: nil, size: 200, mtime: t1, now: t1)
        #expect(try meta.garbage(before: Timestamp(nanoseconds: t1.nanoseconds + 1), limit: 10) == [big.object!])
        #expect(try meta.usage().usedBytes == 200)
    }

    @Test func volumesMadeBeforeInlineChunksGainThemWhenOpened() throws {
        let path = directory + "/old.db"
        let old = try SQLiteMetadata.create(path: path, chunkSize: 4096, sizeLimit: 1 << 20, now: t0)
        let a = try old.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let stored = ref(0, 100)
        try old.commitData(a.ino, chunks: [stored], dropFrom: nil, size: 100, mtime: t1, now: t1)
        // The schema as it was before small files lived inline.
        try old.pool.write { db in try db.execute(sql: "ALTER TABLE chunks DROP COLUMN data") }
        try old.pool.close()

        let reopened = try SQLiteMetadata(path: path)
        #expect(try reopened.chunks(a.ino) == [stored])
        let bytes: [UInt8] = [7, 8, 9]
        let small = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        try reopened.commitData(a.ino, chunks: [small], dropFrom: nil, size: 3, mtime: t1, now: t1)
        #expect(try reopened.chunks(a.ino) == [small])
    }

    @Test func commitPastTheSizeLimitChangesNothing() throws {
        let a = try file("a")
        let big = ref(0, 1 << 20)
        try meta.commitData(a.ino, chunks: [big], dropFrom: nil, size: 1 << 20, mtime: t1, now: t1)
        #expect(throws: MetadataError.noSpace) {
            try meta.commitData(a.ino, chunks: [ref(1, 1)], dropFrom: nil, size: (1 << 20) + 1, mtime: t1, now: t1)
        }
        #expect(try meta.chunks(a.ino) == [big])
        #expect(try meta.getattr(a.ino).size == 1 << 20)
        // Shrinking always works, and so does growing the limit.
        #expect(throws: MetadataError.invalidArgument("a volume can grow but not shrink")) { try meta.resize(sizeLimit: 1000) }
        try meta.resize(sizeLimit: 2 << 20)
        try meta.commitData(a.ino, chunks: [ref(1, 1)], dropFrom: nil, size: (1 << 20) + 1, mtime: t1, now: t1)
        #expect(try meta.usage().usedBytes == (1 << 20) + 1)
    }

    @Test func purgeDeletesOnlyNamelessInodes() throws {
        let a = try file("a")
        let chunk = ref(0, 10)
        try meta.commitData(a.ino, chunks: [chunk], dropFrom: nil, size: 10, mtime: t1, now: t1)
        try meta.purge([a.ino], now: t1)
        #expect(try meta.getattr(a.ino).nlink == 1)
        _ = try meta.unlink(.root, "a", now: t1)
        #expect(try meta.orphans() == [a.ino])
        try meta.purge([a.ino], now: t1)
        #expect(throws: MetadataError.notFound) { try meta.getattr(a.ino) }
        #expect(try meta.usage().usedBytes == 0)
        #expect(try meta.knownObjects() == [chunk.object!])
        try meta.dropGarbage([chunk.object!])
        #expect(try meta.knownObjects().isEmpty)
    }

    @Test func straysAreAdoptedUnlessReferenced() throws {
        let a = try file("a")
        let chunk = ref(0, 10)
        try meta.commitData(a.ino, chunks: [chunk], dropFrom: nil, size: 10, mtime: t1, now: t1)
        let stray = ObjectID.random()
        #expect(try meta.adoptStrays([stray, chunk.object!], now: t1) == 1)
        #expect(try meta.garbage(before: Timestamp(nanoseconds: t1.nanoseconds + 1), limit: 10) == [stray])
    }

    @Test func extendedAttributes() throws {
        let a = try file("a")
        #expect(throws: MetadataError.noAttribute) { try meta.getxattr(a.ino, "user.x") }
        #expect(throws: MetadataError.noAttribute) { try meta.setxattr(a.ino, "user.x", [1], mode: .replace, now: t1) }
        try meta.setxattr(a.ino, "user.x", [1, 2], mode: .create, now: t1)
        #expect(throws: MetadataError.exists) { try meta.setxattr(a.ino, "user.x", [3], mode: .create, now: t1) }
        try meta.setxattr(a.ino, "user.x", [3], mode: .replace, now: t1)
        try meta.setxattr(a.ino, "user.a", [], mode: .any, now: t1)
        #expect(try meta.getxattr(a.ino, "user.x") == [3])
        #expect(try meta.getxattr(a.ino, "user.a") == [])
        #expect(try meta.listxattr(a.ino) == ["user.a", "user.x"])
        try meta.removexattr(a.ino, "user.x", now: t1)
        #expect(throws: MetadataError.noAttribute) { try meta.removexattr(a.ino, "user.x", now: t1) }
        #expect(try meta.getattr(a.ino).ctime == t1)
    }

    @Test func symlinksKeepTheirTarget() throws {
        let link = try meta.mknode(.root, "l", mode: FileType.symlink.rawValue | 0o777, uid: 0, gid: 0, rdev: 0,
                                   target: Array("some/where".utf8), now: t0)
        #expect(link.size == 10)
        #expect(try meta.readlink(link.ino) == Array("some/where".utf8))
        #expect(throws: MetadataError.invalidArgument("not a symbolic link")) { try meta.readlink(.root) }
    }

    @Test func namesAreBytesNotText() throws {
        let name = FileName([0xff, 0xfe, 0x41])
        let a = try file(name)
        #expect(try meta.lookup(.root, name).ino == a.ino)
        #expect(try meta.readdir(.root, after: 0, limit: 10).first?.name == name)
    }

    @Test func setattrChangesModeOwnerAndTimes() throws {
        let a = try file("a")
        let changed = try meta.setattr(a.ino, AttrChanges(mode: 0o4711, uid: 7, gid: 8, atime: t0, mtime: t1), now: t1)
        #expect(changed.mode == FileType.regular.rawValue | 0o4711)
        #expect(changed.uid == 7 && changed.gid == 8 && changed.atime == t0 && changed.mtime == t1 && changed.ctime == t1)
        try meta.touch([a.ino: t1, InodeNumber(999): t1])
        #expect(try meta.getattr(a.ino).atime == t1)
        #expect(try meta.getattr(a.ino).ctime == t1)
    }

    @Test func reopenedVolumeKeepsEverything() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/volume.db"
        let created = try SQLiteMetadata.create(path: path, chunkSize: 1 << 20, sizeLimit: 1 << 30, now: t0)
        let a = try created.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let reopened = try SQLiteMetadata(path: path)
        #expect(try reopened.lookup(.root, "a") == a)
        #expect(throws: MetadataError.exists) { try SQLiteMetadata.create(path: path, chunkSize: 1, sizeLimit: 1, now: t0) }
        #expect(throws: (any Error).self) { try SQLiteMetadata(path: path + ".missing") }
    }
}
