-- A document card (pipeline.document_card: the description, summary... of its metadata) is a
-- chunk of its own; hybrid search ranks the cards among the vector leg's chunks in a third leg
-- (core/search/hybrid.py). Rows written before this migration say false until their collection
-- is chunked again, which the chunker version (v4) asks for.
ALTER TABLE chunks ADD COLUMN card boolean NOT NULL DEFAULT false;
