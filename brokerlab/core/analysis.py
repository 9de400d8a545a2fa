"""The analysis: one code path that turns any target's trace into the run's metrics and verdict.

The simulator and every real broker write the same :class:`~brokerlab.core.trace.Trace`; this module
is the only place that judges one. It runs the delivery checks (:mod:`brokerlab.core.checks`),
summarises the four latencies (:mod:`brokerlab.core.latency`), measures throughput, and holds the
result against the scenario's requirements. The :class:`Analysis` it returns feeds metrics.json,
the console summary, reports and notebooks alike, so they can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from brokerlab.core import saturation
from brokerlab.core.checks import DeliveryCheck, check_delivery
from brokerlab.core.latency import LatencySummary, summarize
from brokerlab.core.scenario import Requirements, Scenario
from brokerlab.core.trace import Trace
from brokerlab.core.vocabulary import LATENCY_KINDS, SUMMARY_FIELDS

__all__ = [
    "BULK_MIN_MESSAGES",
    "BULK_SHARE",
    "CAPABILITY_REQUIREMENTS",
    "UNEXPECTED",
    "Analysis",
    "DeliveryCheck",
    "RequirementResult",
    "Throughput",
    "analyze",
    "bulk_delivered_rate",
    "check_delivery",
    "evaluate_requirements",
    "inconclusive_reasons",
    "judge_verdict",
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


#: Requirements a run cannot show: listed with ok None ("n/a"); ``brokerlab select`` judges them
#: from the capability table. Every other requirement is measured, and a measured requirement
#: the run could not measure makes the verdict inconclusive.
CAPABILITY_REQUIREMENTS = frozenset({"replay", "max_message_size"})

#: The requirement the lab adds (it is no scenario field) when ids were delivered that were never
#: sent: always a bug, so it fails the verdict whatever the scenario allows.
UNEXPECTED = "unexpected deliveries"

_CAPABILITY_NOTE = "a run cannot show this; `brokerlab select` judges it from the capability table"


@dataclass(frozen=True)
class RequirementResult:
    """One requirement held against the run.

    ``bound`` and ``measured`` are in the unit the name implies (ms for latencies, messages per
    second for throughput, messages for counts). ``ok`` is None when the run cannot tell: a
    capability a run cannot show (replay, message size), or a measured requirement this run gave
    no data for (nothing acknowledged, nothing delivered, no latency sample); ``note`` says why.
    """

    name: str
    bound: float | int | bool | None
    measured: float | int | None
    ok: bool | None
    note: str | None = None

    @property
    def measurable(self) -> bool:
        """Whether a run measures this requirement (else a capability table judges it)."""
        return self.name not in CAPABILITY_REQUIREMENTS

    def to_dict(self) -> dict[str, Any]:
        """One entry of the ``requirements`` list in metrics.json (``note`` only when there is
        one, so the four contract keys stay exactly as they were)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "bound": self.bound,
            "measured": self.measured,
            "ok": self.ok,
        }
        if self.note is not None:
            entry["note"] = self.note
        return entry


def inconclusive_reasons(metrics: dict[str, Any]) -> list[str]:
    """Why a run's verdict cannot be pass, read from metrics.json alone (empty when it can be).

    Each measured requirement with ``ok`` null gives ``"name: note"``; a run that had nothing
    acknowledged or nothing delivered says so even when no requirement asked about it. The
    console summary and the reports show these reasons beside an ``inconclusive`` verdict.
    """
    reasons = [
        f"{req['name']}: {req.get('note') or 'could not be measured'}"
        for req in metrics.get("requirements", [])
        if req.get("ok") is None and req.get("name") not in CAPABILITY_REQUIREMENTS
    ]
    empty = _empty_run(metrics.get("counts", {}))
    if empty and not any(empty in reason for reason in reasons):
        reasons.append(f"run: {empty}")
    return reasons


def judge_verdict(metrics: dict[str, Any]) -> str:
    """``fail`` if a requirement was missed; else ``inconclusive`` if the run cannot tell
    (:func:`inconclusive_reasons`); else ``pass``. A missed requirement outweighs the unknown
    ones: one measured failure is enough to know the use case is not met."""
    if any(req.get("ok") is False for req in metrics.get("requirements", [])):
        return "fail"
    return "inconclusive" if inconclusive_reasons(metrics) else "pass"


def _empty_run(counts: dict[str, Any]) -> str | None:
    """Why a run has no data to judge by, or None: nothing sent, acknowledged or delivered.

    ``counts`` is metrics.json's ``counts`` (a message is acknowledged when the broker confirmed
    it, or, fire-and-forget, when the publish call succeeded).
    """
    if not counts.get("sent"):
        return "nothing was sent"
    if not counts.get("acked"):
        failed, unknown = counts.get("failed", 0), counts.get("unknown", 0)
        return f"nothing was acknowledged ({failed} publishes failed, {unknown} unknown)"
    if not counts.get("unique"):
        return "nothing was delivered"
    return None


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
        """``pass``, ``fail`` or ``inconclusive``: see :func:`judge_verdict`."""
        return judge_verdict(self.to_metrics(with_verdict=False))

    @property
    def inconclusive_reasons(self) -> list[str]:
        """Why the run cannot pass (empty when it can): see :func:`inconclusive_reasons`."""
        return inconclusive_reasons(self.to_metrics(with_verdict=False))

    @property
    def unexpected(self) -> int:
        """Delivered ids that were never sent: always a bug, reported apart from the counts."""
        return self.checks.unexpected

    def to_metrics(self, *, with_verdict: bool = True) -> dict[str, Any]:
        """The metrics.json object: exactly the contract's keys, JSON-ready (None for null)."""
        metrics: dict[str, Any] = {
            "target": self.target,
            "scenario": self.scenario,
            "seed": self.seed,
            "duration_s": float(self.duration_s),
            "counts": self.checks.counts(),
            "latency_ms": {kind: self.latency[kind].to_dict() for kind in LATENCY_KINDS},
            "throughput_per_s": self.throughput.to_dict(),
            "requirements": [r.to_dict() for r in self.requirements],
        }
        if with_verdict:
            metrics["verdict"] = judge_verdict(metrics)
        return metrics


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


#: Share of a run's sent messages :func:`bulk_delivered_rate` counts to, and the fewest sent
#: messages for which it leaves out the rest.
BULK_SHARE, BULK_MIN_MESSAGES = 0.99, 1000


def bulk_delivered_rate(sends: pd.DataFrame, deliveries: pd.DataFrame) -> float | None:
    """Messages a second a run delivered from its first send until :data:`BULK_SHARE` of what it
    sent had been delivered (each message's first delivery); None for a run too small to tell
    (:data:`BULK_MIN_MESSAGES`) or one that delivered less than that share of what it sent.

    ``throughput_per_s.delivered`` counts until the last delivery, so a few stragglers at the
    end of a short run cut it although the broker kept up (JetStream at 8,000/s for 1.5 s
    delivered every message with an end-to-end p99 of 26 ms, yet "7,093/s": its last ones came
    about 190 ms late). A run that falls behind is late with more than 1% of its messages (its
    backlog drains after the offer), and one that loses them delivers fewer: this rate is low
    for both too. Whether a run kept up may use either (calibrate's ceiling search, ``capacity
    --find rate``); metrics.json keeps the plain rate.
    """
    if sends.empty or deliveries.empty:
        return None
    sent_ones = sends.loc[sends["t_sent"].notna(), ["msg_id", "t_sent"]]
    sent = len(sent_ones)
    bulk = math.ceil(BULK_SHARE * sent)
    first = deliveries.groupby("msg_id")["t_delivered"].min().dropna()
    first = first[first.index.isin(sent_ones["msg_id"])]  # not another run's messages
    if sent < BULK_MIN_MESSAGES or len(first) < bulk:
        return None
    began = float(sent_ones["t_sent"].min())
    reached = float(first.sort_values().iloc[bulk - 1])
    return bulk / (reached - began) if reached > began else None


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
    if not window.any():  # nothing intended after warm-up: no window to measure over
        return Throughput(offered=offered, sent=None, delivered=None)
    start = float(t_intended[window].min())
    t_sent = sends["t_sent"].to_numpy(dtype="float64")[window]
    t_first = checks.first_delivered[window]
    sent, delivered = t_sent[~np.isnan(t_sent)], t_first[~np.isnan(t_first)]
    return Throughput(
        offered=offered,
        sent=_rate(len(sent), float(sent.max()) - start if len(sent) else 0.0),
        delivered=_rate(len(delivered), float(delivered.max()) - start if len(delivered) else 0.0),
    )


#: Why a latency kind can have no sample in a run that did send, acknowledge and deliver.
_NO_LATENCY = {
    "end_to_end": "no message intended after warm-up was delivered",
    "completion": "no message intended after warm-up was processed to the end",
    "publish": "no publish was acknowledged with a time (fire-and-forget publishes are untimed)",
    "publish_delay": "no message intended after warm-up was sent",
}


def _at_most(
    name: str, bound: float | int, measured: float | int | None, why_none: str
) -> RequirementResult:
    """A "no more than" requirement; no measurement means the run cannot tell (``why_none``)."""
    if measured is None:
        return RequirementResult(name, bound, None, None, why_none)
    return RequirementResult(name, bound, measured, measured <= bound)


def evaluate_requirements(
    requirements: Requirements,
    checks: DeliveryCheck,
    latency: dict[str, LatencySummary],
    throughput: Throughput,
    held: int | None = None,
) -> tuple[RequirementResult, ...]:
    """One result per requirement the scenario states, in a stable order.

    A requirement needs data to mean anything, and a run without it cannot tell (ok None, with a
    note): loss needs something acknowledged (nothing promised, nothing to lose); throughput needs
    something acknowledged and delivered; duplicates and ordering need something delivered; a
    latency bound needs samples. An empty run therefore never passes, and a broker that was down
    all along is not judged on the numbers it never produced. ``max_lost`` holds against lost +
    unprocessed (taken by a consumer, never processed to the end). Replay and message size are
    listed with ok None: a run cannot show them, a capability table judges them. Ids delivered
    that were never sent add a failed ``unexpected deliveries`` requirement: always a bug.

    ``held`` is how many entries the broker (or a consumer's client library) still held when a
    drain that timed out ended: undelivered messages may then only be late, not lost. ``max_lost``
    fails only if more than ``held`` of its count exceed the bound (those are gone for sure),
    and cannot tell otherwise.
    """
    counts = checks.counts()
    empty = _empty_run(counts)
    nothing_acked = empty if not checks.acked else None
    nothing_delivered = empty if not checks.unique else None
    results: list[RequirementResult] = []
    if requirements.throughput is not None:
        bound = requirements.throughput
        measured = throughput.delivered
        if empty is not None:
            results.append(RequirementResult("throughput", bound, measured, None, empty))
        elif measured is None:
            why = "no measuring window after warm-up (no message, or a single instant)"
            results.append(RequirementResult("throughput", bound, None, None, why))
        else:
            results.append(RequirementResult("throughput", bound, measured, measured >= bound))
    for kind, bounds in requirements.latency.items():
        for statistic, seconds in bounds.items():
            bound_ms = round(seconds * 1000.0, 6)
            why = empty or _NO_LATENCY[kind]
            results.append(
                _at_most(f"{kind} {statistic}", bound_ms, latency[kind].get(statistic), why)
            )
    if requirements.max_lost is not None:
        gone = None if nothing_acked else checks.lost + checks.unprocessed
        result = _at_most("max_lost", requirements.max_lost, gone, nothing_acked or "")
        if checks.unprocessed and gone is not None:
            result = replace(result, note=f"{checks.lost} lost + {checks.unprocessed} unprocessed")
        if held and gone is not None and result.ok is False:
            result = _late_not_lost(result, gone, held, requirements.max_lost)
        results.append(result)
    if requirements.max_duplicates is not None:
        duplicates = None if nothing_delivered else checks.duplicates
        results.append(
            _at_most(
                "max_duplicates", requirements.max_duplicates, duplicates, nothing_delivered or ""
            )
        )
    if requirements.ordering == "per-key":
        out_of_order = None if nothing_delivered else checks.out_of_order
        results.append(_at_most("ordering per-key", 0, out_of_order, nothing_delivered or ""))
    if checks.unexpected:
        examples = ", ".join(checks.unexpected_ids[:5])
        why = f"ids delivered that were never sent (e.g. {examples}): a bug, never allowed"
        results.append(RequirementResult(UNEXPECTED, 0, checks.unexpected, False, why))
    if requirements.replay:
        results.append(RequirementResult("replay", True, None, None, _CAPABILITY_NOTE))
    if requirements.max_message_size is not None:
        size = requirements.max_message_size
        results.append(RequirementResult("max_message_size", size, None, None, _CAPABILITY_NOTE))
    return tuple(results)


def _late_not_lost(
    result: RequirementResult, gone: int, held: int, bound: int
) -> RequirementResult:
    """``max_lost`` when the drain ended with ``held`` entries still at the broker: at least
    ``gone - held`` messages are gone for sure; the rest may only be late."""
    surely = max(0, gone - held)
    known = f"at least {surely} are lost and the rest" if surely else "none is known lost: all"
    late = (
        f"the drain timed out with {held} entries still at the broker: of {gone} not delivered "
        f"(or not processed), {known} may only be late (a longer drain_timeout, or a faster "
        "consumer, tells them apart)"
    )
    if surely > bound:
        return replace(result, note=late)
    return replace(result, ok=None, note=late)


def _warnings(checks: DeliveryCheck, latency: dict[str, LatencySummary]) -> list[str]:
    """What a reader must not miss even when the verdict is fine."""
    warnings: list[str] = []
    if checks.unexpected:
        examples = ", ".join(checks.unexpected_ids[:5])
        warnings.append(
            f"{checks.unexpected} delivered ids were never sent (e.g. {examples}): "
            "a bug in the broker, adapter or harness"
        )
    if checks.sent and not checks.acked:
        warnings.append("nothing was acknowledged: the broker confirmed no publish")
    elif checks.sent and not checks.delivered:
        warnings.append("nothing was delivered")
    if checks.unprocessed:
        examples = ", ".join(checks.unprocessed_ids[:5])
        warnings.append(
            f"{checks.unprocessed} messages were taken by a consumer and never processed to the "
            f"end, nor delivered again (e.g. {examples}): they count against max_lost"
        )
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
    trace: Trace,
    scenario: Scenario,
    *,
    target: str,
    seed: int | None,
    duration_s: float,
    held: int | None = None,
) -> Analysis:
    """Analyse one drained run: delivery checks, latencies, throughput, requirements, verdict.

    Delivery checks cover every message; latency percentiles and throughput leave out messages
    intended before ``scenario.producers.warmup`` (start-up transients are not the steady state
    the use case cares about). ``held``: entries the target still held when a timed-out drain
    ended (see :func:`evaluate_requirements`).
    """
    warmup = scenario.producers.warmup
    checks = check_delivery(trace.sends, trace.deliveries)
    latency = measure_latency(trace.sends, checks, warmup)
    throughput = measure_throughput(trace.sends, checks, scenario.producers.rate, warmup)
    requirements = evaluate_requirements(scenario.requirements, checks, latency, throughput, held)
    # A real run whose own client was the bottleneck cannot fail the broker on speed.
    lab = saturation.judge(trace.timeline, [r.name for r in requirements if r.ok is False])
    requirements = tuple(
        replace(r, ok=None, note=lab.notes[r.name]) if r.name in lab.notes else r
        for r in requirements
    )
    return Analysis(
        target=target,
        scenario=scenario.name,
        seed=seed,
        duration_s=duration_s,
        checks=checks,
        latency=latency,
        throughput=throughput,
        requirements=requirements,
        warnings=_warnings(checks, latency)
        + [w for w in (lab.warning, saturation.steal_warning(lab.limit)) if w],
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
