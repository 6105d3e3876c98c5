public import CachedChunkStore
import PostgresMetadata
import S3ChunkStore

/// What a volume's backends have done since it was opened, for the metrics: each field
/// is nil where the volume has no such backend (an embedded volume has neither a
/// database server nor an object store nor a cache).
public struct BackendCounters: Sendable {
    public var objectStoreRequests: Int?
    public var objectStoreRetries: Int?
    public var databaseCalls: Int?
    public var databaseTransactions: Int?
    public var databaseRetries: Int?
    /// Microseconds the database calls took, waits for a connection and retries included.
    public var databaseMicroseconds: Int?
    public var cache: CacheStatistics?
    /// The cache's size limit in bytes.
    public var cacheCapacity: Int?
    /// Lookups and attribute reads the mount's metadata cache answered, and those it
    /// passed on (filled in by the mount, which owns that cache).
    public var metadataCacheHits: Int?
    public var metadataCacheMisses: Int?
}

extension OpenedVolume {
    public func backendCounters() -> BackendCounters {
        var counters = BackendCounters()
        var store = store
        if let cached = store as? CachedChunkStore {
            counters.cache = cached.statistics
            counters.cacheCapacity = cached.capacityBytes
            store = cached.backing
        }
        if let s3 = store as? S3ChunkStore {
            (counters.objectStoreRequests, counters.objectStoreRetries) = s3.requestCounts
        }
        if let postgres = metadata as? PostgresMetadata {
            (counters.databaseCalls, counters.databaseTransactions, counters.databaseRetries, counters.databaseMicroseconds) =
                postgres.callCounts
        }
        return counters
    }
}
