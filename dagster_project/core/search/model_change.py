"""Changing the embedding model without downtime: which models the embeddings step keeps
covering, the gates a switch must pass (coverage, golden-set retrieval), the atomic switch, and
dropping an old model's vectors. The configured model (EMBED_*) is the one wanted; the active
one (in the database) is the one search serves; when they differ, the configured one is the
candidate."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..db.store import VectorStore
from ..embed.base import Embedder, EmbeddingError
from ..ingest.pipeline import adopt_stored_size
from .evaluation import QuestionsError, load_questions

GATED_METRICS = ("recall@5", "mrr@10")  # hybrid search on the golden set: the candidate's must be >= the active's


class ModelChangeError(RuntimeError):
    """A switch or a drop was refused; the message says what is missing and what to do."""


def models_to_build(store: VectorStore, configured: Embedder, build: Callable[[str], Embedder]) -> list[Embedder]:
    """The active model first, so search keeps a vector for every new chunk; then the configured
    model if it differs (the candidate, built beside it). On a fresh install, or when the active
    model holds no vector (its first build failed): the configured one, which becomes active once built."""
    adopt_stored_size(store, configured)
    active = store.active_model_key()
    if active is None or active == configured.model.key or not store.holds_vectors(store.model_id_by_key(active)):
        return [configured]
    return [build(active), configured]


def candidate_key(store: VectorStore, configured: Embedder) -> str | None:
    adopt_stored_size(store, configured)
    active = store.active_model_key()
    return configured.model.key if active is not None and active != configured.model.key else None


@dataclass
class SwitchGates:
    """What a switch to the candidate is decided on."""

    active: str | None
    candidate: str | None
    live_chunks: int = 0
    missing_by_collection: dict[str, int] = field(default_factory=dict)  # the candidate's
    active_metrics: dict | None = None  # recall@5, mrr@10 (hybrid, golden set)
    candidate_metrics: dict | None = None
    metrics_problem: str | None = None  # why the metrics could not be compared
    not_in_manifest: list[str] = field(default_factory=list)  # stored collections the manifest no longer names

    @property
    def missing(self) -> int:
        return sum(self.missing_by_collection.values())

    @property
    def covered(self) -> bool:
        return self.missing == 0

    @property
    def metrics_ok(self) -> bool:
        return (self.metrics_problem is None and self.active_metrics is not None
                and self.candidate_metrics is not None
                and all(self.candidate_metrics[m] >= self.active_metrics[m] for m in GATED_METRICS))

    def coverage_problem(self) -> str | None:
        if self.covered:
            return None
        where = ", ".join(f"{c} {n}" for c, n in self.missing_by_collection.items())
        outside = [c for c in self.missing_by_collection if c in self.not_in_manifest]
        todo = []
        if len(outside) < len(self.missing_by_collection):
            todo.append("materialize `embeddings` for those collections (refinery ingest)")
        if outside:  # which `refinery ingest` cannot do: the manifest does not name them
            todo.append(f"{', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in the manifest: add "
                        "it back and ingest it, or delete it with `refinery prune`")
        return (f"{self.candidate} has no vector for {self.missing} of {self.live_chunks} live chunks ({where}): "
                f"{'; '.join(todo)}, then try again; --force does not skip this, search would lose those chunks")

    def metrics_verdict(self) -> str | None:
        """None when the candidate retrieves at least as well; else why the gate is closed."""
        if self.metrics_ok:
            return None
        if self.metrics_problem is not None:
            return f"the golden-set metrics could not be compared: {self.metrics_problem}"
        if self.candidate_metrics is None:
            return "the golden-set metrics of the candidate are measured once it covers every live chunk"
        worse = "; ".join(f"{m} {self.candidate_metrics[m]:.4f} < {self.active_metrics[m]:.4f}"
                          for m in GATED_METRICS if self.candidate_metrics[m] < self.active_metrics[m])
        return f"{self.candidate} retrieves worse than {self.active} on the golden set ({worse})"

    def to_dict(self) -> dict:
        return asdict(self) | {"covered": self.covered, "metrics_ok": self.metrics_ok}


def evaluate_gates(store: VectorStore, configured: Embedder, build: Callable[[str], Embedder],
                   questions_path: Path, text_search_config: str = "english", *,
                   manifest_collections: Iterable[str]) -> SwitchGates:
    """Coverage of the candidate over every live chunk, and, once it is complete, hybrid-search
    recall@5 and MRR@10 of both models on the golden questions. `manifest_collections`: what the
    manifest names, so that a stored collection it no longer names is told apart."""
    from ..metrics.snapshots import golden_set_retrieval

    candidate = candidate_key(store, configured)
    gates = SwitchGates(store.active_model_key(), candidate)
    if candidate is None:
        return gates
    state = next((m for m in store.models() if m.key == candidate), None)
    # a candidate never embedded yet misses every chunk
    gates.missing_by_collection = state.missing_by_collection if state else store.chunks_per_collection()
    gates.live_chunks = sum(store.chunks_per_collection().values())
    gates.not_in_manifest = sorted(set(store.chunks_per_collection()) - set(manifest_collections))
    try:
        questions = load_questions(questions_path, store.document_keys())
        gates.active_metrics = _gated(golden_set_retrieval(store, build(gates.active), questions,
                                                           text_search_config)[0])
        if gates.covered:  # a partial index would be measured on part of the corpus
            gates.candidate_metrics = _gated(golden_set_retrieval(store, configured, questions,
                                                                  text_search_config)[0])
    except (QuestionsError, EmbeddingError) as exc:
        gates.metrics_problem = str(exc)
    return gates


def _gated(quality: dict) -> dict:
    return {"questions": quality["questions"], **{m: quality[m] for m in GATED_METRICS}}


def switch_to_candidate(store: VectorStore, gates: SwitchGates, *, force: bool = False) -> str | None:
    """Make the candidate the active model if it covers every live chunk and retrieves at least
    as well (`force` skips only the retrieval gate). Returns the previous active model's key;
    raises ModelChangeError, changing nothing, when a gate is closed."""
    if gates.candidate is None:
        raise ModelChangeError(f"no candidate: the configured model is the active one ({gates.active}); "
                               "set EMBED_PROVIDER / EMBED_MODEL / EMBED_DIMS to the new model and "
                               "materialize `embeddings` first")
    if not gates.covered:
        raise ModelChangeError(f"not switching to {gates.candidate}: {gates.coverage_problem()}")
    if not force and not gates.metrics_ok:
        raise ModelChangeError(f"not switching to {gates.candidate}: {gates.metrics_verdict()}; "
                               "--force skips this gate")
    previous, missing = store.switch_active_model(
        store.model_id_by_key(gates.candidate), forced=force and not gates.metrics_ok, gates=gates.to_dict())
    if missing:  # a chunk written since the gates were measured
        raise ModelChangeError(f"not switching to {gates.candidate}: {missing} live chunks were added without "
                               "its vector meanwhile; materialize `embeddings` and try again")
    return previous


def drop_model(store: VectorStore, key: str, configured_key: str) -> int:
    """Delete a model's vectors and its HNSW index. Refused for the active model (search serves
    it) and the configured one (the next embeddings run would build it again)."""
    model_id = store.model_id_by_key(key)
    if model_id is None:
        known = ", ".join(m.key for m in store.models()) or "none"
        raise ModelChangeError(f"no embedding model {key!r} in the store (models: {known})")
    active_error = ModelChangeError(f"{key} is the active model: search serves it; switch to another model first")
    if key == store.active_model_key():
        raise active_error
    if key == configured_key:
        raise ModelChangeError(f"{key} is the configured model (EMBED_*): configure the model you keep, "
                               "or the next `embeddings` run builds it again")
    deleted = store.drop_model_vectors(model_id)
    if deleted is None:  # activated meanwhile
        raise active_error
    return deleted


def model_status(store: VectorStore, configured_key: str) -> list[dict]:
    """Every stored model (and a configured one not embedded yet): its role (active, candidate,
    retired, dropped), vectors, live chunks it misses per collection, and its HNSW index."""
    out = []
    stored = store.models()
    for m in stored:
        if m.active:
            role = "active"
        elif m.key == configured_key:
            role = "candidate"
        else:
            role = "dropped" if m.dropped_at is not None and m.vectors == 0 else "retired"
        out.append({"key": m.key, "role": role, "vectors": m.vectors, "live_chunks": m.live_chunks,
                    "missing": m.missing, "missing_by_collection": m.missing_by_collection, "indexed": m.indexed,
                    "activated_at": m.activated_at})
    if configured_key not in {m.key for m in stored} and any(m.active for m in stored):
        missing = store.chunks_per_collection()
        out.append({"key": configured_key, "role": "candidate", "vectors": 0, "live_chunks": sum(missing.values()),
                    "missing": sum(missing.values()), "missing_by_collection": missing, "indexed": False,
                    "activated_at": None})
    return out
