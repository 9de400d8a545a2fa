"""The analysis: one code path that turns any target's trace into the run's metrics and verdict.

The simulator and every real broker write the same :class:`~brokerlab.core.trace.Trace`; this module
is the only place that judges one. It runs the delivery checks (:mod:`brokerlab.core.checks`),
summarises the four latencies (:mod:`brokerlab.core.latency`), measures throughput, and holds the
result against the scenario's requirements. The :class:`Analysis` it returns feeds metrics.json,
the console summary, reports and notebooks alike, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brokerlab.core.checks import DeliveryCheck, check_delivery
from brokerlab.core.latency import LatencySummary, summarize
from brokerlab.core.scenario import Requirements, Scenario
from brokerlab.core.trace import Trace
from brokerlab.core.vocabulary import LATENCY_KINDS, SUMMARY_FIELDS

__all__ = [
    "Analysis",
    "DeliveryCheck",
    "RequirementResult",
    "Throughput",
    "analyze",
    "check_delivery",
    "evaluate_requirements",
    "latency_table",
    "measure_latency",
    "measure_throughput",
]


@dataclass(frozen=True)
class Throughput:
    """Messages per second: offered by the scenario, and achieved after warm-up.

    ``sent`` and ``delivered`` are None when the measuring window has no length (e.g. a single
    message); ``delivered`` is 0.0 when nothing was delivered.
    """

    offered: float
    sent: float | None
    delivered: float | None

    def to_dict(self) -> dict[str, float | None]:
        """The ``throughput_per_s`` object of metrics.json."""
        return {"offered": self.offered, "sent": self.sent, "delivered": self.delivered}


@dataclass(frozen=True)
class RequirementResult:
    """One requirement held against the run.

    ``bound`` and ``measured`` are in the unit the name implies (ms for latencies, messages per
    second for throughput, messages for counts). ``ok`` is None for what a run cannot measure
    (replay, message size: judged from a capability table), and False when the run gave no data.
    """

    name: str
    bound: float | int | bool | None
    measured: float | int | None
    ok: bool | None

    def to_dict(self) -> dict[str, Any]:
        """One entry of the ``requirements`` list in metrics.json."""
        return {"name": self.name, "bound": self.bound, "measured": self.measured, "ok": self.ok}


@dataclass(frozen=True)
class Analysis:
    """Everything the lab concludes from one run; :meth:`to_metrics` is metrics.json."""

    target: str
    scenario: str
    seed: int | None
    duration_s: float
    checks: DeliveryCheck
    latency: dict[str, LatencySummary]
    throughput: Throughput
    requirements: tuple[RequirementResult, ...]
    #: things a reader should know that are not requirement failures (e.g. unexpected ids)
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``pass`` when every requirement the run could judge was met, else ``fail``."""
        return "pass" if all(r.ok for r in self.requirements if r.ok is not None) else "fail"

    @property
    def unexpected(self) -> int:
        """Delivered ids that were never sent: always a bug, reported apart from the counts."""
        return self.checks.unexpected

    def to_metrics(self) -> dict[str, Any]:
        """The metrics.json object: exactly the contract's keys, JSON-ready (None for null)."""
        return {
            "target": self.target,
            "scenario": self.scenario,
            "seed": self.seed,
            "duration_s": float(self.duration_s),
            "counts": self.checks.counts(),
            "latency_ms": {kind: self.latency[kind].to_dict() for kind in LATENCY_KINDS},
            "throughput_per_s": self.throughput.to_dict(),
            "requirements": [r.to_dict() for r in self.requirements],
            "verdict": self.verdict,
        }


def measure_latency(
    sends: pd.DataFrame, checks: DeliveryCheck, warmup: float
) -> dict[str, LatencySummary]:
    """The four latencies of metrics.json, for messages intended at or after ``warmup``.

    - end_to_end = first delivery - intended send time (open loop: a harness that falls behind
      cannot hide the queueing it caused);
    - completion = earliest finished processing - intended send time;
    - publish = broker acknowledgement - actual send (fire-and-forget sends have no ack: left out);
    - publish_delay = actual send - intended send (how far the producer fell behind its plan).
    """
    window = sends["t_intended"].to_numpy(dtype="float64") >= warmup
    t_intended = sends["t_intended"].to_numpy(dtype="float64")[window]
    t_sent = sends["t_sent"].to_numpy(dtype="float64")[window]
    t_acked = sends["t_acked"].to_numpy(dtype="float64")[window]
    return {
        "end_to_end": summarize(checks.first_delivered[window] - t_intended),
        "completion": summarize(checks.first_done[window] - t_intended),
        "publish": summarize(t_acked - t_sent),
        "publish_delay": summarize(t_sent - t_intended),
    }


def _rate(count: int, span: float) -> float | None:
    """``count`` per second over ``span`` seconds; 0 when nothing counted, None when no span."""
    if count == 0:
        return 0.0
    if not span > 0:  # also catches NaN
        return None
    return count / span


def measure_throughput(
    sends: pd.DataFrame, checks: DeliveryCheck, offered: float, warmup: float
) -> Throughput:
    """Achieved rates over the measuring window (messages intended at or after ``warmup``).

    The window opens at the first intended send time in it, so both rates share a start:

    - sent = messages actually sent / (last actual send - window start);
    - delivered = distinct messages delivered / (last first delivery - window start).

    A slow broker or consumer shows as delivered < sent < offered; the drain stretches the
    delivered window, so a backlog cleared after the producers stopped still counts against it.
    """
    t_intended = sends["t_intended"].to_numpy(dtype="float64")
    window = t_intended >= warmup
    if not window.any():
        return Throughput(offered=offered, sent=0.0, delivered=0.0)
    start = float(t_intended[window].min())
    t_sent = sends["t_sent"].to_numpy(dtype="float64")[window]
    t_first = checks.first_delivered[window]
    sent, delivered = t_sent[~np.isnan(t_sent)], t_first[~np.isnan(t_first)]
    return Throughput(
        offered=offered,
        sent=_rate(len(sent), float(sent.max()) - start if len(sent) else 0.0),
        delivered=_rate(len(delivered), float(delivered.max()) - start if len(delivered) else 0.0),
    )


def _at_most(name: str, bound: float | int, measured: float | int | None) -> RequirementResult:
    """A "no more than" requirement; no measurement means not met."""
    return RequirementResult(name, bound, measured, measured is not None and measured <= bound)


def evaluate_requirements(
    requirements: Requirements,
    checks: DeliveryCheck,
    latency: dict[str, LatencySummary],
    throughput: Throughput,
) -> tuple[RequirementResult, ...]:
    """One result per requirement the scenario states, in a stable order.

    Count requirements need data to mean anything: loss needs something sent, duplicates and
    ordering need something delivered; without it they are not met (measured None), because an
    empty run must never pass. Replay and message size are listed with ok None: a run cannot
    show them, a capability table judges them.
    """
    results: list[RequirementResult] = []
    if requirements.throughput is not None:
        measured = throughput.delivered
        ok = measured is not None and measured >= requirements.throughput
        results.append(RequirementResult("throughput", requirements.throughput, measured, ok))
    for kind, bounds in requirements.latency.items():
        for statistic, seconds in bounds.items():
            bound_ms = round(seconds * 1000.0, 6)
            results.append(_at_most(f"{kind} {statistic}", bound_ms, latency[kind].get(statistic)))
    delivered_any = checks.unique > 0
    if requirements.max_lost is not None:
        lost = checks.lost if checks.sent > 0 else None
        results.append(_at_most("max_lost", requirements.max_lost, lost))
    if requirements.max_duplicates is not None:
        duplicates = checks.duplicates if delivered_any else None
        results.append(_at_most("max_duplicates", requirements.max_duplicates, duplicates))
    if requirements.ordering == "per-key":
        out_of_order = checks.out_of_order if delivered_any else None
        results.append(_at_most("ordering per-key", 0, out_of_order))
    if requirements.replay:
        results.append(RequirementResult("replay", True, None, None))
    if requirements.max_message_size is not None:
        size = requirements.max_message_size
        results.append(RequirementResult("max_message_size", size, None, None))
    return tuple(results)


def _warnings(checks: DeliveryCheck, latency: dict[str, LatencySummary]) -> list[str]:
    """What a reader must not miss even when the verdict is fine."""
    warnings: list[str] = []
    if checks.unexpected:
        examples = ", ".join(checks.unexpected_ids[:5])
        warnings.append(
            f"{checks.unexpected} delivered ids were never sent (e.g. {examples}): "
            "a bug in the broker, adapter or harness"
        )
    if checks.sent and not checks.delivered:
        warnings.append("nothing was delivered")
    if checks.sent and latency["end_to_end"].count == 0 and checks.delivered:
        warnings.append("no delivered message after warm-up: latency percentiles are empty")
    for kind, summary in latency.items():
        if summary.clamped:
            warnings.append(
                f"{summary.clamped} {kind} latencies exceed the histogram's range; "
                "their percentiles are capped (the max is exact)"
            )
    return warnings


def analyze(
    trace: Trace, scenario: Scenario, *, target: str, seed: int | None, duration_s: float
) -> Analysis:
    """Analyse one drained run: delivery checks, latencies, throughput, requirements, verdict.

    Delivery checks cover every message; latency percentiles and throughput leave out messages
    intended before ``scenario.producers.warmup`` (start-up transients are not the steady state
    the use case cares about).
    """
    warmup = scenario.producers.warmup
    checks = check_delivery(trace.sends, trace.deliveries)
    latency = measure_latency(trace.sends, checks, warmup)
    throughput = measure_throughput(trace.sends, checks, scenario.producers.rate, warmup)
    requirements = evaluate_requirements(scenario.requirements, checks, latency, throughput)
    return Analysis(
        target=target,
        scenario=scenario.name,
        seed=seed,
        duration_s=duration_s,
        checks=checks,
        latency=latency,
        throughput=throughput,
        requirements=requirements,
        warnings=_warnings(checks, latency),
    )


def latency_table(analysis: Analysis) -> pd.DataFrame:
    """Latencies as a table in milliseconds: one row per kind, columns ``mean`` … ``count``.

    Empty kinds show NaN, so the table plots and prints without special cases.
    """
    rows = {kind: analysis.latency[kind].to_dict() for kind in LATENCY_KINDS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_FIELDS))
    table = table.astype({name: "float64" for name in SUMMARY_FIELDS if name != "count"})
    table["count"] = table["count"].astype("int64")
    table.index.name = "kind"
    return table
