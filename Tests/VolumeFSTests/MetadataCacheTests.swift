import Foundation
import Metadata
import Testing
@testable import VolumeFS

/// The cache answers exactly what the metadata behind it answers: after every change it
/// makes itself, and after changes another mount made once it has read them from the
/// change feed.
@Suite struct MetadataCacheTests {
    /// Every name and inode the run may have made, and whether the cache and the metadata
    /// agree on each.
    struct World {
        var directories: [InodeNumber] = [.root]
        var inodes: Set<InodeNumber> = [.root]
        static let names = (0..<6).map { FileName("n\($0)") }
    }

    func agree(_ cache: MetadataCache, _ world: World, _ context: String) {
        for directory in world.directories {
            for name in World.names {
                let cached = Result { () throws(MetadataError) in try cache.lookup(directory, name, trustingMisses: true) }
                let actual = Result { () throws(MetadataError) in try cache.backing.lookup(directory, name) }
                #expect(cached == actual, "lookup \(directory.rawValue)/\(name) after \(context)")
            }
        }
        for directory in world.directories {
            // Page by page, as the kernel lists, against one listing of the whole.
            let paged = Result { () throws(MetadataError) -> [DirEntry] in
                var entries: [DirEntry] = []
                while true {
                    let page = try cache.readdir(directory, after: entries.last?.cookie ?? 0, limit: 2)
                    entries += page
                    if page.count < 2 { return entries }
                }
            }
            let actual = Result { () throws(MetadataError) in try cache.backing.readdir(directory, after: 0, limit: 10_000) }
            #expect(paged == actual, "readdir \(directory.rawValue) after \(context)")
        }
        for ino in world.inodes {
            let cached = Result { () throws(MetadataError) in try cache.getattr(ino) }
            let actual = Result { () throws(MetadataError) in try cache.backing.getattr(ino) }
            #expect(cached == actual, "getattr \(ino.rawValue) after \(context)")
            let opened = Result { () throws(MetadataError) in try cache.attrAndChunks(ino).0 }
            #expect(opened == actual, "attrAndChunks \(ino.rawValue) after \(context)")
        }
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomChangesKeepTheCacheExact(seed: UInt64) throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try TestStorage.make(.embedded, chunkSize: 4096, sizeLimit: 1 << 30, directory: directory)
        // Even seeds also read subdirectories' listings ahead, in the background, while
        // the run goes on changing things.
        let cache = MetadataCache(storage.metadata, prefetchListings: seed % 2 == 0 ? 3 : 0)
        // Another mount, changing the same volume behind the cache's back.
        let other = try storage.reopen(nil)
        var seen = try cache.changes(after: Int64.max - 1, limit: 1).latest
        var world = World()
        var random = SeededGenerator(seed: seed)
        var clock: Int64 = 1_000_000_000
        var madeLater = 0
        var removedLater = 0

        for step in 0..<400 {
            clock += 1_000
            let now = Timestamp(nanoseconds: clock)
            let fromElsewhere = Int.random(in: 0..<10, using: &random) == 0
            let meta: any Metadata = fromElsewhere ? other : cache
            let parent = world.directories.randomElement(using: &random)!
            let name = World.names.randomElement(using: &random)!
            // Drawn from the inodes in order: a Set's order changes from one process to
            // the next, and a seed must give the same run every time.
            let ino = world.inodes.sorted { $0.rawValue < $1.rawValue }.randomElement(using: &random)!
            var what = ""
            do throws(MetadataError) {
                switch Int.random(in: 0..<11, using: &random) {
                case 0, 1:
                    what = "create \(parent.rawValue)/\(name)"
                    // Half of this mount's creates are answered at once and made later,
                    // as the writer's are, while the changes go on around them.
                    if !fromElsewhere, Bool.random(using: &random),
                       let attr = try cache.deferCreate(parent, name, mode: 0o644, uid: 0, gid: 0, now: now) {
                        what += " (made later)"
                        madeLater += 1
                        world.inodes.insert(attr.ino)
                    } else {
                        let attr = try meta.mknode(parent, name, mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0, rdev: 0, target: nil, now: now)
                        world.inodes.insert(attr.ino)
                    }
                case 2:
                    what = "mkdir \(parent.rawValue)/\(name)"
                    // Some set-group-id, under another group: what is made in them inherits it.
                    let (mode, gid): (UInt32, UInt32) = Bool.random(using: &random) ? (0o755, 0) : (0o2775, 7)
                    if !fromElsewhere, Bool.random(using: &random),
                       let attr = try cache.deferCreate(parent, name, directory: true, mode: mode, uid: 0, gid: gid, now: now) {
                        what += " (made later)"
                        madeLater += 1
                        world.inodes.insert(attr.ino)
                        world.directories.append(attr.ino)
                    } else {
                        let attr = try meta.mknode(parent, name, mode: FileType.directory.rawValue | mode, uid: 0, gid: gid, rdev: 0, target: nil, now: now)
                        world.inodes.insert(attr.ino)
                        world.directories.append(attr.ino)
                    }
                case 3, 4:
                    let directory = Bool.random(using: &random)
                    what = "\(directory ? "rmdir" : "unlink") \(parent.rawValue)/\(name)"
                    // Half of this mount's removals are answered at once and applied later.
                    if !fromElsewhere, Bool.random(using: &random),
                       cache.deferRemove(parent, name, directory: directory, now: now) != nil {
                        what += " (applied later)"
                        removedLater += 1
                    } else if directory {
                        _ = try meta.rmdir(parent, name, now: now)
                    } else {
                        _ = try meta.unlink(parent, name, now: now)
                    }
                case 5, 6:
                    let newParent = world.directories.randomElement(using: &random)!
                    let newName = World.names.randomElement(using: &random)!
                    let flags: RenameFlags = [[], [], [.noReplace], [.exchange]].randomElement(using: &random)!
                    what = "rename \(parent.rawValue)/\(name) \(newParent.rawValue)/\(newName) \(flags.rawValue)"
                    _ = try meta.rename(parent, name, newParent, newName, flags: flags, now: now)
                case 7:
                    what = "link \(ino.rawValue) \(parent.rawValue)/\(name)"
                    _ = try meta.link(ino, parent, name, now: now)
                case 8:
                    what = "chmod \(ino.rawValue)"
                    _ = try meta.setattr(ino, AttrChanges(mode: UInt32.random(in: 0..<0o777, using: &random)), now: now)
                case 9:
                    what = "write \(ino.rawValue)"
                    let bytes = [UInt8](repeating: UInt8(step % 251), count: Int.random(in: 1..<100, using: &random))
                    let chunk = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
                    _ = try meta.commitData(ino, chunks: [chunk], drop: nil, size: UInt64(bytes.count), mtime: now, now: now)
                default:
                    what = "xattr and atime \(ino.rawValue)"
                    try meta.setxattr(ino, "user.x", [1, 2], mode: .any, now: now)
                    try meta.touch([ino: now])
                }
            } catch {
                what += " (failed: \(error))"
            }
            if fromElsewhere {
                // Before the mount has read the change feed, a name another mount made is
                // found all the same (a lookup that does not trust its misses asks). Names
                // this mount removed and has not applied yet are not: the lookup applies
                // the removal before it asks.
                let removing = cache.state.withLock { state in
                    state.queued.compactMap { change -> (InodeNumber, FileName)? in
                        if case .remove(let parent, let name, _, _) = change { return (parent, name) }
                        return nil
                    }
                }
                for directory in world.directories {
                    for name in World.names where !removing.contains(where: { $0 == (directory, name) })
                        && (try? cache.backing.lookup(directory, name)) != nil {
                        #expect((try? cache.lookup(directory, name, trustingMisses: false)) != nil,
                                "\(directory.rawValue)/\(name) after step \(step): \(what), before the change feed")
                    }
                }
                // The mount catches up as its tick would; until then it may lag, after it not.
                let batch = try cache.changes(after: seen, limit: 10_000)
                seen = batch.latest
                what += " by another mount"
            }
            // Files and directories not made yet are known to this mount alone; every few
            // steps they are made, and then the cache and the metadata must agree on everything.
            let unmade = cache.state.withLock { state in state.unmade.values.filter { state.directories[$0.parent]?[$0.name] == $0.attr.ino } }
            for file in unmade {
                let found = try cache.lookup(file.parent, file.name, trustingMisses: true)
                // A directory's times and links move with what is made in it meanwhile.
                #expect(file.attr.isDirectory ? found.ino == file.attr.ino : found == file.attr, "\(file.name) after step \(step): \(what)")
            }
            if cache.state.withLock({ $0.queued.isEmpty }) || step % 3 == 0 {
                cache.makeUnmade()
                agree(cache, world, "step \(step): \(what)")
            }
        }
        #expect(madeLater > 0 && removedLater > 0, "creates made later: \(madeLater), removals applied later: \(removedLater)")
        let counts = cache.counts
        #expect(counts.hits > counts.misses, "the cache answered \(counts.hits) of \(counts.hits + counts.misses)")
    }

    /// Directories d0, d1 and d2 under the root, holding 2, 3 and 4 files f0, f1, ...
    func makeDirectories(in backing: any Metadata, now: Timestamp) throws -> [InodeNumber] {
        var dirs: [InodeNumber] = []
        for d in 0..<3 {
            let dir = try backing.mknode(.root, FileName("d\(d)"), mode: FileType.directory.rawValue | 0o755, uid: 0, gid: 0,
                                         rdev: 0, target: nil, now: now)
            dirs.append(dir.ino)
            for f in 0..<(d + 2) {
                _ = try backing.mknode(dir.ino, FileName("f\(f)"), mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0,
                                       rdev: 0, target: nil, now: now)
            }
        }
        return dirs
    }

    /// A walk (`ls -lR`, `du`, `tar`) lists a directory, then each subdirectory: their
    /// listings are read ahead in one query, so that a network mount waits for one round
    /// trip per level of the tree, not one per directory.
    @Test func listingADirectoryReadsItsSubdirectoriesListingsAhead() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try TestStorage.make(.embedded, chunkSize: 4096, sizeLimit: 1 << 30, directory: directory)
        let backing = storage.metadata
        let cache = MetadataCache(backing, prefetchListings: 2)
        var now = Timestamp(nanoseconds: 1_000_000_000)
        let dirs = try makeDirectories(in: backing, now: now)
        _ = try backing.mknode(.root, "file", mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0, rdev: 0, target: nil, now: now)
        func listed(_ dir: InodeNumber) throws -> [DirEntry] { try cache.readdir(dir, after: 0, limit: 100) }

        #expect(try listed(.root) == backing.readdir(.root, after: 0, limit: 100))
        for dir in dirs { cache.awaitPrefetch(of: dir) }
        let misses = cache.counts.misses
        // The first two subdirectories were read ahead: their listings and names come
        // from memory; the third is read when asked for.
        #expect(try listed(dirs[0]) == backing.readdir(dirs[0], after: 0, limit: 100))
        #expect(try listed(dirs[1]) == backing.readdir(dirs[1], after: 0, limit: 100))
        #expect(throws: MetadataError.notFound) { try cache.lookup(dirs[1], "nothing", trustingMisses: true) }
        #expect(try cache.lookup(dirs[1], "f2", trustingMisses: true) == backing.lookup(dirs[1], "f2"))
        #expect(cache.counts.misses == misses)
        #expect(try listed(dirs[2]) == backing.readdir(dirs[2], after: 0, limit: 100))
        #expect(cache.counts.misses == misses + 1)

        // What was read ahead is not kept past a change, whoever made it.
        now = Timestamp(nanoseconds: 2_000_000_000)
        _ = try cache.mknode(dirs[0], "new", mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0, rdev: 0, target: nil, now: now)
        #expect(try listed(dirs[0]).map(\.name).contains("new"))
        let seen = try cache.changes(after: Int64.max - 1, limit: 1).latest
        let other = try storage.reopen(nil)
        _ = try other.unlink(dirs[1], "f0", now: now)
        _ = try cache.changes(after: seen, limit: 100)
        #expect(try listed(dirs[1]) == backing.readdir(dirs[1], after: 0, limit: 100))
        #expect(try !listed(dirs[1]).map(\.name).contains("f0"))
    }

    /// A walk by names (`cat d*/f*`, an `import`) looks names up without listing: the
    /// load of a directory for a lookup reads its subdirectories' listings ahead too.
    @Test func lookingUpInADirectoryReadsItsSubdirectoriesListingsAhead() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try TestStorage.make(.embedded, chunkSize: 4096, sizeLimit: 1 << 30, directory: directory)
        let backing = storage.metadata
        let cache = MetadataCache(backing, prefetchListings: 2)
        let now = Timestamp(nanoseconds: 1_000_000_000)
        let dirs = try makeDirectories(in: backing, now: now)
        func isKept(_ dir: InodeNumber, _ name: FileName) -> Bool {
            if case .found = cache.known(dir, name) { return true }
            return false
        }
        #expect(!isKept(dirs[0], "f0"))
        #expect(try cache.lookup(.root, "d0", trustingMisses: true) == backing.lookup(.root, "d0"))
        for dir in dirs { cache.awaitPrefetch(of: dir) }
        // The first two subdirectories were read ahead, names and attributes.
        #expect(isKept(dirs[0], "f1") && isKept(dirs[1], "f2"))
        if case .missing = cache.known(dirs[1], "nothing") {} else { Issue.record("d1's names are not kept whole") }
        #expect(try cache.lookup(dirs[1], "f2", trustingMisses: true) == backing.lookup(dirs[1], "f2"))
        // The third is read when a name in it is looked up.
        if case .unknown(directoryKept: false) = cache.known(dirs[2], "f3") {} else { Issue.record("d2 was read ahead") }
        #expect(try cache.lookup(dirs[2], "f3", trustingMisses: true) == backing.lookup(dirs[2], "f3"))
        #expect(isKept(dirs[2], "f0"))
    }

    /// The maps read with a file's own are those of the files a walk opens next: the
    /// rest of its directory in listing order, each subdirectory whose listing is kept
    /// followed by its files, depth first, then the files before it.
    @Test func theFilesBesideAFileFollowTheWalkIntoKeptSubdirectories() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try TestStorage.make(.embedded, chunkSize: 4096, sizeLimit: 1 << 30, directory: directory)
        let backing = storage.metadata
        let cache = MetadataCache(backing)
        let now = Timestamp(nanoseconds: 1_000_000_000)
        func dir(_ parent: InodeNumber, _ name: FileName) throws -> InodeNumber {
            try backing.mknode(parent, name, mode: FileType.directory.rawValue | 0o755, uid: 0, gid: 0, rdev: 0, target: nil, now: now).ino
        }
        func file(_ parent: InodeNumber, _ name: FileName, stored: Bool = true) throws -> InodeNumber {
            let ino = try backing.mknode(parent, name, mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0, rdev: 0, target: nil, now: now).ino
            if stored {
                let bytes: [UInt8] = [1, 2, 3]
                let chunk = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
                _ = try backing.commitData(ino, chunks: [chunk], drop: nil, size: 3, mtime: now, now: now)
            }
            return ino
        }
        let a = try dir(.root, "a")
        let f0 = try file(a, "f0")
        let f1 = try file(a, "f1")
        let empty = try file(a, "empty", stored: false)
        let sub = try dir(a, "sub")
        let g1 = try file(sub, "g1")
        let deeper = try dir(sub, "deeper")
        let h1 = try file(deeper, "h1")
        let f2 = try file(a, "f2")
        let unlisted = try dir(a, "unlisted")
        _ = try file(unlisted, "u1")
        for listed in [a, sub, deeper] { _ = try cache.readdir(listed, after: 0, limit: 100) }
        _ = empty

        #expect(cache.filesBeside(f1, limit: 100, bytes: 1 << 20) == [g1, h1, f2, f0])
        #expect(cache.filesBeside(f1, limit: 2, bytes: 1 << 20) == [g1, h1])
        #expect(cache.filesBeside(f1, limit: 100, bytes: 7) == [g1, h1])
        // A listing dropped by a change is not walked into.
        _ = try cache.mknode(deeper, "new", mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0, rdev: 0, target: nil, now: now)
        _ = try cache.readdir(a, after: 0, limit: 100)
        #expect(cache.filesBeside(f1, limit: 100, bytes: 1 << 20) == [f2, f0])
    }

    @Test func aDirectoryTooBigToKeepIsAskedAboutEachTimeAndListedOnce() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storage = try TestStorage.make(.embedded, chunkSize: 4096, sizeLimit: 1 << 30, directory: directory)
        let cache = MetadataCache(storage.metadata, directoryLimit: 8)
        let now = Timestamp(nanoseconds: 1_000_000_000)
        for i in 0..<9 {
            _ = try storage.metadata.mknode(.root, FileName("f\(i)"), mode: FileType.regular.rawValue | 0o644, uid: 0, gid: 0,
                                            rdev: 0, target: nil, now: now)
        }
        for i in 0..<12 {
            let name = FileName("f\(i)")
            let cached = Result { () throws(MetadataError) in try cache.lookup(.root, name) }
            #expect(cached == Result { () throws(MetadataError) in try storage.metadata.lookup(.root, name) })
        }
        #expect(cache.state.withLock { $0.directories[.root] == nil && $0.tooBig.contains(.root) })
        #expect(cache.counts.hits == 0)
        // A small directory is kept: after the first lookup, the rest come from memory.
        let small = try cache.mknode(.root, "small", mode: FileType.directory.rawValue | 0o755, uid: 0, gid: 0, rdev: 0, target: nil, now: now)
        for i in 0..<3 { #expect(throws: MetadataError.notFound) { try cache.lookup(small.ino, FileName("g\(i)"), trustingMisses: true) } }
        #expect(cache.counts.hits == 3)
    }
}
