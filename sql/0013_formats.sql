-- Page (PDF, Word) or slide (PowerPoint) numbers of a chunk's text, shown in search hits; NULL
-- for formats without pages.
ALTER TABLE chunks ADD COLUMN first_page integer;
ALTER TABLE chunks ADD COLUMN last_page integer;

-- CJK text search. PostgreSQL's parsers read a run of Chinese, Japanese or Korean characters
-- (written without spaces) as one word, so no word inside a sentence could be found.
-- cjk_split() rewrites each such run as its overlapping character bigrams (東京都 -> 東京 京都),
-- the usual CJK indexing without a dictionary; text without CJK is returned unchanged, so other
-- languages index exactly as before. Chunks and queries both go through it.
CREATE FUNCTION cjk_split(t text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE
        WHEN t !~ '[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]' THEN t
        ELSE (SELECT string_agg(CASE WHEN length(r.piece[1]) > 1 AND r.piece[1] ~ '^[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]'
                                     THEN (SELECT string_agg(substr(r.piece[1], i, 2), ' ' ORDER BY i)
                                           FROM generate_series(1, length(r.piece[1]) - 1) i)
                                     ELSE r.piece[1] END, ' ' ORDER BY r.n)
              FROM regexp_matches(t, '[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+|[^\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+', 'g')
                   WITH ORDINALITY AS r(piece, n))
    END;

-- The chunks' tsvector recomputed through it (drop and add: SET EXPRESSION needs PostgreSQL 17).
ALTER TABLE chunks DROP COLUMN tsv;
ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector(ts_config, cjk_split(context)), 'A') || setweight(to_tsvector(ts_config, cjk_split(text)), 'B')
) STORED;

-- Postings of chunks holding CJK text were built from whole runs: dropped, and their collections
-- marked pending, so the next chunks run rebuilds them (build_collection_terms, sql/0011).
INSERT INTO chunk_terms_pending (collection)
SELECT DISTINCT collection FROM chunks WHERE cjk_split(context) <> context OR cjk_split(text) <> text
ON CONFLICT DO NOTHING;
DELETE FROM chunk_terms p USING chunks c
WHERE p.chunk_id = c.id AND (cjk_split(c.context) <> c.context OR cjk_split(c.text) <> c.text);

-- The text search configuration of each collection's chunks (a collection may set its own in
-- corpus.yaml): a query is read in every configuration in use, so each collection matches it.
CREATE TABLE collection_text_search (
    collection text PRIMARY KEY,
    ts_config  regconfig NOT NULL
);
INSERT INTO collection_text_search SELECT DISTINCT ON (collection) collection, ts_config FROM chunks;
ALTER TABLE collection_text_search OWNER TO refinery_writer;
GRANT SELECT ON collection_text_search TO refinery_reader;
