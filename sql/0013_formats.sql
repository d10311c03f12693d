-- Page (PDF, Word) or slide (PowerPoint) numbers of a chunk's text, shown in search hits; NULL
-- for formats without pages.
ALTER TABLE chunks ADD COLUMN first_page integer;
ALTER TABLE chunks ADD COLUMN last_page integer;
