-- Refined JSON per document, every LLM call with its tokens and dollars, and answers that
-- failed validation at every model link (kept, never lost).
ALTER TABLE documents ADD COLUMN analysis jsonb;  -- the analyzer's scores, from the last refine

CREATE TABLE refined_documents (
    document_id      uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    collection       text NOT NULL,
    -- the refinement key: a row is current while all four match what a run would use
    input_hash       bytea NOT NULL,
    chain            text NOT NULL,                -- the primary model asked for, or 'extractive'
    prompt_version   text NOT NULL,
    schema_version   text NOT NULL,
    model            text NOT NULL,                -- the model that produced `refined`
    link             text NOT NULL CHECK (link IN ('primary', 'fallback', 'extractive')),
    route            text NOT NULL CHECK (route IN ('model', 'lightweight')),
    route_reason     text,
    refined          jsonb NOT NULL,
    quality_score    real NOT NULL,
    cited_chunk_ids  uuid[] NOT NULL DEFAULT '{}', -- the chunks the prompt held
    prompt_tokens    integer NOT NULL DEFAULT 0,
    budget_tokens    integer NOT NULL DEFAULT 0,
    refined_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refined_documents_collection_idx ON refined_documents (collection);

CREATE TABLE llm_calls (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             text,
    asset              text NOT NULL,
    collection         text,
    document_id        uuid,                       -- no foreign key: the log outlives documents
    model              text NOT NULL,
    link               text NOT NULL,
    attempt            text NOT NULL CHECK (attempt IN ('answer', 'repair')),
    prompt_tokens      integer NOT NULL,
    completion_tokens  integer NOT NULL,
    latency_ms         real NOT NULL,
    cost_usd           numeric(14, 8) NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('ok', 'invalid', 'error')),
    error              text,
    called_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_collection_idx ON llm_calls (collection, called_at);

CREATE TABLE refine_quarantine (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          text,
    collection      text NOT NULL,
    document_id     uuid REFERENCES documents (id) ON DELETE CASCADE,
    input_hash      bytea NOT NULL,
    model           text NOT NULL,
    link            text NOT NULL,
    raw_text        text NOT NULL,
    errors          jsonb NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refine_quarantine_collection_idx ON refine_quarantine (collection);

ALTER TABLE refined_documents OWNER TO refinery_writer;
ALTER TABLE llm_calls OWNER TO refinery_writer;
ALTER TABLE refine_quarantine OWNER TO refinery_writer;
GRANT SELECT ON refined_documents, llm_calls, refine_quarantine TO refinery_reader;
