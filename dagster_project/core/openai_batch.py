"""OpenAI Batch API jobs (half the price, their own rate limit), shared by the refine step and the
embeddings step: upload a JSONL file, create the batch, poll it, read its output and error
lines. Each job is recorded before and after its creation (db/batches.py), so a restarted step
collects what it submitted instead of submitting again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .db.batches import BatchRequest, OpenBatch

if TYPE_CHECKING:
    import openai

# `openai` is imported in the functions that call it: its import costs about as much as
# Dagster's, at every command's start and in every parse worker's fork server, and an
# ingest with the hash or local embedder never calls it.

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass(frozen=True)
class BatchPolicy:
    min_items: int = 0  # a step with at least this many documents (refine) or texts (embed) uses a batch; 0: never
    poll_seconds: float = 30.0
    max_wait_seconds: float = 86_400.0  # then the step fails; a rerun goes on collecting the same batch


class BatchPending(RuntimeError):
    """A batch is still running (or its server cannot be reached): nothing is lost, a rerun collects it."""


@dataclass
class Submitted:
    row: int
    batch_id: str
    model: str
    requests: dict[str, BatchRequest]  # by custom id: the lines this step waits for


class BatchJobs:
    """The batches of one step: `purpose` (refine | embed), collection and key (what the answers
    are for) over `client`; `explain` turns an API error into one scrubbed sentence."""

    def __init__(self, store, client: openai.OpenAI, explain: Callable[[Exception], str], *, purpose: str,
                 collection: str, key: str, endpoint: str, policy: BatchPolicy, rerun: str) -> None:
        self.store, self.client, self.explain, self.rerun = store, client, explain, rerun  # rerun: what to run again
        self.purpose, self.collection, self.key, self.endpoint, self.policy = purpose, collection, key, endpoint, policy
        self.warnings: list[str] = []

    def open(self) -> list[OpenBatch]:
        return self.store.open_batches(self.purpose, self.collection, self.key)

    def resume_open(self, keys: Callable[[BatchRequest], Iterable[Hashable]]) -> tuple[list[Submitted], set]:
        """The open batches of earlier runs, each resumed for its lines that still answer something
        wanted: `keys` gives what a line answers that is still wanted (texts without a vector,
        documents unchanged since), and a line whose keys an earlier batch covers is skipped. A
        batch left with no line is closed. Returns the batches and the keys they cover."""
        waiting: list[Submitted] = []
        covered: set = set()
        for batch in self.open():
            lines = {cid: r for cid, r in batch.requests.items() if any(k not in covered for k in keys(r))}
            if not lines:  # its answers are stored, or what it answers changed since: nothing to collect
                self.finish(batch.id, "collected" if batch.batch_id else "abandoned", None)
                continue
            waiting.append(self.resume(batch, lines))
            covered.update(k for r in lines.values() for k in keys(r))
        return waiting, covered

    def resume(self, batch: OpenBatch, requests: dict[str, BatchRequest]) -> Submitted:
        """An open batch of an earlier run, to collect `requests` (those still wanted) from."""
        batch_id = batch.batch_id or self._find_or_create(batch.id, batch.input_file_id, look_first=True)
        return Submitted(batch.id, batch_id, batch.model, requests)

    def submit(self, model: str, lines: list[tuple[BatchRequest, dict]]) -> Submitted | None:
        """One batch of (request, body) lines; None (with a warning) if the server refused it, so
        the caller goes live."""
        import openai
        data = "".join(json.dumps({"custom_id": r.custom_id, "method": "POST", "url": self.endpoint, "body": body})
                       + "\n" for r, body in lines).encode()
        try:
            uploaded = self.client.files.create(file=(f"{self.purpose}-{self.collection}.jsonl", data),
                                                purpose="batch")
        except openai.OpenAIError as exc:
            self.warnings.append(f"batch not submitted, {len(lines)} requests go live: {self.explain(exc)}")
            return None
        requests = [r for r, _ in lines]
        row = self.store.record_batch_file(self.purpose, self.collection, model, self.key, uploaded.id, requests)
        batch_id = self._find_or_create(row, uploaded.id, look_first=False)
        if batch_id is None:
            return None
        return Submitted(row, batch_id, model, {r.custom_id: r for r in requests})

    def _find_or_create(self, row: int, input_file_id: str, look_first: bool) -> str | None:
        """The batch made from `input_file_id`: one the server already has (a step killed between
        creating it and recording it), else a new one; recorded before anything else happens."""
        import openai
        try:
            found = next((b for b in self.client.batches.list(limit=100) if b.input_file_id == input_file_id),
                         None) if look_first else None
            batch = found or self.client.batches.create(
                input_file_id=input_file_id, endpoint=self.endpoint, completion_window="24h",
                metadata={"collection": self.collection, "purpose": self.purpose})
        except openai.OpenAIError as exc:
            if look_first:  # it may exist: keep the record, a rerun looks again
                raise BatchPending(f"the batch of input file {input_file_id} could not be looked up: "
                                   f"{self.explain(exc)}; {self.rerun} again to collect it") from None
            self.store.record_batch_finished(row, "abandoned", None)
            self.warnings.append(f"batch not created, its requests go live: {self.explain(exc)}")
            return None
        self.store.record_batch_submitted(row, batch.id)
        return batch.id

    def wait(self, batch_id: str):
        """The batch once it is completed, failed, expired or cancelled."""
        import openai
        deadline = time.monotonic() + self.policy.max_wait_seconds
        while True:
            try:
                batch = self.client.batches.retrieve(batch_id)
            except openai.OpenAIError as exc:
                raise BatchPending(f"batch {batch_id} could not be read ({self.explain(exc)}): it is recorded, "
                                   f"{self.rerun} again to collect it (it is not submitted again)") from None
            if batch.status in TERMINAL:
                if batch.status != "completed":
                    self.warnings.append(f"batch {batch_id} ended {batch.status}: what it did not answer goes live")
                return batch
            if time.monotonic() >= deadline:
                counts = batch.request_counts
                done = f", {counts.completed + counts.failed}/{counts.total} requests done" if counts else ""
                raise BatchPending(f"batch {batch_id} is still {batch.status} after "
                                   f"{self.policy.max_wait_seconds:g}s{done}: {self.rerun} again later to collect "
                                   "it (it is not submitted again)")
            time.sleep(self.policy.poll_seconds)

    def collected(self, waiting: list[Submitted]) -> Iterator[tuple[Submitted, object, Iterator[dict]]]:
        """Each of `waiting` once it has ended, with the batch and its lines."""
        for wait in waiting:
            batch = self.wait(wait.batch_id)
            yield wait, batch, self.lines(batch)

    def lines(self, batch) -> Iterator[dict]:
        """Every line of the batch's output and error files."""
        import openai
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                text = self.client.files.content(file_id).text
            except openai.OpenAIError as exc:
                self.warnings.append(f"batch {batch.id}: file {file_id} not read, its requests go live: "
                                     f"{self.explain(exc)}")
                continue
            for line in text.splitlines():
                if line.strip():
                    yield json.loads(line)

    def finish(self, row: int, status: str, server_status: str | None) -> None:
        self.store.record_batch_finished(row, status, server_status)


def answer_of(line: dict) -> tuple[dict | None, str | None]:
    """(response body, None) for a line answered 200, else (None, what went wrong)."""
    response = line.get("response") or {}
    body = response.get("body") or {}
    if response.get("status_code") == 200 and isinstance(body, dict) and "error" not in body:
        return body, None
    error = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return None, f"batch request answered {response.get('status_code', 'nothing')}" + (
        f" ({message[:200]})" if message else "")
