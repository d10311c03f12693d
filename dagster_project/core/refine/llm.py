"""The LLM chain: OpenAI-compatible chat models tried in order (primary, then fallbacks),
each answer validated against the refined schema with one repair attempt, and the extractive
refiner as the last link that never fails. Every call is recorded with tokens and dollars."""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from ..openai_errors import ErrorExplainer, server_place
from .prompts import Prompt
from .schema import RefinedDocument

if TYPE_CHECKING:
    import openai

# `openai` is imported in the functions that call it: its import costs about as much as
# Dagster's, at every command's start and in every parse worker's fork server, and an
# ingest with the hash or local embedder never calls it.

EXTRACTIVE = "extractive"
BATCH_DISCOUNT = 0.5  # the Batch API bills half the live price
CANDIDATE_TEMPERATURE = 0.8  # best-of-N: candidates must differ to be worth choosing between
_HINTS = {
    "timeout": "raise LLM_TIMEOUT or lower LLM_CONCURRENCY",
    "connection": "check OPENAI_BASE_URL (or LLM_BASE_URL) and that the server is up",
    401: "check OPENAI_API_KEY",
    403: "check that the key may use this model",
    404: "check LLM_MODEL / LLM_FALLBACK_MODELS and the base URL (it usually ends in /v1)",
    "rate_limit": "lower LLM_CONCURRENCY or check the account's rate limits",
    "server": "the server is failing; try again later",
    "other": "check the model name and the server's message",
}


class LLMConfigError(ValueError):
    """The LLM settings or price table are unusable; the message says what to fix."""


class ChainStopped(Exception):
    """The caller's stop event was set: no further request was sent for this prompt."""


# Called with (model, link, attempt) just before each request goes to the server, once the
# request is sure to be sent (not when the chain stops first): the refine step journals it there.
# Raising (ChainStopped, say) keeps the request from being sent.
Sent = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        live = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return live * BATCH_DISCOUNT if batch else live


def load_prices(path: Path | None) -> dict[str, Price]:
    """`models: {name: {input_per_million: x, output_per_million: y}}` from a YAML file."""
    if path is None or not Path(path).exists():
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return {name: Price(float(p["input_per_million"]), float(p["output_per_million"]))
                for name, p in (raw.get("models") or {}).items()}
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMConfigError(f"price table {path} is malformed ({exc}): each model needs "
                             "input_per_million and output_per_million") from None


@dataclass
class CallRecord:
    model: str
    link: str  # primary | fallback
    attempt: str  # answer | repair
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    outcome: str = "ok"  # ok | invalid | error (| lost: logged by a later run, db/refinements.py)
    error: str | None = None
    batch_id: str | None = None  # answered through this Batch API job (billed at the batch price)
    unavailable: bool = False  # the error says the model could not be reached, not that it refused this prompt


@dataclass
class RejectedAnswer:
    model: str
    link: str
    raw: str
    errors: list[str]


@dataclass
class Candidate:
    """One of the N answers of a best-of-N request."""
    model: str
    raw: str
    refined: RefinedDocument | None
    errors: list[str]
    score: float | None = None
    kept: bool = False
    reason: str | None = None  # why it was discarded


@dataclass
class ChainResult:
    refined: RefinedDocument
    model: str  # the model that produced `refined`, or "extractive"
    link: str  # primary | fallback | extractive
    calls: list[CallRecord] = field(default_factory=list)
    rejected: list[RejectedAnswer] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # best-of-N: every candidate, kept or not

    @property
    def asked(self) -> int:
        """How many candidates the kept refinement was chosen from."""
        return sum(1 for c in self.candidates if c.model == self.model) or 1

    @property
    def quarantined(self) -> bool:
        """Every model link answered, and no answer was valid even after repair."""
        return self.link == EXTRACTIVE and bool(self.rejected) and all(c.outcome != "error" for c in self.calls
                                                                      if c.attempt == "answer")

    @property
    def awaiting_model(self) -> bool:
        """The extractive link answered because a model could not be reached (an outage, a bad
        key, rate limits or server errors after retries), not by design: the model is still owed."""
        return self.link == EXTRACTIVE and any(c.unavailable for c in self.calls)


def _parse_duration(value: str) -> float:
    """OpenAI reset headers: '1s', '6m0s', '20ms', '0.5s'."""
    total = 0.0
    for amount, unit in re.findall(r"([\d.]+)(ms|s|m|h)", value or ""):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


class RateGate:
    """Slows every worker down before a 429: when the server says the request or token budget
    is nearly spent, calls wait until its reset time."""

    def __init__(self, reserve: int) -> None:
        self._reserve = reserve
        self._until = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            delay = self._until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def update(self, headers: Mapping[str, str]) -> None:
        for kind, reserve in (("requests", self._reserve), ("tokens", self._reserve * 2000)):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is None or not remaining.strip().isdigit() or int(remaining) > reserve:
                continue
            reset = _parse_duration(headers.get(f"x-ratelimit-reset-{kind}", "1s")) or 1.0
            with self._lock:
                self._until = max(self._until, time.monotonic() + min(reset, 60.0))


class LLMChain:
    def __init__(self, *, models: list[str], base_url: str | None, api_key: str | None,
                 prices: dict[str, Price], timeout: float = 60.0, max_retries: int = 4,
                 concurrency: int = 4) -> None:
        import openai
        self.models = models
        self.prices = prices
        self.concurrency = max(1, concurrency)
        self._client = None
        if models:
            if not api_key and not base_url:
                raise LLMConfigError("LLM_MODEL is set but neither OPENAI_API_KEY nor OPENAI_BASE_URL is: "
                                     "set one, or unset LLM_MODEL to use the extractive refiner only")
            self._client = openai.OpenAI(api_key=api_key or "no-key", base_url=base_url,
                                         max_retries=max_retries, timeout=timeout)
        self._errors = ErrorExplainer(where=server_place(base_url, "LLM server"), secret=api_key,
                                      timeout=timeout, max_retries=max_retries)
        self._json_schema_ok: dict[str, bool] = {}  # per model: does the server take json_schema?
        self._n_ok: dict[str, bool] = {}  # per model: does the server take `n` (several choices per request)?
        self.gate = RateGate(reserve=self.concurrency)
        # Requests in flight never exceed `concurrency`, however many threads call refine().
        self._in_flight = threading.BoundedSemaphore(self.concurrency)
        self.unpriced: set[str] = set()

    def scrub(self, text: str) -> str:
        """`text` without the API key or anything that looks like one."""
        return self._errors.scrub(text)

    @property
    def client(self) -> openai.OpenAI:
        """The configured client (the Batch API uses it too)."""
        return self._client

    def explain(self, exc: Exception) -> str:
        return self._errors.explain(exc, _HINTS)

    def request_body(self, model: str, messages: list[dict]) -> dict:
        """A chat request as the live path sends it first (for a Batch API line): structured
        output, unless the server is known to refuse it."""
        response_format = ({"type": "json_schema", "json_schema": {"name": "refined_document",
                                                                   "schema": strict_schema(), "strict": True}}
                           if self._json_schema_ok.get(model, True) else {"type": "json_object"})
        return {"model": model, "messages": messages, "temperature": 0, "response_format": response_format}

    def validate(self, raw: str) -> tuple[RefinedDocument | None, list[str]]:
        return self._validate(raw)

    @property
    def links(self) -> list[str]:
        return [*self.models, EXTRACTIVE]

    def refine(self, prompt: Prompt, extractive: Callable[[], RefinedDocument],
               stop: threading.Event | None = None, *, candidates: Mapping[str, int] | None = None,
               score: Callable[[RefinedDocument], float] | None = None, sent: Sent | None = None) -> ChainResult:
        """Raises ChainStopped instead of sending a request once `stop` is set. `candidates`: N per
        model for best-of-N (its first answer is N candidates, the valid one that `score`s best is
        kept; if none is valid, the first is repaired as usual). `sent` is told of each request
        right before it is sent (see `Sent`)."""
        calls: list[CallRecord] = []
        rejected: list[RejectedAnswer] = []
        pool: list[Candidate] = []
        for position, model in enumerate(self.models):
            link = "primary" if position == 0 else "fallback"
            messages = list(prompt.messages)
            wanted = (candidates or {}).get(model, 1)
            for attempt in ("answer", "repair"):
                if attempt == "answer" and wanted > 1:
                    records, raws = self._call_candidates(model, link, messages, wanted, stop, sent)
                    calls.extend(records)
                    if not raws:
                        break  # the model is unavailable: no repair, next link
                    best = self._pick(model, raws, score or (lambda _: 0.0), pool)
                    if best is not None:
                        return ChainResult(best.refined, model, link, calls, rejected, pool)
                    for record in records:
                        record.outcome = "invalid" if record.outcome == "ok" else record.outcome
                    tried = [c for c in pool if c.model == model]
                    rejected.extend(RejectedAnswer(model, link, c.raw, c.errors) for c in tried)
                    raw, errors = tried[0].raw, tried[0].errors
                else:
                    record, raw = self._call(model, link, attempt, messages, stop, sent)
                    calls.append(record)
                    if record.outcome == "error":
                        break  # the model is unavailable: no repair, next link
                    refined, errors = self._validate(raw)
                    if refined is not None:
                        return ChainResult(refined, model, link, calls, rejected, pool)
                    record.outcome = "invalid"
                    record.error = "; ".join(errors)[:500]
                    rejected.append(RejectedAnswer(model, link, raw, errors))
                messages = messages + [
                    {"role": "assistant", "content": raw[:4000]},
                    {"role": "user", "content": "That answer is not valid against the schema: "
                     + "; ".join(errors)[:1500] + ". Answer again with only the corrected JSON object."},
                ]
        return ChainResult(extractive(), EXTRACTIVE, EXTRACTIVE, calls, rejected, pool)

    def _pick(self, model: str, raws: list[str], score: Callable[[RefinedDocument], float],
              pool: list[Candidate]) -> Candidate | None:
        """Validates and scores each candidate into `pool`; the best valid one is marked kept (the
        first of equals), the others get the reason they were discarded."""
        mine = []
        for raw in raws:
            refined, errors = self._validate(raw)
            mine.append(Candidate(model, raw, refined, errors, None if refined is None else score(refined)))
        pool.extend(mine)
        valid = [c for c in mine if c.refined is not None]
        best = max(valid, key=lambda c: c.score, default=None)
        for c in mine:
            if c.refined is None:
                c.reason = "invalid: " + "; ".join(c.errors)[:1000]
            elif c is not best:
                c.reason = f"scored {c.score:.3f}, below the kept candidate's {best.score:.3f}"
        if best is not None:
            best.kept = True
        return best

    def _call_candidates(self, model: str, link: str, messages: list[dict], n: int,
                         stop: threading.Event | None, sent: Sent | None = None) -> tuple[list[CallRecord], list[str]]:
        """N answers: one request with `n` where the server takes it (the prompt is paid once),
        topped up by parallel single requests for whatever it did not return."""
        records, raws = [], []
        if self._n_ok.get(model, True):
            record, raws = self._request(model, link, "answer", messages, stop, n, CANDIDATE_TEMPERATURE, sent)
            records.append(record)
            if record.outcome == "error":
                return records, []
        missing = n - len(raws)
        if missing > 0:
            with ThreadPoolExecutor(max_workers=min(missing, self.concurrency)) as pool:
                for record, more in pool.map(lambda _: self._request(model, link, "answer", messages, stop, 1,
                                                                       CANDIDATE_TEMPERATURE, sent),
                                             range(missing)):
                    records.append(record)
                    raws.extend(more)
        return records, raws[:n]

    def _call(self, model: str, link: str, attempt: str, messages: list[dict],
              stop: threading.Event | None = None, sent: Sent | None = None) -> tuple[CallRecord, str]:
        record, contents = self._request(model, link, attempt, messages, stop, 1, sent=sent)
        return record, contents[0] if contents else ""

    def _request(self, model: str, link: str, attempt: str, messages: list[dict],
                 stop: threading.Event | None, n: int, temperature: float = 0.0,
                 sent: Sent | None = None) -> tuple[CallRecord, list[str]]:
        """One request for `n` choices (fewer if the server ignores `n`); none after an error."""
        import openai
        record = CallRecord(model, link, attempt)
        started = time.perf_counter()
        try:
            with self._in_flight:
                # Checked once a slot is free: threads queued for a slot would otherwise each
                # send one more request after the caller gave up.
                if stop is not None and stop.is_set():
                    raise ChainStopped
                self.gate.wait()  # inside the slot: a thread queued for a slot honours a gate set meanwhile
                if sent is not None:
                    sent(model, link, attempt)  # last: only a request that is surely sent is journaled
                raw_response = self._create(model, messages, n, temperature)
            self.gate.update({k.lower(): v for k, v in raw_response.headers.items()})
            completion = raw_response.parse()
            # An answer is stored (as refined JSON, or raw in the quarantine) and may be quoted
            # in errors: a server or model echoing the key must not put it there.
            contents = [self._errors.scrub(choice.message.content or "") for choice in completion.choices[:n]]
            if not contents:
                raise ValueError("no choices")
            usage = completion.usage
            record.prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
            record.completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        except ChainStopped:
            raise
        except openai.OpenAIError as exc:
            contents = []
            record.outcome, record.error = "error", self._errors.explain(exc, _HINTS)
            record.unavailable = _unavailable(exc)
        except Exception as exc:  # an unreadable body: the model link failed, the chain goes on
            contents = []
            record.outcome, record.error = "error", self._errors.scrub(f"unreadable answer ({type(exc).__name__})")
            record.unavailable = True
        record.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        price = self.prices.get(model)
        if price is None:
            self.unpriced.add(model)
        else:
            record.cost_usd = price.cost(record.prompt_tokens, record.completion_tokens)
        return record, contents

    def _create(self, model: str, messages: list[dict], n: int = 1, temperature: float = 0.0):
        """Structured output when the server takes it; JSON mode where it does not. `n` > 1 asks
        for several choices, unless the server refused it once (then one choice is asked)."""
        import openai
        if n > 1 and self._n_ok.get(model, True):  # checked in the slot: requests queued meanwhile learn
            try:
                return self._create_one(model, messages, temperature, n=n)
            except openai.BadRequestError as exc:
                if not re.search(r"""(?<![a-z_])['"`]?n['"`]?(?![a-z_])""", str(exc)):
                    raise
                self._n_ok[model] = False
        return self._create_one(model, messages, temperature)

    def _create_one(self, model: str, messages: list[dict], temperature: float, **extra):
        import openai
        create = functools.partial(self._client.chat.completions.with_raw_response.create, **extra)
        if self._json_schema_ok.get(model, True):
            try:
                response = create(model=model, messages=messages, temperature=temperature, response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "refined_document", "schema": strict_schema(), "strict": True}})
                self._json_schema_ok[model] = True
                return response
            except openai.BadRequestError as exc:
                if "response_format" not in str(exc) and "json_schema" not in str(exc):
                    raise
                self._json_schema_ok[model] = False
        return create(model=model, messages=messages, temperature=temperature,
                      response_format={"type": "json_object"})

    @staticmethod
    def _validate(raw: str) -> tuple[RefinedDocument | None, list[str]]:
        text = raw.strip()
        if text.startswith("```"):  # some servers fence JSON even in JSON mode
            text = text.strip("`").removeprefix("json").strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return None, [f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"]
        try:
            return RefinedDocument.model_validate(data), []
        except ValidationError as exc:
            return None, [f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors()[:10]]

    def check(self) -> list[dict]:
        """One tiny call per configured model: does it answer?"""
        results = []
        for model in self.models:
            record, _ = self._call(model, "check", "answer", [
                {"role": "user", "content": 'Answer with the JSON object {"ok": true}.'}])
            results.append({"model": model, "ok": record.outcome == "ok", "latency_ms": record.latency_ms,
                            "error": record.error})
        return results


def _unavailable(exc: Exception) -> bool:
    """Errors that fixing the server, the key, the model name or the quota cures, as opposed to a
    request refused for its content (400, 413, 422), which the same prompt would meet again."""
    import openai
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (401, 403, 404, 408, 409, 429) or exc.status_code >= 500
    return False


@functools.cache
def strict_schema() -> dict:
    """The schema in the subset strict structured outputs accept: no string-length keywords."""
    dropped = ("minLength", "maxLength", "title", "description")

    def strip(node):
        if isinstance(node, list):
            return [strip(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key in ("properties", "$defs"):  # names here are fields, not keywords
                out[key] = {name: strip(sub) for name, sub in value.items()}
            elif key not in dropped:
                out[key] = strip(value)
        return out

    return strip(RefinedDocument.model_json_schema())
