"""The refine step: refined JSON for every document whose refinement key (input hash, chain,
prompt version, schema version) has no result, through the analyzer's routing and the LLM
chain; results are stored as they finish, so a failure loses nothing already done."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .extractive import refine_extractively
from .hashing import content_hash
from .llm import EXTRACTIVE, LLMChain
from .prompts import PROMPT_VERSION, Prompt, PromptChunk, build_prompt
from .quality import RoutingThresholds, analyze, route
from .redaction import looks_pricing_sensitive
from .refined_schema import SCHEMA_VERSION
from .store import RefineCandidate, RefinementRow, VectorStore
from .tokens import TokenCounter

WRITE_EVERY = 20  # finished documents stored per transaction
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
    by_link: Counter = field(default_factory=Counter)
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def bypass_rate(self) -> float:
        return self.lightweight / self.refined if self.refined else 0.0


def chain_key(chain: LLMChain) -> str:
    return chain.models[0] if chain.models else EXTRACTIVE


def input_hash(candidate: RefineCandidate, sensitive: bool) -> bytes:
    return content_hash(b"refine-input\0" + candidate.content_hash + (b"\1" if sensitive else b"\0"))


@dataclass
class _Job:
    candidate: RefineCandidate
    input_hash: bytes
    analysis: object
    reason: str | None  # lightweight path when set
    prompt: Prompt | None


def plan_refinement(store: VectorStore, collection: str, chain: LLMChain, counter: TokenCounter,
                    *, budget: int, thresholds: RoutingThresholds) -> tuple[list[_Job], int]:
    """The documents to refine (with their prompts), and how many are already up to date."""
    key_tail = (chain_key(chain), PROMPT_VERSION, SCHEMA_VERSION)
    candidates = store.documents_for_refinement(collection)
    pending: list[tuple[RefineCandidate, bytes, bool]] = []
    for c in candidates:
        text = "\n".join(b["text"] for b in c.blocks)
        sensitive = c.pricing_sensitive or looks_pricing_sensitive(text)
        h = input_hash(c, sensitive)
        if c.current_key != (h, *key_tail):
            pending.append((c, h, sensitive))
    chunks = store.chunks_of([c.id for c, _, _ in pending])
    jobs = []
    for c, h, sensitive in pending:
        analysis = analyze(c.title, c.blocks, c.headings)
        reason = route(analysis, thresholds) if chain.models else None
        prompt = None
        if chain.models and reason is None:
            prompt = build_prompt(
                title=c.title, metadata=c.metadata, counter=counter, budget=budget, pricing_sensitive=sensitive,
                chunks=[PromptChunk(cid, path, text, n) for cid, path, text, n in chunks[c.id]])
        jobs.append(_Job(c, h, analysis, reason, prompt))
    return jobs, len(candidates) - len(pending)


def refine_collection(store: VectorStore, collection: str, chain: LLMChain, counter: TokenCounter, *,
                      budget: int, thresholds: RoutingThresholds, run_id: str | None = None,
                      asset: str = "refined_documents", progress=None) -> RefineReport:
    started = time.perf_counter()
    report = RefineReport(collection)
    jobs, report.skipped = plan_refinement(store, collection, chain, counter, budget=budget, thresholds=thresholds)
    report.documents = len(jobs) + report.skipped
    buffer: list = []

    def flush() -> None:
        if buffer:
            rows = [r for r, _, _ in buffer]
            calls = [(r.document_id, c) for r, result, _ in buffer for c in result.calls]
            quarantined = [(r.document_id, r.input_hash, q) for r, result, _ in buffer
                           if result.quarantined for q in result.rejected]
            store.write_refinements(collection, run_id, asset, rows, calls, quarantined)
            buffer.clear()

    def run(job: _Job):
        c = job.candidate
        extractive = lambda: refine_extractively(c.title, c.blocks, c.headings, c.doc_type, job.analysis)  # noqa: E731
        if job.prompt is None:
            from .llm import ChainResult

            return ChainResult(extractive(), EXTRACTIVE, EXTRACTIVE)
        return chain.refine(job.prompt, extractive)

    with ThreadPoolExecutor(max_workers=chain.concurrency) as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        done_count = 0
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures.pop(future)
                result = future.result()
                buffer.append((_row(job, result, chain), result, job))
                _tally(report, job, result)
                done_count += 1
            if len(buffer) >= WRITE_EVERY or not futures:
                flush()
            if progress is not None:
                progress(done_count, len(jobs))
    for model in sorted(chain.unpriced):
        report.warnings.append(f"no price for {model} in LLM_PRICES_FILE: its calls are logged at $0")
    report.seconds = time.perf_counter() - started
    return report


def _row(job: _Job, result, chain: LLMChain) -> RefinementRow:
    route_name = "lightweight" if job.reason else "model"
    return RefinementRow(
        document_id=job.candidate.id, input_hash=job.input_hash, chain=chain_key(chain),
        prompt_version=PROMPT_VERSION, schema_version=SCHEMA_VERSION, model=result.model, link=result.link,
        route=route_name, route_reason=job.reason, refined=result.refined.model_dump(),
        quality_score=job.analysis.quality, analysis=job.analysis.as_dict(),
        cited_chunk_ids=job.prompt.chunk_ids if job.prompt else [],
        prompt_tokens=job.prompt.tokens if job.prompt else 0, budget_tokens=job.prompt.budget if job.prompt else 0)


def _tally(report: RefineReport, job: _Job, result) -> None:
    report.refined += 1
    report.by_link[result.link] += 1
    if job.reason:
        report.lightweight += 1
        report.lightweight_reasons[job.reason.split(" (")[0]] += 1
    if result.quarantined:
        report.quarantined += 1
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
             budget: int, thresholds: RoutingThresholds) -> dict:
    """--dry-run: what would be refined, the prompt tokens, and dollars per model if every
    document went to that model (a completion of ~400 tokens assumed). Calls nothing."""
    jobs, skipped = plan_refinement(store, collection, chain, counter, budget=budget, thresholds=thresholds)
    prompt_tokens = sum(j.prompt.tokens for j in jobs if j.prompt)
    to_model = [j for j in jobs if j.prompt]
    per_model = {}
    for model in chain.models:
        price = chain.prices.get(model)
        per_model[model] = None if price is None else round(
            sum(price.cost(j.prompt.tokens, ESTIMATED_COMPLETION_TOKENS) for j in to_model), 6)
    return {
        "documents": [{"path": j.candidate.path, "tokens": j.prompt.tokens if j.prompt else 0,
                       "route": "lightweight" if j.reason or not j.prompt else "model",
                       "reason": j.reason} for j in jobs],
        "would_refine": len(jobs), "skipped": skipped, "to_model": len(to_model),
        "prompt_tokens": prompt_tokens, "estimated_usd": per_model,
    }
