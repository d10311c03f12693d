-- Best-of-N refinement: every candidate a model gave for a document refined best-of-N, valid or
-- not, with its score and whether it was kept. The discard rate per model and collection that
-- sizes N is read from here.
CREATE TABLE refine_candidates (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          text,
    collection      text NOT NULL,
    document_id     uuid NOT NULL,                 -- no foreign key: the log outlives documents
    model           text NOT NULL,
    input_hash      bytea NOT NULL,
    candidate_hash  bytea NOT NULL,                -- of the raw answer
    asked           smallint NOT NULL CHECK (asked >= 1),  -- N: the candidates asked for this document
    valid           boolean NOT NULL,
    score           real,                          -- score_refinement of a valid candidate
    kept            boolean NOT NULL,
    reason          text,                          -- why a candidate was discarded
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refine_candidates_rate_idx ON refine_candidates (collection, model, id);
ALTER TABLE refine_candidates OWNER TO refinery_writer;
GRANT SELECT ON refine_candidates TO refinery_reader;

-- A discarded candidate's judgement names the candidate: it judges an answer that was not kept,
-- never the stored refinement, so it is not joined to it, and each candidate is judged once.
ALTER TABLE feedback_events ADD COLUMN candidate_hash bytea;
DROP INDEX feedback_events_pipeline_once;
CREATE UNIQUE INDEX feedback_events_pipeline_once ON feedback_events
    (document_id, source, model, prompt_version, schema_version, input_hash, (coalesce(candidate_hash, '\x'::bytea)))
    WHERE source <> 'user';

CREATE OR REPLACE VIEW feedback_judgements AS
SELECT f.id AS event_id, f.created_at, f.source, f.rating, f.score, f.tags, f.comment, f.author,
       f.target, f.collection, f.path, f.document_id, f.chunk_id, f.query,
       f.model, f.prompt_version, f.schema_version, f.input_hash,
       r.document_id IS NOT NULL AS is_current, r.refined
FROM feedback_events f
LEFT JOIN refined_documents r
    ON f.target = 'document' AND f.source <> 'validator' AND f.candidate_hash IS NULL
   AND r.document_id = f.document_id
   AND r.model = f.model AND r.prompt_version = f.prompt_version
   AND r.schema_version = f.schema_version AND r.input_hash = f.input_hash;

CREATE OR REPLACE FUNCTION feedback_training_examples(max_examples integer DEFAULT 50, min_rating numeric DEFAULT 4)
RETURNS TABLE (document_id uuid, collection text, path text, title text, pricing_sensitive boolean,
               model text, prompt_version text, schema_version text, input_hash bytea,
               rating numeric, votes bigint, user_votes bigint, refined jsonb)
LANGUAGE sql STABLE AS $$
    SELECT r.document_id, d.collection, d.path, d.title, d.pricing_sensitive,
           r.model, r.prompt_version, r.schema_version, r.input_hash,
           round(avg(coalesce(f.score, CASE WHEN f.rating = 1 THEN 5 ELSE 1 END)), 2) AS rating,
           count(*) AS votes, count(*) FILTER (WHERE f.source = 'user') AS user_votes, r.refined
    FROM refined_documents r
    JOIN documents d ON d.id = r.document_id
    JOIN feedback_events f
        ON f.target = 'document' AND f.source <> 'validator' AND f.candidate_hash IS NULL
       AND f.document_id = r.document_id
       AND f.model = r.model AND f.prompt_version = r.prompt_version
       AND f.schema_version = r.schema_version AND f.input_hash = r.input_hash
    GROUP BY r.document_id, d.collection, d.path, d.title, d.pricing_sensitive
    HAVING avg(coalesce(f.score, CASE WHEN f.rating = 1 THEN 5 ELSE 1 END)) >= min_rating
    ORDER BY rating DESC, user_votes DESC, max(f.id) DESC
    LIMIT greatest(max_examples, 0)
$$;

-- How many candidates the kept refinement was chosen from (1: no best-of).
ALTER TABLE refined_documents ADD COLUMN candidates smallint NOT NULL DEFAULT 1;

-- OpenAI Batch API jobs (half the price) of the refine step and of the embeddings step during a
-- model change: each uploaded input file and the batch made from it, with what each of its lines
-- answers, so a restarted step collects the batch it submitted instead of submitting again.
CREATE TABLE llm_batches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    purpose         text NOT NULL CHECK (purpose IN ('refine', 'embed')),
    collection      text NOT NULL,
    model           text NOT NULL,
    -- what its answers are for; another key never reuses them. refine: chain, prompt and schema
    -- versions; embed: the embedding model key
    key             text NOT NULL,
    input_file_id   text NOT NULL,
    batch_id        text UNIQUE,                   -- NULL between upload and create: found again by its file
    status          text NOT NULL DEFAULT 'submitting'
                    CHECK (status IN ('submitting', 'submitted', 'collected', 'abandoned')),
    requests        integer NOT NULL,
    server_status   text,                          -- the server's last word (completed, failed, expired, ...)
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX llm_batches_open_idx ON llm_batches (purpose, collection, key) WHERE status IN ('submitting', 'submitted');
CREATE TABLE llm_batch_requests (
    batch           bigint NOT NULL REFERENCES llm_batches (id) ON DELETE CASCADE,
    custom_id       text NOT NULL,
    document_id     uuid,                          -- refine: the document and the input hash asked about
    input_hash      bytea,
    content_hashes  bytea[],                       -- embed: the chunk texts of the line, in input order
    PRIMARY KEY (batch, custom_id)
);
ALTER TABLE llm_batches OWNER TO refinery_writer;
ALTER TABLE llm_batch_requests OWNER TO refinery_writer;
GRANT SELECT ON llm_batches, llm_batch_requests TO refinery_reader;

-- A call answered through a batch names it (and was billed at the batch price).
ALTER TABLE llm_calls ADD COLUMN batch_id text;
