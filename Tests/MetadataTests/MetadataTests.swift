import Foundation
import Testing
@testable import Metadata
@testable import SQLiteMetadata

/// One suite, run against every metadata backend available.
@Suite struct MetadataTests {
    @Test(arguments: Backend.all) func newVolumeHasAnEmptyRoot(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let root = try meta.getattr(.root)
        #expect(root.isDirectory && root.nlink == 2)
        #expect(try meta.readdir(.root, after: 0, limit: 100).isEmpty)
        #expect(try meta.settings() == VolumeSettings(chunkSize: 4096, sizeLimit: 1 << 20))
    }

    @Test(arguments: Backend.all) func createdFilesCanBeLookedUp(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let created = try volume.file("a")
        #expect(try meta.lookup(.root, "a") == created)
        #expect(created.uid == 1 && created.gid == 2 && created.nlink == 1 && created.mode == fileMode)
        #expect(throws: MetadataError.exists) { try volume.file("a") }
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "b") }
        #expect(throws: MetadataError.notDirectory) { try meta.lookup(created.ino, "x") }
    }

    @Test(arguments: Backend.all) func directoriesCountTheirSubdirectories(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let d = try volume.dir("d")
        _ = try volume.dir("e", in: d.ino)
        _ = try volume.file("f", in: d.ino)
        #expect(try meta.getattr(.root).nlink == 3)
        #expect(try meta.getattr(d.ino).nlink == 3)
        #expect(throws: MetadataError.notEmpty) { try meta.rmdir(.root, "d", now: t1) }
        _ = try meta.rmdir(d.ino, "e", now: t1)
        #expect(try meta.getattr(d.ino).nlink == 2)
        #expect(try meta.getattr(d.ino).mtime == t1)
        #expect(throws: MetadataError.notDirectory) { try meta.rmdir(d.ino, "f", now: t1) }
        #expect(throws: MetadataError.isDirectory) { try meta.unlink(.root, "d", now: t1) }
    }

    @Test(arguments: Backend.all) func setgidDirectoriesPassTheirGroupOn(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let d = try meta.mknode(.root, "g", mode: dirMode | 0o2000, uid: 0, gid: 50, rdev: 0, target: nil, now: t0)
        let f = try meta.mknode(d.ino, "f", mode: fileMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
        let sub = try meta.mknode(d.ino, "s", mode: dirMode, uid: 1, gid: 2, rdev: 0, target: nil, now: t0)
        #expect(f.gid == 50)
        #expect(sub.gid == 50 && sub.mode & 0o2000 != 0)
    }

    /// What a writer needs to answer creates at once and make the files at their close:
    /// numbers nobody else gives out, and files made under them as `mknode` makes them.
    @Test(arguments: Backend.all) func filesAreMadeUnderReservedNumbers(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let first = try meta.reserveInodes(3)
        let second = try meta.reserveInodes(2)
        let made = try meta.mknode(.root, "m", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        #expect(first.count == 3 && second.count == 2 && !first.overlaps(second))
        #expect(!first.contains(made.ino.rawValue) && !second.contains(made.ino.rawValue))
        #expect(try meta.reserveInodes(1).lowerBound > made.ino.rawValue, "reserved numbers are new ones")

        let d = try meta.mknode(.root, "g", mode: dirMode | 0o2000, uid: 0, gid: 50, rdev: 0, target: nil, now: t0)
        func file(_ parent: InodeNumber, _ name: FileName, _ ino: UInt64) -> NewFile {
            NewFile(parent: parent, name: name, attr: Attr(ino: InodeNumber(ino), mode: fileMode, nlink: 1, uid: 7, gid: 8,
                                                           rdev: 0, size: 0, atime: t1, mtime: t1, ctime: t1))
        }
        try meta.make([file(.root, "a", first.lowerBound), file(d.ino, "b", first.lowerBound + 1)])
        let a = try meta.lookup(.root, "a")
        #expect(a.ino.rawValue == first.lowerBound && a.uid == 7 && a.gid == 8 && a.nlink == 1 && a.size == 0 && a.mtime == t1)
        #expect(try meta.lookup(d.ino, "b").gid == 50, "the set-group-id rule holds")
        #expect(try meta.getattr(d.ino).mtime == t1)

        // Refusals change nothing: a taken name, a taken number, a number never reserved.
        #expect(throws: MetadataError.exists) { try meta.make([file(.root, "c", first.lowerBound + 2), file(.root, "a", second.lowerBound)]) }
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "c") }
        #expect(throws: (any Error).self) { try meta.make([file(.root, "c", first.lowerBound)]) }
        #expect(throws: (any Error).self) { try meta.make([file(.root, "c", made.ino.rawValue + 1000)]) }
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "c") }

        // Made with a data commit, in its transaction: both or neither.
        let data = ref(0, 100)
        try meta.commitData(InodeNumber(first.lowerBound + 2), chunks: [data], drop: nil, size: 100, mtime: t1, now: t1,
                            making: [file(.root, "c", first.lowerBound + 2)])
        #expect(try meta.lookup(.root, "c").size == 100)
        #expect(try meta.chunks(InodeNumber(first.lowerBound + 2)) == [data])
        #expect(throws: MetadataError.noSpace) {
            try meta.commitData(InodeNumber(second.lowerBound), chunks: [ref(0, 2 << 20)], drop: nil, size: 2 << 20,
                                mtime: t1, now: t1, making: [file(.root, "e", second.lowerBound)])
        }
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "e") }
        try meta.make([file(.root, "e", second.lowerBound)])
        #expect(try meta.lookup(.root, "e").ino.rawValue == second.lowerBound)

        // A symbolic link is made with its target; one without a target is refused.
        let third = try meta.reserveInodes(2)
        let linkMode = FileType.symlink.rawValue | 0o777
        func link(_ name: FileName, _ ino: UInt64, _ target: [UInt8]?) -> NewFile {
            NewFile(parent: d.ino, name: name, attr: Attr(ino: InodeNumber(ino), mode: linkMode, nlink: 1, uid: 7, gid: 8, rdev: 0,
                                                          size: UInt64(target?.count ?? 0), atime: t1, mtime: t1, ctime: t1),
                    target: target)
        }
        #expect(throws: (any Error).self) { try meta.make([link("bare", third.lowerBound, nil)]) }
        #expect(throws: MetadataError.notFound) { try meta.lookup(d.ino, "bare") }
        try meta.make([link("l", third.lowerBound, Array("../a".utf8))])
        let l = try meta.lookup(d.ino, "l")
        #expect(l.ino.rawValue == third.lowerBound && l.mode == linkMode && l.size == 4 && l.gid == 50)
        #expect(try meta.readlink(l.ino) == Array("../a".utf8))
    }

    @Test(arguments: Backend.all) func hardLinksCountNames(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let linked = try meta.link(a.ino, .root, "b", now: t1)
        #expect(linked.nlink == 2 && linked.ctime == t1)
        #expect(try meta.unlink(.root, "a", now: t1).nlink == 1)
        #expect(try meta.lookup(.root, "b").ino == a.ino)
        let d = try volume.dir("d")
        #expect(throws: MetadataError.notPermitted) { try meta.link(d.ino, .root, "d2", now: t1) }
    }

    @Test(arguments: Backend.all) func readdirOffsetsStayValidWhileTheDirectoryChanges(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        for i in 0..<10 { _ = try volume.file(FileName("f\(i)")) }
        let first = try meta.readdir(.root, after: 0, limit: 4)
        #expect(first.map(\.name.description) == ["f0", "f1", "f2", "f3"])
        // Remove an entry already listed and one not yet listed, add a new one.
        _ = try meta.unlink(.root, "f1", now: t1)
        _ = try meta.unlink(.root, "f6", now: t1)
        _ = try volume.file("new")
        let rest = try meta.readdir(.root, after: first.last!.cookie, limit: 100)
        #expect(rest.map(\.name.description) == ["f4", "f5", "f7", "f8", "f9", "new"])
    }

    @Test(arguments: Backend.all) func listingsOfSeveralDirectoriesComeTogether(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.dir("a")
        let empty = try volume.dir("empty")
        let file = try volume.file("f")
        for i in 0..<5 { _ = try volume.file(FileName("a\(i)"), in: a.ino) }
        _ = try meta.unlink(a.ino, "a1", now: t1)
        let found = try meta.listings([a.ino, empty.ino, file.ino, InodeNumber(987_654), a.ino], limit: 3)
        // Not directories, or not there: left out.
        #expect(Set(found.keys) == [a.ino, empty.ino])
        #expect(found[a.ino] == (try meta.readdir(a.ino, after: 0, limit: 3)))
        #expect(found[a.ino]?.map(\.name.description) == ["a0", "a2", "a3"])
        #expect(found[empty.ino] == [])
        #expect(try meta.listings([], limit: 3).isEmpty)
        #expect(try meta.listings([.root], limit: 10)[.root]?.map(\.name.description) == ["a", "empty", "f"])
    }

    @Test(arguments: Backend.all) func renameReplacesFilesAndEmptyDirectories(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let b = try volume.file("b")
        let replaced = try meta.rename(.root, "a", .root, "b", flags: [], now: t1)
        #expect(replaced?.ino == b.ino && replaced?.nlink == 0)
        #expect(try meta.lookup(.root, "b").ino == a.ino)
        #expect(throws: MetadataError.notFound) { try meta.lookup(.root, "a") }

        let d1 = try volume.dir("d1")
        let d2 = try volume.dir("d2")
        _ = try volume.file("x", in: d2.ino)
        #expect(throws: MetadataError.notEmpty) { try meta.rename(.root, "d1", .root, "d2", flags: [], now: t1) }
        #expect(throws: MetadataError.isDirectory) { try meta.rename(.root, "b", .root, "d1", flags: [], now: t1) }
        #expect(throws: MetadataError.notDirectory) { try meta.rename(.root, "d1", .root, "b", flags: [], now: t1) }
        _ = try meta.unlink(d2.ino, "x", now: t1)
        _ = try meta.rename(.root, "d1", .root, "d2", flags: [], now: t1)
        #expect(try meta.lookup(.root, "d2").ino == d1.ino)
        #expect(try meta.getattr(.root).nlink == 3)
    }

    @Test(arguments: Backend.all) func renameFlags(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let d = try volume.dir("d")
        #expect(throws: MetadataError.exists) { try meta.rename(.root, "a", .root, "d", flags: .noReplace, now: t1) }
        #expect(throws: MetadataError.notFound) { try meta.rename(.root, "a", .root, "zz", flags: .exchange, now: t1) }
        _ = try meta.rename(.root, "a", .root, "d", flags: .exchange, now: t1)
        #expect(try meta.lookup(.root, "a").ino == d.ino)
        #expect(try meta.lookup(.root, "d").ino == a.ino)
    }

    @Test(arguments: Backend.all) func exchangeAcrossDirectoriesMovesLinkCounts(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let p = try volume.dir("p")
        let sub = try volume.dir("sub", in: p.ino)
        let f = try volume.file("f")
        _ = try meta.rename(p.ino, "sub", .root, "f", flags: .exchange, now: t1)
        #expect(try meta.getattr(p.ino).nlink == 2)
        #expect(try meta.getattr(.root).nlink == 4)
        #expect(try meta.lookup(p.ino, "sub").ino == f.ino)
        // `sub` now lives in root: moving root's p into it is fine, moving it into p/... too.
        _ = try meta.rename(.root, "f", p.ino, "moved", flags: [], now: t1)
        #expect(try meta.lookup(p.ino, "moved").ino == sub.ino)
    }

    @Test(arguments: Backend.all) func aDirectoryCannotMoveIntoItsOwnSubtree(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.dir("a")
        let b = try volume.dir("b", in: a.ino)
        let c = try volume.dir("c", in: b.ino)
        #expect(throws: MetadataError.invalidArgument("cannot move a directory into itself")) {
            try meta.rename(.root, "a", c.ino, "a", flags: [], now: t1)
        }
        #expect(throws: MetadataError.invalidArgument("cannot move a directory into itself")) {
            try meta.rename(.root, "a", a.ino, "a", flags: [], now: t1)
        }
        _ = try meta.rename(b.ino, "c", .root, "c", flags: [], now: t1)
        #expect(try meta.getattr(b.ino).nlink == 2)
    }

    @Test(arguments: Backend.all) func renameOfTwoNamesOfOneFileDoesNothing(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        _ = try meta.link(a.ino, .root, "b", now: t1)
        #expect(try meta.rename(.root, "a", .root, "b", flags: [], now: t1) == nil)
        #expect(try meta.lookup(.root, "a").ino == a.ino)
        #expect(try meta.getattr(a.ino).nlink == 2)
    }

    @Test(arguments: Backend.all) func commitDataSwapsChunksAndRetiresOldObjects(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let first = ref(0, 4096)
        let second = ref(1, 100)
        try meta.commitData(a.ino, chunks: [first, second], drop: nil, size: 4196, mtime: t1, now: t1)
        #expect(try meta.chunks(a.ino) == [first, second])
        #expect(try meta.getattr(a.ino).size == 4196)
        #expect(try meta.getattr(a.ino).storedBytes == 4196)
        #expect(try meta.usage().usedBytes == 4196)

        let replacement = ref(0, 4096)
        let committed = try meta.commitData(a.ino, chunks: [replacement], drop: .from(1), size: 4096, mtime: t1, now: t1)
        #expect(committed.attr == (try meta.getattr(a.ino)))
        let retired = committed.retired
        #expect(Set(retired) == [first.object!, second.object!])
        #expect(try meta.chunks(a.ino) == [replacement])
        #expect(try meta.usage().usedBytes == 4096)
        #expect(Set(try meta.garbage(olderThan: 0, limit: 10)) == [first.object!, second.object!])
        #expect(try meta.garbage(olderThan: 3600, limit: 10).isEmpty)
    }

    @Test(arguments: Backend.all) func inlineChunksKeepTheirBytesAndRetireNoObject(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let bytes: [UInt8] = Array(0..<200)
        let small = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        try meta.commitData(a.ino, chunks: [small], drop: nil, size: 200, mtime: t1, now: t1)
        #expect(try meta.chunks(a.ino) == [small])
        #expect(try meta.getattr(a.ino).storedBytes == 200)
        #expect(try meta.usage().usedBytes == 200)

        // Growing into an object leaves nothing for gc: the inline bytes had no object.
        let big = ref(0, 5000)
        #expect(try meta.commitData(a.ino, chunks: [big], drop: nil, size: 5000, mtime: t1, now: t1).retired.isEmpty)
        #expect(try meta.garbage(olderThan: 0, limit: 10).isEmpty)
        #expect(try meta.chunks(a.ino) == [big])
        try meta.commitData(a.ino, chunks: [small], drop: nil, size: 200, mtime: t1, now: t1)
        #expect(try meta.garbage(olderThan: 0, limit: 10) == [big.object!])
        #expect(try meta.usage().usedBytes == 200)
    }

    @Test(arguments: Backend.all)
    func recountingUsageSumsTheChunks(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let b = try volume.file("b")
        try meta.commitData(a.ino, chunks: [ref(0, 4096), ref(1, 100)], drop: nil, size: 4196, mtime: t1, now: t1)
        try meta.commitData(b.ino, chunks: [ref(3, 7)], drop: nil, size: 3 * 4096 + 7, mtime: t1, now: t1)
        try volume.skewUsage(999)
        let recount = try meta.recountUsage()
        #expect(recount.recorded == 4203 + 999 && recount.counted == 4203)
        #expect(try meta.usage().usedBytes == 4203)
        #expect(try meta.getattr(a.ino).storedBytes == 4196)
        #expect(try meta.getattr(b.ino).storedBytes == 7)
    }

    /// SQLite only: PostgreSQL volumes were born with inline chunks.
    @Test func volumesMadeBeforeInlineChunksGainThemWhenOpened() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/old.db"
        let old = try SQLiteMetadata.create(path: path, chunkSize: 4096, sizeLimit: 1 << 20, now: t0)
        let a = try old.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let stored = ref(0, 100)
        try old.commitData(a.ino, chunks: [stored], drop: nil, size: 100, mtime: t1, now: t1)
        // The schema as it was before small files lived inline.
        try old.pool.write { db in try db.execute(sql: "ALTER TABLE chunks DROP COLUMN data") }
        try old.pool.close()

        let reopened = try SQLiteMetadata(path: path)
        #expect(try reopened.chunks(a.ino) == [stored])
        let bytes: [UInt8] = [7, 8, 9]
        let small = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        try reopened.commitData(a.ino, chunks: [small], drop: nil, size: 3, mtime: t1, now: t1)
        #expect(try reopened.chunks(a.ino) == [small])
    }

    @Test(arguments: Backend.all) func attributesAndChunksComeTogether(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let empty = try meta.attrAndChunks(a.ino)
        #expect(empty.0 == a && empty.1.isEmpty)
        let bytes: [UInt8] = [7, 8, 9]
        let inline = ChunkRef(index: 2, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        try meta.commitData(a.ino, chunks: [ref(0, 4096), inline], drop: nil, size: 3 * 4096, mtime: t1, now: t1)
        let both = try meta.attrAndChunks(a.ino)
        #expect(both.0 == (try meta.getattr(a.ino)))
        #expect(both.1 == (try meta.chunks(a.ino)))
        #expect(both.1.map(\.index) == [0, 2])
        #expect(throws: MetadataError.notFound) { try meta.attrAndChunks(InodeNumber(999_999)) }
        // Several at once: a missing one is left out.
        let b = try volume.file("b")
        let several = try meta.attrsAndChunks([b.ino, InodeNumber(999_999), a.ino])
        #expect(Dictionary(uniqueKeysWithValues: several.map { ($0.0.ino, $0.1) }) == [a.ino: both.1, b.ino: []])
        #expect(several.first { $0.0.ino == a.ino }?.0 == both.0)
    }

    @Test(arguments: Backend.all) func commitPastTheSizeLimitChangesNothing(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let big = ref(0, 1 << 20)
        try meta.commitData(a.ino, chunks: [big], drop: nil, size: 1 << 20, mtime: t1, now: t1)
        #expect(throws: MetadataError.noSpace) {
            try meta.commitData(a.ino, chunks: [ref(1, 1)], drop: nil, size: (1 << 20) + 1, mtime: t1, now: t1)
        }
        #expect(try meta.chunks(a.ino) == [big])
        #expect(try meta.getattr(a.ino).size == 1 << 20)
        // Shrinking always works, and so does growing the limit.
        #expect(throws: MetadataError.invalidArgument("a volume can grow but not shrink")) { try meta.resize(sizeLimit: 1000) }
        try meta.resize(sizeLimit: 2 << 20)
        try meta.commitData(a.ino, chunks: [ref(1, 1)], drop: nil, size: (1 << 20) + 1, mtime: t1, now: t1)
        #expect(try meta.usage().usedBytes == (1 << 20) + 1)
    }

    @Test(arguments: Backend.all) func purgeDeletesOnlyNamelessInodes(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let chunk = ref(0, 10)
        try meta.commitData(a.ino, chunks: [chunk], drop: nil, size: 10, mtime: t1, now: t1)
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

    @Test(arguments: Backend.all) func straysAreAdoptedUnlessReferenced(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let chunk = ref(0, 10)
        try meta.commitData(a.ino, chunks: [chunk], drop: nil, size: 10, mtime: t1, now: t1)
        let stray = ObjectID.random()
        #expect(try meta.adoptStrays([stray, chunk.object!]) == 1)
        #expect(try meta.garbage(olderThan: 0, limit: 10) == [stray])
    }

    @Test(arguments: Backend.all) func objectsSharedByChunksBecomeGarbageOnlyWhenTheLastReferenceGoes(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let shared = ref(0, 100)
        let a = try meta.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let b = try meta.mknode(.root, "b", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        try meta.commitData(a.ino, chunks: [shared], drop: nil, size: 100, mtime: t1, now: t1)
        try meta.commitData(b.ino, chunks: [shared], drop: nil, size: 100, mtime: t1, now: t1)
        #expect(try meta.commitData(a.ino, chunks: [], drop: .from(0), size: 0, mtime: t1, now: t1).retired.isEmpty)
        #expect(try meta.garbage(olderThan: 0, limit: 10).isEmpty)
        #expect(try meta.adoptStrays([shared.object!]) == 0)
        #expect(try meta.commitData(b.ino, chunks: [], drop: .from(0), size: 0, mtime: t1, now: t1).retired == [shared.object!])
        #expect(try meta.garbage(olderThan: 0, limit: 10) == [shared.object!])
    }

    @Test(arguments: Backend.all) func allChunksListsEveryFilesChunks(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let b = try volume.file("b")
        let bytes: [UInt8] = [1, 2, 3]
        let inline = ChunkRef(index: 1, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        let chunksOfA = [ref(0, 4096), inline]
        let chunksOfB = [ref(0, 10)]
        try meta.commitData(a.ino, chunks: chunksOfA, drop: nil, size: 4099, mtime: t1, now: t1)
        try meta.commitData(b.ino, chunks: chunksOfB, drop: nil, size: 10, mtime: t1, now: t1)
        let all = try meta.allChunks()
        #expect(all.map(\.0) == [a.ino, b.ino])
        #expect(all.map(\.1) == [chunksOfA, chunksOfB])
        #expect(try meta.knownObjects() == [chunksOfA[0].object!, chunksOfB[0].object!])
    }

    @Test(arguments: Backend.all) func oneCommitCanCarryManyChunks(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let quoted: [UInt8] = Array("\"{},\\ NULL".utf8) + [0, 255]
        let odd = ChunkRef(index: 100, inline: quoted, checksums: quoted.withUnsafeBytes { BlockChecksums(of: $0) })
        let many = (0..<100).map { ref($0, 4096) } + [odd]
        try meta.commitData(a.ino, chunks: many, drop: nil, size: 100 * 4096 + UInt64(quoted.count), mtime: t1, now: t1)
        #expect(try meta.chunks(a.ino) == many)
        #expect(try meta.usage().usedBytes == 100 * 4096 + UInt64(quoted.count))
        let rewritten = (0..<50).map { ref($0 * 2, 4096) }
        let retired = try meta.commitData(a.ino, chunks: rewritten, drop: .from(100), size: 100 * 4096, mtime: t1, now: t1).retired
        #expect(Set(retired) == Set((0..<50).map { many[$0 * 2].object! }))
        #expect(try meta.chunks(a.ino).count == 100)
    }

    @Test(arguments: Backend.all) func extendedAttributes(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
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

    @Test(arguments: Backend.all) func symlinksKeepTheirTarget(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let link = try meta.mknode(.root, "l", mode: FileType.symlink.rawValue | 0o777, uid: 0, gid: 0, rdev: 0,
                                   target: Array("some/where".utf8), now: t0)
        #expect(link.size == 10)
        #expect(try meta.readlink(link.ino) == Array("some/where".utf8))
        #expect(throws: MetadataError.invalidArgument("not a symbolic link")) { try meta.readlink(.root) }
    }

    @Test(arguments: Backend.all) func namesAreBytesNotText(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let name = FileName([0xff, 0xfe, 0x41])
        let a = try volume.file(name)
        #expect(try meta.lookup(.root, name).ino == a.ino)
        #expect(try meta.readdir(.root, after: 0, limit: 10).first?.name == name)
    }

    @Test(arguments: Backend.all) func setattrChangesModeOwnerAndTimes(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let meta = volume.meta
        let a = try volume.file("a")
        let changed = try meta.setattr(a.ino, AttrChanges(mode: 0o4711, uid: 7, gid: 8, atime: t0, mtime: t1), now: t1)
        #expect(changed.mode == FileType.regular.rawValue | 0o4711)
        #expect(changed.uid == 7 && changed.gid == 8 && changed.atime == t0 && changed.mtime == t1 && changed.ctime == t1)
        try meta.touch([a.ino: t1, InodeNumber(999): t1])
        #expect(try meta.getattr(a.ino).atime == t1)
        #expect(try meta.getattr(a.ino).ctime == t1)
    }

    @Test(arguments: Backend.all) func reopenedVolumeKeepsEverything(_ backend: Backend) throws {
        let volume = try backend.volume()
        defer { volume.remove() }
        let a = try volume.meta.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let reopened = try volume.reopen(nil)
        #expect(try reopened.lookup(.root, "a") == a)
        #expect(throws: MetadataError.exists) { try volume.createAgain() }
        #expect(throws: (any Error).self) { try volume.openMissing() }
    }
}
