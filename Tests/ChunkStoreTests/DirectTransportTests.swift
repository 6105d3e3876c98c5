import Foundation
import Synchronization
import Testing
import ChunkStore
@testable import S3ChunkStore
#if canImport(Glibc)
import Glibc
#endif

/// A loopback server that answers each request with scripted raw bytes, in order (the
/// last answer again once they run out): replies framed in ways a well-behaved test
/// server never sends (chunked, cut short, without a length, in pieces), and
/// connections closed at chosen moments.
final class RawServer: @unchecked Sendable {
    // Unchecked: `listener` is set once; the rest is behind locks.
    struct Answer: Sendable {
        /// Written in this many pieces, a pause between them.
        var pieces: [String]
        var pause: Duration = .zero
        /// Close the connection once written.
        var close = false

        init(_ reply: String, close: Bool = false) { pieces = [reply]; self.close = close }
        init(pieces: [String], pause: Duration, close: Bool = false) {
            self.pieces = pieces
            self.pause = pause
            self.close = close
        }
    }

    let answers: [Answer]
    let listener: Int32
    let port: UInt16
    /// Each request's head and body, in order.
    let requests = Mutex<[(head: String, body: [UInt8])]>([])
    let connections = Atomic<Int>(0)

    init(_ answers: [Answer]) throws {
        self.answers = answers
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(listener, raw, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, raw, &length) == 0
            }
        }
        guard listening else { throw StoreError.io(errno: errno, "cannot listen") }
        port = UInt16(bigEndian: address.sin_port)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)) }

    deinit {
        stop()
        close(listener)
    }

    func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            connections.add(1, ordering: .relaxed)
            Thread.detachNewThread { [self] in serve(fd) }
        }
    }

    func serve(_ fd: Int32) {
        defer { close(fd) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            // One request: its head, then as many body bytes as its content-length says.
            var headEnd: Int?
            while headEnd == nil {
                headEnd = received.indices.dropLast(3).first { received[$0..<($0 + 4)].elementsEqual([13, 10, 13, 10]) }
                if headEnd != nil { break }
                let got = recv(fd, &buffer, buffer.count, 0)
                guard got > 0 else { return }
                received += buffer[0..<got]
            }
            let head = String(decoding: received[0..<headEnd!], as: UTF8.self)
            received.removeFirst(headEnd! + 4)
            let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            while received.count < length {
                let got = recv(fd, &buffer, buffer.count, 0)
                guard got > 0 else { return }
                received += buffer[0..<got]
            }
            let body = Array(received[0..<length])
            received.removeFirst(length)
            let index = requests.withLock { requests in
                requests.append((head, body))
                return requests.count - 1
            }
            let answer = answers[min(index, answers.count - 1)]
            for (number, piece) in answer.pieces.enumerated() {
                if number > 0 { Thread.sleep(forTimeInterval: answer.pause.inSeconds) }
                let bytes = Array(piece.utf8)
                guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { return }
            }
            if answer.close { return }
        }
    }
}

/// Object reads and writes on a plain-HTTP endpoint go over the store's own sockets
/// (`DirectTransport`): replies in every framing HTTP/1.1 allows, connections reused and
/// replaced, and transfers cut short.
@Suite struct DirectTransportTests {
    func store(_ server: RawServer) throws -> S3ChunkStore {
        try S3ChunkStore(configuration: S3Configuration(
            endpoint: server.endpoint, bucket: "bucket", prefix: "volume",
            credentials: S3Credentials(accessKeyID: "AKID", secretAccessKey: "the-secret"),
            deadline: .seconds(10), connectTimeout: .seconds(1), readTimeout: .seconds(1)))
    }

    func read(_ store: S3ChunkStore, offset: Int = 0, count: Int) throws -> String {
        var buffer = [UInt8](repeating: 0, count: count)
        let got = try buffer.withUnsafeMutableBytes { try store.read(ObjectID(rawValue: 0xab), offset: offset, into: $0) }
        return String(decoding: buffer[0..<got], as: UTF8.self)
    }

    static func partial(_ body: String, from start: Int = 0, of total: Int = 10, extra: String = "") -> String {
        "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes \(start)-\(start + body.utf8.count - 1)/\(total)\r\n"
            + "content-length: \(body.utf8.count)\r\n\(extra)\r\n\(body)"
    }

    @Test func chunkedAndPiecewiseRepliesLandWhole() throws {
        let chunked = "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-9/10\r\ntransfer-encoding: chunked\r\n\r\n"
            + "4\r\n0123\r\n6;ext=1\r\n456789\r\n0\r\n\r\n"
        let whole = Self.partial("0123456789")
        let server = try RawServer([
            .init(chunked),
            // Split inside the head, at its end, and inside the body.
            .init(pieces: [String(whole.prefix(20)), String(whole.dropFirst(20).prefix(whole.count - 24)), String(whole.suffix(4))],
                  pause: .milliseconds(50)),
        ])
        let store = try store(server)
        defer { store.close() }
        #expect(try read(store, count: 10) == "0123456789")
        #expect(try read(store, count: 10) == "0123456789")
        // Both on one connection, each request signed and ranged.
        #expect(server.connections.load(ordering: .relaxed) == 1)
        let heads = server.requests.withLock { $0.map(\.head) }
        #expect(heads.count == 2 && heads.allSatisfy { $0.hasPrefix("GET /bucket/volume/ab/00000000000000ab HTTP/1.1\r\n") })
        #expect(heads.allSatisfy { $0.contains("range: bytes=0-9") && $0.contains("authorization: AWS4-HMAC-SHA256 Credential=AKID/") })
        #expect(store.requestCounts.retries == 0)
    }

    @Test func aConnectionTheServerClosedIsReplacedWithoutARetry() throws {
        let server = try RawServer([.init(Self.partial("0123456789")), .init(Self.partial("0123456789"), close: true),
                                    .init(Self.partial("0123456789"))])
        let store = try store(server)
        defer { store.close() }
        #expect(try read(store, count: 10) == "0123456789")
        #expect(try read(store, count: 10) == "0123456789")
        // The server closes the connection while it waits in the pool.
        Thread.sleep(forTimeInterval: 0.2)
        #expect(try read(store, count: 10) == "0123456789")
        #expect(server.connections.load(ordering: .relaxed) == 2)
        #expect(store.requestCounts == (requests: 3, retries: 0))
    }

    @Test func aBodyCutShortIsFetchedAgain() throws {
        let cut = "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-9/10\r\ncontent-length: 10\r\n\r\n01234"
        let server = try RawServer([.init(cut, close: true), .init(Self.partial("0123456789"))])
        let store = try store(server)
        defer { store.close() }
        #expect(try read(store, count: 10) == "0123456789")
        #expect(store.requestCounts == (requests: 2, retries: 1))
    }

    @Test func aReplyWithoutALengthEndsWithItsConnection() throws {
        let unframed = "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 2-5/10\r\nconnection: close\r\n\r\n2345"
        let server = try RawServer([.init(unframed, close: true), .init(Self.partial("67", from: 6))])
        let store = try store(server)
        defer { store.close() }
        #expect(try read(store, offset: 2, count: 4) == "2345")
        #expect(try read(store, offset: 6, count: 2) == "67")
        #expect(server.connections.load(ordering: .relaxed) == 2)
    }

    @Test func bytesOutsideTheWindowAreDroppedAndMisplacedOnesRefused() throws {
        let server = try RawServer([
            // A whole object for a ranged read: only the window's bytes are kept.
            .init("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789"),
            // Bytes from elsewhere than asked.
            .init(Self.partial("2345", from: 2)),
        ])
        let store = try store(server)
        defer { store.close() }
        #expect(try read(store, offset: 3, count: 4) == "3456")
        #expect {
            _ = try read(store, offset: 0, count: 4)
        } throws: { error in
            guard case .io(EIO, let message)? = error as? StoreError else { return false }
            return message.contains("the server sent bytes from 2, expected 0")
        }
    }

    @Test func errorRepliesAreReadWhateverTheirFraming() throws {
        let xml = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
        let server = try RawServer([
            .init("HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n\(String(xml.utf8.count, radix: 16))\r\n\(xml)\r\n0\r\n\r\n"),
        ])
        let store = try store(server)
        defer { store.close() }
        #expect {
            _ = try read(store, count: 4)
        } throws: { error in
            guard case .io(EIO, let message)? = error as? StoreError else { return false }
            return message.contains("access denied (AccessDenied)")
        }
        #expect(server.requests.withLock { $0.count } == 1)
    }

    /// Past its first bytes a body is received in large steps (`SO_RCVLOWAT`); a body
    /// that trickles in slower than that is still progress, not silence, and its bytes
    /// reach readers as they come.
    @Test func aBodyThatTricklesInIsNotTakenForSilence() throws {
        let fast = String(repeating: "a", count: 400 << 10)
        let slow = (0..<40).map { String(repeating: Character(UnicodeScalar(UInt8(98 + $0 % 20))), count: 10 << 10) }
        let body = fast + slow.joined()
        let head = "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-\(body.utf8.count - 1)/\(body.utf8.count)\r\n"
            + "content-length: \(body.utf8.count)\r\n\r\n"
        // 40 pauses of 50 ms: twice the read timeout of 1 s, with bytes all along.
        let server = try RawServer([.init(pieces: [head + fast] + slow, pause: .milliseconds(50))])
        let store = try store(server)
        defer { store.close() }
        let steps = Mutex<[Int]>([])
        var buffer = [UInt8](repeating: 0, count: body.utf8.count)
        let (got, size) = try buffer.withUnsafeMutableBytes { target in
            try store.readReportingSize(ObjectID(rawValue: 0xab), offset: 0, into: target) { landed, _ in
                steps.withLock { $0.append(landed) }
            }
        }
        #expect(got == body.utf8.count && size == body.utf8.count)
        #expect(String(decoding: buffer, as: UTF8.self) == body)
        #expect(store.requestCounts == (requests: 1, retries: 0))
        // Readers saw the slow part arrive in steps, not all at its end.
        let slowSteps = steps.withLock { $0.filter { $0 > fast.utf8.count + head.utf8.count } }
        #expect(slowSteps.count >= 10, "\(slowSteps.count) steps")
    }

    @Test func putsSendTheCallersBytesAsTheirBody() throws {
        let server = try RawServer([.init("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")])
        let store = try store(server)
        defer { store.close() }
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try payload.withUnsafeBytes { try store.put(ObjectID(rawValue: 0xcd), $0) }
        let (head, body) = try #require(server.requests.withLock { $0.first })
        #expect(head.hasPrefix("PUT /bucket/volume/cd/00000000000000cd HTTP/1.1\r\n"))
        #expect(head.contains("content-length: 300000") && head.contains("if-none-match: *"))
        #expect(body == payload)
    }
}
