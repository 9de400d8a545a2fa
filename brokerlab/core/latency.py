"""Latency summaries: exact count, mean and max from NumPy, percentiles from an HDR histogram.

An HDR histogram keeps a fixed relative precision (3 significant digits) over a wide range in a
fixed amount of memory, so percentiles of a million latencies cost the same as of a thousand and
no tail is hidden by coarse buckets (the pain Locust users had). Values are recorded in integer
microseconds, the trace's resolution; summaries are reported in milliseconds, as metrics.json says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hdrh.histogram import HdrHistogram

from brokerlab.core.vocabulary import PERCENTILES, SUMMARY_FIELDS

#: Percentile name (as in metrics.json and scenario requirements) -> percentile.
#: The keys of one latency entry in metrics.json, in the order they are written.

LOWEST_US = 1
#: One hour: no sane latency is longer; longer values are clamped into the top bucket (the exact
#: max is still reported) rather than crashing or silently vanishing from the counts.
HIGHEST_US = 3_600_000_000
SIGNIFICANT_FIGURES = 3


def new_histogram() -> HdrHistogram:
    """An empty histogram with the lab's range and precision (microseconds, 3 digits)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def to_microseconds(seconds: np.ndarray) -> np.ndarray:
    """Whole microseconds, the trace's resolution (NaN must be dropped before)."""
    return np.rint(np.asarray(seconds, dtype="float64") * 1e6).astype("int64")


def _lowest_equivalent(histogram: HdrHistogram, values_us: np.ndarray) -> np.ndarray:
    """The bucket each value falls in, as its lowest value: HdrHistogram's own arithmetic on arrays.

    Recording one representative per bucket gives the very same counts as recording every value,
    but needs one Python call per occupied bucket (a few thousand at most) instead of one per
    distinct microsecond value (up to one per message).
    """
    masked = values_us | histogram.sub_bucket_mask
    # bit length; exact in float64 because values are clamped far below 2**53
    pow2ceiling = np.frexp(masked.astype("float64"))[1].astype("int64")
    unit = histogram.unit_magnitude
    bucket = pow2ceiling - unit - (histogram.sub_bucket_half_count_magnitude + 1)
    shift = bucket + unit
    return (values_us >> shift) << shift


def record(values_us: np.ndarray, histogram: HdrHistogram | None = None) -> HdrHistogram:
    """Record integer microseconds into a histogram (a new one unless given).

    Negative values (clock jitter, a harness sending a hair early) are recorded as 0 and values
    above :data:`HIGHEST_US` as :data:`HIGHEST_US`, so every value is counted exactly once.
    """
    histogram = histogram or new_histogram()
    values_us = np.clip(np.asarray(values_us, dtype="int64"), 0, HIGHEST_US)
    if len(values_us) == 0:
        return histogram
    buckets, counts = np.unique(_lowest_equivalent(histogram, values_us), return_counts=True)
    for value, count in zip(buckets.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, count)
    return histogram


@dataclass(frozen=True)
class LatencySummary:
    """One latency kind summarised, in milliseconds; everything but ``count`` is None when empty.

    ``mean``, ``min`` and ``max`` are exact; percentiles come from the histogram (within 0.1 %)
    and are kept within [min, max] so that a reader never sees a p99.9 above the max.
    """

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    p99_9: float | None
    max: float | None
    min: float | None
    #: values above the histogram's range, recorded at its top (their exact max is still reported)
    clamped: int = 0
    #: the histogram itself, for quantile ("nines") charts and merging across runs
    histogram: HdrHistogram = field(default_factory=new_histogram, compare=False, repr=False)

    def get(self, name: str) -> float | None:
        """A statistic by its metrics.json / requirements name (``p99``, ``mean``, ``max`` ...)."""
        if name not in (*SUMMARY_FIELDS, "min"):
            raise KeyError(f"unknown latency statistic {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, float | int | None]:
        """The metrics.json entry: ``mean, p50, p90, p99, p99_9, max, count``."""
        return {name: getattr(self, name) for name in SUMMARY_FIELDS}


def _ms(microseconds: float) -> float:
    """Milliseconds, rounded to the nanosecond so that JSON stays readable."""
    return round(float(microseconds) / 1000.0, 6)


def summarize(seconds: np.ndarray) -> LatencySummary:
    """Summarise latencies given in seconds; NaN entries (no such event) are left out."""
    values = np.asarray(seconds, dtype="float64")
    values = values[~np.isnan(values)]
    histogram = new_histogram()
    if len(values) == 0:
        return LatencySummary(0, None, None, None, None, None, None, None, 0, histogram)
    values_us = to_microseconds(values)
    record(values_us, histogram)
    low, high = float(values.min()) * 1e6, float(values.max()) * 1e6
    by_percentile = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))
    percentiles = {
        name: _ms(min(max(by_percentile[p], low), high)) for name, p in PERCENTILES.items()
    }
    return LatencySummary(
        count=len(values),
        mean=_ms(float(values.mean()) * 1e6),
        max=_ms(high),
        min=_ms(low),
        clamped=int(np.count_nonzero(values_us > HIGHEST_US)),
        histogram=histogram,
        **percentiles,
    )
