"""The one settings object: every knob comes from the environment (see .env.example)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = PROJECT_ROOT / "sql"
DEFAULT_MANIFEST = PROJECT_ROOT / "examples" / "corpus.yaml"


class Settings(BaseModel):
    refinery_home: Path = Path(".refinery")
    database_url: SecretStr | None = None
    dagster_pg_url: SecretStr | None = None
    pgssl_mode: str | None = None
    corpus_manifest: Path = DEFAULT_MANIFEST

    embed_provider: str = "local"
    embed_model: str | None = None
    embed_dims: int | None = None
    embed_batch_size: int = Field(64, ge=1)
    embed_concurrency: int = Field(4, ge=1)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None

    chunk_max_tokens: int = Field(256, ge=16)
    chunk_overlap_tokens: int = Field(32, ge=0)
    max_file_bytes: int = Field(20_000_000, ge=1)

    @field_validator("embed_provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"local", "openai", "hash"}:
            raise ValueError(f"EMBED_PROVIDER must be local, openai or hash, not {value!r}")
        return value

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {
            name: os.environ[name.upper()]
            for name in cls.model_fields
            if os.environ.get(name.upper(), "").strip() != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
