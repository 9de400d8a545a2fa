"""When the lab, not the broker, was the limit: judged from a real run's timeline.

A real run's figures measure the broker *through the lab's own client*. When that client is the
bottleneck — its busiest process used a whole core for a sustained part of the run, or its event
loop ran late — a missed latency or throughput bound says nothing about the broker: the same
broker with a faster client (or a second machine) might meet it. Such a requirement is
therefore not failed but undecided (``ok`` None, with a note), and the run's warnings, summary
and report say that its figures reflect the lab's client.

Only failures are reconsidered: a slow client can only make latency and throughput look worse,
so a bound met despite it is met. Loss, duplicates and ordering do not depend on the client's
speed and are never touched. The figures come from ``timeline.parquet``'s ``lab_cpu`` and
``loop_lag_ms`` (``adapters.monitor``); a timeline without them (the simulator) is never judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brokerlab.core.vocabulary import LATENCY_KINDS

__all__ = [
    "LAGGING_P99_MS",
    "MACHINE_BUSY",
    "MACHINE_STOLEN",
    "SATURATED_CPU",
    "SATURATED_SHARE",
    "LabLimit",
    "SaturationJudgement",
    "judge",
    "lab_limit",
    "speed_bound",
    "steal_warning",
]

#: A lab process at or above this CPU (percent of one core) is saturated: one Python process
#: cannot use much more than one core for its own code.
SATURATED_CPU = 90.0
#: ... when that holds in at least this share of the sampled intervals (a sustained part of the
#: run, not a start-up blip).
SATURATED_SHARE = 0.2
#: The lab's event loop lags when its timers ran this late (milliseconds) at the 99th
#: percentile of the sampled intervals: every send, receive and timestamp waits that long.
LAGGING_P99_MS = 50.0
#: The machine has no CPU to spare when all of its CPUs are this busy (percent, every process
#: counted) in at least :data:`SATURATED_SHARE` of the sampled intervals.
MACHINE_BUSY = 95.0
#: The host of a virtual machine took too much of it when it took at least this share of the
#: machine's CPU time (steal, percent) in at least :data:`SATURATED_SHARE` of the intervals. A
#: quiet host takes about 2% on the development machine.
MACHINE_STOLEN = 10.0


def speed_bound(requirement: str) -> bool:
    """True for requirements the client's own speed can spoil: throughput and latencies."""
    return requirement == "throughput" or requirement.split(" ", 1)[0] in LATENCY_KINDS


@dataclass(frozen=True)
class LabLimit:
    """How hard the lab itself was pushed during a run.

    ``cpu_share`` is the share of sampled intervals in which the busiest lab process used at
    least :data:`SATURATED_CPU`; ``lag_p99_ms`` the 99th percentile of the intervals' worst
    event-loop lateness; ``sampled`` how many intervals carry samples.
    """

    cpu_share: float
    peak_cpu: float
    lag_p99_ms: float
    sampled: int
    #: share of sampled intervals with every CPU of the machine at least MACHINE_BUSY busy
    machine_share: float = 0.0
    #: share of sampled intervals in which the broker itself used at least SATURATED_CPU
    broker_share: float = 0.0
    #: share of sampled intervals in which the host took at least MACHINE_STOLEN of the CPU time
    steal_share: float = 0.0
    #: the largest share of the CPU time the host took in one interval (percent; NaN: unknown)
    peak_steal: float = float("nan")

    @property
    def saturated(self) -> bool:
        return self.cpu_share >= SATURATED_SHARE

    @property
    def lagging(self) -> bool:
        return self.lag_p99_ms > LAGGING_P99_MS

    @property
    def machine_bound(self) -> bool:
        """The machine had no CPU to spare while the broker itself was not saturated: the
        broker (and the lab) ran slower than they would with a free core, whoever took it."""
        return self.machine_share >= SATURATED_SHARE and self.broker_share < SATURATED_SHARE

    @property
    def stolen(self) -> bool:
        """The virtual machine's host took CPU time from it (steal) for a sustained part of the
        run: the broker and the lab both stood still meanwhile."""
        return self.steal_share >= SATURATED_SHARE

    @property
    def limited(self) -> bool:
        """True when the lab's client, or the machine it shares with the broker, may have been
        the bottleneck."""
        return self.saturated or self.lagging or self.machine_bound or self.stolen

    @property
    def who(self) -> str:
        """What was the limit, in words for notes and warnings."""
        if self.saturated or self.lagging:
            return "the lab's client"
        if self.machine_bound:
            return "the machine (no idle CPU)"
        return "the machine's host (it took CPU time from this virtual machine)"

    def describe(self) -> str:
        """Why the lab was the limit, with its figures (empty when it was not)."""
        reasons = []
        if self.saturated:
            reasons.append(
                f"its busiest process used ≥{SATURATED_CPU:g}% of a core in "
                f"{self.cpu_share:.0%} of the run (peak {self.peak_cpu:.0f}%)"
            )
        if self.lagging:
            reasons.append(
                f"its event loop ran late by {self.lag_p99_ms:.0f} ms at p99 "
                f"(over {LAGGING_P99_MS:g} ms)"
            )
        if self.machine_bound:
            reasons.append(
                f"all of the machine's CPUs were ≥{MACHINE_BUSY:g}% busy in "
                f"{self.machine_share:.0%} of the run while the broker used less than a core"
            )
        if self.stolen:
            reasons.append(
                f"the host took ≥{MACHINE_STOLEN:g}% of the machine's CPU time (steal) in "
                f"{self.steal_share:.0%} of the run (peak {self.peak_steal:.0f}%)"
            )
        return " and ".join(reasons)


def lab_limit(timeline: pd.DataFrame) -> LabLimit | None:
    """The lab's load during a run, from the timeline; None when nothing was sampled."""
    if "lab_cpu" not in timeline or "loop_lag_ms" not in timeline:
        return None
    cpu = timeline["lab_cpu"].to_numpy(dtype="float64")
    lag = timeline["loop_lag_ms"].to_numpy(dtype="float64")
    cpu, lag = cpu[~np.isnan(cpu)], lag[~np.isnan(lag)]
    if len(cpu) == 0 and len(lag) == 0:
        return None
    return LabLimit(
        cpu_share=float(np.mean(cpu >= SATURATED_CPU)) if len(cpu) else 0.0,
        peak_cpu=float(cpu.max()) if len(cpu) else float("nan"),
        lag_p99_ms=float(np.percentile(lag, 99)) if len(lag) else 0.0,
        sampled=int(max(len(cpu), len(lag))),
        machine_share=_share(timeline, "machine_cpu", MACHINE_BUSY),
        broker_share=_share(timeline, "broker_cpu", SATURATED_CPU),
        steal_share=_share(timeline, "machine_steal", MACHINE_STOLEN),
        peak_steal=_peak(timeline, "machine_steal"),
    )


def _peak(timeline: pd.DataFrame, column: str) -> float:
    """The largest sampled value of ``column`` (NaN when none was sampled)."""
    if column not in timeline:
        return float("nan")
    values = timeline[column].to_numpy(dtype="float64")
    values = values[~np.isnan(values)]
    return float(values.max()) if len(values) else float("nan")


def _share(timeline: pd.DataFrame, column: str, threshold: float) -> float:
    """Share of the sampled intervals (non-NaN) in which ``column`` reached ``threshold``."""
    if column not in timeline:
        return 0.0
    values = timeline[column].to_numpy(dtype="float64")
    values = values[~np.isnan(values)]
    return float(np.mean(values >= threshold)) if len(values) else 0.0


@dataclass(frozen=True)
class SaturationJudgement:
    """What the lab's own load means for a run's requirements.

    ``notes`` maps each requirement that becomes undecided (``ok`` None) to the note saying
    why; ``warning`` is the line for the run's warnings, summary and report (None when the lab
    was not the limit of a failed requirement).
    """

    limit: LabLimit | None
    notes: dict[str, str] = field(default_factory=dict)
    warning: str | None = None


def judge(timeline: pd.DataFrame, failed: Iterable[str]) -> SaturationJudgement:
    """Which of the ``failed`` requirements the lab's own limit makes undecided.

    A failed throughput or latency requirement becomes undecided when the lab was saturated or
    lagging, the machine had no idle CPU while the broker itself was not saturated, or the
    host of a virtual machine took its CPU time (:meth:`LabLimit.limited`); other failures
    stand. A broker at a whole core is the limit
    itself, so a busy machine does not excuse it.
    """
    limit = lab_limit(timeline)
    spoiled = [name for name in failed if speed_bound(name)]
    if limit is None or not limit.limited or not spoiled:
        return SaturationJudgement(limit)
    why, who = limit.describe(), limit.who
    note = f"not judged: {who} was the limit ({why}), not necessarily the broker"
    warning = (
        f"these figures reflect {who}, not only the broker: {why}; "
        f"{', '.join(spoiled)} not judged (run with a lower load, more worker processes, on a "
        "quieter machine, or the lab on another machine)"
    )
    return SaturationJudgement(limit, {name: note for name in spoiled}, warning)


def steal_warning(limit: LabLimit | None) -> str | None:
    """The warning for a run during which the host took the machine's CPU time (steal), whether
    or not a requirement failed: every latency of it includes the host's stalls, so a comparison
    with the simulator or another broker must know. None when the host was quiet."""
    if limit is None or not limit.stolen:
        return None
    return (
        f"the machine's host took ≥{MACHINE_STOLEN:g}% of its CPU time (steal) in "
        f"{limit.steal_share:.0%} of the run (peak {limit.peak_steal:.0f}%): latencies and "
        "rates include the host's stalls, not only the broker's work (run again when the host "
        "is quieter)"
    )
