#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Metadata
@testable import PostgresMetadata

/// What only a database server has: connections that drop, servers that are not there,
/// passwords, several volumes in one database, the server's clock.
@Suite(.enabled(if: PostgresServer.available, "NETVOL_TEST_PG_URL is unset"))
struct PostgresMetadataTests {
    /// A statement on a connection of its own, as an administrator would run it.
    func admin(_ sql: String, _ parameters: [Value] = []) throws -> Rows {
        let pool = ConnectionPool(location: try VolumeLocation(url: try PostgresServer.volumeURL()), password: nil, deadlineSeconds: 10)
        defer { pool.close() }
        return try pool.read { tx in try tx.executeOnce(sql, parameters) }
    }

    /// The message of the `.database` error `body` throws; an issue if it throws another or none.
    func databaseMessage(_ body: () throws -> Any) -> String {
        do {
            _ = try body()
            Issue.record("expected a .database error; the call succeeded")
        } catch MetadataError.database(let message) {
            return message
        } catch {
            Issue.record("expected .database, got \(error)")
        }
        return ""
    }

    func backendPid(_ meta: PostgresMetadata) throws -> Int64 {
        try meta.pool.read { tx in try tx.execute("SELECT pg_backend_pid()::bigint").int(0, 0) }
    }

    @Test func aDroppedConnectionIsRetriedTransparently() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? meta.destroy() }
        let d = try meta.mknode(.root, "d", mode: dirMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        for _ in 0..<3 {
            // The pool now holds exactly the connection that answered.
            let pid = try backendPid(meta)
            #expect(try admin("SELECT pg_terminate_backend($1::int)", [.int(pid)]).bool(0, 0))
            #expect(try meta.lookup(.root, "d") == d)
            let killed = try backendPid(meta)
            #expect(try admin("SELECT pg_terminate_backend($1::int)", [.int(killed)]).bool(0, 0))
            _ = try meta.mknode(d.ino, FileName("f\(killed)"), mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        }
        #expect(try meta.readdir(d.ino, after: 0, limit: 10).count == 3)
    }

    /// Over a network every round trip counts: a statement's first run on a connection
    /// prepares it in the same round trip, alone or pipelined with others.
    @Test func aStatementIsPreparedInTheRoundTripOfItsFirstRun() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? meta.destroy() }
        try meta.pool.read { tx in
            let connection = tx.connection
            // Texts no other test runs, so that none is prepared on this connection yet.
            let tag = Int64.random(in: 1..<Int64.max)
            let adding = "SELECT $1::bigint + 1 + 0 * \(tag)"
            var trips = connection.roundTrips
            #expect(try connection.execute(adding, [.int(1)], deadline: tx.deadline).int(0, 0) == 2)
            #expect(connection.roundTrips == trips + 1)
            #expect(try connection.execute(adding, [.int(5)], deadline: tx.deadline).int(0, 0) == 6)
            #expect(connection.roundTrips == trips + 2)

            // A first run that fails leaves the statement to be prepared again.
            let dividing = "SELECT 10 / $1::bigint + 0 * \(tag)"
            #expect(throws: DatabaseFailure.self) { try connection.execute(dividing, [.int(0)], deadline: tx.deadline) }
            #expect(try connection.execute(dividing, [.int(5)], deadline: tx.deadline).int(0, 0) == 2)
            #expect(try connection.execute(dividing, [.int(2)], deadline: tx.deadline).int(0, 0) == 5)

            trips = connection.roundTrips
            let answers = try connection.executePipelined([("SELECT $1::bigint * 3 + 0 * \(tag)", [.int(3)]), (adding, [.int(7)]),
                                                           ("SELECT $1::bigint * 3 + 0 * \(tag)", [.int(4)])], deadline: tx.deadline)
            #expect(try answers.map { try $0.int(0, 0) } == [9, 8, 12])
            #expect(connection.roundTrips == trips + 1)
            #expect(connection.isUsable)
        }
    }

    /// COMMIT goes unanswered in each way a network can lose it; the server is asked what
    /// became of the transaction, and the call succeeds with its change made once.
    @Test(arguments: [CommitFault.answerLost, .beforeSending, .halfOpen])
    func aCommitWithoutAnAnswerIsAppliedExactlyOnce(_ fault: CommitFault) throws {
        let url = try PostgresServer.volumeURL()
        let created = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? created.destroy() }
        // Waiting out an unresolved doubt would take the whole deadline.
        let meta = try PostgresMetadata(url: url, deadlineSeconds: 10)
        defer { meta.close() }
        let before = try meta.changes(after: 0, limit: 100).latest
        _ = try meta.mknode(.root, "control", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let perCreate = try meta.changes(after: before, limit: 100).changes.count
        #expect(perCreate > 0)

        // Through the lease lock that travels with BEGIN; a second run would meet .exists.
        let latest = try meta.changes(after: 0, limit: 100).latest
        meta.pool.commitFault.withLock { $0 = fault }
        let started = ContinuousClock.now
        let f = try meta.mknode(.root, "f", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(try meta.lookup(.root, "f") == f)
        #expect(try meta.readdir(.root, after: 0, limit: 10).map(\.name) == ["control", "f"])
        let gained = try meta.changes(after: latest, limit: 100).changes
        #expect(gained.count == perCreate, "\(gained)")
        #expect(gained.allSatisfy { $0.ino == f.ino || $0.name == "f" }, "\(gained)")

        // The other operations that travel in one round trip: each made once, and each
        // answering what it made even when the answer was lost.
        let bytes = [UInt8](repeating: 7, count: 100)
        let small = ChunkRef(index: 0, inline: bytes, checksums: bytes.withUnsafeBytes { BlockChecksums(of: $0) })
        let usedBefore = try meta.usage().usedBytes
        meta.pool.commitFault.withLock { $0 = fault }
        let committed = try meta.commitData(f.ino, chunks: [small], drop: nil, size: 100, mtime: t1, now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(committed.attr.size == 100 && committed.attr.mtime == t1 && committed.attr.storedBytes == 100)
        #expect(try meta.usage().usedBytes == usedBefore + 100)
        #expect(try meta.getattr(f.ino) == committed.attr)

        meta.pool.commitFault.withLock { $0 = fault }
        let changed = try meta.setattr(f.ino, AttrChanges(mode: 0o600), now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(changed.mode & 0o7777 == 0o600 && changed.isRegular)
        #expect(try meta.getattr(f.ino) == changed)

        let control = try meta.lookup(.root, "control")
        meta.pool.commitFault.withLock { $0 = fault }
        let unlinked = try meta.unlink(.root, "control", now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(unlinked.ino == control.ino && unlinked.nlink == 0)
        #expect(try meta.readdir(.root, after: 0, limit: 10).map(\.name) == ["f"])

        meta.pool.commitFault.withLock { $0 = fault }
        let linked = try meta.link(f.ino, .root, "h", now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(linked.ino == f.ino && linked.nlink == 2)

        let g = try meta.mknode(.root, "g", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t1)
        meta.pool.commitFault.withLock { $0 = fault }
        let replaced = try meta.rename(.root, "g", .root, "h", flags: [], now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(replaced?.ino == f.ino && replaced?.nlink == 1)
        #expect(try meta.lookup(.root, "h").ino == g.ino)

        let d = try meta.mknode(.root, "d", mode: dirMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t1)
        meta.pool.commitFault.withLock { $0 = fault }
        let removed = try meta.rmdir(.root, "d", now: t1)
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(removed.ino == d.ino && removed.nlink == 0)
        #expect(try meta.readdir(.root, after: 0, limit: 10).map(\.name) == ["f", "h"])
        #expect(try meta.getattr(.root).nlink == 2)

        // A plain transaction, whose second run would go unnoticed but for the count.
        let used = try meta.usage().usedBytes
        meta.pool.commitFault.withLock { $0 = fault }
        try meta.pool.transaction { tx in
            _ = try tx.execute("UPDATE volumes SET used_bytes = used_bytes + 100 WHERE id = $1", [.int(meta.id)])
        }
        #expect(meta.pool.commitFault.withLock { $0 } == nil, "the fault never struck")
        #expect(try meta.usage().usedBytes == used + 100)
    }

    @Test func aCommitUnansweredAtTheDeadlineSaysTheOutcomeIsUnknown() throws {
        let url = try PostgresServer.volumeURL()
        let created = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? created.destroy() }
        let meta = try PostgresMetadata(url: url, deadlineSeconds: 2)
        defer { meta.close() }
        let started = ContinuousClock.now
        let message = databaseMessage {
            try meta.pool.transaction { tx -> Void in
                _ = try tx.execute("UPDATE volumes SET used_bytes = used_bytes + 100 WHERE id = $1", [.int(meta.id)])
                // COMMIT leaves with no time left to wait for its answer.
                let left = tx.deadline - .now
                if left > .zero { usleep(UInt32(left / .microseconds(1)) + 1000) }
            }
        }
        #expect(message.contains("the change may or may not have been made"), "\(message)")
        #expect(ContinuousClock.now - started < .seconds(6))
        // Made once or not at all.
        #expect([0, 100].contains(try meta.usage().usedBytes))
    }

    @Test func writesReuseTheirConnectionEvenAfterAFailedStatement() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? meta.destroy() }
        let pid = try backendPid(meta)
        _ = try meta.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        #expect(throws: MetadataError.exists) { try meta.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0) }
        // A statement that fails inside the first round trip of a transaction.
        #expect(throws: MetadataError.database("division by zero")) {
            try meta.pool.transaction(opening: ("SELECT 1 / $1", [.int(0)])) { _ in }
        }
        #expect(try backendPid(meta) == pid)
        #expect(try meta.lookup(.root, "a").nlink == 1)
    }

    @Test func aQueuedStatementThatFailsWithCommitLeavesNothingBehind() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? meta.destroy() }
        let pid = try backendPid(meta)
        let before = try meta.getattr(.root)
        // Both queued: they travel with COMMIT, and the second one's failure stops it.
        #expect(throws: MetadataError.database("division by zero")) {
            try meta.pool.transaction { tx in
                tx.later("UPDATE inodes SET mtime = 12345 WHERE volume = $1 AND ino = 1", [.int(meta.id)])
                tx.later("SELECT 1 / $1", [.int(0)])
            }
        }
        #expect(try meta.getattr(.root).mtime == before.mtime)
        #expect(try backendPid(meta) == pid)
        // A queued statement's check can still stop the commit: it is answered first.
        #expect(throws: MetadataError.noSpace) {
            try meta.pool.transaction { tx in
                tx.later("UPDATE inodes SET mtime = 12345 WHERE volume = $1 AND ino = 1", [.int(meta.id)])
                tx.later("SELECT 1") { _ in throw MetadataError.noSpace }
            }
        }
        #expect(try meta.getattr(.root).mtime == before.mtime)
        // And one that needs an answer carries those queued before it.
        let answer = try meta.pool.transaction { tx -> Int64 in
            tx.later("UPDATE inodes SET mtime = 12345 WHERE volume = $1 AND ino = 1", [.int(meta.id)])
            return try tx.execute("SELECT mtime FROM inodes WHERE volume = $1 AND ino = 1", [.int(meta.id)]).int(0, 0)
        }
        #expect(answer == 12345)
        #expect(try meta.getattr(.root).mtime.nanoseconds == 12345)
    }

    @Test func anUnreachableServerFailsWithinTheDeadline() throws {
        let started = ContinuousClock.now
        let message = databaseMessage {
            try PostgresMetadata(url: "postgres://netvol@127.0.0.1:9/netvol?volume=x", deadlineSeconds: 2)
        }
        #expect(message.contains("127.0.0.1:9"), "\(message)")
        #expect(ContinuousClock.now - started < .seconds(6))
    }

    @Test func aServerThatNeverAnswersFailsWithinTheDeadline() throws {
        // A socket that listens but never accepts: the connection opens, nothing answers.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        try #require(bound && listen(listener, 1) == 0)
        let port = UInt16(bigEndian: address.sin_port)
        let started = ContinuousClock.now
        let message = databaseMessage {
            try PostgresMetadata(url: "postgres://netvol@127.0.0.1:\(port)/netvol?volume=x", deadlineSeconds: 2)
        }
        #expect(message.contains("127.0.0.1:\(port)"), "\(message)")
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test func aWrongPasswordSaysSoWithoutThePassword() throws {
        let secret = "not-the-password-\(UUID().uuidString)"
        let url = try PostgresServer.volumeURL()
        let message = databaseMessage { try PostgresMetadata(url: url, password: secret, deadlineSeconds: 5) }
        #expect(message.contains("password authentication failed for user netvol"), "\(message)")
        #expect(!message.contains(secret))
        // Nor when the password is written into the URL.
        let base = try PostgresServer.url()
        let inURL = base.replacingOccurrences(of: "://netvol@", with: "://netvol:\(secret)@") + "?volume=x"
        do {
            _ = try PostgresMetadata(url: inURL, deadlineSeconds: 5)
            Issue.record("opened a volume with a wrong password")
        } catch {
            #expect(!"\(error)".contains(secret))
        }
    }

    @Test func aMissingDatabaseOrVolumeIsNamed() throws {
        let base = try PostgresServer.url()
        let noDatabase = String(base.dropLast("netvol".count)) + "nosuchdb?volume=x"
        #expect(throws: MetadataError.database("database nosuchdb does not exist on 127.0.0.1:\(URLComponents(string: base)?.port ?? 0)")) {
            try PostgresMetadata(url: noDatabase, deadlineSeconds: 5)
        }
        #expect(throws: MetadataError.notAVolume("no volume named nothing-here in database netvol")) {
            try PostgresMetadata(url: base + "?volume=nothing-here")
        }
        #expect(throws: MetadataError.invalidArgument("postgres://netvol@\(base.dropFirst("postgres://netvol@".count)) names no volume: add ?volume=NAME")) {
            try PostgresMetadata(url: base)
        }
    }

    /// The moments at which statistics taken mislead the planner.
    enum StatisticsMoment: CaseIterable {
        /// The volume emptied (a volume emptied and refilled, a model replaced).
        case emptied
        /// The database holding one big file, of another volume, its indexes still large
        /// from the files deleted and vacuumed before (as the network bench met it): one
        /// inode number.
        case oneBigFile
    }

    /// Statistics taken at a bad moment, and the tables then filled again: each statement
    /// that reads a listing, a directory page, a name or files' attributes and chunks
    /// still reads about as many rows as it answers, not every row of the volume once per
    /// answer. The tables are copies in this connection's temporary schema, which hides
    /// the shared ones, with what the schema states of their columns, so that the
    /// statistics are this test's alone.
    @Test(arguments: StatisticsMoment.allCases)
    func statementsReadWhatTheyAnswerWhateverTheStatistics(moment: StatisticsMoment) throws {
        let meta = try PostgresMetadata.create(url: try PostgresServer.volumeURL(), chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer {
            try? meta.destroy()
            meta.close()
        }
        let volume = meta.id
        let (dirs, perDir) = (20, 100)
        let files = dirs * perDir
        // Small files after a big one, as the bench writes them: one chunk each.
        let chunksPerFile = moment == .oneBigFile ? 1 : 3
        // The rows each scan of a plan returned or filtered out, over all its loops.
        func rowsRead(_ node: [String: Any]) -> Double {
            let loops = node["Actual Loops"] as? Double ?? 1
            var read = (node["Rows Removed by Filter"] as? Double ?? 0) + (node["Rows Removed by Join Filter"] as? Double ?? 0)
            if (node["Node Type"] as? String ?? "").hasSuffix("Scan") { read += node["Actual Rows"] as? Double ?? 0 }
            let below = (node["Plans"] as? [[String: Any]] ?? []).reduce(0) { $0 + rowsRead($1) }
            return read * loops + below
        }
        try meta.pool.read { tx in
            // Outside a transaction, so that VACUUM may run.
            for table in ["inodes", "dentries", "chunks"] {
                try tx.executeOnce("CREATE TEMP TABLE \(table) (LIKE public.\(table) INCLUDING ALL)")
                // LIKE leaves out the columns' settings (n_distinct).
                let settings = try tx.execute("""
                    SELECT attname, array_to_string(attoptions, ', ') FROM pg_attribute
                    WHERE attrelid = $1::regclass AND attoptions IS NOT NULL
                    """, [.text("public.\(table)")])
                for row in 0..<settings.count {
                    try tx.executeOnce("ALTER TABLE pg_temp.\(table) ALTER COLUMN \(try settings.text(row, 0)) SET (\(try settings.text(row, 1)))")
                }
            }
            defer { _ = try? tx.executeOnce("DROP TABLE pg_temp.inodes, pg_temp.dentries, pg_temp.chunks") }
            func fill(_ volume: Int64) throws {
                try tx.executeOnce("""
                    INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent)
                    SELECT $1, g, CASE WHEN g < 100 THEN 16877 ELSE 33188 END, 1, 0, 0, 0, 10, 0, 0, 0, 1
                    FROM generate_series(2, 1 + $2) g UNION ALL SELECT $1, g, 33188, 1, 0, 0, 0, 10, 0, 0, 0, NULL
                    FROM generate_series(100, 99 + $3) g
                    """, [.int(volume), .int(Int64(dirs)), .int(Int64(files))])
                try tx.executeOnce("""
                    INSERT INTO dentries(volume, parent, name, ino)
                    SELECT $1, 2 + (g - 100) % $2, convert_to('f' || g, 'UTF8'), g FROM generate_series(100, 99 + $3) g
                    """, [.int(volume), .int(Int64(dirs)), .int(Int64(files))])
                try tx.executeOnce("""
                    INSERT INTO chunks(volume, ino, idx, object, length, checksums)
                    SELECT $1, g, i, g * 4 + i, 4096, '\\x00' FROM generate_series(100, 99 + $2) g, generate_series(1, $3) i
                    """, [.int(volume), .int(Int64(files)), .int(Int64(chunksPerFile))])
            }
            try tx.executeOnce("INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime) VALUES ($1, 1, 16877, 2, 0, 0, 0, 0, 0, 0, 0)", [.int(volume)])
            let other = volume + 1
            try fill(volume)
            if moment == .oneBigFile { try fill(other) }
            try tx.executeOnce("DELETE FROM inodes WHERE ino <> 1")
            try tx.executeOnce("DELETE FROM dentries")
            try tx.executeOnce("DELETE FROM chunks")
            if moment == .oneBigFile {
                try tx.executeOnce("VACUUM inodes, dentries, chunks")
                try tx.executeOnce("INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime) VALUES ($1, 50, 33188, 1, 0, 0, 0, 262144, 0, 0, 0)", [.int(other)])
                try tx.executeOnce("""
                    INSERT INTO chunks(volume, ino, idx, object, length, checksums)
                    SELECT $1, 50, i, 100000 + i, 4096, '\\x00' FROM generate_series(0, 63) i
                    """, [.int(other)])
            }
            try tx.executeOnce("ANALYZE inodes, dentries, chunks")
            try fill(volume)
            let dirList = Value.ints((2..<Int64(2 + dirs)).map { $0 })
            let cases: [(String, String, [Value], Int)] = [
                ("listings", PostgresMetadata.listingsStatement, [.int(volume), dirList, .int(1000)], files),
                ("readdir", PostgresMetadata.readdirStatement, [.int(volume), .int(2), .int(0), .int(1000)], perDir),
                ("lookup", PostgresMetadata.entryStatement, [.int(volume), .int(2), .name("f100")], 1),
                ("attributes and chunks", PostgresMetadata.attrsAndChunksStatement,
                 [.int(volume), .ints((100..<150).map { $0 })], 50 * chunksPerFile),
            ]
            for (name, sql, parameters, answered) in cases {
                let rows = try tx.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, parameters)
                let text = try rows.text(0, 0)
                let plan = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])?.first?["Plan"] as? [String: Any]
                #expect(plan != nil, "\(name): no plan in \(text)")
                let read = plan.map(rowsRead) ?? 0
                #expect(read <= Double(2 * answered + 100), "\(name) read \(Int(read)) rows to answer \(answered): \(text)")
            }
        }
    }

    @Test func storeSettingsAndNameRoundTrip() throws {
        let url = try PostgresServer.volumeURL()
        let store = ["kind": "s3", "bucket": "b", "prefix": "volumes/x/", "endpoint": "http://127.0.0.1:9000", "region": "eu"]
        let created = try PostgresMetadata.create(url: url, chunkSize: 1 << 20, sizeLimit: 1 << 40, store: store, uid: 5, gid: 6, now: t0)
        defer { try? created.destroy() }
        let reopened = try PostgresMetadata(url: url)
        #expect(reopened.storeSettings == store)
        #expect(reopened.volumeName == url.components(separatedBy: "volume=").last)
        #expect(try reopened.settings() == VolumeSettings(chunkSize: 1 << 20, sizeLimit: 1 << 40))
        let root = try reopened.getattr(.root)
        #expect(root.uid == 5 && root.gid == 6 && root.isDirectory)
    }

    @Test func volumesOfOneDatabaseAreIndependent() throws {
        let one = try PostgresMetadata.create(url: try PostgresServer.volumeURL(), chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? one.destroy() }
        let two = try PostgresMetadata.create(url: try PostgresServer.volumeURL(), chunkSize: 8192, sizeLimit: 1 << 21, store: [:], now: t1)
        defer { try? two.destroy() }
        let a = try one.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        let b = try two.mknode(.root, "b", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        #expect(a.ino == b.ino)  // numbered per volume
        #expect(throws: MetadataError.notFound) { try two.lookup(.root, "a") }
        #expect(try one.getattr(.root).mtime == t0 && two.getattr(.root).mtime == t0)
        #expect(try two.settings().chunkSize == 8192)
        _ = try one.acquireLease(holder: "w1", ttlSeconds: 30)
        #expect(try two.lease().isHeld == false)
        let taken = try two.acquireLease(holder: "w2", ttlSeconds: 30)
        #expect(taken.holder == "w2")
        #expect(try one.lease().holder == "w1")
        #expect(try one.changes(after: 0, limit: 100).changes.allSatisfy { $0.parent != .root || $0.name != "b" })
    }

    @Test func listAndDestroy() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        let f = try meta.mknode(.root, "f", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        try meta.commitData(f.ino, chunks: [ref(0, 100)], drop: nil, size: 100, mtime: t1, now: t1)
        _ = try meta.acquireLease(holder: "lister", ttlSeconds: 30)
        let listed = try PostgresMetadata.list(url: try PostgresServer.url(), password: nil)
        let mine = try #require(listed.first { $0.name == meta.volumeName })
        #expect(mine == VolumeSummary(name: meta.volumeName, sizeLimit: 1 << 20, usedBytes: 100, inodes: 2, leaseHolder: "lister"))
        #expect(throws: MetadataError.exists) {
            try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        }
        try meta.destroy()
        #expect(try PostgresMetadata.list(url: try PostgresServer.url(), password: nil).contains { $0.name == meta.volumeName } == false)
        #expect(throws: MetadataError.self) { try PostgresMetadata(url: url) }
        // The name is free again.
        let again = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        #expect(try again.readdir(.root, after: 0, limit: 10).isEmpty)
        try again.destroy()
    }

    /// A writer cut off in the middle of a transaction (its COMMIT lost on the way) holds
    /// the lease row's lock until the server ends the transaction. The server ends it
    /// within the mount's lease ttl, not the call deadline, and the takeover that waited
    /// for it judges the lease by the time the lock was granted, not the time it asked.
    @Test func aTakeoverWaitsForACutOffWritersTransactionNoLongerThanTheLeaseTTL() throws {
        let url = try PostgresServer.volumeURL()
        let created = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? created.destroy() }
        let a = try PostgresMetadata(url: url, deadlineSeconds: 20)
        defer { a.close() }
        a.setLeaseTTL(3)
        let taken = try a.acquireLease(holder: "a", ttlSeconds: 1)
        // The cut-off writer's session: inside a transaction that holds the lock, and silent.
        let stuck = try a.pool.connect(deadline: .now + .seconds(10))
        #expect(stuck.idleTransactionMillis == 3000)
        try stuck.script("BEGIN; SELECT 1 FROM lease WHERE volume = \(a.id) FOR UPDATE", deadline: .now + .seconds(10))

        let b = try PostgresMetadata(url: url, deadlineSeconds: 20)
        defer { b.close() }
        let started = ContinuousClock.now
        let lease = try b.acquireLease(holder: "b", ttlSeconds: 5)
        let waited = ContinuousClock.now - started
        #expect(lease.holder == "b" && lease.token.rawValue == taken.token.rawValue + 1)
        #expect(waited > .milliseconds(1500), "the lock was held for the server to end: \(waited)")
        #expect(waited < .seconds(10), "the takeover waited \(waited) for the cut-off transaction")
        withExtendedLifetime(stuck) {}
    }

    @Test func leaseTimesAreTheDatabasesClock() throws {
        let url = try PostgresServer.volumeURL()
        let meta = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? meta.destroy() }
        let server = try admin("SELECT (extract(epoch from clock_timestamp()) * 1000000000)::bigint").int(0, 0)
        let lease = try meta.acquireLease(holder: "a", ttlSeconds: 1)
        #expect(lease.isHeld)
        #expect(abs(lease.now.nanoseconds - server) < 5_000_000_000)
        #expect(lease.expiresAt.nanoseconds - lease.now.nanoseconds == 1_000_000_000)
        #expect(throws: MetadataError.self) { try meta.acquireLease(holder: "b", ttlSeconds: 1) }
        usleep(1_300_000)
        #expect(try meta.lease().isHeld == false)
        #expect(try meta.acquireLease(holder: "b", ttlSeconds: 1).holder == "b")
        // Sessions too.
        let session = Session(id: "s", host: "h", pid: 1, mountpoint: "/m", device: "0:1", mode: "writer", startedAt: t0, heartbeatAt: t0)
        try meta.heartbeat(session, staleSeconds: 60)
        let stored = try #require(try meta.sessions().first)
        #expect(abs(stored.heartbeatAt.nanoseconds - server) < 10_000_000_000)
    }
}
