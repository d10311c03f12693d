-- The embedding model search serves, recorded in the database rather than implied by the
-- settings: a model change builds the new vectors beside the active ones, and the switch is one
-- committed UPDATE of this single row (core/model_change.py).
CREATE TABLE active_embedding_model (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    model_id      smallint NOT NULL REFERENCES embedding_models (id),
    activated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every activation (the first model's included) with what it was decided on: coverage, the
-- golden-set metrics of both models, and whether the metrics gate was forced.
CREATE TABLE embedding_model_switches (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_model_id  smallint REFERENCES embedding_models (id),
    to_model_id    smallint NOT NULL REFERENCES embedding_models (id),
    forced         boolean NOT NULL DEFAULT false,
    gates          jsonb NOT NULL DEFAULT '{}',
    switched_at    timestamptz NOT NULL DEFAULT now()
);

-- A model's row outlives its vectors (the metric history names models by it); a drop is dated.
ALTER TABLE embedding_models ADD COLUMN dropped_at timestamptz;

-- An existing install: the model with the most vectors of live chunks is the one that has been
-- serving (a model added later and still being built has fewer), so nothing changes for search.
INSERT INTO active_embedding_model (model_id)
SELECT e.model_id FROM embeddings e
WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.content_hash = e.content_hash)
GROUP BY e.model_id ORDER BY count(*) DESC, e.model_id DESC LIMIT 1;
INSERT INTO embedding_model_switches (to_model_id, gates)
SELECT model_id, '{"reason": "serving when the active model was first recorded"}' FROM active_embedding_model;

ALTER TABLE active_embedding_model OWNER TO refinery_writer;
ALTER TABLE embedding_model_switches OWNER TO refinery_writer;
GRANT SELECT ON active_embedding_model, embedding_model_switches TO refinery_reader;
