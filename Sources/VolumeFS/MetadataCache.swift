// MetadataCache: names and attributes kept in memory in front of the volume's metadata,
// so that `ls`, `stat`, `cat` and file creation do not pay a database round trip for
// every lookup and every attribute.
//
// Owns: the attributes of inodes it was told or asked about, and for directories whose
// first lookup loaded them, their whole list of names.
// Assumes: every change this mount makes goes through it (it is the mount's metadata),
// and changes other mounts make reach it through the change feed, which the mount reads
// through it (`changes`) at least every tick while it does not hold the writer lease.
//
// Freshness: the writer holds the lease, so nothing changes under it but what it does
// itself; its cache is exact. A mount that reads sees another mount's change once it
// has followed the change feed (within half a second): what the kernel's own name and
// attribute caches already allow, and close-to-open holds because `open` asks for fresh
// attributes when the mount is not the writer.
//
// Races: a load (a directory's names, an inode's attributes) read before a change must
// not be kept after it. Every change, own or followed, bumps `epoch` when it starts and
// when it ends, and counts itself in `changing` meanwhile; a load is kept only if no
// change was under way when it began and `epoch` did not move until it is kept.
//
// Walks: where each query is a network round trip, listing a directory from its start
// also reads the listings of its first subdirectories, in one query, in the background
// (`prefetchListings`). `ls -lR`, `du`, `tar` and `find` then wait for a round trip per
// level of the tree rather than per directory. A listing asked for while its prefetch is
// under way waits for it instead of asking again.
//
// Files made at their close: the writer answers the creation of a regular file, a
// directory or a symbolic link at once, under an inode number reserved beforehand, where
// the directory's names are kept (so the name is known to be free), and an unlink or
// rmdir where its kept names and attributes settle the answer. These changes are queued
// in the order they were answered and applied in the transaction that commits a file's
// data, at close or fsync, or, at the latest, just before anything else reaches the
// metadata (`makeUnmade`): nothing ever reads or changes the metadata while a change this
// mount answered for is missing from it. A create or a removal then costs no round trip of its
// own. Until it is applied, other mounts do not see it, and a crash forgets it (as a
// local filesystem forgets what it did since its last commit); a file that cannot be made
// is lost, and its handles answer EIO.

import Foundation
import Logging
public import Metadata
import OrderedCollections
import Synchronization

public final class MetadataCache: Metadata {
    public let backing: any Metadata

    /// Directories with at most this many entries are kept whole.
    let directoryLimit: Int
    /// Subdirectories whose listings are read together when a directory is listed from
    /// its start (0: none).
    let prefetchListings: Int
    /// Signalled when a prefetch of listings ends.
    let prefetchEnded = NSCondition()
    /// Past these the cache starts over, to bound its memory (about 200 bytes an entry).
    static let directoriesKept = 4096
    static let attributesKept = 200_000

    struct State {
        var epoch: UInt64 = 0
        /// What the listings kept are as of: it moves with `epoch`, except for the changes
        /// the writer answers from memory, which mend the listings they touch instead.
        var listingsEpoch: UInt64 = 0
        var changing = 0
        var attrs: [InodeNumber: Attr] = [:]
        /// Complete listings: a name missing here is missing in the volume. In the order
        /// the names were made, as the metadata lists them (`keptListing`: `tar` takes the
        /// first name of a hard link it meets for the file).
        var directories: [InodeNumber: OrderedDictionary<FileName, InodeNumber>] = [:]
        /// Directories found too big to keep: their lookups go to the metadata, without
        /// listing them again each time.
        var tooBig: Set<InodeNumber> = []
        /// The last stretch of each directory read by `readdir`, as of `epoch`: the kernel
        /// asks for a listing a page (a few dozen entries) at a time, and each page would
        /// otherwise be a query of its own.
        var listings: [InodeNumber: Listing] = [:]
        /// Entries in `listings`, which bound their memory.
        var listedEntries = 0
        /// Directories whose listings a prefetch is reading.
        var prefetching: Set<InodeNumber> = []
        var prefetchesUnderWay = 0
        /// Files answered for but not made in the metadata yet (see `deferCreate`).
        var unmade: [InodeNumber: NewFile] = [:]
        /// Every change answered for and not applied yet, in the order it was answered:
        /// those files' making and the removals of `deferRemove`.
        var queued: [NameChange] = []
        /// When the oldest of `queued` was answered.
        var queuedSince: Timestamp?
        /// Calls under way that make some; until they end, nothing else reaches the metadata.
        var making = 0
        /// Inode numbers reserved and not used yet.
        var reserved: Range<UInt64> = 0..<0
        /// Numbers reserved ahead, in the background, for when `reserved` runs out.
        var reservedNext: Range<UInt64> = 0..<0
        var reserving = false
        /// Files that could not be made, and why: what their handles answer.
        var lost: [InodeNumber: MetadataError] = [:]
        /// The directory each entry listed was last found in (a hint: renames do not update it).
        var parents: [InodeNumber: InodeNumber] = [:]

        mutating func noteParent(_ dir: InodeNumber, of entries: [DirEntry]) {
            if parents.count + entries.count > MetadataCache.attributesKept { parents.removeAll(keepingCapacity: true) }
            for entry in entries { parents[entry.attr.ino] = dir }
        }

        mutating func forgetAll() {
            listings.removeAll(keepingCapacity: true)
            listedEntries = 0
            attrs.removeAll(keepingCapacity: true)
            directories.removeAll(keepingCapacity: true)
            tooBig.removeAll(keepingCapacity: true)
        }

        /// A directory whose entries changed at `now`, as the metadata records it.
        mutating func touchDirectory(_ dir: InodeNumber, links: Int = 0, at now: Timestamp) {
            guard var attr = attrs[dir] else { return }
            attr.mtime = now
            attr.ctime = now
            attr.nlink = UInt32(max(0, Int(attr.nlink) + links))
            attrs[dir] = attr
        }

        mutating func queue(_ change: NameChange, at now: Timestamp) {
            queued.append(change)
            if queuedSince == nil { queuedSince = now }
        }

        /// A change: loads under way must not be kept, nor the listings kept so far.
        mutating func moved() {
            epoch &+= 1
            listingsEpoch &+= 1
        }

        /// A change answered from memory in `dir`: loads under way must not be kept, but
        /// the listings kept stay, all but `dir`'s, which loses the entry `removed` (or is
        /// dropped when an entry was added), and its parent's, whose entry for `dir` has
        /// old times. A walk that removes what it lists (`rm -rf`) then reads no listing
        /// twice.
        mutating func answered(in dir: InodeNumber, removing removed: FileName?) {
            epoch &+= 1
            if let removed, listings[dir]?.epoch == listingsEpoch {
                let before = listings[dir]!.entries.count
                listings[dir]!.entries.removeAll { $0.name == removed }
                listedEntries -= before - listings[dir]!.entries.count
            } else if let gone = listings.removeValue(forKey: dir) {
                listedEntries -= gone.entries.count
            }
            if let parent = parents[dir], let gone = listings.removeValue(forKey: parent) {
                listedEntries -= gone.entries.count
            }
        }

        /// The attributes kept of `ino`, or those of a file answered for and not made yet.
        func kept(_ ino: InodeNumber) -> Attr? { attrs[ino] ?? unmade[ino]?.attr }

        mutating func keep(_ attr: Attr) {
            if attrs.count >= MetadataCache.attributesKept { attrs.removeAll(keepingCapacity: true) }
            attrs[attr.ino] = attr
        }

        mutating func keep(_ listing: Listing, of dir: InodeNumber) {
            if listings.count >= MetadataCache.listingsKept || listedEntries + listing.entries.count > MetadataCache.listedEntriesKept {
                listings.removeAll(keepingCapacity: true)
                listedEntries = 0
            }
            listedEntries += listing.entries.count - (listings[dir]?.entries.count ?? 0)
            listings[dir] = listing
            noteParent(dir, of: listing.entries)
            // What `ls -l` or a walk asks next (`opendir` of a subdirectory, a getattr)
            // is about these entries.
            for entry in listing.entries { keep(entry.attr) }
        }
    }

    /// Entries of a directory after `after`, in order; `reachesEnd` when they are all
    /// there are.
    struct Listing {
        var after: Int64
        var entries: [DirEntry]
        var reachesEnd: Bool
        var epoch: UInt64
    }

    /// Entries read from the metadata per `readdir`, at least.
    static let listingBatch = 1024
    static let listingsKept = 512
    static let listedEntriesKept = 100_000
    /// Prefetches of listings under way at once, at most; past that a walk waits for its
    /// own listings.
    static let prefetchesAtOnce = 4

    let state = Mutex(State())
    /// Signalled when a call that makes files ends.
    let madeEnded = NSCondition()
    let logger: Logger
    /// Inode numbers reserved at once for files made at their close.
    static let inodesReserved = 1024
    /// How long a call waits for another's making of files: several round trips, each
    /// bounded by the metadata's own deadline.
    static let makingWait = 120.0
    /// Lookups and attribute reads answered from memory, and those that were not.
    let hits = Atomic<Int>(0)
    let misses = Atomic<Int>(0)

    public init(_ backing: any Metadata, directoryLimit: Int = 4096, prefetchListings: Int = 0,
                logger: Logger = Logger(label: "netvol")) {
        self.backing = backing
        self.logger = logger
        self.directoryLimit = directoryLimit
        self.prefetchListings = prefetchListings
    }

    public var counts: (hits: Int, misses: Int) { (hits.load(ordering: .relaxed), misses.load(ordering: .relaxed)) }

    // MARK: Loads

    /// Where a load stands: the epoch it began in, or nil when a change was under way.
    /// Files not made yet are made first, for the load to find them.
    func beginLoad() -> UInt64? {
        makeUnmade()
        return state.withLock { $0.changing == 0 && $0.queued.isEmpty && $0.making == 0 ? $0.epoch : nil }
    }

    /// Keeps what a load read, if nothing changed since it began.
    func finishLoad(_ began: UInt64?, _ update: (inout State) -> Void) {
        guard let began else { return }
        state.withLock { state in
            guard state.changing == 0, state.epoch == began else { return }
            update(&state)
        }
    }

    /// Loads the names (and attributes) of directory `parent` when it is small enough.
    func loadDirectory(_ parent: InodeNumber) {
        let began = beginLoad()
        guard began != nil, !state.withLock({ $0.tooBig.contains(parent) }),
              let entries = try? backing.readdir(parent, after: 0, limit: directoryLimit + 1) else { return }
        guard entries.count <= directoryLimit else {
            state.withLock { state in
                if state.tooBig.count >= Self.directoriesKept { state.tooBig.removeAll(keepingCapacity: true) }
                state.tooBig.insert(parent)
            }
            return
        }
        finishLoad(began) { state in
            keepNames(&state, parent, entries)
            // The same entries are the directory's listing: an `ls` after a lookup in it
            // (a walk that stats a directory before it lists it) asks nothing more.
            state.keep(Listing(after: 0, entries: entries, reachesEnd: true, epoch: state.listingsEpoch), of: parent)
        }
        // Lookups walk down as listings do: the next names looked up are likely in these
        // subdirectories (`cat small/d*/f*` cost two round trips per directory, one of
        // them for its listing).
        prefetchSubdirectories(of: entries)
    }

    /// Keeps the names of `dir`, given all its entries.
    func keepNames(_ state: inout State, _ dir: InodeNumber, _ entries: [DirEntry]) {
        if state.directories.count >= Self.directoriesKept { state.directories.removeAll(keepingCapacity: true) }
        var names: OrderedDictionary<FileName, InodeNumber> = [:]
        names.reserveCapacity(entries.count)
        for entry in entries {
            names[entry.name] = entry.attr.ino
            state.keep(entry.attr)
        }
        state.directories[dir] = names
        state.noteParent(dir, of: entries)
    }

    // MARK: Reads answered from memory

    enum Known {
        case found(Attr)
        case missing
        case unknown(directoryKept: Bool)
    }

    func known(_ parent: InodeNumber, _ name: FileName) -> Known {
        state.withLock { state in
            guard let directory = state.directories[parent] else { return .unknown(directoryKept: false) }
            guard let ino = directory[name] else { return .missing }
            if let attr = state.kept(ino) { return .found(attr) }
            return .unknown(directoryKept: true)
        }
    }

    public func lookup(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr {
        try lookup(parent, name, trustingMisses: false)
    }

    /// `lookup`; a name missing from a kept directory is answered as missing only when
    /// `trustingMisses` (the writer, under which nothing appears unseen). Elsewhere a miss
    /// asks the metadata: another mount may have just made the name, and a worker told
    /// that a file is ready must find it, even before the change feed says so.
    public func lookup(_ parent: InodeNumber, _ name: FileName, trustingMisses: Bool) throws(MetadataError) -> Attr {
        var answer = known(parent, name)
        if case .unknown(directoryKept: false) = answer {
            // A walk by names (`cat d*/f*`, an `import` of a package) finds the listing read
            // or under way by the load of the directory above.
            awaitPrefetch(of: parent)
            answer = known(parent, name)
        }
        if case .unknown(directoryKept: false) = answer {
            loadDirectory(parent)
            answer = known(parent, name)
        }
        switch answer {
        case .found(let attr):
            hits.add(1, ordering: .relaxed)
            return attr
        case .missing where trustingMisses:
            hits.add(1, ordering: .relaxed)
            throw .notFound
        case .missing, .unknown:
            misses.add(1, ordering: .relaxed)
            let began = beginLoad()
            let attr = try backing.lookup(parent, name)
            finishLoad(began) { $0.keep(attr) }
            return attr
        }
    }

    public func getattr(_ ino: InodeNumber) throws(MetadataError) -> Attr {
        if let attr = state.withLock({ $0.kept(ino) }) {
            hits.add(1, ordering: .relaxed)
            return attr
        }
        return try freshAttr(ino)
    }

    /// The attributes kept in memory, if any; nothing is loaded.
    public func cachedAttr(_ ino: InodeNumber) -> Attr? {
        state.withLock { $0.attrs[ino] }
    }

    /// `cachedAttr`, or the attributes of a file answered for and not made yet.
    public func keptAttr(_ ino: InodeNumber) -> Attr? {
        state.withLock { $0.kept(ino) }
    }

    /// The whole listing of `dir` from memory, without asking the metadata, for the
    /// writer, whose kept names are exact: the listing kept, if it is current and whole;
    /// otherwise the names kept, with their attributes, in the order they were made.
    /// Files answered for and not made yet are in it, so a listing does not wait for them
    /// to be made. Nil when memory does not settle it.
    public func keptListing(_ dir: InodeNumber) -> [DirEntry]? {
        state.withLock { state -> [DirEntry]? in
            if state.changing == 0, let listing = state.listings[dir], listing.after == 0, listing.reachesEnd,
               listing.epoch == state.listingsEpoch {
                return listing.entries
            }
            guard let names = state.directories[dir] else { return nil }
            var entries: [DirEntry] = []
            entries.reserveCapacity(names.count)
            for (name, ino) in names {
                guard let attr = state.kept(ino) else { return nil }
                entries.append(DirEntry(name: name, attr: attr, cookie: 0))
            }
            return entries
        }
    }

    /// The attributes as the metadata has them now (for `open` on a mount that does not
    /// hold the lease: close-to-open).
    public func freshAttr(_ ino: InodeNumber) throws(MetadataError) -> Attr {
        misses.add(1, ordering: .relaxed)
        let began = beginLoad()
        do {
            let attr = try backing.getattr(ino)
            finishLoad(began) { $0.keep(attr) }
            return attr
        } catch .notFound {
            // A name that led here is stale (the inode was deleted elsewhere): forget
            // the names, so that the kernel's second walk finds the current ones.
            change { $0.forgetAll() }
            throw .notFound
        }
    }

    /// `freshAttr`, with the chunk map of the same moment.
    public func attrAndChunks(_ ino: InodeNumber) throws(MetadataError) -> (Attr, [ChunkRef]) {
        misses.add(1, ordering: .relaxed)
        let began = beginLoad()
        do {
            let (attr, chunks) = try backing.attrAndChunks(ino)
            finishLoad(began) { $0.keep(attr) }
            return (attr, chunks)
        } catch .notFound {
            change { $0.forgetAll() }
            throw .notFound
        }
    }

    public func attrsAndChunks(_ inodes: [InodeNumber]) throws(MetadataError) -> [(Attr, [ChunkRef])] {
        misses.add(1, ordering: .relaxed)
        let began = beginLoad()
        let found = try backing.attrsAndChunks(inodes)
        finishLoad(began) { state in for (attr, _) in found { state.keep(attr) } }
        return found
    }

    /// Regular files that have stored bytes, in the directory `ino` was last listed in,
    /// in listing order from the entry after it, each subdirectory whose listing is kept
    /// followed by its own entries (depth first, as `tar` and `cp -R` walk): the files a
    /// `cat *` or a walk opens next. At most `limit`, and at most `bytes` of stored bytes
    /// between them.
    func filesBeside(_ ino: InodeNumber, limit: Int, bytes: UInt64) -> [InodeNumber] {
        state.withLock { state in
            guard let parent = state.parents[ino] else { return [] }
            var order: [InodeNumber]
            if let listing = state.listings[parent], listing.after == 0 {
                order = Self.walkOrder(state, listing.entries, upTo: Self.walkedForMaps)
            } else if let names = state.directories[parent] {
                order = Array(names.values)
            } else {
                return []
            }
            if let at = order.firstIndex(of: ino) { order = Array(order[(at + 1)...] + order[..<at]) }
            var chosen: [InodeNumber] = []
            var total: UInt64 = 0
            for candidate in order where candidate != ino {
                guard chosen.count < limit else { break }
                guard let attr = state.attrs[candidate], attr.isRegular, attr.storedBytes > 0,
                      total + attr.storedBytes <= bytes else { continue }
                total += attr.storedBytes
                chosen.append(candidate)
            }
            return chosen
        }
    }

    /// Entries looked at for `filesBeside`, at most: it runs under the cache's lock.
    static let walkedForMaps = 4096

    /// `entries`, each subdirectory's kept listing spliced in after it, depth first.
    static func walkOrder(_ state: State, _ entries: [DirEntry], upTo count: Int) -> [InodeNumber] {
        var order: [InodeNumber] = []
        var pending: [ArraySlice<DirEntry>] = [entries[...]]
        while order.count < count, var level = pending.popLast() {
            guard let entry = level.popFirst() else { continue }
            pending.append(level)
            order.append(entry.attr.ino)
            if entry.attr.isDirectory, let below = state.listings[entry.attr.ino], below.after == 0,
               below.epoch == state.listingsEpoch, pending.count < 64 {
                pending.append(below.entries[...])
            }
        }
        return order
    }

    // MARK: Changes

    /// Runs a change of the metadata; `update` then brings the cache in line with what it
    /// did (by default: every attribute is dropped, names are kept). A change that
    /// failed may have been applied or not: everything is dropped.
    func changing<T>(makingFirst: Bool = true, _ body: () throws(MetadataError) -> T,
                     _ update: (inout State, T) -> Void = { state, _ in state.attrs.removeAll(keepingCapacity: true) })
        throws(MetadataError) -> T {
        if makingFirst { makeUnmade() }
        state.withLock { state in
            state.changing += 1
            state.moved()
        }
        do {
            let result = try body()
            state.withLock { state in
                update(&state, result)
                state.changing -= 1
                state.moved()
            }
            return result
        } catch {
            state.withLock { state in
                state.forgetAll()
                state.changing -= 1
                state.moved()
            }
            throw error
        }
    }

    /// Updates the cache for a change learned elsewhere.
    func change(_ update: (inout State) -> Void) {
        state.withLock { state in
            update(&state)
            state.moved()
        }
    }

    /// Forgets everything (a mount that lost track of the change feed).
    public func forgetAll() {
        change { $0.forgetAll() }
    }

    public func touch(_ atimes: [InodeNumber: Timestamp]) throws(MetadataError) {
        // An access time only ever moves forward, as the metadata records it: the
        // attributes kept stay (a `cat` of many files would otherwise read each again at
        // its next open).
        try changing({ () throws(MetadataError) in try backing.touch(atimes) }) { state, _ in
            for (ino, atime) in atimes where state.attrs[ino] != nil {
                state.attrs[ino]!.atime = max(state.attrs[ino]!.atime, atime)
            }
        }
    }

    public func setattr(_ ino: InodeNumber, _ changes: AttrChanges, now: Timestamp) throws(MetadataError) -> Attr {
        try changing({ () throws(MetadataError) in try backing.setattr(ino, changes, now: now) }) { state, attr in state.keep(attr) }
    }

    public func mknode(_ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32,
                       rdev: UInt64, target: [UInt8]?, now: Timestamp) throws(MetadataError) -> Attr {
        try changing({ () throws(MetadataError) in
            try backing.mknode(parent, name, mode: mode, uid: uid, gid: gid, rdev: rdev, target: target, now: now)
        }) { state, attr in
            state.directories[parent]?[name] = attr.ino
            state.touchDirectory(parent, links: attr.isDirectory ? 1 : 0, at: now)
            state.keep(attr)
            // A new directory is empty: its misses need no load.
            if attr.isDirectory { state.directories[attr.ino] = [:] }
        }
    }

    public func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try changing({ () throws(MetadataError) in try backing.link(ino, newParent, newName, now: now) }) { state, attr in
            state.directories[newParent]?[newName] = ino
            state.touchDirectory(newParent, at: now)
            state.keep(attr)
        }
    }

    public func unlink(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try changing({ () throws(MetadataError) in try backing.unlink(parent, name, now: now) }) { state, attr in
            state.directories[parent]?[name] = nil
            state.touchDirectory(parent, at: now)
            state.keep(attr)
        }
    }

    public func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr {
        try changing({ () throws(MetadataError) in try backing.rmdir(parent, name, now: now) }) { state, attr in
            state.directories[parent]?[name] = nil
            state.directories[attr.ino] = nil
            state.attrs[attr.ino] = nil
            state.touchDirectory(parent, links: -1, at: now)
        }
    }

    public func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                       flags: RenameFlags, now: Timestamp) throws(MetadataError) -> Attr? {
        let source = state.withLock { $0.directories[parent]?[name] }
        let target = state.withLock { $0.directories[newParent]?[newName] }
        return try changing({ () throws(MetadataError) in
            try backing.rename(parent, name, newParent, newName, flags: flags, now: now)
        }) { state, _ in
            // Times and link counts of both directories and both inodes changed.
            state.attrs.removeAll(keepingCapacity: true)
            // What the names pointed to is known only when both directories are kept;
            // otherwise both listings are dropped and loaded again when next asked.
            guard let source, state.directories[newParent] != nil,
                  !flags.contains(.exchange) || target != nil else {
                state.directories[parent] = nil
                state.directories[newParent] = nil
                return
            }
            if flags.contains(.exchange) {
                state.directories[parent]?[name] = target
            } else if source != target {
                state.directories[parent]?[name] = nil
            }
            state.directories[newParent]?[newName] = source
        }
    }

    /// The changes not applied yet travel with the commit: the file committed, if it is
    /// one not made yet, is made in the same transaction.
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp, applying: [NameChange]) throws(MetadataError) -> Committed {
        if let error = state.withLock({ $0.lost[ino] }) { throw error }
        let queued = takeUnmade() ?? []
        defer { if !queued.isEmpty { makingEnded() } }
        do {
            return try changing(makingFirst: false, { () throws(MetadataError) in
                try backing.commitData(ino, chunks: chunks, drop: drop, size: size, mtime: mtime, now: now, applying: queued + applying)
            }) { state, committed in state.keep(committed.attr) }
        } catch {
            // The changes are not to blame for a refusal of the data (a full volume, say).
            if !queued.isEmpty { applyOrLose(queued) }
            throw error
        }
    }

    /// A group commit: the changes not applied yet travel with it, as with one file's.
    public func commitData(_ commits: [DataCommit], now: Timestamp, applying: [NameChange]) throws(MetadataError) -> [Committed] {
        for commit in commits {
            if let error = state.withLock({ $0.lost[commit.ino] }) { throw error }
        }
        let queued = takeUnmade() ?? []
        defer { if !queued.isEmpty { makingEnded() } }
        do {
            return try changing(makingFirst: false, { () throws(MetadataError) in
                try backing.commitData(commits, now: now, applying: queued + applying)
            }) { state, committed in
                for answer in committed { state.keep(answer.attr) }
            }
        } catch {
            if !queued.isEmpty { applyOrLose(queued) }
            throw error
        }
    }

    // MARK: Files made at their close

    /// Answers the creation of an empty regular file (or with `directory`, a directory;
    /// with `target`, a symbolic link to it) without asking the metadata, under a reserved
    /// inode number; it is made later (see the top of this file). Only for the writer,
    /// under which nothing else can take the name. Nil when the names of `parent` are not
    /// kept (whether the name is free is not known): the caller makes it at once.
    public func deferCreate(_ parent: InodeNumber, _ name: FileName, directory: Bool = false, target: [UInt8]? = nil,
                            mode: UInt32, uid: UInt32, gid: UInt32, now: Timestamp) throws(MetadataError) -> Attr? {
        precondition(!(directory && target != nil), "a directory has no target")
        guard case .missing = known(parent, name) else { return nil }
        // The directory's attributes (for its set-group-id bit) are dropped by some
        // changes, a rename among them, and read again once.
        let dir = try getattr(parent)
        let ino = try reservedInode()
        // A set-group-id directory passes its group on, and the bit to directories, as
        // `mknode` does.
        let inherits = dir.mode & 0o2000 != 0
        let type = directory ? FileType.directory : target != nil ? FileType.symlink : FileType.regular
        let attr = Attr(ino: ino, mode: type.rawValue | (mode & 0o7777) | (directory && inherits ? 0o2000 : 0),
                        nlink: directory ? 2 : 1, uid: uid, gid: inherits ? dir.gid : gid, rdev: 0,
                        size: UInt64(target?.count ?? 0), atime: now, mtime: now, ctime: now)
        let answered = state.withLock { state -> Bool in
            guard state.directories[parent] != nil, state.directories[parent]?[name] == nil else { return false }
            let file = NewFile(parent: parent, name: name, attr: attr, target: target)
            state.unmade[ino] = file
            state.queue(.make(file), at: now)
            state.directories[parent]?[name] = ino
            state.touchDirectory(parent, links: directory ? 1 : 0, at: now)
            state.keep(attr)
            // A new directory is empty: its misses need no load.
            if directory { state.directories[ino] = [:] }
            state.answered(in: parent, removing: nil)
            return true
        }
        return answered ? attr : nil
    }

    /// Answers an `unlink` (or with `directory`, an `rmdir`) without asking the metadata,
    /// and queues it to be applied with the next change that reaches the metadata. Only
    /// for the writer, whose kept names and attributes are exact. Nil when they do not
    /// settle the answer (the name, its inode or, for a directory, its names are not kept;
    /// or the answer is an error): the caller asks the metadata.
    public func deferRemove(_ parent: InodeNumber, _ name: FileName, directory: Bool, now: Timestamp) -> Attr? {
        if state.withLock({ $0.directories[parent] == nil }) { loadDirectory(parent) }
        return state.withLock { state -> Attr? in
            guard state.changing == 0, let ino = state.directories[parent]?[name], ino != .root,
                  var attr = state.kept(ino), attr.isDirectory == directory else { return nil }
            if directory {
                guard state.directories[ino]?.isEmpty == true else { return nil }
                attr.nlink = 0
            } else {
                attr.nlink = attr.nlink > 0 ? attr.nlink - 1 : 0
            }
            attr.ctime = now
            state.queue(.remove(parent: parent, name: name, directory: directory, now: now), at: now)
            state.directories[parent]?[name] = nil
            state.touchDirectory(parent, links: directory ? -1 : 0, at: now)
            if directory {
                state.directories[ino] = nil
                state.attrs[ino] = nil
                if let gone = state.listings.removeValue(forKey: ino) { state.listedEntries -= gone.entries.count }
            } else {
                state.keep(attr)
                state.unmade[ino]?.attr = attr
            }
            if attr.nlink == 0 {
                state.answered(in: parent, removing: name)
            } else {
                // Other names of the file are listed with its old link count.
                state.moved()
            }
            return attr
        }
    }

    func reservedInode() throws(MetadataError) -> InodeNumber {
        let (found, refill) = state.withLock { state -> (UInt64?, Bool) in
            if state.reserved.isEmpty {
                state.reserved = state.reservedNext
                state.reservedNext = 0..<0
            }
            let ino = state.reserved.popFirst()
            // Reserving takes the lease row's lock, which a group commit holds for as long
            // as its statements run: numbers are reserved before they are needed, so that
            // a create does not wait for that.
            let refill = ino != nil && state.reserved.count < Self.inodesReserved / 2 && state.reservedNext.isEmpty && !state.reserving
            if refill { state.reserving = true }
            return (ino, refill)
        }
        if refill {
            // Its own thread, as a prefetch has: it waits for the database.
            Thread.detachNewThread { [self] in
                let range = try? backing.reserveInodes(Self.inodesReserved)
                state.withLock { state in
                    state.reserving = false
                    if let range { state.reservedNext = range }
                }
            }
        }
        if let found { return InodeNumber(found) }
        let range = try backing.reserveInodes(Self.inodesReserved)
        guard let first = range.first else { throw .database("no inode numbers were reserved") }
        state.withLock { $0.reserved = range.dropFirst() }
        return InodeNumber(first)
    }

    /// Whether `ino` was answered for and is not made yet.
    public func isUnmade(_ ino: InodeNumber) -> Bool {
        state.withLock { $0.unmade[ino] != nil }
    }

    /// Makes `ino` in the metadata if it is not made yet (a file closed with nothing to
    /// commit); throws why it could not be made, if it could not.
    public func settle(_ ino: InodeNumber) throws(MetadataError) {
        if state.withLock({ $0.unmade[ino] != nil || $0.making > 0 }) { makeUnmade() }
        if let error = state.withLock({ $0.lost[ino] }) { throw error }
    }

    /// Makes every file answered for and not made yet, after the calls making some end:
    /// what reaches the metadata next finds them there.
    public func makeUnmade() {
        guard let changes = takeUnmade() else { return }
        defer { makingEnded() }
        applyOrLose(changes)
    }

    /// `makeUnmade`, throwing why the changes could not be applied, if they could not.
    func applyQueued() throws(MetadataError) {
        guard let changes = takeUnmade() else { return }
        defer { makingEnded() }
        if let error = applyOrLose(changes) { throw error }
    }

    /// `makeUnmade`, if any file was answered for before `cutoff`.
    public func makeUnmade(answeredBefore cutoff: Timestamp) {
        guard state.withLock({ $0.queuedSince.map { $0 < cutoff } ?? false }) else { return }
        makeUnmade()
    }

    /// Gives up the files not made yet: a writer that lost its lease must not make them
    /// later, when another may have changed the volume around them.
    public func loseUnmade(_ error: MetadataError) {
        let (count, removals) = state.withLock { state -> (Int, Int) in
            let count = state.unmade.count
            let removals = state.queued.count - count
            guard !state.queued.isEmpty else { return (0, 0) }
            for ino in state.unmade.keys { state.lost[ino] = error }
            state.unmade.removeAll()
            state.queued.removeAll()
            state.queuedSince = nil
            state.forgetAll()
            state.moved()
            return (count, removals)
        }
        if count > 0 { logger.error("\(count) files created on this mount were not made in the volume before it lost the lease, and are lost") }
        if removals > 0 { logger.error("\(removals) removals of names on this mount did not reach the volume before it lost the lease: those names are back") }
    }

    /// Applies `changes` (taken from `queued`); if they cannot be, the files among them
    /// are lost, the names they removed are back, and the error is returned.
    @discardableResult
    func applyOrLose(_ changes: [NameChange]) -> MetadataError? {
        do {
            try backing.apply(changes)
            return nil
        } catch {
            let files = changes.compactMap { if case .make(let file) = $0 { file } else { nil } }
            logger.error("\(files.count) files created and \(changes.count - files.count) names removed on this mount could not reach the volume: the files are lost and the names are back: \(error)")
            state.withLock { state in
                if state.lost.count > 10_000 { state.lost.removeAll() }
                for file in files { state.lost[file.attr.ino] = error }
                state.forgetAll()
                state.moved()
            }
            return error
        }
    }

    /// Takes every change not applied yet once no other call is applying some (nil: there
    /// are none). The caller applies them, then calls `makingEnded`.
    func takeUnmade() -> [NameChange]? {
        madeEnded.lock()
        defer { madeEnded.unlock() }
        let deadline = Date(timeIntervalSinceNow: Self.makingWait)
        while true {
            let (busy, changes) = state.withLock { state -> (Bool, [NameChange]?) in
                if state.making > 0 { return (true, nil) }
                if state.queued.isEmpty { return (false, nil) }
                let changes = state.queued
                state.queued.removeAll()
                state.queuedSince = nil
                state.unmade.removeAll()
                state.making += 1
                return (false, changes)
            }
            if !busy || !madeEnded.wait(until: deadline) { return changes }
        }
    }

    func makingEnded() {
        madeEnded.lock()
        state.withLock { $0.making -= 1 }
        madeEnded.broadcast()
        madeEnded.unlock()
    }

    public func recountUsage() throws(MetadataError) -> (recorded: UInt64, counted: UInt64) {
        try changing { () throws(MetadataError) in try backing.recountUsage() }
    }

    public func purge(_ inodes: [InodeNumber], now: Timestamp) throws(MetadataError) {
        try changing({ () throws(MetadataError) in try backing.purge(inodes, now: now) }) { state, _ in
            for ino in inodes { state.attrs[ino] = nil }
        }
    }

    public func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], mode: XattrMode, now: Timestamp) throws(MetadataError) {
        try changing({ () throws(MetadataError) in try backing.setxattr(ino, name, value, mode: mode, now: now) }) { state, _ in
            state.attrs[ino] = nil
        }
    }

    public func removexattr(_ ino: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) {
        try changing({ () throws(MetadataError) in try backing.removexattr(ino, name, now: now) }) { state, _ in
            state.attrs[ino] = nil
        }
    }

    /// Reads the change feed, and forgets what the changes in it touched.
    public func changes(after sequence: Int64, limit: Int) throws(MetadataError) -> ChangeBatch {
        let batch = try backing.changes(after: sequence, limit: limit)
        guard batch.truncated || !batch.changes.isEmpty else { return batch }
        change { state in
            if batch.truncated {
                state.forgetAll()
                return
            }
            for change in batch.changes {
                if let ino = change.ino {
                    state.attrs[ino] = nil
                    state.directories[ino] = nil
                }
                if let parent = change.parent {
                    state.attrs[parent] = nil
                    state.directories[parent] = nil
                }
            }
        }
        return batch
    }

    // MARK: Passed through

    public func settings() throws(MetadataError) -> VolumeSettings { try backing.settings() }
    public func usage() throws(MetadataError) -> VolumeUsage { try backing.usage() }
    public func resize(sizeLimit: UInt64) throws(MetadataError) { try backing.resize(sizeLimit: sizeLimit) }
    /// Pages of a listing come from one query of `listingBatch` entries while nothing
    /// changes in between (any change, own or followed, moves the epoch).
    public func readdir(_ ino: InodeNumber, after cookie: Int64, limit: Int) throws(MetadataError) -> [DirEntry] {
        if cookie == 0 { awaitPrefetch(of: ino) }
        let kept = state.withLock { state -> (page: [DirEntry], listing: [DirEntry])? in
            guard state.changing == 0, let listing = state.listings[ino], listing.epoch == state.listingsEpoch,
                  cookie == listing.after || listing.entries.contains(where: { $0.cookie == cookie }) else { return nil }
            let rest = listing.entries.drop { $0.cookie <= cookie }
            guard rest.count >= limit || listing.reachesEnd else { return nil }
            return (Array(rest.prefix(limit)), listing.entries)
        }
        if let kept {
            hits.add(1, ordering: .relaxed)
            if cookie == 0 { prefetchSubdirectories(of: kept.listing) }
            return kept.page
        }
        misses.add(1, ordering: .relaxed)
        let began = beginLoad()
        let batch = max(limit, Self.listingBatch)
        let entries = try backing.readdir(ino, after: cookie, limit: batch)
        finishLoad(began) { state in
            state.keep(Listing(after: cookie, entries: entries, reachesEnd: entries.count < batch, epoch: state.listingsEpoch), of: ino)
        }
        if cookie == 0 { prefetchSubdirectories(of: entries) }
        return Array(entries.prefix(limit))
    }

    /// Starts reading, in the background and in one query, the listings of the first
    /// `prefetchListings` subdirectories among `entries` that are not kept yet; once they
    /// are read, those of their own subdirectories, `levels` deep in all. A walk that
    /// enters a subdirectory as soon as it is listed then finds the listings of the level
    /// below it read or under way, rather than waiting a round trip for each directory
    /// that has subdirectories.
    func prefetchSubdirectories(of entries: [DirEntry], levels: Int = 2) {
        guard prefetchListings > 0, let began = beginLoad() else { return }
        let (wanted, keptBelow) = state.withLock { state -> ([InodeNumber], [DirEntry]) in
            guard state.prefetchesUnderWay < Self.prefetchesAtOnce else { return ([], []) }
            var wanted: [InodeNumber] = []
            var keptBelow: [DirEntry] = []
            for entry in entries where entry.attr.isDirectory && wanted.count < prefetchListings {
                let dir = entry.attr.ino
                if state.prefetching.contains(dir) { continue }
                if let kept = state.listings[dir], kept.after == 0, kept.epoch == state.listingsEpoch {
                    // Read already: the level below it is what to read next.
                    if levels > 1 { keptBelow += kept.entries }
                    continue
                }
                wanted.append(dir)
            }
            if !wanted.isEmpty {
                state.prefetching.formUnion(wanted)
                state.prefetchesUnderWay += 1
            }
            return (wanted, keptBelow)
        }
        if !keptBelow.isEmpty { prefetchSubdirectories(of: keptBelow, levels: levels - 1) }
        guard !wanted.isEmpty else { return }
        // A thread of its own, not Dispatch's global queue: on Linux that runs about as
        // many work items at once as there are cores and adds a thread for blocked ones
        // only after a while, so a walk's lookups, which wait for this prefetch, could
        // wait behind other blocked work for most of a second.
        Thread.detachNewThread { [self] in
            let found = try? backing.listings(wanted, limit: Self.listingBatch)
            finishLoad(began) { state in
                for (dir, entries) in found ?? [:] {
                    let whole = entries.count < Self.listingBatch
                    state.keep(Listing(after: 0, entries: entries, reachesEnd: whole, epoch: state.listingsEpoch), of: dir)
                    if whole && entries.count <= directoryLimit { keepNames(&state, dir, entries) }
                }
            }
            state.withLock { state in
                state.prefetching.subtract(wanted)
                state.prefetchesUnderWay -= 1
            }
            prefetchEnded.lock()
            prefetchEnded.broadcast()
            prefetchEnded.unlock()
            if levels > 1, let found {
                prefetchSubdirectories(of: wanted.flatMap { found[$0] ?? [] }, levels: levels - 1)
            }
        }
    }

    /// Waits while a prefetch is reading the listing of `dir` (bounded: a prefetch stuck
    /// on the network leaves the listing to be read again).
    func awaitPrefetch(of dir: InodeNumber) {
        guard prefetchListings > 0 else { return }
        let deadline = Date(timeIntervalSinceNow: Self.prefetchWait)
        prefetchEnded.lock()
        defer { prefetchEnded.unlock() }
        while state.withLock({ $0.prefetching.contains(dir) }) {
            if !prefetchEnded.wait(until: deadline) { return }
        }
    }

    static let prefetchWait = 5.0

    // Each of these first makes the files not made yet (`makeUnmade`).
    public func listings(_ dirs: [InodeNumber], limit: Int) throws(MetadataError) -> [InodeNumber: [DirEntry]] {
        makeUnmade()
        return try backing.listings(dirs, limit: limit)
    }
    public func readlink(_ ino: InodeNumber) throws(MetadataError) -> [UInt8] {
        // A link not made yet is answered from memory: `cp -a` reads back what it made.
        if let target = state.withLock({ $0.unmade[ino]?.target }) { return target }
        makeUnmade()
        return try backing.readlink(ino)
    }
    public func chunks(_ ino: InodeNumber) throws(MetadataError) -> [ChunkRef] { makeUnmade(); return try backing.chunks(ino) }
    public func sync() throws(MetadataError) { try applyQueued(); try backing.sync() }
    public func orphans() throws(MetadataError) -> [InodeNumber] { makeUnmade(); return try backing.orphans() }
    public func inodesWithXattrs() throws(MetadataError) -> Set<InodeNumber> { makeUnmade(); return try backing.inodesWithXattrs() }
    public func getxattr(_ ino: InodeNumber, _ name: FileName) throws(MetadataError) -> [UInt8] {
        makeUnmade()
        return try backing.getxattr(ino, name)
    }
    public func listxattr(_ ino: InodeNumber) throws(MetadataError) -> [FileName] { makeUnmade(); return try backing.listxattr(ino) }
    public func garbage(olderThan seconds: Double, limit: Int) throws(MetadataError) -> [ObjectID] {
        makeUnmade()
        return try backing.garbage(olderThan: seconds, limit: limit)
    }
    public func dropGarbage(_ objects: [ObjectID]) throws(MetadataError) { makeUnmade(); try backing.dropGarbage(objects) }
    public func adoptStrays(_ objects: [ObjectID]) throws(MetadataError) -> Int { makeUnmade(); return try backing.adoptStrays(objects) }
    public func knownObjects() throws(MetadataError) -> Set<ObjectID> { makeUnmade(); return try backing.knownObjects() }
    public func allChunks() throws(MetadataError) -> [(InodeNumber, [ChunkRef])] { makeUnmade(); return try backing.allChunks() }
    public func reserveInodes(_ count: Int) throws(MetadataError) -> Range<UInt64> { try backing.reserveInodes(count) }
    public func apply(_ changes: [NameChange]) throws(MetadataError) {
        try changing({ () throws(MetadataError) in try backing.apply(changes) }) { state, _ in
            for change in changes {
                switch change {
                case .make(let file):
                    state.directories[file.parent]?[file.name] = file.attr.ino
                    state.touchDirectory(file.parent, links: file.attr.isDirectory ? 1 : 0, at: file.attr.ctime)
                    if file.attr.isDirectory { state.directories[file.attr.ino] = [:] }
                case .remove(let parent, let name, let directory, let now):
                    if let ino = state.directories[parent]?[name] {
                        state.attrs[ino] = nil
                        if directory { state.directories[ino] = nil }
                    }
                    state.directories[parent]?[name] = nil
                    state.touchDirectory(parent, links: directory ? -1 : 0, at: now)
                }
            }
        }
    }
    public func lease() throws(MetadataError) -> Lease { try backing.lease() }
    public func acquireLease(holder: String, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try backing.acquireLease(holder: holder, ttlSeconds: ttlSeconds)
    }
    public func renewLease(holder: String, token: LeaseToken, ttlSeconds: Double) throws(MetadataError) -> Lease {
        try backing.renewLease(holder: holder, token: token, ttlSeconds: ttlSeconds)
    }
    public func releaseLease(holder: String, token: LeaseToken) throws(MetadataError) {
        makeUnmade()
        try backing.releaseLease(holder: holder, token: token)
    }
    public func breakLease() throws(MetadataError) -> Lease { makeUnmade(); return try backing.breakLease() }
    public func setFence(_ fence: Fence?) { backing.setFence(fence) }
    public func setLeaseTTL(_ seconds: Double) { backing.setLeaseTTL(seconds) }
    public func heartbeat(_ session: Session, staleSeconds: Double) throws(MetadataError) {
        try backing.heartbeat(session, staleSeconds: staleSeconds)
    }
    public func removeSession(id: String) throws(MetadataError) { try backing.removeSession(id: id) }
    public func sessions() throws(MetadataError) -> [Session] { try backing.sessions() }
    public func deferCommits(_ on: Bool) throws(MetadataError) -> Bool { try backing.deferCommits(on) }
}
