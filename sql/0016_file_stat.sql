-- A file's stat signature (size, mtime_ns, ctime_ns, inode) when its content_hash was taken, so a
-- no-change rerun of a huge collection stats files instead of reading them. NULL: the file was
-- written too shortly before it was read for the signature to prove anything; it is hashed again.
ALTER TABLE documents ADD COLUMN file_stat bytea;
