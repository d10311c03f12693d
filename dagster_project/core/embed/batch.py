"""The Batch API path of the embeddings step for the candidate model of a model change: its
missing texts as one batch of embeddings requests (core/openai_batch.py), an open batch of an
earlier run collected instead of submitted again, vectors stored as each line is read. What no
batch answered is left to the live path."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..db.batches import BatchRequest
from ..openai_batch import BatchJobs, BatchPolicy, answer_of
from .base import EmbeddingError

ENDPOINT = "/v1/embeddings"


@dataclass
class BatchEmbedding:
    embedded: int = 0
    tokens: int = 0
    submitted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def embed_in_batches(store, collection: str, embedder, model_id: int, pending: list[tuple[bytes, str, int]],
                     policy: BatchPolicy) -> BatchEmbedding:
    """`pending`: (content hash, text, tokens) with no vector for the model. `embedder`: an
    OpenAIEmbedder (its client, packing and checks)."""
    outcome = BatchEmbedding()
    batches = BatchJobs(store, embedder.client, embedder.explain, purpose="embed", collection=collection,
                        key=embedder.model.key, endpoint=ENDPOINT, policy=policy,
                        rerun="run the embeddings step (refinery ingest)")
    wanted = {h for h, _, _ in pending}
    waiting, covered = batches.resume_open(lambda r: [h for h in r.content_hashes or [] if h in wanted])
    outcome.resumed.extend(w.batch_id for w in waiting)
    rest = [(h, text) for h, text, _ in pending if h not in covered]
    if rest and len(rest) >= max(1, policy.min_items):
        bodies, warnings = embedder.batch_bodies([text for _, text in rest])
        outcome.warnings.extend(warnings)
        submitted = batches.submit(embedder.name, [
            (BatchRequest(f"e{i}", content_hashes=[rest[j][0] for j in group]), body)
            for i, (group, body) in enumerate(bodies)])
        if submitted is not None:
            waiting.append(submitted)
            outcome.submitted.append(submitted.batch_id)
    for wait, batch, lines in batches.collected(waiting):
        for line in lines:
            request = wait.requests.get(line.get("custom_id"))
            if request is None:
                continue
            body, failure = answer_of(line)
            try:
                if body is None:
                    raise EmbeddingError(failure)
                vectors = embedder.vectors_of(body, len(request.content_hashes))
            except EmbeddingError as exc:
                if len(outcome.warnings) < 20:
                    outcome.warnings.append(f"batch {wait.batch_id}: {embedder.explain(exc)}; its texts go live")
                continue
            outcome.embedded += store.write_embeddings(model_id, request.content_hashes, vectors)
            outcome.tokens += int((body.get("usage") or {}).get("total_tokens") or 0)
        batches.finish(wait.row, "collected", batch.status)
    outcome.warnings.extend(batches.warnings)
    return outcome
