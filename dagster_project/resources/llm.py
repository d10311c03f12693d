"""The LLM resource: the chain LLM_MODEL -> LLM_FALLBACK_MODELS -> extractive, on any
OpenAI-compatible server, with the price table from LLM_PRICES_FILE."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..core.ingest.tokens import TokenCounter, tiktoken_counter, wordpiece_counter
from ..core.refine.llm import LLMChain, load_prices
from ..core.settings import Settings


def build_chain(settings: Settings) -> LLMChain:
    return LLMChain(
        models=settings.llm_models,
        base_url=settings.llm_base_url or settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        prices=load_prices(settings.llm_prices_file), timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries, concurrency=settings.llm_concurrency,
    )


def prompt_token_counter(settings: Settings) -> TokenCounter:
    """The primary model's tokenizer when tiktoken knows it, else a count that errs high."""
    return tiktoken_counter(settings.llm_model) if settings.llm_model else wordpiece_counter()


class LLMResource(dg.ConfigurableResource):
    """Built at run start from the environment; the API key never enters Dagster config."""

    _chain: LLMChain | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._chain = build_chain(Settings.from_env())

    @property
    def chain(self) -> LLMChain:
        assert self._chain is not None, "LLMResource is used outside of a run"
        return self._chain
