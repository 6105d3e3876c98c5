// Metadata: the namespace, attributes, chunk maps and settings of a volume.
//
// Every change is one transaction: a crash leaves each operation either done or not
// done. Chunk objects are referred to here only after they are stored whole (the
// caller's duty); objects a transaction stops referring to go to the `garbage` list with
// the time they left, and are deleted from the chunk store only after a grace period so
// that a reader still holding an older chunk map never finds them gone.

@_exported public import VolumeTypes

/// The metadata of one volume.
///
/// Each requirement is one transaction and is safe to call from many threads at once.
/// Name rules (length, `/`, `.` and `..`) are checked by the caller before it gets here;
/// the store checks what needs the database: existence, types, emptiness, the size limit.
///
/// The contract every implementation keeps, whatever its database:
///
/// 1. **Fencing under the lease lock.** Every transaction that changes the volume checks
///    the fence (when one is set) *inside* the transaction, while holding the lease row
///    locked until it commits; acquiring, renewing, releasing and breaking the lease lock
///    the same row. A takeover therefore lands either before a stale writer's check (which
///    then fails with `.fenced`) or after its commit, never in between. (SQLite: every
///    write transaction is `BEGIN IMMEDIATE`, which locks the whole database.)
/// 2. **A change feed in commit order.** Sequence numbers become visible in the order
///    they were handed out: a reader that has seen number n has seen every change up to
///    n, and never skips one that commits later. Every transaction that appends to the
///    feed is serialized on the lease lock of rule 1. A reader behind a pruned part of the
///    feed gets `truncated: true` and must forget what it cached.
/// 3. **Whose clock.** Lease, session and garbage times, and the gc cutoff of
///    `garbage(olderThan:)`, are the database's clock, the one every host shares (tests
///    inject one): a host whose clock runs ahead can neither expire a lease early nor
///    delete an object a reader elsewhere may still need. File times (atime, mtime,
///    ctime) are the caller's `now:`, as on any filesystem.
/// 4. **Transient failures are retried, within a bound.** A failed connection,
///    serialization failure or deadlock runs the transaction again, with backoff, until a
///    deadline; then the call throws `.database` naming what failed. A transaction is
///    never run again when its commit may already have happened.
/// 5. **Shared objects.** Several chunks may name one object (file copies): an object
///    becomes garbage only when no chunk of the volume names it any more, and the
///    objects a call reports as retired are exactly those.
public protocol Metadata: Sendable {
    /// The volume's chunk size and size limit.
    func settings() throws(MetadataError) -> VolumeSettings
    /// Size limit, bytes used by chunk objects, and inode count.
    func usage() throws(MetadataError) -> VolumeUsage
    /// Raises the size limit; refuses (`.invalidArgument`) a limit below the current one.
    func resize(sizeLimit: UInt64) throws(MetadataError)

    /// The inode named `name` in directory `parent`.
    func lookup(_ parent: InodeNumber, _ name: FileName) throws(MetadataError) -> Attr
    func getattr(_ ino: InodeNumber) throws(MetadataError) -> Attr
    /// Records read access times without touching ctime (what relatime does on read),
    /// all in one transaction; inodes that are gone are skipped.
    func touch(_ atimes: [InodeNumber: Timestamp]) throws(MetadataError)
    /// Changes mode, owner and times; sets ctime to `now`.
    func setattr(_ ino: InodeNumber, _ changes: AttrChanges, now: Timestamp) throws(MetadataError) -> Attr
    /// Creates a new inode and its entry: a file, directory, symlink (with `target`) or
    /// special file. A directory with the set-group-id bit passes its group (and, to
    /// subdirectories, the bit) on.
    func mknode(_ parent: InodeNumber, _ name: FileName, mode: UInt32, uid: UInt32, gid: UInt32,
                rdev: UInt64, target: [UInt8]?, now: Timestamp) throws(MetadataError) -> Attr
    /// Inode numbers no other call will give out, for files this caller makes later with
    /// `make`: a writer answers a create at once and commits the file at its close.
    func reserveInodes(_ count: Int) throws(MetadataError) -> Range<UInt64>
    /// Applies `changes` in order, in one transaction: each `.make` makes an empty regular
    /// file or directory under a number `reserveInodes` gave, as `mknode` would (the same
    /// refusals, the set-group-id rule), with the mode, owner and creation time of its
    /// attributes; each `.remove` is an `unlink` or `rmdir`. `commitData(…, applying:)` applies them in the
    /// transaction of a data commit.
    func apply(_ changes: [NameChange]) throws(MetadataError)
    /// Adds the name `newName` in `newParent` for `ino`, which must not be a directory.
    func link(_ ino: InodeNumber, _ newParent: InodeNumber, _ newName: FileName, now: Timestamp) throws(MetadataError) -> Attr
    /// Removes a non-directory entry; returns the inode's attributes afterwards (nlink may
    /// be 0: the inode lives on until `purge`).
    func unlink(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr
    /// Removes an empty directory; returns its attributes afterwards (nlink 0).
    func rmdir(_ parent: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError) -> Attr
    /// Renames, replaces or exchanges entries; returns the attributes of an inode that lost
    /// its name by being replaced, if any.
    func rename(_ parent: InodeNumber, _ name: FileName, _ newParent: InodeNumber, _ newName: FileName,
                flags: RenameFlags, now: Timestamp) throws(MetadataError) -> Attr?
    /// Entries of directory `ino` after position `cookie` (0 for the start), at most `limit`.
    func readdir(_ ino: InodeNumber, after cookie: Int64, limit: Int) throws(MetadataError) -> [DirEntry]
    /// The first `limit` entries of each of `dirs`, read in one snapshot (and over a
    /// network, one round trip): what a walk of a tree lists next. A directory that is
    /// missing, or is not a directory, is left out.
    func listings(_ dirs: [InodeNumber], limit: Int) throws(MetadataError) -> [InodeNumber: [DirEntry]]
    func readlink(_ ino: InodeNumber) throws(MetadataError) -> [UInt8]

    /// The stored chunks of `ino`, by index.
    func chunks(_ ino: InodeNumber) throws(MetadataError) -> [ChunkRef]
    /// `getattr` and `chunks` of one moment, together (what opening a file needs).
    func attrAndChunks(_ ino: InodeNumber) throws(MetadataError) -> (Attr, [ChunkRef])
    /// `attrAndChunks` of several files at once, each file's of one moment; files that do
    /// not exist are left out.
    func attrsAndChunks(_ inodes: [InodeNumber]) throws(MetadataError) -> [(Attr, [ChunkRef])]
    /// Replaces chunks of `ino` with `chunks` (objects already stored whole), drops every
    /// chunk whose index is in `drop` when given (a truncation drops `n...`, a punched
    /// hole the chunks it covers whole), and sets the size and times.
    /// Fails with `.noSpace`, changing nothing, when the volume's size limit would be
    /// exceeded. Returns the file's attributes after the commit and the objects that are
    /// no longer referred to (now garbage).
    /// `applying`: changes to `apply` first, in the same transaction.
    @discardableResult
    func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                    mtime: Timestamp?, now: Timestamp, applying: [NameChange]) throws(MetadataError) -> Committed
    /// Commits the new data of several files in one transaction, in order, after
    /// `applying` (a group of files closed while the writer defers commits); answers one
    /// `Committed` for each. Refuses the whole group as `commitData` would refuse any one.
    func commitData(_ commits: [DataCommit], now: Timestamp, applying: [NameChange]) throws(MetadataError) -> [Committed]
    /// Sets the volume's usage, and each file's stored bytes, to what its chunks add up
    /// to (fsck --repair); returns the usage as it was recorded and as it is now.
    func recountUsage() throws(MetadataError) -> (recorded: UInt64, counted: UInt64)
    /// Makes every committed transaction durable against a machine crash.
    func sync() throws(MetadataError)

    /// Deletes inodes that have no names left, with their chunks and xattrs, in one
    /// transaction; their objects become garbage. Skips inodes that still have names or
    /// are gone.
    func purge(_ inodes: [InodeNumber], now: Timestamp) throws(MetadataError)
    /// Inodes with no names left, kept for open handles that a crash then dropped.
    func orphans() throws(MetadataError) -> [InodeNumber]

    /// Every inode that has at least one extended attribute.
    func inodesWithXattrs() throws(MetadataError) -> Set<InodeNumber>
    func getxattr(_ ino: InodeNumber, _ name: FileName) throws(MetadataError) -> [UInt8]
    func setxattr(_ ino: InodeNumber, _ name: FileName, _ value: [UInt8], mode: XattrMode, now: Timestamp) throws(MetadataError)
    func listxattr(_ ino: InodeNumber) throws(MetadataError) -> [FileName]
    func removexattr(_ ino: InodeNumber, _ name: FileName, now: Timestamp) throws(MetadataError)

    /// Garbage objects that left the metadata at least `seconds` ago by the database's
    /// clock (the one clock every host shares: a host whose clock runs ahead must not
    /// delete what a reader elsewhere may still read), at most `limit`.
    func garbage(olderThan seconds: Double, limit: Int) throws(MetadataError) -> [ObjectID]
    /// Forgets garbage entries once their objects are deleted from the chunk store.
    func dropGarbage(_ objects: [ObjectID]) throws(MetadataError)
    /// Records objects found in the chunk store that nothing refers to as garbage from now on;
    /// returns how many were new.
    func adoptStrays(_ objects: [ObjectID]) throws(MetadataError) -> Int
    /// Every object the metadata refers to or holds as garbage.
    func knownObjects() throws(MetadataError) -> Set<ObjectID>
    /// Every chunk of every file, by inode in ascending order (for fsck, and to delete a
    /// volume's objects).
    func allChunks() throws(MetadataError) -> [(InodeNumber, [ChunkRef])]

    // MARK: - The writer lease (one transaction each; time is the database's clock)

    /// The lease as it stands.
    func lease() throws(MetadataError) -> Lease
    /// Takes the lease for `holder` if it is free, expired or already `holder`'s, bumping
    /// the token. Fails with `.leaseHeld` naming the current holder otherwise.
    func acquireLease(holder: String, ttlSeconds: Double) throws(MetadataError) -> Lease
    /// Extends the lease; fails with `.fenced` if `holder` no longer holds `token`.
    func renewLease(holder: String, token: LeaseToken, ttlSeconds: Double) throws(MetadataError) -> Lease
    /// Gives the lease up if `holder` still holds `token`.
    func releaseLease(holder: String, token: LeaseToken) throws(MetadataError)
    /// Revokes the lease from whoever holds it: bumps the token so the old holder is fenced.
    func breakLease() throws(MetadataError) -> Lease
    /// From now on every namespace and data transaction of this instance checks, inside
    /// the transaction, that `fence` still holds the lease (nil: no check, for tools).
    func setFence(_ fence: Fence?)
    /// The writer lease's ttl of the mount this instance serves. Every transaction that
    /// writes holds the lease row's lock, so a host cut off in the middle of one keeps
    /// every other mount from taking the lease until the database ends that transaction:
    /// a database other hosts share ends it after this long idle, not after the deadline.
    func setLeaseTTL(_ seconds: Double)

    /// Committed changes after `sequence`, at most `limit`.
    func changes(after sequence: Int64, limit: Int) throws(MetadataError) -> ChangeBatch

    /// Registers or refreshes a mount's session (its heartbeat is the database's now),
    /// and forgets sessions whose heartbeat is older than `staleSeconds`.
    func heartbeat(_ session: Session, staleSeconds: Double) throws(MetadataError)
    func removeSession(id: String) throws(MetadataError)
    /// The writer (this instance's fence) says whether it defers the commits of files
    /// closed on its mount (`Lease.deferring`). Turning it on succeeds only while no other
    /// mount is attached, judged under the lease row's lock, which a mount's first
    /// heartbeat also takes: a mount that attaches after this sees the flag and waits until
    /// it is off again. Answers whether it is now on.
    func deferCommits(_ on: Bool) throws(MetadataError) -> Bool
    func sessions() throws(MetadataError) -> [Session]
}

extension Metadata {
    @discardableResult
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp) throws(MetadataError) -> Committed {
        try commitData(ino, chunks: chunks, drop: drop, size: size, mtime: mtime, now: now, applying: [])
    }

    @discardableResult
    public func commitData(_ ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>?, size: UInt64,
                           mtime: Timestamp?, now: Timestamp, making files: [NewFile]) throws(MetadataError) -> Committed {
        try commitData(ino, chunks: chunks, drop: drop, size: size, mtime: mtime, now: now, applying: files.map(NameChange.make))
    }

    /// Makes empty regular `files`, in order (`apply`).
    public func make(_ files: [NewFile]) throws(MetadataError) {
        try apply(files.map(NameChange.make))
    }
}

/// One file's new data in a group commit: as the arguments of `commitData`.
public struct DataCommit: Sendable, Equatable {
    public var ino: InodeNumber
    public var chunks: [ChunkRef]
    public var drop: Range<Int>?
    public var size: UInt64
    public var mtime: Timestamp?
    /// The file's new ctime, where it is not the group's `now`.
    public var ctime: Timestamp?
    public init(ino: InodeNumber, chunks: [ChunkRef], drop: Range<Int>? = nil, size: UInt64, mtime: Timestamp?,
                ctime: Timestamp? = nil) {
        self.ino = ino
        self.chunks = chunks
        self.drop = drop
        self.size = size
        self.mtime = mtime
        self.ctime = ctime
    }
}

/// A change of names the writer answered before the metadata had it, applied later in
/// the order it was answered (`Metadata.apply`).
public enum NameChange: Sendable, Equatable {
    case make(NewFile)
    /// An `unlink` of `name` in `parent` at `now`, or with `directory` an `rmdir`.
    case remove(parent: InodeNumber, name: FileName, directory: Bool, now: Timestamp)
}

/// An empty regular file, a directory or a symbolic link to make under a reserved inode
/// number (`Metadata.apply`).
public struct NewFile: Sendable, Equatable {
    public var parent: InodeNumber
    public var name: FileName
    /// Its number, mode, owner and times (its creation time); the rest follows from them.
    public var attr: Attr
    /// A symbolic link's target.
    public var target: [UInt8]?
    public init(parent: InodeNumber, name: FileName, attr: Attr, target: [UInt8]? = nil) {
        self.parent = parent
        self.name = name
        self.attr = attr
        self.target = target
    }

    /// Whether `apply` can make it: a symbolic link needs its target, nothing else has one.
    public var isMakeable: Bool {
        attr.isSymlink ? !(target ?? []).isEmpty : (attr.isRegular || attr.isDirectory) && target == nil
    }
}

extension Range where Bound == Int {
    /// Every chunk index from `first` on: what a truncation drops.
    public static func from(_ first: Int) -> Range<Int> { first..<Int.max }
}
