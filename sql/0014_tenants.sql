-- Tenants: every collection belongs to one (the manifest's `tenant:`, `public` when unset), and
-- each tenant has a read role, refinery_tenant_<name>, that sees only its own collections' rows
-- through row-level security, whatever SQL it runs. The role is the boundary, not a setting: a
-- policy on current_setting('refinery.tenant') would let any session that can run SQL choose its
-- tenant with one SET, whereas a role cannot make itself a member of another tenant's role.
--
-- Who is affected: refinery_writer owns the tables, and an owner is not subject to row security
-- (no FORCE), so the pipeline writes as before; refinery_reader (the operator's search and
-- status) gets a policy that lets it read every row; refinery_feedback may still insert feedback.
-- Tenant roles are members of the group role refinery_tenant, which holds their grants and
-- their policy; a tenant role must never be a member of refinery_reader (it would see all rows).

DO $$
BEGIN
    BEGIN
        CREATE ROLE refinery_tenant NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;
GRANT USAGE ON SCHEMA public TO refinery_tenant;

-- The tenants that have a role (made by `refinery tenant add` / `refinery token create`).
CREATE TABLE tenants (
    name        text PRIMARY KEY CONSTRAINT tenant_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    role        name NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Which tenant each collection belongs to, as of the collection's last documents step. No key to
-- `tenants`: a manifest may name a tenant before it has a role (its rows are then read by nobody
-- but the operator).
CREATE TABLE collection_tenants (
    collection  text PRIMARY KEY,
    tenant      text NOT NULL CONSTRAINT collection_tenant_format CHECK (tenant ~ '^[a-z][a-z0-9_]{0,39}$'),
    assigned_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO collection_tenants (collection, tenant) SELECT DISTINCT collection, 'public' FROM documents;

-- Application tokens of `refinery serve`: only a SHA-256 of each token is stored (tokens are 256
-- random bits, so a fast hash is enough; a slow password hash would cost every request).
CREATE TABLE api_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    label       text CHECK (length(label) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- The tenant role of a live token, for the serve process (which runs as refinery_reader and may
-- not read api_tokens itself): the only way to a token's row is to hold the token.
CREATE FUNCTION api_token_role(hash bytea) RETURNS TABLE (tenant text, role name)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.name, t.role FROM api_tokens k JOIN tenants t ON t.name = k.tenant
    WHERE k.token_hash = hash AND k.revoked_at IS NULL
$$;

ALTER TABLE tenants OWNER TO refinery_writer;
ALTER TABLE collection_tenants OWNER TO refinery_writer;
ALTER TABLE api_tokens OWNER TO refinery_writer;
ALTER FUNCTION api_token_role(bytea) OWNER TO refinery_writer;
REVOKE ALL ON FUNCTION api_token_role(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_token_role(bytea) TO refinery_reader;
GRANT SELECT ON tenants, collection_tenants TO refinery_reader;

-- A tenant role sees its own tenant's row and its collections: the collections policy below reads
-- collection_tenants through this, so each policy stays one uncorrelated sub-select (computed once
-- per statement). pg_has_role on the role's oid: a login role granted the tenant role counts too.
GRANT SELECT ON tenants, collection_tenants TO refinery_tenant;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE collection_tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY operator_reads_all ON tenants FOR SELECT TO refinery_reader USING (true);
CREATE POLICY operator_reads_all ON collection_tenants FOR SELECT TO refinery_reader USING (true);
CREATE POLICY own_tenant ON tenants FOR SELECT TO refinery_tenant
    USING (role IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(r.oid, 'USAGE')));
CREATE POLICY own_tenant ON collection_tenants FOR SELECT TO refinery_tenant
    USING (tenant IN (SELECT t.name FROM tenants t));

-- What a tenant's search reads, each with row security: the operator's reader sees every row, a
-- tenant the rows of its collections. Vectors and BM25 postings carry no collection: they are
-- visible when a visible chunk holds their text (vectors are shared by equal texts).
GRANT SELECT ON documents, chunks, embeddings, embedding_models, active_embedding_model, refined_documents,
    feedback_events, chunk_terms, chunk_term_df TO refinery_tenant;

DO $$
DECLARE
    tbl text;
BEGIN
    -- Every table that holds a collection's rows, granted to tenants or not: granting one later
    -- must not open it to every tenant.
    FOREACH tbl IN ARRAY ARRAY['documents', 'chunks', 'refined_documents', 'feedback_events', 'chunk_term_df',
                               'ingestion_runs', 'ingest_errors', 'llm_calls', 'refine_quarantine',
                               'refinement_history', 'inventory_changes', 'chunk_terms_pending'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY operator_reads_all ON %I FOR SELECT TO refinery_reader USING (true)', tbl);
        EXECUTE format('CREATE POLICY own_collections ON %I FOR SELECT TO refinery_tenant '
                       'USING (collection = ANY (ARRAY(SELECT collection FROM collection_tenants)))', tbl);
    END LOOP;
END
$$;

-- Vectors: checked row by row (OFFSET 0 keeps the planner from turning the EXISTS into a hash of
-- every visible chunk), because a vector search visits a few dozen rows of the HNSW index.
ALTER TABLE embeddings ENABLE ROW LEVEL SECURITY;
CREATE POLICY operator_reads_all ON embeddings FOR SELECT TO refinery_reader USING (true);
CREATE POLICY own_collections ON embeddings FOR SELECT TO refinery_tenant
    USING (EXISTS (SELECT 1 FROM chunks c WHERE c.content_hash = embeddings.content_hash OFFSET 0));

-- Postings: a text search reads thousands, so the planner hashes the visible chunk ids once per
-- statement instead, read from the index below alone.
ALTER TABLE chunk_terms ENABLE ROW LEVEL SECURITY;
CREATE POLICY operator_reads_all ON chunk_terms FOR SELECT TO refinery_reader USING (true);
CREATE POLICY own_collections ON chunk_terms FOR SELECT TO refinery_tenant
    USING (EXISTS (SELECT 1 FROM chunks c WHERE c.id = chunk_terms.chunk_id));

-- A tenant's visible chunks (ids and text hashes) from an index-only scan: five times faster than
-- reading the chunks' heap for the policies above. It replaces the plain index on the same
-- column, so writers keep one index on it.
CREATE INDEX chunks_collection_ids_idx ON chunks (collection) INCLUDE (id, content_hash);
DROP INDEX chunks_collection_idx;

-- Applications insert feedback (and read back its id) as refinery_feedback: unchanged.
CREATE POLICY applications_give_feedback ON feedback_events FOR INSERT TO refinery_feedback WITH CHECK (true);
CREATE POLICY applications_read_back_ids ON feedback_events FOR SELECT TO refinery_feedback USING (true);
