import Foundation
public import Metadata
import GRDB

// MARK: - The writer lease, sessions and the change feed

extension SQLiteMetadata {
    static func fetchLease(_ db: Database, now: Timestamp) throws -> Lease {
        guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT holder, token, expires_at, renewed_at, deferring FROM lease WHERE id = 1")) else {
            throw MetadataError.notAVolume("the lease row is missing")
        }
        var lease = Lease(holder: row[0], token: LeaseToken(rawValue: row[1]), expiresAt: Timestamp(nanoseconds: row[2]),
                          renewedAt: Timestamp(nanoseconds: row[3]), now: now)
        lease.deferring = row[4] as Bool
        return lease
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
            try db.cachedStatement(sql: "UPDATE lease SET holder = ?, token = token + 1, expires_at = ?, renewed_at = ?, deferring = 0 WHERE id = 1").execute(
                           arguments: [holder, expires, now.nanoseconds])
            var lease = try Self.fetchLease(db, now: now)
            if current.holder == nil {
                lease.quietFirst = try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM sessions WHERE id <> ?)", arguments: [holder]) ?? true
            }
            return lease
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
            try db.cachedStatement(sql: "UPDATE lease SET holder = NULL, expires_at = 0, deferring = 0 WHERE id = 1 AND holder = ? AND token = ?").execute(
                           arguments: [holder, token.rawValue])
        }
    }

    public func breakLease() throws(MetadataError) -> Lease {
        try write { db in
            let now = try now(db)
            try db.execute(sql: "UPDATE lease SET holder = NULL, token = token + 1, expires_at = 0, deferring = 0 WHERE id = 1")
            return try Self.fetchLease(db, now: now)
        }
    }

    public func setFence(_ fence: Fence?) {
        self.fence.withLock { $0 = fence }
    }

    /// Nothing to do: SQLite's locks go with the process that holds them, on this host.
    public func setLeaseTTL(_ seconds: Double) {}

    public func changes(after sequence: Int64, limit: Int) throws(MetadataError) -> ChangeBatch {
        try read { db in
            // The lease first: a change after this moment needs a holder, who waits for
            // `Lease.quietSeconds` if it found the lease free.
            let free = try Bool.fetchOne(db.cachedStatement(sql: "SELECT holder IS NULL FROM lease WHERE id = 1")) ?? false
            let latest = try Int64.fetchOne(db.cachedStatement(sql: "SELECT coalesce(max(seq), 0) FROM changes")) ?? 0
            let oldest = try Int64.fetchOne(db.cachedStatement(sql: "SELECT coalesce(min(seq), 0) FROM changes")) ?? 0
            let statement = try db.cachedStatement(sql: "SELECT seq, ino, parent, name FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
            let changes = try Row.fetchAll(statement, arguments: [sequence, limit]).map { row in
                Change(sequence: row[0],
                       ino: (row[1] as Int64?).map { InodeNumber(UInt64($0)) },
                       parent: (row[2] as Int64?).map { InodeNumber(UInt64($0)) },
                       name: (row[3] as Data?).map { FileName([UInt8]($0)) })
            }
            return ChangeBatch(changes: changes, latest: latest, truncated: sequence < latest && oldest > sequence + 1, leaseFree: free)
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
                           arguments: [now.nanoseconds - Self.nanoseconds(max(staleSeconds, Session.keptSeconds))])
        }
    }

    public func deferCommits(_ on: Bool) throws(MetadataError) -> Bool {
        let holder = fence.withLock { $0?.holder }
        // BEGIN IMMEDIATE orders this with every heartbeat: a mount registered before it
        // is seen here, and one registered after it sees the flag.
        return try mutate { db in
            if on {
                guard let holder,
                      try Bool.fetchOne(db, sql: "SELECT NOT EXISTS(SELECT 1 FROM sessions WHERE id <> ?)", arguments: [holder]) == true
                else { return false }
            }
            try db.cachedStatement(sql: "UPDATE lease SET deferring = ? WHERE id = 1").execute(arguments: [on])
            return on
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
