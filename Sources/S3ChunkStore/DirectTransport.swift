import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Object GETs and PUTs on plain-HTTP endpoints, over blocking sockets of its own: the
/// body of a GET is received straight into the reader's buffer, and a PUT's body is sent
/// from the caller's bytes. Through the general HTTP client, each byte of a cold read was
/// received into a buffer of the event loop's, copied out of it, and handed between
/// threads in parts of at most 64 KiB; that was a third of the daemon's CPU in a cold
/// read, where it competes for the cores with the object store's own.
///
/// Everything else (HEAD, DELETE, listings, buckets, and every request to an HTTPS
/// endpoint) goes through the general client. Each request here blocks its calling thread
/// (a libfuse worker or a fetching thread), as every call of the store does.
final class DirectTransport: Sendable {
    let host: String
    let port: String
    let connectTimeout: Duration
    let readTimeout: Duration
    /// Connections kept for the next request, the most recently used last.
    private let idle = Mutex<[IdleConnection]>([])

    struct IdleConnection {
        let fd: Int32
        let since: ContinuousClock.Instant
    }

    /// As many as the general client keeps per host (see `S3ChunkStore.init`).
    static let idleLimit = 32
    /// Servers close idle connections after some time of their own; a connection idle
    /// this long is not trusted to be open any more.
    static let idleLifetime: Duration = .seconds(20)
    /// A reply's status line and headers; S3's are a few hundred bytes.
    static let headLimit = 64 << 10

    init(host: String, port: Int, connectTimeout: Duration, readTimeout: Duration) {
        self.host = host
        self.port = String(port)
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
    }

    deinit { closeAll() }

    func closeAll() {
        let connections = idle.withLock { idle in
            defer { idle.removeAll() }
            return idle
        }
        for connection in connections { Glibc.close(connection.fd) }
    }

    /// Sends one request and reads its reply, as `executeBlocking` does for the general
    /// client: a reply of any status is a success; a connection that fails, closes or
    /// stays silent for `readTimeout` is a transport failure.
    func execute(method: String, target: String, headers: [(String, String)], body: UnsafeRawBufferPointer?,
                 window: ReadWindow?, bodyLimit: Int, deadline: ContinuousClock.Instant) -> Result<S3Reply, AttemptFailure> {
        let fd: Int32
        switch takeIdle() ?? connect(deadline: deadline) {
        case .success(let connected): fd = connected
        case .failure(let failure): return .failure(failure)
        }
        var exchange = Exchange(fd: fd, readTimeout: readTimeout, deadline: deadline, window: window, bodyLimit: bodyLimit)
        var head = "\(method) \(target) HTTP/1.1\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body { head += "content-length: \(body.count)\r\n" }
        head += "\r\n"
        let result: Result<S3Reply, AttemptFailure>
        do throws(AttemptFailure) {
            try exchange.send(Array(head.utf8), body)
            let reply = try exchange.receive()
            result = .success(reply)
        } catch {
            result = .failure(error)
        }
        if case .success = result, exchange.reusable {
            giveBack(fd)
        } else {
            Glibc.close(fd)
        }
        return result
    }

    func takeIdle() -> Result<Int32, AttemptFailure>? {
        while true {
            guard let connection = idle.withLock({ $0.popLast() }) else { return nil }
            // One closed by the server while it waited reads as the end of the stream.
            var byte: UInt8 = 0
            let peeked = recv(connection.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if ContinuousClock.now - connection.since < Self.idleLifetime, peeked < 0, errno == EAGAIN || errno == EWOULDBLOCK {
                return .success(connection.fd)
            }
            Glibc.close(connection.fd)
        }
    }

    func giveBack(_ fd: Int32) {
        let kept = idle.withLock { idle in
            guard idle.count < Self.idleLimit else { return false }
            idle.append(IdleConnection(fd: fd, since: .now))
            return true
        }
        if !kept { Glibc.close(fd) }
    }

    /// A connected, non-blocking socket to the endpoint, trying each of its addresses.
    func connect(deadline: ContinuousClock.Instant) -> Result<Int32, AttemptFailure> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, port, &hints, &list)
        guard resolved == 0, let first = list else {
            return .failure(.transport("cannot resolve \(host): \(String(cString: gai_strerror(resolved)))"))
        }
        defer { freeaddrinfo(list) }
        var problem = "no address for \(host)"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let address = candidate {
            candidate = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                problem = String(cString: strerror(errno))
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 { return .success(fd) }
            guard errno == EINPROGRESS else {
                problem = String(cString: strerror(errno))
                Glibc.close(fd)
                continue
            }
            let limit = min(ContinuousClock.now + connectTimeout, deadline)
            switch Exchange.wait(fd, for: Int16(POLLOUT), until: limit) {
            case .ready:
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 { return .success(fd) }
                problem = String(cString: strerror(error))
            case .timedOut:
                problem = "connection timed out"
            case .failed(let code):
                problem = String(cString: strerror(code))
            }
            Glibc.close(fd)
        }
        return .failure(.transport(problem))
    }
}

/// One request and its reply on one connection.
private struct Exchange {
    let fd: Int32
    let readTimeout: Duration
    let deadline: ContinuousClock.Instant
    let window: ReadWindow?
    let bodyLimit: Int
    /// Whether the connection may carry the next request once this one is done.
    var reusable = false

    /// The socket's `SO_RCVLOWAT`: how many received bytes wake a wait for more.
    var lowWater = 1

    /// Past a body's first bytes (which a reader may be waiting for), a wait for more
    /// wakes only when this many have arrived, or the rest of the body if less: a cold
    /// read of 1 GiB otherwise woke the fetching threads 2 400 times, in steps of about
    /// 160 KiB, each wakeup a switch on cores the object store needs too.
    static let bulkLowWater = 1 << 20
    static let eagerBytes = 256 << 10
    /// How long a wait below the low-water mark goes before it takes what has arrived.
    static let lowWaterPatience: Duration = .milliseconds(20)

    /// Received bytes not yet taken by the head or body parsing.
    var pending: [UInt8] = []
    var pendingStart = 0

    init(fd: Int32, readTimeout: Duration, deadline: ContinuousClock.Instant, window: ReadWindow?, bodyLimit: Int) {
        self.fd = fd
        self.readTimeout = readTimeout
        self.deadline = deadline
        self.window = window
        self.bodyLimit = bodyLimit
    }

    enum Readiness { case ready, timedOut, failed(Int32) }

    static func wait(_ fd: Int32, for events: Int16, until limit: ContinuousClock.Instant) -> Readiness {
        while true {
            let remaining = ContinuousClock.now.duration(to: limit)
            guard remaining > .zero else { return .timedOut }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let milliseconds = Int32(clamping: (remaining.inNanoseconds + 999_999) / 1_000_000)
            let ready = poll(&entry, 1, milliseconds)
            if ready > 0 { return .ready }
            if ready == 0 { continue }  // the loop's clock decides
            if errno != EINTR { return .failed(errno) }
        }
    }

    /// Waits until `fd` can be read or written, within the read timeout and the deadline.
    func waitFor(_ events: Int16) throws(AttemptFailure) {
        let silence = ContinuousClock.now + readTimeout
        let limit = min(silence, deadline)
        while true {
            // Below the low-water mark a wait does not wake for what arrived; on a slow
            // link that would be seen as silence, and keep readers from bytes that are here.
            let step = lowWater > 1 && events == Int16(POLLIN) ? min(limit, ContinuousClock.now + Self.lowWaterPatience) : limit
            switch Self.wait(fd, for: events, until: step) {
            case .ready: return
            case .timedOut:
                if step < limit {
                    var queued: Int32 = 0
                    if ioctl(fd, UInt(FIONREAD), &queued) == 0 && queued > 0 { return }
                    continue
                }
                throw .transport(silence < deadline ? "no data for too long" : "request deadline exceeded")
            case .failed(let code): throw .transport(String(cString: strerror(code)))
            }
        }
    }

    func send(_ head: [UInt8], _ body: UnsafeRawBufferPointer?) throws(AttemptFailure) {
        var sentHead = 0
        var sentBody = 0
        let bodyCount = body?.count ?? 0
        while sentHead < head.count || sentBody < bodyCount {
            let sent: Int = head.withUnsafeBytes { headBytes in
                var parts = [iovec]()
                if sentHead < head.count {
                    parts.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: headBytes.baseAddress! + sentHead),
                                       iov_len: head.count - sentHead))
                }
                if let body, let base = body.baseAddress, sentBody < bodyCount {
                    parts.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base + sentBody), iov_len: bodyCount - sentBody))
                }
                return parts.withUnsafeMutableBufferPointer { vectors in
                    var message = msghdr()
                    message.msg_iov = vectors.baseAddress
                    message.msg_iovlen = vectors.count
                    return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
                }
            }
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    try waitFor(Int16(POLLOUT))
                    continue
                }
                throw .transport(String(cString: strerror(errno)))
            }
            let toHead = min(sent, head.count - sentHead)
            sentHead += toHead
            sentBody += sent - toHead
        }
    }

    /// Sets the socket's low-water mark, when it changes.
    mutating func setLowWater(_ bytes: Int) {
        guard bytes != lowWater else { return }
        var value = Int32(bytes)
        if setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 { lowWater = bytes }
    }

    /// Receives into `target`; 0 is the end of the stream.
    func receiveSome(into target: UnsafeMutableRawBufferPointer) throws(AttemptFailure) -> Int {
        while true {
            let got = recv(fd, target.baseAddress, target.count, 0)
            if got >= 0 { return got }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                try waitFor(Int16(POLLIN))
                continue
            }
            throw .transport(String(cString: strerror(errno)))
        }
    }

    /// Receives into `array[from..<from + count]`.
    func receive(into array: inout [UInt8], from start: Int, count: Int) throws(AttemptFailure) -> Int {
        let result = array.withUnsafeMutableBytes { all -> Result<Int, AttemptFailure> in
            do throws(AttemptFailure) {
                return .success(try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: all[start..<(start + count)])))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Adds received bytes to `pending`; false at the end of the stream.
    mutating func fill() throws(AttemptFailure) -> Bool {
        if pendingStart > 0 {
            pending.removeFirst(pendingStart)
            pendingStart = 0
        }
        let old = pending.count
        pending.append(contentsOf: repeatElement(0, count: 16 << 10))
        let got = try receive(into: &pending, from: old, count: pending.count - old)
        pending.removeLast(pending.count - old - got)
        return got > 0
    }

    var available: Int { pending.count - pendingStart }

    mutating func receive() throws(AttemptFailure) -> S3Reply {
        var status: UInt
        var headers: HTTPHeaders
        var keepAlive: Bool
        repeat {
            (status, headers, keepAlive) = try receiveHead()
        } while (100..<200).contains(status)  // interim answers (100 Continue)
        var sink = BodySink(status: status, headers: headers, window: window, bodyLimit: bodyLimit)
        let chunked = headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased() == "chunked" }
        if status == 204 || status == 304 {
            // No body.
        } else if chunked {
            try receiveChunked(into: &sink)
        } else if let length = headers.first(name: "content-length").flatMap({ Int($0) }), length >= 0 {
            try receiveBody(length: length, into: &sink)
        } else {
            try receiveBody(length: nil, into: &sink)
            keepAlive = false
        }
        // The next request's reply head may be a few bytes.
        setLowWater(1)
        reusable = keepAlive && available == 0 && lowWater == 1
        return sink.reply
    }

    mutating func receiveHead() throws(AttemptFailure) -> (UInt, HTTPHeaders, Bool) {
        let terminator: [UInt8] = [13, 10, 13, 10]
        var end: Int?
        var searched = pendingStart
        while true {
            if available >= 4 {
                end = pending.withUnsafeBufferPointer { bytes -> Int? in
                    var index = max(pendingStart, searched - 3)
                    while index + 4 <= bytes.count {
                        if bytes[index] == 13, bytes[index + 1] == 10, bytes[index + 2] == 13, bytes[index + 3] == 10 { return index }
                        index += 1
                    }
                    return nil
                }
                searched = pending.count
            }
            if end != nil { break }
            guard available < DirectTransport.headLimit else { throw .transport("the server sent a reply head of over 64 KiB") }
            let started = pendingStart
            guard try fill() else {
                throw .transport(available == 0 ? "connection closed by the server" : "the connection closed in a reply's head")
            }
            searched -= started
        }
        let headEnd = end!
        let text = String(decoding: pending[pendingStart..<headEnd], as: UTF8.self)
        pendingStart = headEnd + terminator.count
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
        guard !lines.isEmpty else { throw .transport("the server sent an empty reply head") }
        let statusLine = lines.removeFirst().split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = UInt(statusLine[1]) else {
            throw .transport("the server sent no HTTP status line")
        }
        var headers = HTTPHeaders()
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.add(name: String(line[..<colon]).trimmingCharacters(in: .whitespaces),
                        value: String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
        }
        let connection = headers[canonicalForm: "connection"].map { $0.lowercased() }
        let keepAlive = statusLine[0] == "HTTP/1.1" ? !connection.contains("close") : connection.contains("keep-alive")
        return (status, headers, keepAlive)
    }

    /// `length` bytes of body, or (nil) everything until the server closes.
    mutating func receiveBody(length: Int?, into sink: inout BodySink) throws(AttemptFailure) {
        var remaining = length ?? Int.max
        // What arrived with the head.
        let early = min(available, remaining)
        if early > 0 {
            pending.withUnsafeBytes { bytes in
                sink.take(UnsafeRawBufferPointer(rebasing: bytes[pendingStart..<(pendingStart + early)]))
            }
            pendingStart += early
            remaining -= early
        }
        var scratch: [UInt8] = []
        while remaining > 0 {
            let got: Int
            if let direct = sink.directTarget(upTo: remaining) {
                // Never more than the body still owes, or the wait would outlast it.
                let received = (length ?? Int.max) - remaining
                setLowWater(length != nil && received >= Self.eagerBytes ? min(direct.count, Self.bulkLowWater) : 1)
                got = try receiveSome(into: direct)
                if got > 0 { sink.landedInPlace(got) }
            } else {
                if scratch.isEmpty { scratch = [UInt8](repeating: 0, count: 64 << 10) }
                let want = min(remaining, scratch.count)
                got = try receive(into: &scratch, from: 0, count: want)
                if got > 0 { scratch.withUnsafeBytes { sink.take(UnsafeRawBufferPointer(rebasing: $0[0..<got])) } }
            }
            if got == 0 {
                if length == nil { return }
                throw .transport("the connection closed with \(remaining) bytes of the reply's body still to come")
            }
            remaining -= got
        }
    }

    mutating func receiveChunked(into sink: inout BodySink) throws(AttemptFailure) {
        while true {
            let sizeLine = try receiveLine()
            let digits = sizeLine.prefix { $0 != ";" }.trimmingCharacters(in: .whitespaces)
            guard let size = Int(digits, radix: 16), size >= 0 else { throw .transport("the server sent a malformed chunk size") }
            if size == 0 {
                // Trailers, up to the empty line.
                while try !receiveLine().isEmpty {}
                return
            }
            try receiveBody(length: size, into: &sink)
            guard try receiveLine().isEmpty else { throw .transport("the server sent a malformed chunk") }
        }
    }

    mutating func receiveLine() throws(AttemptFailure) -> String {
        while true {
            if let newline = pending[pendingStart...].firstIndex(of: 10) {
                var line = pending[pendingStart..<newline]
                if line.last == 13 { line = line.dropLast() }
                pendingStart = newline + 1
                return String(decoding: line, as: UTF8.self)
            }
            guard available < DirectTransport.headLimit else { throw .transport("the server sent a line of over 64 KiB") }
            guard try fill() else { throw .transport("the connection closed in a chunked reply") }
        }
    }
}
