#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import AsyncHTTPClient
import Foundation
import FuseMount
import NIOCore
import VolumeBackends

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a mount's activity, refreshed every second: requests, throughput, cache, latency, lease.",
        discussion: "Reads the metrics the mount's daemon serves on its private socket (run it as root).")

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    @Flag(help: "Print one sample (over one interval) and exit, for scripts.")
    var once = false

    @Option(help: "Seconds between samples.")
    var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be between 0.1 and 3600 seconds") }
    }

    func run() throws {
        let target = absolutePath(mountpoint)
        guard let entry = MountEntry.find(target) else { throw CLIError("\(target) is not mounted") }
        guard entry.fsType == "fuse.netvol" else { throw CLIError("\(target) is not a netvol mount (it is \(entry.fsType))") }
        guard let daemon = Unmount.daemon(serving: target) else {
            throw CLIError("no netvol daemon serving \(target) is visible from here (another mount namespace?)")
        }
        let socket = metricsSocketPath(pid: daemon)
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { try? client.syncShutdown() }
        var previous = try Sample.fetch(socket, client: client)
        let terminal = isatty(STDOUT_FILENO) == 1
        while true {
            usleep(UInt32(interval * 1_000_000))
            let current = try Sample.fetch(socket, client: client)
            let report = Sample.report(from: previous, to: current, mountpoint: target, pid: daemon)
            // Like top: the screen redrawn in place on a terminal, plain lines otherwise.
            let clear = terminal && !once ? "\u{1B}[H\u{1B}[2J" : ""
            // Written at once: a pipe reader sees each sample when it is made.
            let text = clear + report + "\n"
            _ = text.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
            if once { return }
            previous = current
        }
    }
}

/// One scrape of a daemon's /metrics: every sample by name, with its labels.
struct Sample {
    struct Series {
        var labels: [String: String]
        var value: Double
    }
    var time: ContinuousClock.Instant
    var series: [String: [Series]]

    static func fetch(_ socket: String, client: HTTPClient) throws -> Sample {
        guard let url = URL(httpURLWithSocketPath: socket, uri: "/metrics")?.absoluteString else {
            throw CLIError("cannot address the socket \(socket)")
        }
        let response: HTTPClient.Response
        do {
            response = try client.get(url: url, deadline: NIODeadline.now() + TimeAmount.seconds(10)).wait()
        } catch {
            throw CLIError("cannot read the mount's metrics at \(socket): \(error)")
        }
        guard response.status == .ok, let body = response.body else {
            throw CLIError("the mount's daemon answered \(response.status.code) at \(socket)")
        }
        return Sample(time: .now, series: parse(String(buffer: body)))
    }

    /// Prometheus' text format, as the daemon writes it: `name{label="value",...} number`.
    static func parse(_ text: String) -> [String: [Series]] {
        var series: [String: [Series]] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let key = line[..<space]
            var name = String(key)
            var labels: [String: String] = [:]
            if let open = key.firstIndex(of: "{"), key.hasSuffix("}") {
                name = String(key[..<open])
                for pair in key[key.index(after: open)..<key.index(before: key.endIndex)].split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    labels[String(parts[0])] = String(parts[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                }
            }
            series[name, default: []].append(Series(labels: labels, value: value))
        }
        return series
    }

    /// The sum of a metric's series whose labels include `matching`.
    func total(_ name: String, _ matching: [String: String] = [:]) -> Double {
        (series[name] ?? []).filter { series in matching.allSatisfy { series.labels[$0.key] == $0.value } }
            .reduce(0) { $0 + $1.value }
    }

    /// What happened between two samples, as `netvol stats` shows it.
    static func report(from old: Sample, to new: Sample, mountpoint: String, pid: Int32) -> String {
        let elapsed = new.time - old.time
        let seconds = max(0.001, elapsed.inSeconds)
        func rate(_ name: String, _ labels: [String: String] = [:]) -> Double {
            max(0, new.total(name, labels) - old.total(name, labels)) / seconds
        }
        var lines = ["netvol stats \(mountpoint) (daemon \(pid)), over \(String(format: "%.1f", seconds)) s"]
        // Requests by kind: the data path, names and attributes, and the rest.
        let kinds: [(String, Set<String>)] = [
            ("read", ["read"]), ("write", ["write", "flush", "fsync", "fallocate"]),
            ("lookup/getattr", ["lookup", "getattr", "access", "getxattr", "listxattr", "readlink", "statfs"]),
            ("readdir", ["readdir", "readdirplus", "opendir", "releasedir"]),
        ]
        let ops = Set((new.series["netvol_requests_total"] ?? []).compactMap { $0.labels["op"] })
        var known = Set<String>()
        var parts: [String] = []
        for (kind, members) in kinds {
            known.formUnion(members)
            parts.append("\(kind) \(format(members.reduce(0) { $0 + rate("netvol_requests_total", ["op": $1]) }))")
        }
        let others = ops.subtracting(known).reduce(0) { $0 + rate("netvol_requests_total", ["op": $1]) }
        parts.append("other \(format(others))")
        lines.append("requests/s:   total \(format(rate("netvol_requests_total")))  " + parts.joined(separator: "  "))
        lines.append("throughput:   read \(String(format: "%.1f", rate("netvol_read_bytes_total") / 1_048_576)) MiB/s  written \(String(format: "%.1f", rate("netvol_written_bytes_total") / 1_048_576)) MiB/s")
        let errors = rate("netvol_errors_total")
        lines.append("errors/s:     \(format(errors))" + (errors > 0 ? "  (" + topErrors(old, new, seconds) + ")" : ""))
        let latency = quantiles(old, new)
        lines.append("latency:      p50 \(latency.map { formatSeconds($0.p50) } ?? "-")  p99 \(latency.map { formatSeconds($0.p99) } ?? "-")")
        if new.total("netvol_cache_capacity_bytes") > 0 {
            let hits = new.total("netvol_cache_hits_total") - old.total("netvol_cache_hits_total")
            let misses = new.total("netvol_cache_misses_total") - old.total("netvol_cache_misses_total")
            let ratio = hits + misses > 0 ? String(format: "%.0f%%", 100 * hits / (hits + misses)) : "-"
            lines.append("cache:        hit ratio \(ratio)  used \(formatBytes(UInt64(new.total("netvol_cache_bytes")))) of \(formatBytes(UInt64(new.total("netvol_cache_capacity_bytes"))))  fetched \(String(format: "%.1f", rate("netvol_cache_fetched_bytes_total") / 1_048_576)) MiB/s  object store \(format(rate("netvol_object_store_requests_total"))) req/s")
        } else {
            lines.append("cache:        none (an embedded volume reads its chunks from disk)")
        }
        let held = new.total("netvol_lease_held") > 0
        lines.append("lease:        " + (held ? "held, token \(Int(new.total("netvol_lease_token")))" : "not held")
            + "  buffered \(formatBytes(UInt64(new.total("netvol_buffered_bytes"))))"
            + "  change feed \(String(format: "%.1f", new.total("netvol_change_feed_age_seconds"))) s old"
            + "  memory \(formatBytes(UInt64(new.total("netvol_resident_memory_bytes"))))")
        return lines.joined(separator: "\n")
    }

    static func format(_ rate: Double) -> String {
        rate >= 100 ? String(format: "%.0f", rate) : String(format: "%.1f", rate)
    }

    static func formatSeconds(_ value: Double) -> String {
        value < 0.001 ? String(format: "%.0f µs", value * 1e6) : value < 1 ? String(format: "%.1f ms", value * 1e3) : String(format: "%.2f s", value)
    }

    static func topErrors(_ old: Sample, _ new: Sample, _ seconds: Double) -> String {
        let names = Set((new.series["netvol_errors_total"] ?? []).compactMap { $0.labels["errno"] })
        return names.map { name in (name, (new.total("netvol_errors_total", ["errno": name]) - old.total("netvol_errors_total", ["errno": name])) / seconds) }
            .filter { $0.1 > 0 }.sorted { $0.1 > $1.1 }.prefix(3)
            .map { "\($0.0) \(format($0.1))" }.joined(separator: ", ")
    }

    /// The median and 99th percentile of every request's latency in the interval, from
    /// the histogram's cumulative buckets (interpolated within a bucket, as Prometheus'
    /// histogram_quantile does); nil when nothing was asked.
    static func quantiles(_ old: Sample, _ new: Sample) -> (p50: Double, p99: Double)? {
        var counts: [Double: Double] = [:]
        for (sample, sign) in [(new, 1.0), (old, -1.0)] {
            for series in sample.series["netvol_request_duration_seconds_bucket"] ?? [] {
                guard let bound = series.labels["le"].flatMap({ $0 == "+Inf" ? Double.infinity : Double($0) }) else { continue }
                counts[bound, default: 0] += sign * series.value
            }
        }
        let buckets = counts.sorted { $0.key < $1.key }
        guard let total = buckets.last?.value, total > 0 else { return nil }
        func quantile(_ q: Double) -> Double {
            let rank = q * total
            var lower = 0.0
            var below = 0.0
            for (bound, count) in buckets {
                if count >= rank {
                    if bound.isInfinite { return lower }
                    let inBucket = count - below
                    return inBucket > 0 ? lower + (bound - lower) * (rank - below) / inBucket : bound
                }
                lower = bound.isInfinite ? lower : bound
                below = count
            }
            return lower
        }
        return (quantile(0.5), quantile(0.99))
    }
}
