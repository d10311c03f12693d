-- BM25 for the text leg. A GIN index finds the chunks that contain a word but cannot rank them:
-- ts_rank_cd had to score every match, slowly, and without inverse document frequency. Instead,
-- each chunk's lexemes (from its generated tsvector, so stemming and stop words follow the
-- chunk's text search configuration) are kept as postings with a precomputed BM25 term weight,
-- ordered per term by that weight, and each term's document frequency is kept per collection.
-- A query reads the best postings of its few terms and sums idf * weight: real BM25 at top-k
-- cost. Triggers on `chunks` keep both in step with every write, the way an index would be;
-- the postings replace the GIN index.
DROP INDEX chunks_tsv_idx;

-- BM25 term weight of a lexeme in a chunk: tf saturation (k1 = 1.2) and length normalization
-- (b = 0.5: chunks are already bounded by the chunker) against a fixed pivot of 64 weighted
-- lexemes. Context lexemes (title and heading path, weight A) count four times.
CREATE FUNCTION bm25_weight(tf real, len real) RETURNS real
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN tf * 2.2 / (tf + 1.2 * (0.5 + 0.5 * len / 64.0));

CREATE FUNCTION bm25_tf(weights text[]) RETURNS real
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN greatest(cardinality(weights) + 3 * cardinality(array_positions(weights, 'A')), 1);

-- No foreign key: the triggers below add and remove a chunk's postings with the chunk, and a
-- per-row key check on a million postings cost more than all the rest of the indexing.
CREATE TABLE chunk_terms (
    chunk_id uuid NOT NULL,
    term     text NOT NULL,
    weight   real NOT NULL
);
CREATE INDEX chunk_terms_chunk_idx ON chunk_terms (chunk_id);
-- Postings of a term, best first: an index-only scan reads a term's top postings.
CREATE INDEX chunk_terms_postings_idx ON chunk_terms (term, weight DESC) INCLUDE (chunk_id);

-- Chunks containing each term, per collection: writers of different collections never touch
-- the same rows (a collection's writes are already serialized by its step lock).
CREATE TABLE chunk_term_df (
    term       text NOT NULL,
    collection text NOT NULL,
    df         integer NOT NULL,
    PRIMARY KEY (term, collection)
);

CREATE FUNCTION chunks_index_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH lexemes AS (
        SELECT n.id, n.collection, l.lexeme, bm25_tf(l.weights) AS tf,
               sum(bm25_tf(l.weights)) OVER (PARTITION BY n.id) AS len
        FROM new_chunks n, unnest(n.tsv) l
    ), postings AS (
        INSERT INTO chunk_terms (chunk_id, term, weight)
        SELECT id, lexeme, bm25_weight(tf, len) FROM lexemes
    )
    INSERT INTO chunk_term_df (term, collection, df)
    SELECT lexeme, collection, count(*) FROM lexemes GROUP BY lexeme, collection ORDER BY lexeme, collection
    ON CONFLICT (term, collection) DO UPDATE SET df = chunk_term_df.df + EXCLUDED.df;
    RETURN NULL;
END
$$;

CREATE FUNCTION chunks_unindex_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM chunk_terms p USING old_chunks o WHERE p.chunk_id = o.id;
    -- A term counted down to 0 keeps its row (readers ignore it): deleting it here would scan.
    WITH gone AS (
        SELECT l.lexeme, o.collection, count(*) AS n FROM old_chunks o, unnest(tsvector_to_array(o.tsv)) l(lexeme)
        GROUP BY l.lexeme, o.collection
    )
    UPDATE chunk_term_df f SET df = f.df - gone.n FROM gone
    WHERE f.term = gone.lexeme AND f.collection = gone.collection;
    RETURN NULL;
END
$$;

CREATE TRIGGER chunks_index_terms AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_chunks FOR EACH STATEMENT EXECUTE FUNCTION chunks_index_terms();
CREATE TRIGGER chunks_unindex_terms AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_chunks FOR EACH STATEMENT EXECUTE FUNCTION chunks_unindex_terms();

CREATE FUNCTION chunks_truncate_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE chunk_terms, chunk_term_df;
    RETURN NULL;
END
$$;
CREATE TRIGGER chunks_truncate_terms AFTER TRUNCATE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION chunks_truncate_terms();

-- Index the chunks already stored.
WITH lexemes AS (
    SELECT c.id, c.collection, l.lexeme, bm25_tf(l.weights) AS tf,
           sum(bm25_tf(l.weights)) OVER (PARTITION BY c.id) AS len
    FROM chunks c, unnest(c.tsv) l
), postings AS (
    INSERT INTO chunk_terms (chunk_id, term, weight) SELECT id, lexeme, bm25_weight(tf, len) FROM lexemes
)
INSERT INTO chunk_term_df (term, collection, df) SELECT lexeme, collection, count(*) FROM lexemes GROUP BY 1, 2;

ALTER TABLE chunk_terms OWNER TO refinery_writer;
ALTER TABLE chunk_term_df OWNER TO refinery_writer;
GRANT SELECT ON chunk_terms, chunk_term_df TO refinery_reader;
