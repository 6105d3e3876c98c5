// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "netvol",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "netvol", targets: ["netvol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Finds and links libfuse3; no code of its own.
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // Finds and links libxxhash for chunk checksums.
        .systemLibrary(name: "CXXHash", providers: [.apt(["libxxhash-dev"])]),
        // The few libfuse entry points Swift cannot call directly (macros, versioned symbols).
        .target(name: "CFuse", dependencies: ["CFuse3"], cSettings: [.define("_GNU_SOURCE")]),
        // The values every layer speaks in; no backend needs to import another.
        .target(name: "VolumeTypes", dependencies: ["CXXHash"]),
        // The two protocols the filesystem holds, and one module per implementation.
        .target(name: "ChunkStore", dependencies: ["VolumeTypes"]),
        .target(name: "LocalChunkStore", dependencies: ["ChunkStore"]),
        .target(name: "Metadata", dependencies: ["VolumeTypes"]),
        .target(name: "SQLiteMetadata", dependencies: [
            "Metadata",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // Chunks in any S3-compatible object store, over HTTP with Signature V4.
        .target(name: "S3ChunkStore", dependencies: [
            "ChunkStore",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        // A bounded on-disk cache of whole objects in front of another store.
        .target(name: "CachedChunkStore", dependencies: ["ChunkStore"]),
        // Finds and links libpq, PostgreSQL's client library.
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .target(name: "PostgresMetadata", dependencies: ["CLibPQ", "Metadata"]),
        // POSIX semantics over the two protocols; links no database or HTTP library.
        .target(name: "VolumeFS", dependencies: [
            "ChunkStore", "Metadata",
            .product(name: "Logging", package: "swift-log"),
            // A directory's kept names, in the order they were made.
            .product(name: "OrderedCollections", package: "swift-collections"),
        ]),
        // Turns a volume's name (a directory or a URL) into a Metadata and a ChunkStore.
        .target(name: "VolumeBackends", dependencies: [
            "Metadata", "ChunkStore", "SQLiteMetadata", "LocalChunkStore", "PostgresMetadata", "S3ChunkStore", "CachedChunkStore",
        ]),
        .target(name: "FuseMount", dependencies: [
            "CFuse", "VolumeFS",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        .executableTarget(name: "netvol", dependencies: [
            "FuseMount", "VolumeFS", "Metadata", "VolumeBackends", "CachedChunkStore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            // /metrics: the daemon's counters in Prometheus' text format, over HTTP.
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            // `netvol stats` reads them from the daemon's unix socket.
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
        .testTarget(name: "ChunkStoreTests", dependencies: [
            "ChunkStore", "LocalChunkStore", "S3ChunkStore", "CachedChunkStore",
            // A scripted HTTP server, to see how the S3 client meets a misbehaving one.
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "MetadataTests", dependencies: ["Metadata", "SQLiteMetadata", "PostgresMetadata"]),
        .testTarget(name: "VolumeFSTests", dependencies: [
            "VolumeFS", "Metadata", "ChunkStore", "SQLiteMetadata", "LocalChunkStore",
            "PostgresMetadata", "S3ChunkStore", "CachedChunkStore",
            // A second connection to an embedded volume's database, to hold its write lock.
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // Linux calls the tests make that Swift's Glibc module does not show.
        .target(name: "CSyscalls", path: "Tests/CSyscalls"),
        .testTarget(name: "FuseMountTests", dependencies: ["FuseMount", "VolumeFS", "Metadata", "ChunkStore", "SQLiteMetadata",
                                                           "LocalChunkStore", "CSyscalls",
                                                           .product(name: "Logging", package: "swift-log")]),
    ]
)
