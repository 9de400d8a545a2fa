"""Multi-process load: one run's producers and consumers spread over worker processes.

One Python process tops out at some tens of thousands of messages a second: encoding, the client's
protocol code and the consumer loop share one core (the GIL). Past that the harness's own lag
shows up as publish delay and latency the broker did not cause. So a run whose offered rate is
above what one process sustains (:data:`SINGLE_PROCESS_MAX_RATE`), or that asks for it
(``BROKERLAB_WORKERS=N``), plays its plan in N ``spawn`` processes:

* The parent creates the run's broker objects (``setup``) and deletes them (``close``), once; a
  worker's adapter (:data:`WORKER_ADAPTERS`) only connects to them and disconnects.
* Every process draws the same plan from scenario and seed; worker ``i`` plays producers and
  consumers ``i, i + N, ...`` with the harness's own :class:`ProducerGroup` and
  :class:`ConsumerGroup`, so the sending and consuming code is the single-process code.
* The send columns and a "completed" flag per message live in shared memory: each worker fills
  its producers' rows in place, and the parent sees the whole run, for progress and for the final
  drain (every acked message completed, by whichever process's consumer got it).
* One clock: ``time.monotonic`` is CLOCK_MONOTONIC, system-wide on Linux. The parent picks the
  start time once every worker is connected; all intended send times count from it.
* Deliveries come back at the end as columns, and the parent builds one trace exactly as a
  single-process run does (same schema, same checks, same warnings).
* Workers never outlive the parent: daemon processes, ``PR_SET_PDEATHSIG``, a parent check in
  every wait, a hard deadline of their own, and terminate / kill in the parent's ``finally``. A
  worker that fails or dies ends the run with a :class:`RealBrokerError` that names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import os
import queue
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import numpy as np

from brokerlab.adapters import harness
from brokerlab.adapters.harness import (
    ACKED,
    CLOSE_TIMEOUT,
    FETCH_WAIT,
    MAX_IN_FLIGHT,
    TICK,
    AdapterFactory,
    BrokerAdapter,
    ConsumerGroup,
    DeliveryLog,
    ProducerGroup,
    RealBrokerError,
    RunNames,
    Scrubber,
    SendLog,
    hard_deadline,
    now,
    stop_tasks,
)
from brokerlab.adapters.nats_core import NatsCoreAdapter
from brokerlab.adapters.nats_jetstream import API_TIMEOUT, NatsJetStreamAdapter
from brokerlab.adapters.redis_streams import RedisStreamsAdapter
from brokerlab.core.load import LoadPlan, draw, plan_load, streams
from brokerlab.core.scenario import OnOff, Scenario
from brokerlab.core.trace import TargetResult

#: Offered rate (messages/s) up to which one process keeps up, per target: where it stopped
#: keeping up (p99 publish delay over ``harness.BEHIND_P99``, or not everything delivered) in
#: ``python bench/bench_brokers.py --sweep`` on the 2-core reference machine, with hiredis.
#: Redis kept up at 40k/s and not at 80k/s; NATS at 60k/s, not 120k/s; JetStream at 4k/s, not
#: 8k/s. There, the broker shares the two cores, so a second process buys little in open-loop
#: runs (it roughly doubles flat-out Redis publishing): the limits are the single-process
#: limits, not a safety margin below them.
SINGLE_PROCESS_MAX_RATE: dict[str, float] = {
    "redis-streams": 40_000.0,
    "nats": 60_000.0,
    "nats-jetstream": 5_000.0,
}
#: Environment variable that sets the number of processes (1 = single process), for the CLI too.
WORKERS_ENV = "BROKERLAB_WORKERS"
#: Longest a worker may take to start, import, connect and open its consumers.
READY_TIMEOUT = 60.0
#: Lead between "every worker ready" and the first intended send: workers poll for the start
#: time and then index their part of the plan, which takes longer for long plans.
START_LEAD = 0.2
START_LEAD_PER_MESSAGE = 4e-7
#: How often waiting processes look at the shared flags and the message queue.
POLL = 0.005
#: How long an aborted run gives the other workers to exit before terminating them.
ABORT_GRACE = 2.0
#: How long a finished worker may take to stop its consumers, disconnect and hand its deliveries.
FINISH_TIMEOUT = FETCH_WAIT + 1.0 + CLOSE_TIMEOUT + 5.0


# --------------------------------------------------------------------------- worker adapters


class RedisStreamsWorker(RedisStreamsAdapter):
    """Redis Streams in a worker: uses the parent's stream and group, never creates or deletes."""

    #: The run's consumer numbers this worker plays (set before ``open_consumers``).
    consumer_ids: Sequence[int] = ()

    async def setup(self) -> None:
        # Connections open lazily; ping so a broker this worker cannot reach fails here, clearly.
        await self.client.ping()

    async def open_consumers(self, count: int) -> None:
        await super().open_consumers(count)
        # Broker-side names follow the run's consumer numbers, so they are unique across workers.
        self.consumer_names = [f"consumer-{c}" for c in self.consumer_ids]

    async def close(self) -> None:
        # The adapter's close ends with DEL of the stream, which belongs to the parent: point that
        # DEL at a key that does not exist and reuse the rest (tasks, pipelines, connections).
        self.key = f"{self.key}:detached-worker"
        await super().close()


class NatsJetStreamWorker(NatsJetStreamAdapter):
    """JetStream in a worker: binds to the parent's stream and durable, never creates or deletes."""

    async def setup(self) -> None:
        self.publisher = await self.connections.connect(f"brokerlab-{self.names.run_id}-pub")
        self.js = self.publisher.jetstream(
            timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT * 4
        )
        # ``stream_created`` stays False, so ``close`` only disconnects.


#: Target -> the adapter a worker process uses. NATS core creates nothing, so its own adapter
#: does. A target missing here always runs in one process.
WORKER_ADAPTERS: dict[str, AdapterFactory] = {
    "redis-streams": RedisStreamsWorker,
    "nats": NatsCoreAdapter,
    "nats-jetstream": NatsJetStreamWorker,
}


# --------------------------------------------------------------------------- how many


def requested_workers() -> int | None:
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


def worker_count(scenario: Scenario, target: str, requested: int | None = None) -> int:
    """How many processes play a run.

    ``requested`` (or else ``BROKERLAB_WORKERS``) wins; otherwise enough processes that each stays
    under the target's single-process rate, at most one per CPU. Never more than there are
    producers or consumers to share out, and always 1 for scenarios with faults or network delay,
    which the single-process harness injects (through its fault proxies).
    """
    if target not in WORKER_ADAPTERS or scenario.faults or scenario.network.delay.mean > 0:
        return 1
    if requested is None:
        requested = requested_workers()
    if requested is None:
        needed = math.ceil(peak_rate(scenario) / SINGLE_PROCESS_MAX_RATE[target])
        requested = min(needed, os.cpu_count() or 1)
    parts = max(scenario.producers.count, scenario.consumers.count)
    return max(1, min(requested, parts))


# --------------------------------------------------------------------------- shared state

#: SendLog columns that live in shared memory (each worker writes its producers' rows).
SEND_COLUMNS = ("t_sent", "t_acked", "outcome", "attempts", "uncertain", "settled")


@dataclass
class SharedRun:
    """What every process of a run sees: send columns, completed flags, start time, stop flag.

    Raw shared memory without locks: rows are disjoint per producer, and a completed flag only
    ever goes from False to True, so concurrent writers cannot corrupt each other.
    """

    size: int
    columns: dict[str, tuple[Any, str]]  # name -> (RawArray of bytes, NumPy dtype)
    done: Any  # RawArray: one byte per message, producer-major (DeliveryLog.position)
    start: Any  # RawValue double: absolute monotonic start time, NaN until the parent sets it
    stop: Any  # RawValue byte: 1 when consumers should finish and workers report

    @classmethod
    def allocate(cls, context: SpawnContext, plan: LoadPlan) -> SharedRun:
        """Shared columns initialised like a fresh :class:`SendLog` (never sent = failed)."""
        fresh = SendLog(plan)
        columns: dict[str, tuple[Any, str]] = {}
        for name in SEND_COLUMNS:
            column = getattr(fresh, name)
            raw = context.RawArray("b", max(column.nbytes, 1))
            np.frombuffer(raw, dtype=column.dtype, count=len(column))[:] = column
            columns[name] = (raw, column.dtype.str)
        return cls(
            size=len(plan),
            columns=columns,
            done=context.RawArray("b", max(len(plan), 1)),
            start=context.RawValue("d", math.nan),
            stop=context.RawValue("b", 0),
        )

    def send_log(self, plan: LoadPlan) -> SendLog:
        """A :class:`SendLog` whose columns are views of the shared memory."""
        log = SendLog(plan)
        for name, (raw, dtype) in self.columns.items():
            setattr(log, name, np.frombuffer(raw, dtype=dtype, count=self.size))
        return log

    def done_flags(self) -> np.ndarray:
        """The completed flag of every message, producer-major, as a shared view."""
        return np.frombuffer(self.done, dtype=bool, count=self.size)


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs, picklable: its share of the run and where the broker is."""

    index: int
    workers: int
    target: str
    url: str
    scenario: Scenario
    seed: int
    names: RunNames
    producers: tuple[int, ...]
    consumers: tuple[int, ...]
    parent_pid: int


#: DeliveryLog columns a worker hands back (the rest is counts and notes).
DELIVERY_COLUMNS = ("producer", "seq", "consumer", "delivery_no", "t_delivered", "t_done")


@dataclass
class WorkerReport:
    """What a worker hands back at the end: its deliveries (run-wide consumer numbers) and notes."""

    producer: np.ndarray
    seq: np.ndarray
    consumer: np.ndarray
    delivery_no: np.ndarray
    t_delivered: np.ndarray
    t_done: np.ndarray
    errors: np.ndarray
    error_kinds: dict[str, int]
    unexpected: int
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- worker side

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the parent goes; exit if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_main(job: WorkerJob, shared: SharedRun, messages: multiprocessing.Queue[Any]) -> None:
    """Entry point of a worker process: play its share of the run, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(job.parent_pid)
    scrub = Scrubber(job.url)
    try:
        report = asyncio.run(_play(job, shared, messages))
    except RealBrokerError as error:  # already a clear, scrubbed message naming the worker
        messages.put(("error", job.index, str(error)))
        sys.exit(1)
    except BaseException as error:  # a bug: hand the parent the traceback's end
        detail = traceback.format_exc(limit=-4)
        text = f"{job.target}: worker {job.index} failed: {type(error).__name__}: {error}\n{detail}"
        messages.put(("error", job.index, scrub(text).rstrip()))
        sys.exit(1)
    messages.put(("done", job.index, report))


async def _wait_for(ready: Callable[[], bool], deadline: float, parent_pid: int, what: str) -> None:
    """Poll a shared flag until it is set; give up at the deadline or when the parent is gone."""
    while not ready():
        if os.getppid() != parent_pid:
            raise RuntimeError("the parent process exited")
        if now() > deadline:
            raise TimeoutError(f"no {what} from the parent")
        await asyncio.sleep(POLL)


async def _play(
    job: WorkerJob, shared: SharedRun, messages: multiprocessing.Queue[Any]
) -> WorkerReport:
    """The worker's run: connect, report ready, send from the shared start, consume until stop."""
    scenario = job.scenario
    plan = plan_load(scenario, job.seed)
    sends = shared.send_log(plan)
    deliveries = DeliveryLog(plan)
    deliveries.done = shared.done_flags()
    rng = streams(job.seed)["processing"].spawn(job.workers)[job.index]
    processing = draw(scenario.consumers.processing, rng, len(plan) // job.workers + 1024)
    adapter = WORKER_ADAPTERS[job.target](job.url, scenario, job.names)
    if isinstance(adapter, RedisStreamsWorker):
        adapter.consumer_ids = job.consumers
    consumers = ConsumerGroup(adapter, scenario, deliveries, processing, rng)
    warnings: list[str] = []
    try:
        try:
            async with asyncio.timeout(30.0):
                await adapter.setup()
                if job.consumers:
                    await adapter.open_consumers(len(job.consumers))
        except Exception as error:
            raise RealBrokerError(
                adapter.scrub(f"{job.target}: worker {job.index} could not connect: {error!r}")
            ) from None
        for consumer in range(len(job.consumers)):
            consumers.start(consumer)
        messages.put(("ready", job.index, len(plan)))
        await _wait_for(
            lambda: not math.isnan(shared.start.value) or bool(shared.stop.value),
            now() + READY_TIMEOUT + 10.0,
            job.parent_pid,
            "start time",
        )
        t0 = shared.start.value
        if not shared.stop.value:
            producers = ProducerGroup(adapter, scenario, plan, sends, job.producers, t0)
            send_budget = hard_deadline(scenario, plan) - scenario.drain_timeout
            try:
                async with asyncio.timeout(max(0.0, t0 + send_budget - now())):
                    await producers.run()
                    await adapter.flush()
            except TimeoutError:
                producers.abandon()
                warnings.append("publishing did not finish in time; unsettled sends are unknown")
            messages.put(("sent", job.index, None))
        await _wait_for(
            lambda: bool(shared.stop.value),
            t0 + hard_deadline(scenario, plan) + 5.0,
            job.parent_pid,
            "stop signal",
        )
    finally:
        consumers.stopping = True
        await stop_tasks([*consumers.tasks.values()], grace=FETCH_WAIT + 1.0)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await adapter.close()
    local_to_run = np.asarray(job.consumers, dtype="int32")
    return WorkerReport(
        producer=np.asarray(deliveries.producer, dtype="int64"),
        seq=np.asarray(deliveries.seq, dtype="int64"),
        consumer=local_to_run[np.asarray(deliveries.consumer, dtype="int64")],
        delivery_no=np.asarray(deliveries.delivery_no, dtype="int32"),
        t_delivered=np.asarray(deliveries.t_delivered, dtype="float64"),
        t_done=np.asarray(deliveries.t_done, dtype="float64"),
        errors=np.asarray(consumers.errors, dtype="float64"),
        error_kinds=consumers.error_kinds,
        unexpected=deliveries.unexpected,
        warnings=[*warnings, *adapter.warnings],
    )


# --------------------------------------------------------------------------- parent side


class _Workers:
    """The parent's view of its worker processes: their stage, reports, failures, progress."""

    def __init__(
        self,
        target: str,
        processes: list[SpawnProcess],
        messages: multiprocessing.Queue[Any],
        shared: SharedRun,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.target = target
        self.processes = processes
        self.messages = messages
        self.shared = shared
        self.progress = progress
        self.stage: dict[int, str] = {}
        self.reports: dict[int, WorkerReport] = {}
        self._next_tick = 0.0

    def poll(self) -> None:
        """Take in worker messages; raise if a worker failed or died without reporting."""
        self._receive()
        for index, process in enumerate(self.processes):
            if process.exitcode is None or index in self.reports:
                continue
            self._receive()  # its last message may have arrived just before it exited
            if index not in self.reports:
                raise RealBrokerError(
                    f"{self.target}: worker {index} (pid {process.pid}) exited with code "
                    f"{process.exitcode} during the run"
                    + ("" if process.exitcode else " without reporting")
                )
        if self.progress is not None and now() >= self._next_tick:
            self._next_tick = now() + TICK
            self.progress(int(np.count_nonzero(self.shared.done_flags())), self.shared.size)

    def _receive(self) -> None:
        while True:
            try:
                kind, index, body = self.messages.get_nowait()
            except queue.Empty:
                return
            if kind == "error":
                raise RealBrokerError(body)
            self.stage[index] = kind
            if kind == "done":
                self.reports[index] = body

    def reached(self, *stages: str) -> bool:
        return len(self.processes) == sum(
            1 for i in range(len(self.processes)) if self.stage.get(i) in stages
        )

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Poll until ``ready()`` or the timeout; True if it became ready."""
        deadline = now() + timeout
        while True:
            self.poll()
            if ready():
                return True
            if now() >= deadline:
                return False
            await asyncio.sleep(POLL if timeout < 1.0 else 0.02)

    def end(self, grace: float) -> None:
        """Make sure no worker is left: wait ``grace``, then terminate, then kill, and reap."""
        self.shared.stop.value = 1
        deadline = now() + grace
        for process in self.processes:
            process.join(max(0.0, deadline - now()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        with contextlib.suppress(Exception):
            self.messages.close()
            self.messages.cancel_join_thread()


def split(count: int, workers: int) -> list[tuple[int, ...]]:
    """Round-robin share of ``count`` producers or consumers among ``workers`` processes."""
    return [tuple(range(count))[index::workers] for index in range(workers)]


async def run_workers(
    factory: AdapterFactory,
    url: str,
    scenario: Scenario,
    seed: int,
    names: RunNames,
    workers: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    on_start: Callable[[list[int]], None] | None = None,
) -> TargetResult:
    """Play a scenario in ``workers`` processes and merge their traces into one result.

    ``on_start`` gets the worker pids once they run (for tests and monitoring). The parent's
    adapter sets the broker up and always closes it, after every worker has gone.
    """
    plan = plan_load(scenario, seed)
    context = multiprocessing.get_context("spawn")
    shared = SharedRun.allocate(context, plan)
    sends = shared.send_log(plan)
    adapter = factory(url, scenario, names)
    target = adapter.target
    messages: multiprocessing.Queue[Any] = context.Queue()
    pool = _Workers(target, [], messages, shared, progress)
    t0 = now()
    warnings: list[str] = []
    finished = False
    try:
        try:
            async with asyncio.timeout(30.0):
                await adapter.setup()
        except Exception as error:
            raise RealBrokerError(
                adapter.scrub(f"{target}: could not set up the broker: {error!r}")
            ) from None
        producer_shares = split(scenario.producers.count, workers)
        consumer_shares = split(scenario.consumers.count, workers)
        for index in range(workers):
            job = WorkerJob(
                index=index,
                workers=workers,
                target=target,
                url=url,
                scenario=scenario,
                seed=seed,
                names=names,
                producers=producer_shares[index],
                consumers=consumer_shares[index],
                parent_pid=os.getpid(),
            )
            process = context.Process(
                target=worker_main,
                args=(job, shared, messages),
                name=f"brokerlab-worker-{index}",
                daemon=True,
            )
            process.start()
            pool.processes.append(process)
        if on_start is not None:
            on_start([int(p.pid or 0) for p in pool.processes])
        if not await pool.wait(lambda: pool.reached("ready"), READY_TIMEOUT):
            raise RealBrokerError(f"{target}: workers not ready within {READY_TIMEOUT:g} s")
        t0 = now() + START_LEAD + START_LEAD_PER_MESSAGE * len(plan)
        shared.start.value = t0
        send_budget = hard_deadline(scenario, plan) - scenario.drain_timeout
        if not await pool.wait(
            lambda: pool.reached("sent", "done"), t0 + send_budget + 5.0 - now()
        ):
            warnings.append("a worker did not finish publishing in time; the drain went ahead")
        owed = _positions(plan)[sends.outcome == ACKED]
        done = shared.done_flags()
        await pool.wait(lambda: bool(done[owed].all()), scenario.drain_timeout)
        shared.stop.value = 1
        if not await pool.wait(lambda: len(pool.reports) == workers, FINISH_TIMEOUT):
            raise RealBrokerError(f"{target}: workers did not report within {FINISH_TIMEOUT:g} s")
        finished = True
    finally:
        pool.end(grace=FINISH_TIMEOUT if finished else ABORT_GRACE)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await adapter.close()
    result = _merge(adapter, scenario, plan, sends, pool.reports, t0, warnings)
    harness_info = result.info["harness"]
    assert isinstance(harness_info, dict)
    harness_info["workers"] = workers
    if progress is not None:
        progress(int(np.count_nonzero(shared.done_flags())), len(plan))
    return result


def _positions(plan: LoadPlan) -> np.ndarray:
    """Producer-major position of every plan row (the index of its completed flag)."""
    start = np.asarray(DeliveryLog(plan).start, dtype="int64")
    return start[plan.producer] + plan.seq


def _merge(
    adapter: BrokerAdapter,
    scenario: Scenario,
    plan: LoadPlan,
    sends: SendLog,
    reports: dict[int, WorkerReport],
    t0: float,
    warnings: list[str],
) -> TargetResult:
    """One result from the workers' reports, built by the harness's single-process code."""
    ordered = [reports[i] for i in sorted(reports)]
    deliveries = DeliveryLog(plan)
    order = np.argsort(np.concatenate([r.t_delivered for r in ordered]), kind="stable")
    for name in DELIVERY_COLUMNS:  # chronological, as one process would have appended them
        setattr(deliveries, name, np.concatenate([getattr(r, name) for r in ordered])[order])
    deliveries.unexpected = sum(r.unexpected for r in ordered)
    consumers = ConsumerGroup(adapter, scenario, deliveries, np.zeros(0), np.random.default_rng())
    consumers.errors = np.sort(np.concatenate([r.errors for r in ordered])).tolist()
    for report in ordered:
        for kind, count in report.error_kinds.items():
            consumers.error_kinds[kind] = consumers.error_kinds.get(kind, 0) + count
    for report in ordered:
        adapter.warnings += [w for w in report.warnings if w not in adapter.warnings]
    return harness._result(adapter, scenario, plan, sends, deliveries, consumers, t0, warnings)
