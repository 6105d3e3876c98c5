// Chunk maps, sizes and the size limit; purging inodes that lost their last name.

public import Metadata

extension PostgresMetadata {
    /// The object column of an inline chunk: no object was stored for it.
    static let inlineObject: Int64 = 0

    static func storedObject(_ column: Int64) -> ObjectID? {
        column == inlineObject ? nil : ObjectID(rawValue: UInt64(bitPattern: column))
    }

    static func chunkRef(_ rows: Rows, _ row: Int, ino: InodeNumber) throws -> ChunkRef {
        let index = Int(try rows.int(row, 0))
        guard let checksums = BlockChecksums(encoded: try rows.bytes(row, 3)) else {
            throw MetadataError.database("chunk \(index) of \(ino) has damaged checksums")
        }
        let length = Int(try rows.int(row, 2))
        if let data = try rows.bytesOrNil(row, 4) {
            // The recorded length is checked against the bytes when they are read.
            var ref = ChunkRef(index: index, inline: data, checksums: checksums)
            ref.length = length
            return ref
        }
        return ChunkRef(index: index, object: ObjectID(rawValue: UInt64(bitPattern: try rows.int(row, 1))),
                        length: length, checksums: checksums)
    }

    public func chunks(_ ino: InodeNumber) throws(MetadataError) -> [ChunkRef] {
        try read { tx in
            let rows = try tx.execute("SELECT idx, object, length, checksums, data FROM chunks WHERE volume = $1 AND ino = $2 ORDER BY idx",
                                      [.int(id), .ino(ino)])
            return try (0..<rows.count).map { row in try Self.chunkRef(rows, row, ino: ino) }
        }
    }

    /// The chunks of the inode row `row` of the outer query names, as the right side of a
    /// join, called `c`: one range of the primary key, whatever the statistics say (see
    /// `inodeOf`). Asking for them in order leaves the planner no tie with the index by
    /// object, which stale statistics would let it scan for the whole volume.
    /// Statistics taken while the volume held one big file still made it scan by volume:
    /// schema version 7 states how few chunks an inode number names.
    static func chunksOf(_ row: String) -> String {
        """
        LATERAL (SELECT c.idx, c.object, c.length, c.checksums, c.data FROM chunks c
                 WHERE c.volume = \(row).volume AND c.ino = \(row).ino ORDER BY c.idx OFFSET 0) c
        """
    }

    /// One statement, so one snapshot: the size and the chunk map agree.
    public func attrAndChunks(_ ino: InodeNumber) throws(MetadataError) -> (Attr, [ChunkRef]) {
        try read { tx in
            let rows = try tx.execute("""
                SELECT c.idx, c.object, c.length, c.checksums, c.data, \(Self.joinedAttrColumns)
                FROM inodes i LEFT JOIN \(Self.chunksOf("i")) ON true
                WHERE i.volume = $1 AND i.ino = $2 ORDER BY c.idx
                """, [.int(id), .ino(ino)])
            guard rows.count > 0 else { throw MetadataError.notFound }
            let attr = try Self.attr(rows, 0, from: 5)
            if rows.isNull(0, 0) { return (attr, []) }
            return (attr, try (0..<rows.count).map { row in try Self.chunkRef(rows, row, ino: ino) })
        }
    }

    public func attrsAndChunks(_ inodes: [InodeNumber]) throws(MetadataError) -> [(Attr, [ChunkRef])] {
        guard !inodes.isEmpty else { return [] }
        return try read { tx in
            let rows = try tx.execute(Self.attrsAndChunksStatement, [.int(id), .ints(inodes.map { Int64(bitPattern: $0.rawValue) })])
            var found: [(Attr, [ChunkRef])] = []
            for row in 0..<rows.count {
                let attr = try Self.attr(rows, row, from: 5)
                if found.last?.0.ino != attr.ino { found.append((attr, [])) }
                if !rows.isNull(row, 0) { found[found.count - 1].1.append(try Self.chunkRef(rows, row, ino: attr.ino)) }
            }
            return found
        }
    }

    static let attrsAndChunksStatement = """
        SELECT c.idx, c.object, c.length, c.checksums, c.data, \(joinedAttrColumns)
        FROM (SELECT DISTINCT unnest($2::bigint[]) AS ino) want JOIN \(inodeOf("want", volume: "$1")) ON true
        LEFT JOIN \(chunksOf("i")) ON true
        ORDER BY i.ino, c.idx
        """

    /// Every chunk of every file, by inode (for fsck).
    public func allChunks() throws(MetadataError) -> [(InodeNumber, [ChunkRef])] {
        try read { tx in
            let rows = try tx.execute("SELECT idx, object, length, checksums, data, ino FROM chunks WHERE volume = $1 ORDER BY ino, idx",
                                      [.int(id)])
            var result: [(InodeNumber, [ChunkRef])] = []
            for row in 0..<rows.count {
                let ino = InodeNumber(UInt64(bitPattern: try rows.int(row, 5)))
                let ref = try Self.chunkRef(rows, row, ino: ino)
                if result.last?.0 == ino { result[result.count - 1].1.append(ref) } else { result.append((ino, [ref])) }
            }
            return result
        }
    }

    /// One statement (`netvol_commit_data`) does the work and refuses what it must, so
    /// the commit is one round trip. When its answer is lost with COMMIT's, the
    /// attributes are read again and the retired objects are not known: they are in the
    /// garbage table all the same, for gc.
    @discardableResult
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp, applying changes: [NameChange]) throws(MetadataError) -> Committed {
        try commitData([DataCommit(ino: ino, chunks: chunks, drop: drop, size: size, mtime: mtime)], now: now, applying: changes)[0]
    }

    /// A group is one round trip too: a `netvol_commit_data` per file, all with COMMIT.
    public func commitData(_ commits: [DataCommit], now: Timestamp, applying changes: [NameChange]) throws(MetadataError) -> [Committed] {
        try mutateInOneTrip(recover: { () throws(MetadataError) in
            var answers: [Committed] = []
            for commit in commits { answers.append(Committed(attr: try self.getattr(commit.ino), retired: [])) }
            return answers
        }) { tx in
            try queue(tx, changes)
            let answers = commits.map { queueCommit(tx, $0, now: now) }
            let all = Answered<[Committed]>()
            // The last statement's answer comes last: by then every other one is in.
            tx.withCommit("SELECT 1") { _ in all.value = try answers.map { try $0.get() } }
            return all
        }
    }

    /// Queues one file's commit in `tx`; its answer is there once COMMIT's is.
    func queueCommit(_ tx: Transaction, _ commit: DataCommit, now: Timestamp) -> Answered<Committed> {
        // An index given twice keeps the last, as a replace would.
        var latest: [Int: ChunkRef] = [:]
        for chunk in commit.chunks { latest[chunk.index] = chunk }
        let rows = latest.values.sorted { $0.index < $1.index }
        let drop = commit.drop.flatMap { $0.isEmpty ? nil : $0 }
        let retired = Answered<[ObjectID]>()
        tx.withCommit("""
            SELECT netvol_commit_data($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, coalesce($13, \(Self.databaseNow)))
            """, [.int(id), .ino(commit.ino), .int(drop.map { Int64($0.lowerBound) }), .int(drop.map { Int64($0.upperBound) }),
                  .ints(rows.map { Int64($0.index) }),
                  .ints(rows.map { $0.object.map { Int64(bitPattern: $0.rawValue) } ?? Self.inlineObject }),
                  .ints(rows.map { Int64($0.length) }), .byteArrays(rows.map { $0.checksums.encoded }),
                  .byteArrays(rows.map(\.inlineBytes)), .int(Int64(bitPattern: commit.size)), .int(commit.mtime?.nanoseconds),
                  .time(commit.ctime ?? now), clockValue]) { answer in
            retired.value = try answer.ints(0, 0).map { ObjectID(rawValue: UInt64(bitPattern: $0)) }
        }
        // Read after the function, so it sees what the function changed.
        let committed = Answered<Committed>()
        tx.withCommit("SELECT \(Self.attrColumns) FROM inodes WHERE volume = $1 AND ino = $2", [.int(id), .ino(commit.ino)]) { answer in
            committed.value = Committed(attr: try Self.attr(answer), retired: try retired.get())
        }
        return committed
    }

    /// Set-based, so that a batch costs a few round trips however many inodes it holds:
    /// purges run under the lease row's lock, and every unlink of an `rm -rf` waits for
    /// them.
    public func purge(_ inodes: [InodeNumber], now: Timestamp) throws(MetadataError) {
        guard !inodes.isEmpty else { return }
        try mutate { tx in
            let rows = try tx.execute("DELETE FROM inodes WHERE volume = $1 AND ino = ANY($2) AND nlink = 0 RETURNING ino",
                                      [.int(id), .ints(inodes.map { Int64(bitPattern: $0.rawValue) })])
            let gone = try (0..<rows.count).map { try rows.int($0, 0) }
            guard !gone.isEmpty else { return }
            let chunks = try tx.execute("DELETE FROM chunks WHERE volume = $1 AND ino = ANY($2) RETURNING object, length",
                                        [.int(id), .ints(gone)])
            var objects: [ObjectID] = []
            var freed: Int64 = 0
            for row in 0..<chunks.count {
                if let object = Self.storedObject(try chunks.int(row, 0)) { objects.append(object) }
                freed += try chunks.int(row, 1)
            }
            _ = try retire(tx, objects)
            try addUsage(tx, -freed)
            tx.later("DELETE FROM xattrs WHERE volume = $1 AND ino = ANY($2)", [.int(id), .ints(gone)])
            // One change per inode, numbered in order from the lease row's counter.
            tx.later("""
                WITH next AS (UPDATE lease SET last_change = last_change + cardinality($2::bigint[]) WHERE volume = $1
                              RETURNING last_change - cardinality($2::bigint[]) AS base)
                INSERT INTO changes(volume, seq, ino)
                SELECT $1, next.base + t.n, t.ino FROM next, unnest($2::bigint[]) WITH ORDINALITY AS t(ino, n)
                """, [.int(id), .ints(gone)])
        }
    }

    public func orphans() throws(MetadataError) -> [InodeNumber] {
        try read { tx in
            let rows = try tx.execute("SELECT ino FROM inodes WHERE volume = $1 AND nlink = 0 ORDER BY ino", [.int(id)])
            return try (0..<rows.count).map { InodeNumber(UInt64(bitPattern: try rows.int($0, 0))) }
        }
    }

    public func recountUsage() throws(MetadataError) -> (recorded: UInt64, counted: UInt64) {
        try mutate { tx in
            let rows = try tx.execute("""
                SELECT used_bytes, (SELECT coalesce(sum(length), 0)::bigint FROM chunks WHERE volume = $1) FROM volumes WHERE id = $1
                """, [.int(id)])
            let recorded = try rows.int(0, 0)
            let counted = try rows.int(0, 1)
            try tx.execute("UPDATE volumes SET used_bytes = $2 WHERE id = $1", [.int(id), .int(counted)])
            try tx.execute("""
                UPDATE inodes i SET stored = s.total
                FROM (SELECT n.ino, coalesce(sum(c.length), 0)::bigint AS total FROM inodes n
                      LEFT JOIN chunks c ON c.volume = n.volume AND c.ino = n.ino
                      WHERE n.volume = $1 GROUP BY n.ino) s
                WHERE i.volume = $1 AND i.ino = s.ino AND i.stored <> s.total
                """, [.int(id)])
            return (UInt64(max(0, recorded)), UInt64(max(0, counted)))
        }
    }
}
