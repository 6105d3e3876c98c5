// VolumeTypes: the values every layer of netvol speaks in (inode numbers, names, times,
// attributes, chunk references, object ids and their checksums, the lease), with no
// behaviour of their own. The metadata and chunk store protocols and every
// implementation of them share these, so no backend needs to import another.

/// The number of an inode; the root directory is 1.
public struct InodeNumber: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static let root = InodeNumber(1)
    public static func < (a: InodeNumber, b: InodeNumber) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "#\(rawValue)" }
}

/// A directory entry's name: raw bytes, since POSIX names need not be UTF-8.
public struct FileName: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = Array(string.utf8) }
    public init(stringLiteral value: String) { self.init(value) }
    public var description: String { String(decoding: bytes, as: UTF8.self) }

    /// The longest name a directory entry may have, in bytes (NAME_MAX).
    public static let maxLength = 255
}

/// A point in time, in nanoseconds since the Unix epoch.
public struct Timestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    /// Times past what 64 bits of nanoseconds hold (before 1678 or after 2262) are clamped
    /// to the nearest one that fits: a caller's `touch -d` never overflows.
    public init(seconds: Int64, nanoseconds: Int64) {
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, overflow2) = scaled.addingReportingOverflow(nanoseconds)
        if overflow || overflow2 {
            self.nanoseconds = seconds < 0 ? Int64.min : Int64.max
        } else {
            self.nanoseconds = sum
        }
    }
    /// Whole seconds, rounded down (so `subsecondNanoseconds` is never negative).
    public var seconds: Int64 {
        let remainder = nanoseconds % 1_000_000_000
        return nanoseconds / 1_000_000_000 - (remainder < 0 ? 1 : 0)
    }
    public var subsecondNanoseconds: Int64 {
        let remainder = nanoseconds % 1_000_000_000
        return remainder < 0 ? remainder + 1_000_000_000 : remainder
    }
    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.nanoseconds < b.nanoseconds }
    public var description: String { "\(seconds).\(subsecondNanoseconds)" }
}

/// File type bits of `st_mode`.
public enum FileType: UInt32, Sendable {
    case fifo = 0o010000
    case characterDevice = 0o020000
    case directory = 0o040000
    case blockDevice = 0o060000
    case regular = 0o100000
    case symlink = 0o120000
    case socket = 0o140000

    public static let mask: UInt32 = 0o170000
}

/// The attributes of one inode, as `stat` reports them.
public struct Attr: Equatable, Sendable {
    public var ino: InodeNumber
    /// `st_mode`: type bits and permission bits.
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    /// Bytes of chunk objects the file holds: what `du` counts (holes take none).
    public var storedBytes: UInt64

    public init(ino: InodeNumber, mode: UInt32, nlink: UInt32, uid: UInt32, gid: UInt32, rdev: UInt64,
                size: UInt64, atime: Timestamp, mtime: Timestamp, ctime: Timestamp, storedBytes: UInt64 = 0) {
        self.ino = ino; self.mode = mode; self.nlink = nlink; self.uid = uid; self.gid = gid
        self.rdev = rdev; self.size = size; self.atime = atime; self.mtime = mtime; self.ctime = ctime
        self.storedBytes = storedBytes
    }

    public var type: FileType? { FileType(rawValue: mode & FileType.mask) }
    public var isDirectory: Bool { type == .directory }
    public var isRegular: Bool { type == .regular }
    public var isSymlink: Bool { type == .symlink }
    public var permissions: UInt32 { mode & 0o7777 }
}

/// One entry of a directory listing.
public struct DirEntry: Equatable, Sendable {
    public var name: FileName
    public var attr: Attr
    /// Position of this entry in its directory; a listing resumed after `cookie` continues
    /// with the entries added after it, however the directory changed in between.
    public var cookie: Int64
    public init(name: FileName, attr: Attr, cookie: Int64) { self.name = name; self.attr = attr; self.cookie = cookie }
}

/// One stored chunk of a regular file: chunk `index` covers bytes
/// `[index * chunkSize, (index + 1) * chunkSize)` of the file; its object holds the first
/// `length` bytes of that range (the rest, up to the file size, reads as zeros).
public struct ChunkRef: Equatable, Sendable {
    public var index: Int
    public var location: ChunkLocation
    public var length: Int
    public var checksums: BlockChecksums

    public init(index: Int, object: ObjectID, length: Int, checksums: BlockChecksums) {
        self.index = index; self.location = .object(object); self.length = length; self.checksums = checksums
    }

    /// A chunk kept in its metadata row: small files then cost no object of their own.
    public init(index: Int, inline bytes: [UInt8], checksums: BlockChecksums) {
        self.index = index; self.location = .inline(bytes); self.length = bytes.count; self.checksums = checksums
    }

    /// The chunk store object holding the bytes, or nil when they are inline.
    // Out of line, as `inlineBytes`: matched inside a closure that the optimizer also
    // works on, a switch over `location` trips an ownership verifier crash of the Swift
    // 6.3 release build (in PostgresMetadata.commitData).
    @inline(never)
    public var object: ObjectID? {
        if case .object(let id) = location { return id }
        return nil
    }

    /// The bytes of an inline chunk, or nil when they are in an object.
    @inline(never)
    public var inlineBytes: [UInt8]? {
        if case .inline(let bytes) = location { return bytes }
        return nil
    }
}

/// What a data commit left: the file's attributes and the objects it stopped using.
public struct Committed: Equatable, Sendable {
    public var attr: Attr
    public var retired: [ObjectID]
    public init(attr: Attr, retired: [ObjectID]) { self.attr = attr; self.retired = retired }
}

/// Where a chunk's bytes live.
public enum ChunkLocation: Equatable, Sendable, CustomStringConvertible {
    case object(ObjectID)
    case inline([UInt8])

    /// For messages: the object, or that the bytes are inline (not the bytes themselves).
    public var description: String {
        switch self {
        case .object(let id): "object \(id)"
        case .inline: "inline data"
        }
    }
}

/// What a `setattr` changes besides the size; nil leaves a field alone.
public struct AttrChanges: Equatable, Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var atime: Timestamp?
    public var mtime: Timestamp?
    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, atime: Timestamp? = nil, mtime: Timestamp? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.atime = atime; self.mtime = mtime
    }
    public var isEmpty: Bool { mode == nil && uid == nil && gid == nil && atime == nil && mtime == nil }
}

/// Settings fixed or grown over a volume's life.
public struct VolumeSettings: Equatable, Sendable {
    public var chunkSize: Int
    public var sizeLimit: UInt64
    public init(chunkSize: Int, sizeLimit: UInt64) { self.chunkSize = chunkSize; self.sizeLimit = sizeLimit }
}

/// Size and usage, for `statfs` and `netvol status`.
public struct VolumeUsage: Equatable, Sendable {
    public var sizeLimit: UInt64
    public var usedBytes: UInt64
    public var inodes: UInt64
    public var chunkSize: Int
    public init(sizeLimit: UInt64, usedBytes: UInt64, inodes: UInt64, chunkSize: Int) {
        self.sizeLimit = sizeLimit; self.usedBytes = usedBytes; self.inodes = inodes; self.chunkSize = chunkSize
    }
}

/// The writer lease's token: it only ever grows, and every write transaction of a writer
/// checks it, so a writer that lost the lease can never commit again.
public struct LeaseToken: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
    public static func < (a: LeaseToken, b: LeaseToken) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "\(rawValue)" }
}

/// The volume's single-writer lease as the database sees it at `now` (the database's clock).
public struct Lease: Equatable, Sendable {
    public var holder: String?
    public var token: LeaseToken
    public var expiresAt: Timestamp
    public var renewedAt: Timestamp
    public var now: Timestamp
    public init(holder: String?, token: LeaseToken, expiresAt: Timestamp, renewedAt: Timestamp, now: Timestamp) {
        self.holder = holder; self.token = token; self.expiresAt = expiresAt; self.renewedAt = renewedAt; self.now = now
    }
    /// Someone holds the lease and it has not expired.
    public var isHeld: Bool { holder != nil && expiresAt > now }

    /// Set by `acquireLease` when the lease was free (given back or broken, not merely
    /// expired) and other mounts are attached: they may be answering opens from their
    /// caches on the strength of it, for up to `quietSeconds` after they last looked, so
    /// the new holder changes nothing until that long after it took the lease.
    public var quietFirst = false

    /// The holder defers the commits of files closed on its mount, which it may only while
    /// no other mount is attached (`Metadata.deferCommits`): a mount that attaches waits
    /// until this is off, or the lease is no longer held, before it answers anything.
    public var deferring = false

    /// How long a mount that found the lease free may trust that nothing changes without
    /// its hearing of it, counted from when it asked.
    public static let quietSeconds = 1.0
}

/// The identity a writer's transactions are checked against.
public struct Fence: Equatable, Sendable {
    public var holder: String
    public var token: LeaseToken
    public init(holder: String, token: LeaseToken) { self.holder = holder; self.token = token }
}

/// One committed change, for readers to invalidate what they cached.
public struct Change: Equatable, Sendable {
    public var sequence: Int64
    /// An inode whose attributes, data or xattrs changed.
    public var ino: InodeNumber?
    /// A directory entry that appeared, vanished or changed target.
    public var parent: InodeNumber?
    public var name: FileName?
    public init(sequence: Int64, ino: InodeNumber?, parent: InodeNumber?, name: FileName?) {
        self.sequence = sequence; self.ino = ino; self.parent = parent; self.name = name
    }
}

/// Changes after a point in the feed.
public struct ChangeBatch: Sendable {
    public var changes: [Change]
    /// The newest sequence number in the feed.
    public var latest: Int64
    /// True when changes after the asked point were already pruned: the reader must
    /// forget everything it cached.
    public var truncated: Bool
    /// Nobody held the lease (it was given back or broken) as of a moment no later than
    /// the changes were read: nothing changes before `Lease.quietSeconds` after it.
    public var leaseFree: Bool
    public init(changes: [Change], latest: Int64, truncated: Bool, leaseFree: Bool = false) {
        self.changes = changes; self.latest = latest; self.truncated = truncated; self.leaseFree = leaseFree
    }
}

/// A mount that is attached to the volume.
public struct Session: Equatable, Sendable {
    /// A heartbeat keeps its row at least this long, whatever staleness the heartbeat that
    /// cleans up asks for: mounts count on being waited for by a new writer
    /// (`Lease.quietFirst`) for half of it after their own heartbeat, and another mount
    /// may run with a much shorter lease ttl.
    public static let keptSeconds = 60.0

    public var id: String
    public var host: String
    public var pid: Int32
    public var mountpoint: String
    /// The mount's device number, "major:minor", as /proc/self/mountinfo shows it.
    public var device: String
    public var mode: String
    public var startedAt: Timestamp
    public var heartbeatAt: Timestamp
    public init(id: String, host: String, pid: Int32, mountpoint: String, device: String, mode: String,
                startedAt: Timestamp, heartbeatAt: Timestamp) {
        self.id = id; self.host = host; self.pid = pid; self.mountpoint = mountpoint; self.device = device
        self.mode = mode; self.startedAt = startedAt; self.heartbeatAt = heartbeatAt
    }
}

/// Flags of `rename`.
public struct RenameFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Fail with EEXIST if the new name exists (RENAME_NOREPLACE).
    public static let noReplace = RenameFlags(rawValue: 1)
    /// Swap the two names atomically (RENAME_EXCHANGE).
    public static let exchange = RenameFlags(rawValue: 2)
}

/// How `setxattr` treats an existing attribute.
public enum XattrMode: Sendable {
    case any
    /// Fail with EEXIST if the attribute exists (XATTR_CREATE).
    case create
    /// Fail with ENODATA if the attribute does not exist (XATTR_REPLACE).
    case replace
}
