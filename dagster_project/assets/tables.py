"""What the catalog shows of each asset stored as a table: its table name, its columns (checked
against the migrated database by tests/test_catalog.py), and who owns the assets."""

from __future__ import annotations

import dagster as dg

OWNERS = ["team:corpus-refinery"]

_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "documents": [
        ("id", "uuid", ""), ("collection", "text", "the partition"), ("path", "text", "path in the collection"),
        ("content_hash", "bytea", "sha256 of the file's bytes"), ("size_bytes", "bigint", ""), ("format", "text", ""),
        ("title", "text", ""), ("category", "text", ""), ("doc_type", "text", ""), ("status", "text", ""),
        ("embed_mode", "text", ""),
        ("pricing_sensitive", "boolean", "manifest, front matter or detected: its numbers are redacted"),
        ("metadata", "jsonb", ""),
        ("headings", "jsonb", ""), ("blocks", "jsonb", "parsed text blocks"),
        ("chunked_hash", "bytea", "content_hash its chunks were made from"),
        ("chunker_version", "text", ""), ("ingested_at", "timestamptz", ""), ("updated_at", "timestamptz", ""),
        ("analysis", "jsonb", "quality scores"), ("source_version", "text", ""),
        ("file_stat", "bytea", "size, mtime, ctime, inode when content_hash was taken"),
        ("pricing_version", "text", "the detection rules that decided pricing_sensitive"),
    ],
    "chunks": [
        ("id", "uuid", ""), ("document_id", "uuid", ""), ("collection", "text", "the partition"),
        ("ordinal", "integer", "position in the document"), ("heading_path", "text[]", ""), ("text", "text", ""),
        ("token_count", "integer", ""), ("content_hash", "bytea", "hash of the embedded text: the vector's key"),
        ("context", "text", "Document title > Section"), ("ts_config", "regconfig", ""),
        ("first_page", "integer", "page or slide the text starts on (PDF, Word, PowerPoint)"),
        ("last_page", "integer", ""), ("tsv", "tsvector", "weighted full-text vector, CJK as bigrams"),
        ("card", "boolean", "the document card's text (hybrid search's card leg)"),
    ],
    "embeddings": [
        ("model_id", "smallint", "embedding_models.id"), ("content_hash", "bytea", "chunks.content_hash"),
        ("embedding", "vector", "HNSW-indexed per model"), ("created_at", "timestamptz", ""),
    ],
    "active_embedding_model": [
        ("only_row", "boolean", ""), ("model_id", "smallint", "the model search serves"),
        ("activated_at", "timestamptz", ""),
    ],
    "refined_documents": [
        ("document_id", "uuid", ""), ("collection", "text", "the partition"), ("input_hash", "bytea", ""),
        ("chain", "text", ""), ("prompt_version", "text", ""), ("schema_version", "text", ""), ("model", "text", ""),
        ("link", "text", "the chain link that answered"), ("route", "text", ""), ("route_reason", "text", ""),
        ("refined", "jsonb", "RefinedDocument"), ("quality_score", "real", ""), ("cited_chunk_ids", "uuid[]", ""),
        ("prompt_tokens", "integer", ""), ("budget_tokens", "integer", ""), ("refined_at", "timestamptz", ""),
        ("refinement_score", "real", ""), ("feedback_considered", "bigint[]", ""), ("quarantined", "boolean", ""),
        ("candidates", "smallint", "best-of: how many candidates were asked for"),
        ("awaiting_model", "boolean", "the model could not be reached: an extractive stand-in, sent again next run"),
    ],
    "feedback_events": [
        ("id", "bigint", ""), ("target", "text", "document or search hit"), ("document_id", "uuid", ""),
        ("collection", "text", "the partition"), ("path", "text", ""), ("chunk_id", "uuid", ""), ("query", "text", ""),
        ("model", "text", ""), ("prompt_version", "text", ""), ("schema_version", "text", ""),
        ("input_hash", "bytea", ""), ("rating", "smallint", "+1 or -1"), ("score", "smallint", "1-5"),
        ("tags", "text[]", ""), ("comment", "text", ""), ("source", "text", "user, validator or auto"),
        ("author", "text", ""), ("created_at", "timestamptz", ""),
        ("candidate_hash", "bytea", "best-of: the discarded candidate an auto judgement is about"),
    ],
    "metric_snapshots": [
        ("day", "date", "the partition"), ("metric", "text", ""), ("dimensions", "jsonb", ""),
        ("value", "double precision", ""), ("kind", "text", "logged or live"), ("computed_at", "timestamptz", ""),
    ],
}


def kind_tags(*kinds: str) -> dict[str, str]:
    """Kinds as tags, for the observable sources (their decorator takes no kinds or owners)."""
    return {f"dagster/kind/{kind}": "" for kind in kinds}


def table_metadata(table: str) -> dict:
    """Definition metadata of a table asset: its name and column schema in the catalog."""
    return {
        "dagster/table_name": f"public.{table}",
        "dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(name, type, description=description or None) for name, type, description in _COLUMNS[table]]),
    }


def table_columns(table: str) -> list[str]:
    return [name for name, _, _ in _COLUMNS[table]]
