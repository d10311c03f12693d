-- Two roles: refinery_writer owns and writes the tables (assets), refinery_reader may only
-- read them (search). Roles are cluster-wide, so creating them tolerates a concurrent creator.
DO $$
BEGIN
    BEGIN
        CREATE ROLE refinery_writer NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE refinery_reader NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;

-- The migrating user may act as either role (SET ROLE).
GRANT refinery_writer TO CURRENT_USER;
GRANT refinery_reader TO CURRENT_USER;

GRANT USAGE, CREATE ON SCHEMA public TO refinery_writer;
GRANT USAGE ON SCHEMA public TO refinery_reader;

-- The writer owns the tables so it can also build the per-model HNSW indexes.
ALTER TABLE documents OWNER TO refinery_writer;
ALTER TABLE chunks OWNER TO refinery_writer;
ALTER TABLE embedding_models OWNER TO refinery_writer;
ALTER TABLE embeddings OWNER TO refinery_writer;
ALTER TABLE ingestion_runs OWNER TO refinery_writer;
ALTER TABLE ingest_errors OWNER TO refinery_writer;

GRANT SELECT ON documents, chunks, embedding_models, embeddings, ingestion_runs, ingest_errors
    TO refinery_reader;
