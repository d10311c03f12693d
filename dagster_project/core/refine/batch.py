"""The Batch API path of the refine step (half the price, its own rate limit): the prompts of a
large refine uploaded as one JSONL file, the batch submitted, polled and its answers collected;
batches are recorded before and after submission, so a restarted step collects what it
submitted instead of submitting again. What a batch does not answer validly goes live."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import openai

from ..db.store import VectorStore
from .llm import CallRecord, ChainResult, LLMChain, RejectedAnswer

TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class BatchPolicy:
    min_documents: int = 0  # a refine sending at least this many documents to a model uses a batch; 0: never
    poll_seconds: float = 30.0
    max_wait_seconds: float = 86_400.0  # then the step fails; a rerun goes on collecting the same batch


class BatchPending(RuntimeError):
    """A batch is still running (or its server cannot be reached): nothing is lost, a rerun collects it."""


@dataclass
class BatchOutcome:
    results: dict[uuid.UUID, ChainResult] = field(default_factory=dict)  # valid answers, ready to store
    # Documents the batches did not answer validly: their batch calls and rejected answers, to go live.
    calls: dict[uuid.UUID, list[CallRecord]] = field(default_factory=dict)
    rejected: dict[uuid.UUID, list[RejectedAnswer]] = field(default_factory=dict)
    finished: list[tuple[int, str | None]] = field(default_factory=list)  # (row, server status) to mark collected
    submitted: list[str] = field(default_factory=list)  # batch ids submitted now
    resumed: list[str] = field(default_factory=list)  # batch ids submitted by an earlier run, collected now
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Waiting:
    row: int
    batch_id: str
    model: str
    documents: dict[str, uuid.UUID]  # custom id -> document


def refine_in_batches(store: VectorStore, collection: str, chain: LLMChain, jobs: list, key: tuple[str, str, str],
                      policy: BatchPolicy) -> BatchOutcome:
    """`jobs`: prepared jobs bound for the model. Those an open batch of an earlier run already
    asks for (same input hash) are collected from it; the others, if at least `min_documents`,
    go into one new batch for the primary model. Jobs in neither are left out of the outcome."""
    outcome = BatchOutcome()
    pending = {job.candidate.id: job for job in jobs}
    waiting: list[_Waiting] = []
    covered: set[uuid.UUID] = set()
    for batch in store.open_batches(collection, *key):
        mine = {cid: doc for cid, (doc, input_hash) in batch.requests.items()
                if doc in pending and pending[doc].input_hash == input_hash and doc not in covered}
        if not mine:  # its answers are stored, or its documents changed since: nothing to collect
            store.record_batch_finished(batch.id, "collected" if batch.batch_id else "abandoned", None)
            continue
        batch_id = batch.batch_id or _find_or_create(store, chain, batch.id, batch.input_file_id, collection)
        waiting.append(_Waiting(batch.id, batch_id, batch.model, mine))
        outcome.resumed.append(batch_id)
        covered.update(mine.values())
    rest = [job for doc, job in pending.items() if doc not in covered]
    if rest and len(rest) >= max(1, policy.min_documents):
        submitted = _submit(store, chain, collection, key, rest, outcome)
        if submitted is not None:
            waiting.append(submitted)
            outcome.submitted.append(submitted.batch_id)
    for wait in waiting:
        _collect(chain, wait, _poll(chain, wait.batch_id, policy), pending, outcome)
    return outcome


def _submit(store, chain: LLMChain, collection: str, key, jobs: list, outcome: BatchOutcome) -> _Waiting | None:
    model = chain.models[0]
    # The prompts as built for the live path: pricing-sensitive text is already redacted in them.
    lines = [json.dumps({"custom_id": str(job.candidate.id), "method": "POST", "url": ENDPOINT,
                         "body": chain.request_body(model, job.prompt.messages)}) for job in jobs]
    try:
        uploaded = chain.client.files.create(file=(f"refine-{collection}.jsonl", ("\n".join(lines) + "\n").encode()),
                                             purpose="batch")
    except openai.OpenAIError as exc:
        outcome.warnings.append(f"batch not submitted, {len(jobs)} documents go live: {chain.explain(exc)}")
        return None
    row = store.record_batch_file(collection, model, key, uploaded.id,
                                  [(str(job.candidate.id), job.candidate.id, job.input_hash) for job in jobs])
    batch_id = _find_or_create(store, chain, row, uploaded.id, collection, look_first=False)
    if batch_id is None:
        outcome.warnings.append(f"batch not created, {len(jobs)} documents go live")
        return None
    return _Waiting(row, batch_id, model, {str(job.candidate.id): job.candidate.id for job in jobs})


def _find_or_create(store, chain: LLMChain, row: int, input_file_id: str, collection: str,
                    look_first: bool = True) -> str | None:
    """The batch made from `input_file_id`: one the server already has (a step killed between
    creating it and recording it), else a new one. Recorded before anything else happens."""
    try:
        found = next((b for b in chain.client.batches.list(limit=100) if b.input_file_id == input_file_id),
                     None) if look_first else None
        batch = found or chain.client.batches.create(input_file_id=input_file_id, endpoint=ENDPOINT,
                                                     completion_window="24h", metadata={"collection": collection})
    except openai.OpenAIError as exc:
        if look_first:  # it may exist: keep the record, a rerun looks again
            raise BatchPending(f"the batch of input file {input_file_id} could not be looked up: "
                               f"{chain.explain(exc)}; run the refine again to collect it") from None
        store.record_batch_finished(row, "abandoned", None)
        return None
    store.record_batch_submitted(row, batch.id)
    return batch.id


def _poll(chain: LLMChain, batch_id: str, policy: BatchPolicy):
    deadline = time.monotonic() + policy.max_wait_seconds
    while True:
        try:
            batch = chain.client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise BatchPending(f"batch {batch_id} could not be read ({chain.explain(exc)}): it is recorded, "
                               "run the refine again to collect it (it is not submitted again)") from None
        if batch.status in TERMINAL:
            return batch
        if time.monotonic() >= deadline:
            counts = batch.request_counts
            done = f", {counts.completed + counts.failed}/{counts.total} requests done" if counts else ""
            raise BatchPending(f"batch {batch_id} is still {batch.status} after {policy.max_wait_seconds:g}s{done}: "
                               "run the refine again later to collect it (it is not submitted again)")
        time.sleep(policy.poll_seconds)


def _collect(chain: LLMChain, wait: _Waiting, batch, pending: dict, outcome: BatchOutcome) -> None:
    answered: set[uuid.UUID] = set()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        try:
            text = chain.client.files.content(file_id).text
        except openai.OpenAIError as exc:
            outcome.warnings.append(f"batch {wait.batch_id}: file {file_id} not read, its documents go live: "
                                    f"{chain.explain(exc)}")
            continue
        for line in text.splitlines():
            if line.strip():
                answered |= _take(chain, wait, json.loads(line), pending, outcome)
    missing = [doc for doc in wait.documents.values() if doc not in answered]
    if batch.status != "completed":
        outcome.warnings.append(f"batch {wait.batch_id} ended {batch.status}: {len(missing)} documents go live")
    for doc in missing:
        outcome.calls.setdefault(doc, [])
    outcome.finished.append((wait.row, batch.status))


def _take(chain: LLMChain, wait: _Waiting, line: dict, pending: dict, outcome: BatchOutcome) -> set[uuid.UUID]:
    doc = wait.documents.get(line.get("custom_id"))
    if doc is None or doc in outcome.results:
        return set()
    response = line.get("response") or {}
    body = response.get("body") or {}
    record = CallRecord(wait.model, "primary", "answer", batch_id=wait.batch_id)
    if response.get("status_code") != 200 or not body.get("choices"):
        error = line.get("error") or body.get("error") or {}
        record.outcome = "error"
        record.error = chain.scrub(f"batch request answered {response.get('status_code', 'nothing')}"
                                   + (f" ({error.get('message', '')[:200]})" if isinstance(error, dict) else ""))
        outcome.calls.setdefault(doc, []).append(record)
        return {doc}
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
    return {doc}
