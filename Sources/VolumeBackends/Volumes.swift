public import ChunkStore
public import Metadata

#if canImport(Glibc)
public import Glibc
#endif

/// The mode of a daemon's log: it names files, so it is as private as the volume.
public let logFileMode: mode_t = 0o600

/// An open volume: its metadata and its chunk store.
public struct OpenedVolume: Sendable {
    public let address: VolumeAddress
    public let metadata: any Metadata
    public let store: any ChunkStore
    /// Where a background daemon of this volume logs unless told otherwise.
    public let defaultLogPath: String
}

/// What `create` needs besides the address.
public struct VolumeSpec: Sendable {
    public var sizeLimit: UInt64
    public var chunkSize: Int
    public var now: Timestamp
    public init(sizeLimit: UInt64, chunkSize: Int, now: Timestamp) {
        self.sizeLimit = sizeLimit; self.chunkSize = chunkSize; self.now = now
    }
}

extension VolumeAddress {
    /// Opens an existing volume.
    ///
    /// - Throws: a `VolumeError` naming what is wrong: no such volume, not a volume,
    ///   a backend that cannot be reached.
    public func open() throws(VolumeError) -> OpenedVolume {
        switch self {
        case .directory(let path):
            return try EmbeddedVolume(path).open(address: self)
        }
    }

    /// Creates a new, empty volume; refuses (changing nothing) when one exists there.
    public func create(_ spec: VolumeSpec) throws(VolumeError) {
        switch self {
        case .directory(let path):
            try EmbeddedVolume(path).create(spec)
        }
    }

    /// Closes a volume made before backing stores were private to their owner; with
    /// `slowParts`, also what may take long (every object's own mode).
    public func restrictPermissions(slowParts: Bool) {
        switch self {
        case .directory(let path):
            EmbeddedVolume(path).restrictPermissions(objects: slowParts)
        }
    }
}
