-- Scale: file stat signatures and the shard of a path.
-- A file's stat signature (size, mtime_ns, ctime_ns, inode) when its content_hash was taken, so a
-- no-change rerun of a huge collection stats files instead of reading them. NULL: the file was
-- written too shortly before it was read for the signature to prove anything; it is hashed again.
ALTER TABLE documents ADD COLUMN file_stat bytea;

-- The shard of a relative path, as core.ingest.corpus.shard_of computes it: the first 4 bytes of
-- its sha256, big-endian, modulo the collection's shard count.
CREATE FUNCTION path_shard(path text, shards integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((get_byte(h, 0)::bigint << 24 | get_byte(h, 1)::bigint << 16 | get_byte(h, 2)::bigint << 8
             | get_byte(h, 3)::bigint) % shards)::integer
    FROM sha256(convert_to(path, 'UTF8')) AS h
$$;

-- Chunk deletes leave a mark: the vector collector (drop_unreferenced_vectors) scans every vector
-- only when a chunk went since its last pass, so a no-change run skips a scan that grows with the
-- store. A row per statement, no key: concurrent writers never wait on each other for it.
CREATE TABLE vector_gc_due (since timestamptz NOT NULL DEFAULT now());
ALTER TABLE vector_gc_due OWNER TO refinery_writer;
INSERT INTO vector_gc_due DEFAULT VALUES;  -- whatever an earlier version left is collected once

CREATE FUNCTION chunks_mark_vector_gc() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO vector_gc_due DEFAULT VALUES;
    RETURN NULL;
END $$;
CREATE TRIGGER chunks_mark_vector_gc AFTER DELETE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION chunks_mark_vector_gc();
