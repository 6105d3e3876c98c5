// Inodes and directory entries: the same rules, errors and link counts as SQLiteMetadata.
// Each change is one function of the schema (netvol_mknode, netvol_rename, ...), which
// checks and refuses in SQL, so that it travels with COMMIT: one round trip.

public import Metadata

extension PostgresMetadata {
    /// The attributes of what `name` in `parent` names. The directory is read in the same
    /// statement, for a missing entry's error to say why without another round trip.
    func entryAttr(_ tx: Transaction, _ parent: InodeNumber, _ name: FileName) throws -> Attr {
        let rows = try tx.execute(Self.entryStatement, [.int(id), .ino(parent), .name(name)])
        guard rows.count == 1 else { throw MetadataError.notFound }
        if !rows.isNull(0, 0) { return try Self.attr(rows) }
        guard UInt32(truncatingIfNeeded: try rows.int(0, 11)) & FileType.mask == FileType.directory.rawValue else {
            throw MetadataError.notDirectory
        }
        throw MetadataError.notFound
    }

    static let entryStatement = """
        SELECT \(joinedAttrColumns), dir.mode, dir.nlink
        FROM inodes dir
        LEFT JOIN dentries d ON d.volume = dir.volume AND d.parent = dir.ino AND d.name = $3
        LEFT JOIN \(inodeOf("d")) ON true
        WHERE dir.volume = $1 AND dir.ino = $2
        """

    func setCtime(_ tx: Transaction, _ inodes: [InodeNumber], _ now: Timestamp) throws {
        tx.later("UPDATE inodes SET ctime = $3 WHERE volume = $1 AND ino = ANY($2)",
                       [.int(id), .ints(inodes.map { Int64(bitPattern: $0.rawValue) }), .time(now)])
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

    /// Moves `lease.next_ino` past the numbers it answers, so that no `mknode` gives them.
    public func reserveInodes(_ count: Int) throws(MetadataError) -> Range<UInt64> {
        guard count > 0 else { return 0..<0 }
        return try mutate { tx in
            let rows = try tx.execute("UPDATE lease SET next_ino = next_ino + $2 WHERE volume = $1 RETURNING next_ino - $2",
                                      [.int(id), .int(Int64(count))])
            guard rows.count == 1 else { throw MetadataError.notAVolume("the volume was destroyed") }
            let first = UInt64(bitPattern: try rows.int(0, 0))
            return first..<(first + UInt64(count))
        }
    }

    public func apply(_ changes: [NameChange]) throws(MetadataError) {
        guard !changes.isEmpty else { return }
        try mutateInOneTrip(recover: {}) { tx in
            try queue(tx, changes)
            return Answered(())
        }
    }

    /// Queues `apply`'s statements, which refuse in SQL: they travel with COMMIT.
    func queue(_ tx: Transaction, _ changes: [NameChange]) throws {
        for change in changes {
            switch change {
            case .make(let file):
                guard file.isMakeable else {
                    throw MetadataError.invalidArgument("only regular files, directories and symbolic links with targets are made under reserved numbers")
                }
                tx.later("SELECT 1 FROM netvol_make($1, $2, $3, $4, $5, $6, 0, $7, $8, $9)",
                         [.int(id), .ino(file.parent), .name(file.name), .int(Int64(file.attr.mode)), .int(Int64(file.attr.uid)),
                          .int(Int64(file.attr.gid)), .bytes(file.target), .time(file.attr.ctime), .ino(file.attr.ino)])
            case .remove(let parent, let name, let directory, let now):
                tx.later("SELECT 1 FROM netvol_remove($1, $2, $3, $4, $5 <> 0)",
                         [.int(id), .ino(parent), .name(name), .time(now), .int(directory ? 1 : 0)])
            }
        }
    }

    public func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutateInOneTrip(recover: { () throws(MetadataError) in try self.lookup(newParent, newName) }) { tx in
            let attr = Answered<Attr>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_link($1, $2, $3, $4, $5)",
                          [.int(id), .ino(ino), .ino(newParent), .name(newName), .time(now)]) { rows in attr.value = try Self.attr(rows) }
            return attr
        }
    }

    public func unlink(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try remove(parent, name, now: now, directory: false)
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try remove(parent, name, now: now, directory: true)
    }

    func remove(_ parent: InodeNumber, _ name: FileName, now: Timestamp, directory: Bool) throws(MetadataError) -> Attr {
        try mutateInOneTrip(recover: { () throws(MetadataError) in try self.unlinked(parent, name) }) { tx in
            let attr = Answered<Attr>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_remove($1, $2, $3, $4, $5 <> 0)",
                          [.int(id), .ino(parent), .name(name), .time(now), .int(directory ? 1 : 0)]) { rows in
                attr.value = try Self.attr(rows)
            }
            return attr
        }
    }

    /// The inode the latest unlink or rmdir of `name` in `parent` took the name from, for
    /// one whose answer was lost: `netvol_remove` notes that inode's change just before
    /// the entry's, both under the lease lock, so their numbers are consecutive.
    func unlinked(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr {
        try read { tx in
            let rows = try tx.execute("""
                SELECT \(Self.joinedAttrColumns) FROM changes c JOIN \(Self.inodeOf("c")) ON true
                WHERE c.volume = $1 AND c.seq = (SELECT max(seq) FROM changes WHERE volume = $1 AND parent = $2 AND name = $3) - 1
                """, [.int(id), .ino(parent), .name(name)])
            guard rows.count == 1 else { throw MetadataError.database("an unlink's answer was lost, and its inode is gone") }
            return try Self.attr(rows)
        }
    }

    public func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                       flags: RenameFlags, now: Timestamp) throws(MetadataError) -> Attr? {
        if flags.contains(.exchange) && flags.contains(.noReplace) {
            throw .invalidArgument("RENAME_EXCHANGE with RENAME_NOREPLACE")
        }
        return try mutateInOneTrip(recover: { () throws(MetadataError) in
            try self.renamed(parent, name, newParent, newName, exchange: flags.contains(.exchange))
        }) { tx in
            let replaced = Answered<Attr?>()
            tx.withCommit("SELECT \(Self.attrColumns) FROM netvol_rename($1, $2, $3, $4, $5, $6 <> 0, $7 <> 0, $8)",
                          [.int(id), .ino(parent), .name(name), .ino(newParent), .name(newName),
                           .int(flags.contains(.noReplace) ? 1 : 0), .int(flags.contains(.exchange) ? 1 : 0), .time(now)]) { rows in
                replaced.value = .some(rows.count == 0 ? nil : try Self.attr(rows))
            }
            return replaced
        }
    }

    /// What a rename whose answer was lost replaced: `netvol_rename` notes the source's
    /// change, then the target's, consecutively under the lease lock.
    func renamed(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                 exchange: Bool) throws(MetadataError) -> Attr? {
        if exchange { return nil }
        let target: InodeNumber? = try read { tx in
            let rows = try tx.execute("""
                SELECT t.ino, s.ino FROM changes t JOIN changes s ON s.volume = t.volume AND s.seq = t.seq - 1
                WHERE t.volume = $1 AND t.parent = $2 AND t.name = $3 AND s.parent = $4 AND s.name = $5
                ORDER BY t.seq DESC LIMIT 1
                """, [.int(id), .ino(newParent), .name(newName), .ino(parent), .name(name)])
            guard rows.count == 1 else { throw MetadataError.database("a rename's answer was lost, and what it did is no longer known") }
            guard let target = try rows.intOrNil(0, 0), target != (try rows.intOrNil(0, 1)) else { return nil }
            return InodeNumber(UInt64(bitPattern: target))
        }
        return try target.map { (ino) throws(MetadataError) in try getattr(ino) }
    }

    /// The directory's own row and a page of its entries in one statement: a listing is
    /// one round trip.
    public func readdir(_ ino: InodeNumber, after cookie: Int64, limit: Int) throws(MetadataError) -> [DirEntry] {
        try read { tx in
            let rows = try tx.execute(Self.readdirStatement, [.int(id), .ino(ino), .int(cookie), .int(Int64(limit))])
            guard rows.count > 0 else { throw MetadataError.notFound }
            guard UInt32(truncatingIfNeeded: try rows.int(0, 0)) & FileType.mask == FileType.directory.rawValue else {
                throw MetadataError.notDirectory
            }
            if rows.isNull(0, 1) { return [] }
            return try (0..<rows.count).map { row in
                DirEntry(name: FileName(try rows.bytes(row, 2)), attr: try Self.attr(rows, row, from: 3), cookie: try rows.int(row, 1))
            }
        }
    }

    public func listings(_ dirs: [InodeNumber], limit: Int) throws(MetadataError) -> [InodeNumber: [DirEntry]] {
        guard !dirs.isEmpty else { return [:] }
        return try read { tx in
            let rows = try tx.execute(Self.listingsStatement, [.int(id), .ints(dirs.map { Int64(bitPattern: $0.rawValue) }), .int(Int64(limit))])
            var found: [InodeNumber: [DirEntry]] = [:]
            for row in 0..<rows.count {
                let dir = InodeNumber(UInt64(bitPattern: try rows.int(row, 0)))
                if rows.isNull(row, 1) {
                    found[dir] = []
                    continue
                }
                found[dir, default: []].append(DirEntry(name: FileName(try rows.bytes(row, 2)), attr: try Self.attr(rows, row, from: 3),
                                                        cookie: try rows.int(row, 1)))
            }
            return found
        }
    }

    static let readdirStatement = """
        SELECT dir.mode, e.*
        FROM inodes dir
        LEFT JOIN LATERAL (\(entriesOfDir(after: "$3", limit: "$4"))) e ON true
        WHERE dir.volume = $1 AND dir.ino = $2
        ORDER BY e.cookie
        """

    static let listingsStatement = """
        SELECT dir.ino, e.*
        FROM (SELECT DISTINCT unnest($2::bigint[]) AS ino) want JOIN \(inodeOf("want", volume: "$1", as: "dir")) ON true
        LEFT JOIN LATERAL (\(entriesOfDir(after: "0", limit: "$3"))) e ON true
        WHERE dir.mode & \(FileType.mask) = \(FileType.directory.rawValue)
        ORDER BY dir.ino, e.cookie
        """

    /// The entries of directory `dir` (a row of `inodes` so named in the outer query)
    /// after a cookie, in order: the right side of a lateral join.
    static func entriesOfDir(after cookie: String, limit: String) -> String {
        """
        SELECT d.cookie, d.name, \(joinedAttrColumns)
        FROM dentries d JOIN \(inodeOf("d")) ON true
        WHERE d.volume = dir.volume AND d.parent = dir.ino AND d.cookie > \(cookie) ORDER BY d.cookie LIMIT \(limit)
        """
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
