"""The trace: what happened in a run, as flat tables every target writes the same way.

Times are seconds (float64) from the run's start, measured on one monotonic clock, kept at
microsecond resolution. A trace is three pandas DataFrames; on disk it is three Parquet files
(``sends.parquet``, ``deliveries.parquet``, ``timeline.parquet``) so that one line of pandas reads
any run, whichever target produced it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from brokerlab.core.vocabulary import OUTCOMES

SENDS_FILE = "sends.parquet"
DELIVERIES_FILE = "deliveries.parquet"
TIMELINE_FILE = "timeline.parquet"

#: Column -> dtype of ``sends.parquet``. ``t_acked`` is NaN when the broker never acknowledged.
SENDS_SCHEMA: dict[str, str] = {
    "msg_id": "string",
    "producer": "int32",
    "seq": "int64",
    "key": "int64",
    "size": "int64",
    "t_intended": "float64",
    "t_sent": "float64",
    "t_acked": "float64",
    "outcome": "category",
    "attempts": "int16",
}
#: Column -> dtype of ``deliveries.parquet``. ``t_done`` is NaN when the consumer died first.
DELIVERIES_SCHEMA: dict[str, str] = {
    "msg_id": "string",
    "consumer": "int32",
    "delivery_no": "int32",
    "t_delivered": "float64",
    "t_done": "float64",
}
#: Column -> dtype of ``timeline.parquet``: one row per interval.
TIMELINE_SCHEMA: dict[str, str] = {
    "t_start": "float64",
    "t_end": "float64",
    "sent": "int64",
    "delivered": "int64",
    "sent_per_s": "float64",
    "delivered_per_s": "float64",
    "backlog": "int64",
    "errors": "int64",
    "faults": "string",
    # What the lab's own machine was doing (real runs; NaN for the simulator and when unknown):
    "lab_cpu": "float64",  # busiest lab process (main or worker), percent of one core
    "broker_cpu": "float64",  # the broker process, percent of one core
    "loop_lag_ms": "float64",  # worst lateness of the lab's event loop
    "machine_cpu": "float64",  # all of the machine's CPUs, percent busy (every process)
    # share of the machine's CPU time its virtual machine's host took (steal), percent
    "machine_steal": "float64",
}
#: The timeline columns :func:`with_resources` fills from ``adapters.monitor``'s samples.
RESOURCE_COLUMNS = ("lab_cpu", "broker_cpu", "loop_lag_ms", "machine_cpu", "machine_steal")

#: The broker's own view, sampled during a real run (columns only present when the target
#: reports them): ``broker_backlog`` = messages the broker holds for the group that no consumer
#: has received (Redis XINFO GROUPS lag, JetStream num_pending, RabbitMQ ready messages, Kafka
#: end offset minus committed offset); ``broker_unacked`` = delivered and not yet acknowledged
#: (Redis pending entries, JetStream num_ack_pending). Each interval holds the last sample taken
#: at or before its end (NaN before the first).
BROKER_COLUMNS: tuple[str, ...] = ("broker_backlog", "broker_unacked")

#: key value written when a message has no key
NO_KEY = -1


def _round_us(values: np.ndarray) -> np.ndarray:
    """Microsecond resolution, as the contract says; NaN stays NaN."""
    return np.round(values.astype("float64"), 6)


def msg_ids(producers: np.ndarray, seqs: np.ndarray) -> pd.arrays.ArrowStringArray:
    """The lab's message ids, ``producer:seq``, built for whole columns at once.

    Joined in Arrow, the storage of the ``string`` dtype: no Python string per row (NumPy's
    ``char.add`` made half a million of them, a quarter of a simulated run's trace time).
    """
    joined = pc.binary_join_element_wise(
        pa.array(np.asarray(producers)).cast(pa.string()),
        pa.array(np.asarray(seqs)).cast(pa.string()),
        ":",
    )
    return pd.arrays.ArrowStringArray(joined.cast(pa.large_string()))


def make_sends(
    producer: np.ndarray,
    seq: np.ndarray,
    key: np.ndarray,
    size: np.ndarray,
    t_intended: np.ndarray,
    t_sent: np.ndarray,
    t_acked: np.ndarray,
    outcome: np.ndarray,
    attempts: np.ndarray,
) -> pd.DataFrame:
    """Build a sends table from columns (the fast path for the simulator and harness)."""
    frame = pd.DataFrame(
        {
            "msg_id": msg_ids(producer, seq),
            "producer": producer,
            "seq": seq,
            "key": key,
            "size": size,
            "t_intended": _round_us(t_intended),
            "t_sent": _round_us(t_sent),
            "t_acked": _round_us(t_acked),
            "outcome": pd.Categorical(outcome, categories=OUTCOMES),
            "attempts": attempts,
        }
    )
    return frame.astype(SENDS_SCHEMA)


def make_deliveries(
    msg_id: np.ndarray,
    consumer: np.ndarray,
    delivery_no: np.ndarray,
    t_delivered: np.ndarray,
    t_done: np.ndarray,
) -> pd.DataFrame:
    """Build a deliveries table from columns."""
    frame = pd.DataFrame(
        {
            "msg_id": msg_id,
            "consumer": consumer,
            "delivery_no": delivery_no,
            "t_delivered": _round_us(t_delivered),
            "t_done": _round_us(t_done),
        }
    )
    return frame.astype(DELIVERIES_SCHEMA)


def empty(schema: dict[str, str]) -> pd.DataFrame:
    """An empty table with the right columns and dtypes."""
    frame = pd.DataFrame({name: pd.Series(dtype="object") for name in schema})
    if "outcome" in schema:
        frame["outcome"] = pd.Categorical([], categories=OUTCOMES)
    return frame.astype(schema)


@dataclass(frozen=True)
class FaultWindow:
    """When a fault was active, for timelines and shaded report figures."""

    action: str
    target: str
    t_start: float
    t_end: float


@dataclass
class Trace:
    """A run's sends, deliveries and timeline, whichever target produced them."""

    sends: pd.DataFrame
    deliveries: pd.DataFrame
    timeline: pd.DataFrame

    def write(self, folder: str | Path) -> None:
        """Write the three Parquet files into ``folder``."""
        folder = Path(folder)
        self.sends.to_parquet(folder / SENDS_FILE, index=False)
        self.deliveries.to_parquet(folder / DELIVERIES_FILE, index=False)
        self.timeline.to_parquet(folder / TIMELINE_FILE, index=False)

    @classmethod
    def read(cls, folder: str | Path) -> Trace:
        """Read a run folder's trace back (one call, any target)."""
        folder = Path(folder)
        return cls(
            sends=pd.read_parquet(folder / SENDS_FILE),
            deliveries=pd.read_parquet(folder / DELIVERIES_FILE),
            timeline=pd.read_parquet(folder / TIMELINE_FILE),
        )


def timeline_interval(duration: float) -> float:
    """Pick an interval that gives a readable timeline: about 200 rows, never under 10 ms."""
    if duration <= 0:
        return 1.0
    raw = max(duration / 200, 0.01)
    # round to 1, 2 or 5 × a power of ten so axes read naturally
    exponent = np.floor(np.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * 10**exponent:
            return float(step * 10**exponent)
    return float(10 ** (exponent + 1))


def first_deliveries(sends: pd.DataFrame, deliveries: pd.DataFrame) -> np.ndarray:
    """When each sent message was first received (NaN: never), one entry per sends row.

    ``delivery_no`` cannot say which row is a message's first: a retried publish stored twice is
    a second copy whose deliveries start again at 1, so counting rows with ``delivery_no == 1``
    counts such a message twice. Deliveries of ids that were never sent are left out.
    """
    first = np.full(len(sends), np.inf)
    if len(deliveries):
        ids = pa.array(sends["msg_id"], from_pandas=True).cast(pa.large_string())
        found = pa.array(deliveries["msg_id"], from_pandas=True).cast(pa.large_string())
        rows = pc.index_in(found, value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False)
        sent = rows >= 0
        t_delivered = deliveries["t_delivered"].to_numpy(dtype="float64")
        np.minimum.at(first, rows[sent].astype("int64"), t_delivered[sent])
    first[np.isinf(first)] = np.nan
    return first


def build_timeline(
    sends: pd.DataFrame,
    deliveries: pd.DataFrame,
    faults: list[FaultWindow] | None = None,
    interval: float | None = None,
    errors: np.ndarray | None = None,
    resources: ResourceSamples | None = None,
    first: np.ndarray | None = None,
    broker: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-interval rates and consumer lag, computed the same way for every target.

    ``backlog`` is the consumer lag at the interval's end: messages sent so far that no consumer
    has yet received (each message counted once, however many copies or redeliveries it had).
    ``errors`` counts failed or unknown publishes started in the interval (plus any
    target-specific error times passed in). ``faults`` names the faults active in the interval.
    The :data:`RESOURCE_COLUMNS` come from ``resources`` (see
    :func:`with_resources`); without them (the simulator) they are NaN. ``first`` is
    :func:`first_deliveries` when the target already knows it (the simulator does, by message
    index, and skips the id join). ``broker`` (column ``t``
    plus any of :data:`BROKER_COLUMNS`) adds the broker's own view.
    """
    faults = faults or []
    t_sent = sends["t_sent"].to_numpy(dtype="float64")
    t_all = deliveries["t_delivered"].to_numpy(dtype="float64") if len(deliveries) else np.empty(0)
    t_first = first_deliveries(sends, deliveries) if first is None else first
    t_first = t_first[~np.isnan(t_first)]
    ends = [t_sent.max() if len(t_sent) else 0.0, t_all.max() if len(t_all) else 0.0]
    ends += [w.t_end for w in faults]
    horizon = float(np.nanmax(ends)) if ends else 0.0
    step = interval or timeline_interval(horizon)
    edges = np.arange(0.0, horizon + step, step)
    if len(edges) < 2:
        edges = np.array([0.0, step])
    sent, _ = np.histogram(t_sent, bins=edges)
    delivered, _ = np.histogram(t_all, bins=edges)
    # isin on the column itself: no string per row for a categorical outcome column
    failed_mask = sends["outcome"].isin(["failed", "unknown"]).to_numpy(dtype=bool)
    error_times = t_sent[failed_mask]
    if errors is not None:
        error_times = np.concatenate([error_times, errors])
    errs, _ = np.histogram(error_times, bins=edges)
    sent_cum = np.searchsorted(np.sort(t_sent), edges[1:], side="right")
    first_cum = np.searchsorted(np.sort(t_first), edges[1:], side="right")
    labels = []
    for lo, hi in itertools.pairwise(edges):
        # An instant fault (a connection reset) marks the interval it falls in.
        active = sorted(
            {
                f"{w.action}:{w.target}"
                for w in faults
                if w.t_start < hi and (w.t_end > lo or (w.t_end == w.t_start >= lo))
            }
        )
        labels.append(",".join(active))
    frame = pd.DataFrame(
        {
            "t_start": edges[:-1],
            "t_end": edges[1:],
            "sent": sent,
            "delivered": delivered,
            "sent_per_s": sent / step,
            "delivered_per_s": delivered / step,
            "backlog": np.maximum(sent_cum - first_cum, 0),
            "errors": errs,
            "faults": labels,
            **{column: np.full(len(labels), np.nan) for column in RESOURCE_COLUMNS},
        }
    )
    frame = frame.astype(TIMELINE_SCHEMA)
    if broker is not None and len(broker):
        samples = broker.sort_values("t", kind="stable")
        last = np.searchsorted(samples["t"].to_numpy(dtype="float64"), edges[1:], side="right") - 1
        for column in BROKER_COLUMNS:
            if column in samples:
                values = samples[column].to_numpy(dtype="float64")
                frame[column] = np.where(last >= 0, values[np.maximum(last, 0)], np.nan)
    return frame if resources is None else with_resources(frame, resources)


@dataclass(frozen=True)
class ResourceSamples:
    """What the lab measured of itself during a real run, one row per sampling window.

    Window ``i`` is ``[t_start[i], t_end[i])`` on the run's clock; the values are the lab's
    busiest process's CPU and the broker's CPU over the window (percent of one core; NaN when
    not known), the worst event-loop lateness seen in it (milliseconds), and how busy the whole
    machine's CPUs were (percent of all of them; NaN when not sampled).
    """

    t_start: np.ndarray
    t_end: np.ndarray
    lab_cpu: np.ndarray
    broker_cpu: np.ndarray
    loop_lag_ms: np.ndarray
    machine_cpu: np.ndarray | None = None
    machine_steal: np.ndarray | None = None


def with_resources(timeline: pd.DataFrame, samples: ResourceSamples) -> pd.DataFrame:
    """The timeline with :data:`RESOURCE_COLUMNS` filled in from ``samples``.

    Each interval gets the worst value of the sampling windows that overlap it: samples come
    every quarter second or so while intervals can be 10 ms, and a saturated moment must not be
    averaged away. Intervals no window overlaps stay NaN.
    """
    frame = timeline.copy()
    lo = frame["t_start"].to_numpy(dtype="float64")
    hi = frame["t_end"].to_numpy(dtype="float64")
    order = np.argsort(samples.t_start, kind="stable")
    starts, ends = samples.t_start[order], samples.t_end[order]
    for column in RESOURCE_COLUMNS:
        sampled = getattr(samples, column)
        if sampled is None:
            sampled = np.full(len(samples.t_start), np.nan)
        values = np.asarray(sampled, dtype="float64")[order]
        filled = np.full(len(frame), np.nan)
        for row in range(len(frame)):
            overlapping = values[(starts < hi[row]) & (ends > lo[row])]
            overlapping = overlapping[~np.isnan(overlapping)]
            if len(overlapping):
                filled[row] = overlapping.max()
        frame[column] = filled
    return frame.astype(TIMELINE_SCHEMA)


@dataclass
class TargetResult:
    """What a target (the simulator or a real broker) hands back to the runner.

    ``info`` holds facts worth recording in ``run.json`` (broker version, how it was started; never
    credentials); ``warnings`` are shown in the summary (e.g. the harness fell behind).
    """

    trace: Trace
    faults: list[FaultWindow]
    info: dict[str, object]
    warnings: list[str]
