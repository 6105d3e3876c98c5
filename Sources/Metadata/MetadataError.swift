public import VolumeTypes

/// Why a metadata operation failed.
public enum MetadataError: Error, Equatable, Sendable {
    case notFound
    case exists
    case notDirectory
    case isDirectory
    case notEmpty
    /// The operation makes no sense for these arguments (a directory into its own subtree, say).
    case invalidArgument(String)
    case nameTooLong
    /// The volume's size limit would be exceeded.
    case noSpace
    /// The extended attribute does not exist (ENODATA).
    case noAttribute
    /// Not allowed whatever the permissions (hard link to a directory).
    case notPermitted
    case tooManyLinks
    /// The directory is not a volume, or its metadata is damaged.
    case notAVolume(String)
    /// The database failed; the message says how.
    case database(String)
    /// This writer's lease token is no longer the volume's: another worker took the
    /// lease over (or it was broken or released), so the transaction was refused.
    case fenced(holder: String?)
    /// Another worker holds the writer lease.
    case leaseHeld(Lease)
}
