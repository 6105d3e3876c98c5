// One libpq connection: statements with bound parameters, answers in binary, and every
// wait bounded by the caller's deadline.
//
// Statements are sent with the asynchronous calls and awaited with poll(2), so a server
// that stops answering (a dead host, a partition) costs at most the time left to the
// call, whatever TCP would do. Parameters go as text (integers, strings, integer arrays)
// or binary (bytea) with explicit types, never spliced into the SQL; results come back
// in binary, which decodes without parsing and carries bytea as it is.

#if canImport(Glibc)
import Glibc
#endif
import CLibPQ
import Metadata

/// A bound parameter; nil is SQL NULL of the parameter's type.
enum Value {
    case int(Int64?)
    case text(String?)
    case bytes([UInt8]?)
    case ints([Int64])
    /// bytea[]: many byte strings in one parameter (one statement for many rows).
    case byteArrays([[UInt8]?])

    var type: Oid {
        switch self {
        case .int: 20      // int8
        case .text: 25     // text
        case .bytes: 17    // bytea
        case .ints: 1016   // int8[]
        case .byteArrays: 1001  // bytea[]
        }
    }

    var isBinary: Bool {
        if case .bytes = self { return true }
        return false
    }

    /// The parameter's bytes as libpq wants them (text formats are NUL-terminated).
    var encoded: [UInt8]? {
        switch self {
        case .int(let value): value.map { Array(String($0).utf8) + [0] }
        case .text(let value): value.map { Array($0.utf8) + [0] }
        case .bytes(let value): value
        case .ints(let values): Array(("{" + values.map(String.init).joined(separator: ",") + "}").utf8) + [0]
        case .byteArrays(let values): Self.arrayText(values)
        }
    }
}

extension Value {
    /// The text form of a bytea[]: each element quoted, in hex (`"\\x0a1b"`), or NULL.
    static func arrayText(_ values: [[UInt8]?]) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = [UInt8(ascii: "{")]
        text.reserveCapacity(2 + values.reduce(0) { $0 + 8 + 2 * ($1?.count ?? 0) })
        for (position, value) in values.enumerated() {
            if position > 0 { text.append(UInt8(ascii: ",")) }
            guard let value else {
                text.append(contentsOf: Array("NULL".utf8))
                continue
            }
            // Inside a quoted element a backslash is written twice.
            text.append(contentsOf: Array("\"\\\\x".utf8))
            for byte in value {
                text.append(digits[Int(byte >> 4)])
                text.append(digits[Int(byte & 0x0f)])
            }
            text.append(UInt8(ascii: "\""))
        }
        text.append(contentsOf: [UInt8(ascii: "}"), 0])
        return text
    }

    static func ino(_ ino: InodeNumber?) -> Value { .int(ino.map { Int64(bitPattern: $0.rawValue) }) }
    static func name(_ name: FileName?) -> Value { .bytes(name?.bytes) }
    static func time(_ time: Timestamp) -> Value { .int(time.nanoseconds) }
}

/// A failure the database or the connection reported, before it becomes a `MetadataError`.
struct DatabaseFailure: Error {
    var sqlstate: String?
    var message: String
    /// The connection is gone (or can no longer be trusted): it must not be reused.
    var connectionLost: Bool = false
    /// Running the transaction again could apply it twice, or the failure will not pass.
    var final: Bool = false
    /// No server answered before the deadline: the calls after this one should not wait
    /// it out again (`ConnectionPool.outage`).
    var unreachable: Bool = false

    /// Failures that pass: another transaction won a race, the server restarted, the
    /// network dropped.
    var isTransient: Bool {
        if final { return false }
        if connectionLost { return true }
        guard let sqlstate else { return false }
        return ["40001", "40P01", "57P01", "57P02", "57P03", "55P03"].contains(sqlstate) || sqlstate.hasPrefix("08")
    }
}

/// The rows of one statement's answer, decoded from binary.
final class Rows {
    let result: OpaquePointer
    let count: Int
    let affected: Int

    init(_ result: OpaquePointer) {
        self.result = result
        count = Int(PQntuples(result))
        affected = Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    deinit { PQclear(result) }

    func isNull(_ row: Int, _ column: Int) -> Bool { PQgetisnull(result, Int32(row), Int32(column)) != 0 }

    private func raw(_ row: Int, _ column: Int) -> UnsafeBufferPointer<UInt8>? {
        guard row < count, column < Int(PQnfields(result)), !isNull(row, column),
              let pointer = PQgetvalue(result, Int32(row), Int32(column)) else { return nil }
        let length = Int(PQgetlength(result, Int32(row), Int32(column)))
        return UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: length)
    }

    private func unexpected(_ row: Int, _ column: Int, _ what: String) -> MetadataError {
        let name = PQfname(result, Int32(column)).map { String(cString: $0) } ?? "?"
        return .database("the database answered \(what) for column \(name) of row \(row)")
    }

    func intOrNil(_ row: Int, _ column: Int) throws -> Int64? {
        guard let bytes = raw(row, column) else {
            if isNull(row, column) { return nil }
            throw unexpected(row, column, "no value")
        }
        let width: Int
        switch PQftype(result, Int32(column)) {
        case 20: width = 8
        case 23: width = 4
        case 21: width = 2
        case 16: width = 1
        default: throw unexpected(row, column, "type \(PQftype(result, Int32(column))) where an integer belongs")
        }
        guard bytes.count == width else { throw unexpected(row, column, "\(bytes.count) bytes") }
        var value: Int64 = width == 1 ? 0 : (bytes[0] & 0x80 != 0 ? -1 : 0)
        for byte in bytes { value = (value << 8) | Int64(byte) }
        return value
    }

    func int(_ row: Int, _ column: Int) throws -> Int64 {
        guard let value = try intOrNil(row, column) else { throw unexpected(row, column, "NULL") }
        return value
    }

    func bool(_ row: Int, _ column: Int) throws -> Bool { try int(row, column) != 0 }

    /// An int8[] of one dimension without NULLs, in the binary array format: dimensions,
    /// a NULL flag and the element type, each dimension's length and lower bound, then
    /// every element as its length and its bytes.
    func ints(_ row: Int, _ column: Int) throws -> [Int64] {
        guard let bytes = raw(row, column) else { throw unexpected(row, column, "NULL") }
        func word(_ at: Int, _ width: Int) throws -> Int64 {
            guard at + width <= bytes.count else { throw unexpected(row, column, "a short array") }
            var value: Int64 = bytes[at] & 0x80 != 0 ? -1 : 0
            for byte in bytes[at..<(at + width)] { value = (value << 8) | Int64(byte) }
            return value
        }
        let dimensions = try word(0, 4)
        guard dimensions != 0 else { return [] }
        guard dimensions == 1, try word(4, 4) == 0, try word(8, 4) == 20 else {
            throw unexpected(row, column, "an array that is not of int8 in one dimension without NULLs")
        }
        let count = Int(try word(12, 4))
        var values: [Int64] = []
        values.reserveCapacity(count)
        var at = 20
        for _ in 0..<count {
            guard try word(at, 4) == 8 else { throw unexpected(row, column, "an element that is not 8 bytes") }
            values.append(try word(at + 4, 8))
            at += 12
        }
        return values
    }

    func bytesOrNil(_ row: Int, _ column: Int) throws -> [UInt8]? {
        if isNull(row, column) { return nil }
        guard let bytes = raw(row, column) else { throw unexpected(row, column, "no value") }
        return Array(bytes)
    }

    func bytes(_ row: Int, _ column: Int) throws -> [UInt8] {
        guard let value = try bytesOrNil(row, column) else { throw unexpected(row, column, "NULL") }
        return value
    }

    func textOrNil(_ row: Int, _ column: Int) throws -> String? {
        try bytesOrNil(row, column).map { String(decoding: $0, as: UTF8.self) }
    }

    func text(_ row: Int, _ column: Int) throws -> String {
        guard let value = try textOrNil(row, column) else { throw unexpected(row, column, "NULL") }
        return value
    }
}

/// One session with the server. Used by one thread at a time: the pool hands it out.
final class Connection: @unchecked Sendable {
    let raw: OpaquePointer
    /// When the session began: its server process started no later than this.
    let opened = ContinuousClock.now
    /// Statement text to the name it was prepared under on this connection.
    private var prepared: [String: String] = [:]
    /// Names are never reused: a statement whose first run failed is prepared again under
    /// a new one, whether or not the server kept the old.
    private var preparedNames = 0
    /// Round trips made: what a statement's cost is counted in over a network.
    private(set) var roundTrips = 0
    /// The session's `idle_in_transaction_session_timeout`, in milliseconds.
    let idleTransactionMillis: Int

    init(_ raw: OpaquePointer, idleTransactionMillis: Int) {
        self.raw = raw
        self.idleTransactionMillis = idleTransactionMillis
        // Notices ("relation already exists, skipping") are for people at a prompt; libpq
        // would print them to standard error.
        PQsetNoticeProcessor(raw, { _, _ in }, nil)
    }
    deinit { PQfinish(raw) }

    var isUsable: Bool {
        PQstatus(raw) == CONNECTION_OK && PQtransactionStatus(raw) == PQTRANS_IDLE && PQpipelineStatus(raw) == PQ_PIPELINE_OFF
    }

    var lastError: String {
        PQerrorMessage(raw).map { String(cString: $0) }?.trimmingWhitespace ?? "unknown error"
    }

    /// Runs one statement. Statements run often are prepared once per connection: later
    /// runs send only the parameters. The first run prepares it in the same round trip.
    @discardableResult
    func execute(_ sql: String, _ parameters: [Value] = [], deadline: ContinuousClock.Instant,
                 prepare: Bool = true) throws -> Rows {
        if prepare && prepared[sql] == nil { return try executePipelined([(sql, parameters)], deadline: deadline)[0] }
        try send(sql, parameters)
        roundTrips += 1
        return try waitForAnswer(deadline)
    }

    /// Runs statements in one round trip (libpq's pipeline mode), preparing those run for
    /// the first time on this connection, and answers each one's rows; the first failure
    /// is thrown once every answer is read.
    func executePipelined(_ statements: [(sql: String, parameters: [Value])], deadline: ContinuousClock.Instant) throws -> [Rows] {
        guard PQenterPipelineMode(raw) == 1 else { throw lost("cannot enter pipeline mode") }
        var preparing: [String] = []
        var isStatement: [Bool] = []
        for statement in statements {
            if prepared[statement.sql] == nil {
                let name = "netvol_\(preparedNames)"
                preparedNames += 1
                let types = statement.parameters.map(\.type)
                guard PQsendPrepare(raw, name, statement.sql, Int32(types.count), types) != 0 else { throw lost("cannot send") }
                prepared[statement.sql] = name
                preparing.append(statement.sql)
                isStatement.append(false)
            }
            try send(statement.sql, statement.parameters)
            isStatement.append(true)
        }
        guard PQpipelineSync(raw) == 1 else { throw lost("cannot send") }
        roundTrips += 1
        var answers: [Rows] = []
        var failure: DatabaseFailure?
        for statement in isStatement {
            do {
                let rows = try waitForAnswer(deadline)
                if statement { answers.append(rows) }
            } catch let error as DatabaseFailure where !error.connectionLost {
                // Statements after a failed one answer "aborted": the first failure says why.
                if failure == nil { failure = error }
            }
        }
        try waitForSync(deadline)
        guard PQexitPipelineMode(raw) == 1 else { throw lost("cannot leave pipeline mode") }
        if let failure {
            // Which of them the server kept is not known: they are prepared again when next run.
            for sql in preparing { prepared[sql] = nil }
            throw failure
        }
        return answers
    }

    /// Sends a statement, prepared if it was, with its parameters bound.
    private func send(_ sql: String, _ parameters: [Value]) throws {
        let encoded = parameters.map(\.encoded)
        let lengths = encoded.map { Int32($0?.count ?? 0) }
        let formats = parameters.map { Int32($0.isBinary ? 1 : 0) }
        let buffers: [UnsafeMutablePointer<CChar>?] = encoded.map { bytes in
            guard let bytes else { return nil }
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, bytes.count))
            bytes.withUnsafeBufferPointer { source in
                if let base = source.baseAddress {
                    UnsafeMutableRawPointer(buffer).copyMemory(from: base, byteCount: bytes.count)
                }
            }
            return buffer
        }
        defer { for buffer in buffers { buffer?.deallocate() } }
        let sent = buffers.map { UnsafePointer($0) }.withUnsafeBufferPointer { values -> Int32 in
            if let name = prepared[sql] {
                return PQsendQueryPrepared(raw, name, Int32(parameters.count), values.baseAddress, lengths, formats, 1)
            }
            let types = parameters.map(\.type)
            return PQsendQueryParams(raw, sql, Int32(parameters.count), types, values.baseAddress, lengths, formats, 1)
        }
        guard sent != 0 else { throw lost("cannot send") }
    }

    /// Several statements in one message, without parameters (schema changes).
    func script(_ sql: String, deadline: ContinuousClock.Instant) throws {
        guard PQsendQuery(raw, sql) != 0 else { throw lost("cannot send") }
        roundTrips += 1
        _ = try waitForAnswer(deadline)
    }

    fileprivate func lost(_ what: String) -> DatabaseFailure {
        DatabaseFailure(sqlstate: nil, message: "\(what): \(lastError)", connectionLost: true)
    }

    /// Waits for the answer to what was sent, at most until `deadline`; returns the last
    /// result, or throws the first error.
    private func waitForAnswer(_ deadline: ContinuousClock.Instant) throws -> Rows {
        var answer: Rows?
        var failure: DatabaseFailure?
        while true {
            try waitUntilReadable(deadline)
            guard let result = PQgetResult(raw) else { break }
            switch PQresultStatus(result) {
            case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
                answer = Rows(result)
            default:
                let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
                let message = (PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) })
                    ?? PQresultErrorMessage(result).map { String(cString: $0) }?.trimmingWhitespace ?? "unknown error"
                PQclear(result)
                if failure == nil {
                    failure = DatabaseFailure(sqlstate: state, message: message,
                                              connectionLost: PQstatus(raw) != CONNECTION_OK)
                }
            }
        }
        if let failure { throw failure }
        if PQstatus(raw) != CONNECTION_OK { throw lost("the connection dropped") }
        guard let answer else { throw lost("no answer") }
        return answer
    }
}

extension Connection {
    /// Waits until an answer can be read without blocking, at most until `deadline`.
    private func waitUntilReadable(_ deadline: ContinuousClock.Instant) throws {
        while PQisBusy(raw) != 0 {
            let left = deadline - .now
            let millis = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
            if millis <= 0 {
                // The server may still be working on it; the connection is in an
                // unknown state and is thrown away.
                throw DatabaseFailure(sqlstate: nil, message: "the server did not answer in time", connectionLost: true)
            }
            var descriptor = pollfd(fd: PQsocket(raw), events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(min(millis, 1000)))
            if ready < 0 && errno != EINTR { throw lost("cannot wait for the server") }
            if ready > 0 && PQconsumeInput(raw) == 0 { throw lost("the connection dropped") }
        }
    }

    /// Reads the end of a pipeline.
    fileprivate func waitForSync(_ deadline: ContinuousClock.Instant) throws {
        try waitUntilReadable(deadline)
        guard let result = PQgetResult(raw) else { throw lost("no end of pipeline") }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_PIPELINE_SYNC else { throw lost("no end of pipeline") }
    }
}

extension String {
    var trimmingWhitespace: String {
        var text = Substring(self)
        while let last = text.last, last.isWhitespace { text.removeLast() }
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        return String(text)
    }
}
