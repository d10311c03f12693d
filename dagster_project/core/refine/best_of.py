"""Best-of-N refinement: N, the candidates asked for a document the collection's `best_of`
setting covers (ingest/corpus.py: BestOf), sized from the discard rate observed per model and
collection so that the expected number of valid candidates reaches the target at the chosen
confidence."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ..ingest.corpus import BestOf


@dataclass(frozen=True)
class Buffer:
    """N for one model and collection, and how it was reached."""
    model: str
    candidates: int  # N
    buffer: float  # extra candidates per wanted one: N = ceil(target * (1 + buffer)), clamped
    discard_rate: float | None  # observed mean share of invalid candidates per document; None: too few samples
    stddev: float | None
    samples: int
    source: str  # observed | default

    def as_dict(self) -> dict:
        return {"model": self.model, "candidates": self.candidates, "buffer": round(self.buffer, 3),
                "discard_rate": None if self.discard_rate is None else round(self.discard_rate, 3),
                "stddev": None if self.stddev is None else round(self.stddev, 3), "samples": self.samples,
                "source": self.source}


def size_buffer(model: str, discard_rates: list[float], policy: BestOf) -> Buffer:
    """`discard_rates`: per document judged best-of, the share of its candidates that were invalid.
    buffer = (rate + z*stddev) / (1 - rate), so that N = target * (1 + buffer) candidates leave the
    target valid with the rate raised by z standard deviations (z from the confidence); clamped to
    [target, max_candidates]. Fewer than `min_samples` documents: `default_candidates`."""
    samples = len(discard_rates)
    if samples < policy.min_samples:
        return Buffer(model, policy.default_candidates, policy.default_candidates / policy.target - 1,
                      None, None, samples, "default")
    rate = statistics.fmean(discard_rates)
    stddev = statistics.stdev(discard_rates)
    z = statistics.NormalDist().inv_cdf(policy.confidence)
    if rate >= 1.0:  # nothing valid so far: more candidates cannot be sized, only capped
        return Buffer(model, policy.max_candidates, float(policy.max_candidates / policy.target - 1), rate, stddev,
                      samples, "observed")
    buffer = max(0.0, (rate + z * stddev) / (1.0 - rate))
    wanted = math.ceil(policy.target * (1.0 + buffer) - 1e-9)
    candidates = max(policy.target, min(policy.max_candidates, wanted))
    return Buffer(model, candidates, buffer, rate, stddev, samples, "observed")
