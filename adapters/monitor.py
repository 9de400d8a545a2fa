"""The lab watching itself during a real run: its own CPU, the broker's CPU, its event-loop lag.

A real run shares the machine (two cores on the reference host) between the broker and the lab's
own clients, and some client paths are slower than the server they measure: the JetStream
sustained ceiling here (~9k/s) is nats-py's pull fetch, not nats-server. A figure that reflects
the lab's client instead of the broker must say so, so :class:`RunMonitor` samples, every
:data:`SAMPLE_INTERVAL` seconds of every real run:

* ``lab_cpu``: the busiest lab process (this one, and the worker processes of a multi-process
  run), in percent of one core. One Python process cannot use more than about one core for its
  own code, so ~100% means that process is the bottleneck. On a busy machine a process that
  wants a whole core may get only part of it: the time its main thread spent runnable but waiting
  for a CPU (Linux's run-queue wait, ``/proc/PID/schedstat``) counts too, so ``lab_cpu`` is what
  the process used or waited to use, the share of a core it would have used on an idle machine;
* ``broker_cpu``: the broker process, when the lab started it, or, for a broker given by URL on
  this machine, the process listening on its port; NaN when it cannot be known (a remote broker,
  a process we may not inspect);
* ``loop_lag_ms``: how late this process's event loop ran a timer due at a known moment (the
  worst in each window). A lagging loop sends, receives and timestamps late whatever the broker
  does. In a multi-process run this is the parent's loop; the workers show through ``lab_cpu``;
* ``machine_cpu``: how busy all of the machine's CPUs were (percent of all of them, every
  process counted). A machine with no idle CPU slows the broker and the lab alike, whoever
  else uses it.
* ``machine_steal``: the share of the machine's CPU time the host of a virtual machine gave to
  others (Linux's steal time, percent). Neither the broker nor the lab ran then, however idle
  the machine looked from inside: on a shared host it comes in bursts of milliseconds that
  become latency tails and stalls. Measured on the development machine (2 vCPUs): about 2% at
  rest, and 15% during one evening's runs at 1,000/s, when Redis's end-to-end p50 was 30-50 ms
  instead of 0.25 ms.

The samples become timeline columns (:func:`brokerlab.core.trace.with_resources`), and
:mod:`brokerlab.core.saturation` judges from them whether the lab was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import math
import os
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import psutil

from brokerlab.core.trace import ResourceSamples, TargetResult, with_resources

if TYPE_CHECKING:
    from brokerlab.adapters.embedded import EmbeddedBroker

__all__ = ["LAG_TICK", "SAMPLE_INTERVAL", "RunMonitor", "local_listener"]

#: Seconds between CPU samples: fine enough to see a saturated second, cheap (a few /proc reads).
SAMPLE_INTERVAL = 0.25
#: Period of the loop-lag probe: a timer due every 20 ms whose lateness is recorded.
LAG_TICK = 0.02
#: How often the set of lab processes (worker processes come and go) is looked up again.
CHILDREN_REFRESH = 1.0
#: Broker servers the lab may start: children that are not lab processes.
BROKER_NAMES = frozenset({"redis-server", "nats-server", "beam.smp", "epmd"})  # RabbitMQ: VM, epmd
#: Host names that mean "this machine" in a broker URL.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def _child_pids() -> list[int]:
    """This process's children: from /proc's per-thread lists (microseconds), else from psutil
    (which reads every process on the machine: milliseconds of a stalled event loop)."""
    lists = glob.glob(f"/proc/{os.getpid()}/task/*/children")
    if not lists:
        with contextlib.suppress(psutil.Error):
            return [child.pid for child in psutil.Process().children()]
        return []
    pids: list[int] = []
    for path in lists:
        with contextlib.suppress(OSError, ValueError):
            pids += [int(pid) for pid in Path(path).read_text().split()]
    return pids


def local_listener(url: str) -> int | None:
    """The pid of the process listening on a local broker URL's port, or None if not known."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if host is None or port is None or host not in LOCAL_HOSTS:
        return None
    with contextlib.suppress(psutil.Error, OSError):
        for connection in psutil.net_connections(kind="tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
                and connection.pid is not None
            ):
                return int(connection.pid)
    return None


def run_queue_wait(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU (Linux
    schedstat's second field), or None where the kernel does not say."""
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class _CpuMeter:
    """CPU of one process between two looks, in percent of one core (NaN on the first look),
    with its main thread's wait for a CPU added (see ``lab_cpu`` in the module docstring)."""

    def __init__(self, pid: int, with_wait: bool = False) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)
        self._with_wait = with_wait
        self._last: tuple[float, float] | None = None

    def percent(self) -> float:
        try:
            times = self._process.cpu_times()
        except psutil.Error:
            return float("nan")
        now, used = time.monotonic(), times.user + times.system
        if self._with_wait:
            used += run_queue_wait(self.pid) or 0.0
        last, self._last = self._last, (now, used)
        if last is None or now <= last[0]:
            return float("nan")
        return 100.0 * (used - last[1]) / (now - last[0])


class _MachineMeter:
    """How busy all of the machine's CPUs were between two looks, and how much of their time the
    host took (steal), in percent of all of them (NaN on the first look, and steal where the
    system does not report it)."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def percent(self) -> tuple[float, float]:
        """(busy, stolen) since the last look: busy is the share of CPU time that was not
        idle, stolen the share the host took for others."""
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        steal = getattr(times, "steal", math.nan)
        # guest time is already counted in user time on Linux
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        last, self._last = self._last, (total, idle, steal)
        if last is None or total <= last[0]:
            return math.nan, math.nan
        span = total - last[0]
        return 100.0 * (1.0 - (idle - last[1]) / span), 100.0 * (steal - last[2]) / span


class RunMonitor:
    """An async context manager sampling the lab and the broker for the length of a run.

    Args:
        url: the broker's URL (not a fault proxy's), to find a local broker by its port.
        broker: the broker the lab started, if it did (its pid changes on a restart).
        interval: seconds between samples.
    """

    def __init__(
        self, url: str, broker: EmbeddedBroker | None = None, interval: float = SAMPLE_INTERVAL
    ) -> None:
        self.url = url
        self.broker = broker
        self.interval = interval
        self._own = _CpuMeter(os.getpid(), with_wait=True)
        self._machine = _MachineMeter()
        self._children: dict[int, _CpuMeter] = {}
        self._next_children = 0.0
        self._broker_meters: dict[int, _CpuMeter] = {}
        self._listener: int | None = None
        self._rows: list[tuple[float, float, float, float, float, float, float]] = []
        self._lag = 0.0
        self._last = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        #: How the broker's CPU was found, for run.json.
        self.info: dict[str, Any] = {"sample_interval_s": interval, "lag_tick_s": LAG_TICK}

    async def __aenter__(self) -> RunMonitor:
        if self.broker is not None:
            self.info["broker_process"] = "started by the lab"
        else:
            self._listener = local_listener(self.url)
            self.info["broker_process"] = (
                f"pid {self._listener}, listening on the URL's port"
                if self._listener is not None
                else "unknown (not on this machine, or not visible)"
            )
        self._last = time.monotonic()
        self._sample(record=False)  # baselines: the first CPU figures need a previous look
        self._tasks = [
            asyncio.create_task(self._sampling(), name="brokerlab-monitor"),
            asyncio.create_task(self._probing_lag(), name="brokerlab-loop-lag"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if exc_type is None:
            self._sample()

    def attach(self, result: TargetResult) -> TargetResult:
        """Put the samples into ``result``'s timeline (and how they were taken into its info).

        The run's clock zero comes from the harness (``info["harness"]["t0_monotonic"]``).
        """
        harness = result.info.get("harness")
        origin = harness.pop("t0_monotonic", None) if isinstance(harness, dict) else None
        if origin is not None:
            trace = result.trace
            trace.timeline = with_resources(trace.timeline, self.samples(float(origin)))
        result.info["monitor"] = dict(self.info)
        return result

    def samples(self, origin: float) -> ResourceSamples:
        """The samples on the run's clock (``origin``: the run's start, monotonic)."""
        rows = np.asarray(self._rows, dtype="float64").reshape(-1, 7)
        return ResourceSamples(
            t_start=rows[:, 0] - origin,
            t_end=rows[:, 1] - origin,
            lab_cpu=rows[:, 2],
            broker_cpu=rows[:, 3],
            loop_lag_ms=rows[:, 4],
            machine_cpu=rows[:, 5],
            machine_steal=rows[:, 6],
        )

    # ---- sampling

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._sample()

    async def _probing_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self._lag = max(self._lag, loop.time() - due)

    def _sample(self, record: bool = True) -> None:
        now = time.monotonic()
        lab = [self._own.percent(), *(m.percent() for m in self._lab_children(now))]
        broker = self._broker_percent()
        machine, stolen = self._machine.percent()
        lag, self._lag = self._lag, 0.0
        start, self._last = self._last, now
        if record:
            busiest = max((v for v in lab if v == v), default=float("nan"))
            self._rows.append((start, now, busiest, broker, lag * 1000.0, machine, stolen))

    def _lab_children(self, now: float) -> list[_CpuMeter]:
        """The lab's child processes other than brokers (worker processes), looked up again
        every :data:`CHILDREN_REFRESH` seconds."""
        if now >= self._next_children:
            self._next_children = now + CHILDREN_REFRESH
            broker = self._broker_pid()
            alive: dict[int, _CpuMeter] = {}
            for pid in _child_pids():
                meter = self._children.get(pid)
                if meter is None and pid != broker:
                    with contextlib.suppress(psutil.Error):
                        if psutil.Process(pid).name() not in BROKER_NAMES:
                            meter = _CpuMeter(pid, with_wait=True)
                if meter is not None:
                    alive[pid] = meter
            self._children = alive
        return list(self._children.values())

    def _broker_pid(self) -> int | None:
        if self.broker is not None:
            return self.broker.pid  # None while a killed broker is down
        return self._listener

    def _broker_percent(self) -> float:
        pid = self._broker_pid()
        if pid is None:
            return float("nan")
        meter = self._broker_meters.get(pid)
        if meter is None:
            try:
                meter = self._broker_meters[pid] = _CpuMeter(pid)
            except psutil.Error:
                return float("nan")
        return meter.percent()
