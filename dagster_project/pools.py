"""The concurrency pools of the rate-limited API steps and their limits. Dagster keeps a pool's
limit in the instance's storage, not in dagster.yaml, so `refinery` sets it from the settings
whenever it uses the instance (and `refinery pools` does it on its own, e.g. in a deployment job)."""

from __future__ import annotations

import time

import dagster as dg

from .core.settings import Settings

EMBEDDING_POOL = "embedding_api"  # the embeddings steps
LLM_POOL = "llm_api"  # the refined_documents steps


def pool_limits(settings: Settings) -> dict[str, int]:
    """Steps of each pool that may run at once across all runs (EMBEDDING_POOL_LIMIT, LLM_POOL_LIMIT)."""
    return {EMBEDDING_POOL: settings.embedding_pool_limit, LLM_POOL: settings.llm_pool_limit}


def apply_pool_limits(instance: dg.DagsterInstance, settings: Settings) -> dict[str, int]:
    """Set each pool's limit in the instance where it differs; returns the limits."""
    limits = pool_limits(settings)
    for pool, limit in limits.items():
        _set_limit(instance.event_log_storage, pool, limit)
    return limits


def _set_limit(storage, pool: str, limit: int, attempts: int = 3) -> None:
    for attempt in range(attempts):
        if storage.get_concurrency_info(pool).slot_count == limit:
            return
        try:
            storage.set_concurrency_slots(pool, limit)
            return
        except Exception:
            # Two processes creating the pool's row at once: Dagster's upsert is not atomic, so
            # one gets a unique violation. Look again (the other may have set the same limit).
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def pool_usage(instance: dg.DagsterInstance) -> dict[str, dict]:
    """Limit, steps holding a slot and steps waiting, per pool of this project."""
    usage = {}
    for pool in (EMBEDDING_POOL, LLM_POOL):
        info = instance.event_log_storage.get_concurrency_info(pool)
        usage[pool] = {"limit": info.slot_count, "running": info.active_slot_count, "waiting": info.pending_step_count}
    return usage
