"""The one settings object: every knob comes from the environment (see .env.example)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from .ingest.formats import PARSE_TIME_LIMIT_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = PROJECT_ROOT / "sql"
DEFAULT_MANIFEST = PROJECT_ROOT / "examples" / "corpus.yaml"
DEFAULT_PRICES = PROJECT_ROOT / "llm_prices.yaml"
DEFAULT_MONITORING = PROJECT_ROOT / "monitoring.yaml"
DEFAULT_GOLDEN_QUESTIONS = PROJECT_ROOT / "examples" / "golden_questions.yaml"


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
    # EMBED_PROVIDER=local: torch (sentence-transformers) or ONNX Runtime, fp32 or int8 (docs/architecture.md)
    local_embed_backend: str = "torch"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None

    chunk_max_tokens: int = Field(256, ge=16)
    chunk_overlap_tokens: int = Field(32, ge=0)
    text_search_config: str = "english"
    max_file_bytes: int = Field(20_000_000, ge=1)
    parse_time_limit_seconds: float = Field(PARSE_TIME_LIMIT_SECONDS, gt=0)  # per PDF, Word or PowerPoint file

    llm_model: str | None = None  # unset: every document gets the extractive refinement
    # Operations: how often the corpus folders and the feedback log are looked at (cron), how often the automation
    # sensor evaluates, and the cron of the scheduled full re-ingestion (off until switched on).
    corpus_observe_cron: str = "*/5 * * * *"
    feedback_observe_cron: str = "*/5 * * * *"
    automation_interval_seconds: int = Field(30, ge=5)
    automation_sensor_default: Literal["running", "stopped"] = "running"
    reingest_cron: str = "0 3 * * *"
    # Concurrency pools: steps that call the embedding API / the LLM at once, across all runs.
    embedding_pool_limit: int = Field(2, ge=1)
    llm_pool_limit: int = Field(2, ge=1)
    # How a launched run executes its steps (docs/deployment.md): Dagster's default (a process
    # per step on the run's machine), or Celery / Kubernetes workers through their dagster-* package.
    run_executor: Literal["multiprocess", "celery", "celery_k8s", "k8s_job"] = "multiprocess"
    llm_fallback_models: str = ""  # comma-separated, tried in order after LLM_MODEL
    llm_base_url: str | None = None  # default: OPENAI_BASE_URL
    llm_concurrency: int = Field(4, ge=1)
    llm_timeout: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(4, ge=0)
    llm_prices_file: Path = DEFAULT_PRICES
    # The Batch API (half the price): a refine sending at least this many documents to the model
    # submits them as one batch (0: never), polls it every LLM_BATCH_POLL_SECONDS, and fails after
    # LLM_BATCH_MAX_WAIT_SECONDS with the batch recorded (a rerun collects it, never resubmits).
    llm_batch_min_documents: int = Field(0, ge=0)
    # During a model change: the candidate's missing texts go through the Batch API when at least this many (0: never).
    embed_batch_min_texts: int = Field(0, ge=0)
    llm_batch_poll_seconds: float = Field(30.0, gt=0)
    llm_batch_max_wait_seconds: float = Field(86_400.0, gt=0)
    refine_budget_tokens: int = Field(8000, ge=500)
    refine_min_words: int = Field(60, ge=0)
    refine_min_quality: float = Field(0.35, ge=0, le=1)

    feedback_auto_min_score: float = Field(0.8, ge=0, le=1)  # a model refinement scoring this much is approved
    feedback_prompt_examples: int = Field(2, ge=0, le=5)  # approved examples in a prompt redone for feedback

    # The first daily partition of metric_snapshots (a UTC day); unset: the day the project first
    # loaded with this REFINERY_HOME (core.metrics.first_day), so an install shows no empty past.
    metrics_start_date: date | None = None
    monitoring_file: Path = DEFAULT_MONITORING
    golden_questions: Path = DEFAULT_GOLDEN_QUESTIONS  # retrieval metrics of the snapshots

    @property
    def llm_models(self) -> list[str]:
        chain = [self.llm_model] if self.llm_model else []
        return chain + [m.strip() for m in self.llm_fallback_models.split(",") if m.strip() and self.llm_model]

    @field_validator("embed_provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        return _one_of("EMBED_PROVIDER", value, ("local", "openai", "hash"))

    @field_validator("local_embed_backend")
    @classmethod
    def _known_local_backend(cls, value: str) -> str:
        return _one_of("LOCAL_EMBED_BACKEND", value, ("torch", "onnx", "onnx-int8"))

    @model_validator(mode="after")
    def _chunk_budget_fits(self) -> Settings:
        # The chunker's own checks (overlap, context and text within CHUNK_MAX_TOKENS), here so
        # that a bad combination is a bad setting of every command, not a traceback mid-run.
        from .ingest.chunking import ChunkSettings

        ChunkSettings(self.chunk_max_tokens, self.chunk_overlap_tokens)
        return self

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {
            name: os.environ[name.upper()]
            for name in cls.model_fields
            if os.environ.get(name.upper(), "").strip() != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _one_of(variable: str, value: str, allowed: tuple[str, ...]) -> str:
    """`value` normalized, if it is one of `allowed`; else an error naming the variable and the choices."""
    value = value.strip().lower()
    if value not in allowed:
        raise ValueError(f"{variable} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}")
    return value
