import Foundation
public import Metadata
import GRDB

// Extended attributes.
extension SQLiteMetadata {
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
}
