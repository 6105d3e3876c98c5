// VolumeBackends: the one place that turns what a person names a volume by (a directory,
// or a metadata URL) into a `Metadata` and a `ChunkStore`, and that creates, lists and
// destroys volumes. Everything above it (the filesystem, the mount, the command-line
// tool) holds only the two protocols; everything that knows a backend lives below it.
//
// Every failure here is a `VolumeError`: one line a person can act on.

#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A volume, as named on the command line.
public enum VolumeAddress: Sendable, Equatable, CustomStringConvertible {
    /// An embedded volume: a directory holding the SQLite metadata and the chunk objects
    /// (an absolute path).
    case directory(String)

    /// Parses a volume argument: a path (relative to the working directory) names an
    /// embedded volume.
    public init(_ argument: String) {
        self = .directory(absolutePath(argument))
    }

    /// How the volume is named in messages and in the mount's source field.
    public var description: String {
        switch self {
        case .directory(let path): path
        }
    }
}

/// Why a volume could not be created, opened or changed: one line for a person.
public struct VolumeError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `path` made absolute against the working directory, with `.` and `..` resolved.
public func absolutePath(_ path: String) -> String {
    let url = URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath))
    return url.standardizedFileURL.path
}

/// True when `path` exists and is a directory (following symbolic links).
public func isDirectory(_ path: String) -> Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
}

func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }
