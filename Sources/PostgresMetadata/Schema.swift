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
        // One round trip per operation: each common change is one function that checks
        // what it needs and refuses with an error (the codes of `refusal`), so nothing
        // it answers has to be looked at before COMMIT, which then travels with it. The
        // marker table settles a COMMIT whose answer was lost (Pool.swift).
        """
        CREATE TABLE netvol_commits(marker bigint PRIMARY KEY);

        CREATE FUNCTION netvol_note(p_volume bigint, p_ino bigint, p_parent bigint, p_name bytea)
        RETURNS void LANGUAGE sql AS $$
            WITH next AS (UPDATE lease SET last_change = last_change + 1 WHERE volume = p_volume RETURNING last_change)
            INSERT INTO changes(volume, seq, ino, parent, name) SELECT p_volume, last_change, p_ino, p_parent, p_name FROM next
        $$;

        -- Locks the lease row (see PostgresMetadata.swift); with a fence, refuses a writer
        -- whose holder and token are no longer the lease's, naming the holder.
        CREATE FUNCTION netvol_lock(p_volume bigint, p_holder text, p_token bigint)
        RETURNS void LANGUAGE plpgsql AS $$
        DECLARE l_holder text; l_token bigint;
        BEGIN
            SELECT holder, token INTO l_holder, l_token FROM lease WHERE volume = p_volume FOR UPDATE;
            IF NOT FOUND THEN RAISE EXCEPTION 'the volume was destroyed' USING ERRCODE = 'NV009'; END IF;
            IF p_holder IS NOT NULL AND (l_holder IS DISTINCT FROM p_holder OR l_token <> p_token) THEN
                RAISE EXCEPTION '%', coalesce(l_holder, '') USING ERRCODE = 'NV001';
            END IF;
        END
        $$;

        -- A directory that still has a name, or a refusal.
        CREATE FUNCTION netvol_directory(p_volume bigint, p_dir bigint)
        RETURNS void LANGUAGE plpgsql AS $$
        DECLARE l_mode bigint; l_nlink bigint;
        BEGIN
            SELECT mode, nlink INTO l_mode, l_nlink FROM inodes WHERE volume = p_volume AND ino = p_dir;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such directory' USING ERRCODE = 'NV003'; END IF;
            IF (l_mode & 61440) <> 16384 THEN RAISE EXCEPTION 'not a directory' USING ERRCODE = 'NV004'; END IF;
            IF l_nlink = 0 THEN RAISE EXCEPTION 'the directory was removed' USING ERRCODE = 'NV003'; END IF;
        END
        $$;

        CREATE FUNCTION netvol_mknode(p_volume bigint, p_dir bigint, p_name bytea, p_mode bigint, p_uid bigint,
                                      p_gid bigint, p_rdev bigint, p_target bytea, p_now bigint)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        DECLARE
            l_dir inodes%ROWTYPE;
            l_ino bigint;
            l_mode bigint := p_mode;
            l_gid bigint := p_gid;
            l_is_dir boolean := (p_mode & 61440) = 16384;
        BEGIN
            PERFORM netvol_directory(p_volume, p_dir);
            SELECT * INTO l_dir FROM inodes WHERE volume = p_volume AND ino = p_dir;
            IF EXISTS (SELECT 1 FROM dentries WHERE volume = p_volume AND parent = p_dir AND name = p_name) THEN
                RAISE EXCEPTION 'the name exists' USING ERRCODE = 'NV002';
            END IF;
            -- A set-group-id directory passes its group on, and the bit to directories.
            IF (l_dir.mode & 1024) <> 0 THEN
                l_gid := l_dir.gid;
                IF l_is_dir THEN l_mode := l_mode | 1024; END IF;
            END IF;
            UPDATE lease SET next_ino = next_ino + 1 WHERE volume = p_volume RETURNING next_ino - 1 INTO l_ino;
            IF l_ino IS NULL THEN RAISE EXCEPTION 'the volume was destroyed' USING ERRCODE = 'NV009'; END IF;
            INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent, target)
            VALUES (p_volume, l_ino, l_mode, CASE WHEN l_is_dir THEN 2 ELSE 1 END, p_uid, l_gid, p_rdev,
                    coalesce(length(p_target), 0), p_now, p_now, p_now, CASE WHEN l_is_dir THEN p_dir END, p_target);
            INSERT INTO dentries(volume, parent, name, ino) VALUES (p_volume, p_dir, p_name, l_ino);
            UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink + CASE WHEN l_is_dir THEN 1 ELSE 0 END
            WHERE volume = p_volume AND ino = p_dir;
            PERFORM netvol_note(p_volume, p_dir, p_dir, p_name);
            RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = l_ino;
        END
        $$;

        -- unlink(2), and rmdir(2) with p_directory: answers the inode that lost the name.
        CREATE FUNCTION netvol_remove(p_volume bigint, p_dir bigint, p_name bytea, p_now bigint, p_directory boolean)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        DECLARE l_ino bigint; l_is_dir boolean;
        BEGIN
            PERFORM netvol_directory(p_volume, p_dir);
            SELECT d.ino, (i.mode & 61440) = 16384 INTO l_ino, l_is_dir
            FROM dentries d JOIN inodes i ON i.volume = d.volume AND i.ino = d.ino
            WHERE d.volume = p_volume AND d.parent = p_dir AND d.name = p_name;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such entry' USING ERRCODE = 'NV003'; END IF;
            IF p_directory THEN
                IF NOT l_is_dir THEN RAISE EXCEPTION 'not a directory' USING ERRCODE = 'NV004'; END IF;
                IF EXISTS (SELECT 1 FROM dentries WHERE volume = p_volume AND parent = l_ino) THEN
                    RAISE EXCEPTION 'the directory is not empty' USING ERRCODE = 'NV007';
                END IF;
            ELSIF l_is_dir THEN
                RAISE EXCEPTION 'a directory' USING ERRCODE = 'NV005';
            END IF;
            DELETE FROM dentries WHERE volume = p_volume AND parent = p_dir AND name = p_name;
            UPDATE inodes SET nlink = CASE WHEN p_directory THEN 0 ELSE greatest(0, nlink - 1) END, ctime = p_now
            WHERE volume = p_volume AND ino = l_ino;
            UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink - p_directory::int
            WHERE volume = p_volume AND ino = p_dir;
            PERFORM netvol_note(p_volume, l_ino, NULL, NULL);
            PERFORM netvol_note(p_volume, p_dir, p_dir, p_name);
            RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = l_ino;
        END
        $$;

        CREATE FUNCTION netvol_setattr(p_volume bigint, p_ino bigint, p_mode bigint, p_uid bigint, p_gid bigint,
                                       p_atime bigint, p_mtime bigint, p_now bigint)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE inodes SET mode = CASE WHEN p_mode IS NULL THEN mode ELSE (mode & 61440) | (p_mode & 4095) END,
                uid = coalesce(p_uid, uid), gid = coalesce(p_gid, gid), atime = coalesce(p_atime, atime),
                mtime = coalesce(p_mtime, mtime), ctime = p_now
            WHERE volume = p_volume AND ino = p_ino;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such inode' USING ERRCODE = 'NV003'; END IF;
            PERFORM netvol_note(p_volume, p_ino, NULL, NULL);
            RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = p_ino;
        END
        $$;

        -- True when p_dir is p_ancestor or lies somewhere below it: one walk up the parents.
        CREATE FUNCTION netvol_within(p_volume bigint, p_dir bigint, p_ancestor bigint)
        RETURNS boolean LANGUAGE sql AS $$
            WITH RECURSIVE up(ino, depth) AS (
                SELECT p_dir, 0
                UNION ALL
                SELECT i.parent, up.depth + 1 FROM up JOIN inodes i ON i.volume = p_volume AND i.ino = up.ino
                WHERE up.ino <> 1 AND up.ino <> p_ancestor AND up.depth < 1000000
            )
            SELECT EXISTS(SELECT 1 FROM up WHERE ino = p_ancestor)
        $$;

        CREATE FUNCTION netvol_link(p_volume bigint, p_ino bigint, p_new_dir bigint, p_new_name bytea, p_now bigint)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        DECLARE l_mode bigint; l_nlink bigint;
        BEGIN
            SELECT mode, nlink INTO l_mode, l_nlink FROM inodes WHERE volume = p_volume AND ino = p_ino;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such inode' USING ERRCODE = 'NV003'; END IF;
            IF (l_mode & 61440) = 16384 THEN RAISE EXCEPTION 'a hard link to a directory' USING ERRCODE = 'NV008'; END IF;
            PERFORM netvol_directory(p_volume, p_new_dir);
            IF EXISTS (SELECT 1 FROM dentries WHERE volume = p_volume AND parent = p_new_dir AND name = p_new_name) THEN
                RAISE EXCEPTION 'the name exists' USING ERRCODE = 'NV002';
            END IF;
            IF l_nlink >= 65000 THEN RAISE EXCEPTION 'too many links' USING ERRCODE = 'NV010'; END IF;
            INSERT INTO dentries(volume, parent, name, ino) VALUES (p_volume, p_new_dir, p_new_name, p_ino);
            UPDATE inodes SET nlink = nlink + 1, ctime = p_now WHERE volume = p_volume AND ino = p_ino;
            UPDATE inodes SET mtime = p_now, ctime = p_now WHERE volume = p_volume AND ino = p_new_dir;
            PERFORM netvol_note(p_volume, p_ino, NULL, NULL);
            PERFORM netvol_note(p_volume, p_new_dir, p_new_dir, p_new_name);
            RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = p_ino;
        END
        $$;

        -- rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE; answers the inode a
        -- replacing rename took the name from, if any. Changes are noted first, in an
        -- order `unlinked`-style recovery relies on: source, then target.
        CREATE FUNCTION netvol_rename(p_volume bigint, p_dir bigint, p_name bytea, p_new_dir bigint, p_new_name bytea,
                                      p_no_replace boolean, p_exchange boolean, p_now bigint)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        DECLARE
            l_source bigint; l_source_dir boolean;
            l_target bigint; l_target_dir boolean;
            l_dir_links bigint := 0; l_new_dir_links bigint := 0;
        BEGIN
            PERFORM netvol_directory(p_volume, p_dir);
            PERFORM netvol_directory(p_volume, p_new_dir);
            SELECT d.ino, (i.mode & 61440) = 16384 INTO l_source, l_source_dir
            FROM dentries d JOIN inodes i ON i.volume = d.volume AND i.ino = d.ino
            WHERE d.volume = p_volume AND d.parent = p_dir AND d.name = p_name;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such entry' USING ERRCODE = 'NV003'; END IF;
            SELECT d.ino, (i.mode & 61440) = 16384 INTO l_target, l_target_dir
            FROM dentries d JOIN inodes i ON i.volume = d.volume AND i.ino = d.ino
            WHERE d.volume = p_volume AND d.parent = p_new_dir AND d.name = p_new_name;
            PERFORM netvol_note(p_volume, l_source, p_dir, p_name);
            PERFORM netvol_note(p_volume, l_target, p_new_dir, p_new_name);
            PERFORM netvol_note(p_volume, p_dir, NULL, NULL);
            PERFORM netvol_note(p_volume, p_new_dir, NULL, NULL);
            IF p_no_replace AND l_target IS NOT NULL THEN RAISE EXCEPTION 'the name exists' USING ERRCODE = 'NV002'; END IF;
            IF l_source_dir AND p_dir <> p_new_dir AND netvol_within(p_volume, p_new_dir, l_source) THEN
                RAISE EXCEPTION 'cannot move a directory into itself' USING ERRCODE = 'NV006';
            END IF;

            IF p_exchange THEN
                IF l_target IS NULL THEN RAISE EXCEPTION 'no such entry' USING ERRCODE = 'NV003'; END IF;
                IF l_target = l_source THEN RETURN; END IF;
                IF l_target_dir AND p_dir <> p_new_dir AND netvol_within(p_volume, p_dir, l_target) THEN
                    RAISE EXCEPTION 'cannot move a directory into itself' USING ERRCODE = 'NV006';
                END IF;
                UPDATE dentries SET ino = l_target WHERE volume = p_volume AND parent = p_dir AND name = p_name;
                UPDATE dentries SET ino = l_source WHERE volume = p_volume AND parent = p_new_dir AND name = p_new_name;
                IF p_dir <> p_new_dir THEN
                    IF l_source_dir THEN UPDATE inodes SET parent = p_new_dir WHERE volume = p_volume AND ino = l_source; END IF;
                    IF l_target_dir THEN UPDATE inodes SET parent = p_dir WHERE volume = p_volume AND ino = l_target; END IF;
                    l_dir_links := l_target_dir::int - l_source_dir::int;
                    l_new_dir_links := l_source_dir::int - l_target_dir::int;
                END IF;
                UPDATE inodes SET ctime = p_now WHERE volume = p_volume AND ino IN (l_source, l_target);
            ELSE
                IF l_target IS NOT NULL THEN
                    -- Two names of one inode: POSIX says rename does nothing.
                    IF l_target = l_source THEN RETURN; END IF;
                    IF l_source_dir THEN
                        IF NOT l_target_dir THEN RAISE EXCEPTION 'not a directory' USING ERRCODE = 'NV004'; END IF;
                        IF EXISTS (SELECT 1 FROM dentries WHERE volume = p_volume AND parent = l_target) THEN
                            RAISE EXCEPTION 'the directory is not empty' USING ERRCODE = 'NV007';
                        END IF;
                        UPDATE inodes SET nlink = 0, ctime = p_now WHERE volume = p_volume AND ino = l_target;
                        l_new_dir_links := l_new_dir_links - 1;
                    ELSE
                        IF l_target_dir THEN RAISE EXCEPTION 'a directory' USING ERRCODE = 'NV005'; END IF;
                        UPDATE inodes SET nlink = greatest(0, nlink - 1), ctime = p_now WHERE volume = p_volume AND ino = l_target;
                    END IF;
                    DELETE FROM dentries WHERE volume = p_volume AND parent = p_new_dir AND name = p_new_name;
                END IF;
                DELETE FROM dentries WHERE volume = p_volume AND parent = p_dir AND name = p_name;
                INSERT INTO dentries(volume, parent, name, ino) VALUES (p_volume, p_new_dir, p_new_name, l_source);
                IF l_source_dir AND p_dir <> p_new_dir THEN
                    UPDATE inodes SET parent = p_new_dir WHERE volume = p_volume AND ino = l_source;
                    l_dir_links := l_dir_links - 1;
                    l_new_dir_links := l_new_dir_links + 1;
                END IF;
                UPDATE inodes SET ctime = p_now WHERE volume = p_volume AND ino = l_source;
            END IF;
            IF p_dir = p_new_dir THEN
                UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink + l_dir_links + l_new_dir_links
                WHERE volume = p_volume AND ino = p_dir;
            ELSE
                UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink + l_dir_links WHERE volume = p_volume AND ino = p_dir;
                UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink + l_new_dir_links
                WHERE volume = p_volume AND ino = p_new_dir;
            END IF;
            IF NOT p_exchange AND l_target IS NOT NULL THEN
                RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = l_target;
            END IF;
        END
        $$;

        -- A file's new chunks (indexes given once each), the range it drops, its size and
        -- times, the bytes it counts against the size limit; answers the objects that
        -- became garbage (no chunk names them any more).
        CREATE FUNCTION netvol_commit_data(p_volume bigint, p_ino bigint, p_drop_from bigint, p_drop_to bigint,
                                           p_idx bigint[], p_object bigint[], p_length bigint[], p_checksums bytea[],
                                           p_data bytea[], p_size bigint, p_mtime bigint, p_now bigint,
                                           p_garbage_since bigint)
        RETURNS bigint[] LANGUAGE plpgsql AS $$
        DECLARE
            l_mode bigint;
            l_dropped bigint[] := '{}';
            l_some bigint[];
            l_length bigint;
            l_delta bigint := coalesce((SELECT sum(x) FROM unnest(p_length) AS x), 0);
            l_retired bigint[];
        BEGIN
            SELECT mode INTO l_mode FROM inodes WHERE volume = p_volume AND ino = p_ino;
            IF NOT FOUND THEN RAISE EXCEPTION 'no such inode' USING ERRCODE = 'NV003'; END IF;
            IF (l_mode & 61440) <> 32768 THEN RAISE EXCEPTION 'not a regular file' USING ERRCODE = 'NV006'; END IF;
            IF p_drop_from IS NOT NULL THEN
                WITH gone AS (DELETE FROM chunks WHERE volume = p_volume AND ino = p_ino
                              AND idx >= p_drop_from AND idx < p_drop_to RETURNING object, length)
                SELECT coalesce(array_agg(object) FILTER (WHERE object <> 0), '{}'), coalesce(sum(length), 0)
                INTO l_some, l_length FROM gone;
                l_dropped := l_dropped || l_some;
                l_delta := l_delta - l_length;
            END IF;
            IF cardinality(p_idx) > 0 THEN
                -- Replaced chunks first: what they named may become garbage.
                WITH gone AS (DELETE FROM chunks WHERE volume = p_volume AND ino = p_ino AND idx = ANY(p_idx)
                              RETURNING object, length)
                SELECT coalesce(array_agg(object) FILTER (WHERE object <> 0), '{}'), coalesce(sum(length), 0)
                INTO l_some, l_length FROM gone;
                l_dropped := l_dropped || l_some;
                l_delta := l_delta - l_length;
                INSERT INTO chunks(volume, ino, idx, object, length, checksums, data)
                SELECT p_volume, p_ino, c.idx, c.object, c.length, c.checksums, c.data
                FROM unnest(p_idx, p_object, p_length, p_checksums, p_data) AS c(idx, object, length, checksums, data);
                -- An upload that gc adopted as a stray before this commit is no stray.
                DELETE FROM garbage WHERE volume = p_volume AND object = ANY(p_object) AND object <> 0;
            END IF;
            IF l_delta <> 0 THEN
                UPDATE volumes SET used_bytes = CASE
                    WHEN l_delta > 0 AND size_limit >= 0 AND used_bytes > size_limit - l_delta THEN netvol_volume_full()
                    ELSE greatest(0, used_bytes + l_delta) END
                WHERE id = p_volume;
            END IF;
            UPDATE inodes SET size = p_size, mtime = coalesce(p_mtime, mtime), ctime = p_now,
                stored = greatest(0, stored + l_delta)
            WHERE volume = p_volume AND ino = p_ino;
            WITH retired AS (
                INSERT INTO garbage(volume, object, since)
                SELECT DISTINCT p_volume, o, p_garbage_since FROM unnest(l_dropped) AS o
                WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.volume = p_volume AND c.object = o)
                ON CONFLICT DO NOTHING RETURNING object)
            SELECT coalesce(array_agg(object), '{}') INTO l_retired FROM retired;
            PERFORM netvol_note(p_volume, p_ino, NULL, NULL);
            RETURN l_retired;
        END
        $$;
        """,
        // A writer answers a create at once and makes the file at its close (or at the
        // next change that needs it), under an inode number it reserved beforehand by
        // moving `lease.next_ino` past it: `netvol_make` is `netvol_mknode` with the
        // number given.
        """
        CREATE FUNCTION netvol_make(p_volume bigint, p_dir bigint, p_name bytea, p_mode bigint, p_uid bigint,
                                    p_gid bigint, p_rdev bigint, p_target bytea, p_now bigint, p_ino bigint)
        RETURNS SETOF inodes LANGUAGE plpgsql AS $$
        DECLARE
            l_dir inodes%ROWTYPE;
            l_ino bigint := p_ino;
            l_mode bigint := p_mode;
            l_gid bigint := p_gid;
            l_is_dir boolean := (p_mode & 61440) = 16384;
        BEGIN
            PERFORM netvol_directory(p_volume, p_dir);
            SELECT * INTO l_dir FROM inodes WHERE volume = p_volume AND ino = p_dir;
            IF EXISTS (SELECT 1 FROM dentries WHERE volume = p_volume AND parent = p_dir AND name = p_name) THEN
                RAISE EXCEPTION 'the name exists' USING ERRCODE = 'NV002';
            END IF;
            -- A set-group-id directory passes its group on, and the bit to directories.
            IF (l_dir.mode & 1024) <> 0 THEN
                l_gid := l_dir.gid;
                IF l_is_dir THEN l_mode := l_mode | 1024; END IF;
            END IF;
            IF l_ino IS NULL THEN
                UPDATE lease SET next_ino = next_ino + 1 WHERE volume = p_volume RETURNING next_ino - 1 INTO l_ino;
                IF l_ino IS NULL THEN RAISE EXCEPTION 'the volume was destroyed' USING ERRCODE = 'NV009'; END IF;
            ELSIF NOT EXISTS (SELECT 1 FROM lease WHERE volume = p_volume AND next_ino > l_ino)
                  OR EXISTS (SELECT 1 FROM inodes WHERE volume = p_volume AND ino = l_ino) THEN
                RAISE EXCEPTION 'inode % was not reserved, or is taken', l_ino USING ERRCODE = 'NV006';
            END IF;
            INSERT INTO inodes(volume, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, parent, target)
            VALUES (p_volume, l_ino, l_mode, CASE WHEN l_is_dir THEN 2 ELSE 1 END, p_uid, l_gid, p_rdev,
                    coalesce(length(p_target), 0), p_now, p_now, p_now, CASE WHEN l_is_dir THEN p_dir END, p_target);
            INSERT INTO dentries(volume, parent, name, ino) VALUES (p_volume, p_dir, p_name, l_ino);
            UPDATE inodes SET mtime = p_now, ctime = p_now, nlink = nlink + CASE WHEN l_is_dir THEN 1 ELSE 0 END
            WHERE volume = p_volume AND ino = p_dir;
            PERFORM netvol_note(p_volume, p_dir, p_dir, p_name);
            RETURN QUERY SELECT * FROM inodes WHERE volume = p_volume AND ino = l_ino;
        END
        $$;

        CREATE OR REPLACE FUNCTION netvol_mknode(p_volume bigint, p_dir bigint, p_name bytea, p_mode bigint, p_uid bigint,
                                                 p_gid bigint, p_rdev bigint, p_target bytea, p_now bigint)
        RETURNS SETOF inodes LANGUAGE sql AS $$
            SELECT * FROM netvol_make(p_volume, p_dir, p_name, p_mode, p_uid, p_gid, p_rdev, p_target, p_now, NULL)
        $$;
        """,
        // Version 5 changes no table: it keeps out mounts that do not know the rule below.
        """
        COMMENT ON TABLE lease IS 'While holder is NULL, mounts answer opens from their caches; whoever takes the lease then
        changes nothing for a second (Lease.quietSeconds) if other mounts are attached.';
        """,
        // Version 6: a mount that attaches waits while the writer defers its commits.
        """
        ALTER TABLE lease ADD COLUMN deferring boolean NOT NULL DEFAULT false;
        COMMENT ON COLUMN lease.deferring IS 'The holder defers the commits of closed files: it found no other mount attached.
        A mount that attaches waits until this is false or the lease is not held.';
        """,
        // Version 7: how many rows one key names, stated rather than sampled. ANALYZE at
        // the wrong moment (a volume holding one big file, its indexes still large from
        // files deleted) sees one inode number, so that a probe by (volume, ino) looks as
        // costly as reading the whole volume: each file's chunk map was planned as a scan
        // of every chunk of the volume, and a `cat` of 2000 small files after a refill
        // spent 0.35 s in the database instead of 0.05 s. These fractions (negative: of
        // the rows) only need to be small; ANALYZE keeps them.
        """
        ALTER TABLE inodes ALTER COLUMN ino SET (n_distinct = -0.5);
        ALTER TABLE chunks ALTER COLUMN ino SET (n_distinct = -0.1);
        ALTER TABLE dentries ALTER COLUMN parent SET (n_distinct = -0.05), ALTER COLUMN name SET (n_distinct = -0.5);
        ANALYZE inodes, chunks, dentries;
        """,
    ]

    /// What a refusal raised by one of the functions above means: their SQLSTATEs are of
    /// a class of netvol's own, "NV".
    static func refusal(_ failure: DatabaseFailure) -> MetadataError? {
        switch failure.sqlstate {
        case "NV001": .fenced(holder: failure.message.isEmpty ? nil : failure.message)
        case "NV002": .exists
        case "NV003": .notFound
        case "NV004": .notDirectory
        case "NV005": .isDirectory
        case "NV006": .invalidArgument(failure.message)
        case "NV007": .notEmpty
        case "NV008": .notPermitted
        case "NV010": .tooManyLinks
        case "NV009": .notAVolume(failure.message)
        default: nil
        }
    }

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
