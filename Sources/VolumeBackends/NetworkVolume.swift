#if canImport(Glibc)
import Glibc
#endif
import CachedChunkStore
import ChunkStore
import Foundation
import Metadata
import PostgresMetadata
import S3ChunkStore

/// A network volume: metadata in PostgreSQL, chunks in an S3-compatible object store,
/// and on each host a bounded local cache of the chunks it read or wrote.
struct NetworkVolume {
    static let cacheRoot = "/var/cache/netvol"
    static let logRoot = "/var/log/netvol"
    let address: PostgresAddress
    let slug: String

    var volumeName: String { address.volume ?? "" }

    func open(address volumeAddress: VolumeAddress, _ options: OpenOptions) throws(VolumeError) -> OpenedVolume {
        let metadata: PostgresMetadata
        do {
            metadata = try PostgresMetadata(url: address.url, password: options.credentials.postgresPassword,
                                            deadlineSeconds: options.timeoutSeconds)
        } catch {
            throw describe(error)
        }
        let s3 = try Self.store(metadata.storeSettings, credentials: options.credentials,
                                timeoutSeconds: options.timeoutSeconds)
        var store: any ChunkStore = s3
        if let cache = options.cache {
            let directory = cache.directory ?? Self.cacheRoot + "/" + slug
            do {
                try Self.makePrivateDirectory(Self.cacheRoot)
                store = try CachedChunkStore(directory: directory, capacityBytes: Int(clamping: cache.capacityBytes), backing: s3)
            } catch {
                throw VolumeError("cannot use the cache directory \(directory): \(error)")
            }
        }
        let location = "\(metadata.storeSettings["url"] ?? "?") at \(metadata.storeSettings["endpoint"] ?? "?")"
        return OpenedVolume(address: volumeAddress, metadata: metadata, store: store,
                            defaultLogPath: Self.logRoot + "/" + slug + ".log", storeDescription: location,
                            cache: options.cache.map { CacheSettings(directory: $0.directory ?? Self.cacheRoot + "/" + slug,
                                                                     capacityBytes: $0.capacityBytes) })
    }

    func create(_ spec: VolumeSpec, credentials: Credentials) throws(VolumeError) {
        guard let storeSpec = spec.store else {
            throw VolumeError("a network volume needs --store s3://BUCKET/PREFIX and --endpoint URL")
        }
        let (bucket, prefix) = try Self.parseStoreURL(storeSpec.url)
        let settings = ["kind": "s3", "url": storeSpec.url, "bucket": bucket, "prefix": prefix,
                        "endpoint": storeSpec.endpoint, "region": storeSpec.region]
        let store = try Self.store(settings, credentials: credentials)
        defer { store.close() }
        do {
            try store.checkBucket()
            // Two volumes in one prefix would collect each other's objects as garbage.
            if try !store.list().isEmpty {
                throw VolumeError("\(storeSpec.url) already holds objects; give each volume a prefix of its own")
            }
        } catch let error as VolumeError {
            throw error
        } catch {
            throw VolumeError("\(error)")
        }
        do {
            let metadata = try PostgresMetadata.create(url: address.url, password: credentials.postgresPassword,
                                                       chunkSize: spec.chunkSize, sizeLimit: spec.sizeLimit,
                                                       store: settings, now: spec.now)
            metadata.close()
        } catch {
            throw describe(error)
        }
    }

    static func destroy(_ opened: OpenedVolume, progress: (String) -> Void) throws(VolumeError) {
        guard let metadata = opened.metadata as? PostgresMetadata else { return }
        let objects: [ObjectID]
        do {
            objects = try opened.store.list()
        } catch {
            throw VolumeError("cannot list the objects of \(opened.address): \(error)")
        }
        progress("deleting \(objects.count) objects from \(opened.storeDescription ?? "the store")")
        for (done, object) in objects.enumerated() {
            do {
                try opened.store.delete(object)
            } catch {
                throw VolumeError("cannot delete object \(object) (\(done) of \(objects.count) deleted; run destroy again): \(error)")
            }
            if (done + 1) % 1000 == 0 { progress("deleted \(done + 1) of \(objects.count) objects") }
        }
        do {
            try metadata.destroy()
        } catch {
            throw VolumeError("deleted the objects of \(opened.address), but not its metadata (run destroy again): \(error)")
        }
        metadata.close()
    }

    /// The S3 store a volume's settings name.
    static func store(_ settings: [String: String], credentials: Credentials,
                      timeoutSeconds: Double = OpenOptions.defaultTimeoutSeconds) throws(VolumeError) -> S3ChunkStore {
        guard settings["kind"] == "s3", let bucket = settings["bucket"], let endpoint = settings["endpoint"] else {
            throw VolumeError("the volume's store settings are incomplete: \(settings.keys.sorted())")
        }
        let configuration = S3Configuration(endpoint: endpoint, bucket: bucket, prefix: settings["prefix"] ?? "",
                                            region: settings["region"] ?? "us-east-1",
                                            credentials: try credentials.requireS3(),
                                            deadline: .milliseconds(Int64(timeoutSeconds * 1000)))
        do {
            return try S3ChunkStore(configuration: configuration)
        } catch {
            throw VolumeError("cannot use the object store at \(endpoint): \(error)")
        }
    }

    /// `s3://BUCKET/PREFIX` as bucket and prefix (without slashes at either end).
    static func parseStoreURL(_ url: String) throws(VolumeError) -> (bucket: String, prefix: String) {
        guard url.hasPrefix("s3://") else {
            throw VolumeError("--store '\(url)' is not an s3:// URL; write it like s3://BUCKET/PREFIX")
        }
        let rest = url.dropFirst("s3://".count)
        let bucket = String(rest.prefix { $0 != "/" })
        let prefix = rest.dropFirst(bucket.count).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        guard !bucket.isEmpty else { throw VolumeError("--store '\(url)' names no bucket; write it like s3://BUCKET/PREFIX") }
        return (bucket, prefix)
    }

    static func makePrivateDirectory(_ path: String) throws(VolumeError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw VolumeError("cannot create \(path): \(describeErrno(errno))")
        }
    }

    /// A metadata failure as one line that names the volume.
    func describe(_ error: MetadataError) -> VolumeError {
        switch error {
        case .exists:
            VolumeError("a volume named \(volumeName) already exists in database \(address.database) at \(address.host):\(address.port)")
        case .notAVolume(let why), .database(let why):
            VolumeError(why)
        default:
            VolumeError("\(address.url): \(error)")
        }
    }
}

/// Every volume of a PostgreSQL database.
public func listVolumes(_ url: String, credentials: Credentials) throws(VolumeError) -> [VolumeSummary] {
    let address = try PostgresAddress(url)
    do {
        return try PostgresMetadata.list(url: address.url, password: credentials.postgresPassword)
    } catch {
        throw NetworkVolume(address: address, slug: "").describe(error)
    }
}
