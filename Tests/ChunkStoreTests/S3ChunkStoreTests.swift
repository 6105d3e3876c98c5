import Foundation
import Testing
@testable import CachedChunkStore
import ChunkStore
import Crypto
@testable import S3ChunkStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP port held by a socket of ours. Listening, it accepts connections (the
/// kernel completes them from the backlog) and never answers: a server that hangs. Not
/// listening, it refuses them, as a port where nothing runs does, and no other program
/// can take it until it is released.
final class HeldPort {
    private let fd = Mutex<Int32>(-1)
    let port: UInt16

    init(listening: Bool = true) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && (!listening || listen(fd, 16) == 0) && getsockname(fd, raw, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw StoreError.io(errno: errno, "cannot listen") }
        self.fd.withLock { $0 = fd }
        port = UInt16(bigEndian: address.sin_port)
    }

    /// Frees the port for a server to start on.
    func release() {
        fd.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit { release() }
}

@Suite struct S3ChunkStoreTests {
    func configuration(endpoint: String, bucket: String = TestS3.bucket, secret: String? = nil) -> S3Configuration {
        var credentials = TestS3.credentials
        if let secret { credentials.secretAccessKey = secret }
        return S3Configuration(endpoint: endpoint, bucket: bucket, prefix: "faults", credentials: credentials,
                               deadline: .seconds(2), connectTimeout: .seconds(1), readTimeout: .seconds(1))
    }

    /// Runs `body`, which must fail with `.io` in at most `bound` seconds (a bound on
    /// never hanging, not a measure of speed), and gives its message.
    func ioFailure(within bound: Double, _ body: () throws -> Void) -> String? {
        let start = Date()
        var message: String?
        do {
            try body()
            Issue.record("expected an error")
        } catch {
            if case .io(_, let text)? = error as? StoreError { message = text } else { Issue.record("expected .io, got \(error)") }
        }
        #expect(Date().timeIntervalSince(start) < bound)
        return message
    }

    @Test func anEndpointWhereNothingListensFailsWithinTheDeadline() throws {
        let store = try S3ChunkStore(configuration: configuration(endpoint: "http://127.0.0.1:1"))
        defer { store.close() }
        let message = ioFailure(within: 2 + 8) {
            var buffer = [UInt8](repeating: 0, count: 10)
            _ = try buffer.withUnsafeMutableBytes { buffer in try store.read(ObjectID.random(), offset: 0, into: buffer) }
        }
        #expect(message?.contains("cannot reach http://127.0.0.1:1") == true)
        // The first call found the endpoint away: the next is told so without waiting.
        #expect(ioFailure(within: 2 + 8) { try store.checkBucket() }?.contains("does not answer") == true)
    }

    @Test func aServerThatNeverAnswersFailsWithinTheDeadline() throws {
        let server = try HeldPort()
        let store = try S3ChunkStore(configuration: configuration(endpoint: "http://127.0.0.1:\(server.port)"))
        defer { store.close() }
        let message = ioFailure(within: 2 + 8) { _ = try store.size(of: ObjectID.random()) }
        #expect(message?.contains("cannot reach") == true)
    }

    @Test func invalidEndpointsAreRefusedAtOnce() {
        for endpoint in ["127.0.0.1:9000", "ftp://host", "http://", "http://host/path"] {
            #expect(throws: StoreError.self) { try S3ChunkStore(configuration: configuration(endpoint: endpoint)) }
        }
    }

    @Test func checkBucketAcceptsAWorkingSetup() throws {
        guard let endpoint = TestS3.endpoint(for: "checkBucketAcceptsAWorkingSetup") else { return }
        try TestS3.bucketCreated.get()
        let store = try S3ChunkStore(configuration: configuration(endpoint: endpoint))
        defer { store.close() }
        try store.checkBucket()
    }

    @Test func aWrongSecretIsReportedAsAccessDenied() throws {
        guard let endpoint = TestS3.endpoint(for: "aWrongSecretIsReportedAsAccessDenied") else { return }
        try TestS3.bucketCreated.get()
        let store = try S3ChunkStore(configuration: configuration(endpoint: endpoint, secret: "not-the-secret"))
        defer { store.close() }
        let message = ioFailure(within: 10) { try store.checkBucket() }
        #expect(message?.contains("access denied") == true)
        #expect(message?.contains("not-the-secret") == false)
        let id = ObjectID.random()
        #expect(ioFailure(within: 10) { try bytes(10).withUnsafeBytes { buffer in try store.put(id, buffer) } }?
            .contains("access denied") == true)
    }

    @Test func aMissingBucketIsReportedAsSuch() throws {
        guard let endpoint = TestS3.endpoint(for: "aMissingBucketIsReportedAsSuch") else { return }
        let store = try S3ChunkStore(configuration: configuration(endpoint: endpoint, bucket: "netvol-missing-\(UInt32.random(in: 0...UInt32.max))"))
        defer { store.close() }
        #expect(ioFailure(within: 10) { try store.checkBucket() }?.contains("no such bucket") == true)
        // A read must not mistake a missing bucket for a missing object.
        #expect(ioFailure(within: 10) {
            var buffer = [UInt8](repeating: 0, count: 10)
            _ = try buffer.withUnsafeMutableBytes { buffer in try store.read(ObjectID.random(), offset: 0, into: buffer) }
        }?.contains("no such bucket") == true)
    }

    /// The no-overwrite check of a retried PUT relies on this.
    @Test func theETagOfAnObjectIsTheMD5OfItsBytes() throws {
        guard let endpoint = TestS3.endpoint(for: "theETagOfAnObjectIsTheMD5OfItsBytes") else { return }
        try TestS3.bucketCreated.get()
        let store = try S3ChunkStore(configuration: configuration(endpoint: endpoint))
        defer { store.removeEverything() }
        let id = ObjectID.random()
        try bytes(1000).withUnsafeBytes { try store.put(id, $0) }
        #expect(try store.headETag(id) == SignatureV4.hex(Insecure.MD5.hash(data: bytes(1000))))
    }

    @Test func keysAreFannedOutUnderThePrefix() throws {
        let store = try S3ChunkStore(configuration: S3Configuration(
            endpoint: "http://127.0.0.1:1", bucket: "b", prefix: "/volumes/one/", credentials: TestS3.credentials))
        defer { store.close() }
        let id = ObjectID(rawValue: 0x0123_4567_89ab_cdef)
        #expect(store.key(of: id) == "volumes/one/ef/0123456789abcdef")
        #expect(store.id(ofKey: store.key(of: id)) == id)
        #expect(store.id(ofKey: "volumes/one/ee/0123456789abcdef") == nil)
        #expect(store.id(ofKey: "volumes/other/ef/0123456789abcdef") == nil)
    }

    @Test func listingsAndErrorsAreParsed() {
        let page = ListPage(Data("""
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult><Name>b</Name><Contents><Key>p/01/0000000000000001</Key><Size>3</Size></Contents>\
            <Contents><Key>p/02/0000000000000002</Key></Contents><IsTruncated>true</IsTruncated>\
            <NextContinuationToken>abc/+=</NextContinuationToken></ListBucketResult>
            """.utf8))
        #expect(page?.keys == ["p/01/0000000000000001", "p/02/0000000000000002"])
        #expect(page?.continuationToken == "abc/+=")
        #expect(ListPage(Data("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>".utf8)) == nil)
        let error = S3ErrorReply(Data("<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>".utf8))
        #expect(error.code == "SlowDown" && error.message == "Reduce your rate")
        #expect(S3ChunkStore.isRetryable(503, "SlowDown") && S3ChunkStore.isRetryable(500, nil))
        #expect(!S3ChunkStore.isRetryable(403, "AccessDenied") && !S3ChunkStore.isRetryable(404, "NoSuchKey"))
    }
}

/// How the client meets a server that throttles, fails, or ignores what it is sent.
@Suite struct S3ClientBehaviourTests {
    func store(_ server: ScriptedServer, deadline: Duration = .seconds(10)) throws -> S3ChunkStore {
        try S3ChunkStore(configuration: S3Configuration(
            endpoint: server.endpoint, bucket: "bucket", prefix: "volume",
            credentials: S3Credentials(accessKeyID: "AKID", secretAccessKey: "the-secret", sessionToken: "the-token"),
            deadline: deadline, connectTimeout: .seconds(1), readTimeout: .seconds(1)))
    }

    static let slowDown = ScriptedServer.Answer(
        status: .serviceUnavailable,
        body: "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")

    @Test func serverErrorsAndThrottlingAreRetried() throws {
        let server = try ScriptedServer([.init(status: .internalServerError), Self.slowDown,
                                         .init(status: .ok, headers: [("content-length", "5")])])
        let store = try store(server)
        defer { store.close() }
        #expect(try store.size(of: ObjectID(rawValue: 0xab)) == 5)
        #expect(server.requests.count == 3)
        #expect(server.requests.allSatisfy { $0.method == .HEAD && $0.uri == "/bucket/volume/ab/00000000000000ab" })
    }

    @Test func throttlingThatNeverEndsFailsAtTheDeadline() throws {
        let server = try ScriptedServer([Self.slowDown])
        let store = try store(server, deadline: .seconds(2))
        defer { store.close() }
        let start = ContinuousClock.now
        #expect {
            try store.delete(ObjectID.random())
        } throws: { error in
            guard case .io(let code, let message)? = error as? StoreError else { return false }
            return code == EIO && message.contains("SlowDown")
        }
        #expect(ContinuousClock.now - start < .seconds(2 + 8))
        #expect(server.requests.count > 1)
    }

    @Test func clientErrorsAreNotRetried() throws {
        let server = try ScriptedServer([.init(status: .forbidden, body: "<Error><Code>AccessDenied</Code></Error>")])
        let store = try store(server)
        defer { store.close() }
        #expect(throws: StoreError.self) { try store.list() }
        #expect(server.requests.count == 1)
    }

    @Test func aServerThatIgnoresRangeStillGivesTheBytesAsked() throws {
        let server = try ScriptedServer([.init(status: .ok, body: "0123456789")])
        let store = try store(server)
        defer { store.close() }
        var buffer = [UInt8](repeating: 0, count: 4)
        let count = try buffer.withUnsafeMutableBytes { try store.read(ObjectID.random(), offset: 3, into: $0) }
        #expect(count == 4 && String(decoding: buffer, as: UTF8.self) == "3456")
        #expect(server.requests.first?.headers["range"] == ["bytes=3-6"])
    }

    @Test func aRangedReadReportsTheObjectsSize() throws {
        let server = try ScriptedServer([
            .init(status: .partialContent, headers: [("content-range", "bytes 0-3/10")], body: "0123"),
            .init(status: .ok, body: "0123456789"),
            .init(status: .rangeNotSatisfiable, headers: [("content-range", "bytes */10")]),
        ])
        let store = try store(server)
        defer { store.close() }
        var buffer = [UInt8](repeating: 0, count: 4)
        // What a cache's waiting readers are told as the bytes land.
        let told = Mutex<(landed: Int, size: Int?)>((0, nil))
        let progress: ReadProgress = { landed, size in told.withLock { $0 = (max($0.landed, landed), size) } }
        let ranged = try buffer.withUnsafeMutableBytes {
            try store.readReportingSize(ObjectID.random(), offset: 0, into: $0, progress: progress)
        }
        #expect(ranged.count == 4 && ranged.objectSize == 10)
        #expect(told.withLock { $0.landed == 4 && $0.size == 10 })
        told.withLock { $0 = (0, nil) }
        let whole = try buffer.withUnsafeMutableBytes {
            try store.readReportingSize(ObjectID.random(), offset: 0, into: $0, progress: progress)
        }
        #expect(whole.count == 4 && whole.objectSize == 10)
        #expect(told.withLock { $0.landed == 4 && $0.size == 10 })
        let past = try buffer.withUnsafeMutableBytes { try store.readReportingSize(ObjectID.random(), offset: 20, into: $0) }
        #expect(past.count == 0 && past.objectSize == 10)
        #expect(server.requests.allSatisfy { $0.method == .GET })
    }

    @Test func aCacheFetchesAnObjectWithOneGetAndNoHead() throws {
        let body = String(repeating: "x", count: 1000)
        let server = try ScriptedServer([.init(status: .partialContent, headers: [("content-range", "bytes 0-999/1000")], body: body)])
        let store = try store(server)
        defer { store.close() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("netvol-cache-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = try CachedChunkStore(directory: directory, capacityBytes: 1 << 20, backing: store)
        let id = ObjectID.random()
        for _ in 0..<3 {
            var buffer = [UInt8](repeating: 0, count: 1000)
            #expect(try buffer.withUnsafeMutableBytes { try cache.read(id, offset: 0, into: $0) } == 1000)
            #expect(String(decoding: buffer, as: UTF8.self) == body)
        }
        #expect(server.requests.map(\.method) == [.GET])
        #expect(server.requests.first?.headers["range"] == ["bytes=0-\(CachedChunkStore.fetchPiece - 1)"])
    }

    @Test func putsAreConditionalSignedAndCarryTheSessionToken() throws {
        let server = try ScriptedServer([.init(status: .ok), .init(status: .preconditionFailed)])
        let store = try store(server)
        defer { store.close() }
        let id = ObjectID.random()
        try bytes(10).withUnsafeBytes { try store.put(id, $0) }
        #expect(throws: StoreError.exists(id)) { try bytes(10).withUnsafeBytes { try store.put(id, $0) } }
        let head = try #require(server.requests.first)
        #expect(head.method == .PUT)
        #expect(head.headers["if-none-match"] == ["*"])
        #expect(head.headers["x-amz-security-token"] == ["the-token"])
        let authorization = head.headers["authorization"].first ?? ""
        #expect(authorization.hasPrefix("AWS4-HMAC-SHA256 Credential=AKID/"))
        #expect(authorization.contains("if-none-match;x-amz-content-sha256;x-amz-date;x-amz-security-token"))
        #expect(!authorization.contains("the-secret"))
    }

    /// A PUT whose answer was lost is sent again, and then finds the object there: the
    /// object is ours if its ETag is our bytes' MD5, and someone else's otherwise.
    @Test(arguments: [true, false])
    func aRetriedPutTellsItsOwnObjectFromACollision(ours: Bool) throws {
        let md5OfBytes10 = SignatureV4.hex(Insecure.MD5.hash(data: bytes(10)))
        let etag = ours ? md5OfBytes10 : String(repeating: "0", count: 32)
        let server = try ScriptedServer([.init(status: .ok, hangUp: true), .init(status: .preconditionFailed),
                                         .init(status: .ok, headers: [("etag", "\"\(etag)\""), ("content-length", "10")])])
        let store = try store(server)
        defer { store.close() }
        let id = ObjectID.random()
        if ours {
            try bytes(10).withUnsafeBytes { try store.put(id, $0) }
        } else {
            #expect(throws: StoreError.exists(id)) { try bytes(10).withUnsafeBytes { try store.put(id, $0) } }
        }
        #expect(server.requests.map(\.method) == [.PUT, .PUT, .HEAD])
    }

    /// How a server can be away.
    enum Absence: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// Nothing listens on its port.
        case refused
        /// Connections open, and each is closed without an answer.
        case hangsUp
        /// Connections open, and nothing ever answers.
        case silent

        var testDescription: String { rawValue }
    }

    /// The first call that finds the server away waits out its deadline. While the server
    /// stays away, the calls after it fail with EIO without waiting it again: a `cp -R`
    /// would otherwise hang for a deadline per request. The first call once a server
    /// answers on the port reaches it, on the same store.
    @Test(arguments: Absence.allCases)
    func callsFailFastWhileTheServerIsKnownAwayAndReachItOnceItIsBack(_ absence: Absence) throws {
        let away: (port: Int, leave: () -> Void)
        switch absence {
        case .refused:
            let held = try HeldPort(listening: false)
            away = (Int(held.port), held.release)
        case .hangsUp:
            let server = try ScriptedServer([.init(status: .ok, hangUp: true)])
            away = (server.channel.localAddress?.port ?? 0, server.stop)
        case .silent:
            let held = try HeldPort()
            away = (Int(held.port), held.release)
        }
        // Long enough that a call waiting it out, which stops short of it by at most one
        // backoff pause (2 s), is told apart from a fast failure on a loaded machine.
        let deadline = 5.0
        let store = try S3ChunkStore(configuration: S3Configuration(
            endpoint: "http://127.0.0.1:\(away.port)", bucket: "bucket", prefix: "volume",
            credentials: S3Credentials(accessKeyID: "AKID", secretAccessKey: "the-secret"),
            deadline: .seconds(deadline), connectTimeout: .seconds(1), readTimeout: .seconds(1)))
        defer { store.close() }
        let id = ObjectID(rawValue: 0xab)

        func failure(_ body: () throws -> Void) -> (seconds: Double, message: String) {
            let start = ContinuousClock.now
            var message = ""
            do {
                try body()
                Issue.record("expected EIO; the call succeeded")
            } catch {
                if case .io(EIO, let text)? = error as? StoreError { message = text } else { Issue.record("expected EIO, got \(error)") }
            }
            return ((ContinuousClock.now - start).inSeconds, message)
        }

        let first = failure { _ = try store.size(of: id) }
        #expect(first.message.contains("cannot reach"), "\(first.message)")
        #expect(first.seconds > deadline - 2.1 && first.seconds < deadline + 8, "\(first.seconds) s")

        let calls: [(String, () throws -> Void)] = [
            ("read", { _ = try store.read(id, count: 10) }),
            ("put", { try store.put(ObjectID.random(), bytes(10)) }),
            ("size", { _ = try store.size(of: id) }),
            ("delete", { try store.delete(id) }),
            ("list", { _ = try store.list() }),
        ]
        // Twice over: the longer an outage lasts, the longer HTTP clients tend to back off
        // from connecting, and the server's return must be noticed all the same.
        for (name, call) in calls + calls {
            let later = failure(call)
            #expect(later.message.contains("does not answer"), "\(name): \(later.message)")
            // At most one probe of 1 s each.
            #expect(later.seconds < 2.5, "\(name) took \(later.seconds) s")
        }

        away.leave()
        let server = try ScriptedServer([.init(status: .ok, headers: [("content-length", "5")])], port: away.port)
        defer { server.stop() }
        #expect(try store.size(of: id) == 5)
        #expect(try store.size(of: id) == 5)
        // One probe, and then requests as before the outage: the answer to it ended it.
        let key = "/bucket/volume/ab/00000000000000ab"
        #expect(server.requests.map(\.uri) == ["/", key, key])
    }

    @Test func listingFollowsContinuationTokens() throws {
        func page(_ keys: [String], next: String?) -> ScriptedServer.Answer {
            let contents = keys.map { "<Contents><Key>volume/\($0.suffix(2))/\($0)</Key></Contents>" }.joined()
            let tail = next.map { "<IsTruncated>true</IsTruncated><NextContinuationToken>\($0)</NextContinuationToken>" }
                ?? "<IsTruncated>false</IsTruncated>"
            return .init(status: .ok, body: "<ListBucketResult>\(contents)\(tail)</ListBucketResult>")
        }
        let server = try ScriptedServer([page(["0000000000000001", "0000000000000002"], next: "a/b+c="),
                                         page(["0000000000000003"], next: nil)])
        let store = try store(server)
        defer { store.close() }
        #expect(try store.list().map(\.rawValue) == [1, 2, 3])
        #expect(server.requests.count == 2)
        #expect(server.requests.last?.uri.contains("continuation-token=a%2Fb%2Bc%3D") == true)
    }
}
