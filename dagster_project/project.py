"""What the code location is built from: settings, the manifest and the collection partitions.
Loaded once when Dagster (or the CLI) loads the definitions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from functools import cached_property

import dagster as dg

from .core.embed.factory import configured_model_key, embedding_token_counter
from .core.feedback.events import FeedbackPolicy
from .core.ingest.chunking import ChunkSettings
from .core.ingest.corpus import Manifest, load_manifest
from .core.ingest.tokens import TokenCounter
from .core.metrics.monitoring import Threshold, load_thresholds
from .core.refine.quality import RoutingThresholds
from .core.settings import Settings


@dataclass
class Project:
    settings: Settings
    manifest: Manifest

    @classmethod
    def load(cls, settings: Settings | None = None) -> Project:
        settings = settings or Settings.from_env()
        return cls(settings, load_manifest(settings.corpus_manifest))

    @cached_property
    def partitions(self) -> dg.StaticPartitionsDefinition:
        return dg.StaticPartitionsDefinition(sorted(self.manifest.collections))

    @cached_property
    def ingest_partitions(self) -> dg.StaticPartitionsDefinition:
        """Ingestion's partitions: a collection, or `name/shard` for each shard of a collection
        with `shards: N` (they run in parallel). With no sharded collection, the collections."""
        if all(c.shards == 1 for c in self.manifest.collections.values()):
            return self.partitions
        return dg.StaticPartitionsDefinition([s.key for s in self.manifest.shards()])

    def collection_of_shards(self) -> dg.PartitionMapping | None:
        """From ingestion's partitions to the collections (refinement is per collection)."""
        if self.ingest_partitions is self.partitions:
            return None
        return dg.StaticPartitionMapping({s.key: s.collection for s in self.manifest.shards()})

    @cached_property
    def metrics_start_date(self) -> date:
        """METRICS_START_DATE, else the day this REFINERY_HOME was first used."""
        from .core.metrics.snapshots import first_day

        return self.settings.metrics_start_date or first_day(self.settings.refinery_home)

    @cached_property
    def daily_partitions(self) -> dg.DailyPartitionsDefinition:
        """UTC days from metrics_start_date through today (today's partition is open all day)."""
        return dg.DailyPartitionsDefinition(start_date=self.metrics_start_date.isoformat(), timezone="UTC",
                                            end_offset=1)

    @cached_property
    def thresholds(self) -> dict[str, Threshold]:
        return load_thresholds(self.settings.monitoring_file)

    @cached_property
    def chunk_settings(self) -> ChunkSettings:
        return ChunkSettings(self.settings.chunk_max_tokens, self.settings.chunk_overlap_tokens,
                             text_search_config=self.settings.text_search_config)

    def chunk_settings_for(self, collection: str) -> ChunkSettings:
        """The chunk settings with the collection's own text search configuration, if it sets one."""
        config = self.manifest.collection(collection).text_search_config
        return replace(self.chunk_settings, text_search_config=config) if config else self.chunk_settings

    @cached_property
    def token_counter(self) -> TokenCounter:
        return embedding_token_counter(self.settings.embed_provider, self.settings.embed_model)

    @property
    def chunker_version(self) -> str:
        return self.chunk_settings.version(self.token_counter)

    @property
    def embedding_generation(self) -> str:
        """provider:model:dims as configured, known without loading the model."""
        return configured_model_key(self.settings)

    @property
    def routing_thresholds(self) -> RoutingThresholds:
        return RoutingThresholds(self.settings.refine_min_words, self.settings.refine_min_quality)

    @property
    def feedback_policy(self) -> FeedbackPolicy:
        return FeedbackPolicy(self.settings.feedback_auto_min_score, self.settings.feedback_prompt_examples)

    @property
    def refinement_version(self) -> str:
        """primary model (or extractive)+prompt version+schema version as configured: the refined
        asset's code version, so a model, prompt or schema change shows it unsynced."""
        from .core.refine.llm import EXTRACTIVE
        from .core.refine.prompts import PROMPT_VERSION
        from .core.refine.schema import SCHEMA_VERSION

        models = self.settings.llm_models
        return "+".join((models[0] if models else EXTRACTIVE, PROMPT_VERSION, SCHEMA_VERSION))

    @staticmethod
    def refinement_key(chain) -> tuple[str, str, str]:
        """(chain, prompt version, schema version): with the input hash, a row's refinement key."""
        from .core.refine.pipeline import chain_key
        from .core.refine.prompts import PROMPT_VERSION
        from .core.refine.schema import SCHEMA_VERSION

        return chain_key(chain), PROMPT_VERSION, SCHEMA_VERSION
