#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LocalChunkStore
import Metadata
import SQLiteMetadata

/// An embedded volume: a directory with `volume.db` (SQLite) and `chunks/`.
///
/// The directory holds every file's bytes, unencrypted: it is 0700 and its files 0600
/// (objects 0400), so only the daemon's user reads them; the mount enforces permissions.
struct EmbeddedVolume {
    static let directoryMode: mode_t = 0o700
    static let logMode: mode_t = 0o600
    let path: String
    var databasePath: String { path + "/" + SQLiteMetadata.fileName }
    var chunksPath: String { path + "/chunks" }
    var logPath: String { path + "/netvol.log" }

    init(_ path: String) { self.path = path }

    /// Checks that the directory is a volume, with a message naming what is wrong.
    func validate() throws(VolumeError) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw VolumeError("volume \(path) does not exist; create it with: netvol create \(path) --size 10G")
        }
        guard isDirectory(path) else { throw VolumeError("volume \(path) is not a directory") }
        guard FileManager.default.fileExists(atPath: databasePath) else {
            throw VolumeError("\(path) is not a netvol volume (no \(SQLiteMetadata.fileName)); create one with: netvol create DIR --size 10G")
        }
    }

    func open(address: VolumeAddress) throws(VolumeError) -> OpenedVolume {
        try validate()
        do {
            let metadata = try SQLiteMetadata(path: databasePath)
            let store = try LocalChunkStore(root: chunksPath)
            return OpenedVolume(address: address, metadata: metadata, store: store, defaultLogPath: logPath,
                                storeDescription: nil, cache: nil)
        } catch {
            throw VolumeError("cannot open volume \(path): \(error)")
        }
    }

    func create(_ spec: VolumeSpec) throws(VolumeError) {
        let files = FileManager.default
        if files.fileExists(atPath: path) {
            guard isDirectory(path) else { throw VolumeError("\(path) exists and is not a directory") }
            if files.fileExists(atPath: databasePath) { throw VolumeError("\(path) is already a netvol volume") }
            let contents = (try? files.contentsOfDirectory(atPath: path)) ?? []
            guard contents.isEmpty else { throw VolumeError("\(path) is not empty; a volume needs a directory of its own") }
        }
        var created = false
        do {
            if !files.fileExists(atPath: path) {
                try? files.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                guard mkdir(path, Self.directoryMode) == 0 else {
                    throw VolumeError("cannot create \(path): \(describeErrno(errno))")
                }
                created = true
            } else {
                // An empty directory someone made for the volume: private before anything is in it.
                guard chmod(path, Self.directoryMode) == 0 else {
                    throw VolumeError("cannot make \(path) private: \(describeErrno(errno))")
                }
            }
            _ = try LocalChunkStore(root: chunksPath)
            _ = try SQLiteMetadata.create(path: databasePath, chunkSize: spec.chunkSize, sizeLimit: spec.sizeLimit, now: spec.now)
        } catch {
            try? files.removeItem(atPath: chunksPath)
            try? files.removeItem(atPath: databasePath)
            if created { try? files.removeItem(atPath: path) }
            if let error = error as? VolumeError { throw error }
            throw VolumeError("cannot create volume \(path): \(error)")
        }
    }

    func destroy(progress: (String) -> Void) throws(VolumeError) {
        progress("deleting \(path)")
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw VolumeError("cannot delete \(path): \(error.localizedDescription)")
        }
    }

    /// Closes a volume made before volumes were private to everyone but its owner: the
    /// directory, the log and the store's directories at once; the objects' own modes
    /// (unreachable now anyway) with `objects`.
    func restrictPermissions(objects: Bool) {
        LocalChunkStore.restrict(path, to: Self.directoryMode)
        LocalChunkStore.restrict(logPath, to: Self.logMode)
        if let store = try? LocalChunkStore(root: chunksPath) { store.restrictPermissions(objects: objects) }
    }
}
