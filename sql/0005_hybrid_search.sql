-- Full-text search beside the vectors: each chunk keeps the context it is embedded with (the
-- document title and heading path) and a generated tsvector over context (weight A) and text
-- (weight B), in the text search configuration chosen at chunking time (TEXT_SEARCH_CONFIG).
ALTER TABLE chunks ADD COLUMN context text NOT NULL DEFAULT '';
ALTER TABLE chunks ADD COLUMN ts_config regconfig NOT NULL DEFAULT 'english';
ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector(ts_config, context), 'A') || setweight(to_tsvector(ts_config, text), 'B')
) STORED;
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
