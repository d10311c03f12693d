-- documents.pricing_sensitive now holds the effective value, decided once by the documents step:
-- the manifest or front matter flag, or detection on the document's text. Every reader (feedback
-- examples, refine, batch, best-of, the embedder's text) reads that one column.
-- pricing_version: the rules (core/refine/redaction.py PRICING_VERSION) that decided it and that
-- redacted its chunks' embedded text. NULL (every row before this migration) or an older version:
-- the next documents step decides again from the stored text, without re-parsing the file, and
-- re-chunks the documents that are or were sensitive (their embedded text is redacted).
ALTER TABLE documents ADD COLUMN pricing_version text;
