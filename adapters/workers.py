"""Multi-process load: one run's producers and consumers spread over worker processes.

One Python process tops out at some tens of thousands of messages a second: encoding, the client's
protocol code and the consumer loop share one core (the GIL). Past that the harness's own lag
shows up as publish delay and latency the broker did not cause. So a run whose offered rate is
above what one process sustains (its target record's ``single_process_rate``), or that asks for
it (``BROKERLAB_WORKERS=N``), plays its plan in N ``spawn`` processes. :class:`WorkerCrew` is the
harness's :class:`~brokerlab.adapters.harness.Crew` for that case, so the run itself (setup,
start, drain, teardown, the trace) is :func:`brokerlab.adapters.harness.play`, as in one process:

* The parent creates the run's broker objects (``setup``) and deletes them (``close``), once; a
  worker's adapter (the record's ``worker_adapter``) only connects to them and disconnects.
* Every process draws the same plan from scenario and seed; worker ``i`` plays producers and
  consumers ``i, i + N, ...`` with a :class:`~brokerlab.adapters.harness.LocalCrew`, so the
  sending and consuming code is the single-process code.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import numpy as np

from brokerlab.adapters.harness import (
    CLOSE_TIMEOUT,
    FETCH_WAIT,
    SETUP_TIMEOUT,
    BrokerAdapter,
    Crew,
    CrewReport,
    DeliveryLog,
    LocalCrew,
    RealBrokerError,
    RunNames,
    Scrubber,
    SendLog,
    close_adapter,
    hard_deadline,
    now,
    play,
    send_budget,
)
from brokerlab.adapters.harness.clock import wait_on_timers, waits
from brokerlab.adapters.targets import Target, get_target
from brokerlab.core.load import (
    WORKERS_ENV,
    LoadPlan,
    client_processes,
    peak_rate,
    plan_load,
    streams,
)
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import TargetResult

#: The rule and its environment variable live in brokerlab.core.load (the simulator follows it).
__all__ = [
    "WORKERS_ENV",
    "WorkerCrew",
    "peak_rate",
    "run_workers",
    "worker_count",
]

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


# --------------------------------------------------------------------------- how many


def worker_count(scenario: Scenario, target: str | Target, requested: int | None = None) -> int:
    """How many processes play a run: :func:`brokerlab.core.load.client_processes` with the
    target's single-process rate and this machine's cores; always 1 for a target without a
    worker adapter."""
    record = target if isinstance(target, Target) else get_target(target)
    if record.worker_adapter is None:
        return 1
    return client_processes(scenario, record.single_process_rate, os.cpu_count() or 1, requested)


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
    target: Target  # the record itself: a target registered at run time is not in a new process
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
    waits: str = ""  # how its waits ended (clock.waits)


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
    wait_on_timers()  # beside sibling workers and the broker, yields take their CPU
    scrub = Scrubber(job.url)
    try:
        report = asyncio.run(_play(job, shared, messages))
    except RealBrokerError as error:  # already a clear, scrubbed message naming the worker
        messages.put(("error", job.index, str(error)))
        sys.exit(1)
    except BaseException as error:  # a bug: hand the parent the traceback's end
        detail = traceback.format_exc(limit=-4)
        what = f"{job.target.name}: worker {job.index} failed"
        text = f"{what}: {type(error).__name__}: {error}\n{detail}"
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
    """The worker's run: connect, report ready, send from the shared start, consume until stop.

    Its producers and consumers are a :class:`LocalCrew` over the shared send columns and
    completed flags: the single-process code, on this worker's share.
    """
    scenario = job.scenario
    plan = plan_load(scenario, job.seed)
    deliveries = DeliveryLog(plan)
    deliveries.done = shared.done_flags()
    factory = job.target.worker_adapter_class()
    assert factory is not None, "worker_count gives one process to a target without one"
    adapter = factory(job.url, scenario, job.names)
    adapter.consumer_ids = job.consumers  # run-wide numbers, for broker-side consumer names
    crew = LocalCrew(
        adapter,
        scenario,
        plan,
        streams(job.seed)["processing"].spawn(job.workers)[job.index],
        producers=job.producers,
        consumers=len(job.consumers),
        draws=len(plan) // job.workers,
        sends=shared.send_log(plan),
        deliveries=deliveries,
    )
    warnings: list[str] = []
    try:
        try:
            async with asyncio.timeout(SETUP_TIMEOUT):
                await adapter.setup()
                await crew.connect()
        except Exception as error:
            raise RealBrokerError(
                adapter.scrub(f"{job.target.name}: worker {job.index} could not connect: {error!r}")
            ) from None
        messages.put(("ready", job.index, len(plan)))
        await _wait_for(
            lambda: not math.isnan(shared.start.value) or bool(shared.stop.value),
            now() + READY_TIMEOUT + 10.0,
            job.parent_pid,
            "start time",
        )
        t0 = shared.start.value
        if not shared.stop.value:
            crew.start(t0)
            warnings += await crew.send(t0 + send_budget(scenario, plan))
            messages.put(("sent", job.index, None))
        await _wait_for(
            lambda: bool(shared.stop.value),
            t0 + hard_deadline(scenario, plan) + 5.0,
            job.parent_pid,
            "stop signal",
        )
    finally:
        await crew.stop()
        await close_adapter(adapter)
    local_to_run = np.asarray(job.consumers, dtype="int32")
    consumers = crew.report()
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
        warnings=[*warnings, *adapter.warnings, *adapter.survived_warnings()],
        waits=waits(),
    )


# --------------------------------------------------------------------------- parent side


class _Workers:
    """The parent's view of its worker processes: their stage, reports and failures."""

    def __init__(
        self,
        target: str,
        processes: list[SpawnProcess],
        messages: multiprocessing.Queue[Any],
        shared: SharedRun,
    ) -> None:
        self.target = target
        self.processes = processes
        self.messages = messages
        self.shared = shared
        self.stage: dict[int, str] = {}
        self.reports: dict[int, WorkerReport] = {}

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


class WorkerCrew(Crew):
    """A run's producers and consumers spread over ``workers`` spawn processes.

    :func:`brokerlab.adapters.harness.play` drives it like the one-process crew: the parent's
    adapter has set the broker up before :meth:`connect` starts the workers, and closes it after
    :meth:`stop` has made sure none is left. ``on_start`` gets the worker pids once they run (for
    tests and monitoring).
    """

    def __init__(
        self,
        target: Target,
        url: str,
        scenario: Scenario,
        seed: int,
        names: RunNames,
        plan: LoadPlan,
        workers: int,
        *,
        on_start: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.target = target
        self.url = url
        self.scenario = scenario
        self.seed = seed
        self.names = names
        self.plan = plan
        self.workers = workers
        self.lead = START_LEAD + START_LEAD_PER_MESSAGE * len(plan)
        self.on_start = on_start
        self.context = multiprocessing.get_context("spawn")
        self.shared = SharedRun.allocate(self.context, plan)
        self.sends = self.shared.send_log(plan)
        messages: multiprocessing.Queue[Any] = self.context.Queue()
        self.pool = _Workers(target.name, [], messages, self.shared)
        self.finished = False

    async def connect(self) -> None:
        producer_shares = split(self.scenario.producers.count, self.workers)
        consumer_shares = split(self.scenario.consumers.count, self.workers)
        for index in range(self.workers):
            job = WorkerJob(
                index=index,
                workers=self.workers,
                target=self.target,
                url=self.url,
                scenario=self.scenario,
                seed=self.seed,
                names=self.names,
                producers=producer_shares[index],
                consumers=consumer_shares[index],
                parent_pid=os.getpid(),
            )
            process = self.context.Process(
                target=worker_main,
                args=(job, self.shared, self.pool.messages),
                name=f"brokerlab-worker-{index}",
                daemon=True,
            )
            process.start()
            self.pool.processes.append(process)
        if self.on_start is not None:
            self.on_start([int(p.pid or 0) for p in self.pool.processes])
        pool = self.pool
        if not await pool.wait(lambda: pool.reached("ready"), READY_TIMEOUT):
            raise RealBrokerError(
                f"{self.target.name}: workers not ready within {READY_TIMEOUT:g} s"
            )

    def start(self, t0: float) -> None:
        self.shared.start.value = t0  # workers poll for it; their clients are out of reach

    async def send(self, deadline: float) -> list[str]:
        pool = self.pool
        if not await pool.wait(lambda: pool.reached("sent", "done"), deadline + 5.0 - now()):
            return ["a worker did not finish publishing in time; the drain went ahead"]
        return []

    def done(self) -> np.ndarray:
        return self.shared.done_flags()

    def completed(self) -> int:
        return int(np.count_nonzero(self.shared.done_flags()))

    def check(self) -> None:
        self.pool.poll()

    async def finish(self) -> None:
        pool = self.pool
        self.shared.stop.value = 1
        if not await pool.wait(lambda: len(pool.reports) == self.workers, FINISH_TIMEOUT):
            raise RealBrokerError(
                f"{self.target.name}: workers did not report within {FINISH_TIMEOUT:g} s"
            )
        self.finished = True

    def halt(self) -> None:
        self.shared.stop.value = 1

    async def stop(self) -> None:
        grace = FINISH_TIMEOUT if self.finished else ABORT_GRACE
        self.pool.end(grace)

    def report(self) -> CrewReport:
        """One delivery log from the workers' reports, as one process would have appended it."""
        ordered = [self.pool.reports[i] for i in sorted(self.pool.reports)]
        deliveries = DeliveryLog(self.plan)
        if not ordered:
            return CrewReport(deliveries)
        order = np.argsort(np.concatenate([r.t_delivered for r in ordered]), kind="stable")
        for name in DELIVERY_COLUMNS:  # chronological
            setattr(deliveries, name, np.concatenate([getattr(r, name) for r in ordered])[order])
        deliveries.unexpected = sum(r.unexpected for r in ordered)
        kinds: dict[str, int] = {}
        for report in ordered:
            for kind, count in report.error_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        warnings: list[str] = []
        for report in ordered:
            warnings += [w for w in report.warnings if w not in warnings]
        errors = np.concatenate([r.errors for r in ordered]).tolist()
        ways = ", ".join(sorted({r.waits for r in ordered if r.waits}))
        return CrewReport(deliveries, errors, kinds, warnings, ways or None)


async def run_workers(
    target: str | Target,
    url: str,
    scenario: Scenario,
    seed: int,
    names: RunNames,
    workers: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    on_start: Callable[[list[int]], None] | None = None,
) -> TargetResult:
    """Play a scenario in ``workers`` processes: :func:`~brokerlab.adapters.harness.play` with
    a :class:`WorkerCrew`, one trace back."""
    record = target if isinstance(target, Target) else get_target(target)
    plan = plan_load(scenario, seed)
    adapter: BrokerAdapter = record.adapter_class()(url, scenario, names)
    crew = WorkerCrew(record, url, scenario, seed, names, plan, workers, on_start=on_start)
    return await play(adapter, scenario, crew, progress=progress)
