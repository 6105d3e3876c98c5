#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Synchronization

/// A TCP relay on loopback to the test server, which a test can silence or stop as a
/// network or a server would fail, without touching the server other tests share.
final class Relay: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let port: UInt16
    let targetHost: String
    let targetPort: UInt16
    /// Connections stay open and carry nothing either way, as to a server that hangs.
    let silent = Atomic<Bool>(false)
    private let listener: Int32
    private let stopping = Atomic<Bool>(false)
    private let running = DispatchGroup()

    /// Relays connections to `url`'s server, listening on `port`, or on a free port below
    /// the ephemeral range when it is nil: while the relay is stopped nothing holds its
    /// port, and an outgoing connection must not take it before the relay comes back.
    init(to url: String, on port: UInt16? = nil) throws {
        guard let components = URLComponents(string: url), let host = components.host, let targetPort = components.port else {
            throw Failure(description: "no host and port in \(url)")
        }
        targetHost = host == "localhost" ? "127.0.0.1" : host
        guard inet_addr(targetHost) != INADDR_NONE else { throw Failure(description: "the relay takes an IPv4 address, not \(host)") }
        self.targetPort = UInt16(targetPort)
        var bound: (fd: Int32, port: UInt16)?
        for candidate in port.map({ [$0] }) ?? (0..<50).map({ _ in UInt16.random(in: 10_000..<20_000) }) {
            bound = Self.listen(on: candidate)
            if bound != nil { break }
        }
        guard let bound else { throw Failure(description: "cannot listen on \(port.map(String.init) ?? "a free port"): \(String(cString: strerror(errno)))") }
        listener = bound.fd
        self.port = bound.port
        running.enter()
        Thread.detachNewThread { [self] in
            defer { running.leave() }
            while !stopping.load(ordering: .relaxed) {
                var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 20) > 0 else { continue }
                let client = accept(listener, nil, nil)
                guard client >= 0 else { continue }
                running.enter()
                Thread.detachNewThread { [self] in
                    relay(client)
                    running.leave()
                }
            }
            close(listener)
        }
    }

    /// `url` with the relay in place of the server.
    func url(_ url: String) -> String {
        var components = URLComponents(string: url)!
        components.port = Int(port)
        return components.string!
    }

    /// Closes the port, so that connecting is refused, and every relayed connection. A
    /// relay runs until stopped.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        running.wait()
    }

    private func relay(_ client: Int32) {
        var upstream: Int32 = -1
        defer {
            close(client)
            if upstream >= 0 { close(upstream) }
        }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while !stopping.load(ordering: .relaxed) {
            if silent.load(ordering: .relaxed) {
                usleep(20_000)
                continue
            }
            if upstream < 0 {
                upstream = Self.dial(targetHost, targetPort)
                guard upstream >= 0 else { return }
            }
            var ready = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)]
            guard poll(&ready, 2, 20) >= 0 else { return }
            for (index, (from, to)) in [(client, upstream), (upstream, client)].enumerated() where ready[index].revents != 0 {
                let count = read(from, &buffer, buffer.count)
                guard count > 0, Self.send(buffer, count, to) else { return }
            }
        }
    }

    private static func address(_ host: String, _ port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(host)
        address.sin_port = port.bigEndian
        return address
    }

    private static func listen(on port: UInt16) -> (fd: Int32, port: UInt16)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        // The relay's closed connections leave the port in TIME_WAIT for its return.
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = address("127.0.0.1", port)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && Glibc.listen(fd, 64) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        guard listening else {
            let error = errno
            close(fd)
            errno = error
            return nil
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    private static func dial(_ host: String, _ port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = address(host, port)
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        if !connected {
            close(fd)
            return -1
        }
        return fd
    }

    private static func send(_ buffer: [UInt8], _ count: Int, _ fd: Int32) -> Bool {
        var sent = 0
        while sent < count {
            let done = buffer.withUnsafeBytes { bytes in
                Glibc.send(fd, bytes.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL))
            }
            guard done > 0 else { return false }
            sent += done
        }
        return true
    }
}
