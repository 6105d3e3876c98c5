#if canImport(Glibc)
import Glibc
#endif
public import ChunkStore
public import Metadata

/// Why a filesystem operation failed; `errno` is what the kernel (and the application) sees.
public enum FSError: Error, Equatable, Sendable {
    case metadata(MetadataError)
    /// The chunk store failed reading or writing chunk `chunk` of `ino`.
    case store(StoreError, ino: InodeNumber, chunk: Int)
    /// The chunk store failed at something about no one chunk (listing its objects).
    case storeFailure(StoreError)
    /// Chunk `chunk` of `ino` does not match its recorded checksum.
    case corrupt(ino: InodeNumber, chunk: Int, String)
    /// An offset or size past the largest file netvol keeps.
    case fileTooBig
    /// The volume's size limit would be exceeded.
    case noSpace
    case invalidArgument(String)
    case nameTooLong
    /// A file handle that was never opened or is already released.
    case badHandle
    case notSupported(String)
    /// A buffer too small for the answer (getxattr, listxattr) or an xattr name too long.
    case range
    /// An xattr value larger than the volume keeps.
    case valueTooBig
    /// This mount may not write: it is read-only, or another worker (`holder`) has the
    /// writer lease.
    case readOnly(holder: String?)
    /// Data this mount had accepted into its buffers was dropped because it lost the
    /// writer lease before committing it.
    case lostWrites

    /// The errno the kernel sees.
    public var errno: Int32 {
        switch self {
        case .metadata(let error):
            switch error {
            case .notFound: ENOENT
            case .exists: EEXIST
            case .notDirectory: ENOTDIR
            case .isDirectory: EISDIR
            case .notEmpty: ENOTEMPTY
            case .invalidArgument: EINVAL
            case .nameTooLong: ENAMETOOLONG
            case .noSpace: ENOSPC
            case .noAttribute: ENODATA
            case .notPermitted: EPERM
            case .tooManyLinks: EMLINK
            // The volume's own metadata is unreadable or the database failed: nothing the
            // caller did wrong, and nothing it can fix by retrying differently.
            case .notAVolume, .database: EIO
            // Another worker holds the writer lease, or took it from us.
            case .fenced, .leaseHeld: EROFS
            }
        case .store(.noSpace, _, _): ENOSPC
        case .store(.notFound, _, _), .store(.exists, _, _), .store(.io, _, _): EIO
        case .storeFailure(.noSpace): ENOSPC
        case .storeFailure(.notFound), .storeFailure(.exists), .storeFailure(.io): EIO
        case .corrupt: EIO
        case .fileTooBig: EFBIG
        case .noSpace: ENOSPC
        case .invalidArgument: EINVAL
        case .nameTooLong: ENAMETOOLONG
        case .badHandle: EBADF
        case .notSupported: EOPNOTSUPP
        case .range: ERANGE
        case .valueTooBig: E2BIG
        case .readOnly: EROFS
        // The application was told its writes succeeded; only an I/O error is honest now.
        case .lostWrites: EIO
        }
    }
}

extension FSError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .metadata(let error): "metadata: \(error)"
        case .store(let error, let ino, let chunk): "chunk \(chunk) of inode \(ino.rawValue): \(error)"
        case .storeFailure(let error): "chunk store: \(error)"
        case .corrupt(let ino, let chunk, let why): "chunk \(chunk) of inode \(ino.rawValue) is corrupt: \(why)"
        case .fileTooBig: "file too big"
        case .noSpace: "volume size limit reached"
        case .invalidArgument(let why): "invalid argument: \(why)"
        case .nameTooLong: "name longer than \(FileName.maxLength) bytes"
        case .badHandle: "unknown file handle"
        case .notSupported(let what): "not supported: \(what)"
        case .range: "buffer too small or name too long"
        case .valueTooBig: "value too big"
        case .readOnly(let holder): holder.map { "read-only: the writer lease is held by \($0)" } ?? "read-only mount"
        case .lostWrites: "buffered writes were dropped when the writer lease was lost"
        }
    }
}
