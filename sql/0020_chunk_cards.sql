-- A document card (pipeline.document_card: the description, summary... of its metadata) is a
-- chunk of its own; hybrid search ranks documents by their card alone in a third leg
-- (core/search/hybrid.py), which reads the cards through this partial index. Rows written
-- before this migration say false until their collection is chunked again (CHUNKER_VERSION v4).
ALTER TABLE chunks ADD COLUMN card boolean NOT NULL DEFAULT false;
CREATE INDEX chunks_card_idx ON chunks (content_hash) WHERE card;
