// Extended attributes.

public import Metadata

extension PostgresMetadata {
    public func inodesWithXattrs() throws(MetadataError) -> Set<InodeNumber> {
        try read { tx in
            let rows = try tx.execute("SELECT DISTINCT ino FROM xattrs WHERE volume = $1", [.int(id)])
            return Set(try (0..<rows.count).map { InodeNumber(UInt64(bitPattern: try rows.int($0, 0))) })
        }
    }

    public func getxattr(_ ino: InodeNumber, _ name: FileName) throws(MetadataError) -> [UInt8] {
        try read { tx in
            // One statement tells a missing inode from a missing attribute.
            let rows = try tx.execute("""
                SELECT x.value FROM inodes i LEFT JOIN xattrs x ON x.volume = i.volume AND x.ino = i.ino AND x.name = $3
                WHERE i.volume = $1 AND i.ino = $2
                """, [.int(id), .ino(ino), .name(name)])
            guard rows.count == 1 else { throw MetadataError.notFound }
            guard let value = try rows.bytesOrNil(0, 0) else { throw MetadataError.noAttribute }
            return value
        }
    }

    public func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], mode: XattrMode, now: Timestamp) throws(MetadataError) {
        try mutate { tx in
            _ = try fetchAttr(tx, ino)
            let exists = try tx.execute("SELECT EXISTS(SELECT 1 FROM xattrs WHERE volume = $1 AND ino = $2 AND name = $3)",
                                        [.int(id), .ino(ino), .name(name)]).bool(0, 0)
            switch mode {
            case .create where exists: throw MetadataError.exists
            case .replace where !exists: throw MetadataError.noAttribute
            default: break
            }
            try tx.execute("""
                INSERT INTO xattrs(volume, ino, name, value) VALUES ($1, $2, $3, $4)
                ON CONFLICT (volume, ino, name) DO UPDATE SET value = excluded.value
                """, [.int(id), .ino(ino), .name(name), .bytes(value)])
            try note(tx, ino: ino)
            try setCtime(tx, [ino], now)
        }
    }

    public func listxattr(_ ino: InodeNumber) throws(MetadataError) -> [FileName] {
        try read { tx in
            _ = try fetchAttr(tx, ino)
            let rows = try tx.execute("SELECT name FROM xattrs WHERE volume = $1 AND ino = $2 ORDER BY name", [.int(id), .ino(ino)])
            return try (0..<rows.count).map { FileName(try rows.bytes($0, 0)) }
        }
    }

    public func removexattr(_ ino: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) {
        try mutate { tx in
            _ = try fetchAttr(tx, ino)
            let rows = try tx.execute("DELETE FROM xattrs WHERE volume = $1 AND ino = $2 AND name = $3", [.int(id), .ino(ino), .name(name)])
            if rows.affected == 0 { throw MetadataError.noAttribute }
            try note(tx, ino: ino)
            try setCtime(tx, [ino], now)
        }
    }
}
