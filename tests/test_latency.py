"""Latency summaries: HDR percentiles within their precision, exact mean and max, no crashes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brokerlab.core.latency import HIGHEST_US, new_histogram, record, summarize

PRECISION = 1e-3  # three significant digits


def test_uniform_microseconds_give_known_percentiles():
    """1..1000 µs: p50 500 µs and p99 990 µs within HDR precision; mean and max exact."""
    summary = summarize(np.arange(1, 1001) / 1e6)
    assert summary.count == 1000
    assert summary.p50 == pytest.approx(0.5, rel=PRECISION)
    assert summary.p90 == pytest.approx(0.9, rel=PRECISION)
    assert summary.p99 == pytest.approx(0.99, rel=PRECISION)
    assert summary.p99_9 == pytest.approx(0.999, rel=PRECISION)
    assert summary.mean == 0.5005
    assert summary.max == 1.0
    assert summary.min == 0.001


def test_bucketed_recording_matches_recording_every_value():
    """Recording one value per bucket gives the same histogram as one record call per value."""
    values = np.rint(np.random.default_rng(3).lognormal(8, 2, 20_000)).astype("int64")
    values = np.clip(values, 0, HIGHEST_US)
    fast = record(values)
    slow = new_histogram()
    for value in values.tolist():
        slow.record_value(value)
    assert fast.get_total_count() == slow.get_total_count()
    percentiles = [1, 10, 50, 75, 90, 99, 99.9, 99.99, 100]
    assert fast.get_percentile_to_value_dict(percentiles) == slow.get_percentile_to_value_dict(
        percentiles
    )


def test_values_beyond_the_range_are_clamped_not_dropped():
    """A latency over an hour does not crash, is still counted, and the max stays exact."""
    summary = summarize(np.array([0.001, 0.002, 7200.0]))
    assert summary.count == 3
    assert summary.clamped == 1
    assert summary.max == 7_200_000.0
    assert summary.p99_9 <= summary.max


def test_percentiles_never_exceed_the_exact_max():
    """A bucket's upper edge is not reported above the largest value actually seen."""
    summary = summarize(np.array([0.123456789]))
    assert summary.p50 == summary.p99_9 == summary.max == pytest.approx(123.456789)


def test_negative_values_are_counted_at_zero():
    """A send a hair before its intended time still counts; min and mean keep the sign."""
    summary = summarize(np.array([-0.000002, 0.000010]))
    assert summary.count == 2
    assert summary.min == -0.002
    assert summary.mean == pytest.approx(0.004)
    assert summary.p50 == 0.0  # recorded at zero


def test_missing_values_are_left_out():
    """NaN (no such event, e.g. never delivered) is not a latency."""
    summary = summarize(np.array([0.001, math.nan]))
    assert summary.count == 1
    assert summary.max == 1.0


def test_no_values_give_nulls():
    """An empty kind reports count 0 and None for every statistic."""
    summary = summarize(np.array([]))
    assert summary.to_dict() == {
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "p99_9": None,
        "max": None,
        "count": 0,
    }
