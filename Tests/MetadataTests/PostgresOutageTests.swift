import Foundation
import Testing
@testable import Metadata
@testable import PostgresMetadata

/// A volume whose server goes away and comes back, seen through a relay that carries every
/// call's connections and that the test stops or silences.
@Suite(.enabled(if: PostgresServer.available, "NETVOL_TEST_PG_URL is unset"))
struct PostgresOutageTests {
    /// How a server can be away.
    enum Absence: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// Nothing listens on its port.
        case refused
        /// Connections open, and nothing ever comes back.
        case silent

        var testDescription: String { rawValue }
    }

    /// How long `body` took to throw `.database`, and its message.
    func failure(_ body: () throws -> Any) -> (seconds: Double, message: String) {
        let start = ContinuousClock.now
        var message = ""
        do {
            _ = try body()
            Issue.record("expected a .database error; the call succeeded")
        } catch MetadataError.database(let text) {
            message = text
        } catch {
            Issue.record("expected .database, got \(error)")
        }
        let took = ContinuousClock.now - start
        return (took.inSeconds, message)
    }

    /// The first call that cannot reach the server waits out its deadline. While the server
    /// stays away, each call after it makes one short attempt: an `ls -R` would otherwise
    /// hang for a deadline per lookup. Once the server is back, the next call succeeds on
    /// the same volume, and calls retry a dropped connection again.
    @Test(arguments: Absence.allCases)
    func callsFailFastWhileTheServerIsKnownAwayAndSucceedOnceItIsBack(_ absence: Absence) throws {
        let url = try PostgresServer.volumeURL()
        let created = try PostgresMetadata.create(url: url, chunkSize: 4096, sizeLimit: 1 << 20, store: [:], now: t0)
        defer { try? created.destroy() }
        var relay = try Relay(to: url)
        defer { relay.stop() }
        // Long enough that a call waiting it out, which stops short of it by at most one
        // retry pause (1 s), is told apart from a 2 s attempt on a loaded machine.
        let deadline = 5.0
        let meta = try PostgresMetadata(url: relay.url(url), deadlineSeconds: deadline)
        defer { meta.close() }
        let a = try meta.mknode(.root, "a", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)

        switch absence {
        case .refused: relay.stop()
        case .silent: relay.silent.store(true, ordering: .relaxed)
        }
        let first = failure { try meta.lookup(.root, "a") }
        #expect(first.seconds > deadline - 1.1 && first.seconds < deadline + 8, "\(first.seconds) s: \(first.message)")

        let calls: [(String, () throws -> Any)] = [
            ("getattr", { try meta.getattr(.root) }),
            ("lookup", { try meta.lookup(.root, "a") }),
            ("mknode", { try meta.mknode(.root, "b", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0) }),
            ("readdir", { try meta.readdir(.root, after: 0, limit: 10) }),
        ]
        var total = 0.0
        for (name, call) in calls {
            let later = failure(call)
            total += later.seconds
            // One attempt: libpq waits at least 2 s for a connection that never answers.
            #expect(later.seconds < 3.5, "\(name) took \(later.seconds) s: \(later.message)")
        }
        if absence == .refused {
            // Refused at once, a call that does not retry ends at once: these four together
            // take less than two would if each retried for its 2 s (at least 1 s each).
            #expect(total < 2.5, "\(total) s")
        }

        relay.stop()
        relay = try Relay(to: url, on: relay.port)
        #expect(try meta.lookup(.root, "a") == a)
        _ = try meta.mknode(.root, "b", mode: fileMode, uid: 0, gid: 0, rdev: 0, target: nil, now: t0)
        #expect(try meta.readdir(.root, after: 0, limit: 10).map(\.name) == ["a", "b"])

        // Back to retrying: a connection the server drops is replaced within the call.
        let pid = try meta.pool.read { tx in try tx.execute("SELECT pg_backend_pid()::bigint").int(0, 0) }
        #expect(try created.pool.read { tx in try tx.executeOnce("SELECT pg_terminate_backend($1::int)", [.int(pid)]) }.bool(0, 0))
        #expect(try meta.lookup(.root, "a") == a)
    }
}
