// The connections of one volume, and how a call survives a flaky network.
//
// A call takes an idle connection (or opens one), runs its transaction, and gives the
// connection back if it is still sound. Transient failures (serialization failures,
// deadlocks, a server restarting, a dropped connection) run the whole transaction again
// after a growing pause, until the call's deadline; then the call throws `.database`.
// A broken connection is simply dropped: the next attempt opens a fresh one, so a call
// after the server comes back works without reopening the volume.
//
// COMMIT is where retrying blindly stops being safe: if the connection drops after COMMIT
// was sent, the transaction may or may not have been applied, and running it again could
// apply it twice (a second link, a second nlink decrement). So each transaction learns
// its id as it begins, and when COMMIT goes unanswered a fresh connection asks the server
// what became of that id (txid_status): committed, the call succeeds; aborted, nothing
// was applied and the transaction is retried like any failure before COMMIT. Still in
// progress means the session behind the old connection has not noticed it is gone (a
// half-open connection, COMMIT lost on the way): it is ended, which aborts the
// transaction, and the server is asked again. Only when the server no longer knows (the
// id is too old) or gives no answer before the deadline is the failure final, saying the
// change may or may not have been made.
//
// A transaction of one round trip sends COMMIT before its id could come back, so it
// writes a marker row of its own instead: once the old session is gone (ended if need
// be), the marker is there exactly when the transaction committed.

#if canImport(Glibc)
import Glibc
#endif
import CLibPQ
import Foundation
import Metadata
import Synchronization

/// Where a volume lives: the libpq connection string without `volume`, and the name.
struct VolumeLocation: Sendable {
    /// The URL as libpq takes it, every parameter but `volume` untouched.
    var conninfo: String
    var volume: String
    /// The URL for messages: no password, even when one was written into it.
    var redacted: String

    init(url: String) throws(MetadataError) {
        let schemes = ["postgres://", "postgresql://"]
        guard let scheme = schemes.first(where: { url.hasPrefix($0) }) else {
            throw .invalidArgument("a PostgreSQL volume URL starts with postgres:// or postgresql://")
        }
        let rest = url.dropFirst(scheme.count)
        let parts = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let base = String(parts[0])
        var kept: [Substring] = []
        var volume: String?
        if parts.count > 1 {
            for item in parts[1].split(separator: "&") {
                if item.hasPrefix("volume=") {
                    volume = String(item.dropFirst("volume=".count)).removingPercentEncoding
                } else {
                    kept.append(item)
                }
            }
        }
        // userinfo ends at the last @ before the path.
        let authority = base.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)[0]
        var redactedBase = base
        if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
            redactedBase = String(authority[..<colon]) + ":***" + String(base[at...])
        }
        guard let volume, !volume.isEmpty else {
            throw .invalidArgument("\(scheme)\(redactedBase) names no volume: add ?volume=NAME")
        }
        self.volume = volume
        conninfo = scheme + base + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
        redacted = scheme + redactedBase + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
    }
}

final class ConnectionPool: Sendable {
    let location: VolumeLocation
    let password: String?
    let deadlineSeconds: Double
    let idle = Mutex<[Connection]>([])
    /// Set when a call gave up because the server could not be reached; cleared by the
    /// next call that reaches it. While it is set, a call makes one attempt of at most
    /// `outageDeadlineSeconds`: the first call waited out the deadline already, and every
    /// lookup of an `ls -R` waiting it again would hang a worker for minutes instead of
    /// answering EIO.
    let outage = Mutex(false)
    static let outageDeadlineSeconds = 2.0
    /// Calls made, transactions among them, and attempts that repeated a failed one.
    let calls = Atomic<Int>(0)
    /// Microseconds callers spent in `run`, connecting, waiting and retrying included.
    let callMicroseconds = Atomic<Int>(0)
    let transactions = Atomic<Int>(0)
    let retries = Atomic<Int>(0)
    /// What the next COMMIT meets; tests set it to lose COMMIT or its answer on demand.
    let commitFault = Mutex<CommitFault?>(nil)
    /// How long the server lets a session of this pool sit idle inside a transaction
    /// before it ends it, in milliseconds: the deadline, or the mount's lease ttl where
    /// shorter (`boundIdleTransactions`).
    let idleTransactionMillis: Atomic<Int>
    /// Connections kept idle; more may be open at once while calls run in parallel.
    static let idleLimit = 8

    init(location: VolumeLocation, password: String?, deadlineSeconds: Double) {
        self.location = location
        self.password = password
        self.deadlineSeconds = deadlineSeconds
        idleTransactionMillis = Atomic(max(1000, Int(deadlineSeconds * 1000)))
    }

    /// Every transaction that writes (and a heartbeat) holds the lease row's lock, so a
    /// host cut off in the middle of one (its COMMIT lost on the way) keeps every other
    /// mount from taking the lease until the server ends the transaction. That must come
    /// within the lease's ttl, not the call deadline (20 s by default): a takeover due
    /// after a ttl of 5 s waited 20. A healthy session is idle inside a transaction for a
    /// round trip at a time. Sessions opened before are replaced as they come back to the
    /// pool.
    func boundIdleTransactions(toSeconds seconds: Double) {
        let millis = max(1000, min(Int(deadlineSeconds * 1000), Int(seconds * 1000)))
        guard idleTransactionMillis.exchange(millis, ordering: .relaxed) != millis else { return }
        close()
    }

    func close() {
        idle.withLock { $0.removeAll() }
    }

    /// Opens a connection, within `deadline` (libpq counts connect_timeout in whole seconds,
    /// at least 2).
    func connect(deadline: ContinuousClock.Instant) throws -> Connection {
        let left = deadline - .now
        let seconds = max(2, min(10, left.components.seconds + 1))
        let deadlineMillis = max(1000, Int(deadlineSeconds * 1000))
        let idleMillis = idleTransactionMillis.load(ordering: .relaxed)
        // Ours come first so that what the URL says wins; the password comes last.
        var pairs: [(String, String)] = [
            ("connect_timeout", String(seconds)),
            ("keepalives", "1"), ("keepalives_idle", "5"), ("keepalives_interval", "2"), ("keepalives_count", "3"),
            ("tcp_user_timeout", String(deadlineMillis)),
            ("application_name", "netvol"),
            // A transaction left open by a stopped process holds the lease row lock:
            // the server ends it rather than let every writer wait forever.
            // Every statement reads by a key's prefix, so a sequential scan is never the
            // plan wanted; the planner picks one when statistics were taken while the
            // tables were nearly empty (a volume emptied and filled again): 2 rows in 108
            // pages make each index tuple look like half the index, so that even the
            // primary key lookup of one inode read the whole table, in every statement of
            // an `rm -rf`, until the next `ANALYZE`. A table with no index to use is still
            // scanned, at a cost made huge, which would start the JIT compiler (about
            // 90 ms for the one-row schema table): statements this small never gain by it.
            ("options", "-c idle_in_transaction_session_timeout=\(idleMillis) -c statement_timeout=\(deadlineMillis)"
                + " -c enable_seqscan=off -c jit=off"),
            ("dbname", location.conninfo),
        ]
        if let password { pairs.append(("password", password)) }
        let keywords = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            for pointer in keywords { free(pointer) }
            for pointer in values { free(pointer) }
        }
        let raw: OpaquePointer? = (keywords.map { UnsafePointer($0) } + [nil]).withUnsafeBufferPointer { keys in
            (values.map { UnsafePointer($0) } + [nil]).withUnsafeBufferPointer { vals in
                PQconnectdbParams(keys.baseAddress, vals.baseAddress, 1)
            }
        }
        guard let raw else { throw DatabaseFailure(sqlstate: nil, message: "out of memory", connectionLost: true) }
        let connection = Connection(raw, idleTransactionMillis: idleMillis)
        guard PQstatus(raw) == CONNECTION_OK else {
            throw connectFailure(connection)
        }
        return connection
    }

    /// What went wrong connecting, said so that a person knows what to fix; never the password.
    func connectFailure(_ connection: Connection) -> DatabaseFailure {
        let raw = connection.raw
        let host = PQhost(raw).map { String(cString: $0) } ?? "?"
        let port = PQport(raw).map { String(cString: $0) } ?? "?"
        let user = PQuser(raw).map { String(cString: $0) } ?? "?"
        let database = PQdb(raw).map { String(cString: $0) } ?? "?"
        var detail = connection.lastError
        if let password, !password.isEmpty { detail = detail.replacingOccurrences(of: password, with: "***") }
        let server = "\(host):\(port)"
        if detail.contains("password authentication failed") {
            return DatabaseFailure(message: "password authentication failed for user \(user) at \(server): check PGPASSWORD, the password file, or the role's password", final: true)
        }
        if detail.contains("no password supplied") || detail.contains("fe_sendauth") {
            return DatabaseFailure(message: "the server at \(server) wants a password for user \(user) and none was given: set PGPASSWORD or a password file", final: true)
        }
        if detail.contains("database \"\(database)\" does not exist") {
            return DatabaseFailure(message: "database \(database) does not exist on \(server)", final: true)
        }
        if detail.contains("role \"\(user)\" does not exist") {
            return DatabaseFailure(message: "role \(user) does not exist on \(server)", final: true)
        }
        if detail.contains("invalid") || detail.contains("unrecognized") || detail.contains("SSL") || detail.contains("certificate") {
            return DatabaseFailure(message: "cannot use \(location.redacted): \(detail)", final: true)
        }
        // libpq's first line says what failed ("... port 5432 failed: Connection refused").
        let line = detail.split(separator: "\n").first.map { String($0).trimmingWhitespace } ?? detail
        return DatabaseFailure(message: "cannot reach the PostgreSQL server at \(server) (database \(database), user \(user)): \(line)",
                               connectionLost: true)
    }

    /// Runs `body` on a connection, again on a fresh one after a transient failure, until
    /// the deadline.
    func run<T>(_ body: (Connection, ContinuousClock.Instant) throws -> T) throws(MetadataError) -> T {
        let known = outage.withLock { $0 }
        let patience = known ? min(deadlineSeconds, Self.outageDeadlineSeconds) : deadlineSeconds
        let deadline = ContinuousClock.now + .milliseconds(Int64(patience * 1000))
        var pause = 0.02
        calls.add(1, ordering: .relaxed)
        let started = ContinuousClock.now
        defer { callMicroseconds.add(Int((ContinuousClock.now - started).inSeconds * 1_000_000), ordering: .relaxed) }
        var attempt = 0
        while true {
            if attempt > 0 { retries.add(1, ordering: .relaxed) }
            attempt += 1
            let failure: DatabaseFailure
            do {
                let connection = try idle.withLock { $0.popLast() } ?? connect(deadline: deadline)
                do {
                    let value = try body(connection, deadline)
                    giveBack(connection)
                    outage.withLock { $0 = false }
                    return value
                } catch {
                    giveBack(connection)
                    throw error
                }
            } catch let error as MetadataError {
                // The server answered: it is there.
                outage.withLock { $0 = false }
                throw error
            } catch let error as DatabaseFailure {
                failure = error
            } catch {
                throw .database(String(describing: error))
            }
            guard failure.isTransient else {
                if failure.unreachable { outage.withLock { $0 = true } }
                // disk_full: the volume's size limit (`netvol_volume_full`), or the
                // database server's own disk.
                if failure.sqlstate == "53100" { throw .noSpace }
                if let refusal = Schema.refusal(failure) { throw refusal }
                throw .database(failure.message)
            }
            if failure.connectionLost {
                // A server restart or a network cut leaves every idle connection just as
                // dead: trying them one by one would spend the deadline on backoff.
                close()
            }
            let left = (deadline - .now).inSeconds
            guard !known || !failure.connectionLost, left > pause else {
                if failure.connectionLost { outage.withLock { $0 = true } }
                throw .database("gave up after \(String(format: "%.0f", patience)) s: \(failure.message)")
            }
            usleep(UInt32(pause * 1_000_000))
            pause = min(pause * 2, 1)
        }
    }

    private func giveBack(_ connection: Connection) {
        guard connection.isUsable,
              connection.idleTransactionMillis == idleTransactionMillis.load(ordering: .relaxed) else { return }
        idle.withLock { connections in
            if connections.count < Self.idleLimit { connections.append(connection) }
        }
    }

    /// A transaction: BEGIN, `body`, COMMIT, retried as a whole after a transient failure
    /// that left nothing behind.
    ///
    /// Round trips are what a transaction costs over a network, so statements travel
    /// together: BEGIN (with `txid_current()` and `opening`, whose rows `opened` checks)
    /// goes with the body's first statement that needs an answer, and the statements the
    /// body queued with `later` go with the next such statement or with COMMIT. COMMIT
    /// never travels with a statement whose answer is still to be checked, nor before the
    /// transaction's id is known (see `settle`).
    ///
    /// With `recover`, a transaction whose statements decide everything in SQL (they
    /// raise an error rather than answer something to check) is one round trip: BEGIN,
    /// the statements and COMMIT all travel together, with a marker row of the
    /// transaction's own. If COMMIT's answer is lost, the marker says what became of it
    /// (see `settle(marker:)`); answers lost with it are rebuilt by `recover`, which reads
    /// the committed state afresh.
    func transaction<T>(opening: (sql: String, parameters: [Value])? = nil, opened: ((Rows) throws -> Void)? = nil,
                        recover: (() throws(MetadataError) -> T)? = nil,
                        _ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        transactions.add(1, ordering: .relaxed)
        return try run { connection, deadline in
            let tx = Transaction(connection: connection, deadline: deadline)
            let value: T
            let pid = PQbackendPID(connection.raw)
            let marker = recover == nil ? nil : Self.newMarker()
            var last: [Transaction.Queued]
            var xid: Int64?
            do {
                tx.later("BEGIN")
                if marker == nil {
                    tx.later("SELECT txid_current()") { [unowned tx] rows in tx.xid = try rows.int(0, 0) }
                } else {
                    tx.needsID = false
                }
                if let opening { tx.later(opening.sql, opening.parameters, answer: opened) }
                value = try body(tx)
                last = try tx.takeForCommit()
                if let marker {
                    last.append(.init(sql: "INSERT INTO netvol_commits(marker) VALUES ($1) ON CONFLICT DO NOTHING",
                                      parameters: [.int(marker)], answer: .none))
                } else {
                    guard let known = tx.xid else { throw DatabaseFailure(message: "the transaction's id was not read") }
                    xid = known
                }
            } catch {
                Self.rollBack(connection, deadline: deadline)
                throw error
            }
            do {
                let answers = try commit(connection, carrying: last.map { ($0.sql, $0.parameters) }, deadline: deadline)
                for (statement, rows) in zip(last, answers) {
                    if case .afterCommit(let answer) = statement.answer { try answer(rows) }
                }
            } catch let failure as DatabaseFailure where failure.connectionLost {
                // Whether it was applied is unknown until the server is asked: see the
                // file's opening comment.
                if let xid {
                    try settle(failure, xid: xid, pid: pid, deadline: deadline)
                } else if let marker, let recover {
                    try settle(failure, marker: marker, pid: pid, age: ContinuousClock.now - connection.opened, deadline: deadline)
                    return try recover()
                }
            } catch {
                // A statement that travelled with COMMIT failed: COMMIT was not run.
                Self.rollBack(connection, deadline: deadline)
                throw error
            }
            return value
        }
    }

    /// A marker no other transaction has: milliseconds since 2020 above 22 random bits,
    /// so that markers grow with time and old ones are pruned by key (`pruneMarkers`).
    static func newMarker() -> Int64 {
        let since2020 = Int64((Date().timeIntervalSince1970 - 1_577_836_800) * 1000)
        return (max(0, since2020) << 22) | Int64.random(in: 0..<(1 << 22))
    }

    /// Markers older than an hour, by the server's clock: a settle needs one only within
    /// its call's deadline.
    static let pruneMarkers = """
        DELETE FROM netvol_commits
        WHERE marker < ((extract(epoch from clock_timestamp()) - 1577836800 - 3600) * 1000)::bigint << 22
        """

    private static func rollBack(_ connection: Connection, deadline: ContinuousClock.Instant) {
        if PQstatus(connection.raw) == CONNECTION_OK && PQtransactionStatus(connection.raw) != PQTRANS_IDLE {
            _ = try? connection.execute("ROLLBACK", deadline: deadline)
        }
    }

    /// COMMIT, after the statements that travel with it; a test's fault strikes here,
    /// where the answer can be lost.
    @discardableResult
    private func commit(_ connection: Connection, carrying statements: [(sql: String, parameters: [Value])],
                        deadline: ContinuousClock.Instant) throws -> [Rows] {
        func send() throws -> [Rows] {
            if statements.isEmpty {
                try connection.execute("COMMIT", deadline: deadline)
                return []
            }
            return try connection.executePipelined(statements + [("COMMIT", [])], deadline: deadline)
        }
        switch commitFault.withLock({ fault in defer { fault = nil }; return fault }) {
        case nil:
            break
        case .beforeSending?:
            shutdown(PQsocket(connection.raw), Int32(SHUT_RDWR))
        case .answerLost?:
            _ = try send()
            shutdown(PQsocket(connection.raw), Int32(SHUT_RDWR))
            throw DatabaseFailure(sqlstate: nil, message: "the connection dropped after COMMIT was answered (a test cut it)",
                                  connectionLost: true)
        case .halfOpen?:
            throw DatabaseFailure(sqlstate: nil, message: "COMMIT was never sent and the server was not told (a test held it back)",
                                  connectionLost: true)
        }
        return try send()
    }

    /// Learns on a fresh connection whether transaction `xid`, whose COMMIT on backend
    /// `pid` went unanswered (`lost`), was applied: returns if it was; throws `lost` as
    /// transient if it was not, so that it runs again, and as final if that cannot be
    /// known before `deadline`.
    private func settle(_ lost: DatabaseFailure, xid: Int64, pid: Int32,
                        deadline: ContinuousClock.Instant) throws(DatabaseFailure) {
        try settle(lost, deadline: deadline) { connection in try verdict(xid: xid, pid: pid, on: connection, deadline: deadline) }
    }

    /// `settle` for a transaction known by its `marker` row instead of its id, which
    /// travelled with COMMIT and so may be lost with it. The session on backend `pid`
    /// (opened `age` ago) is ended first if it is still there: once it is gone, its
    /// transaction committed or never will, and the marker row says which.
    private func settle(_ lost: DatabaseFailure, marker: Int64, pid: Int32, age: Duration,
                        deadline: ContinuousClock.Instant) throws(DatabaseFailure) {
        // A session that took over a reused pid started after ours ended, so later than
        // ours began: the second of slack covers the clocks' different views of "began".
        let startedBefore = max(0, Int64(age.inSeconds * 1000) - 1000)
        try settle(lost, deadline: deadline) { connection in
            let alive = try connection.execute("""
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE pid = $1 AND backend_start <= clock_timestamp() - $2 * interval '1 millisecond'
                """, [.int(Int64(pid)), .int(startedBefore)], deadline: deadline, prepare: false)
            if alive.count > 0 { return .pending("the old session was still there at the deadline") }
            let found = try connection.execute("SELECT EXISTS(SELECT 1 FROM netvol_commits WHERE marker = $1)",
                                               [.int(marker)], deadline: deadline, prepare: false)
            return try found.bool(0, 0) ? .committed : .aborted
        }
    }

    private func settle(_ lost: DatabaseFailure, deadline: ContinuousClock.Instant,
                        asking verdict: (Connection) throws -> Verdict) throws(DatabaseFailure) {
        var unreachable = false
        func unknown(_ why: String) -> DatabaseFailure {
            var failure = lost
            failure.final = true
            failure.unreachable = unreachable
            failure.message = "the connection failed while committing, so the change may or may not have been made (\(why)): \(lost.message)"
            return failure
        }
        var asker: Connection?
        var doubt = "no time was left to ask the server"
        var pause = 0.02
        while deadline > .now {
            let answer: Verdict
            do {
                let connection = try asker ?? connect(deadline: deadline)
                asker = connection
                answer = try verdict(connection)
                unreachable = false
            } catch let failure as DatabaseFailure where failure.isTransient {
                asker = nil
                unreachable = failure.connectionLost
                answer = .pending("the server could not be asked before the deadline: \(failure.message)")
            } catch let failure as DatabaseFailure {
                throw unknown("asking the server failed: \(failure.message)")
            } catch {
                throw unknown("asking the server failed: \(error)")
            }
            switch answer {
            case .committed:
                if let asker { giveBack(asker) }
                return
            case .aborted:
                if let asker { giveBack(asker) }
                var failure = lost
                failure.message = "the connection failed while committing, before the change was made: \(lost.message)"
                throw failure
            case .forgotten:
                throw unknown("the server no longer remembers the transaction")
            case .pending(let why):
                doubt = why
            }
            let left = deadline - .now
            usleep(UInt32(min(Duration.seconds(pause), max(left, .zero)) / .microseconds(1)))
            pause = min(pause * 2, 0.5)
        }
        throw unknown(doubt)
    }

    private enum Verdict {
        case committed, aborted, forgotten
        /// Not decided yet, and why.
        case pending(String)
    }

    /// What the server says of transaction `xid`; a session still in it on backend `pid`
    /// is ended, which aborts it.
    private func verdict(xid: Int64, pid: Int32, on connection: Connection,
                         deadline: ContinuousClock.Instant) throws -> Verdict {
        // A commit is not done while its session still finishes it (waiting for a
        // synchronous standby, say): until it is visible, the call that reads next could
        // miss it.
        let rows = try connection.execute("SELECT txid_status($1), txid_visible_in_snapshot($1, txid_current_snapshot())",
                                          [.int(xid)], deadline: deadline, prepare: false)
        switch try rows.textOrNil(0, 0) {
        case "committed":
            return try rows.bool(0, 1) ? .committed : .pending("the commit was not yet visible at the deadline")
        case "aborted":
            return .aborted
        case "in progress":
            // pg_stat_activity shows the low 32 bits of the xid: matching them too leaves
            // alone a session that took over a reused pid.
            try connection.execute("""
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE pid = $1 AND backend_xid::text::bigint = $2
                """, [.int(Int64(pid)), .int(xid & 0xFFFF_FFFF)], deadline: deadline, prepare: false)
            return .pending("the old session was still in the transaction at the deadline")
        default:
            return .forgotten
        }
    }

    /// Statements outside a transaction: each sees the latest commits, and running them
    /// again is always safe.
    func read<T>(_ body: (Transaction) throws -> T) throws(MetadataError) -> T {
        try run { connection, deadline in try body(Transaction(connection: connection, deadline: deadline)) }
    }
}

/// A connection in use by one call, with that call's deadline, and the statements queued
/// to travel with its next round trip.
final class Transaction {
    let connection: Connection
    let deadline: ContinuousClock.Instant
    /// The transaction's id (`txid_current()`), once its answer came.
    var xid: Int64?
    /// False when a marker row, not the id, settles a COMMIT whose answer was lost: then
    /// COMMIT need not wait for the id.
    var needsID = true

    /// What becomes of a queued statement's rows.
    enum Answer {
        case none
        /// Checked before COMMIT is sent: what it finds can still stop the commit.
        case beforeCommit((Rows) throws -> Void)
        /// Handed over once COMMIT succeeded (or as soon as the rows come, if they come
        /// earlier); it cannot stop the commit, so it travels with COMMIT.
        case afterCommit((Rows) throws -> Void)
    }

    struct Queued {
        var sql: String
        var parameters: [Value]
        var answer: Answer
    }

    private var queued: [Queued] = []

    init(connection: Connection, deadline: ContinuousClock.Instant) {
        self.connection = connection
        self.deadline = deadline
    }

    /// Runs a statement whose answer is needed now, in one round trip with everything
    /// queued before it.
    @discardableResult
    func execute(_ sql: String, _ parameters: [Value] = []) throws -> Rows {
        guard !queued.isEmpty else { return try connection.execute(sql, parameters, deadline: deadline) }
        queued.append(Queued(sql: sql, parameters: parameters, answer: .none))
        return try sendQueued().last!
    }

    /// Queues a statement whose rows the caller does not need (most writes): it travels
    /// with the next statement that needs an answer, or with COMMIT. Its failure fails
    /// that round trip, and with it the transaction. `answer` gets its rows when they
    /// come; a statement with one is never sent together with COMMIT, so that what
    /// `answer` checks can still stop the commit.
    func later(_ sql: String, _ parameters: [Value] = [], answer: ((Rows) throws -> Void)? = nil) {
        queued.append(Queued(sql: sql, parameters: parameters, answer: answer.map { .beforeCommit($0) } ?? .none))
    }

    /// Queues a statement that decides in SQL (an error stops the transaction), whose rows
    /// `answer` reads only to report them: it may travel with COMMIT.
    func withCommit(_ sql: String, _ parameters: [Value] = [], answer: @escaping (Rows) throws -> Void) {
        queued.append(Queued(sql: sql, parameters: parameters, answer: .afterCommit(answer)))
    }

    /// Sends what is queued and hands each answer to its statement's `answer`.
    @discardableResult
    func sendQueued() throws -> [Rows] {
        guard !queued.isEmpty else { return [] }
        let sending = queued
        queued = []
        let answers = try connection.executePipelined(sending.map { ($0.sql, $0.parameters) }, deadline: deadline)
        for (statement, rows) in zip(sending, answers) {
            switch statement.answer {
            case .none: break
            case .beforeCommit(let answer), .afterCommit(let answer): try answer(rows)
            }
        }
        return answers
    }

    /// What may travel with COMMIT: everything queued, once every answer still to be
    /// checked (and the transaction's id, where it settles a lost COMMIT) is in.
    func takeForCommit() throws -> [Queued] {
        let checked = queued.contains { if case .beforeCommit = $0.answer { true } else { false } }
        if (needsID && xid == nil) || checked { try sendQueued() }
        defer { queued = [] }
        return queued
    }

    /// Several statements without parameters (a migration).
    func script(_ sql: String) throws {
        try sendQueued()
        try connection.script(sql, deadline: deadline)
    }

    /// For statements run rarely (schema changes, admin): not worth a prepared statement.
    @discardableResult
    func executeOnce(_ sql: String, _ parameters: [Value] = []) throws -> Rows {
        try sendQueued()
        return try connection.execute(sql, parameters, deadline: deadline, prepare: false)
    }
}

/// How a test makes the next COMMIT go unanswered.
enum CommitFault: Sendable {
    /// The connection breaks before COMMIT leaves: the server sees it close and aborts.
    case beforeSending
    /// COMMIT is applied and answered, and the connection breaks as though the answer had
    /// been lost on the way.
    case answerLost
    /// COMMIT never leaves and the connection stays open, as behind a half-open connection:
    /// the server's session waits in the transaction until something ends it.
    case halfOpen
}
