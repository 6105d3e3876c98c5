#if canImport(Glibc)
import Glibc
#endif
import CoreMetrics
import CachedChunkStore
import Foundation
import Metadata
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization
import VolumeBackends
import VolumeFS

// The daemon's metrics: swift-metrics objects, kept by a Prometheus registry, served as
// `GET /metrics` in Prometheus' text format over HTTP: always on a unix socket only root
// can reach (`/run/netvol/PID.metrics`, what `netvol stats` reads), and on a TCP address
// with `--metrics`. Counters that live in the backends (requests to the object store and
// the database, the cache's hits and misses) and the mount's state (the lease, what is
// buffered, the change feed, memory) are read when a scrape comes.

/// Where a daemon serves its metrics for `netvol stats`.
func metricsSocketPath(pid: Int32) -> String { "/run/netvol/\(pid).metrics" }

final class MetricsEndpoint: Sendable {
    let registry: PrometheusCollectorRegistry
    let state: DaemonMetrics
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channels = Mutex<[any Channel]>([])
    let socketPath = Mutex<String?>(nil)

    /// Makes the registry the process's metrics backend: call before anything creates a
    /// metric.
    init(volume: VolumeFS, opened: OpenedVolume) {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Requests answered from memory take microseconds, a cold read from the object
        // store seconds: buckets across the whole range, not only web-request times.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250),
            .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
        ]
        MetricsSystem.bootstrap(factory)
        self.registry = registry
        state = DaemonMetrics(volume: volume, opened: opened)
    }

    /// Serves on `HOST:PORT` (`PORT` alone, or `:PORT`, is loopback).
    func listen(tcp address: String) throws {
        let (host, port) = try Self.parse(address)
        let channel = try bootstrap().bind(host: host, port: port).wait()
        channels.withLock { $0.append(channel) }
    }

    /// Serves on a unix socket that only this user can reach.
    func listen(unixSocket path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw CLIError("cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        Self.removeStaleSockets(in: directory)
        unlink(path)
        let channel = try bootstrap().bind(unixDomainSocketPath: path).wait()
        chmod(path, 0o600)
        socketPath.withLock { $0 = path }
        channels.withLock { $0.append(channel) }
    }

    /// Sockets of daemons that are gone (killed, so they could not remove their own).
    static func removeStaleSockets(in directory: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            guard name.hasSuffix(".metrics"), let pid = Int32(name.dropLast(".metrics".count)) else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(directory + "/" + name) }
        }
    }

    func stop() {
        for channel in channels.withLock({ $0 }) { try? channel.close().wait() }
        if let path = socketPath.withLock({ $0 }) { unlink(path) }
        try? group.syncShutdownGracefully()
    }

    /// The exposition: the backends' counters and the mount's state brought up to date.
    func scrape() -> [UInt8] {
        state.refresh()
        return registry.emitToBuffer()
    }

    static func parse(_ address: String) throws -> (String, Int) {
        var host = "127.0.0.1"
        var portText = address
        if let colon = address.lastIndex(of: ":") {
            let given = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            if !given.isEmpty { host = given }
            portText = String(address[address.index(after: colon)...])
        }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw CLIError("--metrics '\(address)' is not HOST:PORT (a port from 1 to 65535)")
        }
        return (host, port)
    }

    private func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHandler(endpoint: self))
                }
            }
    }
}

/// Answers `GET /metrics`; 404 for anything else. One request per connection.
final class MetricsHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let endpoint: MetricsEndpoint
    let path = Mutex<String?>(nil)

    init(endpoint: MetricsEndpoint) { self.endpoint = endpoint }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            // Reading is a GET; only dropping from the cache (/evict), committing what is
            // kept for a group commit (/commit) and writing the cache copies left for
            // later (/cache-pages) are POSTs.
            path.withLock { $0 = head.method == .GET || head.method == .POST ? "\(head.method.rawValue) \(head.uri)" : nil }
        case .body:
            break
        case .end:
            let line = path.withLock { $0 } ?? ""
            let method = line.split(separator: " ").first.map(String.init) ?? ""
            let requested = line.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            var route = requested.split(separator: "?").first.map(String.init) ?? ""
            if method != (["/evict", "/commit", "/cache-pages"].contains(route) ? "POST" : "GET") { route = "" }
            let query = requested.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            let privateSocket = isUnix(context)
            // Off the event loop: writing the cache copies can take a minute, and the
            // loop's one thread answers every other request (`netvol stats`, scrapes).
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            DispatchQueue.global().async { [self, route] in
                let (found, type, body) = answer(route, query: query, privateSocket: privateSocket)
                eventLoop.execute { self.respond(bound.value, found: found, type: type, body: body) }
            }
        }
    }

    /// The status, content type and body for `route`.
    func answer(_ route: String, query: String, privateSocket: Bool) -> (found: Bool, type: String, body: [UInt8]) {
        let json = "application/json"
        switch route {
        case "/metrics":
            return (true, "text/plain; version=0.0.4; charset=utf-8", endpoint.scrape())
        case "/cache", "/evict":
            // `netvol warmup --check` and `--evict`, on the private socket alone.
            return (true, json, endpoint.state.cacheReport(query: query, evicting: route == "/evict", privateSocket: privateSocket))
        case "/commit" where privateSocket:
            // `netvol status` on this host: what the writer closed counts in the usage
            // it reads, though the group it is in has not been committed yet.
            endpoint.state.volume.commitDeferred()
            return (true, json, Array("{\"committed\":true}".utf8))
        case "/cache-pages" where privateSocket:
            // `netvol unmount` and `netvol warmup`: the cache copies a streaming read
            // left for later, written before the kernel's pages go.
            let written = endpoint.state.volume.writeCacheFromPages()
            return (true, json, Array("{\"written\":\(written)}".utf8))
        default:
            return (false, "text/plain", Array("only /metrics is here\n".utf8))
        }
    }

    func respond(_ context: ChannelHandlerContext, found: Bool, type: String, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Whether a request came over the unix socket (root alone) rather than TCP.
func isUnix(_ context: ChannelHandlerContext) -> Bool {
    if case .unixDomainSocket = context.channel.localAddress { return true }
    return false
}

/// The metrics read at each scrape rather than counted as things happen.
final class DaemonMetrics: Sendable {
    let volume: VolumeFS
    let opened: OpenedVolume
    let leaseHeld = CoreMetrics.Gauge(label: "netvol_lease_held")
    let leaseToken = CoreMetrics.Gauge(label: "netvol_lease_token")
    let buffered = CoreMetrics.Gauge(label: "netvol_buffered_bytes")
    let feedAge = CoreMetrics.Gauge(label: "netvol_change_feed_age_seconds")
    let residentBytes = CoreMetrics.Gauge(label: "netvol_resident_memory_bytes")
    let cacheBytes = CoreMetrics.Gauge(label: "netvol_cache_bytes")
    let cacheObjects = CoreMetrics.Gauge(label: "netvol_cache_objects")
    let cacheCapacity = CoreMetrics.Gauge(label: "netvol_cache_capacity_bytes")
    /// Counters the backends and the metadata cache keep, and what was last passed on of each.
    let counters: [(CoreMetrics.Counter, @Sendable (BackendCounters) -> Int?)] = [
        (CoreMetrics.Counter(label: "netvol_cache_hits_total"), { $0.cache?.hits }),
        (CoreMetrics.Counter(label: "netvol_cache_misses_total"), { $0.cache?.misses }),
        (CoreMetrics.Counter(label: "netvol_cache_fetched_bytes_total"), { $0.cache?.bytesFetched }),
        (CoreMetrics.Counter(label: "netvol_cache_evictions_total"), { $0.cache?.evictions }),
        (CoreMetrics.Counter(label: "netvol_cache_written_later_total"), { $0.cache?.writtenLater }),
        (CoreMetrics.Counter(label: "netvol_cache_fetched_again_total"), { $0.cache?.fetchedAgain }),
        (CoreMetrics.Counter(label: "netvol_object_store_requests_total"), { $0.objectStoreRequests }),
        (CoreMetrics.Counter(label: "netvol_object_store_retries_total"), { $0.objectStoreRetries }),
        (CoreMetrics.Counter(label: "netvol_database_calls_total"), { $0.databaseCalls }),
        (CoreMetrics.Counter(label: "netvol_database_transactions_total"), { $0.databaseTransactions }),
        (CoreMetrics.Counter(label: "netvol_database_retries_total"), { $0.databaseRetries }),
        (CoreMetrics.Counter(label: "netvol_database_call_microseconds_total"), { $0.databaseMicroseconds }),
        (CoreMetrics.Counter(label: "netvol_metadata_cache_hits_total"), { $0.metadataCacheHits }),
        (CoreMetrics.Counter(label: "netvol_metadata_cache_misses_total"), { $0.metadataCacheMisses }),
    ]
    let passedOn = Mutex<[Int]>([])

    init(volume: VolumeFS, opened: OpenedVolume) {
        self.volume = volume
        self.opened = opened
        passedOn.withLock { $0 = Array(repeating: 0, count: counters.count) }
    }

    func refresh() {
        let mount = volume.statistics()
        leaseHeld.record(mount.holdsLease ? 1 : 0)
        leaseToken.record(Double(mount.leaseToken))
        buffered.record(Double(mount.bufferedBytes))
        feedAge.record(mount.changeFeedAgeSeconds)
        residentBytes.record(Double(Self.residentBytes()))
        var backends = opened.backendCounters()
        (backends.metadataCacheHits, backends.metadataCacheMisses) = volume.cache.counts
        if let cache = backends.cache {
            cacheBytes.record(Double(cache.bytesCached))
            cacheObjects.record(Double(cache.objectsCached))
        }
        if let capacity = backends.cacheCapacity { cacheCapacity.record(Double(capacity)) }
        passedOn.withLock { last in
            for (index, (counter, read)) in counters.enumerated() {
                guard let now = read(backends), now > last[index] else { continue }
                counter.increment(by: Int64(now - last[index]))
                last[index] = now
            }
        }
    }

    /// How much of inode `ino=N` (the query) is in this host's cache, as JSON; with
    /// `evicting`, its objects are dropped from the cache first. Only on the private
    /// socket: the TCP address may be reachable by others.
    func cacheReport(query: String, evicting: Bool, privateSocket: Bool) -> [UInt8] {
        func answer(_ object: [String: Any]) -> [UInt8] {
            Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8))
        }
        guard privateSocket else { return answer(["error": "only on the daemon's unix socket"]) }
        guard let text = query.split(separator: "&").first(where: { $0.hasPrefix("ino=") })?.dropFirst(4),
              let number = UInt64(text) else { return answer(["error": "no ino=N"]) }
        let ino = InodeNumber(number)
        guard let cache = opened.store as? CachedChunkStore else {
            return answer(["ino": number, "cache": false])
        }
        let attr: Attr
        let chunks: [ChunkRef]
        do {
            (attr, chunks) = try volume.metadata.attrAndChunks(ino)
        } catch {
            return answer(["ino": number, "error": "\(error)"])
        }
        // A download a reader left behind may still be landing: count it (or evict it)
        // once it has. Other files' downloads are not waited for.
        _ = cache.settle(Set(chunks.compactMap(\.object)), timeout: 30)
        var objects = 0, cachedObjects = 0, bytes = 0, cachedBytes = 0
        for chunk in chunks {
            guard let object = chunk.object else { continue }
            if evicting { cache.evict(object) }
            objects += 1
            bytes += chunk.length
            if cache.isCached(object) {
                cachedObjects += 1
                cachedBytes += chunk.length
            }
        }
        return answer(["ino": number, "cache": true, "size": attr.size, "objects": objects, "cached_objects": cachedObjects,
                       "bytes": bytes, "cached_bytes": cachedBytes])
    }

    /// This process's resident set, from /proc/self/statm.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
