-- Tables added beside tenants (0013 text search configurations, 0015 best-of candidates and
-- batches) under the rule of 0014: every table that holds a collection's rows has row security,
-- the operator's reader sees every row, a tenant only its collections' rows.
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['collection_text_search', 'refine_candidates', 'llm_batches'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY operator_reads_all ON %I FOR SELECT TO refinery_reader USING (true)', tbl);
        EXECUTE format('CREATE POLICY own_collections ON %I FOR SELECT TO refinery_tenant '
                       'USING (collection = ANY (ARRAY(SELECT collection FROM collection_tenants)))', tbl);
    END LOOP;
END
$$;
-- A batch's requests have no collection: nobody but the operator reads them, whatever is granted.
ALTER TABLE llm_batch_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY operator_reads_all ON llm_batch_requests FOR SELECT TO refinery_reader USING (true);

-- A tenant's search reads the configurations of its own collections' chunks.
GRANT SELECT ON collection_text_search TO refinery_tenant;
