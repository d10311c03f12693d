-- Core ingestion tables: one row per source file, its chunks, and vectors keyed by chunk
-- content and embedding model, so unchanged text is never embedded twice.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE documents (
    id                uuid PRIMARY KEY,            -- derived from (collection, path)
    collection        text NOT NULL,
    path              text NOT NULL,               -- relative to the collection root
    content_hash      bytea NOT NULL,              -- sha256 of the file's bytes
    size_bytes        bigint NOT NULL,
    format            text NOT NULL,
    title             text NOT NULL,
    category          text,
    doc_type          text,
    status            text,
    embed_mode        text NOT NULL CHECK (embed_mode IN ('full', 'metadata_only', 'skip')),
    pricing_sensitive boolean NOT NULL DEFAULT false,
    metadata          jsonb NOT NULL DEFAULT '{}',
    headings          jsonb NOT NULL DEFAULT '[]', -- heading tree: [{level, title}]
    blocks            jsonb NOT NULL,              -- parsed text blocks the chunker reads
    chunked_hash      bytea,                       -- content_hash the current chunks came from
    chunker_version   text,                        -- chunker settings they were made with
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection, path)
);

CREATE TABLE chunks (
    id            uuid PRIMARY KEY,                -- derived from (document, text, occurrence)
    document_id   uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection    text NOT NULL,
    ordinal       integer NOT NULL,
    heading_path  text[] NOT NULL,
    text          text NOT NULL,
    token_count   integer NOT NULL,
    content_hash  bytea NOT NULL,                  -- sha256 of the text sent to the embedder
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_content_hash_idx ON chunks (content_hash);
CREATE INDEX chunks_collection_idx ON chunks (collection);

-- One row per embedding model ("generation"); vectors of different models never mix.
CREATE TABLE embedding_models (
    id          smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text NOT NULL UNIQUE,              -- provider:name:dims
    provider    text NOT NULL,
    name        text NOT NULL,
    dims        integer NOT NULL CHECK (dims > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The column has no fixed dimension so several models can live side by side; each model
-- gets a partial HNSW expression index with its own dimension (see store.ensure_index).
CREATE TABLE embeddings (
    model_id      smallint NOT NULL REFERENCES embedding_models (id),
    content_hash  bytea NOT NULL,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, content_hash)
);
CREATE INDEX embeddings_content_hash_idx ON embeddings (content_hash);

-- What each asset step did, one row per step and collection.
CREATE TABLE ingestion_runs (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id               text,
    collection           text NOT NULL,
    step                 text NOT NULL,
    documents_processed  integer NOT NULL DEFAULT 0,
    chunks_processed     integer NOT NULL DEFAULT 0,
    texts_embedded       integer NOT NULL DEFAULT 0,
    tokens_embedded      bigint NOT NULL DEFAULT 0,
    seconds              double precision NOT NULL,
    counts               jsonb NOT NULL DEFAULT '{}',
    warnings             jsonb NOT NULL DEFAULT '[]',
    finished_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingestion_runs_collection_idx ON ingestion_runs (collection, finished_at);

-- Files that could not be ingested (error) or were ingested with a caveat (warning), as of
-- the collection's latest documents run.
CREATE TABLE ingest_errors (
    collection  text NOT NULL,
    path        text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('error', 'warning')),
    reason      text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, path, reason)
);
