-- Feedback on refined documents and search hits: an append-only log written by people (the CLI,
-- and applications through the `refinery_feedback` role) and by the pipeline itself (validator:
-- an answer that failed validation; auto: a refinement that scored above a threshold). Each
-- event names the exact version it judges, so the refiner knows which refinement a complaint is
-- about and the summary can compare models and prompt versions.

-- Tags: lower-case letters and digits, joined by '-' or '_', at most 40 characters; at most 10.
CREATE FUNCTION feedback_tags_valid(tags text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN cardinality(tags) <= 10 AND NOT EXISTS (
        SELECT 1 FROM unnest(tags) t WHERE t IS NULL OR t !~ '^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$');

CREATE TABLE feedback_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target          text NOT NULL DEFAULT 'document' CHECK (target IN ('document', 'chunk')),
    -- No foreign key: the log outlives documents and chunks (a re-chunked document gets new
    -- chunk ids). The insert trigger refuses an unknown target and fills in the rest.
    document_id     uuid NOT NULL,
    collection      text NOT NULL,
    path            text NOT NULL,
    chunk_id        uuid,                          -- target 'chunk': the search hit judged
    query           text CHECK (length(query) <= 2000),  -- the search that returned it
    -- The version judged. A refinement: its model, prompt and schema versions and input hash
    -- (the current refinement's unless given). A chunk: the hash of its text (and the
    -- embedding model, if the application says which).
    model           text,
    prompt_version  text,
    schema_version  text,
    input_hash      bytea,
    rating          smallint NOT NULL CONSTRAINT feedback_rating_is_plus_or_minus_one CHECK (rating IN (-1, 1)),
    score           smallint CONSTRAINT feedback_score_from_1_to_5 CHECK (score BETWEEN 1 AND 5),
    tags            text[] NOT NULL DEFAULT '{}' CONSTRAINT feedback_tags_well_formed CHECK (feedback_tags_valid(tags)),
    comment         text CONSTRAINT feedback_comment_length CHECK (length(comment) <= 4000),
    source          text NOT NULL DEFAULT 'user' CHECK (source IN ('user', 'validator', 'auto')),
    author          text CHECK (length(author) <= 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feedback_score_agrees_with_rating CHECK (score IS NULL OR (rating = 1 AND score >= 3)
                                                        OR (rating = -1 AND score <= 3)),
    CONSTRAINT feedback_chunk_target CHECK ((target = 'chunk') = (chunk_id IS NOT NULL)),
    CONSTRAINT feedback_document_version CHECK (target = 'chunk' OR num_nulls(model, prompt_version,
                                                                              schema_version, input_hash) = 0),
    CONSTRAINT feedback_pipeline_judges_documents CHECK (source = 'user' OR target = 'document')
);
CREATE INDEX feedback_events_document_idx ON feedback_events (document_id, id);
CREATE INDEX feedback_events_created_idx ON feedback_events (created_at);
CREATE INDEX feedback_events_collection_idx ON feedback_events (collection, id);
-- The pipeline judges each version once, however many times it reruns (ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX feedback_events_pipeline_once ON feedback_events
    (document_id, source, model, prompt_version, schema_version, input_hash) WHERE source <> 'user';

-- Resolves the target (document_id, or collection + path, or chunk_id) and the judged version,
-- and refuses what names nothing. SECURITY DEFINER: the feedback role itself may read nothing.
CREATE FUNCTION feedback_events_resolve() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    doc record;
    ref record;
    chunk_document uuid;
    chunk_hash bytea;
BEGIN
    IF NEW.chunk_id IS NOT NULL THEN
        NEW.target := 'chunk';
        SELECT c.document_id, c.content_hash INTO chunk_document, chunk_hash FROM chunks c WHERE c.id = NEW.chunk_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'feedback on an unknown chunk %', NEW.chunk_id USING ERRCODE = 'foreign_key_violation',
                HINT = 'chunk ids come from search hits; a re-chunked document has new ones';
        END IF;
        IF NEW.document_id IS NOT NULL AND NEW.document_id <> chunk_document THEN
            RAISE EXCEPTION 'chunk % is not part of document %', NEW.chunk_id, NEW.document_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        NEW.document_id := chunk_document;
        NEW.input_hash := coalesce(NEW.input_hash, chunk_hash);
    END IF;

    IF NEW.document_id IS NOT NULL THEN
        SELECT d.id, d.collection, d.path INTO doc FROM documents d WHERE d.id = NEW.document_id;
    ELSIF NEW.collection IS NOT NULL AND NEW.path IS NOT NULL THEN
        SELECT d.id, d.collection, d.path INTO doc FROM documents d
        WHERE d.collection = NEW.collection AND d.path = NEW.path;
    ELSE
        RAISE EXCEPTION 'feedback needs a target: document_id, collection and path, or chunk_id'
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'feedback on an unknown document %',
            coalesce(NEW.document_id::text, NEW.collection || '/' || NEW.path)
            USING ERRCODE = 'foreign_key_violation', HINT = 'name a document that is in the index (refinery status)';
    END IF;
    IF NEW.collection IS DISTINCT FROM doc.collection AND NEW.collection IS NOT NULL
            OR NEW.path IS DISTINCT FROM doc.path AND NEW.path IS NOT NULL THEN
        RAISE EXCEPTION 'document % is %/%, not %/%', doc.id, doc.collection, doc.path, NEW.collection, NEW.path
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    NEW.document_id := doc.id;
    NEW.collection := doc.collection;
    NEW.path := doc.path;

    IF NEW.target = 'document' THEN
        IF num_nonnulls(NEW.model, NEW.prompt_version, NEW.schema_version, NEW.input_hash) = 0 THEN
            SELECT r.model, r.prompt_version, r.schema_version, r.input_hash INTO ref
            FROM refined_documents r WHERE r.document_id = doc.id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'document %/% has no refinement to judge yet', doc.collection, doc.path
                    USING ERRCODE = 'foreign_key_violation', HINT = 'run refinery refine first';
            END IF;
            NEW.model := ref.model;
            NEW.prompt_version := ref.prompt_version;
            NEW.schema_version := ref.schema_version;
            NEW.input_hash := ref.input_hash;
        ELSIF num_nulls(NEW.model, NEW.prompt_version, NEW.schema_version, NEW.input_hash) > 0 THEN
            RAISE EXCEPTION 'name the whole judged version (model, prompt_version, schema_version, input_hash) or none of it'
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER feedback_events_resolve BEFORE INSERT ON feedback_events
    FOR EACH ROW EXECUTE FUNCTION feedback_events_resolve();

-- Append-only, for every role including the owner: a judgement is corrected by a new event.
CREATE FUNCTION feedback_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'feedback_events is append-only: record a new event instead of changing one (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER feedback_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON feedback_events
    FOR EACH STATEMENT EXECUTE FUNCTION feedback_events_append_only();

-- A refinement remembers the user feedback it was redone for, and how good it scored; and whether
-- every model answer failed validation (the stored JSON is then the extractive one).
ALTER TABLE refined_documents ADD COLUMN refinement_score real;
ALTER TABLE refined_documents ADD COLUMN feedback_considered bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE refined_documents ADD COLUMN quarantined boolean NOT NULL DEFAULT false;

-- The role applications write feedback as: INSERT on the columns a person may set (not the id,
-- the source or the time), and the id back (INSERT ... RETURNING id). Nothing else.
DO $$
BEGIN
    BEGIN
        CREATE ROLE refinery_feedback NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;
GRANT refinery_feedback TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO refinery_feedback;

ALTER TABLE feedback_events OWNER TO refinery_writer;
ALTER FUNCTION feedback_events_resolve() OWNER TO refinery_writer;
REVOKE ALL ON feedback_events FROM PUBLIC;
GRANT INSERT (target, document_id, collection, path, chunk_id, query, model, prompt_version, schema_version,
              input_hash, rating, score, tags, comment, author) ON feedback_events TO refinery_feedback;
GRANT SELECT (id) ON feedback_events TO refinery_feedback;
GRANT SELECT ON feedback_events TO refinery_reader;
