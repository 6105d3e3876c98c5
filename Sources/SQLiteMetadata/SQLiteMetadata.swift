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
                if try !db.columns(in: "lease").contains(where: { $0.name == "deferring" }) {
                    try db.execute(sql: "ALTER TABLE lease ADD COLUMN deferring INTEGER NOT NULL DEFAULT 0")
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
        let statement = try db.cachedStatement(sql: "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)")
        let millis = try Int64.fetchOne(statement) ?? 0
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
}
