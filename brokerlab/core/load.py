"""The load plan: which message each producer sends, when it intends to, how big, with which key.

The simulator and the real-broker harness both play this plan, so a simulated run and a real run
offer exactly the same load (open loop: latency counts from ``t_intended``). Everything is drawn
up front with NumPy from seeded streams, so the same seed gives the same plan on every target.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from brokerlab.core.scenario import (
    Constant,
    Distribution,
    Empirical,
    Exponential,
    LogNormal,
    OnOff,
    Poisson,
    Producers,
    Ramp,
    Scenario,
    Steady,
    Uniform,
)
from brokerlab.core.trace import NO_KEY

#: Independent random streams, one per purpose, so that changing one part of a scenario (say the
#: processing time) does not reshuffle the arrivals of an otherwise identical run.
STREAMS = ("arrivals", "sizes", "keys", "processing", "network", "service", "faults")


def streams(seed: int) -> dict[str, np.random.Generator]:
    """One NumPy generator per purpose, all derived from the run's seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)
    }


def draw(dist: Distribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of a scenario distribution (seconds or bytes, as the field says)."""
    match dist:
        case Constant(value=value):
            return np.full(n, value, dtype="float64")
        case Exponential(mean=mean):
            return rng.exponential(mean, n) if mean > 0 else np.zeros(n)
        case Uniform(min=low, max=high):
            return rng.uniform(low, high, n)
        case LogNormal():
            return rng.lognormal(np.log(dist.median), dist.sigma, n)
        case Empirical(values=values):
            return rng.choice(np.asarray(values, dtype="float64"), n)
    raise TypeError(f"unknown distribution {dist!r}")  # pragma: no cover - validated earlier


@dataclass(frozen=True)
class LoadPlan:
    """Every message the producers will send, sorted by intended send time.

    Columns are NumPy arrays of equal length: ``producer``, ``seq`` (per producer, from 0),
    ``key`` (``NO_KEY`` when the scenario has no keys), ``size`` in bytes, ``t_intended`` in
    seconds from the run's start.
    """

    producer: np.ndarray
    seq: np.ndarray
    key: np.ndarray
    size: np.ndarray
    t_intended: np.ndarray

    def __len__(self) -> int:
        return len(self.t_intended)

    def for_producer(self, producer: int) -> LoadPlan:
        """The part of the plan one producer sends (already in its send order)."""
        mask = self.producer == producer
        return LoadPlan(
            self.producer[mask],
            self.seq[mask],
            self.key[mask],
            self.size[mask],
            self.t_intended[mask],
        )

    @property
    def duration(self) -> float:
        """Intended time of the last send."""
        return float(self.t_intended[-1]) if len(self) else 0.0


def _unit_poisson(rng: np.random.Generator, count: int | None, horizon: float | None) -> np.ndarray:
    """Arrival times of a rate-1 Poisson process: ``count`` of them, or all up to ``horizon``."""
    if count is not None:
        return np.cumsum(rng.exponential(1.0, count))
    assert horizon is not None
    chunks: list[np.ndarray] = []
    last = 0.0
    while last <= horizon:
        size = max(1024, int((horizon - last) * 1.1) + 16)
        times = last + np.cumsum(rng.exponential(1.0, size))
        chunks.append(times)
        last = float(times[-1])
    times = np.concatenate(chunks)
    return times[times <= horizon]


def _producer_times(
    producers: Producers, rate: float, index: int, count: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Intended send times of one producer sending at ``rate`` (its share of the total)."""
    horizon = producers.duration
    arrival = producers.arrival
    if isinstance(arrival, Steady):
        # Producers are phase-shifted so that together they send evenly spaced messages.
        offset = index / producers.rate
        n = count if count is not None else int(np.ceil((horizon - offset) * rate))
        return offset + np.arange(max(n, 0)) / rate
    if isinstance(arrival, Poisson):
        return _unit_poisson(rng, count, None if horizon is None else horizon * rate) / rate
    if isinstance(arrival, OnOff):
        # Draw in "on time" at the burst rate, then open the gaps of the off periods.
        cycle = arrival.on + arrival.off
        peak = rate * cycle / arrival.on
        on_horizon = None
        if horizon is not None:
            whole, part = divmod(horizon, cycle)
            on_horizon = whole * arrival.on + min(part, arrival.on)
        on_times = (
            _unit_poisson(rng, count, None if on_horizon is None else on_horizon * peak) / peak
        )
        periods, within = np.divmod(on_times, arrival.on)
        return periods * cycle + within
    if isinstance(arrival, Ramp):
        # Non-homogeneous Poisson by inversion of the cumulative intensity Λ(t).
        start, over = arrival.start / producers.count, arrival.over
        slope = (rate - start) / over
        ramp_area = start * over + slope * over**2 / 2
        total = None
        if horizon is not None:
            if horizon <= over:
                total = start * horizon + slope * horizon**2 / 2
            else:
                total = ramp_area + rate * (horizon - over)
        area = _unit_poisson(rng, count, total)
        times = np.empty_like(area)
        inside = area <= ramp_area
        a = area[inside]
        if slope == 0:
            times[inside] = a / start
        else:
            times[inside] = (-start + np.sqrt(start**2 + 2 * slope * a)) / slope
        times[~inside] = over + (area[~inside] - ramp_area) / rate
        return times
    raise TypeError(f"unknown arrival process {arrival!r}")  # pragma: no cover


def plan_load(scenario: Scenario, seed: int) -> LoadPlan:
    """Draw the whole load of a scenario for a seed (deterministic)."""
    producers = scenario.producers
    rngs = streams(seed)
    share = producers.rate / producers.count
    parts: list[tuple[int, np.ndarray]] = []
    for index in range(producers.count):
        count = None
        if producers.messages is not None:
            base, extra = divmod(producers.messages, producers.count)
            count = base + (1 if index < extra else 0)
        parts.append((index, _producer_times(producers, share, index, count, rngs["arrivals"])))
    producer = np.concatenate([np.full(len(t), i, dtype="int32") for i, t in parts])
    seq = np.concatenate([np.arange(len(t), dtype="int64") for _, t in parts])
    t_intended = np.concatenate([t for _, t in parts]).astype("float64")
    order = np.argsort(t_intended, kind="stable")
    producer, seq, t_intended = producer[order], seq[order], t_intended[order]
    n = len(t_intended)
    size = np.maximum(np.round(draw(producers.size, rngs["sizes"], n)), 1).astype("int64")
    if producers.keys:
        key = rngs["keys"].integers(0, producers.keys, n, dtype="int64")
    else:
        key = np.full(n, NO_KEY, dtype="int64")
    return LoadPlan(producer=producer, seq=seq, key=key, size=size, t_intended=t_intended)


#: Environment variable that fixes how many processes play a real run's clients.
WORKERS_ENV = "BROKERLAB_WORKERS"


def requested_processes() -> int | None:
    """The process count ``BROKERLAB_WORKERS`` asks for, or None when it is unset."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a whole number of processes, 1 or more")
    return value


def peak_rate(scenario: Scenario) -> float:
    """Highest rate the producers offer: the burst rate of on/off arrivals, else the rate."""
    producers = scenario.producers
    if isinstance(producers.arrival, OnOff):
        cycle = producers.arrival.on + producers.arrival.off
        return producers.rate * cycle / producers.arrival.on
    return producers.rate


def client_processes(
    scenario: Scenario, single_process_rate: float, cores: int, requested: int | None = None
) -> int:
    """How many processes play a real run's clients: the harness's rule, which the simulator
    follows too, because the clients' share of the machine decides a local broker's ceiling.

    ``requested`` (or else ``BROKERLAB_WORKERS``) wins; otherwise enough processes that each
    stays under ``single_process_rate``, at most one per core. Never more than there are
    producers or consumers to share out, and always 1 for a scenario with faults or network
    delay, which one process injects (through its fault proxies).
    """
    if scenario.faults or scenario.network.delay.mean > 0:
        return 1
    if requested is None:
        requested = requested_processes()
    if requested is None:
        needed = math.ceil(peak_rate(scenario) / single_process_rate)
        requested = min(needed, max(cores, 1))
    parts = max(scenario.producers.count, scenario.consumers.count)
    return max(1, min(requested, parts))
