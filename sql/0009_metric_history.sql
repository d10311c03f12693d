-- History for the daily metric snapshots: every table a metric counts either has a timestamped
-- event log or gets one here, so a day's numbers can be computed again later, the same.

-- Row-count changes of documents, chunks and vectors, one row per statement and collection (or
-- embedding model), kept by statement triggers like the BM25 postings: whatever writes the
-- tables, the count as of any moment is the sum of the changes before it. Times are transaction
-- start times, like every other timestamp here.
CREATE TABLE inventory_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    item        text NOT NULL CHECK (item IN ('documents', 'chunks', 'vectors')),
    collection  text,                             -- documents and chunks
    model_id    smallint,                         -- vectors
    delta       bigint NOT NULL
);
CREATE INDEX inventory_changes_item_at_idx ON inventory_changes (item, at);

CREATE FUNCTION inventory_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV: the item counted, and +1 (insert) or -1 (delete)
    INSERT INTO inventory_changes (item, collection, delta)
    SELECT TG_ARGV[0], collection, TG_ARGV[1]::int * count(*) FROM changed_rows GROUP BY collection;
    RETURN NULL;
END
$$;

CREATE FUNCTION inventory_count_vectors() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inventory_changes (item, model_id, delta)
    SELECT 'vectors', model_id, TG_ARGV[0]::int * count(*) FROM changed_rows GROUP BY model_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_counted_in AFTER INSERT ON documents REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_rows('documents', '1');
CREATE TRIGGER documents_counted_out AFTER DELETE ON documents REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_rows('documents', '-1');
CREATE TRIGGER chunks_counted_in AFTER INSERT ON chunks REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_rows('chunks', '1');
CREATE TRIGGER chunks_counted_out AFTER DELETE ON chunks REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_rows('chunks', '-1');
CREATE TRIGGER embeddings_counted_in AFTER INSERT ON embeddings REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_vectors('1');
CREATE TRIGGER embeddings_counted_out AFTER DELETE ON embeddings REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_count_vectors('-1');

-- What is stored already: documents at their ingestion time, vectors at their creation time,
-- chunks (which carry no time) now, when the history starts.
INSERT INTO inventory_changes (at, item, collection, delta)
SELECT ingested_at, 'documents', collection, count(*) FROM documents GROUP BY ingested_at, collection;
INSERT INTO inventory_changes (item, collection, delta)
SELECT 'chunks', collection, count(*) FROM chunks GROUP BY collection;
INSERT INTO inventory_changes (at, item, model_id, delta)
SELECT created_at, 'vectors', model_id, count(*) FROM embeddings GROUP BY created_at, model_id;

-- Every refinement ever stored (refined_documents keeps only the current one per document), by
-- a row trigger, so outcomes per day (link, quarantine, bypass) survive later refinements.
CREATE TABLE refinement_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id       uuid NOT NULL,
    collection        text NOT NULL,
    input_hash        bytea NOT NULL,
    chain             text NOT NULL,
    prompt_version    text NOT NULL,
    schema_version    text NOT NULL,
    model             text NOT NULL,
    link              text NOT NULL,
    route             text NOT NULL,
    quarantined       boolean NOT NULL,
    refinement_score  real,
    feedback_redo     boolean NOT NULL,             -- redone because of new negative user feedback
    refined_at        timestamptz NOT NULL
);
CREATE INDEX refinement_history_refined_at_idx ON refinement_history (refined_at);

CREATE FUNCTION refinement_history_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO refinement_history (document_id, collection, input_hash, chain, prompt_version, schema_version,
                                    model, link, route, quarantined, refinement_score, feedback_redo, refined_at)
    VALUES (NEW.document_id, NEW.collection, NEW.input_hash, NEW.chain, NEW.prompt_version, NEW.schema_version,
            NEW.model, NEW.link, NEW.route, NEW.quarantined, NEW.refinement_score,
            TG_OP = 'UPDATE' AND NEW.feedback_considered IS DISTINCT FROM OLD.feedback_considered, NEW.refined_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER refined_documents_history AFTER INSERT OR UPDATE ON refined_documents
    FOR EACH ROW EXECUTE FUNCTION refinement_history_append();

INSERT INTO refinement_history (document_id, collection, input_hash, chain, prompt_version, schema_version, model,
                                link, route, quarantined, refinement_score, feedback_redo, refined_at)
SELECT document_id, collection, input_hash, chain, prompt_version, schema_version, model, link, route, quarantined,
       refinement_score, false, refined_at FROM refined_documents;

-- The snapshots: one value per (day, metric, dimensions). `kind` history: computed from the logs
-- as of the day's end (a backfill recomputes the same number); live: measured when the snapshot
-- was taken (retrieval quality, search latency), kept as measured.
CREATE TABLE metric_snapshots (
    day          date NOT NULL,
    metric       text NOT NULL,
    dimensions   jsonb NOT NULL DEFAULT '{}',
    value        double precision NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('history', 'live')),
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, metric, dimensions)
);

ALTER TABLE inventory_changes OWNER TO refinery_writer;
ALTER TABLE refinement_history OWNER TO refinery_writer;
ALTER TABLE metric_snapshots OWNER TO refinery_writer;
GRANT SELECT ON inventory_changes, refinement_history, metric_snapshots TO refinery_reader;
