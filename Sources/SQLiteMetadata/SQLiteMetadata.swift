#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import Metadata
import GRDB
import Synchronization

/// Metadata in one SQLite database in WAL mode: `VOLUME_DIR/volume.db`.
///
/// Commits are synchronous=NORMAL (durable at the next WAL sync, always ordered);
/// `sync()` forces the WAL to disk, which is what `fsync` on a file needs.
public final class SQLiteMetadata: Metadata {
    public static let fileName = "volume.db"
    static let formatVersion: Int64 = 1

    let pool: DatabasePool
    public let path: String
    /// Replaces the database's clock for the lease (tests drive expiry with it).
    let clock: (@Sendable () -> Timestamp)?
    let fence = Mutex<Fence?>(nil)

    /// Opens the metadata of an existing volume.
    ///
    /// - Throws: `.notAVolume` when the file is missing or is not netvol metadata.
    public init(path: String, clock: (@Sendable () -> Timestamp)? = nil) throws(MetadataError) {
        self.clock = clock
        guard FileManager.default.fileExists(atPath: path) else {
            throw .notAVolume("no \(Self.fileName) in \((path as NSString).deletingLastPathComponent)")
        }
        self.path = path
        // Volumes made before the database was private are closed to other users here.
        for file in [path, path + "-wal", path + "-shm"] { Self.restrict(file) }
        do {
            pool = try DatabasePool(path: path, configuration: Self.configuration())
            let version = try pool.read { db in
                try Int64.fetchOne(db, sql: "SELECT value FROM settings WHERE key = 'format'")
            }
            guard version == Self.formatVersion else {
                throw MetadataError.notAVolume("\(path) has metadata format \(version.map(String.init) ?? "none"), expected \(Self.formatVersion)")
            }
            // Volumes made before the lease or inline chunks existed get them on first open.
            try pool.write { db in
                try db.execute(sql: Self.sharingSchema)
                if try !db.columns(in: "chunks").contains(where: { $0.name == "data" }) {
                    try db.execute(sql: "ALTER TABLE chunks ADD COLUMN data BLOB")
                }
            }
        } catch let error as MetadataError {
            throw error
        } catch {
            throw .notAVolume("\(path) is not a netvol volume: \(error)")
        }
    }

    /// Creates the metadata of a new volume with an empty root directory owned by `uid`/`gid`.
    public static func create(path: String, chunkSize: Int, sizeLimit: UInt64, uid: UInt32 = 0, gid: UInt32 = 0,
                              now: Timestamp) throws(MetadataError) -> SQLiteMetadata {
        // The database holds small files' bytes: it is made 0600 before SQLite writes a
        // byte to it, and SQLite gives its WAL and shared-memory files the same mode.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, privateFileMode)
        guard fd >= 0 else {
            if errno == EEXIST { throw .exists }
            throw .database("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        close(fd)
        do {
            let pool = try DatabasePool(path: path, configuration: configuration())
            try pool.write { db in
                try db.execute(sql: schema)
                try db.execute(sql: sharingSchema)
                for (key, value) in [("format", formatVersion), ("chunk_size", Int64(chunkSize)),
                                     ("size_limit", Int64(bitPattern: sizeLimit)), ("used_bytes", 0),
                                     ("syncs", 0), ("created", now.nanoseconds)] {
                    try db.cachedStatement(sql: "INSERT INTO settings(key, value) VALUES (?, ?)").execute(arguments: [key, value])
                }
                try db.cachedStatement(sql: """
                    INSERT INTO inodes(ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent)
                    VALUES (1, ?, 2, ?, ?, 0, 0, ?, ?, ?, 1)
                    """).execute(arguments: [Int64(FileType.directory.rawValue | 0o755), Int64(uid), Int64(gid),
                                     now.nanoseconds, now.nanoseconds, now.nanoseconds])
            }
            try pool.close()
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw .database("cannot create \(path): \(error)")
        }
        return try SQLiteMetadata(path: path)
    }

    /// The mode of the database and its WAL: only the daemon's user may read them.
    static let privateFileMode: mode_t = 0o600

    /// Takes group and other access away from `file`, if it has any.
    static func restrict(_ file: String) {
        var info = stat()
        guard stat(file, &info) == 0, info.st_mode & 0o077 != 0 else { return }
        _ = chmod(file, info.st_mode & 0o700)
    }

    static let schema = """
        CREATE TABLE settings(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE inodes(
            ino INTEGER PRIMARY KEY AUTOINCREMENT,
            mode INTEGER NOT NULL, nlink INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
            rdev INTEGER NOT NULL, size INTEGER NOT NULL,
            stored INTEGER NOT NULL DEFAULT 0,  -- bytes of this file's chunk objects
            atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
            parent INTEGER,  -- directories only: the one directory that holds this one
            target BLOB      -- symlinks only
        );
        CREATE TABLE dentries(
            cookie INTEGER PRIMARY KEY AUTOINCREMENT,  -- readdir position, never reused
            parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
            UNIQUE(parent, name)
        );
        CREATE INDEX dentries_by_position ON dentries(parent, cookie);
        CREATE TABLE chunks(
            ino INTEGER NOT NULL, idx INTEGER NOT NULL, object INTEGER NOT NULL,
            length INTEGER NOT NULL, checksums BLOB NOT NULL,
            data BLOB,  -- inline chunks (object 0): the bytes themselves
            PRIMARY KEY(ino, idx)
        ) WITHOUT ROWID;
        CREATE INDEX chunks_by_object ON chunks(object);
        CREATE TABLE xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
                            PRIMARY KEY(ino, name)) WITHOUT ROWID;
        CREATE TABLE garbage(object INTEGER PRIMARY KEY, since INTEGER NOT NULL);
        """

    /// The writer lease, the mounts attached, and the change feed readers follow.
    static let sharingSchema = """
        CREATE TABLE IF NOT EXISTS lease(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            holder TEXT, token INTEGER NOT NULL, expires_at INTEGER NOT NULL, renewed_at INTEGER NOT NULL
        );
        INSERT OR IGNORE INTO lease(id, holder, token, expires_at, renewed_at) VALUES (1, NULL, 0, 0, 0);
        CREATE TABLE IF NOT EXISTS sessions(
            id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, mountpoint TEXT NOT NULL,
            device TEXT NOT NULL, mode TEXT NOT NULL, started_at INTEGER NOT NULL, heartbeat_at INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS changes(
            seq INTEGER PRIMARY KEY AUTOINCREMENT, ino INTEGER, parent INTEGER, name BLOB
        );
        """

    static func configuration() -> Configuration {
        var config = Configuration()
        config.busyMode = .timeout(30)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        return config
    }

    // MARK: - Plumbing

    /// Runs `body`, passing our own errors through and naming any other one a database error.
    static func lifted<T>(_ body: () throws -> T) throws(MetadataError) -> T {
        do {
            return try body()
        } catch let error as MetadataError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_FULL {
            // The disk under the database is full: the caller sees ENOSPC, not EIO.
            throw .noSpace
        } catch {
            throw .database(String(describing: error))
        }
    }

    func write<T>(_ body: (Database) throws -> T) throws(MetadataError) -> T {
        // BEGIN and COMMIT as cached statements: a transaction then parses no SQL of its
        // own, which is a good part of the cost of a small one.
        try Self.lifted {
            try pool.writeWithoutTransaction { db in
                try db.cachedStatement(sql: "BEGIN IMMEDIATE").execute()
                do {
                    let value = try body(db)
                    try db.cachedStatement(sql: "COMMIT").execute()
                    return value
                } catch {
                    if db.isInsideTransaction { try? db.cachedStatement(sql: "ROLLBACK").execute() }
                    throw error
                }
            }
        }
    }

    /// A namespace or data transaction: when a fence is set, it first checks inside the
    /// same transaction that the fence still holds the lease.
    func mutate<T>(_ body: (Database) throws -> T) throws(MetadataError) -> T {
        let fence = self.fence.withLock { $0 }
        return try write { db in
            if let fence { try Self.check(db, fence) }
            return try body(db)
        }
    }

    static func check(_ db: Database, _ fence: Fence) throws {
        let statement = try db.cachedStatement(sql: "SELECT holder, token FROM lease WHERE id = 1")
        guard let row = try Row.fetchOne(statement) else { throw MetadataError.fenced(holder: nil) }
        let holder: String? = row[0]
        let token: Int64 = row[1]
        guard holder == fence.holder, token == fence.token.rawValue else {
            throw MetadataError.fenced(holder: holder)
        }
    }

    /// Records a change for readers: an inode, or an entry of a directory, or both.
    static func note(_ db: Database, ino: InodeNumber? = nil, parent: InodeNumber? = nil, name: FileName? = nil) throws {
        let statement = try db.cachedStatement(sql: "INSERT INTO changes(ino, parent, name) VALUES (?, ?, ?)")
        try statement.execute(arguments: [ino.map { Int64($0.rawValue) }, parent.map { Int64($0.rawValue) },
                                          name.map { Data($0.bytes) }])
    }

    /// Now, by the database's clock (which for SQLite is the clock of the host it is on).
    func now(_ db: Database) throws -> Timestamp {
        if let clock { return clock() }
        let millis = try Int64.fetchOne(db, sql: "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)") ?? 0
        return Timestamp(nanoseconds: millis * 1_000_000)
    }

    func read<T>(_ body: (Database) throws -> T) throws(MetadataError) -> T {
        try Self.lifted { try pool.read(body) }
    }

    /// A read whose statements need no common snapshot (one query, or several where a
    /// change in between only gives an answer that was true a moment earlier): the hot
    /// paths (lookup, getattr, readdir, open). It runs without BEGIN and COMMIT on the
    /// writer's connection, whose page cache our own commits keep warm; a reader
    /// connection would reload every page a commit touched, and take its own locks.
    /// Such reads queue behind writes, which are short.
    func readNow<T>(_ body: (Database) throws -> T) throws(MetadataError) -> T {
        try Self.lifted { try pool.writeWithoutTransaction(body) }
    }

    static let attrColumns = "ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, stored"

    static let joinedAttrColumns = attrColumns.split(separator: ",")
        .map { "i." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", ")

    static func attr(_ row: Row, from start: Int = 0) -> Attr {
        Attr(ino: InodeNumber(UInt64(row[start] as Int64)),
             mode: UInt32(truncatingIfNeeded: row[start + 1] as Int64),
             nlink: UInt32(truncatingIfNeeded: row[start + 2] as Int64),
             uid: UInt32(truncatingIfNeeded: row[start + 3] as Int64),
             gid: UInt32(truncatingIfNeeded: row[start + 4] as Int64),
             rdev: UInt64(bitPattern: row[start + 5] as Int64),
             size: UInt64(bitPattern: row[start + 6] as Int64),
             atime: Timestamp(nanoseconds: row[start + 7]),
             mtime: Timestamp(nanoseconds: row[start + 8]),
             ctime: Timestamp(nanoseconds: row[start + 9]),
             storedBytes: UInt64(max(0, row[start + 10] as Int64)))
    }

    static func fetchAttr(_ db: Database, _ ino: InodeNumber) throws -> Attr {
        let statement = try db.cachedStatement(sql: "SELECT \(attrColumns) FROM inodes WHERE ino = ?")
        guard let row = try Row.fetchOne(statement, arguments: [Int64(ino.rawValue)]) else {
            throw MetadataError.notFound
        }
        return attr(row)
    }

    /// The attributes of `ino`, which must be a directory that still has a name.
    static func fetchDirectory(_ db: Database, _ ino: InodeNumber) throws -> Attr {
        let attr = try fetchAttr(db, ino)
        guard attr.isDirectory else { throw MetadataError.notDirectory }
        guard attr.nlink > 0 else { throw MetadataError.notFound }
        return attr
    }

    /// The attributes of what `name` in `parent` names. An entry exists only in a live
    /// directory, so the directory is looked at only when there is none: the error then
    /// says why (ENOTDIR, or ENOENT).
    static func entryAttr(_ db: Database, _ parent: InodeNumber, _ name: FileName) throws -> Attr {
        let statement = try db.cachedStatement(sql: """
            SELECT \(joinedAttrColumns)
            FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.name = ?
            """)
        if let row = try Row.fetchOne(statement, arguments: [Int64(parent.rawValue), Data(name.bytes)]) {
            return attr(row)
        }
        _ = try fetchDirectory(db, parent)
        throw MetadataError.notFound
    }

    static func entry(_ db: Database, _ parent: InodeNumber, _ name: FileName) throws -> InodeNumber? {
        let statement = try db.cachedStatement(sql: "SELECT ino FROM dentries WHERE parent = ? AND name = ?")
        return try Int64.fetchOne(statement, arguments: [Int64(parent.rawValue), Data(name.bytes)])
            .map { InodeNumber(UInt64($0)) }
    }

    static func insertEntry(_ db: Database, _ parent: InodeNumber, _ name: FileName, _ ino: InodeNumber) throws {
        try db.cachedStatement(sql: "INSERT INTO dentries(parent, name, ino) VALUES (?, ?, ?)").execute(
                       arguments: [Int64(parent.rawValue), Data(name.bytes), Int64(ino.rawValue)])
    }

    static func deleteEntry(_ db: Database, _ parent: InodeNumber, _ name: FileName) throws {
        try db.cachedStatement(sql: "DELETE FROM dentries WHERE parent = ? AND name = ?").execute(
                       arguments: [Int64(parent.rawValue), Data(name.bytes)])
    }

    /// Sets mtime and ctime of a directory whose entries changed, and adjusts its link count.
    static func touchDirectory(_ db: Database, _ dir: InodeNumber, nlinkDelta: Int = 0, now: Timestamp) throws {
        try db.cachedStatement(sql: "UPDATE inodes SET mtime = ?, ctime = ?, nlink = nlink + ? WHERE ino = ?").execute(
                       arguments: [now.nanoseconds, now.nanoseconds, nlinkDelta, Int64(dir.rawValue)])
    }

    static func setting(_ db: Database, _ key: String) throws -> Int64 {
        let statement = try db.cachedStatement(sql: "SELECT value FROM settings WHERE key = ?")
        guard let value = try Int64.fetchOne(statement, arguments: [key]) else {
            throw MetadataError.notAVolume("setting \(key) is missing")
        }
        return value
    }

    static func hasEntries(_ db: Database, _ dir: InodeNumber) throws -> Bool {
        try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS(SELECT 1 FROM dentries WHERE parent = ?)"),
                          arguments: [Int64(dir.rawValue)]) ?? false
    }

    /// The object column of an inline chunk: no object was stored for it.
    static let inlineObject: Int64 = 0

    /// The object a chunk row's object column names, or nil for an inline chunk.
    static func storedObject(_ column: Int64) -> ObjectID? {
        column == inlineObject ? nil : ObjectID(rawValue: UInt64(bitPattern: column))
    }

    /// Records those of `objects` that no chunk names any more as garbage since `now`, and
    /// returns them: several chunks may share one object.
    static func retire(_ db: Database, _ objects: [ObjectID], now: Timestamp) throws -> [ObjectID] {
        let statement = try db.cachedStatement(sql: """
            INSERT OR IGNORE INTO garbage(object, since)
            SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE object = ?1)
            """)
        var retired: [ObjectID] = []
        for object in objects {
            try statement.execute(arguments: [Int64(bitPattern: object.rawValue), now.nanoseconds])
            if db.changesCount > 0 { retired.append(object) }
        }
        return retired
    }

    static func addUsage(_ db: Database, _ delta: Int64) throws {
        guard delta != 0 else { return }
        // One statement checks the limit and counts (a limit past 2^63 reads as negative:
        // no limit).
        try db.cachedStatement(sql: """
            UPDATE settings SET value = max(0, value + ?1) WHERE key = 'used_bytes' AND (?1 <= 0 OR
                (SELECT value FROM settings WHERE key = 'size_limit') < 0 OR
                value + ?1 <= (SELECT value FROM settings WHERE key = 'size_limit'))
            """).execute(arguments: [delta])
        if db.changesCount == 0 { throw MetadataError.noSpace }
    }

    // MARK: - Volume

    public func settings() throws(MetadataError) -> VolumeSettings {
        try read { db in
            VolumeSettings(chunkSize: Int(try Self.setting(db, "chunk_size")),
                           sizeLimit: UInt64(bitPattern: try Self.setting(db, "size_limit")))
        }
    }

    public func usage() throws(MetadataError) -> VolumeUsage {
        try read { db in
            VolumeUsage(sizeLimit: UInt64(bitPattern: try Self.setting(db, "size_limit")),
                        usedBytes: UInt64(max(0, try Self.setting(db, "used_bytes"))),
                        inodes: UInt64(try Int64.fetchOne(db, sql: "SELECT count(*) FROM inodes") ?? 0),
                        chunkSize: Int(try Self.setting(db, "chunk_size")))
        }
    }

    public func resize(sizeLimit: UInt64) throws(MetadataError) {
        try write { db in
            let current = UInt64(bitPattern: try Self.setting(db, "size_limit"))
            guard sizeLimit >= current else {
                throw MetadataError.invalidArgument("a volume can grow but not shrink")
            }
            try db.cachedStatement(sql: "UPDATE settings SET value = ? WHERE key = 'size_limit'").execute(
                           arguments: [Int64(bitPattern: sizeLimit)])
        }
    }

    // MARK: - Namespace

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
            let dir = try Self.fetchDirectory(db, parent)
            if try Self.entry(db, parent, name) != nil { throw MetadataError.exists }
            var mode = mode
            var gid = gid
            let isDirectory = mode & FileType.mask == FileType.directory.rawValue
            if dir.mode & 0o2000 != 0 {
                gid = dir.gid
                if isDirectory { mode |= 0o2000 }
            }
            try db.cachedStatement(sql: """
                INSERT INTO inodes(mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent, target)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute(arguments: [Int64(mode), isDirectory ? 2 : 1, Int64(uid), Int64(gid), Int64(bitPattern: rdev),
                                 Int64(target?.count ?? 0), now.nanoseconds, now.nanoseconds, now.nanoseconds,
                                 isDirectory ? Int64(parent.rawValue) : nil, target.map { Data($0) }])
            let ino = InodeNumber(UInt64(db.lastInsertedRowID))
            try Self.insertEntry(db, parent, name, ino)
            try Self.touchDirectory(db, parent, nlinkDelta: isDirectory ? 1 : 0, now: now)
            try Self.note(db, ino: parent, parent: parent, name: name)
            return Attr(ino: ino, mode: mode, nlink: isDirectory ? 2 : 1, uid: uid, gid: gid, rdev: rdev,
                        size: UInt64(target?.count ?? 0), atime: now, mtime: now, ctime: now)
        }
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
        try mutate { db in
            var attr = try Self.entryAttr(db, parent, name)
            if attr.isDirectory { throw MetadataError.isDirectory }
            let ino = attr.ino
            try Self.deleteEntry(db, parent, name)
            try db.cachedStatement(sql: "UPDATE inodes SET nlink = max(0, nlink - 1), ctime = ? WHERE ino = ?").execute(
                           arguments: [now.nanoseconds, Int64(ino.rawValue)])
            try Self.touchDirectory(db, parent, now: now)
            try Self.note(db, ino: ino)
            try Self.note(db, ino: parent, parent: parent, name: name)
            attr.nlink = attr.nlink > 0 ? attr.nlink - 1 : 0
            attr.ctime = now
            return attr
        }
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try mutate { db in
            _ = try Self.fetchDirectory(db, parent)
            guard let ino = try Self.entry(db, parent, name) else { throw MetadataError.notFound }
            let attr = try Self.fetchAttr(db, ino)
            guard attr.isDirectory else { throw MetadataError.notDirectory }
            if try Self.hasEntries(db, ino) { throw MetadataError.notEmpty }
            try Self.deleteEntry(db, parent, name)
            try db.cachedStatement(sql: "UPDATE inodes SET nlink = 0, ctime = ? WHERE ino = ?").execute(
                           arguments: [now.nanoseconds, Int64(ino.rawValue)])
            try Self.touchDirectory(db, parent, nlinkDelta: -1, now: now)
            try Self.note(db, ino: ino)
            try Self.note(db, ino: parent, parent: parent, name: name)
            return try Self.fetchAttr(db, ino)
        }
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
            let statement = try db.cachedStatement(sql: """
                SELECT d.cookie, d.name, i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime, i.mtime, i.ctime, i.stored
                FROM dentries d JOIN inodes i ON i.ino = d.ino
                WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?
                """)
            return try Row.fetchAll(statement, arguments: [Int64(ino.rawValue), cookie, limit]).map { row in
                DirEntry(name: FileName([UInt8](row[1] as Data)), attr: Self.attr(row, from: 2), cookie: row[0])
            }
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

    // MARK: - Data

    public func chunks(_ ino: InodeNumber) throws(MetadataError) -> [ChunkRef] {
        try readNow { db in
            let statement = try db.cachedStatement(sql: "SELECT idx, object, length, checksums, data FROM chunks WHERE ino = ? ORDER BY idx")
            return try Row.fetchAll(statement, arguments: [Int64(ino.rawValue)]).map { row throws in
                let encoded = [UInt8](row[3] as Data)
                guard let checksums = BlockChecksums(encoded: encoded) else {
                    throw MetadataError.database("chunk \(row[0] as Int64) of \(ino) has damaged checksums")
                }
                let index = Int(row[0] as Int64)
                if let data = row[4] as Data? {
                    // The recorded length is checked against the bytes when they are read.
                    var ref = ChunkRef(index: index, inline: [UInt8](data), checksums: checksums)
                    ref.length = Int(row[2] as Int64)
                    return ref
                }
                return ChunkRef(index: index, object: ObjectID(rawValue: UInt64(bitPattern: row[1])),
                                length: Int(row[2] as Int64), checksums: checksums)
            }
        }
    }

    @discardableResult
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], dropFrom: Int?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp) throws(MetadataError) -> Committed {
        try mutate { db in
            let attr = try Self.fetchAttr(db, ino)
            guard attr.isRegular else { throw MetadataError.invalidArgument("not a regular file") }
            var delta: Int64 = 0
            var retired: [ObjectID] = []
            let inoValue = Int64(ino.rawValue)
            if let dropFrom {
                for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT object, length FROM chunks WHERE ino = ? AND idx >= ?"),
                                            arguments: [inoValue, dropFrom]) {
                    if let object = Self.storedObject(row[0]) { retired.append(object) }
                    delta -= row[1] as Int64
                }
                try db.cachedStatement(sql: "DELETE FROM chunks WHERE ino = ? AND idx >= ?").execute(arguments: [inoValue, dropFrom])
            }
            let old = try db.cachedStatement(sql: "SELECT object, length FROM chunks WHERE ino = ? AND idx = ?")
            let put = try db.cachedStatement(sql: "INSERT OR REPLACE INTO chunks(ino, idx, object, length, checksums, data) VALUES (?, ?, ?, ?, ?, ?)")
            let keep = try db.cachedStatement(sql: "DELETE FROM garbage WHERE object = ?")
            for chunk in chunks {
                if let row = try Row.fetchOne(old, arguments: [inoValue, chunk.index]) {
                    if let object = Self.storedObject(row[0]) { retired.append(object) }
                    delta -= row[1] as Int64
                }
                delta += Int64(chunk.length)
                let checksums = Data(chunk.checksums.encoded)
                switch chunk.location {
                case .object(let id):
                    let object = Int64(bitPattern: id.rawValue)
                    try put.execute(arguments: [inoValue, chunk.index, object, chunk.length, checksums, nil])
                    // An upload that gc adopted as a stray before this commit is no stray.
                    try keep.execute(arguments: [object])
                case .inline(let bytes):
                    try put.execute(arguments: [inoValue, chunk.index, Self.inlineObject, chunk.length, checksums, Data(bytes)])
                }
            }
            try Self.addUsage(db, delta)
            let newMtime = mtime ?? attr.mtime
            try db.cachedStatement(sql: "UPDATE inodes SET size = ?, mtime = ?, ctime = ?, stored = max(0, stored + ?) WHERE ino = ?").execute(
                           arguments: [Int64(bitPattern: size), newMtime.nanoseconds, now.nanoseconds, delta, inoValue])
            retired = try Self.retire(db, retired, now: now)
            try Self.note(db, ino: ino)
            var after = attr
            after.size = size
            after.mtime = newMtime
            after.ctime = now
            after.storedBytes = UInt64(max(0, Int64(attr.storedBytes) + delta))
            return Committed(attr: after, retired: retired)
        }
    }

    public func sync() throws(MetadataError) {
        do {
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
                // A commit under synchronous=FULL syncs the WAL, and with it every commit before it.
                try db.execute(sql: "UPDATE settings SET value = value + 1 WHERE key = 'syncs'")
            }
        } catch {
            throw .database(String(describing: error))
        }
    }

    public func purge(_ inodes: [InodeNumber], now: Timestamp) throws(MetadataError) {
        guard !inodes.isEmpty else { return }
        try mutate { db in
            for ino in inodes {
                let value = Int64(ino.rawValue)
                guard let nlink = try Int64.fetchOne(db.cachedStatement(sql: "SELECT nlink FROM inodes WHERE ino = ?"),
                                                     arguments: [value]), nlink == 0 else { continue }
                let rows = try Row.fetchAll(db.cachedStatement(sql: "SELECT object, length FROM chunks WHERE ino = ?"),
                                            arguments: [value])
                let freed = rows.reduce(Int64(0)) { $0 + ($1[1] as Int64) }
                try Self.addUsage(db, -freed)
                for table in ["chunks", "xattrs", "inodes"] {
                    try db.cachedStatement(sql: "DELETE FROM \(table) WHERE ino = ?").execute(arguments: [value])
                }
                // After the chunks are gone: an object another file still names is no garbage.
                _ = try Self.retire(db, rows.compactMap { Self.storedObject($0[0]) }, now: now)
                try Self.note(db, ino: ino)
            }
        }
    }

    public func orphans() throws(MetadataError) -> [InodeNumber] {
        try read { db in
            try Int64.fetchAll(db, sql: "SELECT ino FROM inodes WHERE nlink = 0").map { InodeNumber(UInt64($0)) }
        }
    }

    // MARK: - Extended attributes

    public func inodesWithXattrs() throws(MetadataError) -> Set<InodeNumber> {
        try read { db in
            Set(try Int64.fetchAll(db, sql: "SELECT DISTINCT ino FROM xattrs").map { InodeNumber(UInt64($0)) })
        }
    }

    public func getxattr(_ ino: InodeNumber, _ name: FileName) throws(MetadataError) -> [UInt8] {
        try read { db in
            _ = try Self.fetchAttr(db, ino)
            guard let value = try Data.fetchOne(db.cachedStatement(sql: "SELECT value FROM xattrs WHERE ino = ? AND name = ?"),
                                                arguments: [Int64(ino.rawValue), Data(name.bytes)]) else {
                throw MetadataError.noAttribute
            }
            return [UInt8](value)
        }
    }

    public func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], mode: XattrMode, now: Timestamp) throws(MetadataError) {
        try mutate { db in
            _ = try Self.fetchAttr(db, ino)
            let exists = try Bool.fetchOne(db.cachedStatement(sql: "SELECT EXISTS(SELECT 1 FROM xattrs WHERE ino = ? AND name = ?)"),
                                           arguments: [Int64(ino.rawValue), Data(name.bytes)]) ?? false
            switch mode {
            case .create where exists: throw MetadataError.exists
            case .replace where !exists: throw MetadataError.noAttribute
            default: break
            }
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?, ?, ?)").execute(
                           arguments: [Int64(ino.rawValue), Data(name.bytes), Data(value)])
            try Self.note(db, ino: ino)
            try db.cachedStatement(sql: "UPDATE inodes SET ctime = ? WHERE ino = ?").execute(arguments: [now.nanoseconds, Int64(ino.rawValue)])
        }
    }

    public func listxattr(_ ino: InodeNumber) throws(MetadataError) -> [FileName] {
        try read { db in
            _ = try Self.fetchAttr(db, ino)
            return try Data.fetchAll(db.cachedStatement(sql: "SELECT name FROM xattrs WHERE ino = ? ORDER BY name"),
                                     arguments: [Int64(ino.rawValue)]).map { FileName([UInt8]($0)) }
        }
    }

    public func removexattr(_ ino: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) {
        try mutate { db in
            _ = try Self.fetchAttr(db, ino)
            try db.cachedStatement(sql: "DELETE FROM xattrs WHERE ino = ? AND name = ?").execute(arguments: [Int64(ino.rawValue), Data(name.bytes)])
            if db.changesCount == 0 { throw MetadataError.noAttribute }
            try Self.note(db, ino: ino)
            try db.cachedStatement(sql: "UPDATE inodes SET ctime = ? WHERE ino = ?").execute(arguments: [now.nanoseconds, Int64(ino.rawValue)])
        }
    }

    // MARK: - Garbage

    public func garbage(before cutoff: Timestamp, limit: Int) throws(MetadataError) -> [ObjectID] {
        try read { db in
            try Int64.fetchAll(db.cachedStatement(sql: "SELECT object FROM garbage WHERE since < ? LIMIT ?"), arguments: [cutoff.nanoseconds, limit])
                .map { ObjectID(rawValue: UInt64(bitPattern: $0)) }
        }
    }

    public func dropGarbage(_ objects: [ObjectID]) throws(MetadataError) {
        try write { db in
            let statement = try db.cachedStatement(sql: "DELETE FROM garbage WHERE object = ?")
            for object in objects { try statement.execute(arguments: [Int64(bitPattern: object.rawValue)]) }
        }
    }

    public func adoptStrays(_ objects: [ObjectID], now: Timestamp) throws(MetadataError) -> Int {
        try write { db in try Self.retire(db, objects, now: now).count }
    }

    public func knownObjects() throws(MetadataError) -> Set<ObjectID> {
        try read { db in
            Set(try Int64.fetchAll(db, sql: "SELECT object FROM chunks WHERE object <> 0 UNION SELECT object FROM garbage")
                .map { ObjectID(rawValue: UInt64(bitPattern: $0)) })
        }
    }
}

extension SQLiteMetadata {
    /// Every chunk of every file, by inode (for fsck).
    public func allChunks() throws(MetadataError) -> [(InodeNumber, [ChunkRef])] {
        let inodes = try read { db in
            try Int64.fetchAll(db, sql: "SELECT DISTINCT ino FROM chunks ORDER BY ino").map { InodeNumber(UInt64($0)) }
        }
        var result: [(InodeNumber, [ChunkRef])] = []
        for ino in inodes { result.append((ino, try chunks(ino))) }
        return result
    }
}

// MARK: - The writer lease, sessions and the change feed

extension SQLiteMetadata {
    static func fetchLease(_ db: Database, now: Timestamp) throws -> Lease {
        guard let row = try Row.fetchOne(db, sql: "SELECT holder, token, expires_at, renewed_at FROM lease WHERE id = 1") else {
            throw MetadataError.notAVolume("the lease row is missing")
        }
        return Lease(holder: row[0], token: LeaseToken(rawValue: row[1]), expiresAt: Timestamp(nanoseconds: row[2]),
                     renewedAt: Timestamp(nanoseconds: row[3]), now: now)
    }

    static func nanoseconds(_ seconds: Double) -> Int64 { Int64(seconds * 1_000_000_000) }

    public func lease() throws(MetadataError) -> Lease {
        try read { db in try Self.fetchLease(db, now: try now(db)) }
    }

    public func acquireLease(holder: String, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try write { db in
            let now = try now(db)
            let current = try Self.fetchLease(db, now: now)
            if current.isHeld && current.holder != holder { throw MetadataError.leaseHeld(current) }
            let expires = now.nanoseconds + Self.nanoseconds(ttlSeconds)
            try db.cachedStatement(sql: "UPDATE lease SET holder = ?, token = token + 1, expires_at = ?, renewed_at = ? WHERE id = 1").execute(
                           arguments: [holder, expires, now.nanoseconds])
            return try Self.fetchLease(db, now: now)
        }
    }

    public func renewLease(holder: String, token: LeaseToken, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try write { db in
            let now = try now(db)
            try Self.check(db, Fence(holder: holder, token: token))
            try db.cachedStatement(sql: "UPDATE lease SET expires_at = ?, renewed_at = ? WHERE id = 1").execute(
                           arguments: [now.nanoseconds + Self.nanoseconds(ttlSeconds), now.nanoseconds])
            // Keep the change feed bounded: readers that fall this far behind start over.
            try db.execute(sql: "DELETE FROM changes WHERE seq < (SELECT max(seq) FROM changes) - 100000")
            return try Self.fetchLease(db, now: now)
        }
    }

    public func releaseLease(holder: String, token: LeaseToken) throws(MetadataError) {
        try write { db in
            try db.cachedStatement(sql: "UPDATE lease SET holder = NULL, expires_at = 0 WHERE id = 1 AND holder = ? AND token = ?").execute(
                           arguments: [holder, token.rawValue])
        }
    }

    public func breakLease() throws(MetadataError) -> Lease {
        try write { db in
            let now = try now(db)
            try db.execute(sql: "UPDATE lease SET holder = NULL, token = token + 1, expires_at = 0 WHERE id = 1")
            return try Self.fetchLease(db, now: now)
        }
    }

    public func setFence(_ fence: Fence?) {
        self.fence.withLock { $0 = fence }
    }

    public func changes(after sequence: Int64, limit: Int) throws(MetadataError) -> ChangeBatch {
        try read { db in
            let latest = try Int64.fetchOne(db, sql: "SELECT coalesce(max(seq), 0) FROM changes") ?? 0
            let oldest = try Int64.fetchOne(db, sql: "SELECT coalesce(min(seq), 0) FROM changes") ?? 0
            let statement = try db.cachedStatement(sql: "SELECT seq, ino, parent, name FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
            let changes = try Row.fetchAll(statement, arguments: [sequence, limit]).map { row in
                Change(sequence: row[0],
                       ino: (row[1] as Int64?).map { InodeNumber(UInt64($0)) },
                       parent: (row[2] as Int64?).map { InodeNumber(UInt64($0)) },
                       name: (row[3] as Data?).map { FileName([UInt8]($0)) })
            }
            return ChangeBatch(changes: changes, latest: latest, truncated: sequence < latest && oldest > sequence + 1)
        }
    }

    public func heartbeat(_ session: Session, staleSeconds: Double) throws(MetadataError) {
        try write { db in
            let now = try now(db)
            try db.cachedStatement(sql: """
                INSERT INTO sessions(id, host, pid, mountpoint, device, mode, started_at, heartbeat_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, mode = excluded.mode,
                    device = excluded.device
                """).execute(arguments: [session.id, session.host, session.pid, session.mountpoint, session.device, session.mode,
                                 now.nanoseconds, now.nanoseconds])
            try db.cachedStatement(sql: "DELETE FROM sessions WHERE heartbeat_at < ?").execute(
                           arguments: [now.nanoseconds - Self.nanoseconds(staleSeconds)])
        }
    }

    public func removeSession(id: String) throws(MetadataError) {
        try write { db in try db.cachedStatement(sql: "DELETE FROM sessions WHERE id = ?").execute(arguments: [id]) }
    }

    public func sessions() throws(MetadataError) -> [Session] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT id, host, pid, mountpoint, device, mode, started_at, heartbeat_at FROM sessions ORDER BY started_at")
                .map { row in
                    Session(id: row[0], host: row[1], pid: Int32(truncatingIfNeeded: row[2] as Int64), mountpoint: row[3],
                            device: row[4], mode: row[5], startedAt: Timestamp(nanoseconds: row[6]),
                            heartbeatAt: Timestamp(nanoseconds: row[7]))
                }
        }
    }
}
