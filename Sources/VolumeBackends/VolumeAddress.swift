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
    /// A network volume: its metadata in PostgreSQL, its chunks in an object store.
    case postgres(PostgresAddress)

    /// Parses a volume argument: a `postgres://` (or `postgresql://`) URL names a network
    /// volume, anything else the directory of an embedded one (relative to the working
    /// directory).
    ///
    /// - Throws: when a URL carries a password (it would show in `ps`, in the mount table
    ///   and in logs) or no `volume` parameter.
    public init(_ argument: String) throws(VolumeError) {
        if PostgresAddress.isURL(argument) {
            let address = try PostgresAddress(argument)
            guard address.volume != nil else {
                throw VolumeError("\(argument) names a database, not a volume: add ?volume=NAME")
            }
            self = .postgres(address)
        } else {
            self = .directory(absolutePath(argument))
        }
    }

    /// How the volume is named in messages and in the mount's source field.
    public var description: String {
        switch self {
        case .directory(let path): path
        case .postgres(let address): address.url
        }
    }

    /// A short name made of the address, fit for a file name (for the default cache and
    /// log of a network volume).
    public var slug: String {
        let text: String
        switch self {
        case .directory(let path): text = path
        case .postgres(let address): text = "\(address.host)-\(address.port)-\(address.database)-\(address.volume ?? "")"
        }
        return String(text.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_" ? $0 : "_" })
            .trimmingCharacters(in: CharacterSet(charactersIn: "_"))
    }
}

/// A PostgreSQL URL naming a database, and in it (with `?volume=NAME`) a volume.
public struct PostgresAddress: Sendable, Equatable {
    /// The URL as given: it carries no password.
    public let url: String
    public let host: String
    public let port: Int
    public let database: String
    public let volume: String?

    static func isURL(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    /// - Throws: for a URL that does not parse, or that carries a password.
    public init(_ url: String) throws(VolumeError) {
        guard Self.isURL(url), let components = URLComponents(string: url) else {
            throw VolumeError("'\(url)' is not a PostgreSQL URL; write it like postgres://USER@HOST:PORT/DB?volume=NAME")
        }
        guard components.password == nil else {
            throw VolumeError("the URL carries a password; put it in PGPASSWORD or a 0600 file named by --password-file instead")
        }
        self.url = url
        host = components.host.flatMap { $0.isEmpty ? nil : $0 } ?? "localhost"
        port = components.port ?? 5432
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        database = path.isEmpty ? (components.user ?? "postgres") : path
        let named = components.queryItems?.first { $0.name == "volume" }?.value
        volume = named.flatMap { $0.isEmpty ? nil : $0 }
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
