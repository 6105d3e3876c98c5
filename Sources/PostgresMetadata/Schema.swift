// The tables every volume of a database shares, and how they change between versions.
//
// Every table is keyed by the volume's id first, so several volumes live side by side
// and one volume's rows sit together in each index. `netvol_schema` holds the version;
// migrations run in order, each in the transaction that records it, under an advisory
// lock so that two workers opening a fresh database at once apply each exactly once.

import Metadata

enum Schema {
    /// The key of the advisory lock migrations hold ("netvol" in ASCII).
    static let migrationLock: Int64 = 0x6E_6574_766F_6C

    /// Migration `n` (1-based) brings the schema from version n - 1 to n.
    static let migrations: [String] = [
        """
        CREATE TABLE volumes(
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            chunk_size bigint NOT NULL,
            size_limit bigint NOT NULL,   -- a limit past 2^63 reads as negative: no limit
            used_bytes bigint NOT NULL DEFAULT 0,
            created bigint NOT NULL,
            store text NOT NULL           -- the chunk store's settings, a JSON object of strings
        );
        -- The volume's serialization point: every transaction that writes the volume locks
        -- this row first, so the counters below are handed out in commit order.
        CREATE TABLE lease(
            volume bigint PRIMARY KEY,
            holder text,
            token bigint NOT NULL DEFAULT 0,
            expires_at bigint NOT NULL DEFAULT 0,
            renewed_at bigint NOT NULL DEFAULT 0,
            last_change bigint NOT NULL DEFAULT 0,  -- the change feed's newest sequence number
            next_ino bigint NOT NULL DEFAULT 2
        );
        CREATE TABLE inodes(
            volume bigint NOT NULL, ino bigint NOT NULL,
            mode bigint NOT NULL, nlink bigint NOT NULL, uid bigint NOT NULL, gid bigint NOT NULL,
            rdev bigint NOT NULL, size bigint NOT NULL,
            stored bigint NOT NULL DEFAULT 0,   -- bytes of this file's chunks
            atime bigint NOT NULL, mtime bigint NOT NULL, ctime bigint NOT NULL,
            parent bigint,                      -- directories only: the directory holding this one
            target bytea,                       -- symlinks only
            PRIMARY KEY(volume, ino)
        );
        CREATE INDEX inodes_nameless ON inodes(volume) WHERE nlink = 0;
        CREATE TABLE dentries(
            cookie bigserial PRIMARY KEY,       -- readdir position, never reused
            volume bigint NOT NULL, parent bigint NOT NULL, name bytea NOT NULL, ino bigint NOT NULL,
            UNIQUE(volume, parent, name)
        );
        CREATE INDEX dentries_by_position ON dentries(volume, parent, cookie);
        -- Several chunks, of one file or of several, may name one object: an object is
        -- garbage only once no row here names it (see retire).
        CREATE TABLE chunks(
            volume bigint NOT NULL, ino bigint NOT NULL, idx bigint NOT NULL,
            object bigint NOT NULL,             -- 0: inline, the bytes are in data
            length bigint NOT NULL, checksums bytea NOT NULL, data bytea,
            PRIMARY KEY(volume, ino, idx)
        );
        CREATE INDEX chunks_by_object ON chunks(volume, object);
        CREATE TABLE xattrs(
            volume bigint NOT NULL, ino bigint NOT NULL, name bytea NOT NULL, value bytea NOT NULL,
            PRIMARY KEY(volume, ino, name)
        );
        CREATE TABLE garbage(
            volume bigint NOT NULL, object bigint NOT NULL, since bigint NOT NULL,
            PRIMARY KEY(volume, object)
        );
        CREATE TABLE sessions(
            volume bigint NOT NULL, id text NOT NULL, host text NOT NULL, pid bigint NOT NULL,
            mountpoint text NOT NULL, device text NOT NULL, mode text NOT NULL,
            started_at bigint NOT NULL, heartbeat_at bigint NOT NULL,
            PRIMARY KEY(volume, id)
        );
        CREATE TABLE changes(
            volume bigint NOT NULL, seq bigint NOT NULL, ino bigint, parent bigint, name bytea,
            PRIMARY KEY(volume, seq)
        );
        """,
        // Lets a statement that travels with COMMIT refuse growth past the size limit by
        // itself (an error stops the COMMIT), instead of answering first and costing
        // another round trip. `disk_full` is what netvol reads as ENOSPC.
        """
        CREATE FUNCTION netvol_volume_full() RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the volume is full' USING ERRCODE = 'disk_full';
        END
        $$;
        """,
    ]

    static var currentVersion: Int64 { Int64(migrations.count) }

    /// The schema version of the database, 0 when it has none.
    static func version(_ tx: Transaction) throws -> Int64 {
        let exists = try tx.executeOnce("SELECT to_regclass('netvol_schema') IS NOT NULL")
        guard try exists.bool(0, 0) else { return 0 }
        return try tx.executeOnce("SELECT coalesce(max(version), 0) FROM netvol_schema").int(0, 0)
    }

    /// Brings the database's schema up to date; refuses one newer than this netvol.
    static func migrate(_ pool: ConnectionPool) throws(MetadataError) {
        try pool.transaction { tx in
            try tx.executeOnce("SELECT pg_advisory_xact_lock($1)", [.int(migrationLock)])
            try tx.executeOnce("CREATE TABLE IF NOT EXISTS netvol_schema(version bigint NOT NULL)")
            let version = try version(tx)
            if version > currentVersion {
                throw MetadataError.notAVolume("the database has netvol schema version \(version); this netvol knows up to \(currentVersion): upgrade netvol")
            }
            var next = version + 1
            while next <= currentVersion {
                try tx.script(migrations[Int(next) - 1])
                try tx.executeOnce("DELETE FROM netvol_schema")
                try tx.executeOnce("INSERT INTO netvol_schema(version) VALUES ($1)", [.int(next)])
                next += 1
            }
        }
    }
}
