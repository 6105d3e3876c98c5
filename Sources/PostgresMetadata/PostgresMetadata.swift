// PostgresMetadata: a volume's metadata in a PostgreSQL database that workers on many
// hosts share.
//
// It owns the netvol tables of one database (see Schema.swift) and, within them, the
// rows of one volume, named by a URL `postgres://USER@HOST:PORT/DB?volume=NAME`. It
// assumes PostgreSQL 12 or later at the default isolation, READ COMMITTED, and gets what
// SQLite's single writer gave for free from one row lock: every transaction that writes a
// volume first locks the volume's `lease` row (`SELECT ... FOR UPDATE`). That
//   - fences: the lease token is checked under the lock, so a takeover (which locks the
//     same row) lands either before the check, and the stale writer is refused, or after
//     its commit; never in between;
//   - orders the change feed: sequence numbers come from a counter in that row, so they
//     are handed out, and become visible, in commit order (a sequence would hand them out
//     in call order and a reader could pass one that commits later);
//   - numbers inodes from a counter in that row: per volume (the root is 1 in every
//     one), without a sequence object to create and drop with each volume, and at no
//     cost, since the lock is held anyway; directory cookies come from one bigserial,
//     which under the same lock also grows in commit order, as readdir needs.
// One writer holds the lease at a time, so serializing its transactions costs nothing;
// readers never take the lock.
//
// Times: file times (atime, mtime, ctime) and garbage times are the caller's `now`, as
// with SQLite (the gc cutoff the caller passes is on the same clock); lease and session
// times are the database server's clock, the one clock every host shares.
//
// Durability: with PostgreSQL's default synchronous_commit = on a commit is on disk
// (and on synchronous standbys, where there are any) when COMMIT returns, so `sync()`
// has nothing to do.
//
// One concern per file, side by side with SQLiteMetadata: Connection (libpq, bound
// parameters, bounded waits), Pool (connections, retries, the deadline, messages),
// Schema (tables, migrations), Namespace, Data, Xattrs, Garbage, Lease (lease, sessions,
// change feed), and this file (opening, creating, listing and destroying volumes).

import Foundation
public import Metadata
import Synchronization

/// One volume of a shared database, as `netvol list` shows it.
public struct VolumeSummary: Equatable, Sendable {
    public var name: String
    public var sizeLimit: UInt64
    public var usedBytes: UInt64
    public var inodes: UInt64
    /// Who holds the writer lease, if anyone holds it now.
    public var leaseHolder: String?
}

public final class PostgresMetadata: Metadata {
    let pool: ConnectionPool

    /// Calls to the server so far, the transactions among them, the attempts that
    /// repeated a failed one, and the microseconds the calls took: for the metrics.
    public var callCounts: (calls: Int, transactions: Int, retries: Int, microseconds: Int) {
        (pool.calls.load(ordering: .relaxed), pool.transactions.load(ordering: .relaxed), pool.retries.load(ordering: .relaxed),
         pool.callMicroseconds.load(ordering: .relaxed))
    }
    /// The volume's id: the first column of every key.
    let id: Int64
    public let volumeName: String
    public let storeSettings: [String: String]
    /// Replaces the database's clock for the lease (tests drive expiry with it).
    let clock: (@Sendable () -> Timestamp)?
    let fence = Mutex<Fence?>(nil)

    /// Opens an existing volume.
    ///
    /// - Parameters:
    ///   - password: used instead of what libpq would find (PGPASSWORD, a password file).
    ///   - deadlineSeconds: how long one call may try, retries included, before it throws.
    /// - Throws: `.notAVolume` when the database has no volume of that name.
    public init(url: String, password: String? = nil, clock: (@Sendable () -> Timestamp)? = nil,
                deadlineSeconds: Double = 30) throws(MetadataError) {
        let location = try VolumeLocation(url: url)
        let pool = ConnectionPool(location: location, password: password, deadlineSeconds: deadlineSeconds)
        let found = try pool.read { tx -> (database: String, version: Int64, volume: (id: Int64, store: String)?) in
            let database = try tx.executeOnce("SELECT current_database()").text(0, 0)
            let version = try Schema.version(tx)
            guard version > 0 else { return (database, version, nil) }
            let rows = try tx.execute("SELECT id, store FROM volumes WHERE name = $1", [.text(location.volume)])
            guard rows.count == 1 else { return (database, version, nil) }
            return (database, version, (try rows.int(0, 0), try rows.text(0, 1)))
        }
        guard let volume = found.volume else {
            throw .notAVolume("no volume named \(location.volume) in database \(found.database)")
        }
        if found.version != Schema.currentVersion { try Schema.migrate(pool) }
        self.pool = pool
        self.id = volume.id
        self.volumeName = location.volume
        self.storeSettings = try Self.decodeStore(volume.store)
        self.clock = clock
    }

    /// Creates the volume, and the netvol tables first if the database has none.
    ///
    /// - Parameter store: the chunk store's settings (bucket, prefix, endpoint...), kept
    ///   with the volume.
    /// - Throws: `.exists` when the database already has a volume of that name.
    public static func create(url: String, password: String? = nil, chunkSize: Int, sizeLimit: UInt64,
                              store: [String: String], uid: UInt32 = 0, gid: UInt32 = 0,
                              now: Timestamp) throws(MetadataError) -> PostgresMetadata {
        let location = try VolumeLocation(url: url)
        let pool = ConnectionPool(location: location, password: password, deadlineSeconds: 30)
        try Schema.migrate(pool)
        let encoded: String
        do {
            encoded = String(decoding: try JSONEncoder().encode(store), as: UTF8.self)
        } catch {
            throw .invalidArgument("cannot encode the store settings: \(error)")
        }
        try pool.transaction { tx in
            let inserted = try tx.executeOnce("""
                INSERT INTO volumes(name, chunk_size, size_limit, created, store) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (name) DO NOTHING RETURNING id
                """, [.text(location.volume), .int(Int64(chunkSize)), .int(Int64(bitPattern: sizeLimit)),
                      .time(now), .text(encoded)])
            guard inserted.count == 1 else { throw MetadataError.exists }
            let id = try inserted.int(0, 0)
            try tx.executeOnce("INSERT INTO lease(volume) VALUES ($1)", [.int(id)])
            try tx.executeOnce("""
                INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent)
                VALUES ($1, 1, $2, 2, $3, $4, 0, 0, $5, $5, $5, 1)
                """, [.int(id), .int(Int64(FileType.directory.rawValue | 0o755)), .int(Int64(uid)), .int(Int64(gid)),
                      .time(now)])
        }
        pool.close()
        return try PostgresMetadata(url: url, password: password)
    }

    /// Every volume of the database the URL names (its `volume` parameter may be left out).
    public static func list(url: String, password: String?) throws(MetadataError) -> [VolumeSummary] {
        let listing = url.contains("?") ? url + "&volume=-" : url + "?volume=-"
        let pool = ConnectionPool(location: try VolumeLocation(url: url.contains("volume=") ? url : listing),
                                  password: password, deadlineSeconds: 30)
        defer { pool.close() }
        return try pool.read { tx in
            guard try Schema.version(tx) > 0 else { return [] }
            let rows = try tx.executeOnce("""
                SELECT v.name, v.size_limit, v.used_bytes, (SELECT count(*) FROM inodes i WHERE i.volume = v.id),
                       CASE WHEN l.holder IS NOT NULL AND l.expires_at > \(databaseNow) THEN l.holder END
                FROM volumes v JOIN lease l ON l.volume = v.id ORDER BY v.name
                """)
            return try (0..<rows.count).map { row in
                VolumeSummary(name: try rows.text(row, 0), sizeLimit: UInt64(bitPattern: try rows.int(row, 1)),
                              usedBytes: UInt64(max(0, try rows.int(row, 2))), inodes: UInt64(max(0, try rows.int(row, 3))),
                              leaseHolder: try rows.textOrNil(row, 4))
            }
        }
    }

    /// Deletes every row of the volume. Its objects must be deleted first: afterwards
    /// nothing knows them.
    public func destroy() throws(MetadataError) {
        try write { tx in
            for table in ["changes", "sessions", "garbage", "xattrs", "chunks", "dentries", "inodes", "lease"] {
                try tx.executeOnce("DELETE FROM \(table) WHERE volume = $1", [.int(id)])
            }
            try tx.executeOnce("DELETE FROM volumes WHERE id = $1", [.int(id)])
        }
    }

    /// Closes the idle connections; calls made afterwards open new ones.
    public func close() {
        pool.close()
    }

    static func decodeStore(_ text: String) throws(MetadataError) -> [String: String] {
        do {
            return try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
        } catch {
            throw .notAVolume("the volume's store settings are damaged: \(error)")
        }
    }

    // MARK: - Plumbing

    /// Now by the database server's clock, in nanoseconds since the epoch.
    static let databaseNow = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint"

    /// The injected clock as a parameter (NULL: the database's), for `coalesce($n, databaseNow)`.
    var clockValue: Value { .int(clock?().nanoseconds) }

    func read<T>(_ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        try pool.read(body)
    }

    /// A transaction that writes the volume: it first locks the lease row (see the file
    /// opening comment) and, when `fenced` and a fence is set, checks the token under
    /// that lock. The lock travels with the body's first statement that needs an answer
    /// (and is checked before that answer is used), so it costs no round trip of its own.
    func write<T>(fenced: Bool = false, _ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        try write(fenced: fenced, found: nil, body)
    }

    /// `write`, whose body also gets the lease as the lock found it, and now.
    func writeLocked<T>(fenced: Bool = false, _ body: (Transaction, Lease) throws -> T) throws(MetadataError) -> T {
        let found = LockedLease()
        return try write(fenced: fenced, found: found) { tx in
            try tx.sendQueued()
            guard let lease = found.lease else { throw MetadataError.database("the lease row was not read") }
            return try body(tx, lease)
        }
    }

    private final class LockedLease {
        var lease: Lease?
    }

    private func write<T>(fenced: Bool, found: LockedLease?, _ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        let fence = fenced ? self.fence.withLock { $0 } : nil
        // The clock is read in the outer query, after the row lock is granted: read beside
        // the lock, it is the time the statement started, and a takeover that waited for
        // a cut-off writer's transaction to be ended judged the lease by the time it began
        // waiting (an expired lease looked valid for as long as the wait).
        let lock = (sql: """
            SELECT l.holder, l.token, l.expires_at, l.renewed_at, coalesce($2, \(Self.databaseNow))
            FROM (SELECT holder, token, expires_at, renewed_at FROM lease WHERE volume = $1 FOR UPDATE) l
            """, parameters: [Value.int(id), clockValue])
        return try pool.transaction(opening: lock, opened: { [self] rows in
            let lease = try lease(rows)
            if let fence, lease.holder != fence.holder || lease.token != fence.token {
                throw MetadataError.fenced(holder: lease.holder)
            }
            found?.lease = lease
        }, body)
    }

    /// A namespace or data transaction: fenced when a fence is set.
    func mutate<T>(_ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        try write(fenced: true, body)
    }

    /// `mutate` in one round trip: the fence is checked by `netvol_lock` in SQL, the
    /// body's statements decide in SQL too, and all of it travels with COMMIT. The body
    /// returns where the answer will be (`Answered`, filled by a `withCommit` statement's
    /// rows); `recover` answers from the committed state when COMMIT's answer was lost but
    /// the change was made.
    func mutateInOneTrip<T>(recover: @escaping () throws(MetadataError) -> T,
                            _ body: (Transaction) throws -> Answered<T>) throws(MetadataError) -> T {
        let fence = self.fence.withLock { $0 }
        let lock = (sql: "SELECT netvol_lock($1, $2, $3)", parameters: [Value.int(id), .text(fence?.holder), .int(fence?.token.rawValue)])
        let answered = try pool.transaction(opening: lock, recover: { () throws(MetadataError) -> Answered<T> in
            Answered(try recover())
        }, body)
        return try answered.get()
    }

    /// What a statement travelling with COMMIT answered, once it came.
    final class Answered<T> {
        var value: T?
        init(_ value: T? = nil) { self.value = value }
        func get() throws(MetadataError) -> T {
            guard let value else { throw .database("the database did not answer") }
            return value
        }
    }

    /// Records a change for readers. The sequence number comes from the lease row that
    /// the transaction holds locked, so numbers are given out in commit order.
    func note(_ tx: Transaction, ino: InodeNumber? = nil, parent: InodeNumber? = nil, name: FileName? = nil) throws {
        tx.later("""
            WITH next AS (UPDATE lease SET last_change = last_change + 1 WHERE volume = $1 RETURNING last_change)
            INSERT INTO changes(volume, seq, ino, parent, name) SELECT $1, last_change, $2, $3, $4 FROM next
            """, [.int(id), .ino(ino), .ino(parent), .name(name)])
    }

    static let attrColumns = "ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, stored"
    static let joinedAttrColumns = "i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime, i.mtime, i.ctime, i.stored"

    /// The inode that row `row` of the outer query names (its `ino`, and its `volume`
    /// unless `volume` is given), as the right side of a join called `alias`. `OFFSET 0`
    /// keeps it a subquery planned on its own, where both keys are restrictions and the
    /// lookup is one probe of the primary key. Written as a plain join, the planner may
    /// instead probe by volume alone and filter by inode number, and it does when the
    /// statistics were taken while the tables were nearly empty (every estimate is then
    /// one row, so the two cost the same): every entry of a listing then scanned every
    /// inode of the volume, and an `ls -lR` of 2000 files took 0.6 s instead of 0.03 s
    /// until the next `ANALYZE`.
    static func inodeOf(_ row: String, volume: String? = nil, as alias: String = "i") -> String {
        """
        LATERAL (SELECT \(alias).* FROM inodes \(alias)
                 WHERE \(alias).volume = \(volume ?? row + ".volume") AND \(alias).ino = \(row).ino OFFSET 0) \(alias)
        """
    }

    static func attr(_ rows: Rows, _ row: Int = 0, from start: Int = 0) throws -> Attr {
        Attr(ino: InodeNumber(UInt64(bitPattern: try rows.int(row, start))),
             mode: UInt32(truncatingIfNeeded: try rows.int(row, start + 1)),
             nlink: UInt32(truncatingIfNeeded: try rows.int(row, start + 2)),
             uid: UInt32(truncatingIfNeeded: try rows.int(row, start + 3)),
             gid: UInt32(truncatingIfNeeded: try rows.int(row, start + 4)),
             rdev: UInt64(bitPattern: try rows.int(row, start + 5)),
             size: UInt64(bitPattern: try rows.int(row, start + 6)),
             atime: Timestamp(nanoseconds: try rows.int(row, start + 7)),
             mtime: Timestamp(nanoseconds: try rows.int(row, start + 8)),
             ctime: Timestamp(nanoseconds: try rows.int(row, start + 9)),
             storedBytes: UInt64(max(0, try rows.int(row, start + 10))))
    }

    func fetchAttr(_ tx: Transaction, _ ino: InodeNumber) throws -> Attr {
        let rows = try tx.execute("SELECT \(Self.attrColumns) FROM inodes WHERE volume = $1 AND ino = $2", [.int(id), .ino(ino)])
        guard rows.count == 1 else { throw MetadataError.notFound }
        return try Self.attr(rows)
    }

    // MARK: - Volume

    public func settings() throws(MetadataError) -> VolumeSettings {
        let usage = try usage()
        return VolumeSettings(chunkSize: usage.chunkSize, sizeLimit: usage.sizeLimit)
    }

    public func usage() throws(MetadataError) -> VolumeUsage {
        try read { tx in
            let rows = try tx.execute("""
                SELECT size_limit, used_bytes, (SELECT count(*) FROM inodes WHERE volume = $1), chunk_size
                FROM volumes WHERE id = $1
                """, [.int(id)])
            guard rows.count == 1 else { throw MetadataError.notAVolume("volume \(volumeName) was destroyed") }
            return VolumeUsage(sizeLimit: UInt64(bitPattern: try rows.int(0, 0)), usedBytes: UInt64(max(0, try rows.int(0, 1))),
                               inodes: UInt64(max(0, try rows.int(0, 2))), chunkSize: Int(try rows.int(0, 3)))
        }
    }

    public func resize(sizeLimit: UInt64) throws(MetadataError) {
        try write { tx in
            let rows = try tx.execute("SELECT size_limit FROM volumes WHERE id = $1", [.int(id)])
            guard rows.count == 1 else { throw MetadataError.notAVolume("volume \(volumeName) was destroyed") }
            guard sizeLimit >= UInt64(bitPattern: try rows.int(0, 0)) else {
                throw MetadataError.invalidArgument("a volume can grow but not shrink")
            }
            try tx.execute("UPDATE volumes SET size_limit = $2 WHERE id = $1", [.int(id), .int(Int64(bitPattern: sizeLimit))])
        }
    }

    /// Counts `delta` bytes against the size limit in one statement that checks and
    /// counts together; throws `.noSpace` when they do not fit.
    func addUsage(_ tx: Transaction, _ delta: Int64) throws {
        guard delta != 0 else { return }
        // Growth past the limit fails the statement itself (disk_full: ENOSPC), so it
        // needs no answer and can travel with COMMIT.
        tx.later("""
            UPDATE volumes SET used_bytes = CASE WHEN $2 > 0 AND size_limit >= 0 AND used_bytes > size_limit - $2
                THEN netvol_volume_full() ELSE greatest(0, used_bytes + $2) END
            WHERE id = $1
            """, [.int(id), .int(delta)])
    }

    public func sync() throws(MetadataError) {
        // Commits are durable when COMMIT returns (synchronous_commit = on).
    }
}
