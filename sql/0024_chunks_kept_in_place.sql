-- Re-chunking a document (its file edited, or a new parser or chunker version) keeps the chunk
-- rows whose text and context did not change instead of deleting and inserting them again, with
-- their BM25 postings (db/chunks.py replace_chunks): a version bump that changes few chunks no
-- longer rewrites every row of chunks and chunk_terms, and leaves no dead rows that search must
-- step over until a vacuum. A kept chunk may still move within its document (a paragraph
-- inserted before it): its ordinal is updated in one statement, so the uniqueness of
-- (document_id, ordinal) is checked at the statement's end, when the ordinals have all moved.
ALTER TABLE chunks DROP CONSTRAINT chunks_document_id_ordinal_key;
ALTER TABLE chunks ADD CONSTRAINT chunks_document_id_ordinal_key UNIQUE (document_id, ordinal)
    DEFERRABLE INITIALLY IMMEDIATE;
