-- What a document row was built with besides the file's bytes: the parser version and the
-- collection's manifest defaults. A change re-parses the file even if its bytes did not change.
ALTER TABLE documents ADD COLUMN source_version text NOT NULL DEFAULT '';
