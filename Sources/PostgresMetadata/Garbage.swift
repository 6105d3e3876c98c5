// Objects that left the metadata, kept until the chunk store deletes them.
//
// Several chunks may name one object, so an object a transaction stops naming becomes
// garbage only when no chunk of the volume names it any more: retiring checks, under
// the lease-row lock every writer holds, and answers only what it made garbage.

public import Metadata

extension PostgresMetadata {
    /// Records those of `objects` that no chunk names any more as garbage since now, by
    /// the database's clock; returns them.
    func retire(_ tx: Transaction, _ objects: [ObjectID]) throws -> [ObjectID] {
        guard !objects.isEmpty else { return [] }
        let rows = try tx.execute("""
            INSERT INTO garbage(volume, object, since)
            SELECT DISTINCT $1::bigint, o, coalesce($3::bigint, \(Self.databaseNow)) FROM unnest($2::bigint[]) AS o
            WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.volume = $1 AND c.object = o)
            ON CONFLICT DO NOTHING RETURNING object
            """, [.int(id), .ints(objects.map { Int64(bitPattern: $0.rawValue) }), clockValue])
        return try (0..<rows.count).map { ObjectID(rawValue: UInt64(bitPattern: try rows.int($0, 0))) }
    }

    public func garbage(olderThan seconds: Double, limit: Int) throws(MetadataError) -> [ObjectID] {
        try read { tx in
            let rows = try tx.execute("""
                SELECT object FROM garbage WHERE volume = $1 AND since <= coalesce($2::bigint, \(Self.databaseNow)) - $3
                ORDER BY since LIMIT $4
                """, [.int(id), clockValue, .int(Int64(seconds * 1_000_000_000)), .int(Int64(limit))])
            return try (0..<rows.count).map { ObjectID(rawValue: UInt64(bitPattern: try rows.int($0, 0))) }
        }
    }

    public func dropGarbage(_ objects: [ObjectID]) throws(MetadataError) {
        guard !objects.isEmpty else { return }
        try write { tx in
            _ = try tx.execute("DELETE FROM garbage WHERE volume = $1 AND object = ANY($2)",
                           [.int(id), .ints(objects.map { Int64(bitPattern: $0.rawValue) })])
        }
    }

    public func adoptStrays(_ objects: [ObjectID]) throws(MetadataError) -> Int {
        guard !objects.isEmpty else { return 0 }
        // Under the lease-row lock: a commit that starts naming one of these objects
        // either committed before (and the object is no stray) or runs after, and takes
        // it back out of the garbage.
        return try write { tx in
            try retire(tx, objects).count
        }
    }

    public func knownObjects() throws(MetadataError) -> Set<ObjectID> {
        try read { tx in
            let rows = try tx.execute("""
                SELECT object FROM chunks WHERE volume = $1 AND object <> 0 UNION SELECT object FROM garbage WHERE volume = $1
                """, [.int(id)])
            return Set(try (0..<rows.count).map { ObjectID(rawValue: UInt64(bitPattern: try rows.int($0, 0))) })
        }
    }
}
