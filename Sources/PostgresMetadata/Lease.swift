// The writer lease, the mounts attached, and the change feed readers follow.
//
// Lease and heartbeat times are the database server's clock (or the injected test
// clock): hosts' clocks may disagree, the server's is the one they share.

public import Metadata

extension PostgresMetadata {
    static func nanoseconds(_ seconds: Double) -> Int64 { Int64(seconds * 1_000_000_000) }

    func lease(_ rows: Rows) throws -> Lease {
        guard rows.count == 1 else { throw MetadataError.notAVolume("volume \(volumeName) was destroyed") }
        return Lease(holder: try rows.textOrNil(0, 0), token: LeaseToken(rawValue: try rows.int(0, 1)),
                     expiresAt: Timestamp(nanoseconds: try rows.int(0, 2)), renewedAt: Timestamp(nanoseconds: try rows.int(0, 3)),
                     now: Timestamp(nanoseconds: try rows.int(0, 4)))
    }

    public func lease() throws(MetadataError) -> Lease {
        try read { tx in
            let rows = try tx.execute("""
                SELECT holder, token, expires_at, renewed_at, coalesce($2, \(Self.databaseNow)), deferring FROM lease WHERE volume = $1
                """, [.int(id), clockValue])
            var found = try lease(rows)
            found.deferring = try rows.bool(0, 5)
            return found
        }
    }

    /// Sets the lease row and answers it as it now stands.
    func updateLease(_ tx: Transaction, holder: String?, bump: Bool, expires: Int64, renewed: Int64, now: Timestamp) throws -> Lease {
        var lease = try lease(try tx.execute("""
            UPDATE lease SET holder = $2, token = token + $3, expires_at = $4, renewed_at = $5,
                deferring = deferring AND $2 IS NOT NULL AND $3 = 0
            WHERE volume = $1
            RETURNING holder, token, expires_at, renewed_at, 0::bigint
            """, [.int(id), .text(holder), .int(bump ? 1 : 0), .int(expires), .int(renewed)]))
        lease.now = now
        return lease
    }

    public func acquireLease(holder: String, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try writeLocked { tx, current in
            if current.isHeld && current.holder != holder { throw MetadataError.leaseHeld(current) }
            var lease = try updateLease(tx, holder: holder, bump: true, expires: current.now.nanoseconds + Self.nanoseconds(ttlSeconds),
                                        renewed: current.now.nanoseconds, now: current.now)
            if current.holder == nil {
                lease.quietFirst = try tx.execute("SELECT EXISTS(SELECT 1 FROM sessions WHERE volume = $1 AND id <> $2)",
                                                  [.int(id), .text(holder)]).bool(0, 0)
            }
            return lease
        }
    }

    public func renewLease(holder: String, token: LeaseToken, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try writeLocked { tx, current in
            guard current.holder == holder, current.token == token else { throw MetadataError.fenced(holder: current.holder) }
            let renewed = try updateLease(tx, holder: holder, bump: false, expires: current.now.nanoseconds + Self.nanoseconds(ttlSeconds),
                                          renewed: current.now.nanoseconds, now: current.now)
            // Keep the change feed bounded: readers that fall this far behind start over.
            try tx.execute("""
                DELETE FROM changes WHERE volume = $1 AND seq <= (SELECT last_change FROM lease WHERE volume = $1) - $2
                """, [.int(id), .int(Self.feedLength)])
            tx.later(ConnectionPool.pruneMarkers)
            return renewed
        }
    }

    /// How many changes the feed keeps.
    static let feedLength: Int64 = 100_000

    public func releaseLease(holder: String, token: LeaseToken) throws(MetadataError) {
        try writeLocked { tx, current in
            guard current.holder == holder, current.token == token else { return }
            _ = try updateLease(tx, holder: nil, bump: false, expires: 0, renewed: current.renewedAt.nanoseconds, now: current.now)
        }
    }

    public func breakLease() throws(MetadataError) -> Lease {
        try writeLocked { tx, current in
            return try updateLease(tx, holder: nil, bump: true, expires: 0, renewed: current.renewedAt.nanoseconds, now: current.now)
        }
    }

    public func setFence(_ fence: Fence?) {
        self.fence.withLock { $0 = fence }
    }

    public func setLeaseTTL(_ seconds: Double) {
        pool.boundIdleTransactions(toSeconds: seconds)
    }

    public func changes(after sequence: Int64, limit: Int) throws(MetadataError) -> ChangeBatch {
        try read { tx in
            // One statement, one snapshot: the newest number, the oldest kept and the rows
            // agree. `last_change` is only ever raised under the lease-row lock by the
            // transaction that writes those changes, so every number up to it is
            // committed (or pruned).
            let rows = try tx.execute("""
                SELECT b.latest, b.oldest, c.seq, c.ino, c.parent, c.name, b.free
                FROM (SELECT l.last_change AS latest, (SELECT min(seq) FROM changes WHERE volume = $1) AS oldest,
                             l.holder IS NULL AS free
                      FROM lease l WHERE l.volume = $1) b
                LEFT JOIN LATERAL (SELECT seq, ino, parent, name FROM changes
                                   WHERE volume = $1 AND seq > $2 AND seq <= b.latest ORDER BY seq LIMIT $3) c ON true
                ORDER BY c.seq
                """, [.int(id), .int(sequence), .int(Int64(limit))])
            guard rows.count > 0 else { throw MetadataError.notAVolume("volume \(volumeName) has no lease row") }
            let latest = try rows.int(0, 0)
            let oldest = try rows.intOrNil(0, 1) ?? latest + 1
            let free = try rows.bool(0, 6)
            if sequence < latest && oldest > sequence + 1 {
                return ChangeBatch(changes: [], latest: latest, truncated: true, leaseFree: free)
            }
            var changes: [Change] = []
            for row in 0..<rows.count {
                guard let seq = try rows.intOrNil(row, 2) else { continue }
                changes.append(Change(sequence: seq,
                                      ino: try rows.intOrNil(row, 3).map { InodeNumber(UInt64(bitPattern: $0)) },
                                      parent: try rows.intOrNil(row, 4).map { InodeNumber(UInt64(bitPattern: $0)) },
                                      name: try rows.bytesOrNil(row, 5).map { FileName($0) }))
            }
            return ChangeBatch(changes: changes, latest: latest, truncated: false, leaseFree: free)
        }
    }

    public func heartbeat(_ session: Session, staleSeconds: Double) throws(MetadataError) {
        try pool.transaction { tx in
            // Under the lease row's lock, as `deferCommits` is: a writer that turns deferring
            // on after this sees this session, and one that did before is seen by the
            // mount's wait after it.
            // The clock after the lock is granted (see `write`).
            let now = try tx.execute("""
                SELECT coalesce($2, \(Self.databaseNow)) FROM (SELECT 1 FROM lease WHERE volume = $1 FOR SHARE) l
                """, [.int(id), clockValue]).int(0, 0)
            try tx.execute("""
                INSERT INTO sessions(volume, id, host, pid, mountpoint, device, mode, started_at, heartbeat_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                ON CONFLICT (volume, id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, mode = excluded.mode,
                    device = excluded.device
                """, [.int(id), .text(session.id), .text(session.host), .int(Int64(session.pid)), .text(session.mountpoint),
                      .text(session.device), .text(session.mode), .int(now)])
            try tx.execute("DELETE FROM sessions WHERE volume = $1 AND heartbeat_at < $2",
                           [.int(id), .int(now - Self.nanoseconds(max(staleSeconds, Session.keptSeconds)))])
        }
    }

    public func deferCommits(_ on: Bool) throws(MetadataError) -> Bool {
        let holder = fence.withLock { $0?.holder }
        return try mutate { tx in
            if on {
                guard let holder,
                      try tx.execute("SELECT NOT EXISTS(SELECT 1 FROM sessions WHERE volume = $1 AND id <> $2)",
                                     [.int(id), .text(holder)]).bool(0, 0)
                else { return false }
            }
            try tx.execute("UPDATE lease SET deferring = $2 <> 0 WHERE volume = $1", [.int(id), .int(on ? 1 : 0)])
            return on
        }
    }

    public func removeSession(id session: String) throws(MetadataError) {
        try pool.transaction { tx in
            _ = try tx.execute("DELETE FROM sessions WHERE volume = $1 AND id = $2", [.int(id), .text(session)])
        }
    }

    public func sessions() throws(MetadataError) -> [Session] {
        try read { tx in
            let rows = try tx.execute("""
                SELECT id, host, pid, mountpoint, device, mode, started_at, heartbeat_at FROM sessions
                WHERE volume = $1 ORDER BY started_at, id
                """, [.int(id)])
            return try (0..<rows.count).map { row in
                Session(id: try rows.text(row, 0), host: try rows.text(row, 1), pid: Int32(truncatingIfNeeded: try rows.int(row, 2)),
                        mountpoint: try rows.text(row, 3), device: try rows.text(row, 4), mode: try rows.text(row, 5),
                        startedAt: Timestamp(nanoseconds: try rows.int(row, 6)), heartbeatAt: Timestamp(nanoseconds: try rows.int(row, 7)))
            }
        }
    }
}
