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
        var reply = S3Reply(status: 0, headers: [:], body: ByteBuffer(), copied: 0)
        var window: ReadWindow?
        /// Object offset of the next body byte to arrive.
        var position = 0
        /// The whole object's length, from the reply's head.
        var objectSize: Int?
        var abandoned = false
    }

    private let state: Mutex<State>
    private let bodyLimit: Int

    init(window: ReadWindow?, bodyLimit: Int) {
        self.state = Mutex(State(window: window))
        self.bodyLimit = bodyLimit
    }

    /// After this the collector never touches the read window again.
    func abandon() { state.withLock { $0.abandoned = true } }

    var reply: S3Reply { state.withLock { $0.reply } }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        state.withLock { state in
            state.reply.status = head.status.code
            state.reply.headers = head.headers
            if let window = state.window {
                // 206 starts where Content-Range says; a server that ignores Range sends
                // the whole object with 200, and we pick out the window ourselves.
                state.position = head.status.code == 206
                    ? Self.rangeStart(head.headers.first(name: "content-range")) ?? window.offset
                    : 0
                state.objectSize = head.status.code == 206 ? Self.rangeTotal(head.headers.first(name: "content-range"))
                    : head.headers.first(name: "content-length").flatMap { Int($0) }
            }
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ part: ByteBuffer) -> EventLoopFuture<Void> {
        state.withLock { state in
            guard !state.abandoned else { return }
            guard let window = state.window, (200..<300).contains(state.reply.status) else {
                var part = part
                let room = max(0, bodyLimit - state.reply.body.readableBytes)
                if let slice = part.readSlice(length: min(room, part.readableBytes)) {
                    state.reply.body.writeImmutableBuffer(slice)
                }
                return
            }
            part.withUnsafeReadableBytes { bytes in
                let start = max(state.position, window.offset)
                let end = min(state.position + bytes.count, window.offset + window.buffer.count)
                if start < end {
                    if start != window.offset + state.reply.copied {
                        state.reply.problem = "the server sent bytes from \(start), expected \(window.offset + state.reply.copied)"
                    } else if let target = window.buffer.baseAddress, let source = bytes.baseAddress {
                        (target + (start - window.offset)).copyMemory(from: source + (start - state.position), byteCount: end - start)
                        state.reply.copied += end - start
                        window.progress?(state.reply.copied, state.objectSize)
                    }
                }
                state.position += bytes.count
            }
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
