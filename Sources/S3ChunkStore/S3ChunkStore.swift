// S3ChunkStore: a volume's objects in an S3-compatible object store.
//
// Owns: naming objects as keys, one HTTP client shared by every call, request signing
// (SigV4), retrying what is worth retrying, and turning S3's answers into StoreError.
// Assumes: the bucket exists (`checkBucket` says so at create/mount), the credentials
// may read, write, list and delete under the prefix, and callers are libfuse worker
// threads or other plain threads that may block; never a NIO event loop, since every
// call here waits for its request to finish.
//
// Objects are immutable and written whole under fresh random ids, so the store needs no
// locking, no multipart uploads and no versioning: a PUT either creates the object or
// fails, and a GET of an object never races with a change to it.

import AsyncHTTPClient
import ChunkStore
import Crypto
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class S3ChunkStore: ChunkStore {
    public let configuration: S3Configuration
    let client: HTTPClient
    /// Object GETs and PUTs of a plain-HTTP endpoint (nil for HTTPS).
    let direct: DirectTransport?
    let signer: SignatureV4
    /// `https` or `http`, host and optional port, parsed once from the endpoint.
    let origin: String
    let hostHeader: String
    /// `prefix/`, or empty for a store at the top of the bucket.
    let keyPrefix: String
    let closed = Mutex(false)
    /// Set when a call gave up because the server could not be reached; cleared by the
    /// next answer. While it is set, a call first asks whether the server answers at all
    /// (`probe`, at most `outageProbe`) and fails at once if not: with the server known
    /// to be down, every request of a `cp -R` (and the kernel's second try of a failed
    /// readahead, and the retries of fsync and close) waiting the full deadline would turn
    /// an outage into minutes of hung I/O, while the first call already waited for it.
    let outage = Mutex(false)
    static let outageProbe: Duration = .seconds(1)
    /// Requests sent (every attempt), and attempts that were retries: for the metrics.
    let requestsSent = Atomic<Int>(0)
    let retriesSent = Atomic<Int>(0)

    /// Requests sent to the server so far, and how many of them repeated a failed one.
    public var requestCounts: (requests: Int, retries: Int) {
        (requestsSent.load(ordering: .relaxed), retriesSent.load(ordering: .relaxed))
    }

    /// Errors and listings are read into memory; more than this is not an S3 reply.
    static let replyLimit = 16 << 20

    /// Prepares the client; nothing is sent until the first call (use `checkBucket` to
    /// find out early whether the bucket is there and the credentials work).
    public init(configuration: S3Configuration) throws(StoreError) {
        guard let url = URL(string: configuration.endpoint), let scheme = url.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty,
              url.path.isEmpty || url.path == "/", url.query == nil
        else {
            throw .io(errno: EINVAL, "invalid S3 endpoint \(configuration.endpoint): expected http://host[:port] or https://host[:port]")
        }
        guard !configuration.bucket.isEmpty, !configuration.bucket.contains("/") else {
            throw .io(errno: EINVAL, "invalid S3 bucket name '\(configuration.bucket)'")
        }
        self.configuration = configuration
        let bracketed = host.contains(":") ? "[\(host)]" : host
        let port = url.port.map { ":\($0)" } ?? ""
        let defaultPort = scheme == "https" ? 443 : 80
        origin = "\(scheme)://\(bracketed)\(port)"
        hostHeader = url.port == nil || url.port == defaultPort ? bracketed : "\(bracketed)\(port)"
        let trimmed = configuration.prefix.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
        keyPrefix = trimmed.isEmpty ? "" : trimmed + "/"
        signer = SignatureV4(credentials: configuration.credentials, region: configuration.region, service: "s3")

        var http = HTTPClient.Configuration()
        http.timeout = .init(connect: configuration.connectTimeout.timeAmount, read: configuration.readTimeout.timeAmount)
        http.redirectConfiguration = .disallow
        // A refused connection is a failed attempt for `perform` to count and back off
        // from: left to the pool, it would wait out the whole request deadline retrying
        // by itself, and keep refusing to connect for seconds after the server is back.
        http.connectionPool.retryConnectionEstablishment = false
        http.decompression = .disabled
        // AHC's default of 8 connections would queue a reader's own fetch behind the
        // cache's eight prefetches, and one file's eight uploads behind another's.
        http.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 32
        client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http)
        direct = scheme == "http"
            ? DirectTransport(host: host, port: url.port ?? defaultPort, connectTimeout: configuration.connectTimeout,
                              readTimeout: configuration.readTimeout)
            : nil
    }

    deinit { close() }

    /// Shuts the HTTP client down (waiting at most a few seconds); calls after this fail.
    public func close() {
        let wasClosed = closed.withLock { closed in
            defer { closed = true }
            return closed
        }
        guard !wasClosed else { return }
        direct?.closeAll()
        let done = DispatchSemaphore(value: 0)
        client.shutdown().whenComplete { _ in done.signal() }
        _ = done.wait(timeout: .now() + 5)
    }

    // MARK: Names

    /// `PREFIX/xx/<16 hex digits>`, with `xx` the id's low byte. S3 scales request rates
    /// per key prefix, and ids are random, so the 256 `xx/` prefixes spread a volume's
    /// traffic evenly; it is also the layout of a local store, which keeps the two
    /// easy to compare and copy between.
    func key(of id: ObjectID) -> String {
        let hex = id.description
        return keyPrefix + hex.suffix(2) + "/" + hex
    }

    /// The id a listed key names, or nil for keys that are not ours (anything else
    /// someone put under the prefix is left alone).
    func id(ofKey key: String) -> ObjectID? {
        guard key.hasPrefix(keyPrefix) else { return nil }
        let parts = key.dropFirst(keyPrefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = ObjectID(hex: String(parts[1])), parts[0] == parts[1].suffix(2) else { return nil }
        return id
    }

    var location: String { "s3://\(configuration.bucket)/\(keyPrefix)" }

    // MARK: ChunkStore

    public func put(_ id: ObjectID, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        let what = "cannot write object \(id) to \(location)"
        // `If-None-Match: *` makes the server refuse (412) to replace an existing key, so
        // `put` can promise `.exists` the way a local O_EXCL create does. Ids are 64 random
        // bits: with a million objects in a volume, a new id meets an existing one with
        // odds of 1 in 2*10^13, and when it does, the refusal lets the layer above pick
        // another id. A server
        // that ignored the header would let such a collision overwrite the older object;
        // its readers would then fail their checksums (EIO), not read wrong data.
        //
        // The body is sent as UNSIGNED-PAYLOAD: hashing 4 MiB with SHA-256 was an eighth of
        // the daemon's CPU while writing, and it protected nothing the block checksums in
        // the metadata do not (every read verifies them). The request itself stays signed.
        var ambiguous = false
        let reply = try perform(what, method: .PUT, key: key(of: id),
                                headers: [("if-none-match", "*"), ("content-type", "application/octet-stream")],
                                bodyBytes: bytes, payloadHash: SignatureV4.unsignedPayload,
                                onTransportRetry: { ambiguous = true })
        switch reply.status {
        case 200..<300:
            return
        case 412:
            // A retry after an attempt whose answer was lost may find the object that
            // attempt wrote. Single-part uploads have the content's MD5 as ETag, so an
            // ETag equal to ours means the object is ours, not a collision.
            if ambiguous, let etag = try? headETag(id),
               etag == SignatureV4.hex(Insecure.MD5.hash(data: bytes)) {
                return
            }
            throw .exists(id)
        default:
            throw failure(reply, what)
        }
    }

    public func read(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        try readReportingSize(id, offset: offset, into: buffer, progress: nil).count
    }

    public func readReportingSize(_ id: ObjectID, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                                  progress: ReadProgress?) throws(StoreError) -> (count: Int, objectSize: Int?) {
        guard offset >= 0 else { throw .io(errno: EINVAL, "cannot read object \(id) at negative offset \(offset)") }
        if buffer.count == 0 {
            return (0, try size(of: id))  // still says whether the object exists
        }
        let what = "cannot read object \(id) from \(location)"
        let reply = try perform(what, method: .GET, key: key(of: id),
                                headers: [("range", "bytes=\(offset)-\(offset + buffer.count - 1)")],
                                window: ReadWindow(buffer: buffer, offset: offset, progress: progress))
        switch reply.status {
        case 200, 206:
            if let problem = reply.problem { throw .io(errno: EIO, "\(what): \(problem)") }
            // 200 is the whole object, from a server that ignored the range.
            let size = reply.status == 200 ? reply.headers.first(name: "content-length").flatMap { Int($0) }
                : ReplyCollector.rangeTotal(reply.headers.first(name: "content-range"))
            return (reply.copied, size)
        case 416:
            // The range starts at or past the end; `bytes */TOTAL` says where that is.
            return (0, ReplyCollector.rangeTotal(reply.headers.first(name: "content-range")))
        case 404 where reply.error.code != "NoSuchBucket":
            throw .notFound(id)
        default:
            throw failure(reply, what)
        }
    }

    /// Nothing to do ahead of time here: a cache in front of the store (CachedChunkStore)
    /// is what turns prefetches into early fetches.
    public func prefetch(_ id: ObjectID) {}

    public func size(of id: ObjectID) throws(StoreError) -> Int {
        let what = "cannot find the size of object \(id) in \(location)"
        let reply = try perform(what, method: .HEAD, key: key(of: id))
        switch reply.status {
        case 200..<300:
            guard let text = reply.headers.first(name: "content-length"), let size = Int(text), size >= 0 else {
                throw .io(errno: EIO, "\(what): the reply has no valid Content-Length")
            }
            return size
        case 404:
            throw .notFound(id)
        default:
            throw failure(reply, what)
        }
    }

    func headETag(_ id: ObjectID) throws(StoreError) -> String? {
        let reply = try perform("cannot check object \(id) in \(location)", method: .HEAD, key: key(of: id))
        guard (200..<300).contains(reply.status), let etag = reply.headers.first(name: "etag") else { return nil }
        return etag.trimmingCharacters(in: CharacterSet(charactersIn: "\"")).lowercased()
    }

    public func delete(_ id: ObjectID) throws(StoreError) {
        let what = "cannot delete object \(id) from \(location)"
        let reply = try perform(what, method: .DELETE, key: key(of: id))
        switch reply.status {
        case 200..<300:
            return
        case 404 where reply.error.code != "NoSuchBucket":
            return  // already gone
        default:
            throw failure(reply, what)
        }
    }

    public func list() throws(StoreError) -> [ObjectID] {
        let what = "cannot list \(location)"
        var ids: [ObjectID] = []
        var token: String?
        repeat {
            let page = try listPage(what, maxKeys: configuration.listPageSize, continuationToken: token)
            ids += page.keys.compactMap(id(ofKey:))
            token = page.continuationToken
        } while token != nil
        return ids
    }

    func listPage(_ what: String, maxKeys: Int, continuationToken: String?) throws(StoreError) -> ListPage {
        var query = [("list-type", "2"), ("prefix", keyPrefix), ("max-keys", String(max(1, maxKeys)))]
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        let reply = try perform(what, method: .GET, key: nil, query: query)
        guard (200..<300).contains(reply.status) else { throw failure(reply, what) }
        guard let page = ListPage(reply.bodyData) else { throw .io(errno: EIO, "\(what): the server sent a listing that cannot be read") }
        return page
    }

    // MARK: Bucket

    /// Lists at most one key, which needs the bucket to exist, the endpoint to answer
    /// and the credentials to be accepted: the failure says which of these is wrong, in
    /// words meant for the person who typed the command.
    public func checkBucket() throws(StoreError) {
        _ = try listPage("cannot use \(location) at \(configuration.endpoint)", maxKeys: 1, continuationToken: nil)
    }

    /// Creates the bucket; one that already exists and is ours is fine.
    public func createBucket() throws(StoreError) {
        let what = "cannot create bucket \(configuration.bucket) at \(configuration.endpoint)"
        // Outside us-east-1, AWS wants the region repeated in the body.
        var body: ByteBuffer?
        var payloadHash = SignatureV4.emptyPayloadHash
        if configuration.region != "us-east-1" {
            let xml = "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + "<LocationConstraint>\(configuration.region)</LocationConstraint></CreateBucketConfiguration>"
            body = ByteBuffer(string: xml)
            payloadHash = SignatureV4.hexSHA256(Array(xml.utf8))
        }
        let reply = try perform(what, method: .PUT, key: nil, body: body, payloadHash: payloadHash)
        if (200..<300).contains(reply.status) || reply.error.code == "BucketAlreadyOwnedByYou" { return }
        throw failure(reply, what)
    }

    // MARK: Requests

    /// The error for an answer the caller did not expect, in words a user can act on.
    func failure(_ reply: S3Reply, _ what: String) -> StoreError {
        let error = reply.error
        let code = error.code ?? "HTTP \(reply.status)"
        switch (reply.status, error.code) {
        case (_, "NoSuchBucket"):
            return .io(errno: EIO, "\(what): no such bucket '\(configuration.bucket)'")
        case (403, "SignatureDoesNotMatch"):
            return .io(errno: EIO, "\(what): access denied, the request signature does not match (wrong secret access key?)")
        case (403, "RequestTimeTooSkewed"):
            return .io(errno: EIO, "\(what): access denied, this machine's clock is too far from the server's (RequestTimeTooSkewed)")
        case (403, "InvalidAccessKeyId"):
            return .io(errno: EIO, "\(what): access denied, the access key id is not known to the server")
        case (403, _):
            return .io(errno: EIO, "\(what): access denied (\(code))")
        default:
            let message = error.message.map { ": \($0)" } ?? ""
            return .io(errno: EIO, "\(what): the server answered \(reply.status) (\(code)\(message))")
        }
    }

    /// Sends a request until it gets an answer worth giving the caller, retrying
    /// transport failures, 5xx and throttling with backoff, all within the configured
    /// deadline; past it the call fails with EIO and the last problem seen.
    func perform(_ what: String, method: HTTPMethod, key: String?, query: [(String, String)] = [],
                 headers extra: [(String, String)] = [], body: ByteBuffer? = nil, bodyBytes: UnsafeRawBufferPointer? = nil,
                 payloadHash: String = SignatureV4.emptyPayloadHash, window: ReadWindow? = nil,
                 onTransportRetry: () -> Void = {}) throws(StoreError) -> S3Reply {
        if closed.withLock({ $0 }) { throw .io(errno: EIO, "\(what): the store is closed") }
        if outage.withLock({ $0 }), !probe() {
            throw .io(errno: EIO, "\(what): \(configuration.endpoint) does not answer (it did not for a whole call either)")
        }
        let deadline = ContinuousClock.now + configuration.deadline
        var path = "/" + SignatureV4.uriEncode(configuration.bucket)
        if let key {
            path += "/" + key.split(separator: "/", omittingEmptySubsequences: false)
                .map { SignatureV4.uriEncode(String($0)) }.joined(separator: "/")
        }
        let canonicalQuery = SignatureV4.canonicalQuery(query)
        let target = path + (canonicalQuery.isEmpty ? "" : "?" + canonicalQuery)
        let url = origin + target
        // A read into a window, or a PUT of caller's bytes, takes the direct transport
        // where there is one.
        let transport = (method == .GET && window != nil) || (method == .PUT && bodyBytes != nil) ? direct : nil
        let body = body ?? (transport == nil ? bodyBytes.map { ByteBuffer(bytes: $0) } : nil)
        var lastProblem = "no attempt was made"
        var attempt = 0
        while true {
            let amzDate = SignatureV4.amzDate(secondsSince1970: time(nil))
            var headers = extra + [("host", hostHeader), ("x-amz-content-sha256", payloadHash), ("x-amz-date", amzDate)]
            if let token = configuration.credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
            let signed = signer.sign(method: method.rawValue, path: path, query: query, headers: headers,
                                     payloadHash: payloadHash, amzDate: amzDate)
            headers.append(("authorization", signed.authorization))
            var request: HTTPClient.Request?
            if transport == nil {
                do {
                    request = try HTTPClient.Request(url: url, method: method, headers: HTTPHeaders(headers),
                                                     body: body.map { .byteBuffer($0) })
                } catch {
                    throw .io(errno: EINVAL, "\(what): invalid request URL (\(describe(error)))")
                }
            }
            requestsSent.add(1, ordering: .relaxed)
            if attempt > 0 { retriesSent.add(1, ordering: .relaxed) }
            let outcome = if let request {
                executeBlocking(client, request, window: window, bodyLimit: Self.replyLimit, deadline: deadline)
            } else {
                transport!.execute(method: method.rawValue, target: target, headers: headers, body: bodyBytes,
                                   window: window, bodyLimit: Self.replyLimit, deadline: deadline)
            }
            switch outcome {
            case .success(let reply):
                outage.withLock { $0 = false }
                let code = reply.status >= 400 ? reply.error.code : nil
                guard Self.isRetryable(reply.status, code) else { return reply }
                lastProblem = "the server answered \(reply.status)" + (code.map { " (\($0))" } ?? "")
            case .failure(.transport(let problem)):
                lastProblem = problem
                onTransportRetry()
            case .failure(.permanent(let problem)):
                throw .io(errno: EIO, "\(what): \(problem)")
            }
            let pause = backoff(attempt: attempt)
            attempt += 1
            guard ContinuousClock.now + pause < deadline else {
                outage.withLock { $0 = true }
                throw .io(errno: EIO, "\(what): cannot reach \(configuration.endpoint) within \(configuration.deadline.inSeconds) s (last: \(lastProblem))")
            }
            Thread.sleep(forTimeInterval: pause.inSeconds)
        }
    }

    /// Whether the server answers anything (an unsigned HEAD of the endpoint: any status
    /// will do) within `outageProbe`; clears `outage` if it does.
    func probe() -> Bool {
        guard let request = try? HTTPClient.Request(url: origin + "/", method: .HEAD) else { return false }
        switch executeBlocking(client, request, window: nil, bodyLimit: 0, deadline: .now + Self.outageProbe) {
        case .success:
            outage.withLock { $0 = false }
            return true
        case .failure:
            return false
        }
    }

    /// 5xx (SlowDown is a 503), 429 and S3's own "try again" codes.
    static func isRetryable(_ status: UInt, _ code: String?) -> Bool {
        if status >= 500 || status == 429 || status == 408 { return true }
        switch code {
        case "SlowDown", "RequestTimeout", "InternalError", "ConditionalRequestConflict": return true
        default: return false
        }
    }
}
