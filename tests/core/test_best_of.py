"""The best-of-N buffer: N from the observed discard rate, its confidence and bounds."""

from __future__ import annotations

import math
import statistics

import pytest
from pydantic import ValidationError

from dagster_project.core.ingest.corpus import BestOf, ManifestError, load_manifest
from dagster_project.core.refine.best_of import size_buffer


def test_a_default_until_enough_documents_were_observed():
    policy = BestOf(min_samples=10, default_candidates=3)
    buffer = size_buffer("m", [0.9] * 9, policy)
    assert (buffer.candidates, buffer.source, buffer.samples, buffer.discard_rate) == (3, "default", 9, None)
    assert size_buffer("m", [0.9] * 10, policy).source == "observed"


def test_the_buffer_is_rate_plus_z_stddev_over_one_minus_rate():
    rates = [0.0, 0.5, 0.25, 0.25, 0.0, 0.5, 0.25, 0.25]
    policy = BestOf(min_samples=8, confidence=0.9, target=2, max_candidates=16)
    buffer = size_buffer("m", rates, policy)
    rate, stddev = statistics.fmean(rates), statistics.stdev(rates)
    z = statistics.NormalDist().inv_cdf(0.9)
    assert buffer.discard_rate == pytest.approx(0.25) and buffer.stddev == pytest.approx(stddev)
    assert buffer.buffer == pytest.approx((rate + z * stddev) / (1 - rate))
    assert buffer.candidates == math.ceil(2 * (1 + buffer.buffer)) == 4


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("target", [1, 2, 3])
def test_expected_valid_candidates_reach_the_target(rate, target):
    policy = BestOf(min_samples=4, target=target, default_candidates=target, max_candidates=16)
    buffer = size_buffer("m", [rate] * 20, policy)
    assert buffer.candidates * (1 - rate) >= target - 1e-9
    assert buffer.candidates >= target


def test_more_confidence_or_more_spread_asks_for_more_candidates():
    steady, spread = [0.3] * 30, [0.0, 0.6] * 15
    low, high = BestOf(min_samples=5, confidence=0.6, max_candidates=16), BestOf(min_samples=5, confidence=0.99,
                                                                                 max_candidates=16)
    assert size_buffer("m", spread, low).candidates <= size_buffer("m", spread, high).candidates
    assert size_buffer("m", steady, high).candidates < size_buffer("m", spread, high).candidates


def test_the_bounds_hold():
    policy = BestOf(min_samples=2, target=1, default_candidates=2, max_candidates=4)
    assert size_buffer("m", [0.0, 0.0, 0.0], policy).candidates == 1  # never discards: no extra candidate
    assert size_buffer("m", [0.8, 0.9, 0.95], policy).candidates == 4  # capped: the cost bound
    assert size_buffer("m", [1.0, 1.0], policy).candidates == 4  # nothing valid yet: the cap, not a division by 0


def test_inconsistent_bounds_say_what_to_fix(tmp_path):
    with pytest.raises(ValidationError, match="default_candidates"):
        BestOf(target=3, default_candidates=2)
    (tmp_path / "docs").mkdir()
    manifest = tmp_path / "corpus.yaml"
    manifest.write_text("collections:\n  docs:\n    root: docs\n    best_of: {include: ['pricing/**'], confidence: 1.5}\n")
    with pytest.raises(ManifestError, match=r"best_of\.confidence"):
        load_manifest(manifest)
    manifest.write_text("collections:\n  docs:\n    root: docs\n    best_of: {include: ['pricing/**']}\n")
    best_of = load_manifest(manifest).collections["docs"].best_of
    assert best_of.covers("pricing/plans.md") and best_of.covers("pricing/eu/vat.md") and not best_of.covers("faq.md")
