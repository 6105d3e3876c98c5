// Inodes and directory entries: the same rules, errors and link counts as SQLiteMetadata.

public import Metadata

extension PostgresMetadata {
    /// The attributes of `ino`, which must be a directory that still has a name.
    func fetchDirectory(_ tx: Transaction, _ ino: InodeNumber) throws -> Attr {
        let attr = try fetchAttr(tx, ino)
        guard attr.isDirectory else { throw MetadataError.notDirectory }
        guard attr.nlink > 0 else { throw MetadataError.notFound }
        return attr
    }

    /// The attributes of what `name` in `parent` names. The directory is read in the same
    /// statement, for a missing entry's error to say why without another round trip.
    func entryAttr(_ tx: Transaction, _ parent: InodeNumber, _ name: FileName) throws -> Attr {
        let rows = try tx.execute("""
            SELECT \(Self.joinedAttrColumns), dir.mode, dir.nlink
            FROM inodes dir
            LEFT JOIN dentries d ON d.volume = dir.volume AND d.parent = dir.ino AND d.name = $3
            LEFT JOIN inodes i ON i.volume = d.volume AND i.ino = d.ino
            WHERE dir.volume = $1 AND dir.ino = $2
            """, [.int(id), .ino(parent), .name(name)])
        guard rows.count == 1 else { throw MetadataError.notFound }
        if !rows.isNull(0, 0) { return try Self.attr(rows) }
        guard UInt32(truncatingIfNeeded: try rows.int(0, 11)) & FileType.mask == FileType.directory.rawValue else {
            throw MetadataError.notDirectory
        }
        throw MetadataError.notFound
    }

    func entry(_ tx: Transaction, _ parent: InodeNumber, _ name: FileName) throws -> InodeNumber? {
        let rows = try tx.execute("SELECT ino FROM dentries WHERE volume = $1 AND parent = $2 AND name = $3",
                                  [.int(id), .ino(parent), .name(name)])
        guard rows.count == 1 else { return nil }
        return InodeNumber(UInt64(bitPattern: try rows.int(0, 0)))
    }

    func insertEntry(_ tx: Transaction, _ parent: InodeNumber, _ name: FileName, _ ino: InodeNumber) throws {
        tx.later("INSERT INTO dentries(volume, parent, name, ino) VALUES ($1, $2, $3, $4)",
                       [.int(id), .ino(parent), .name(name), .ino(ino)])
    }

    func deleteEntry(_ tx: Transaction, _ parent: InodeNumber, _ name: FileName) throws {
        tx.later("DELETE FROM dentries WHERE volume = $1 AND parent = $2 AND name = $3", [.int(id), .ino(parent), .name(name)])
    }

    /// Sets mtime and ctime of a directory whose entries changed, and adjusts its link count.
    func touchDirectory(_ tx: Transaction, _ dir: InodeNumber, nlinkDelta: Int = 0, now: Timestamp) throws {
        tx.later("UPDATE inodes SET mtime = $3, ctime = $3, nlink = nlink + $4 WHERE volume = $1 AND ino = $2",
                       [.int(id), .ino(dir), .time(now), .int(Int64(nlinkDelta))])
    }

    func setCtime(_ tx: Transaction, _ inodes: [InodeNumber], _ now: Timestamp) throws {
        tx.later("UPDATE inodes SET ctime = $3 WHERE volume = $1 AND ino = ANY($2)",
                       [.int(id), .ints(inodes.map { Int64(bitPattern: $0.rawValue) }), .time(now)])
    }

    func setParent(_ tx: Transaction, _ dir: InodeNumber, _ parent: InodeNumber) throws {
        tx.later("UPDATE inodes SET parent = $3 WHERE volume = $1 AND ino = $2", [.int(id), .ino(dir), .ino(parent)])
    }

    func hasEntries(_ tx: Transaction, _ dir: InodeNumber) throws -> Bool {
        try tx.execute("SELECT EXISTS(SELECT 1 FROM dentries WHERE volume = $1 AND parent = $2)", [.int(id), .ino(dir)]).bool(0, 0)
    }

    /// True when `dir` is `ancestor` or lies somewhere below it: one walk up the parents.
    func isWithin(_ tx: Transaction, _ dir: InodeNumber, _ ancestor: InodeNumber) throws -> Bool {
        try tx.execute("""
            WITH RECURSIVE up(ino, depth) AS (
                SELECT $2::bigint, 0
                UNION ALL
                SELECT i.parent, up.depth + 1 FROM up JOIN inodes i ON i.volume = $1 AND i.ino = up.ino
                WHERE up.ino <> 1 AND up.ino <> $3 AND up.depth < 1000000
            )
            SELECT EXISTS(SELECT 1 FROM up WHERE ino = $3)
            """, [.int(id), .ino(dir), .ino(ancestor)]).bool(0, 0)
    }

    public func lookup(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr {
        try read { tx in try entryAttr(tx, parent, name) }
    }

    public func getattr(_ ino: InodeNumber) throws(MetadataError) -> Attr {
        try read { tx in try fetchAttr(tx, ino) }
    }

    public func touch(_ atimes: [InodeNumber: Timestamp]) throws(MetadataError) {
        guard !atimes.isEmpty else { return }
        let entries = Array(atimes)
        _ = try mutate { tx in
            try tx.execute("""
                UPDATE inodes SET atime = greatest(inodes.atime, t.atime)
                FROM unnest($2::bigint[], $3::bigint[]) AS t(ino, atime)
                WHERE inodes.volume = $1 AND inodes.ino = t.ino
                """, [.int(id), .ints(entries.map { Int64(bitPattern: $0.key.rawValue) }), .ints(entries.map { $0.value.nanoseconds })])
        }
    }

    public func setattr(_ ino: InodeNumber, _ changes: AttrChanges, now: Timestamp) throws(MetadataError) -> Attr {
        try mutateInOneTrip(recover: { () throws(MetadataError) in try self.getattr(ino) }) { tx in
            let attr = Answered<Attr>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_setattr($1, $2, $3, $4, $5, $6, $7, $8)",
                          [.int(id), .ino(ino), .int(changes.mode.map(Int64.init)), .int(changes.uid.map(Int64.init)),
                           .int(changes.gid.map(Int64.init)), .int(changes.atime?.nanoseconds),
                           .int(changes.mtime?.nanoseconds), .time(now)]) { rows in attr.value = try Self.attr(rows) }
            return attr
        }
    }

    /// Creates the inode and its entry in one statement (`netvol_mknode`), which refuses
    /// a missing or removed directory and a name that exists.
    public func mknode(_ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32,
                       rdev: UInt64, target: [UInt8]?, now: Timestamp) throws(MetadataError) -> Attr {
        // Made once, under the kernel's lock of the directory: the name is what was made.
        try mutateInOneTrip(recover: { () throws(MetadataError) in try self.lookup(parent, name) }) { tx in
            let attr = Answered<Attr>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_mknode($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                          [.int(id), .ino(parent), .name(name), .int(Int64(mode)), .int(Int64(uid)), .int(Int64(gid)),
                           .int(Int64(bitPattern: rdev)), .bytes(target), .time(now)]) { rows in attr.value = try Self.attr(rows) }
            return attr
        }
    }

    public func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { tx in
            let attr = try fetchAttr(tx, ino)
            if attr.isDirectory { throw MetadataError.notPermitted }
            _ = try fetchDirectory(tx, newParent)
            if try entry(tx, newParent, newName) != nil { throw MetadataError.exists }
            if attr.nlink >= 65_000 { throw MetadataError.tooManyLinks }
            try insertEntry(tx, newParent, newName, ino)
            tx.later("UPDATE inodes SET nlink = nlink + 1, ctime = $3 WHERE volume = $1 AND ino = $2", [.int(id), .ino(ino), .time(now)])
            try touchDirectory(tx, newParent, now: now)
            try note(tx, ino: ino)
            try note(tx, ino: newParent, parent: newParent, name: newName)
            return try fetchAttr(tx, ino)
        }
    }

    public func unlink(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutateInOneTrip(recover: { () throws(MetadataError) in try self.unlinked(parent, name) }) { tx in
            let attr = Answered<Attr>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_unlink($1, $2, $3, $4)",
                          [.int(id), .ino(parent), .name(name), .time(now)]) { rows in attr.value = try Self.attr(rows) }
            return attr
        }
    }

    /// The inode the latest unlink of `name` in `parent` took the name from, for an unlink
    /// whose answer was lost: `netvol_unlink` notes that inode's change just before the
    /// entry's, both under the lease lock, so their numbers are consecutive.
    func unlinked(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr {
        try read { tx in
            let rows = try tx.execute("""
                SELECT \(Self.joinedAttrColumns) FROM changes c JOIN inodes i ON i.volume = c.volume AND i.ino = c.ino
                WHERE c.volume = $1 AND c.seq = (SELECT max(seq) FROM changes WHERE volume = $1 AND parent = $2 AND name = $3) - 1
                """, [.int(id), .ino(parent), .name(name)])
            guard rows.count == 1 else { throw MetadataError.database("an unlink's answer was lost, and its inode is gone") }
            return try Self.attr(rows)
        }
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { tx in
            _ = try fetchDirectory(tx, parent)
            guard let ino = try entry(tx, parent, name) else { throw MetadataError.notFound }
            let attr = try fetchAttr(tx, ino)
            guard attr.isDirectory else { throw MetadataError.notDirectory }
            if try hasEntries(tx, ino) { throw MetadataError.notEmpty }
            try deleteEntry(tx, parent, name)
            tx.later("UPDATE inodes SET nlink = 0, ctime = $3 WHERE volume = $1 AND ino = $2", [.int(id), .ino(ino), .time(now)])
            try touchDirectory(tx, parent, nlinkDelta: -1, now: now)
            try note(tx, ino: ino)
            try note(tx, ino: parent, parent: parent, name: name)
            return try fetchAttr(tx, ino)
        }
    }

    public func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                       flags: RenameFlags, now: Timestamp) throws(MetadataError) -> Attr? {
        try mutate { tx -> Attr? in
            if flags.contains(.exchange) && flags.contains(.noReplace) {
                throw MetadataError.invalidArgument("RENAME_EXCHANGE with RENAME_NOREPLACE")
            }
            _ = try fetchDirectory(tx, parent)
            _ = try fetchDirectory(tx, newParent)
            guard let source = try entry(tx, parent, name) else { throw MetadataError.notFound }
            let sourceAttr = try fetchAttr(tx, source)
            let target = try entry(tx, newParent, newName)
            try note(tx, ino: source, parent: parent, name: name)
            try note(tx, ino: target, parent: newParent, name: newName)
            try note(tx, ino: parent)
            try note(tx, ino: newParent)
            if flags.contains(.noReplace) && target != nil { throw MetadataError.exists }
            if try sourceAttr.isDirectory && parent != newParent && isWithin(tx, newParent, source) {
                throw MetadataError.invalidArgument("cannot move a directory into itself")
            }

            if flags.contains(.exchange) {
                guard let target else { throw MetadataError.notFound }
                if target == source { return nil }
                let targetAttr = try fetchAttr(tx, target)
                if try targetAttr.isDirectory && parent != newParent && isWithin(tx, parent, target) {
                    throw MetadataError.invalidArgument("cannot move a directory into itself")
                }
                let swap = "UPDATE dentries SET ino = $4 WHERE volume = $1 AND parent = $2 AND name = $3"
                tx.later(swap, [.int(id), .ino(parent), .name(name), .ino(target)])
                tx.later(swap, [.int(id), .ino(newParent), .name(newName), .ino(source)])
                if parent != newParent {
                    let sourceDir = sourceAttr.isDirectory ? 1 : 0
                    let targetDir = targetAttr.isDirectory ? 1 : 0
                    if sourceAttr.isDirectory { try setParent(tx, source, newParent) }
                    if targetAttr.isDirectory { try setParent(tx, target, parent) }
                    try touchDirectory(tx, parent, nlinkDelta: targetDir - sourceDir, now: now)
                    try touchDirectory(tx, newParent, nlinkDelta: sourceDir - targetDir, now: now)
                } else {
                    try touchDirectory(tx, parent, now: now)
                }
                try setCtime(tx, [source, target], now)
                return nil
            }

            var replaced: InodeNumber?
            var parentLinks = 0
            var newParentLinks = 0
            if let target {
                // Two names of one inode: POSIX says rename does nothing.
                if target == source { return nil }
                let targetAttr = try fetchAttr(tx, target)
                if sourceAttr.isDirectory {
                    guard targetAttr.isDirectory else { throw MetadataError.notDirectory }
                    if try hasEntries(tx, target) { throw MetadataError.notEmpty }
                    tx.later("UPDATE inodes SET nlink = 0, ctime = $3 WHERE volume = $1 AND ino = $2",
                                   [.int(id), .ino(target), .time(now)])
                    newParentLinks -= 1
                } else {
                    if targetAttr.isDirectory { throw MetadataError.isDirectory }
                    tx.later("UPDATE inodes SET nlink = greatest(0, nlink - 1), ctime = $3 WHERE volume = $1 AND ino = $2",
                                   [.int(id), .ino(target), .time(now)])
                }
                try deleteEntry(tx, newParent, newName)
                replaced = target
            }
            try deleteEntry(tx, parent, name)
            try insertEntry(tx, newParent, newName, source)
            if sourceAttr.isDirectory && parent != newParent {
                try setParent(tx, source, newParent)
                parentLinks -= 1
                newParentLinks += 1
            }
            try setCtime(tx, [source], now)
            if parent == newParent {
                try touchDirectory(tx, parent, nlinkDelta: parentLinks + newParentLinks, now: now)
            } else {
                try touchDirectory(tx, parent, nlinkDelta: parentLinks, now: now)
                try touchDirectory(tx, newParent, nlinkDelta: newParentLinks, now: now)
            }
            return try replaced.map { try fetchAttr(tx, $0) }
        }
    }

    public func readdir(_ ino: InodeNumber, after cookie: Int64, limit: Int) throws(MetadataError) -> [DirEntry] {
        try read { tx in
            let dir = try fetchAttr(tx, ino)
            guard dir.isDirectory else { throw MetadataError.notDirectory }
            let rows = try tx.execute("""
                SELECT d.cookie, d.name, \(Self.joinedAttrColumns)
                FROM dentries d JOIN inodes i ON i.volume = d.volume AND i.ino = d.ino
                WHERE d.volume = $1 AND d.parent = $2 AND d.cookie > $3 ORDER BY d.cookie LIMIT $4
                """, [.int(id), .ino(ino), .int(cookie), .int(Int64(limit))])
            return try (0..<rows.count).map { row in
                DirEntry(name: FileName(try rows.bytes(row, 1)), attr: try Self.attr(rows, row, from: 2), cookie: try rows.int(row, 0))
            }
        }
    }

    public func readlink(_ ino: InodeNumber) throws(MetadataError) -> [UInt8] {
        try read { tx in
            let rows = try tx.execute("SELECT mode, target FROM inodes WHERE volume = $1 AND ino = $2", [.int(id), .ino(ino)])
            guard rows.count == 1 else { throw MetadataError.notFound }
            guard UInt32(truncatingIfNeeded: try rows.int(0, 0)) & FileType.mask == FileType.symlink.rawValue,
                  let target = try rows.bytesOrNil(0, 1) else {
                throw MetadataError.invalidArgument("not a symbolic link")
            }
            return target
        }
    }
}
