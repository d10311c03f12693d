"""The refine step: refined JSON for every document whose refinement key (input hash, chain,
prompt version, schema version) has no result, whose current refinement a person has rejected
since it was made, or whose result is a stand-in stored while the model was unreachable, through
the analyzer's routing and the LLM chain; results are stored as they finish, with the
pipeline's own judgement of them, so a failure loses nothing already done."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..db.refinements import (
    CandidateRow,
    PipelineJudgement,
    RefineCandidate,
    RefinementKey,
    RefinementRow,
)
from ..db.store import VectorStore
from ..feedback.events import (
    NOTES_PER_DOCUMENT,
    ApprovedExample,
    FeedbackPolicy,
    ReviewNote,
    approved_examples,
    pick_examples,
    review_notes,
)
from ..ingest.corpus import BestOf
from ..ingest.hashing import content_hash
from ..ingest.tokens import TokenCounter
from ..live_status import publishing
from ..openai_batch import BatchPolicy
from ..secrets import errors_scrubbed
from ..stopping import STOPPING
from .batch import BatchOutcome, refine_in_batches
from .best_of import Buffer, size_buffer
from .extractive import refine_extractively
from .llm import EXTRACTIVE, ChainResult, ChainStopped, LLMChain
from .prompts import PROMPT_VERSION, Prompt, PromptChunk, Review, build_prompt
from .quality import RoutingThresholds, analyze, route, score_refinement
from .schema import SCHEMA_VERSION

WRITE_EVERY = 20  # finished documents stored per transaction
PREPARING_WORKERS = 4  # threads beyond LLM_CONCURRENCY that analyze and build prompts
ESTIMATED_COMPLETION_TOKENS = 400  # for --dry-run cost estimates


@dataclass
class RefineReport:
    collection: str
    documents: int = 0
    refined: int = 0
    skipped: int = 0  # already refined under the current key
    lightweight: int = 0
    lightweight_reasons: Counter = field(default_factory=Counter)
    quarantined: int = 0
    awaiting_model: int = 0  # the model could not be reached: an extractive stand-in is stored
    sent_to_model: int = 0  # documents whose result cost at least one model call
    unreachable: str | None = None  # the first error that made a document await the model
    by_link: Counter = field(default_factory=Counter)
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    feedback_redos: int = 0  # redone with reviewers' notes in the prompt
    judgements: Counter = field(default_factory=Counter)  # pipeline feedback recorded, per source
    best_of: int = 0  # documents refined best-of-N
    candidates: int = 0  # candidates they were chosen from
    candidates_discarded: int = 0
    buffers: dict[str, Buffer] = field(default_factory=dict)  # N per model, when best-of applies
    batched: int = 0  # documents answered through the Batch API
    batches_submitted: list[str] = field(default_factory=list)
    batches_resumed: list[str] = field(default_factory=list)  # submitted by an earlier run, collected now
    lost_calls: int = 0  # calls an earlier, stopped run sent and never logged: logged now as 'lost'
    lost_cost_usd: float = 0.0  # their prompts' estimated cost (not in cost_usd: this run did not pay it)
    warnings: list[str] = field(default_factory=list)

    @property
    def bypass_rate(self) -> float:
        return self.lightweight / self.refined if self.refined else 0.0


def chain_key(chain: LLMChain) -> str:
    return chain.models[0] if chain.models else EXTRACTIVE


def input_hash(content: bytes, pricing_flag: bool) -> bytes:
    """What the refinement is made from: the document's bytes (which fix its text, front matter
    and detected sensitivity) and the manifest's pricing flag."""
    return content_hash(b"refine-input\0" + content + (b"\1" if pricing_flag else b"\0"))


@dataclass
class _Job:
    candidate: RefineCandidate
    input_hash: bytes
    chunks: list[PromptChunk]
    analysis: object = None
    reason: str | None = None  # the lightweight path's reason, when taken
    prompt: Prompt | None = None
    notes: list[ReviewNote] = field(default_factory=list)  # people's rejections of refinements of this input
    examples: list[ApprovedExample] = field(default_factory=list)
    best_of: bool = False  # the collection's best_of setting covers this document


def due_for_refinement(keys: Sequence[RefinementKey], models: Sequence[str]) -> dict[uuid.UUID, bytes]:
    """The documents `refine` (re)does, with the input hash each one's refinement is made from:
    those whose refinement key (document bytes and pricing flag, the chain's first model or the
    extractive refiner, PROMPT_VERSION, SCHEMA_VERSION) has no result, and, with a model
    (`models`: LLM_MODEL and its fallbacks) to redo them, those whose current refinement a person
    rejected after it was made or is a stand-in awaiting the model. Every other document is up to
    date. The one rule: `refinery status` counts out-of-date refinements by it too."""
    key_tail = (models[0] if models else EXTRACTIVE, PROMPT_VERSION, SCHEMA_VERSION)
    due = {}
    for k in keys:
        hashed = input_hash(k.content_hash, k.pricing_sensitive)
        if k.current != (hashed, *key_tail) or ((k.disputed or k.awaiting_model) and models):
            due[k.document_id] = hashed
    return due


def pending_jobs(store: VectorStore, collection: str, chain: LLMChain,
                 feedback: FeedbackPolicy = FeedbackPolicy(), best_of: BestOf | None = None) -> tuple[list[_Job], int]:
    """Documents due for refinement (`due_for_refinement`), and how many are up to date. Only key
    columns are read to decide; text and feedback are read for the pending documents alone."""
    keys = store.refinement_keys(collection)
    hashes = due_for_refinement(keys, chain.models)
    pending = list(hashes)
    candidates = store.documents_for_refinement(pending)
    chunks = store.chunks_of(pending) if chain.models else {}
    # Notes only help a model: the extractive refiner would write the same JSON again.
    notes = review_notes(store, {d: hashes[d] for d in pending}) if chain.models else {}
    pool = approved_examples(store) if notes and feedback.prompt_examples else []
    jobs = []
    for c in candidates:
        job = _Job(c, hashes[c.id], [PromptChunk(cid, path, text, n) for cid, path, text, n in chunks.get(c.id, [])],
                   notes=notes.get(c.id, []), best_of=best_of is not None and best_of.covers(c.path))
        if job.notes:
            job.examples = pick_examples(pool, c.id, collection, feedback.prompt_examples)
        jobs.append(job)
    return jobs, len(keys) - len(jobs)


def prepare(job: _Job, chain: LLMChain, counter: TokenCounter, budget: int, thresholds: RoutingThresholds) -> _Job:
    """Analyze, route, and build the prompt for the model path. A document people rejected goes
    to the model whatever the analyzer says: the cheap path is what they rejected."""
    c = job.candidate
    job.analysis = analyze(c.title, c.blocks, c.headings)
    job.reason = route(job.analysis, thresholds) if chain.models and not job.notes else None
    if chain.models and job.reason is None:
        review = None
        if job.notes:
            review = Review([n.text() for n in job.notes[:NOTES_PER_DOCUMENT]],
                            [(e.refined, e.pricing_sensitive) for e in job.examples])
        job.prompt = build_prompt(title=c.title, metadata=c.metadata, counter=counter, budget=budget,
                                  pricing_sensitive=c.pricing_sensitive, chunks=job.chunks, review=review)
    return job


def refine_collection(store: VectorStore, collection: str, chain: LLMChain, counter: TokenCounter, *,
                      budget: int, thresholds: RoutingThresholds, run_id: str | None = None,
                      asset: str = "refined_documents", progress=None,
                      feedback: FeedbackPolicy = FeedbackPolicy(), best_of: BestOf | None = None,
                      batch: BatchPolicy = BatchPolicy()) -> RefineReport:
    with (errors_scrubbed(chain.scrub), store.step_lock(collection),
          publishing(store.conninfo, collection, "refined_documents", progress) as live):
        return _refine_collection(store, collection, chain, counter, budget, thresholds, run_id, asset, live,
                                  feedback, best_of, batch)


def buffers_for(store: VectorStore, collection: str, chain: LLMChain, best_of: BestOf | None) -> dict[str, Buffer]:
    """N per model of the chain, from the discard rate observed in this collection."""
    if best_of is None:
        return {}
    return {m: size_buffer(m, store.candidate_discard_rates(collection, m, best_of.window), best_of)
            for m in chain.models}


def _refine_collection(store, collection, chain, counter, budget, thresholds, run_id, asset, progress,
                       feedback: FeedbackPolicy, best_of: BestOf | None, batch: BatchPolicy) -> RefineReport:
    started = time.perf_counter()
    report = RefineReport(collection)
    # Under the step lock: calls a stopped run of this collection sent but never logged.
    report.lost_calls, report.lost_cost_usd = store.record_lost_calls(collection)
    if report.lost_calls:
        report.warnings.append(f"{report.lost_calls} LLM calls of an earlier refine of {collection} were sent but "
                               "never recorded (it stopped before their answers were stored): logged in llm_calls "
                               f"as outcome 'lost', ~${report.lost_cost_usd:.4f} of prompt tokens")
    jobs, report.skipped = pending_jobs(store, collection, chain, feedback, best_of)
    report.buffers = buffers_for(store, collection, chain, best_of)
    asked = {m: b.candidates for m, b in report.buffers.items()}
    batched = BatchOutcome()
    if batch.min_items and chain.models and jobs:
        for job in jobs:
            prepare(job, chain, counter, budget, thresholds)
        # Best-of documents stay live: a batch line asks for one answer.
        batched = refine_in_batches(store, collection, chain, [j for j in jobs if j.prompt and not j.best_of],
                                    (chain_key(chain), PROMPT_VERSION, SCHEMA_VERSION), batch)
        report.batches_submitted, report.batches_resumed = batched.submitted, batched.resumed
        report.batched = len(batched.results)
        report.warnings.extend(batched.warnings)
    report.documents = len(jobs) + report.skipped
    buffer: list = []
    stored = 0
    stop = threading.Event()  # set when results can no longer be stored: no request is sent after it
    journal_errors: list[Exception] = []

    def journaled(job: _Job):
        """The chain's `sent` for `job`: each request is journaled (committed) just before it is
        sent, so that a run killed before logging its call leaves a row the next run logs as lost.
        One short transaction per call, against calls that take hundreds of milliseconds or more,
        on its own connection and without the collection lock: it adds about a millisecond per
        call and waits for no other write. If it fails, the request is not sent: the database
        cannot take results either, and the step stops as for a failed write."""
        tokens = job.prompt.tokens if job.prompt else 0

        def sent(model: str, link: str, attempt: str) -> None:
            if STOPPING.is_set():  # the process got SIGINT/SIGTERM: checked last, just before sending
                raise ChainStopped
            price = chain.prices.get(model)
            try:
                store.journal_llm_call(collection, run_id, asset, job.candidate.id, model, link, attempt, tokens,
                                       price.cost(tokens, 0) if price else 0.0)
            except Exception as exc:  # noqa: BLE001 - whatever the cause, the call could not be journaled
                journal_errors.append(exc)
                stop.set()
                raise ChainStopped from exc
        return sent

    def flush() -> None:
        nonlocal stored
        if buffer:
            rows = [r for r, _, _ in buffer]
            calls = [(r.document_id, c) for r, result, _ in buffer for c in result.calls]
            quarantined = [(r.document_id, r.input_hash, q) for r, result, _ in buffer
                           if result.quarantined for q in result.rejected]
            judged = [j for _, _, judgements in buffer for j in judgements]
            candidates = [row for r, result, _ in buffer for row in candidate_rows(r, result)]
            report.judgements.update(store.write_refinements(collection, run_id, asset, rows, calls, quarantined,
                                                             judged, candidates))
            stored += len(buffer)
            buffer.clear()

    def run(job: _Job) -> ChainResult:
        if stop.is_set() or STOPPING.is_set():
            raise ChainStopped
        c = job.candidate
        if c.id in batched.results:
            return batched.results[c.id]
        if job.analysis is None:
            # Analysis and prompt building happen in the workers too, so the first calls go out
            # at once instead of after every prompt is built.
            prepare(job, chain, counter, budget, thresholds)
        extractive = lambda: refine_extractively(c.title, c.blocks, c.headings, c.doc_type, job.analysis)  # noqa: E731
        if job.prompt is None:
            return ChainResult(extractive(), EXTRACTIVE, EXTRACTIVE)
        if c.id in batched.calls or c.id in batched.rejected:
            # The batch's answer failed: live now, with the batch call and answer on record.
            result = chain.refine(job.prompt, extractive, stop, sent=journaled(job))
            result.calls[:0] = batched.calls.get(c.id, [])
            result.rejected[:0] = batched.rejected.get(c.id, [])
            return result
        if not job.best_of:
            return chain.refine(job.prompt, extractive, stop, sent=journaled(job))
        source = job.prompt.document_text
        return chain.refine(job.prompt, extractive, stop, candidates=asked,
                            score=lambda refined: score_refinement(refined, source), sent=journaled(job))

    def give_up(futures) -> None:
        stop.set()
        for future in futures:
            future.cancel()  # a cancelled future counts as done: the loop below drains it

    write_error: Exception | None = None
    # More workers than request slots: while some wait on the server, others prepare prompts.
    with ThreadPoolExecutor(max_workers=chain.concurrency + PREPARING_WORKERS) as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        done_count = 0
        try:
            while futures:
                done, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                if STOPPING.is_set() and not stop.is_set():
                    give_up(futures)  # queued documents are dropped; the answers in flight are stored
                if not done:
                    continue
                for future in done:
                    job = futures.pop(future)
                    if future.cancelled():
                        continue
                    try:
                        result = future.result()
                    except ChainStopped:
                        continue
                    row = _row(job, result, chain)
                    buffer.append((row, result, judge(job, row, result, feedback)))
                    _tally(report, job, result)
                    done_count += 1
                if journal_errors and write_error is None:  # as a failed write: nothing more is sent
                    write_error = journal_errors[0]
                    give_up(futures)
                # A result that cost a model call is stored at once, so a killed run keeps what
                # it paid for; free (extractive) ones are batched.
                due = len(buffer) >= WRITE_EVERY or not futures or any(r.calls for _, r, _ in buffer)
                if buffer and due and write_error is None:
                    try:
                        flush()
                    except Exception as exc:  # noqa: BLE001 - whatever the cause, nothing more can be stored
                        write_error = exc
                        give_up(futures)
                if progress is not None:
                    progress(done_count, len(jobs))
        except BaseException:
            give_up(futures)
            raise
    if STOPPING.is_set() and write_error is None:
        raise RefineInterrupted(f"refining {collection} stopped by a signal: no new model request was sent. {stored} "
                                f"of the {len(jobs)} documents to refine are stored and kept: run the refine again "
                                "to finish the others (only they are sent).")
    if write_error is not None:
        # The requests in flight have finished: their answers were paid for, so try once more to
        # store them on a fresh connection (a terminated session is often the only damage).
        try:
            store.drop_broken_connections()
            flush()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise RefineInterrupted(_interrupted(collection, write_error, stored, len(jobs)))
    for row, server_status in batched.finished:  # every answer of theirs is stored now
        store.record_batch_finished(row, "collected", server_status)
    for model in sorted(chain.unpriced):
        report.warnings.append(f"no price for {model} in LLM_PRICES_FILE: its calls are logged at $0")
    report.seconds = time.perf_counter() - started
    if report.awaiting_model and report.awaiting_model == report.sent_to_model:
        raise ModelUnreachable(_unreachable(collection, report))
    if report.awaiting_model:
        report.warnings.insert(0, f"{report.awaiting_model} of the {report.sent_to_model} documents sent to the model "
                                  f"await it ({report.unreachable}): their extractive stand-ins are stored; run the "
                                  "refine again once it answers")
    return report


class RefineInterrupted(RuntimeError):
    """Results could not be stored, so no more model calls were made; a rerun finishes the job."""


class ModelUnreachable(RuntimeError):
    """No document sent to the model got its answer: its stand-ins are stored, a rerun sends them."""


def _unreachable(collection: str, report: RefineReport) -> str:
    # The error as the chain explained it: cause and fix, key scrubbed.
    return (f"refining {collection} failed: the model could not be reached for any of the {report.sent_to_model} "
            f"documents sent to it ({report.unreachable}). Their extractive refinements are stored as stand-ins "
            f"(awaiting_model): fix the cause, then run the refine again: only these documents are sent.")


def _interrupted(collection: str, error: Exception, stored: int, pending: int) -> str:
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    return (f"refining {collection} stopped: results could not be stored ({type(error).__name__}: {reason}), "
            f"so no new model request was sent. {stored} of the {pending} documents to refine are stored "
            f"and kept: run the refine again to finish the other {pending - stored} (only they are sent).")


def _row(job: _Job, result, chain: LLMChain) -> RefinementRow:
    route_name = "lightweight" if job.reason else "model"
    c = job.candidate
    source_text = job.prompt.document_text if job.prompt else "\n".join(b["text"] for b in c.blocks)
    return RefinementRow(
        document_id=c.id, input_hash=job.input_hash, chain=chain_key(chain),
        prompt_version=PROMPT_VERSION, schema_version=SCHEMA_VERSION, model=result.model, link=result.link,
        route=route_name, route_reason=job.reason, refined=result.refined.model_dump(),
        quality_score=job.analysis.quality, analysis=job.analysis.as_dict(),
        cited_chunk_ids=job.prompt.chunk_ids if job.prompt else [],
        prompt_tokens=job.prompt.tokens if job.prompt else 0, budget_tokens=job.prompt.budget if job.prompt else 0,
        refinement_score=score_refinement(result.refined, source_text), quarantined=result.quarantined,
        feedback_considered=sorted(n.event_id for n in job.notes), candidates=result.asked,
        awaiting_model=result.awaiting_model)


def candidate_rows(row: RefinementRow, result: ChainResult) -> list[CandidateRow]:
    asked = Counter(c.model for c in result.candidates)
    return [CandidateRow(row.document_id, c.model, row.input_hash, content_hash(c.raw.encode()), asked[c.model],
                         c.refined is not None, c.score, c.kept, c.reason) for c in result.candidates]


def judge(job: _Job, row: RefinementRow, result: ChainResult, policy: FeedbackPolicy) -> list[PipelineJudgement]:
    """The pipeline's own feedback: each model whose answer failed validation gets a negative
    judgement (validator) with the errors; each discarded best-of candidate a negative one (auto)
    with the reason, naming the candidate; a model refinement valid at its first answer and
    scoring at least the threshold gets a positive one (auto). Stored once per judged version."""
    version = dict(prompt_version=row.prompt_version, schema_version=row.schema_version, input_hash=row.input_hash)
    judgements = []
    errors_by_model: dict[str, list[str]] = {}
    for rejected in result.rejected:
        errors_by_model.setdefault(rejected.model, []).extend(rejected.errors)
    for model, errors in errors_by_model.items():
        kind = "not-json" if any(e.startswith("not JSON") for e in errors) else "schema-mismatch"
        judgements.append(PipelineJudgement(row.document_id, "validator", -1, model, tags=["invalid-answer", kind],
                                            comment="; ".join(dict.fromkeys(errors))[:2000], **version))
    for candidate in result.candidates:
        if not candidate.kept:  # a discarded best-of candidate: judged as itself, not as the stored refinement
            tags = ["best-of-discarded", "invalid-answer" if candidate.refined is None else "lower-score"]
            judgements.append(PipelineJudgement(row.document_id, "auto", -1, candidate.model, tags=tags,
                                                comment=candidate.reason[:2000],
                                                candidate_hash=content_hash(candidate.raw.encode()), **version))
    if (result.link != EXTRACTIVE and result.model not in errors_by_model
            and row.refinement_score is not None and row.refinement_score >= policy.auto_min_score):
        judgements.append(PipelineJudgement(row.document_id, "auto", 1, result.model, tags=["auto-approved"],
                                            score=max(3, _five_point(row.refinement_score)),
                                            comment=f"refinement score {row.refinement_score:.2f}"
                                            + (f", best of {row.candidates}" if row.candidates > 1 else ""),
                                            **version))
    return judgements


def _five_point(score: float) -> int:
    """A 0-1 score on the 1-5 scale of feedback events."""
    return max(1, min(5, 1 + round(score * 4)))


def _tally(report: RefineReport, job: _Job, result) -> None:
    report.refined += 1
    report.feedback_redos += bool(job.notes)
    report.by_link[result.link] += 1
    if job.reason:
        report.lightweight += 1
        report.lightweight_reasons[job.reason.split(" (")[0]] += 1
    if result.quarantined:
        report.quarantined += 1
    report.awaiting_model += result.awaiting_model
    if result.awaiting_model and report.unreachable is None:
        report.unreachable = next(c.error for c in result.calls if c.unavailable)
    report.sent_to_model += bool(result.calls)
    if result.candidates:
        report.best_of += 1
        report.candidates += len(result.candidates)
        report.candidates_discarded += sum(not c.kept for c in result.candidates)
    for call in result.calls:
        report.calls += 1
        report.failed_calls += call.outcome == "error"
        report.prompt_tokens += call.prompt_tokens
        report.completion_tokens += call.completion_tokens
        report.cost_usd += call.cost_usd
    errors = [c.error for c in result.calls if c.outcome == "error" and c.error]
    for error in errors:
        if error not in report.warnings and len(report.warnings) < 20:
            report.warnings.append(error)


def estimate(store: VectorStore, collection: str, chain: LLMChain, counter: TokenCounter, *,
             budget: int, thresholds: RoutingThresholds, feedback: FeedbackPolicy = FeedbackPolicy(),
             best_of: BestOf | None = None, batch: BatchPolicy = BatchPolicy()) -> dict:
    """--dry-run: what would be refined, the prompt tokens, and dollars per model if every
    document went to that model (a completion of ~400 tokens assumed), and, with best-of-N, the
    buffer per model and what its extra candidates cost. Documents that would go through the Batch
    API are priced at the batch price for the primary model. Calls nothing."""
    jobs, skipped = pending_jobs(store, collection, chain, feedback, best_of)
    jobs = [prepare(job, chain, counter, budget, thresholds) for job in jobs]
    prompt_tokens = sum(j.prompt.tokens for j in jobs if j.prompt)
    to_model = [j for j in jobs if j.prompt]
    best = [j for j in to_model if j.best_of]
    batchable = [j for j in to_model if not j.best_of]
    via_batch = bool(batch.min_items) and len(batchable) >= batch.min_items
    per_model, buffers = {}, {}
    for model, buffer in buffers_for(store, collection, chain, best_of).items():
        buffers[model] = {**buffer.as_dict(), "documents": len(best), "extra_candidates": (buffer.candidates - 1) * len(best)}
    for model in chain.models:
        price = chain.prices.get(model)
        per_model[model] = None if price is None else round(
            sum(price.cost(j.prompt.tokens, ESTIMATED_COMPLETION_TOKENS,
                           batch=via_batch and not j.best_of and model == chain.models[0]) for j in to_model), 6)
        if model in buffers:
            extra = buffers[model]["candidates"] - 1
            # With `n` the prompt is paid once for all candidates; without it, once per candidate.
            buffers[model]["extra_usd"] = None if price is None else round(
                sum(price.cost(0, extra * ESTIMATED_COMPLETION_TOKENS) for _ in best), 6)
            buffers[model]["extra_usd_without_n"] = None if price is None else round(
                sum(price.cost(extra * j.prompt.tokens, extra * ESTIMATED_COMPLETION_TOKENS) for j in best), 6)
    return {
        "documents": [{"path": j.candidate.path, "tokens": j.prompt.tokens if j.prompt else 0,
                       "route": "lightweight" if j.reason or not j.prompt else "model",
                       "reason": j.reason, "best_of": bool(j.prompt) and j.best_of} for j in jobs],
        "would_refine": len(jobs), "skipped": skipped, "to_model": len(to_model),
        "prompt_tokens": prompt_tokens, "estimated_usd": per_model, "best_of": buffers,
        "via_batch": len(batchable) if via_batch else 0,
    }
