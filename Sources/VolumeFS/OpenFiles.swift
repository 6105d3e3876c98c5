#if canImport(Glibc)
import Glibc
#endif
import ChunkStore
import Dispatch
public import Metadata
import Synchronization

// Opening, flushing and closing files: the per-inode state every handle shares.
extension VolumeFS {
    /// Opens `ino` with open(2) `flags`; the handle must be released with `release`.
    public func open(_ ino: InodeNumber, flags: Int32) throws(FSError) -> FileHandleID {
        try open(ino, flags: flags, touchingAtime: options.relatime)
    }

    func open(_ ino: InodeNumber, flags: Int32, touchingAtime: Bool) throws(FSError) -> FileHandleID {
        // Close-to-open: a mount that does not hold the lease asks the metadata itself, so
        // that an open sees what another mount committed before it, even if the change
        // feed has not said so yet. The writer's cache is exact, and so is a reader's
        // while nobody holds the lease (`isQuiet`).
        if isWriter || isQuietAfterFollowing() {
            return try open(Self.lift { () throws(MetadataError) in try cache.getattr(ino) }, flags: flags, touchingAtime: touchingAtime)
        }
        if openFiles.withLock({ $0[ino] != nil }) {
            return try open(Self.lift { () throws(MetadataError) in try cache.freshAttr(ino) }, flags: flags, touchingAtime: touchingAtime)
        }
        // A first open asks for the attributes and the chunk map together: one round trip.
        let (attr, chunks) = try Self.lift { () throws(MetadataError) in try cache.attrAndChunks(ino) }
        return try open(attr, flags: flags, touchingAtime: touchingAtime, chunks: chunks)
    }

    /// Opens the file whose attributes were just read (or made); `chunks`, when given, is
    /// its chunk map read with them.
    func open(_ attr: Attr, flags: Int32, touchingAtime: Bool, chunks: [ChunkRef]? = nil) throws(FSError) -> FileHandleID {
        let ino = attr.ino
        if attr.isDirectory { throw .metadata(.isDirectory) }
        guard attr.isRegular else { throw .notSupported("opening special files") }
        let access = flags & O_ACCMODE
        if access != O_RDONLY { try checkMayWrite() }
        let file = try attach(attr, chunks: chunks)
        var handle = Handle(ino: ino, readable: access != O_WRONLY, writable: access != O_RDONLY)
        if handle.writable && flags & DirectIO.flag != 0 { file.lock.withLock { file.writtenPastPageCache = true } }
        // Pages the kernel cached stay valid while the file is as it was when they were
        // read: a second open (or a second process) then reads from memory.
        let stamp = CacheStamp(pending(attr))
        handle.keepCache = cacheStamps.withLock { stamps in
            defer { stamps[ino] = stamp }
            return stamps[ino] == stamp
        }
        let id = FileHandleID(rawValue: nextHandle.add(1, ordering: .relaxed).oldValue)
        handles.withLock { $0[id] = handle }
        if flags & O_TRUNC != 0 && handle.writable {
            do {
                try truncate(ino, to: 0)
            } catch {
                release(ino, id)
                throw error
            }
        }
        if handle.readable && touchingAtime { touchAtime(attr) }
        return id
    }

    /// Creates a regular file and opens it.
    public func create(_ parent: InodeNumber, _ name: FileName, mode: UInt32, flags: Int32,
                       uid: UInt32, gid: UInt32) throws(FSError) -> (Attr, FileHandleID) {
        try Self.checkNew(name)
        let attr: Attr
        do {
            attr = try mutating { () throws(MetadataError) in
                let now = Self.now()
                // The writer answers at once and makes the file when it commits it (MetadataCache).
                if options.namesAtCommit, isWriter,
                   let answered = try cache.deferCreate(parent, name, mode: mode, uid: uid, gid: gid, now: now) {
                    return answered
                }
                return try metadata.mknode(parent, name, mode: FileType.regular.rawValue | (mode & 0o7777), uid: uid, gid: gid,
                                           rdev: 0, target: nil, now: now)
            }
        } catch .metadata(.exists) where flags & O_EXCL == 0 {
            let existing = try Self.lift { () throws(MetadataError) in try metadata.lookup(parent, name) }
            let handle = try open(existing.ino, flags: flags)
            remember(existing.ino)
            return (try getattr(existing.ino), handle)
        }
        remember(attr.ino)
        // A new file's atime is already now: no relatime update on this open.
        let handle = try open(attr, flags: flags & ~O_TRUNC, touchingAtime: false)
        return (attr, handle)
    }

    /// The open state of `attr`'s inode, made on first open; counts one more open.
    func attach(_ attr: Attr, chunks known: [ChunkRef]? = nil) throws(FSError) -> OpenFile {
        // Counting under the table lock keeps a racing last release from dropping the
        // state this open is about to use (lock order: openFiles, then the file's lock).
        let exact = isWriter || isQuiet
        let file = try openFiles.withLock { files throws(FSError) -> OpenFile in
            let file: OpenFile
            if let existing = files[attr.ino] {
                file = existing
            } else {
                // Close-to-open: a first open reads the chunk map afresh (an empty file has none).
                var base = attr
                let chunks: [ChunkRef]
                if let known {
                    chunks = known
                } else if attr.size == 0 && attr.storedBytes == 0 {
                    chunks = []
                } else if exact, let map = keptMaps.withLock({ $0.take(attr.ino, at: CacheStamp(attr)) }) {
                    // `attr` is exact: a map kept for this version is the file's map.
                    chunks = Array(map.values)
                } else {
                    // With the size of the same moment: `attr` may be older than this map
                    // (read while another handle kept the file open, which has closed it
                    // since), and a size paired with a later, emptier map reads as zeros.
                    (base, chunks) = try loadMap(attr.ino, withFilesBeside: exact)
                }
                file = OpenFile(attr: base, chunkMap: Dictionary(uniqueKeysWithValues: chunks.map { ($0.index, $0) }))
                files[attr.ino] = file
            }
            file.opens.add(1, ordering: .sequentiallyConsistent)
            return file
        }
        refs.withLock { $0[attr.ino, default: KernelRefs()].opens += 1 }
        return file
    }

    /// The attributes and chunk map of `ino`, of one moment. Where the cache is exact,
    /// the maps of the files beside it are read in the same round trip and kept, each
    /// with its version: a `cat *`, a `tar` or an `import` opens them next.
    func loadMap(_ ino: InodeNumber, withFilesBeside: Bool) throws(FSError) -> (Attr, [ChunkRef]) {
        let beside = withFilesBeside ? cache.filesBeside(ino, limit: Self.mapsReadAhead, bytes: Self.mapBytesReadAhead) : []
        let wanted = keptMaps.withLock { maps in beside.filter { !maps.contains($0) } }
        if !wanted.isEmpty,
           let found = try? Self.lift({ () throws(MetadataError) in try metadata.attrsAndChunks([ino] + wanted) }),
           let own = found.first(where: { $0.0.ino == ino }) {
            keptMaps.withLock { maps in
                for (attr, chunks) in found where attr.ino != ino {
                    maps.keep(attr.ino, stamp: CacheStamp(attr), map: Dictionary(uniqueKeysWithValues: chunks.map { ($0.index, $0) }))
                }
            }
            return own
        }
        return try Self.lift { () throws(MetadataError) in try metadata.attrAndChunks(ino) }
    }

    func touchAtime(_ attr: Attr) {
        let now = Self.now()
        let day: Int64 = 86_400 * 1_000_000_000
        // atime is best effort: a reader does not take the lease for it.
        guard isWriter else { return }
        guard attr.atime <= attr.mtime || attr.atime <= attr.ctime || attr.atime.nanoseconds < now.nanoseconds - day else { return }
        // Written lazily (like lazytime): one transaction a tick for every file read,
        // instead of one per open.
        pendingAtimes.withLock { pending in
            if pending[attr.ino] == nil { pending[attr.ino] = now }
        }
    }

    /// Writes the access times gathered since the last call.
    public func flushAtimes() {
        let atimes = pendingAtimes.withLock { pending in
            defer { pending = [:] }
            return pending
        }
        guard !atimes.isEmpty, isWriter else { return }
        do {
            try metadata.touch(atimes)
        } catch {
            logger.warning("cannot record access times of \(atimes.count) files: \(error)")
        }
    }

    /// Forgets what `file` buffered and gives back the space reserved for it; the file is
    /// as last committed. Caller holds `file.lock`.
    func discardBuffered(_ file: OpenFile) {
        let dropped = file.reserved.values.reduce(0, +)
        accounting.withLock { $0.reserved -= dropped }
        for upload in file.uploads.values { abandon(upload) }
        file.uploads = [:]
        file.dirty = [:]
        file.reserved = [:]
        file.size = file.committedSize
        file.mtime = nil
    }

    /// Whether the kernel may keep the pages it cached when it opens `fh` (FOPEN_KEEP_CACHE).
    public func keepsCache(_ fh: FileHandleID) -> Bool {
        handles.withLock { $0[fh]?.keepCache ?? false }
    }

    /// After this mount changed a file, the kernel's pages are its new contents (writes
    /// go through the page cache): record that version as the cached one.
    func restamp(_ attr: Attr) {
        cacheStamps.withLock { stamps in
            if stamps[attr.ino] != nil { stamps[attr.ino] = CacheStamp(attr) }
        }
    }

    func file(_ fh: FileHandleID, _ ino: InodeNumber) throws(FSError) -> OpenFile {
        guard let handle = handles.withLock({ $0[fh] }), handle.ino == ino,
              let file = openFiles.withLock({ $0[ino] }) else { throw .badHandle }
        return file
    }

    /// Commits what was written through any handle of the file (close(2) calls this), or
    /// keeps it for the next group commit while no other mount is attached (GroupCommits).
    public func flush(_ ino: InodeNumber, _ fh: FileHandleID) throws(FSError) {
        let file = try file(fh, ino)
        file.lock.lock()
        defer { file.lock.unlock() }
        if deferCommit(file) { return }
        try commit(file)
    }

    /// Commits the file and makes it durable against a crash of the process or machine,
    /// with every file closed before it.
    public func fsync(_ ino: InodeNumber, _ fh: FileHandleID) throws(FSError) {
        let file = try file(fh, ino)
        commitDeferred()
        do {
            file.lock.lock()
            defer { file.lock.unlock() }
            try commit(file)
        }
        try Self.lift { () throws(MetadataError) in try metadata.sync() }
    }

    /// Drops a handle. The last release of a file commits what is left (or keeps it for
    /// the next group commit) and forgets its open state; an unlinked file is purged once
    /// nothing refers to it.
    public func release(_ ino: InodeNumber, _ fh: FileHandleID) {
        guard handles.withLock({ $0.removeValue(forKey: fh) }) != nil,
              let file = openFiles.withLock({ $0[ino] }) else {
            logger.warning("release of unknown handle \(fh.rawValue) of inode \(ino.rawValue)")
            return
        }
        file.lock.lock()
        if file.opens.load(ordering: .sequentiallyConsistent) == 1 && !deferCommit(file) {
            do {
                try commit(file)
            } catch {
                logger.error("data written to inode \(ino.rawValue) is lost: the last close could not commit it: \(error)")
                discardBuffered(file)
            }
        }
        file.lock.unlock()
        dropOpen(file)
    }

    /// Counts one open of `file` less. The last forgets its open state, and an unlinked
    /// file nothing refers to any more is purged.
    func dropOpen(_ file: OpenFile) {
        let ino = file.ino
        openFiles.withLock { files in
            // The last: nothing holds `lock` for long (a group commit holds an open).
            guard file.opens.subtract(1, ordering: .sequentiallyConsistent).newValue == 0, files[ino] === file else { return }
            files[ino] = nil
            file.lock.lock()
            keepClosedMap(file)
            file.lock.unlock()
        }
        let released = refs.withLock { table -> Bool in
            guard var entry = table[ino] else { return false }
            entry.opens -= 1
            if entry.opens <= 0 && entry.lookups == 0 && ino != .root {
                table[ino] = nil
                return true
            }
            table[ino] = entry
            return false
        }
        if released { purgeIfUnlinked(ino) }
    }

    /// Keeps the map of a file closed with nothing buffered, if the map is of the version
    /// this mount's attributes say the file is at; it is used only where those are exact
    /// (`attach`). Caller holds `file.lock`.
    func keepClosedMap(_ file: OpenFile) {
        guard file.dirty.isEmpty, file.lost == nil, file.size == file.committedSize,
              let stamp = file.mapStamp, let attr = cache.cachedAttr(file.ino), CacheStamp(attr) == stamp else { return }
        keptMaps.withLock { $0.keep(file.ino, stamp: stamp, map: file.chunkMap) }
    }

    /// Commits every open file (at unmount).
    public func flushAll() {
        commitDeferred()
        for file in openFiles.withLock({ Array($0.values) }) {
            file.lock.lock()
            do {
                try commit(file)
            } catch {
                logger.error("cannot commit inode \(file.ino.rawValue) at unmount: \(error)")
            }
            file.lock.unlock()
        }
    }
}
