"""The work itself, as plain Python with no Dagster import: one subpackage per stage (ingest, embed,
search, refine, feedback, metrics) over the database (db), plus the shared settings, progress
reporting, secret scrubbing and OpenAI error wording."""
