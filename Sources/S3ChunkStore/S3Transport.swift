import AsyncHTTPClient
import ChunkStore
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where the body of a successful ranged GET goes: straight into the caller's buffer,
/// so that a read allocates nothing the size of what it reads.
struct ReadWindow: @unchecked Sendable {
    // Unchecked: the buffer is only written under the collector's lock, and only until
    // the waiting caller abandons the collector (which it does before it returns).
    let buffer: UnsafeMutableRawBufferPointer
    /// The object offset of `buffer`'s first byte.
    let offset: Int
    /// Told of each part as it lands (see `ChunkStore.readReportingSize`).
    var progress: ReadProgress? = nil
}

/// What one attempt got back.
struct S3Reply {
    var status: UInt
    var headers: HTTPHeaders
    /// The body of an error or a listing; bounded, so a confused server cannot make us
    /// hold an arbitrary amount.
    var body: ByteBuffer
    /// Bytes copied into the read window, contiguous from its start.
    var copied: Int
    /// Set when the server answered a ranged GET with bytes we cannot place.
    var problem: String?

    var bodyData: Data { Data(body.readableBytesView) }
    var error: S3ErrorReply { S3ErrorReply(bodyData) }
}

/// Receives one response. AHC calls it on an event loop while the caller blocks; the
/// caller reads the result only after the request completed or after abandoning it.
final class ReplyCollector: HTTPClientResponseDelegate {
    typealias Response = Void

    private struct State {
        /// From the reply's head on.
        var body: BodySink?
        var abandoned = false
    }

    private let state = Mutex(State())
    private let window: ReadWindow?
    private let bodyLimit: Int

    init(window: ReadWindow?, bodyLimit: Int) {
        self.window = window
        self.bodyLimit = bodyLimit
    }

    /// After this the collector never touches the read window again.
    func abandon() { state.withLock { $0.abandoned = true } }

    var reply: S3Reply {
        state.withLock { $0.body?.reply } ?? S3Reply(status: 0, headers: [:], body: ByteBuffer(), copied: 0)
    }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        state.withLock { $0.body = BodySink(status: head.status.code, headers: head.headers, window: window, bodyLimit: bodyLimit) }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ part: ByteBuffer) -> EventLoopFuture<Void> {
        state.withLock { state in
            guard !state.abandoned else { return }
            part.withUnsafeReadableBytes { state.body?.take($0) }
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {}

    /// TOTAL in `bytes FIRST-LAST/TOTAL` or `bytes */TOTAL`; nil when it is `*` or missing.
    static func rangeTotal(_ header: String?) -> Int? {
        guard let header, header.hasPrefix("bytes "), let slash = header.lastIndex(of: "/") else { return nil }
        return Int(header[header.index(after: slash)...]).flatMap { $0 >= 0 ? $0 : nil }
    }

    /// The first byte's offset in `bytes FIRST-LAST/TOTAL`.
    static func rangeStart(_ header: String?) -> Int? {
        guard let header, header.hasPrefix("bytes ") else { return nil }
        return Int(header.dropFirst(6).prefix { $0 != "-" })
    }
}

/// Why an attempt did not get an HTTP answer.
enum AttemptFailure: Error {
    /// Worth another try: refused, reset, timed out, closed early.
    case transport(String)
    /// Trying again cannot help (the client is shut down, the URL is malformed).
    case permanent(String)
}

extension ContinuousClock.Instant {
    /// The same instant for NIO, whose clock is also monotonic but counted differently.
    var nioDeadline: NIODeadline {
        let remaining = ContinuousClock.now.duration(to: self)
        return NIODeadline.now() + .nanoseconds(max(0, remaining.inNanoseconds))
    }
}

extension Duration {
    var timeAmount: TimeAmount { .nanoseconds(inNanoseconds) }
}

/// Runs one request and blocks the calling thread (a libfuse worker, never an event
/// loop) until it is answered, fails, or `deadline` passes; the wait is bounded even if
/// AHC's own deadline were not honoured, and then the request is cancelled.
func executeBlocking(_ client: HTTPClient, _ request: HTTPClient.Request, window: ReadWindow?,
                     bodyLimit: Int, deadline: ContinuousClock.Instant) -> Result<S3Reply, AttemptFailure> {
    let collector = ReplyCollector(window: window, bodyLimit: bodyLimit)
    let task = client.execute(request: request, delegate: collector, deadline: deadline.nioDeadline)
    let done = DispatchSemaphore(value: 0)
    let outcome = Outcome()
    task.futureResult.whenComplete { result in
        outcome.result.withLock { $0 = result }
        done.signal()
    }
    let grace = ContinuousClock.now.duration(to: deadline) + .seconds(2)
    if done.wait(timeout: .now() + max(0, grace.inSeconds)) == .timedOut {
        collector.abandon()
        task.cancel()
        return .failure(.transport("no answer before the deadline"))
    }
    collector.abandon()
    switch outcome.result.withLock({ $0 }) {
    case .success?:
        return .success(collector.reply)
    case .failure(let error)?:
        if let error = error as? HTTPClientError,
           error == .alreadyShutdown || error == .invalidURL || error == .emptyHost || error == .emptyScheme {
            return .failure(.permanent(describe(error)))
        }
        return .failure(.transport(describe(error)))
    case nil:
        return .failure(.transport("the request ended without a result"))
    }
}

/// How a request ended, handed from the event loop to the waiting thread.
private final class Outcome: Sendable {
    let result = Mutex<Result<Void, any Error>?>(nil)
}

/// A transport error in words; errno-carrying errors say their strerror.
func describe(_ error: any Error) -> String {
    if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
    if let error = error as? HTTPClientError {
        switch error {
        case .connectTimeout: return "connection timed out"
        case .readTimeout: return "no data for too long"
        case .deadlineExceeded: return "request deadline exceeded"
        case .remoteConnectionClosed: return "connection closed by the server"
        default: return String(describing: error)
        }
    }
    if let error = error as? NIOConnectionError {
        if let first = error.connectionErrors.first { return describe(first.error) }
        if let dns = error.dnsAAAAError ?? error.dnsAError { return "cannot resolve \(error.host): \(dns)" }
    }
    return String(describing: error)
}

/// Full jitter on an exponential backoff: 50 ms doubling up to 2 s, so that many
/// clients retrying a struggling server spread out instead of arriving together.
func backoff(attempt: Int) -> Duration {
    let cap = min(2000, 50 << min(attempt, 10))
    return .milliseconds(Int.random(in: 0...cap))
}

/// Where a reply's body goes, for either transport: the read window for a successful
/// ranged GET, a bounded buffer for anything else.
struct BodySink {
    var reply: S3Reply
    let window: ReadWindow?
    let bodyLimit: Int
    /// Object offset of the next body byte to arrive.
    var position = 0
    var objectSize: Int?

    init(status: UInt, headers: HTTPHeaders, window: ReadWindow?, bodyLimit: Int) {
        reply = S3Reply(status: status, headers: headers, body: ByteBuffer(), copied: 0)
        self.bodyLimit = bodyLimit
        if let window, (200..<300).contains(status) {
            self.window = window
            position = status == 206 ? ReplyCollector.rangeStart(headers.first(name: "content-range")) ?? window.offset : 0
            objectSize = status == 206 ? ReplyCollector.rangeTotal(headers.first(name: "content-range"))
                : headers.first(name: "content-length").flatMap { Int($0) }
        } else {
            self.window = nil
        }
    }

    /// Where the next bytes may be received in place: the rest of the window, when they
    /// are the ones it waits for.
    func directTarget(upTo count: Int) -> UnsafeMutableRawBufferPointer? {
        guard let window, reply.problem == nil, position == window.offset + reply.copied, reply.copied < window.buffer.count,
              let base = window.buffer.baseAddress else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + reply.copied, count: min(count, window.buffer.count - reply.copied))
    }

    mutating func landedInPlace(_ count: Int) {
        reply.copied += count
        position += count
        window?.progress?(reply.copied, objectSize)
    }

    mutating func take(_ bytes: UnsafeRawBufferPointer) {
        guard let window else {
            let room = max(0, bodyLimit - reply.body.readableBytes)
            reply.body.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[0..<min(room, bytes.count)]))
            return
        }
        let start = max(position, window.offset)
        let end = min(position + bytes.count, window.offset + window.buffer.count)
        if start < end, reply.problem == nil {
            if start != window.offset + reply.copied {
                reply.problem = "the server sent bytes from \(start), expected \(window.offset + reply.copied)"
            } else if let target = window.buffer.baseAddress, let source = bytes.baseAddress {
                (target + (start - window.offset)).copyMemory(from: source + (start - position), byteCount: end - start)
                reply.copied += end - start
                window.progress?(reply.copied, objectSize)
            }
        }
        position += bytes.count
    }
}
