-- A refinement stored because the model could not be reached (connection refused, timeout,
-- 401/403/404, 429 or 5xx after retries), not by design (lightweight route, answers invalid at
-- every link): the extractive stand-in is kept for readers, and the next refine sends the
-- document to the model again (core/refine/pipeline.py pending_jobs).
ALTER TABLE refined_documents ADD COLUMN awaiting_model boolean NOT NULL DEFAULT false;
