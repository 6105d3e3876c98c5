import Foundation
public import Metadata
import GRDB

// Objects nothing refers to any more, kept for the grace period, then dropped.
extension SQLiteMetadata {
    public func garbage(olderThan seconds: Double, limit: Int) throws(MetadataError) -> [ObjectID] {
        try read { db in
            let cutoff = try now(db).nanoseconds - Self.nanoseconds(seconds)
            return try Int64.fetchAll(db.cachedStatement(sql: "SELECT object FROM garbage WHERE since <= ? ORDER BY since LIMIT ?"),
                                      arguments: [cutoff, limit])
                .map { ObjectID(rawValue: UInt64(bitPattern: $0)) }
        }
    }

    public func dropGarbage(_ objects: [ObjectID]) throws(MetadataError) {
        try write { db in
            let statement = try db.cachedStatement(sql: "DELETE FROM garbage WHERE object = ?")
            for object in objects { try statement.execute(arguments: [Int64(bitPattern: object.rawValue)]) }
        }
    }

    public func adoptStrays(_ objects: [ObjectID]) throws(MetadataError) -> Int {
        try write { db in try Self.retire(db, objects, now: now(db)).count }
    }

    public func knownObjects() throws(MetadataError) -> Set<ObjectID> {
        try read { db in
            Set(try Int64.fetchAll(db, sql: "SELECT object FROM chunks WHERE object <> 0 UNION SELECT object FROM garbage")
                .map { ObjectID(rawValue: UInt64(bitPattern: $0)) })
        }
    }
}
