"""The Batch API path of the refine step: the prompts of a large refine as one batch for the
primary model (core/openai_batch.py), an open batch of an earlier run collected instead of
submitted again, and what no batch answered validly handed back to go live."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ..db.batches import BatchRequest
from ..db.store import VectorStore
from ..openai_batch import BatchJobs, BatchPolicy, Submitted, answer_of
from .llm import CallRecord, ChainResult, LLMChain, RejectedAnswer

ENDPOINT = "/v1/chat/completions"


@dataclass
class BatchOutcome:
    results: dict[uuid.UUID, ChainResult] = field(default_factory=dict)  # valid answers, ready to store
    # Documents a batch did not answer validly: their batch calls and rejected answers, to go live.
    calls: dict[uuid.UUID, list[CallRecord]] = field(default_factory=dict)
    rejected: dict[uuid.UUID, list[RejectedAnswer]] = field(default_factory=dict)
    finished: list[tuple[int, str | None]] = field(default_factory=list)  # (row, server status) to mark collected
    submitted: list[str] = field(default_factory=list)  # batch ids submitted now
    resumed: list[str] = field(default_factory=list)  # batch ids submitted by an earlier run, collected now
    warnings: list[str] = field(default_factory=list)


def refine_key(key: tuple[str, str, str]) -> str:
    """chain, prompt version, schema version: the answers of a batch are for this key only."""
    return "\x1f".join(key)


def refine_in_batches(store: VectorStore, collection: str, chain: LLMChain, jobs: list, key: tuple[str, str, str],
                      policy: BatchPolicy) -> BatchOutcome:
    """`jobs`: prepared jobs bound for the model. Those an open batch of an earlier run asks for
    (same input hash) are collected from it; the others, if at least `min_items`, go into one new
    batch for the primary model. Documents in neither are left out of the outcome (they go live)."""
    outcome = BatchOutcome()
    batches = BatchJobs(store, chain.client, chain.explain, purpose="refine", collection=collection,
                        key=refine_key(key), endpoint=ENDPOINT, policy=policy, rerun="run the refine")
    pending = {job.candidate.id: job for job in jobs}

    def answers(r: BatchRequest) -> list[uuid.UUID]:  # the document, while it is as the batch saw it
        job = pending.get(r.document_id)
        return [r.document_id] if job is not None and job.input_hash == r.input_hash else []

    waiting, covered = batches.resume_open(answers)
    outcome.resumed.extend(w.batch_id for w in waiting)
    rest = [job for doc, job in pending.items() if doc not in covered]
    if rest and len(rest) >= max(1, policy.min_items):
        model = chain.models[0]
        # The prompts as built for the live path: pricing-sensitive text is already redacted in them.
        submitted = batches.submit(model, [
            (BatchRequest(str(job.candidate.id), job.candidate.id, job.input_hash),
             chain.request_body(model, job.prompt.messages)) for job in rest])
        if submitted is not None:
            waiting.append(submitted)
            outcome.submitted.append(submitted.batch_id)
    for wait, batch, lines in batches.collected(waiting):
        for line in lines:
            _take(chain, wait, line, outcome)
        outcome.finished.append((wait.row, batch.status))
    outcome.warnings.extend(batches.warnings)
    return outcome


def _take(chain: LLMChain, wait: Submitted, line: dict, outcome: BatchOutcome) -> None:
    request = wait.requests.get(line.get("custom_id"))
    if request is None or request.document_id in outcome.results:
        return
    doc = request.document_id
    record = CallRecord(wait.model, "primary", "answer", batch_id=wait.batch_id)
    body, failure = answer_of(line)
    if body is None or not body.get("choices"):
        record.outcome, record.error = "error", chain.scrub(failure or "batch answer without choices")
        outcome.calls.setdefault(doc, []).append(record)
        return
    usage = body.get("usage") or {}
    record.prompt_tokens = usage.get("prompt_tokens", 0) or 0
    record.completion_tokens = usage.get("completion_tokens", 0) or 0
    price = chain.prices.get(wait.model)
    if price is None:
        chain.unpriced.add(wait.model)
    else:
        record.cost_usd = price.cost(record.prompt_tokens, record.completion_tokens, batch=True)
    raw = chain.scrub(body["choices"][0].get("message", {}).get("content") or "")
    refined, errors = chain.validate(raw)
    if refined is not None:
        outcome.results[doc] = ChainResult(refined, wait.model, "primary", [record])
        outcome.calls.pop(doc, None)
        outcome.rejected.pop(doc, None)
    else:
        record.outcome, record.error = "invalid", "; ".join(errors)[:500]
        outcome.calls.setdefault(doc, []).append(record)
        outcome.rejected.setdefault(doc, []).append(RejectedAnswer(wait.model, "primary", raw, errors))
