#if canImport(Glibc)
public import Glibc
#endif
public import ChunkStore
public import Metadata

/// The mode of a daemon's log: it names files, so it is as private as the volume.
public let logFileMode: mode_t = 0o600

/// An open volume: its metadata and its chunk store.
public struct OpenedVolume: Sendable {
    public let address: VolumeAddress
    public let metadata: any Metadata
    public let store: any ChunkStore
    /// Where a background daemon of this volume logs unless told otherwise.
    public let defaultLogPath: String
    /// Where the chunks live, for `status` (nil for an embedded volume: beside the metadata).
    public let storeDescription: String?
    /// The local cache in front of the store, when there is one.
    public let cache: CacheSettings?
}

/// A host's local cache of a network volume's chunk objects.
public struct CacheSettings: Sendable, Equatable {
    /// nil: `/var/cache/netvol/<the volume's slug>`.
    public var directory: String?
    public var capacityBytes: UInt64
    public init(directory: String? = nil, capacityBytes: UInt64 = 10 << 30) {
        self.directory = directory
        self.capacityBytes = capacityBytes
    }
}

/// How to open a volume.
public struct OpenOptions: Sendable {
    public var credentials: Credentials
    /// A network volume's chunks go through a local cache (a mount's reads); nil reads
    /// the object store directly (tools: fsck, gc, destroy).
    public var cache: CacheSettings?
    /// How long one call to a network volume's database or object store keeps retrying
    /// before the operation that needed it fails with EIO.
    public var timeoutSeconds: Double
    public static let defaultTimeoutSeconds: Double = 20
    public init(credentials: Credentials = Credentials(), cache: CacheSettings? = nil,
                timeoutSeconds: Double = OpenOptions.defaultTimeoutSeconds) {
        self.credentials = credentials
        self.cache = cache
        self.timeoutSeconds = timeoutSeconds
    }
}

/// What `create` needs besides the address.
public struct VolumeSpec: Sendable {
    public var sizeLimit: UInt64
    public var chunkSize: Int
    public var now: Timestamp
    /// A network volume's object store (`s3://BUCKET/PREFIX`, its endpoint, its region).
    public var store: StoreSpec?
    public init(sizeLimit: UInt64, chunkSize: Int, now: Timestamp, store: StoreSpec? = nil) {
        self.sizeLimit = sizeLimit; self.chunkSize = chunkSize; self.now = now; self.store = store
    }
}

/// Where a network volume keeps its chunks: recorded in its metadata at `create`, so
/// that `mount` needs only the volume's URL and the credentials.
public struct StoreSpec: Sendable, Equatable {
    public var url: String
    public var endpoint: String
    public var region: String
    public init(url: String, endpoint: String, region: String = "us-east-1") {
        self.url = url; self.endpoint = endpoint; self.region = region
    }
}

extension VolumeAddress {
    /// Opens an existing volume.
    ///
    /// - Throws: a `VolumeError` naming what is wrong: no such volume, not a volume, a
    ///   server that cannot be reached, a wrong password, missing credentials.
    public func open(_ options: OpenOptions = OpenOptions()) throws(VolumeError) -> OpenedVolume {
        switch self {
        case .directory(let path):
            return try EmbeddedVolume(path).open(address: self)
        case .postgres(let address):
            return try NetworkVolume(address: address, slug: slug).open(address: self, options)
        }
    }

    /// Creates a new, empty volume; refuses (changing nothing) when one exists there.
    public func create(_ spec: VolumeSpec, credentials: Credentials = Credentials()) throws(VolumeError) {
        switch self {
        case .directory(let path):
            guard spec.store == nil else {
                throw VolumeError("--store is for network volumes (postgres:// URLs); an embedded volume keeps its chunks in its directory")
            }
            try EmbeddedVolume(path).create(spec)
        case .postgres(let address):
            try NetworkVolume(address: address, slug: slug).create(spec, credentials: credentials)
        }
    }

    /// Deletes the volume, its metadata and every object; refused while it is mounted.
    /// `progress` is told what is being done.
    public func destroy(credentials: Credentials = Credentials(), progress: (String) -> Void = { _ in }) throws(VolumeError) {
        let opened = try open(OpenOptions(credentials: credentials))
        let sessions: [Session]
        let lease: Lease
        do {
            sessions = try opened.metadata.sessions()
            lease = try opened.metadata.lease()
        } catch {
            throw VolumeError("cannot read the mounts of \(self): \(error)")
        }
        if !sessions.isEmpty {
            let where_ = sessions.map { "\($0.host):\($0.mountpoint)" }.joined(separator: ", ")
            throw VolumeError("\(self) is mounted (\(where_)); unmount it everywhere first")
        }
        if lease.isHeld {
            throw VolumeError("\(self) has a writer (\(lease.holder ?? "?")); unmount it first")
        }
        switch self {
        case .directory(let path):
            try EmbeddedVolume(path).destroy(progress: progress)
        case .postgres:
            try NetworkVolume.destroy(opened, progress: progress)
        }
    }

    /// Closes a volume made before backing stores were private to their owner; with
    /// `slowParts`, also what may take long (every object's own mode).
    public func restrictPermissions(slowParts: Bool) {
        switch self {
        case .directory(let path):
            EmbeddedVolume(path).restrictPermissions(objects: slowParts)
        case .postgres:
            break  // its cache is made private when it is created
        }
    }
}
