import Foundation
public import Metadata
import GRDB

// Chunk maps: what each file's chunks are, and committing new ones.
extension SQLiteMetadata {
    public func chunks(_ ino: InodeNumber) throws(MetadataError) -> [ChunkRef] {
        try readNow { db in try Self.fetchChunks(db, ino) }
    }

    public func attrAndChunks(_ ino: InodeNumber) throws(MetadataError) -> (Attr, [ChunkRef]) {
        // One snapshot for both: a commit of another process in between (the writer's
        // purge of a replaced file, its new data) would pair attributes with a chunk map
        // they never had, and a size with no chunks reads as zeros.
        try readNow { db in
            var both: (Attr, [ChunkRef])?
            try db.inTransaction(.deferred) {
                both = (try Self.fetchAttr(db, ino), try Self.fetchChunks(db, ino))
                return .commit
            }
            guard let both else { throw MetadataError.database("no answer for inode \(ino)") }
            return both
        }
    }

    public func attrsAndChunks(_ inodes: [InodeNumber]) throws(MetadataError) -> [(Attr, [ChunkRef])] {
        try read { db in
            try inodes.compactMap { ino in
                let attr: Attr
                do {
                    attr = try Self.fetchAttr(db, ino)
                } catch MetadataError.notFound {
                    return nil
                }
                return (attr, try Self.fetchChunks(db, ino))
            }
        }
    }

    static func fetchChunks(_ db: Database, _ ino: InodeNumber) throws -> [ChunkRef] {
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

    @discardableResult
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp, applying changes: [NameChange]) throws(MetadataError) -> Committed {
        try mutate { db in
            try Self.apply(db, changes)
            return try commitOne(db, DataCommit(ino: ino, chunks: chunks, drop: drop, size: size, mtime: mtime), now: now)
        }
    }

    public func commitData(_ commits: [DataCommit], now: Timestamp, applying changes: [NameChange]) throws(MetadataError) -> [Committed] {
        try mutate { db in
            try Self.apply(db, changes)
            return try commits.map { commit in try commitOne(db, commit, now: commit.ctime ?? now) }
        }
    }

    func commitOne(_ db: Database, _ commit: DataCommit, now: Timestamp) throws -> Committed {
        let ino = commit.ino
        let attr = try Self.fetchAttr(db, ino)
        guard attr.isRegular else { throw MetadataError.invalidArgument("not a regular file") }
        var delta: Int64 = 0
        var retired: [ObjectID] = []
        let inoValue = Int64(ino.rawValue)
        if let drop = commit.drop, !drop.isEmpty {
            let bounds: StatementArguments = [inoValue, drop.lowerBound, drop.upperBound]
            for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT object, length FROM chunks WHERE ino = ? AND idx >= ? AND idx < ?"),
                                        arguments: bounds) {
                if let object = Self.storedObject(row[0]) { retired.append(object) }
                delta -= row[1] as Int64
            }
            try db.cachedStatement(sql: "DELETE FROM chunks WHERE ino = ? AND idx >= ? AND idx < ?").execute(arguments: bounds)
        }
        let old = try db.cachedStatement(sql: "SELECT object, length FROM chunks WHERE ino = ? AND idx = ?")
        let put = try db.cachedStatement(sql: "INSERT OR REPLACE INTO chunks(ino, idx, object, length, checksums, data) VALUES (?, ?, ?, ?, ?, ?)")
        let keep = try db.cachedStatement(sql: "DELETE FROM garbage WHERE object = ?")
        for chunk in commit.chunks {
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
        let newMtime = commit.mtime ?? attr.mtime
        try db.cachedStatement(sql: "UPDATE inodes SET size = ?, mtime = ?, ctime = ?, stored = max(0, stored + ?) WHERE ino = ?").execute(
                       arguments: [Int64(bitPattern: commit.size), newMtime.nanoseconds, now.nanoseconds, delta, inoValue])
        if !retired.isEmpty { retired = try Self.retire(db, retired, now: self.now(db)) }
        try Self.note(db, ino: ino)
        var after = attr
        after.size = commit.size
        after.mtime = newMtime
        after.ctime = now
        after.storedBytes = UInt64(max(0, Int64(attr.storedBytes) + delta))
        return Committed(attr: after, retired: retired)
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
                let objects = rows.compactMap { Self.storedObject($0[0]) }
                if !objects.isEmpty { _ = try Self.retire(db, objects, now: self.now(db)) }
                try Self.note(db, ino: ino)
            }
        }
    }

    public func orphans() throws(MetadataError) -> [InodeNumber] {
        try read { db in
            try Int64.fetchAll(db, sql: "SELECT ino FROM inodes WHERE nlink = 0").map { InodeNumber(UInt64($0)) }
        }
    }

    /// Every chunk of every file, by inode (for fsck).
    public func allChunks() throws(MetadataError) -> [(InodeNumber, [ChunkRef])] {
        let inodes = try read { db in
            try Int64.fetchAll(db, sql: "SELECT DISTINCT ino FROM chunks ORDER BY ino").map { InodeNumber(UInt64($0)) }
        }
        var result: [(InodeNumber, [ChunkRef])] = []
        for ino in inodes { result.append((ino, try chunks(ino))) }
        return result
    }

    public func recountUsage() throws(MetadataError) -> (recorded: UInt64, counted: UInt64) {
        try mutate { db in
            let recorded = try Self.setting(db, "used_bytes")
            let counted = try Int64.fetchOne(db, sql: "SELECT coalesce(sum(length), 0) FROM chunks") ?? 0
            try db.execute(sql: "UPDATE settings SET value = ? WHERE key = 'used_bytes'", arguments: [counted])
            try db.execute(sql: """
                UPDATE inodes SET stored = (SELECT coalesce(sum(length), 0) FROM chunks c WHERE c.ino = inodes.ino)
                WHERE stored <> (SELECT coalesce(sum(length), 0) FROM chunks c WHERE c.ino = inodes.ino)
                """)
            return (UInt64(max(0, recorded)), UInt64(max(0, counted)))
        }
    }
}
