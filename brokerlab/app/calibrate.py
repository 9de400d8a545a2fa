"""``brokerlab calibrate``: measure this machine's local brokers and fit their performance profiles.

A short ladder of real runs per target, through the normal runner (so the same harness, trace
and analysis as every other run): light load (the round trip and the per-message latency),
light load with large messages (the byte cost), light load with an fsync per write (the
persistence cost, where the broker has one), one consumer with a known processing time offered
more than it can take (the consumer's own per-message cost, fetch and ack round trips included),
and the sustained ceiling with a deep prefetch (the highest offer kept up with, found by
doubling and bisecting the offer), with small and with 4 kB messages (bigger messages cost
broker and clients more of the machine), with fetches of 10 where consumers fetch (smaller
fetches cost more per message), and a deep backlog beyond it (how much faster a backlog
drains once the producer stops: the publishes' share of the capacity). The fit solves
the simulator's own cost equations (see :func:`brokerlab.sim.profile.apply_profile`) for those
measurements:

    publish p50       = round trip + publish work
    end-to-end p50    = round trip + publish work + delivery work (+ ack work)
    1 / ceiling       = publish work + delivery work + ack work        (one broker server)
    consumer cycle    = processing + client cost + delivery work (+ fetch work) + round trips
                        (2: fetch and an answered ack, Redis; 1: fetch only, JetStream)
    2 consumers       = parallelism / (publish + delivery + fetch work)   (if the work is shared)
    light e2e p50     = round trip + publish + delivery work + wake-up    (pull: a blocked fetch)
    Δ publish p50     = Δ size / bandwidth     (large vs small messages; end to end for NATS)
    Δ publish p50     = fsync cost                                     (persistence always)
    1 / ceiling(size, prefetch) = 1 / capacity messages + size / capacity bytes
                        + 1 / (capacity fetches x prefetch)   (256 B and 4 kB by 50; 256 B by 10)
    clients' share    = (machine CPU - broker CPU) / machine CPU         (at the ceilings)
    publishes' share  = 1 - ceiling / drain once the producer stopped    (offers beyond it)
    ... in full calls = (1 - delivered while sending x delivery cost) / sent   (deep backlog)

(a ceiling reached with more client processes, as the harness plays offers above the target's
single-process rate, is put back to one process by the clients' share: see
:class:`brokerlab.sim.profile.Clients`),

then replays every ladder run in the simulator with the fitted profile and reports the error
per run, so a user sees how well the profile explains what it was fitted on.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import statistics
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from brokerlab.app.runner import RunOptions, RunRecord, run_scenario
from brokerlab.core import results
from brokerlab.core.analysis import bulk_delivered_rate
from brokerlab.core.load import client_processes
from brokerlab.core.saturation import MACHINE_STOLEN, lab_limit
from brokerlab.core.scenario import Z99, Broker, LogNormal, Scenario, parse_scenario
from brokerlab.core.units import parse_rate, parse_size
from brokerlab.sim.presets import presets, resolve
from brokerlab.sim.profile import (
    Capacity,
    Clients,
    Profile,
    parse_profile,
)

#: Targets the lab can run on this machine.
LOCAL_TARGETS = ("redis-streams", "nats", "nats-jetstream")
#: Persistence mode that costs an fsync per write, per target (None: the broker has none).
FSYNC = {"redis-streams": "always", "nats-jetstream": "always", "nats": None}
SMALL, LARGE = 256, 16_384
#: The light rung's rate, and the busy rung's: the same load but five times as often, so that
#: its processes seldom idle (the round trip of a busy machine, and the idle machine's wake-up
#: as the light rung's latency beyond it).
LIGHT_RATE, BUSY_RATE = 200.0, 1000.0
#: How fast a wake-up grows with the time a process idled (brokerlab.sim.idle): measured on the
#: development machine, Redis's publish p50 from 100/s to 2,000/s follows it within 0.05 ms.
IDLE_TAU = 0.003
#: Message size of the ceiling rung with large messages (the capacity's byte cost).
CEILING_LARGE = 4096
#: The ceiling rungs' prefetch, and the fetch rung's: the same ceiling with fetches a fifth the
#: size, whose cost per message is the capacity's cost per fetch (pull consumers). Measured on
#: this machine, Redis with 1 kB messages and two client processes kept up with 45,000/s with
#: prefetch 50 and delivered 35,000-42,000/s of it with prefetch 20.
CEILING_PREFETCH, FETCH_PREFETCH = 50, 10
#: Targets whose consumers make no fetch requests (the broker pushes up to ``prefetch``).
PUSH_TARGETS = ("nats",)
#: With a fitted capacity, the broker's servers could serve this many times its ceiling (the
#: capacity is the limit; their work is the latency a message waits for), or its fastest pace
#: where the publishes' share of it makes an overload faster (see :func:`publish_shares`).
CAPACITY_HEADROOM = 2
#: Longest round-trip tail (p99 / median) a fit keeps: a lognormal's mean grows with its tail
#: (at 15x the mean is 2x the median), and every consumer cycle pays the mean. Stalls of a busy
#: machine beyond that are not a round trip's property.
TAIL_CAP = 15.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One rung of the ladder: a name, what it measures, and the scenario changes."""

    name: str
    measures: str
    changes: dict[str, Any]


#: What the ceiling rung offers first: beyond what the target (harness included) sustains on a
#: small busy machine, and no more, so the backlog it builds drains in seconds; where the target
#: keeps up, the offer is doubled (:data:`CEILING_DOUBLINGS`).
CEILING_RATE = {"redis-streams": "30000/s", "nats": "30000/s", "nats-jetstream": "8000/s"}
#: Runs of every rung; the fit takes the medians (a busy machine stalls one run, rarely three).
REPEATS = 3
#: Times the ceiling rung doubles its offer while the target keeps up with it: a quiet machine's
#: broker takes more than :data:`CEILING_RATE`, and a rung that kept up with every offer measured
#: its offer, not the ceiling (then the fitted ceiling is only a lower bound, and said so).
CEILING_DOUBLINGS = 3
#: A rung "kept up" when it delivered at least this share of its offer.
KEPT_UP = 0.95
#: ... and, for the ceiling rungs, when its tails stayed within these (seconds): the sustained
#: ceiling is the highest offer a target keeps up with for good, as ``brokerlab capacity --find
#: rate`` asks it (a backlog that grows for the whole run breaks them long before the delivered
#: share falls).
SUSTAINED_E2E_P99 = 0.100
SUSTAINED_DELAY_P99 = 0.020


def sustained_requirements() -> dict[str, Any]:
    """The same "keeps up" as a scenario's ``requirements``, for ``capacity --find rate`` with
    ``keep_up`` :data:`KEPT_UP` (the benches measure sustained ceilings with it)."""
    return {
        "latency": {
            "end_to_end": {"p99": SUSTAINED_E2E_P99},
            "publish_delay": {"p99": SUSTAINED_DELAY_P99},
        },
        "max_lost": None,
    }


#: Bisections of the ceiling rung's offer between the highest offer kept up with and the lowest
#: not (about 5% apart after three, from a doubling).
SUSTAINED_BISECTIONS = 3


def ladder(target: str, quick: bool = False) -> list[Step]:
    """The runs that calibrate ``target`` (``quick``: shorter runs, for tests)."""
    seconds = 1.5 if quick else 2.0
    light = {"producers.rate": f"{LIGHT_RATE:.0f}/s", "consumers.count": 1, "consumers.prefetch": 1}
    steps = [
        Step("light", "round trip, publish and delivery latency", dict(light)),
        Step("large", "byte cost (16 kB messages)", {**light, "producers.size": f"{LARGE}B"}),
        Step(
            "busy",
            f"a busy machine's round trip (light load at {BUSY_RATE:.0f}/s)",
            {**light, "producers.rate": f"{BUSY_RATE:.0f}/s"},
        ),
        Step(
            "consumer",
            "consumer's own cost per message (2 ms processing, offered 600/s)",
            {
                "producers.rate": "600/s",
                "consumers.count": 1,
                "consumers.prefetch": 1,
                "consumers.processing": "2ms",
            },
        ),
        Step(
            "shared",
            "whether the consumers' per-fetch cost is shared (2 consumers of the consumer rung)",
            {
                "producers.rate": "600/s",
                "consumers.count": 2,
                "consumers.prefetch": 1,
                "consumers.processing": "2ms",
            },
        ),
        Step(
            "ceiling",
            "sustained ceiling (the highest offer kept up with, 2 consumers, prefetch "
            f"{CEILING_PREFETCH})",
            {
                "producers.rate": CEILING_RATE.get(target, "12000/s"),
                "consumers.count": 2,
                "consumers.prefetch": CEILING_PREFETCH,
            },
        ),
    ]
    ceiling = steps[-1].changes
    steps.append(
        Step(
            "ceiling-large",
            f"capacity's byte cost (the sustained ceiling with {CEILING_LARGE // 1024} kB "
            "messages)",
            {**ceiling, "producers.size": f"{CEILING_LARGE}B"},
        )
    )
    if target not in PUSH_TARGETS:
        steps.append(
            Step(
                "ceiling-fetch",
                f"capacity's cost per fetch (the sustained ceiling with prefetch {FETCH_PREFETCH})",
                {**ceiling, "consumers.prefetch": FETCH_PREFETCH},
            )
        )
    if presets().get(target, {}).get("pull_status"):
        # Where a short answer ends with a status (nats-py's JetStream fetch), the light rung
        # again with fetches of up to 10: its latency beyond the light rung's is that status.
        steps.insert(
            1,
            Step(
                "batch",
                "the status that ends a short fetch (the light rung with prefetch 10)",
                {**light, "consumers.prefetch": 10},
            ),
        )
    if target in PUSH_TARGETS:
        steps = [step for step in steps if step.name != "shared"]  # push: no fetch requests
    if FSYNC.get(target):
        steps.append(
            Step(
                "fsync",
                "persistence cost (an fsync per write)",
                {**light, "broker.persistence": FSYNC[target]},
            )
        )
    for step in steps:
        # The ceiling rungs run longest: an offer a little beyond the ceiling must have time to
        # break the tails' bounds (5% beyond, a backlog grows by 50 ms a second). The others
        # (300 messages at the light rate) run shorter, which keeps the whole ladder, three
        # targets, within five minutes.
        short = seconds if step.name in CEILING_RUNGS else min(seconds, 1.5)
        step.changes["producers.duration"] = f"{short}s"
    return steps


def base_scenario(target: str) -> Scenario:
    """The calibration scenario every rung changes: one producer, no processing, no faults."""
    return parse_scenario(
        {
            "name": f"calibrate-{target}",
            "producers": {"count": 1, "rate": "200/s", "duration": "3s", "size": f"{SMALL}B"},
            "broker": {"kind": target, "ack_timeout": "30s", "profile": "none"},
            "consumers": {"count": 1, "prefetch": 1, "ack": "after"},
            "drain_timeout": "10s",
        },
        "calibration ladder",
    )


#: Paths of the metrics a calibration reads, fits and replays (medians over the repeats).
FITTED_METRICS = (
    ("throughput_per_s", "delivered"),
    ("latency_ms", "end_to_end", "p50"),
    ("latency_ms", "end_to_end", "p99"),
    ("latency_ms", "publish", "p50"),
    ("latency_ms", "publish", "p99"),
    ("latency_ms", "completion", "p50"),
)


def median_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The :data:`FITTED_METRICS` of several runs of one rung, each the median over the runs
    (a busy machine stalls one run, not the same moment of three)."""
    merged: dict[str, Any] = {}
    for path in FITTED_METRICS:
        values = [v for v in (_get(run, path) for run in runs) if v is not None and v == v]
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = statistics.median(values) if values else None
    return merged


def spread(runs: list[dict[str, Any]], path: tuple[str, ...]) -> float | None:
    """(max - min) / median of one metric over the repeats of a rung (None with one run)."""
    values = [v for v in (_get(run, path) for run in runs) if v is not None and v == v]
    if len(values) < 2 or not statistics.median(values):
        return None
    return (max(values) - min(values)) / statistics.median(values)


@dataclass
class Measured:
    """What one real rung measured (seconds, per second): medians over its repeats."""

    step: Step
    record: RunRecord
    publish_p50: float | None
    publish_p99: float | None
    e2e_p50: float
    e2e_p99: float
    completion_p50: float
    delivered: float
    #: every repeat of the rung (``record`` is the first)
    records: list[RunRecord] = field(default_factory=list)
    #: the medians over the repeats, shaped as metrics.json
    metrics: dict[str, Any] = field(default_factory=dict)
    #: a ceiling rung that kept up with every offer it made: its ceiling is only a lower bound
    lower_bound: bool = False
    #: a ceiling search's runs that fell behind their offer (their backlogs' drains)
    behind: list[RunRecord] = field(default_factory=list)
    #: a ceiling search's lowest offer not kept up with (None: it kept up with every offer)
    fell_behind_at: float | None = None

    @classmethod
    def of(cls, step: Step, record: RunRecord | list[RunRecord]) -> Measured:
        records = record if isinstance(record, list) else [record]
        metrics = median_metrics([r.metrics for r in records])
        latency = metrics["latency_ms"]

        def stat(kind: str, name: str) -> float | None:
            value = (latency.get(kind) or {}).get(name)
            return None if value is None else value / 1000.0

        return cls(
            step=step,
            record=records[0],
            publish_p50=stat("publish", "p50"),
            publish_p99=stat("publish", "p99"),
            e2e_p50=stat("end_to_end", "p50") or 0.0,
            e2e_p99=stat("end_to_end", "p99") or 0.0,
            completion_p50=stat("completion", "p50") or 0.0,
            delivered=float(metrics["throughput_per_s"]["delivered"] or 0.0),
            records=records,
            metrics=metrics,
        )


@dataclass
class Calibration:
    """One target's calibration: the runs, the fitted profile, the replay errors."""

    target: str
    profile: Profile
    measured: list[Measured]
    errors: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    #: what makes this calibration doubtful (a busy machine), said plainly
    warnings: list[str] = field(default_factory=list)


def busy_warnings(target: str, measured: dict[str, Measured]) -> list[str]:
    """Rungs that could not keep up with a light load: the machine (not the broker) was busy,
    and every cost fitted from them is inflated; and rungs during which the host of a virtual
    machine took its CPU time (steal), whose latencies are the host's stalls as much as the
    broker's costs."""
    warnings = []
    stolen = [
        (name, limit)
        for name, m in measured.items()
        for record in (m.records or [m.record])
        if record is not None
        and (limit := lab_limit(record.result.trace.timeline)) is not None
        and limit.stolen
    ]
    if stolen:
        names = sorted({name for name, _ in stolen})
        peak = max(limit.peak_steal for _, limit in stolen)
        warnings.append(
            f"{target}: the machine's host took ≥{MACHINE_STOLEN:g}% of its CPU time (steal, "
            f"up to {peak:.0f}%) during {len(stolen)} run(s) of the {', '.join(names)} "
            "rung(s): their latencies include the host's stalls, so the fitted costs are "
            "inflated (calibrate again when the host is quieter)"
        )
    for name in ("light", "batch", "large", "busy"):
        m = measured.get(name)
        if m is None:
            continue
        offered = _offered(m.step)
        if m.delivered < KEPT_UP * offered:
            warnings.append(
                f"{target}: the {name} rung delivered {m.delivered:.0f}/s of {offered:.0f}/s "
                "offered: this machine was too busy to calibrate; the fitted costs are inflated "
                "(calibrate again when it is quieter)"
            )
    for name in CEILING_RUNGS:
        ceiling = measured.get(name)
        if ceiling is None:
            continue
        offered = _offered(ceiling.step)
        if ceiling.lower_bound:
            warnings.append(
                f"{target}: the {name} rung delivered {ceiling.delivered:.0f}/s of "
                f"{offered:.0f}/s offered: it kept up, so the fitted ceiling is only a lower bound"
            )
    warnings += _implausible_ceilings(target, measured)
    return warnings


#: What makes each ceiling rung's messages dearer than the ceiling rung's, and the cost its
#: difference measures.
_DEARER = {
    "ceiling-large": (f"its {CEILING_LARGE // 1024} kB messages", "byte cost"),
    "ceiling-fetch": (f"its fetches of {FETCH_PREFETCH}", "cost per fetch"),
}


def _implausible_ceilings(target: str, measured: dict[str, Measured]) -> list[str]:
    """Ceiling rungs whose dearer messages were kept up with at no lower a rate than the
    ceiling rung's: the difference they measure was below what the search resolves (the
    ceiling rung's bracket), or the machine's noise hid it, so the fit finds no such cost (it
    keeps none below zero) and says so rather than pass it off."""
    small = measured.get("ceiling")
    if small is None or small.lower_bound:
        return []
    warnings = []
    for name, (dearer, cost) in _DEARER.items():
        m = measured.get(name)
        if m is not None and _offered(m.step) >= _offered(small.step):
            fell = (
                f" (which fell behind at {small.fell_behind_at:,.0f}/s)"
                if small.fell_behind_at is not None
                else ""
            )
            warnings.append(
                f"{target}: the {name} rung kept up with {_offered(m.step):,.0f}/s, no less than "
                f"the ceiling rung's {_offered(small.step):,.0f}/s{fell}, though {dearer} cost "
                "more: the difference is below what the search resolves here or the machine's "
                f"noise hid it, so the fitted {cost} is zero, not measured (calibrate again when "
                "the machine is quieter)"
            )
    return warnings


def fit(target: str, measured: dict[str, Measured], provenance: dict[str, Any]) -> Profile:
    """Solve the simulator's cost equations (module docstring) for ``target``'s measurements."""
    light, ceiling, consumer = measured["light"], measured["ceiling"], measured["consumer"]
    acks = target != "nats"
    work = 1.0 / max(ceiling.delivered, 1.0)  # broker seconds per message at the ceiling
    # An idle machine wakes slowly (brokerlab.sim.idle): the light rung's latency beyond the busy
    # rung's is wake-ups, paid by the share of messages that find the machine idle. What is left
    # of light load's latency is a busy machine's.
    idle_cost = light_wakes = 0.0
    busy = measured.get("busy")
    if busy is not None:
        slow, fast = _latency_p50(light, acks), _latency_p50(busy, acks)
        if slow is not None and fast is not None:
            idle_cost = max(slow - fast, 0.0) / (idle_share(LIGHT_RATE) - idle_share(BUSY_RATE))
            light_wakes = idle_cost * idle_share(LIGHT_RATE)
    e2e, e2e_p99 = light.e2e_p50 - light_wakes, light.e2e_p99 - light_wakes
    # Broker work split evenly between the publish and the delivery (with its ack).
    publish_work = work / 2
    if acks and light.publish_p50 is not None:
        rtt = max(light.publish_p50 - light_wakes - publish_work, 1e-6)
        rtt_p99 = max(
            (light.publish_p99 or light.publish_p50) - light_wakes - publish_work, rtt * 1.05
        )
    else:
        rtt = max(min(e2e - work, e2e * 0.5), 1e-6)
        rtt_p99 = max(e2e_p99 / 2, rtt * 1.05)
    round_trip = LogNormal(dist="lognormal", median=rtt, p99=min(rtt_p99, rtt * TAIL_CAP))
    # One consumer, 2 ms processing, offered more than it takes: each message costs a cycle of
    # processing, the ack's round trip where the consumer awaits its reply (Redis XACK; a
    # JetStream ack is not answered), the fetch's round trip and the delivery work (acked
    # kinds); a push consumer (NATS core) pays only its processing and its own lateness.
    cycle = 1.0 / max(consumer.delivered, 1.0)
    budget = max(cycle - 0.002 - round_trips(target) * round_trip.mean, 0.0)
    # What the delivery adds beyond the publish. Pull kinds: the broker's delivery work (half of
    # the work per message), which a consumer pays in every cycle (so no more than the consumer
    # rung left over), and the wake-up of a consumer blocked in its fetch, which only a message
    # that finds its consumer waiting pays (light load: the rest of end to end). NATS core: all
    # of it is the delivery. Constant, so parallel servers never reorder a stream; the tails are
    # the round trip's and the wake-up's (FIFO links keep order).
    wake = wake_p99 = 0.0
    if acks:
        deliver = max(min(work / 2, budget), 0.0)
        wake = max(e2e - rtt - publish_work - deliver, 0.0)
        wake_p99 = max(e2e_p99 - rtt - publish_work - deliver, wake * 1.05)
    else:
        deliver = max(e2e - rtt - publish_work, work / 2)
    ack = 0.0
    # Parallelism so that the ceiling is the measured one: servers / work per message.
    parallelism = max(1, math.ceil(ceiling.delivered * (publish_work + deliver + ack)))
    # ... exactly: whole servers, so the publish work takes up the rest.
    publish_work = max(parallelism / max(ceiling.delivered, 1.0) - deliver - ack, 0.0)
    # Sustained ceilings with small and large messages: the capacity of broker and clients. When
    # it is known, it sets the ceiling (without latency, see brokerlab.sim.pace) and the servers
    # get headroom, less work per message: two limits at one rate take each other's slack (the
    # simulated ceiling fell 11% short with both).
    big = measured.get("ceiling-large")
    clients = client_shares(target, measured)
    capacity = None
    if big is not None:
        # Each ceiling as the capacity with one client process (a search's rungs above the
        # target's single-process rate ran in more processes, which take more of the machine).
        small_one, big_one = (
            one_process(m.delivered, _processes(m, clients), clients) for m in (ceiling, big)
        )
        fetched = measured.get("ceiling-fetch")
        per_fetch = (
            fetch_cost(
                small_one,
                one_process(fetched.delivered, _processes(fetched, clients), clients),
                _prefetch(ceiling),
                _prefetch(fetched),
            )
            if fetched is not None
            else 0.0
        )
        capacity = _capacity(small_one, big_one, _size(big), clients, per_fetch, _prefetch(ceiling))
        share, batched = publish_shares(capacity, measured)
        if capacity is not None and share is not None:
            capacity["publish_share"] = share
            if batched is not None:
                capacity["publish_batched"] = batched
    if capacity is not None:
        # ... room for the capacity's fastest pace too: a full call's publish and a delivery,
        # as an overload with a producer behind schedule moves them.
        alone = capacity.get("publish_share", 0.0)
        fastest = 1.0 - alone + (capacity.get("publish_batched") or alone)
        publish_work /= CAPACITY_HEADROOM / fastest
        deliver /= CAPACITY_HEADROOM / fastest
    # Two consumers of the consumer rung: if together they take clearly less than twice what
    # one takes, part of each cycle is served one at a time, by the broker's servers: the work
    # of a fetch request (with prefetch 1, one per message). What one consumer's cycle had left
    # over beyond it is the consumer's own lateness.
    fetch = 0.0
    shared = measured.get("shared")
    if acks and shared is not None and shared.delivered > 0:
        offered = 600.0
        alone = min(2.0 / cycle, offered)
        if shared.delivered < 0.9 * alone:
            fetch = max(parallelism / shared.delivered - publish_work - deliver - ack, 0.0)
            fetch = min(fetch, max(budget - deliver, 0.0))
    timer = max(budget - (deliver + fetch if acks else 0.0), 0.0)
    bandwidth = None
    large = measured.get("large")
    if large is not None:
        # Publish latency where there is one (end to end carries the consumer's wake-ups, far
        # noisier on a busy machine).
        if large.publish_p50 is not None and light.publish_p50 is not None:
            grew = large.publish_p50 - light.publish_p50
        else:
            grew = large.e2e_p50 - light.e2e_p50
        if grew > 1e-6:
            # The large rung kept up with its load, so a message's size cost stays below a
            # quarter of the gap between its messages: a floor against a noisy difference.
            floor = 4 * LARGE * max(large.delivered, 1.0)
            bandwidth = max((LARGE - SMALL) / grew, floor)
    # A short answer's closing status (kinds whose fetch ends with one): the batch rung's end
    # to end beyond the light rung's, both at the same light load.
    batch = measured.get("batch")
    status = max(batch.e2e_p50 - light.e2e_p50, 0.0) if batch is not None else 0.0
    fsync = 0.0
    slow = measured.get("fsync")
    if slow is not None:
        after = slow.publish_p50 if slow.publish_p50 is not None else slow.e2e_p50
        before = light.publish_p50 if light.publish_p50 is not None else light.e2e_p50
        fsync = max(after - before, 0.0)
    data = {
        "kind": target,
        "provenance": provenance,
        "round_trip": round_trip.model_dump(),
        "publish": {"none": publish_work, "periodic": publish_work, "always": publish_work + fsync},
        "deliver": deliver,
        "ack": ack,
        "consume": (
            {"mode": "pull", "wake": _wake(wake, wake_p99), "fetch": fetch, "status": status}
            if acks
            else {"mode": "push"}
        ),
        "client": {"publish": 0.0, "consume": 0.0, "timer": timer},
        "parallelism": parallelism,
        "durable_writes_per_delivery": 1.0 if slow is not None and fsync > 0 else 0.0,
    }
    if bandwidth is not None:
        data["bandwidth"] = bandwidth
    if capacity is not None:
        data["capacity"] = capacity
    if idle_cost > 1e-6:
        data["idle"] = {"cost": idle_cost, "tau": IDLE_TAU}
    return parse_profile(data, f"calibration of {target}")


def round_trips(target: str) -> int:
    """Round trips a prefetch-1 consumer of ``target`` waits for per message: the fetch's, and
    the ack's where the consumer awaits its reply (the preset's ``ack_reply``); none for NATS
    core, whose broker pushes."""
    if target == "nats":
        return 0
    return 2 if resolve(Broker(kind=target)).ack_reply else 1


def _latency_p50(m: Measured, acks: bool) -> float | None:
    """The latency a rung's round trip shows best: publish where the broker acks publishes, end
    to end otherwise (NATS core)."""
    return m.publish_p50 if acks else m.e2e_p50


def idle_share(rate: float) -> float:
    """The share of the idle cost a hop pays at ``rate`` messages a second (Poisson arrivals:
    its process idle for the median gap between them)."""
    return 1.0 - math.exp(-(math.log(2) / rate) / IDLE_TAU)


def _capacity(
    small: float,
    large: float,
    size: float,
    clients: Clients | None = None,
    per_fetch: float = 0.0,
    prefetch: int = CEILING_PREFETCH,
) -> dict[str, Any] | None:
    """The capacity (messages and bytes per second) that moves ``small`` per second of
    :data:`SMALL` messages and ``large`` per second of ``size`` bytes, both in full fetches of
    ``prefetch``: each message uses ``1 / messages + size / bytes + per_fetch / prefetch`` of it,
    so with the cost per fetch known (:func:`fetch_cost`), two sizes give the other two (with one
    client process when ``clients`` is known, which the capacity then carries)."""
    if large <= 0 or small <= 0 or size <= SMALL:
        return None
    fetch = per_fetch / prefetch if prefetch else 0.0
    small_cost, large_cost = 1 / small - fetch, 1 / large - fetch
    per_byte = max((large_cost - small_cost) / (size - SMALL), 0.0)
    per_message = max(small_cost - SMALL * per_byte, 0.0)
    capacity: dict[str, Any] = {}
    if per_message > 0:
        capacity["messages"] = 1 / per_message
    if per_byte > 0:
        capacity["bytes"] = 1 / per_byte
    if capacity and per_fetch > 0:
        capacity["fetches"] = 1 / per_fetch
    if capacity and clients is not None:
        capacity["clients"] = clients.model_dump()
    return capacity or None


def fetch_cost(full: float, small: float, prefetch: int, small_prefetch: int) -> float:
    """Seconds of capacity one fetch uses, from the ceilings (one client process) of the same
    messages in fetches of ``prefetch`` (``full`` a second) and of ``small_prefetch`` (``small``
    a second): each message uses its share of a full fetch, ``1/small - 1/full = per_fetch x
    (1/small_prefetch - 1/prefetch)``. 0 where the smaller fetches cost nothing more, or either
    ceiling is unknown."""
    if full <= 0 or small <= 0 or small_prefetch >= prefetch:
        return 0.0
    return max((1 / small - 1 / full) / (1 / small_prefetch - 1 / prefetch), 0.0)


#: Cores the broker's own work can use, where it is not every core: Redis executes commands on
#: one thread ("Redis is, mostly, a single-threaded server from the POV of commands execution",
#: redis.io/topics/benchmarks; redis.conf, THREADED I/O: "By default threading is disabled"); the
#: lab's Redis runs without io-threads. nats-server is a Go program scheduled on every core.
BROKER_CORES = {"redis-streams": 1.0}


def client_shares(target: str, measured: dict[str, Measured]) -> Clients | None:
    """The clients' share of the CPU a message costs, from the ceiling rungs' CPU samples (the
    machine's busy CPU less the broker's, over both), with what decides how many processes
    play the clients; None where the broker's CPU is not known (a remote broker)."""
    from brokerlab.adapters.targets import get_target

    shares = [
        share
        for name in CEILING_RUNGS
        if (m := measured.get(name)) is not None and (share := cpu_share(m.record)) is not None
    ]
    if not shares:
        return None
    cores = os.cpu_count() or 1
    return Clients(
        share=statistics.fmean(shares),
        broker_cores=min(BROKER_CORES.get(target, float(cores)), float(cores)),
        cores=cores,
        single_process_rate=get_target(target).single_process_rate,
    )


def cpu_share(record: RunRecord, cores: int | None = None) -> float | None:
    """Of the CPU a real run used while it sent, the share outside the broker (the clients),
    from its timeline's ``machine_cpu`` (percent of all cores) and ``broker_cpu`` (percent of
    one); None when the broker's CPU was not sampled."""
    cores = cores or os.cpu_count() or 1
    timeline = record.result.trace.timeline
    if timeline is None or "broker_cpu" not in timeline or "machine_cpu" not in timeline:
        return None
    sending = float(record.metrics.get("duration_s") or 0.0)
    window = timeline[(timeline["t_end"] <= sending) if sending > 0 else slice(None)]
    window = window[["broker_cpu", "machine_cpu"]].dropna()
    if window.empty:
        return None
    broker = float(window["broker_cpu"].mean()) / 100.0
    machine = float(window["machine_cpu"].mean()) / 100.0 * cores
    if machine <= 0:
        return None
    return min(max((machine - broker) / machine, 0.0), 1.0)


#: A backlog's drain tells a rate only when it lasts this long with this many messages (the last
#: sends' stragglers drain in milliseconds at any load).
DRAIN_MIN_SECONDS, DRAIN_MIN_MESSAGES = 0.05, 500
#: The largest publish share a fit keeps: deliveries keep some of the capacity.
MAX_PUBLISH_SHARE = 0.9


def _first_deliveries(record: RunRecord) -> tuple[float, float, pd.Series] | None:
    """A run's first and last send, and each message's first delivery; None without both."""
    sends, deliveries = record.result.trace.sends, record.result.trace.deliveries
    if sends.empty or deliveries.empty:
        return None
    first = deliveries.groupby("msg_id")["t_delivered"].min()
    return float(sends["t_sent"].min()), float(sends["t_sent"].max()), first


def drain_rate(record: RunRecord) -> float | None:
    """Messages a second a run delivered after its producers stopped (its backlog's drain, with
    the capacity the deliveries' alone), over the first 99% of them (a straggler does not
    stretch it); None when too little was left to tell (:data:`DRAIN_MIN_SECONDS`,
    :data:`DRAIN_MIN_MESSAGES`)."""
    if (run := _first_deliveries(record)) is None:
        return None
    _, stopped, first = run
    after = first[first > stopped]
    if len(after) < DRAIN_MIN_MESSAGES:
        return None
    span = float(after.quantile(0.99)) - stopped
    if span < DRAIN_MIN_SECONDS:
        return None
    return 0.99 * len(after) / span


def sending_rates(record: RunRecord) -> tuple[float, float] | None:
    """Messages a second a run sent, and delivered, while its producers sent (first send to last
    send); None for a run too short to tell."""
    if (run := _first_deliveries(record)) is None:
        return None
    began, stopped, first = run
    if stopped - began < DRAIN_MIN_SECONDS:
        return None
    sent = float(record.result.trace.sends["t_sent"].notna().sum())
    return sent / (stopped - began), int((first <= stopped).sum()) / (stopped - began)


def publish_shares(
    capacity: dict[str, Any] | None, measured: dict[str, Measured]
) -> tuple[float | None, float | None]:
    """The shares of a message's capacity its publish takes, alone and in a full call (see
    :class:`brokerlab.sim.profile.Capacity`), from the ceiling searches' runs that fell behind.

    Alone: once the producers stop, the backlog drains with the capacity the deliveries' alone,
    so ``1 - ceiling / drain`` (the capacity's rate for that run's message size and client
    processes against its drain rate). In a full call: while a producer too far behind to send
    its messages one by one sent at ``sent`` a second, the deliveries got ``during`` a second of
    what its publishes left: ``(1 - during x delivery cost) / sent`` of the capacity per publish
    (only runs whose calls of one would have needed more than the whole capacity). Medians over
    the runs; None where no run left a backlog to tell."""
    if not capacity:
        return None, None
    fitted = Capacity.model_validate(capacity)
    runs = []
    for name in CEILING_RUNGS:
        m = measured.get(name)
        if m is None:
            continue
        for record in m.behind:
            per_message, per_byte = fitted.seconds(
                _record_processes(record, fitted.clients), _prefetch(m)
            )
            cost = per_message + per_byte * _size(m)
            if cost > 0:
                runs.append((record, cost))
    alone = [
        min(max(1.0 - 1.0 / (drain * cost), 0.0), MAX_PUBLISH_SHARE)
        for record, cost in runs
        if (drain := drain_rate(record)) is not None
    ]
    if not alone:
        return None, None
    share = statistics.median(alone)
    batched = [
        min(max((1.0 - during * (1.0 - share) * cost) / (sent * cost), 0.0), share)
        for record, cost in runs
        if (rates := sending_rates(record)) is not None
        for sent, during in [rates]
        if sent * share * cost > 1.0
    ]
    return share, (statistics.median(batched) if batched else None)


def _record_processes(record: RunRecord, clients: Clients | None) -> int:
    """Client processes a run used: what its harness says (real runs), else the rule's answer."""
    harness = (record.result.info or {}).get("harness") or {}
    if isinstance(harness.get("workers"), int):
        return harness["workers"]
    if clients is None:
        return 1
    data = yaml.safe_load((record.path / results.SCENARIO_FILE).read_text(encoding="utf-8"))
    scenario = parse_scenario(data, f"calibration run {record.path.name}")
    return client_processes(scenario, clients.single_process_rate, clients.cores)


def _processes(m: Measured, clients: Clients | None) -> int:
    """Client processes a rung's run used: the harness's rule, as the simulator applies it."""
    if clients is None:
        return 1
    scenario = parse_scenario(_scenario_data(m), f"calibration rung {m.step.name}")
    return client_processes(scenario, clients.single_process_rate, clients.cores)


def one_process(rate: float, processes: int, clients: Clients | None) -> float:
    """``rate`` reached with ``processes`` client processes, as the capacity with one."""
    if clients is None or rate <= 0:
        return rate
    return rate * clients.scale(processes)


def _prefetch(m: Measured) -> int:
    """Prefetch of a rung."""
    return int(m.step.changes.get("consumers.prefetch", 1))


def _size(m: Measured) -> float:
    """Message size of a rung, in bytes."""
    return float(parse_size(m.step.changes.get("producers.size", f"{SMALL}B")))


def _p99_for_mean(median: float, mean: float) -> float:
    """The p99 of the lognormal with this median and mean (at least 5% over the median, like
    every tail the fit keeps)."""
    if mean <= median:
        return median * 1.05
    sigma = math.sqrt(2 * math.log(mean / median))
    return max(median * math.exp(Z99 * sigma), median * 1.05)


def _wake(median: float, p99: float) -> dict[str, Any]:
    """A pull consumer's wake-up: lognormal (its tail is a busy machine's), or none.

    A wake-up that is nearly always prompt can still have a tail (light load's p99 beyond the
    round trip's): its median is then the least the tail cap allows.
    """
    if median <= 1e-6:
        if p99 <= 1e-5:
            return {"dist": "constant", "value": 0.0}
        median = p99 / WAKE_TAIL_CAP
    p99 = min(max(p99, median * 1.05), median * WAKE_TAIL_CAP)
    return {"dist": "lognormal", "median": median, "p99": p99}


#: Longest wake-up tail (p99 / median) a fit keeps: the wake-up is latency, not capacity, so a
#: long tail costs no throughput; a busy machine's light-load p99 is mostly stalled wake-ups.
WAKE_TAIL_CAP = 1000.0
#: Rounds of :func:`refine` (each replays every rung once in the simulator).
REFINE_ROUNDS = 3


def replays(
    measured: Iterable[Measured], profile: Profile, pool: Executor | None = None, seed: int = 1
) -> list[dict[str, Any]]:
    """metrics.json of each rung simulated with ``profile``, in order; in ``pool``'s processes
    when given (a full calibration's ceiling rungs are 100,000 messages and more each, and
    replaying them one after the other took a sixth of the whole calibration)."""
    scenarios = [
        parse_scenario(_scenario_data(m), f"calibration rung {m.step.name}") for m in measured
    ]
    if pool is None:
        return [simulate_with(scenario, profile, seed) for scenario in scenarios]
    futures = [pool.submit(simulate_with, scenario, profile, seed) for scenario in scenarios]
    return [future.result() for future in futures]


@contextmanager
def replay_pool(processes: int) -> Iterator[Executor | None]:
    """Worker processes for :func:`replays` (spawned, so nothing of a run's state is copied),
    or None with fewer than two; always shut down, unfinished replays cancelled."""
    if processes < 2:
        yield None
        return
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def refine(
    profile: Profile,
    measured: dict[str, Measured],
    rounds: int = REFINE_ROUNDS,
    pool: Executor | None = None,
) -> Profile:
    """Correct the closed-form fit by replaying the rungs in the simulator (in ``pool``'s
    processes when given).

    The equations of :func:`fit` hold for means and single draws; percentiles of sums of
    long-tailed draws, queueing and FIFO links move them. Each round simulates every rung with the
    current profile and scales each cost by what its own rung measured over what the simulator
    gave (round trip by publish latency, delivery by end-to-end latency, parallelism by the
    ceiling, the consumer's timer and the delivery's fsyncs by their rungs' throughput).
    """
    data = profile.model_dump(mode="json")
    acks = profile.kind != "nats"
    best: tuple[float, Profile] | None = None
    #: the longest mean round trip the consumer rung allows (see below), once it has said so
    mean_cap = math.inf
    for _ in range(rounds + 1):
        current = parse_profile(data, f"calibration of {profile.kind}")
        sims = dict(zip(measured, replays(measured.values(), current, pool), strict=True))
        score = _misfit(sims, measured)
        if best is None or score < best[0]:
            best = (score, current)

        def ratio(
            name: str, path: tuple[str, ...], sims: dict[str, Any] = sims, damping: float = 0.5
        ) -> float | None:
            real, sim = _get(measured[name].metrics, path), _get(sims[name], path)
            if not real or not sim or real != real or sim != sim:
                return None
            # Damped: costs interact (FIFO links, queueing), so full steps overshoot.
            return min(max(real / sim, 0.25), 4.0) ** damping

        def _gap(name: str, path: tuple[str, ...], sims: dict[str, Any]) -> float | None:
            """real - simulated, in seconds (latency metrics are in ms)."""
            real, sim = _get(measured[name].metrics, path), _get(sims[name], path)
            if real is None or sim is None or real != real or sim != sim:
                return None
            return (real - sim) / 1000.0

        rtt = data["round_trip"]
        rtt_mean = LogNormal(**rtt).mean  # what this round's replays paid per round trip
        work_before = data["publish"]["none"]["value"] + data["deliver"]["value"]
        # With the idle machine's wake-ups, the round trip is the busy rung's, and the light
        # rung's latency beyond it moves the wake-up's cost (publish latency where there is
        # one, NATS core's end to end otherwise).
        idle = data.get("idle")
        latency = ("latency_ms", "publish", "p50") if acks else ("latency_ms", "end_to_end", "p50")
        if idle and "busy" in measured and (gap := _gap("light", latency, sims)) is not None:
            cost = max(idle["cost"]["value"] + 0.7 * gap / idle_share(LIGHT_RATE), 0.0)
            idle["cost"] = {"dist": "constant", "value": cost}
        fast = "busy" if idle and "busy" in measured else "light"
        if acks and (r := ratio(fast, ("latency_ms", "publish", "p50"))) is not None:
            rtt["median"] *= r
        # The round trip's tail: publish latency's where there is one (pull kinds' end-to-end
        # tail is the wake-up's), end to end's otherwise.
        tail = ("latency_ms", "publish", "p99") if acks else ("latency_ms", "end_to_end", "p99")
        if (r := ratio("light", tail)) is not None:
            rtt["p99"] *= r
        rtt["p99"] = min(max(rtt["p99"], rtt["median"] * 1.05), rtt["median"] * TAIL_CAP)
        if acks:
            # Light-load end to end beyond the publish is the wake-up: move it by the difference.
            wake = data["consume"]["wake"]
            median = wake.get("median", wake.get("value", 0.0))
            p99 = wake.get("p99", median)
            e2e_p50 = ("latency_ms", "end_to_end", "p50")
            gap = light_gap = _gap("light", e2e_p50, sims) or 0.0
            median = max(median + 0.7 * gap, 0.0)
            gap = _gap("light", ("latency_ms", "end_to_end", "p99"), sims)
            p99 = max(p99 + 0.7 * gap, 0.0) if gap is not None else p99
            data["consume"]["wake"] = _wake(median, p99)
            if "batch" in measured and (gap := _gap("batch", e2e_p50, sims)) is not None:
                # The batch rung's end to end beyond the light rung's moves the status.
                status = (data["consume"].get("status") or {}).get("value", 0.0)
                data["consume"]["status"] = {
                    "dist": "constant",
                    "value": max(status + 0.7 * (gap - light_gap), 0.0),
                }
        elif (r := ratio(fast, ("latency_ms", "end_to_end", "p50"))) is not None:
            data["deliver"]["value"] *= r
        large = measured.get("ceiling-large")
        sim_small = _get(sims["ceiling"], ("throughput_per_s", "delivered"))
        sim_large = _get(sims.get("ceiling-large") or {}, ("throughput_per_s", "delivered"))
        if data.get("capacity") and large is not None and sim_small and sim_large:
            # The capacity sets the ceiling: each size's capacity per message, scaled by how far
            # the simulator was off there (the fetches and servers in front of it cost a little).
            before = Capacity.model_validate(data["capacity"])
            small = measured["ceiling"]
            per_message, per_byte = before.seconds(1, _prefetch(small))
            used = [
                (per_message + _size(m) * per_byte) * sim / m.delivered
                for m, sim in ((small, sim_small), (large, sim_large))
            ]
            # The fetch rung likewise: its cost per message, and the two fetch sizes' difference
            # the cost per fetch.
            per_fetch = 1 / before.fetches if before.fetches else 0.0
            fetched = measured.get("ceiling-fetch")
            sim_fetched = _get(sims.get("ceiling-fetch") or {}, ("throughput_per_s", "delivered"))
            if per_fetch and fetched is not None and sim_fetched and fetched.delivered:
                cost = before.seconds(1, _prefetch(fetched))[0] + _size(fetched) * per_byte
                per_fetch = fetch_cost(
                    1 / used[0],
                    fetched.delivered / (cost * sim_fetched),
                    _prefetch(small),
                    _prefetch(fetched),
                )
            data["capacity"] = _capacity(
                1 / used[0],
                1 / used[1],
                _size(large),
                before.clients,
                per_fetch,
                _prefetch(small),
            )
            if data["capacity"] is not None:
                data["capacity"].update(
                    before.model_dump(include={"publish_share", "publish_batched"})
                )
        elif (r := ratio("ceiling", ("throughput_per_s", "delivered"), damping=1.0)) is not None:
            if data["parallelism"] >= 10:
                data["parallelism"] = max(1, round(data["parallelism"] * r))
            else:
                # Few servers: a whole server more or less is too coarse; the publish work takes
                # up the change instead (it moves latency least), so that parallelism / work per
                # message is the ceiling (the work before this round's delivery change, over r).
                wanted = work_before / r
                deliver = data["deliver"]["value"] = min(data["deliver"]["value"], wanted)
                change = wanted - deliver - data["publish"]["none"]["value"]
                for mode in ("none", "periodic", "always"):
                    cost = data["publish"][mode]
                    cost["value"] = max(cost["value"] + change, 0.0)
        shared = measured.get("shared")
        fetch = (data["consume"].get("fetch") or {}).get("value", 0.0)
        if acks and shared is not None and fetch > 0 and shared.delivered:
            sim_rate = _get(sims["shared"], ("throughput_per_s", "delivered"))
            if sim_rate:
                # Served one at a time on parallelism servers: the rate moves by 1 / work.
                change = data["parallelism"] * (1 / shared.delivered - 1 / sim_rate)
                data["consume"]["fetch"] = {"dist": "constant", "value": max(fetch + change, 0.0)}
        consumer = measured["consumer"]
        sim_rate = _get(sims["consumer"], ("throughput_per_s", "delivered"))
        # (NATS core: the simulator counts a pushed message delivered when it reaches the
        # client, before its handler takes it, so that rung's rate says nothing of the timer.)
        if acks and sim_rate and consumer.delivered:
            timer = data["client"]["timer"]["value"] + 1 / consumer.delivered - 1 / sim_rate
            if timer < 0:
                # Slower than the real consumer even with no lateness of its own: its round
                # trips per message (fetch, and an answered ack) cost less than the light
                # rung's round trip says, whose tail is an idle machine's wake-ups and a busy
                # moment's stalls (a busy machine's round trips are shorter: the consumer
                # rung's publish p50 is about half the light rung's). The tail comes down until
                # the mean round trip is shorter by the excess over the round trips, and stays
                # down in later rounds (the light rung's tail then goes to the wake-up); the
                # median stays.
                mean_cap = min(mean_cap, rtt_mean + timer / max(round_trips(profile.kind), 1))
            data["client"]["timer"] = {"dist": "constant", "value": max(timer, 0.0)}
        if mean_cap < math.inf:
            rtt["p99"] = min(rtt["p99"], _p99_for_mean(rtt["median"], mean_cap))
        slow = measured.get("fsync")
        offered = 200.0
        if slow is not None and data.get("durable_writes_per_delivery") and slow.delivered:
            sim_rate = _get(sims["fsync"], ("throughput_per_s", "delivered"))
            extra = data["publish"]["always"]["value"] - data["publish"]["none"]["value"]
            # Either way: a real broker that fell behind needs more fsyncs per delivery, one
            # that kept up where the simulator fell behind needs fewer.
            behind = slow.delivered < 0.95 * offered or sim_rate < 0.95 * offered
            if sim_rate and extra > 0 and behind:
                writes = data["durable_writes_per_delivery"]
                writes += (1 / slow.delivered - 1 / sim_rate) / extra
                data["durable_writes_per_delivery"] = min(max(writes, 0.0), 10.0)
    assert best is not None
    return best[1]


#: What the fit is judged on, per rung: (metric path, weight).
_MISFIT = (
    (("throughput_per_s", "delivered"), 2.0),
    (("latency_ms", "end_to_end", "p50"), 1.0),
    (("latency_ms", "end_to_end", "p99"), 0.5),
    (("latency_ms", "publish", "p50"), 0.5),
)


def _misfit(sims: dict[str, dict[str, Any]], measured: dict[str, Measured]) -> float:
    """Weighted sum of |log(sim / real)| over the rungs: the refinement keeps its best round."""
    total = 0.0
    for name, m in measured.items():
        for path, weight in _MISFIT:
            real, sim = _get(m.metrics, path), _get(sims[name], path)
            if real and sim and real == real and sim == sim:
                total += weight * abs(math.log(sim / real))
    return total


def replay_errors(
    profile: Profile, measured: list[Measured], seed: int = 1, pool: Executor | None = None
) -> list[dict[str, Any]]:
    """Simulate every rung with ``profile`` and compare with the real run (relative errors)."""
    rows = []
    for m, sim in zip(measured, replays(measured, profile, pool, seed), strict=True):
        real = m.metrics
        row = {"run": m.step.name}
        for label, path in (
            ("delivered/s", ("throughput_per_s", "delivered")),
            ("e2e p50", ("latency_ms", "end_to_end", "p50")),
            ("e2e p99", ("latency_ms", "end_to_end", "p99")),
            ("publish p50", ("latency_ms", "publish", "p50")),
        ):
            row[label] = (_get(sim, path), _get(real, path))
        # How far the repeats of this rung disagreed among themselves: a replay error within it
        # is as close as this machine lets anyone tell.
        runs = [r.metrics for r in m.records]
        row["spread"] = {
            "delivered/s": spread(runs, ("throughput_per_s", "delivered")),
            "e2e p50": spread(runs, ("latency_ms", "end_to_end", "p50")),
        }
        rows.append(row)
    return rows


def simulate_with(scenario: Scenario, profile: Profile | None, seed: int = 1) -> dict[str, Any]:
    """metrics.json of a simulator run of ``scenario`` charged with ``profile`` (None: ideal)."""
    from brokerlab.app.runner import _trace_span
    from brokerlab.core.analysis import analyze
    from brokerlab.sim import simulate

    scenario = scenario.model_copy(
        update={"broker": scenario.broker.model_copy(update={"profile": "none"})}
    )
    # The simulator charges the profile itself: its costs and how consumers get messages.
    result = simulate(scenario, seed, profile=profile)
    return analyze(
        result.trace, scenario, target="sim", seed=seed, duration_s=_trace_span(result)
    ).to_metrics()


def _scenario_data(m: Measured) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load((m.record.path / results.SCENARIO_FILE).read_text(encoding="utf-8"))
    data["broker"]["profile"] = "none"
    return data


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = metrics
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def relative(sim: float | None, real: float | None) -> float | None:
    """``sim / real - 1``, or None when either is missing or real is 0."""
    if sim is None or real is None or real == 0 or math.isnan(real):
        return None
    return sim / real - 1.0


def run_rung(base: Scenario, target: str, options: RunOptions, step: Step) -> RunRecord:
    """One run of a rung: the calibration scenario with the rung's changes, on ``target``."""
    scenario = base.with_(paths={**step.changes}, name=f"calibrate-{target}-{step.name}")
    return run_scenario(scenario, target, options)


def _prefixed(say: Say, target: str, line: str) -> None:
    say(f"{target} {line}")


def kept_up(record: RunRecord) -> bool:
    """Whether a run delivered at least :data:`KEPT_UP` of what it offered: at metrics.json's
    delivered rate, or at the rate of its first 99% of deliveries (:func:`bulk_rate`), which a
    few stragglers at the end of a short run do not cut: with the plain rate alone, the
    JetStream ceiling search of :func:`bulk_delivered_rate`'s example bounded the 256 B ceiling
    below 7,803/s while the 4 kB rung kept up with 17,165/s."""
    throughput = record.metrics["throughput_per_s"]
    offered, delivered = throughput.get("offered"), throughput.get("delivered")
    if not offered:
        return False
    if delivered and delivered >= KEPT_UP * offered:
        return True
    bulk = bulk_rate(record)
    return bulk is not None and bulk >= KEPT_UP * offered


def bulk_rate(record: RunRecord) -> float | None:
    """A run's delivered rate up to 99% of what it sent (:func:`bulk_delivered_rate`)."""
    trace = record.result.trace
    return bulk_delivered_rate(trace.sends, trace.deliveries)


def sustained(record: RunRecord) -> bool:
    """Whether a run kept up for good: delivered :data:`KEPT_UP` of its offer with end-to-end
    and publish-delay tails within :data:`SUSTAINED_E2E_P99` and :data:`SUSTAINED_DELAY_P99`."""
    latency = record.metrics.get("latency_ms") or {}
    e2e = (latency.get("end_to_end") or {}).get("p99")
    delay = (latency.get("publish_delay") or {}).get("p99")
    return (
        kept_up(record)
        and (e2e is None or e2e <= SUSTAINED_E2E_P99 * 1000)
        and (delay is None or delay <= SUSTAINED_DELAY_P99 * 1000)
    )


def _offered(step: Step) -> float:
    return parse_rate(step.changes["producers.rate"])


def _at(step: Step, rate: float) -> Step:
    return replace(step, changes={**step.changes, "producers.rate": f"{rate:.0f}/s"})


def find_sustained(
    step: Step,
    first: RunRecord,
    run: Callable[[Step], RunRecord],
    say: Say,
    bisections: int = SUSTAINED_BISECTIONS,
    behind: list[RunRecord] | None = None,
    within: tuple[float, float] | None = None,
) -> tuple[Step, RunRecord, bool]:
    """The ceiling rung at the highest offer the target keeps up with (:func:`sustained`).

    Why not flat out: a target far beyond its ceiling works in full batches (a producer behind
    schedule sends everything due at once, every fetch comes back full) and delivers far more
    than it can sustain: Redis delivered 30,600/s of 40,000/s and 37,000-49,000/s of 60,000/s
    offered, yet kept up with no more than 29,000/s. A simulator fitted to the flat-out figure
    answered ``capacity --find rate`` with twice the real ceiling.

    The offer is doubled while the target keeps up (at most :data:`CEILING_DOUBLINGS` times),
    then bisected ``bisections`` times (:data:`SUSTAINED_BISECTIONS`) between the highest offer
    kept up with and the lowest not, which is also at most 10% above what that run delivered
    (it could not take more). Returns the rung, its run and whether the ceiling was found
    (False: every offer was kept up with, a lower bound); the runs that fell behind are appended
    to ``behind`` (:func:`fell_behind_at` reads the lowest offer among them).

    ``within`` is a cheaper rung's ceiling and the lowest offer it fell behind at, for a rung
    whose messages cost more (:data:`_DEARER`): it cannot keep up with more than the cheaper
    one, so its offers stop at the cheaper ceiling, and a rung that keeps up with that ceiling
    has found its own in the cheaper rung's bracket (no run beyond it could tell more: 4 runs
    fewer where the difference is smaller than the search resolves).
    """
    behind = [] if behind is None else behind
    best: tuple[Step, RunRecord] | None = None
    record = first
    for doubling in range(CEILING_DOUBLINGS + 1):
        if not sustained(record):
            behind.append(record)
            break
        best = (step, record)
        if within is not None and _offered(step) >= within[0]:
            say(f"{step.name}: kept up with the cheaper rung's ceiling, {within[0]:,.0f}/s "
                f"(which fell behind at {within[1]:,.0f}/s)")  # fmt: skip
            return step, record, True
        if doubling == CEILING_DOUBLINGS:
            return step, record, False
        offer = 2 * _offered(step)
        step = _at(step, offer if within is None else min(offer, within[0]))
        say(f"{step.name}: kept up; offering {_offered(step):,.0f}/s")
        record = run(step)
    delivered = float(record.metrics["throughput_per_s"].get("delivered") or 0.0)
    low = _offered(best[0]) if best else 0.0
    high = max(min(_offered(step), 1.1 * delivered), low)
    low = low or high / 2
    for _ in range(bisections):
        if high - low < 0.01 * high:
            break
        middle = _at(step, (low + high) / 2)
        say(f"{step.name}: the ceiling lies between {low:,.0f}/s and {high:,.0f}/s; trying "
            f"{_offered(middle):,.0f}/s")  # fmt: skip
        tried = run(middle)
        if sustained(tried):
            best, low = (middle, tried), _offered(middle)
        else:
            behind.append(tried)
            high = _offered(middle)
    if best is None:
        # Nothing tried was kept up with: the bracket's floor, half the first shortfall.
        step = _at(step, low)
        best = (step, run(step))
    return best[0], best[1], True


def fell_behind_at(behind: list[RunRecord]) -> float | None:
    """The lowest offer among a search's runs that fell behind (metrics.json's ``offered`` is
    the scenario's rate); None when it kept up with every offer."""
    return min((float(r.metrics["throughput_per_s"]["offered"]) for r in behind), default=None)


#: The rungs found by a search (:func:`find_sustained`) rather than repeated.
CEILING_RUNGS = ("ceiling", "ceiling-large", "ceiling-fetch")
#: The deep backlog's offer, times the sustained ceiling, and how long it is offered: far enough
#: beyond that the producer falls behind and sends full calls (see :func:`publish_shares`).
OVERLOAD, OVERLOAD_SECONDS = 4.0, 1.0


def measure(
    steps: list[Step],
    run: Callable[[Step], RunRecord],
    say: Say,
    times: int,
    bisections: int = SUSTAINED_BISECTIONS,
    overload: bool = False,
) -> dict[str, Measured]:
    """Run each rung ``times`` times (``run`` plays one run of a rung); the medians per rung.
    The ceiling rungs are searches instead (:func:`find_sustained` with ``bisections``; the
    large messages' rung starts at the small ones' ceiling), measured at the highest offer kept
    up with. With ``overload``, the small messages' ceiling is then offered :data:`OVERLOAD`
    times over for :data:`OVERLOAD_SECONDS`, once: a backlog deep enough that the producer
    sends full calls, kept with the search's runs that fell behind."""
    measured: dict[str, Measured] = {}
    for index, step in enumerate(steps, 1):
        say(f"[{index}/{len(steps)}] {step.name}: {step.measures}")
        if step.name == "ceiling-large" and "ceiling" in measured:
            # Larger messages cost more: the small ones' ceiling is beyond theirs.
            step = _at(step, max(_offered(measured["ceiling"].step), 100.0))
        if step.name == "ceiling-fetch" and "ceiling" in measured:
            # Smaller fetches cost more per message: below the ceiling rung's, seldom by half.
            step = _at(step, max(_offered(measured["ceiling"].step) / 2, 100.0))
        first = run(step)
        if step.name in CEILING_RUNGS:
            # Found by a search, not repeated: the runs around the answer are its evidence.
            behind: list[RunRecord] = []
            # The fetch rung bisects once less (within about 10%), which keeps the ladder within
            # five minutes; the 4 kB rung not (its byte cost decides every other size's capacity:
            # a 1 kB prediction moved by 6% with one bisection less).
            fewer = max(bisections - 1, 1) if step.name == "ceiling-fetch" else bisections
            cheaper = measured.get("ceiling") if step.name in _DEARER else None
            within = (
                (_offered(cheaper.step), cheaper.fell_behind_at)
                if cheaper is not None and cheaper.fell_behind_at is not None
                else None
            )
            step, found, bounded = find_sustained(
                step, first, run, say, fewer, behind, within=within
            )
            measured[step.name] = Measured.of(step, found)
            measured[step.name].lower_bound = not bounded
            measured[step.name].fell_behind_at = fell_behind_at(behind)
            if overload and step.name == "ceiling":
                deep = _at(step, OVERLOAD * _offered(step))
                deep.changes["producers.duration"] = f"{OVERLOAD_SECONDS}s"
                say(f"{step.name}: a deep backlog for the publishes' share: offering "
                    f"{_offered(deep):,.0f}/s for {OVERLOAD_SECONDS:g} s")  # fmt: skip
                behind.append(run(deep))
            measured[step.name].behind = behind
            continue
        records = [first] + [run(step) for _ in range(times - 1)]
        retries = 0
        while retries < STEAL_RETRIES and len(_quiet(records)) < times:
            # The host took the machine's CPU time during some runs: run the rung again so
            # that the medians come from as many quiet runs as asked for, if the host allows.
            say(f"{step.name}: the machine's host took its CPU time (steal) during a run: again")
            records.append(run(step))
            retries += 1
        measured[step.name] = Measured.of(step, _quiet(records) or records)
    return measured


#: Extra runs a repeated rung may make when the host took the machine's CPU time (steal) during
#: some of its runs: a quiet host costs nothing, a noisy one at most this many runs per rung.
STEAL_RETRIES = 2


def _quiet(records: list[RunRecord]) -> list[RunRecord]:
    """The runs during which the machine's host did not take its CPU time (steal,
    :data:`brokerlab.core.saturation.MACHINE_STOLEN`)."""
    return [r for r in records if not _stolen(r)]


def _stolen(record: RunRecord) -> bool:
    limit = lab_limit(record.result.trace.timeline)
    return limit is not None and limit.stolen


def calibrate(
    targets: list[str],
    options: RunOptions,
    say: Say = print,
    out: Path | None = None,
    quick: bool = False,
    store: bool = True,
    repeats: int | None = None,
) -> list[Calibration]:
    """Run the ladder on each target (each rung ``repeats`` times: :data:`REPEATS`, one when
    ``quick``), fit the medians, replay, store; return every target's calibration."""
    done = []
    stamp = datetime.now(UTC)
    versions = results.package_versions()
    with ExitStack() as stack:
        started: list[Executor | None] = []

        def pool() -> Executor | None:
            """The replays' worker processes, started at the first fit and kept for the others
            (a quick calibration's rungs are small: replayed in this process)."""
            if not started:
                processes = 1 if quick else min(os.cpu_count() or 1, 4)
                started.append(stack.enter_context(replay_pool(processes)))
            return started[0]

        for target in targets:
            calibration = _calibrate_one(
                target,
                options,
                say,
                out=out
                if len(targets) == 1 or out is None
                else out.with_name(f"{out.stem}-{target}{out.suffix or '.yaml'}"),
                quick=quick,
                store=store,
                repeats=repeats,
                stamp=stamp,
                versions=versions,
                pool=pool,
            )
            done.append(calibration)
    return done


def _calibrate_one(
    target: str,
    options: RunOptions,
    say: Say,
    *,
    out: Path | None,
    quick: bool,
    store: bool,
    repeats: int | None,
    stamp: datetime,
    versions: dict[str, str],
    pool: Callable[[], Executor | None],
) -> Calibration:
    """One target's ladder, fit, replay and stored profile (``out``: where, else the
    calibrated profiles' folder); see :func:`calibrate`."""
    from brokerlab.sim.profile import store_profile

    run = partial(run_rung, base_scenario(target), target, options)
    times = repeats or (1 if quick else REPEATS)
    # --quick: a rougher ceiling too (one bisection: within about 25%, not 5%).
    bisections = 1 if quick else SUSTAINED_BISECTIONS
    measured = measure(
        ladder(target, quick),
        run,
        partial(_prefixed, say, target),
        times,
        bisections,
        # NATS core has no backlog to drain: a subscriber beyond its limits is dropped.
        overload=target != "nats",
    )
    server = next((m.record.result.info.get("server_version") for m in measured.values()), None)
    provenance = {
        "origin": "calibrated",
        "host": socket.gethostname(),
        "date": stamp.isoformat(timespec="seconds"),
        "broker_version": f"{target} {server}" if server else target,
        "lab_version": versions["brokerlab"],
        "runs": [str(r.path) for m in measured.values() for r in m.records],
        "note": "fitted by brokerlab calibrate"
        + (
            f" against {options.redis_url or options.nats_url}"
            if (options.redis_url or options.nats_url)
            else ""
        ),
    }
    say(f"{target}: fitting (replaying the runs in the simulator)")
    replayers = pool()
    profile = refine(fit(target, measured, provenance), measured, pool=replayers)
    errors = replay_errors(profile, list(measured.values()), pool=replayers)
    path = store_profile(profile, out) if store else None
    warnings = busy_warnings(target, measured)
    for warning in warnings:
        say(f"warning: {warning}")
    return Calibration(target, profile, list(measured.values()), errors, path, warnings)
