"""The run: one path for one process or many.

:func:`play` sets the broker up, has a :class:`Crew` connect its consumers, picks the start time,
lets the crew send the plan, drains (every acknowledged message completed, or the drain timeout),
tears down and builds the one trace. Who plays the producers and consumers is the crew's business:

* :class:`LocalCrew` plays them in this process, each as its own task; a fault scheduler reaches
  them through :class:`RunClients`. A worker process plays its share of a run with a
  ``LocalCrew`` too, so the sending and consuming code is always the same.
* ``brokerlab.adapters.workers.WorkerCrew`` spreads them over worker processes that share the
  send columns and completed flags; a single process is simply the one-worker case of a run.

The parent's adapter owns the broker objects either way: ``setup`` once before the crew connects
and ``close`` once after it has gone, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import gc
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from brokerlab.adapters.harness.adapter import (
    FETCH_WAIT,
    SETUP_TIMEOUT,
    BrokerAdapter,
    close_adapter,
)
from brokerlab.adapters.harness.clock import (
    BUSY_SHARE,
    SPIN_WINDOW,
    TICK,
    now,
    stop_tasks,
    waits,
)
from brokerlab.adapters.harness.consumers import ConsumerGroup
from brokerlab.adapters.harness.producers import MAX_BATCH, MAX_IN_FLIGHT, ProducerGroup
from brokerlab.adapters.harness.recording import ACKED, DeliveryLog, SendLog, producer_major
from brokerlab.adapters.harness.redaction import RealBrokerError
from brokerlab.core.load import LoadPlan, draw, streams
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import FaultWindow, TargetResult, Trace, build_timeline

#: The harness "fell behind" when p99 publish delay exceeds this (seconds).
BEHIND_P99 = 0.010
#: How a drain ended (run.json ``drain.reason``): every acknowledged message completed ...
DRAIN_COMPLETE = "complete"
#: ... or the drain timeout came first, with ``drain.pending`` acknowledged messages not completed.
DRAIN_TIMED_OUT = "timeout"
#: ... or, for a broker that keeps nothing (``BrokerAdapter.redelivers`` False), the consumers
#: went quiet after the last fault ended: what they have not completed will never come.
DRAIN_QUIET = "quiet"
#: Quiet means no message completed for this long (seconds; longer when the scenario's slowest
#: processing is: see :func:`quiet_period`) ...
QUIET_S = 3.0
#: ... over at least this many of the drain's polls, so a stalled process (a busy machine that
#: did not run the loop) does not pass for quiet consumers.
QUIET_POLLS = 100
#: Seconds between two looks at the completed flags while draining.
DRAIN_POLL = 0.02
#: Lead time between "everything connected" and the first intended send (one process).
START_LEAD = 0.05
#: Seconds between two samples of the broker's own statistics (``BrokerAdapter.broker_stats``).
BROKER_SAMPLE = 0.5


class RunClients:
    """What a fault scheduler may do to a run's clients: crash, restart and slow them down.

    The crew owns producers and consumers; this narrow view keeps the scheduler
    (:mod:`brokerlab.adapters.faults`) from reaching into their bookkeeping.
    """

    def __init__(self, producers: ProducerGroup, consumers: ConsumerGroup) -> None:
        self._producers = producers
        self._consumers = consumers

    async def crash_consumer(self, consumer: int) -> None:
        """Kill a consumer mid-message without acking (see :meth:`ConsumerGroup.crash`)."""
        await self._consumers.crash(consumer)

    def restart_consumer(self, consumer: int) -> None:
        """Start a crashed consumer again under the same name."""
        self._consumers.restart(consumer)

    def slow_consumer(self, consumer: int, factor: float) -> None:
        """Multiply a consumer's processing times by ``factor`` (1 ends the slowdown)."""
        if factor == 1.0:
            self._consumers.slowdown.pop(consumer, None)
        else:
            self._consumers.slowdown[consumer] = factor

    async def crash_producer(self, producer: int) -> None:
        """Kill a producer (see :meth:`ProducerGroup.crash`)."""
        await self._producers.crash(producer)

    def restart_producer(self, producer: int) -> None:
        """Start a crashed producer again; it catches up on what it missed."""
        self._producers.restart(producer)


class FaultPlayer(Protocol):
    """What the run needs of a fault timeline player (``faults.FaultScheduler``): started on the
    run's clock with its clients, stopped at the end, then asked what happened. A protocol, so
    the harness does not import the fault module (which imports the harness)."""

    warnings: list[str]
    info: dict[str, Any]

    def start(self, t0: float, clients: RunClients) -> None: ...

    async def stop(self) -> None: ...

    def windows(self) -> list[FaultWindow]: ...


@dataclass
class CrewReport:
    """What a crew hands back at the end: deliveries, consumer errors, notes."""

    deliveries: DeliveryLog
    errors: list[float] = field(default_factory=list)  # monotonic times of consumer errors
    error_kinds: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: how the processes that played the clients ended their waits (:func:`clock.waits`);
    #: None: this process's
    waits: str | None = None


class Crew(ABC):
    """Who plays a run's producers and consumers, driven by :func:`play` in this order:
    ``connect`` → ``start(t0)`` → ``send`` → (drain on ``done``) → ``finish``; then always
    ``halt`` and ``stop``, and ``report`` once stopped."""

    #: Processes that play the run (for run.json).
    workers: int = 1
    #: Seconds between "connected" and the first intended send.
    lead: float = START_LEAD
    plan: LoadPlan
    sends: SendLog

    @abstractmethod
    async def connect(self) -> None:
        """Consumers connected and fetching; producers able to send."""

    @abstractmethod
    def start(self, t0: float) -> RunClients | None:
        """Producers play the plan from ``t0``; the clients a fault scheduler may hit (or None
        when this crew cannot play faults)."""

    @abstractmethod
    async def send(self, deadline: float) -> list[str]:
        """Wait until every message is sent and settled, or ``deadline``; warnings."""

    @abstractmethod
    def done(self) -> np.ndarray:
        """Each message's completed flag, producer-major (live: the drain watches it)."""

    @abstractmethod
    def completed(self) -> int:
        """Messages completed so far, for progress."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise if part of the crew failed (a worker process died); called while waiting."""

    async def finish(self) -> None:  # noqa: B027 - optional hook
        """After the drain: collect what the parts recorded."""

    @abstractmethod
    def halt(self) -> None:
        """Tell consumers to finish the batch in hand (no waiting: :meth:`stop` waits)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop everything the crew started; never raises, never waits forever."""

    @abstractmethod
    def report(self) -> CrewReport:
        """Deliveries and notes, after :meth:`stop`."""


class LocalCrew(Crew):
    """Producers and consumers in this process, each as its own task.

    ``producers`` and ``consumers`` are the ones this crew plays (all of them in a one-process
    run; a worker's share otherwise, with consumer numbers local to the worker). ``sends`` and
    ``deliveries`` may be views of shared memory (a worker process).
    """

    def __init__(
        self,
        adapter: BrokerAdapter,
        scenario: Scenario,
        plan: LoadPlan,
        rng: np.random.Generator,
        *,
        producers: Sequence[int] | None = None,
        consumers: int | None = None,
        draws: int | None = None,
        sends: SendLog | None = None,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self.adapter = adapter
        self.scenario = scenario
        self.plan = plan
        self.sends = sends if sends is not None else SendLog(plan)
        self.deliveries = deliveries if deliveries is not None else DeliveryLog(plan)
        self.producer_ids = tuple(
            range(scenario.producers.count) if producers is None else producers
        )
        self.consumer_count = scenario.consumers.count if consumers is None else consumers
        processing = draw(scenario.consumers.processing, rng, (draws or len(plan)) + 1024)
        self.consumers = ConsumerGroup(adapter, scenario, self.deliveries, processing, rng)
        self.producers: ProducerGroup | None = None

    async def connect(self) -> None:
        if self.consumer_count:
            async with asyncio.timeout(SETUP_TIMEOUT):
                await self.adapter.open_consumers(self.consumer_count)
        for consumer in range(self.consumer_count):
            self.consumers.start(consumer)

    def start(self, t0: float) -> RunClients:
        self.producers = ProducerGroup(
            self.adapter, self.scenario, self.plan, self.sends, self.producer_ids, t0
        )
        return RunClients(self.producers, self.consumers)

    async def send(self, deadline: float) -> list[str]:
        assert self.producers is not None, "start() first"
        try:
            async with asyncio.timeout(max(0.0, deadline - now())):
                await self.producers.run()
                await self.adapter.flush()
        except TimeoutError:
            self.producers.abandon()
            return ["publishing did not finish in time; unsettled sends are unknown"]
        return []

    def done(self) -> np.ndarray:
        return self.deliveries.done

    def completed(self) -> int:
        return self.deliveries.completed

    def halt(self) -> None:
        self.consumers.stopping = True

    async def stop(self) -> None:
        self.halt()
        consumers = self.consumers
        await stop_tasks([*consumers.tasks.values(), *consumers.helpers], grace=FETCH_WAIT + 1.0)

    def report(self) -> CrewReport:
        consumers = self.consumers
        return CrewReport(self.deliveries, consumers.errors, consumers.error_kinds)


def hard_deadline(scenario: Scenario, plan: LoadPlan) -> float:
    """Longest a run may take after its start: sends, every retry timing out, then the drain.

    A crashed producer sends its backlog when it restarts, so the last crash's end counts too.
    """
    producers = scenario.producers
    retries = producers.max_attempts * (producers.publish_timeout + producers.retry_backoff)
    crashes = [f.at + f.duration for f in scenario.faults if f.action == "producer-crash"]
    sending = max([plan.duration, *crashes])
    return sending + retries + scenario.drain_timeout + 5.0


def send_budget(scenario: Scenario, plan: LoadPlan) -> float:
    """Seconds after the start within which every send must be settled (the drain comes after)."""
    return hard_deadline(scenario, plan) - scenario.drain_timeout


async def play(
    adapter: BrokerAdapter,
    scenario: Scenario,
    crew: Crew,
    *,
    progress: Callable[[int, int], None] | None = None,
    faults: FaultPlayer | None = None,
) -> TargetResult:
    """Play ``crew.plan`` through ``adapter``, drain, and return the trace; always closes the
    adapter.

    ``faults`` plays the scenario's fault timeline on the run's clock (``t0`` is its zero); it
    is stopped, and everything it broke healed, before the crew stops and the adapter closes, so
    teardown reaches the broker whatever the timeline did.
    """
    plan = crew.plan
    tasks: list[asyncio.Task[Any]] = []
    broker_samples: list[dict[str, float]] = []
    warnings: list[str] = []
    drain: dict[str, Any] = {}
    t0 = now()
    try:
        try:
            async with asyncio.timeout(SETUP_TIMEOUT):
                await adapter.setup()
            await crew.connect()
        except RealBrokerError:
            raise
        except Exception as error:
            raise RealBrokerError(
                adapter.scrub(f"{adapter.target}: could not set up the broker: {error!r}")
            ) from None
        # Everything alive now (modules, the plan, the logs) outlives the run: keep the
        # collector from walking it again and again (a full collection took ~35 ms, a stall
        # in the middle of the measurement). Cycles made during the run are still collected.
        gc.freeze()
        t0 = now() + crew.lead
        clients = crew.start(t0)
        if faults is not None:
            if clients is None:
                raise RealBrokerError(f"{adapter.target}: this run cannot play faults")
            faults.start(t0, clients)
        if progress is not None:
            tasks.append(asyncio.create_task(_report_progress(progress, crew, len(plan))))
        tasks.append(asyncio.create_task(_sample_broker(adapter, t0, broker_samples)))
        warnings += await crew.send(t0 + send_budget(scenario, plan))
        quiet_from = None if adapter.redelivers else t0 + faults_end(scenario)
        drain = await _drain(scenario, crew, quiet_from=quiet_from)
        # Consumers stop fetching now, with no await since the drain counted what is pending:
        # only the batch in hand is finished after that count. Halting later (after asking
        # the broker for its backlog, a round trip that is slow on a loaded machine) let a
        # consumer fetch and complete more, and the trace disagreed with ``drain.pending``.
        crew.halt()
        if drain["reason"] == DRAIN_TIMED_OUT:
            drain["at_broker"] = await _backlog(adapter)
        await crew.finish()
    finally:
        crew.halt()
        gc.unfreeze()
        if faults is not None:
            await faults.stop()
        await stop_tasks(tasks, grace=0.0)
        await crew.stop()
        await close_adapter(adapter)
    if progress is not None:
        progress(crew.completed(), len(plan))
    report = crew.report()
    adapter.warnings += [w for w in report.warnings if w not in adapter.warnings]
    if drain.get("reason") == DRAIN_TIMED_OUT:
        at_broker = drain.get("at_broker")
        still = (
            f"; the broker still held {at_broker['undelivered']} undelivered and "
            f"{at_broker['unacked']} unacknowledged entries for the group"
            if at_broker
            else ""
        )
        warnings.append(
            f"the drain timed out after {drain['seconds']:.1f} s with {drain['pending']} "
            f"acknowledged messages not yet completed{still}: they count as lost, but may "
            "only be late (a consumer slower than the backlog needs); a longer drain_timeout "
            "tells them apart"
        )
    result = _result(adapter, scenario, crew, report, t0, warnings, faults, broker_samples)
    if drain:
        result.info["drain"] = drain
    return result


async def _backlog(adapter: BrokerAdapter) -> dict[str, int] | None:
    """The adapter's view of what is still at the broker (None if it cannot say or fails)."""
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            return await adapter.backlog()
    except Exception as error:
        adapter.survived_error("asking the broker for the undrained backlog", error)
        return None


async def _sample_broker(
    adapter: BrokerAdapter, t0: float, samples: list[dict[str, float]]
) -> None:
    """The broker's own statistics every :data:`BROKER_SAMPLE` s, each stamped with the time it
    was asked for (run clock); a failed or slow sample (broker down) is skipped."""
    while True:
        t = now()
        try:
            async with asyncio.timeout(BROKER_SAMPLE * 4):
                stats = await adapter.broker_stats()
        except asyncio.CancelledError:
            raise
        except Exception:
            stats = {}
        if not stats and not samples and t - t0 > 5.0:
            return  # this target reports nothing: stop asking
        if stats:
            samples.append({"t": t - t0, **stats})
        await asyncio.sleep(max(0.0, t + BROKER_SAMPLE - now()))


async def _report_progress(progress: Callable[[int, int], None], crew: Crew, total: int) -> None:
    while True:
        progress(crew.completed(), total)
        await asyncio.sleep(TICK)


async def _drain(
    scenario: Scenario, crew: Crew, *, quiet_from: float | None = None
) -> dict[str, Any]:
    """Wait until every acknowledged message was delivered and completed, or the drain timeout.

    Returns how the drain ended, for run.json's ``drain``: ``reason`` (``complete``,
    ``timeout`` or ``quiet``), ``seconds`` it took, and ``pending``: acknowledged messages not
    completed at its end. A timeout with messages pending is the one case where the checks'
    "lost" may only mean "not yet delivered"; recording it lets a reader (and the verdict) tell
    the two apart.

    With ``quiet_from`` (a time on the run's clock: when the last fault ends), the broker keeps
    nothing for its consumers (NATS core): once no message has completed for
    :func:`quiet_period` after that time, nothing more can come and the drain ends ``quiet``
    (the shipped fault matrix's NATS kill cell waited its whole 45 s for messages it had lost).
    """
    owed = producer_major(crew.plan)[crew.sends.outcome == ACKED]
    done = crew.done()
    start = now()
    deadline = start + scenario.drain_timeout
    quiet = quiet_period(scenario)
    last_count, since, polls = -1, start, 0
    while True:
        crew.check()
        completed = int(np.count_nonzero(done[owed]))
        pending = int(len(owed) - completed)
        t = now()
        if completed != last_count:
            last_count, since, polls = completed, t, 0
        else:
            polls += 1
        ended = {"seconds": round(t - start, 3), "pending": pending}
        if pending == 0 or t >= deadline:
            return {"reason": DRAIN_COMPLETE if pending == 0 else DRAIN_TIMED_OUT, **ended}
        if quiet_from is not None and t - max(since, quiet_from) >= quiet and polls >= QUIET_POLLS:
            return {"reason": DRAIN_QUIET, **ended, "quiet_s": round(quiet, 3)}
        await asyncio.sleep(DRAIN_POLL)


def quiet_period(scenario: Scenario) -> float:
    """How long consumers that complete nothing must stay so to be called quiet: QUIET_S, or
    four times the scenario's slowest processing (its 99.9th percentile) when that is longer,
    so a consumer busy with one slow message is not taken for an idle one."""
    processing = draw(scenario.consumers.processing, np.random.default_rng(0), 10_000)
    return max(QUIET_S, 4.0 * float(np.quantile(processing, 0.999)))


def faults_end(scenario: Scenario) -> float:
    """When the scenario's last fault ends, in seconds from the run's start (0 without any)."""
    return max((fault.at + fault.duration for fault in scenario.faults), default=0.0)


def _delay_warning(log: SendLog, t0: float) -> str | None:
    delay = log.t_sent - (t0 + log.plan.t_intended)
    delay = delay[~np.isnan(delay)]
    if len(delay) == 0:
        return None
    p99 = float(np.percentile(delay, 99))
    if p99 <= BEHIND_P99:
        return None
    return (
        f"the harness fell behind the offered load: p99 publish delay {p99 * 1000:.1f} ms "
        f"(over {BEHIND_P99 * 1000:.0f} ms); latencies include that lag, which is open-loop "
        "correct, but the client machine, not the broker, may be the bottleneck"
    )


def _result(
    adapter: BrokerAdapter,
    scenario: Scenario,
    crew: Crew,
    report: CrewReport,
    t0: float,
    warnings: list[str],
    faults: FaultPlayer | None = None,
    broker_samples: list[dict[str, float]] | None = None,
) -> TargetResult:
    """One trace, the same schema and the same warnings whoever played the run."""
    sends, deliveries = crew.sends, report.deliveries
    sends_table = sends.table(t0)
    deliveries_table = deliveries.table(t0)
    errors = np.sort(np.asarray(report.errors, dtype="float64")) - t0
    windows = faults.windows() if faults is not None else []
    broker = pd.DataFrame(broker_samples) if broker_samples else None
    timeline = build_timeline(sends_table, deliveries_table, windows, errors=errors, broker=broker)
    behind = _delay_warning(sends, t0)
    if behind and windows:
        behind += " (this run's faults, such as outages and producer crashes, delay sends too)"
    warnings = [*warnings, *([behind] if behind else []), *adapter.warnings]
    warnings += adapter.survived_warnings()
    if report.error_kinds:
        kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(report.error_kinds.items()))
        warnings.append(f"consumer errors (retried): {kinds}")
    if faults is not None:
        warnings += faults.warnings
    else:
        if scenario.faults:
            warnings.append("the fault timeline was not played on this run; it was fault-free")
        if scenario.network.delay.mean > 0:
            warnings.append("network delay was not added on this run (no fault proxy)")
    if deliveries.unexpected:
        warnings.append(f"{deliveries.unexpected} deliveries of messages this run never planned")
    sync = scenario.producers.confirm == "sync"
    info: dict[str, Any] = {
        "target": adapter.target,
        **adapter.info,
        **({"faults": faults.info} if faults is not None else {}),
        "run_id": adapter.names.run_id,
        "harness": {
            "clock": "time.monotonic",
            "workers": crew.workers,
            "max_batch": 1 if sync else MAX_BATCH,
            "max_in_flight": 1 if sync else MAX_IN_FLIGHT,
            "spin_window_s": SPIN_WINDOW,
            # waits use timers instead of yields while the process's own work is above this
            "busy_share": BUSY_SHARE,
            # how the clients' waits ended: a multi-process run's workers always use timers
            "waits": report.waits or waits(),
            "t0_monotonic": t0,  # the run clock's zero, for samples taken outside the harness
        },
    }
    return TargetResult(
        trace=Trace(sends=sends_table, deliveries=deliveries_table, timeline=timeline),
        faults=windows,
        info=info,
        warnings=[adapter.scrub(w) for w in warnings],
    )


async def run_harness(
    adapter: BrokerAdapter,
    scenario: Scenario,
    seed: int,
    plan: LoadPlan,
    *,
    progress: Callable[[int, int], None] | None = None,
    faults: FaultPlayer | None = None,
) -> TargetResult:
    """Play ``plan`` in this process: :func:`play` with a :class:`LocalCrew` (the one-process
    case, kept under its old name for code written against it)."""
    crew = LocalCrew(adapter, scenario, plan, streams(seed)["processing"])
    return await play(adapter, scenario, crew, progress=progress, faults=faults)
