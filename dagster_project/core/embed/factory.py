"""Which embedder the settings name, built: the configured one or the one a stored model key
needs, and the tokenizer chunk budgets are counted with."""

from __future__ import annotations

from ..ingest.tokens import TokenCounter, tiktoken_counter, wordpiece_counter
from .base import Embedder, EmbeddingError, EmbeddingModel, parse_model_key
from .local import HashEmbedder, LocalEmbedder
from .onnx_embedder import OnnxEmbedder, backend_of, model_name
from .openai_embedder import DEFAULT_MODEL, KNOWN_DIMS, OpenAIEmbedder


def embedding_token_counter(provider: str, model: str | None) -> TokenCounter:
    """The tokenizer of the model that will embed the text; chunk budgets are counted with it."""
    if provider == "openai":
        return tiktoken_counter(model or DEFAULT_MODEL)
    return wordpiece_counter()


def configured_model_key(settings) -> str:
    """provider:model:dims of the configured embedder, known without loading it ("auto" dims:
    an OpenAI-compatible model whose size is learned from its first answer)."""
    if settings.embed_provider == "hash":
        return EmbeddingModel("hash", HashEmbedder.NAME, settings.embed_dims or 384).key
    if settings.embed_provider == "local":
        return EmbeddingModel("local", model_name(settings.local_embed_backend), LocalEmbedder.DIMS).key
    model = settings.embed_model or DEFAULT_MODEL
    return f"openai:{model}:{settings.embed_dims or KNOWN_DIMS.get(model, 'auto')}"


def _settings_for_key(settings, key: str):
    """The settings that build the stored model `key`: its provider, name and size, with the
    configured credentials and endpoint."""
    provider, name, dims = parse_model_key(key)
    if provider == "hash" and name == HashEmbedder.NAME:
        return settings.model_copy(update={"embed_provider": "hash", "embed_dims": dims})
    if provider == "local" and backend_of(name, settings.local_embed_backend):
        return settings.model_copy(update={"embed_provider": "local",
                                           "local_embed_backend": backend_of(name, settings.local_embed_backend)})
    if provider == "openai":
        if settings.embed_provider == "openai" and (settings.embed_model or DEFAULT_MODEL) == name:
            requested = settings.embed_dims  # the configured model: exactly as configured
        else:  # a known model at its native size, or an unknown one, is asked without `dimensions`
            requested = None if KNOWN_DIMS.get(name, dims) == dims else dims
        return settings.model_copy(update={"embed_provider": "openai", "embed_model": name, "embed_dims": requested})
    raise EmbeddingError(f"the vectors of {key} were made by an embedder this version cannot run; "
                         "embed with another model and switch to it (docs/operations.md)")


def build_embedder(settings, key: str | None = None) -> Embedder:
    """The embedder EMBED_PROVIDER names, configured from the settings object; with `key`, the
    embedder of that stored model (the active one, say), with the configured credentials."""
    if key is not None and key != configured_model_key(settings):
        settings = _settings_for_key(settings, key)
    if settings.embed_provider == "hash":
        return HashEmbedder(dims=settings.embed_dims or 384)
    if settings.embed_provider == "local" and settings.local_embed_backend != "torch":
        return OnnxEmbedder(settings.refinery_home / "cache" / "onnx", settings.local_embed_backend,
                            batch_size=settings.embed_batch_size)
    if settings.embed_provider == "local":
        return LocalEmbedder(batch_size=settings.embed_batch_size)
    embedder = OpenAIEmbedder(
        model=settings.embed_model or DEFAULT_MODEL,
        dims=settings.embed_dims,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        batch_size=settings.embed_batch_size,
        concurrency=settings.embed_concurrency,
    )
    if key is not None and embedder.needs_dims:
        embedder.adopt_dims(parse_model_key(key)[2])  # an unknown model's size, as stored
    return embedder
