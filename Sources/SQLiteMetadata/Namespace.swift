import Foundation
public import Metadata
import GRDB

// Names and attributes: lookup, create, link, unlink, rename, listings.
extension SQLiteMetadata {
    public func lookup(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr {
        try readNow { db in try Self.entryAttr(db, parent, name) }
    }

    public func getattr(_ ino: InodeNumber) throws(MetadataError) -> Attr {
        try readNow { db in try Self.fetchAttr(db, ino) }
    }

    public func touch(_ atimes: [InodeNumber: Timestamp]) throws(MetadataError) {
        guard !atimes.isEmpty else { return }
        try mutate { db in
            let statement = try db.cachedStatement(sql: "UPDATE inodes SET atime = max(atime, ?) WHERE ino = ?")
            for (ino, atime) in atimes {
                try statement.execute(arguments: [atime.nanoseconds, Int64(ino.rawValue)])
            }
        }
    }

    public func setattr(_ ino: InodeNumber, _ changes: AttrChanges, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in
            var attr = try Self.fetchAttr(db, ino)
            if let mode = changes.mode { attr.mode = (attr.mode & FileType.mask) | (mode & 0o7777) }
            if let uid = changes.uid { attr.uid = uid }
            if let gid = changes.gid { attr.gid = gid }
            if let atime = changes.atime { attr.atime = atime }
            if let mtime = changes.mtime { attr.mtime = mtime }
            attr.ctime = now
            try db.cachedStatement(sql: "UPDATE inodes SET mode = ?, uid = ?, gid = ?, atime = ?, mtime = ?, ctime = ? WHERE ino = ?").execute(
                           arguments: [Int64(attr.mode), Int64(attr.uid), Int64(attr.gid), attr.atime.nanoseconds,
                                       attr.mtime.nanoseconds, attr.ctime.nanoseconds, Int64(ino.rawValue)])
            try Self.note(db, ino: ino)
            return attr
        }
    }

    public func mknode(_ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32,
                       rdev: UInt64, target: [UInt8]?, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in
            try Self.makeNode(db, parent, name, mode: mode, uid: uid, gid: gid, rdev: rdev, target: target, now: now, as: nil)
        }
    }

    /// Numbers past every inode's, and past every number given out before: `inodes` is
    /// AUTOINCREMENT, so SQLite never hands them out itself once its sequence passed them.
    public func reserveInodes(_ count: Int) throws(MetadataError) -> Range<UInt64> {
        guard count > 0 else { return 0..<0 }
        return try mutate { db in
            let highest = try Int64.fetchOne(db, sql: """
                SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inodes'), 0),
                           coalesce((SELECT max(ino) FROM inodes), 0))
                """) ?? 0
            try db.execute(sql: "DELETE FROM sqlite_sequence WHERE name = 'inodes'")
            try db.execute(sql: "INSERT INTO sqlite_sequence(name, seq) VALUES ('inodes', ?)", arguments: [highest + Int64(count)])
            return UInt64(highest + 1)..<UInt64(highest + 1 + Int64(count))
        }
    }

    public func apply(_ changes: [NameChange]) throws(MetadataError) {
        guard !changes.isEmpty else { return }
        try mutate { db in try Self.apply(db, changes) }
    }

    static func apply(_ db: Database, _ changes: [NameChange]) throws {
        guard !changes.isEmpty else { return }
        let reserved = try Int64.fetchOne(db.cachedStatement(sql: "SELECT seq FROM sqlite_sequence WHERE name = 'inodes'")) ?? 0
        let existing = try db.cachedStatement(sql: "SELECT 1 FROM inodes WHERE ino = ?")
        for change in changes {
            switch change {
            case .make(let file):
                guard file.isMakeable else {
                    throw MetadataError.invalidArgument("only regular files, directories and symbolic links with targets are made under reserved numbers")
                }
                // A number never reserved could be given out again by an insert of its own.
                let taken = try Int64.fetchOne(existing, arguments: [Int64(file.attr.ino.rawValue)]) != nil
                guard file.attr.ino.rawValue <= UInt64(max(0, reserved)), !taken else {
                    throw MetadataError.invalidArgument("inode \(file.attr.ino.rawValue) was not reserved, or is taken")
                }
                _ = try makeNode(db, file.parent, file.name, mode: file.attr.mode, uid: file.attr.uid, gid: file.attr.gid,
                                 rdev: 0, target: file.target, now: file.attr.ctime, as: file.attr.ino)
            case .remove(let parent, let name, let directory, let now):
                _ = directory ? try removeDirectory(db, parent, name, now: now) : try removeEntry(db, parent, name, now: now)
            }
        }
    }

    /// `mknode`'s work, under number `ino` when given.
    static func makeNode(_ db: Database, _ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32,
                         rdev: UInt64, target: [UInt8]?, now: Timestamp, as ino: InodeNumber?) throws -> Attr {
        let dir = try fetchDirectory(db, parent)
        if try entry(db, parent, name) != nil { throw MetadataError.exists }
        var mode = mode
        var gid = gid
        let isDirectory = mode & FileType.mask == FileType.directory.rawValue
        if dir.mode & 0o2000 != 0 {
            gid = dir.gid
            if isDirectory { mode |= 0o2000 }
        }
        try db.cachedStatement(sql: """
            INSERT INTO inodes(ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent, target)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """).execute(arguments: [ino.map { Int64($0.rawValue) }, Int64(mode), isDirectory ? 2 : 1, Int64(uid), Int64(gid),
                                     Int64(bitPattern: rdev), Int64(target?.count ?? 0), now.nanoseconds, now.nanoseconds,
                                     now.nanoseconds, isDirectory ? Int64(parent.rawValue) : nil, target.map { Data($0) }])
        let made = ino ?? InodeNumber(UInt64(db.lastInsertedRowID))
        try insertEntry(db, parent, name, made)
        try touchDirectory(db, parent, nlinkDelta: isDirectory ? 1 : 0, now: now)
        try note(db, ino: parent, parent: parent, name: name)
        return Attr(ino: made, mode: mode, nlink: isDirectory ? 2 : 1, uid: uid, gid: gid, rdev: rdev,
                    size: UInt64(target?.count ?? 0), atime: now, mtime: now, ctime: now)
    }

    public func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in
            let attr = try Self.fetchAttr(db, ino)
            if attr.isDirectory { throw MetadataError.notPermitted }
            _ = try Self.fetchDirectory(db, newParent)
            if try Self.entry(db, newParent, newName) != nil { throw MetadataError.exists }
            if attr.nlink >= 65_000 { throw MetadataError.tooManyLinks }
            try Self.insertEntry(db, newParent, newName, ino)
            try db.cachedStatement(sql: "UPDATE inodes SET nlink = nlink + 1, ctime = ? WHERE ino = ?").execute(
                           arguments: [now.nanoseconds, Int64(ino.rawValue)])
            try Self.touchDirectory(db, newParent, now: now)
            try Self.note(db, ino: ino)
            try Self.note(db, ino: newParent, parent: newParent, name: newName)
            return try Self.fetchAttr(db, ino)
        }
    }

    public func unlink(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in try Self.removeEntry(db, parent, name, now: now) }
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in try Self.removeDirectory(db, parent, name, now: now) }
    }

    /// `unlink`'s work.
    static func removeEntry(_ db: Database, _ parent: InodeNumber, _ name: FileName, now: Timestamp) throws -> Attr {
        var attr = try entryAttr(db, parent, name)
        if attr.isDirectory { throw MetadataError.isDirectory }
        let ino = attr.ino
        try deleteEntry(db, parent, name)
        try db.cachedStatement(sql: "UPDATE inodes SET nlink = max(0, nlink - 1), ctime = ? WHERE ino = ?").execute(
                       arguments: [now.nanoseconds, Int64(ino.rawValue)])
        try touchDirectory(db, parent, now: now)
        try note(db, ino: ino)
        try note(db, ino: parent, parent: parent, name: name)
        attr.nlink = attr.nlink > 0 ? attr.nlink - 1 : 0
        attr.ctime = now
        return attr
    }

    /// `rmdir`'s work.
    static func removeDirectory(_ db: Database, _ parent: InodeNumber, _ name: FileName, now: Timestamp) throws -> Attr {
        _ = try fetchDirectory(db, parent)
        guard let ino = try entry(db, parent, name) else { throw MetadataError.notFound }
        let attr = try fetchAttr(db, ino)
        guard attr.isDirectory else { throw MetadataError.notDirectory }
        if try hasEntries(db, ino) { throw MetadataError.notEmpty }
        try deleteEntry(db, parent, name)
        try db.cachedStatement(sql: "UPDATE inodes SET nlink = 0, ctime = ? WHERE ino = ?").execute(
                       arguments: [now.nanoseconds, Int64(ino.rawValue)])
        try touchDirectory(db, parent, nlinkDelta: -1, now: now)
        try note(db, ino: ino)
        try note(db, ino: parent, parent: parent, name: name)
        return try fetchAttr(db, ino)
    }

    /// True when `dir` is `ancestor` or lies somewhere below it.
    static func isWithin(_ db: Database, _ dir: InodeNumber, _ ancestor: InodeNumber) throws -> Bool {
        var current = dir
        var steps = 0
        while true {
            if current == ancestor { return true }
            if current == .root { return false }
            guard let parent = try Int64.fetchOne(db.cachedStatement(sql: "SELECT parent FROM inodes WHERE ino = ?"),
                                                  arguments: [Int64(current.rawValue)]) else { return false }
            current = InodeNumber(UInt64(parent))
            steps += 1
            if steps > 1_000_000 { throw MetadataError.database("directory parents form a loop at \(current)") }
        }
    }

    public func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                       flags: RenameFlags, now: Timestamp) throws(MetadataError) -> Attr? {
        try mutate { db -> Attr? in
            if flags.contains(.exchange) && flags.contains(.noReplace) {
                throw MetadataError.invalidArgument("RENAME_EXCHANGE with RENAME_NOREPLACE")
            }
            _ = try Self.fetchDirectory(db, parent)
            _ = try Self.fetchDirectory(db, newParent)
            guard let source = try Self.entry(db, parent, name) else { throw MetadataError.notFound }
            let sourceAttr = try Self.fetchAttr(db, source)
            let target = try Self.entry(db, newParent, newName)
            // Every path below that does not throw changes these; a no-op rename notes
            // harmlessly.
            try Self.note(db, ino: source, parent: parent, name: name)
            try Self.note(db, ino: target, parent: newParent, name: newName)
            try Self.note(db, ino: parent)
            try Self.note(db, ino: newParent)
            if flags.contains(.noReplace) && target != nil { throw MetadataError.exists }
            if try sourceAttr.isDirectory && parent != newParent && Self.isWithin(db, newParent, source) {
                throw MetadataError.invalidArgument("cannot move a directory into itself")
            }

            if flags.contains(.exchange) {
                guard let target else { throw MetadataError.notFound }
                if target == source { return nil }
                let targetAttr = try Self.fetchAttr(db, target)
                if try targetAttr.isDirectory && parent != newParent && Self.isWithin(db, parent, target) {
                    throw MetadataError.invalidArgument("cannot move a directory into itself")
                }
                try db.cachedStatement(sql: "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?").execute(
                               arguments: [Int64(target.rawValue), Int64(parent.rawValue), Data(name.bytes)])
                try db.cachedStatement(sql: "UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?").execute(
                               arguments: [Int64(source.rawValue), Int64(newParent.rawValue), Data(newName.bytes)])
                if parent != newParent {
                    let sourceDir = sourceAttr.isDirectory ? 1 : 0
                    let targetDir = targetAttr.isDirectory ? 1 : 0
                    if sourceAttr.isDirectory {
                        try db.cachedStatement(sql: "UPDATE inodes SET parent = ? WHERE ino = ?").execute(
                                       arguments: [Int64(newParent.rawValue), Int64(source.rawValue)])
                    }
                    if targetAttr.isDirectory {
                        try db.cachedStatement(sql: "UPDATE inodes SET parent = ? WHERE ino = ?").execute(
                                       arguments: [Int64(parent.rawValue), Int64(target.rawValue)])
                    }
                    try Self.touchDirectory(db, parent, nlinkDelta: targetDir - sourceDir, now: now)
                    try Self.touchDirectory(db, newParent, nlinkDelta: sourceDir - targetDir, now: now)
                } else {
                    try Self.touchDirectory(db, parent, now: now)
                }
                try db.cachedStatement(sql: "UPDATE inodes SET ctime = ? WHERE ino IN (?, ?)").execute(
                               arguments: [now.nanoseconds, Int64(source.rawValue), Int64(target.rawValue)])
                return nil
            }

            var replaced: InodeNumber?
            var parentLinks = 0
            var newParentLinks = 0
            if let target {
                // Two names of one inode: POSIX says rename does nothing.
                if target == source { return nil }
                let targetAttr = try Self.fetchAttr(db, target)
                if sourceAttr.isDirectory {
                    guard targetAttr.isDirectory else { throw MetadataError.notDirectory }
                    if try Self.hasEntries(db, target) { throw MetadataError.notEmpty }
                    try db.cachedStatement(sql: "UPDATE inodes SET nlink = 0, ctime = ? WHERE ino = ?").execute(
                                   arguments: [now.nanoseconds, Int64(target.rawValue)])
                    newParentLinks -= 1
                } else {
                    if targetAttr.isDirectory { throw MetadataError.isDirectory }
                    try db.cachedStatement(sql: "UPDATE inodes SET nlink = max(0, nlink - 1), ctime = ? WHERE ino = ?").execute(
                                   arguments: [now.nanoseconds, Int64(target.rawValue)])
                }
                try Self.deleteEntry(db, newParent, newName)
                replaced = target
            }
            try Self.deleteEntry(db, parent, name)
            try Self.insertEntry(db, newParent, newName, source)
            if sourceAttr.isDirectory && parent != newParent {
                try db.cachedStatement(sql: "UPDATE inodes SET parent = ? WHERE ino = ?").execute(
                               arguments: [Int64(newParent.rawValue), Int64(source.rawValue)])
                parentLinks -= 1
                newParentLinks += 1
            }
            try db.cachedStatement(sql: "UPDATE inodes SET ctime = ? WHERE ino = ?").execute(
                           arguments: [now.nanoseconds, Int64(source.rawValue)])
            if parent == newParent {
                try Self.touchDirectory(db, parent, nlinkDelta: parentLinks + newParentLinks, now: now)
            } else {
                try Self.touchDirectory(db, parent, nlinkDelta: parentLinks, now: now)
                try Self.touchDirectory(db, newParent, nlinkDelta: newParentLinks, now: now)
            }
            return try replaced.map { try Self.fetchAttr(db, $0) }
        }
    }

    public func readdir(_ ino: InodeNumber, after cookie: Int64, limit: Int) throws(MetadataError) -> [DirEntry] {
        try readNow { db in
            let dir = try Self.fetchAttr(db, ino)
            guard dir.isDirectory else { throw MetadataError.notDirectory }
            return try Self.entries(db, ino, after: cookie, limit: limit)
        }
    }

    public func listings(_ dirs: [InodeNumber], limit: Int) throws(MetadataError) -> [InodeNumber: [DirEntry]] {
        try readNow { db in
            var found: [InodeNumber: [DirEntry]] = [:]
            try db.inTransaction(.deferred) {
                for dir in dirs where found[dir] == nil {
                    guard let attr = try? Self.fetchAttr(db, dir), attr.isDirectory else { continue }
                    found[dir] = try Self.entries(db, dir, after: 0, limit: limit)
                }
                return .commit
            }
            return found
        }
    }

    static func entries(_ db: Database, _ dir: InodeNumber, after cookie: Int64, limit: Int) throws -> [DirEntry] {
        let statement = try db.cachedStatement(sql: """
            SELECT d.cookie, d.name, \(joinedAttrColumns)
            FROM dentries d JOIN inodes i ON i.ino = d.ino
            WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?
            """)
        return try Row.fetchAll(statement, arguments: [Int64(dir.rawValue), cookie, limit]).map { row in
            DirEntry(name: FileName([UInt8](row[1] as Data)), attr: attr(row, from: 2), cookie: row[0])
        }
    }

    public func readlink(_ ino: InodeNumber) throws(MetadataError) -> [UInt8] {
        try readNow { db in
            guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT mode, target FROM inodes WHERE ino = ?"),
                                             arguments: [Int64(ino.rawValue)]) else { throw MetadataError.notFound }
            guard UInt32(truncatingIfNeeded: row[0] as Int64) & FileType.mask == FileType.symlink.rawValue,
                  let target = row[1] as Data? else {
                throw MetadataError.invalidArgument("not a symbolic link")
            }
            return [UInt8](target)
        }
    }
}
