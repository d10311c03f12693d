-- LLM calls in flight: a row per chat request, committed just before the request is sent and
-- deleted in the transaction that logs the call in llm_calls (db/refinements.py). A refine killed
-- mid-run (SIGKILL, out of memory, a reboot, or a stop that could not store its answers) leaves
-- the rows of the requests it sent but never logged, which the provider may have billed; the next
-- refine of the collection, under the step lock (no live run of it can own rows then), moves them
-- into llm_calls with outcome 'lost'. The Batch API is not journaled here: llm_batches already
-- records every batch before it is created, and a restart collects it.
CREATE TABLE llm_calls_sent (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           text,
    asset            text NOT NULL,
    collection       text NOT NULL,
    document_id      uuid,                        -- no foreign key, like llm_calls
    model            text NOT NULL,
    link             text NOT NULL,
    attempt          text NOT NULL CHECK (attempt IN ('answer', 'repair')),
    prompt_tokens    integer NOT NULL DEFAULT 0,  -- the prompt as counted when it was built (an estimate)
    prompt_cost_usd  numeric(14, 8) NOT NULL DEFAULT 0,  -- those tokens at the price table's input price
    sent_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_sent_collection_idx ON llm_calls_sent (collection, document_id);
ALTER TABLE llm_calls_sent OWNER TO refinery_writer;
GRANT SELECT ON llm_calls_sent TO refinery_reader;

-- Row security like every table that holds a collection's rows (0014, 0018).
ALTER TABLE llm_calls_sent ENABLE ROW LEVEL SECURITY;
CREATE POLICY operator_reads_all ON llm_calls_sent FOR SELECT TO refinery_reader USING (true);
CREATE POLICY own_collections ON llm_calls_sent FOR SELECT TO refinery_tenant
    USING (collection = ANY (ARRAY(SELECT collection FROM collection_tenants)));

-- 'lost': a request was sent and its answer never recorded (completion tokens 0, the prompt's
-- estimated cost). get_refiner_stats (0008) groups it as an outcome of its own.
ALTER TABLE llm_calls DROP CONSTRAINT llm_calls_outcome_check;
ALTER TABLE llm_calls ADD CONSTRAINT llm_calls_outcome_check CHECK (outcome IN ('ok', 'invalid', 'error', 'lost'));
