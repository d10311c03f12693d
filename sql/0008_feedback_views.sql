-- What the feedback says, for people and for the refiner (the `feedback_views` asset): positive
-- and negative examples, a summary per model and prompt version, training examples, and the
-- refiner's totals. Plain views over the log: always current, nothing to refresh.

-- Every judgement of a refined document with the refinement it judged, while that refinement is
-- still the current one (`refined` is NULL once it has been redone). A validator event judges an
-- answer that was rejected, never the stored JSON, so it is not joined to it.
CREATE VIEW feedback_judgements AS
SELECT f.id AS event_id, f.created_at, f.source, f.rating, f.score, f.tags, f.comment, f.author,
       f.target, f.collection, f.path, f.document_id, f.chunk_id, f.query,
       f.model, f.prompt_version, f.schema_version, f.input_hash,
       r.document_id IS NOT NULL AS is_current, r.refined
FROM feedback_events f
LEFT JOIN refined_documents r
    ON f.target = 'document' AND f.source <> 'validator' AND r.document_id = f.document_id
   AND r.model = f.model AND r.prompt_version = f.prompt_version
   AND r.schema_version = f.schema_version AND r.input_hash = f.input_hash;

CREATE VIEW feedback_positive_examples AS
SELECT * FROM feedback_judgements WHERE rating = 1;

CREATE VIEW feedback_negative_examples AS
SELECT * FROM feedback_judgements WHERE rating = -1;

-- Per model and prompt version: how often its refinements were approved, by whom, and what the
-- complaints were about. Compare two prompt versions to see whether a change helped.
CREATE VIEW feedback_summary AS
WITH judged AS (
    SELECT * FROM feedback_events WHERE target = 'document'
), tag_counts AS (
    SELECT model, prompt_version, tag, count(*) AS n,
           row_number() OVER (PARTITION BY model, prompt_version ORDER BY count(*) DESC, tag) AS rank
    FROM judged, unnest(tags) AS tag
    GROUP BY model, prompt_version, tag
), frequent AS (
    SELECT model, prompt_version, jsonb_agg(jsonb_build_object('tag', tag, 'count', n) ORDER BY rank) AS tags
    FROM tag_counts WHERE rank <= 5 GROUP BY model, prompt_version
)
SELECT j.model, j.prompt_version,
       count(*) AS events,
       count(DISTINCT j.document_id) AS documents,
       count(*) FILTER (WHERE j.rating = 1) AS positive,
       count(*) FILTER (WHERE j.rating = -1) AS negative,
       round(count(*) FILTER (WHERE j.rating = 1)::numeric / count(*), 3) AS approval_rate,
       count(*) FILTER (WHERE j.source = 'user') AS user_events,
       round(count(*) FILTER (WHERE j.source = 'user' AND j.rating = 1)::numeric
             / nullif(count(*) FILTER (WHERE j.source = 'user'), 0), 3) AS user_approval_rate,
       count(*) FILTER (WHERE j.source = 'validator') AS validator_rejections,
       count(*) FILTER (WHERE j.source = 'auto') AS auto_approvals,
       round(avg(j.score), 2) AS mean_score,
       coalesce(fr.tags, '[]'::jsonb) AS frequent_tags,
       min(j.created_at) AS first_event,
       max(j.created_at) AS last_event
FROM judged j
LEFT JOIN frequent fr ON fr.model = j.model AND fr.prompt_version = j.prompt_version
GROUP BY j.model, j.prompt_version, fr.tags;

-- Current refinements that people (or the auto judge) rated at least `min_rating` on a 1-5 scale:
-- the mean of the events' scores, an event without a score counting 5 (+1) or 1 (-1). Validator
-- events judge rejected answers, not these, and do not count. Best first.
CREATE FUNCTION feedback_training_examples(max_examples integer DEFAULT 50, min_rating numeric DEFAULT 4)
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
        ON f.target = 'document' AND f.source <> 'validator' AND f.document_id = r.document_id
       AND f.model = r.model AND f.prompt_version = r.prompt_version
       AND f.schema_version = r.schema_version AND f.input_hash = r.input_hash
    GROUP BY r.document_id, d.collection, d.path, d.title, d.pricing_sensitive
    HAVING avg(coalesce(f.score, CASE WHEN f.rating = 1 THEN 5 ELSE 1 END)) >= min_rating
    ORDER BY rating DESC, user_votes DESC, max(f.id) DESC
    LIMIT greatest(max_examples, 0)
$$;

-- The refiner's totals per model, link and outcome: every call from `llm_calls` (outcome ok,
-- invalid or error, with tokens, dollars and latency), and the current refinements from
-- `refined_documents` (outcome refined, lightweight or quarantined). `since` limits both by time.
CREATE FUNCTION get_refiner_stats(since timestamptz DEFAULT '-infinity')
RETURNS TABLE (source text, model text, link text, outcome text, calls bigint, documents bigint,
               prompt_tokens bigint, completion_tokens bigint, cost_usd numeric, mean_latency_ms numeric)
LANGUAGE sql STABLE AS $$
    SELECT 'llm_calls', c.model, c.link, c.outcome, count(*), count(DISTINCT c.document_id),
           sum(c.prompt_tokens), sum(c.completion_tokens), sum(c.cost_usd), round(avg(c.latency_ms)::numeric, 1)
    FROM llm_calls c WHERE c.called_at >= since
    GROUP BY c.model, c.link, c.outcome
    UNION ALL
    SELECT 'refined_documents', r.model, r.link,
           CASE WHEN r.quarantined THEN 'quarantined' WHEN r.route = 'lightweight' THEN 'lightweight'
                ELSE 'refined' END,
           NULL, count(*), NULL, NULL, NULL, NULL
    FROM refined_documents r WHERE r.refined_at >= since
    GROUP BY 2, 3, 4
    ORDER BY 1, 2, 3, 4
$$;

ALTER VIEW feedback_judgements OWNER TO refinery_writer;
ALTER VIEW feedback_positive_examples OWNER TO refinery_writer;
ALTER VIEW feedback_negative_examples OWNER TO refinery_writer;
ALTER VIEW feedback_summary OWNER TO refinery_writer;
ALTER FUNCTION feedback_training_examples(integer, numeric) OWNER TO refinery_writer;
ALTER FUNCTION get_refiner_stats(timestamptz) OWNER TO refinery_writer;
GRANT SELECT ON feedback_judgements, feedback_positive_examples, feedback_negative_examples, feedback_summary
    TO refinery_reader;
