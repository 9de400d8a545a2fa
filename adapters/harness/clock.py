"""The run's one clock, precise waits, and ending tasks without waiting forever.

* One clock. ``time.monotonic`` is CLOCK_MONOTONIC on Linux: system-wide, so worker processes
  can share a start time; asyncio's own loop clock is the same one.
* Precise waits. asyncio rounds sleeps up to whole milliseconds (epoll), which would add up to
  1 ms to every send and every processing time; :func:`sleep_until` sleeps short of the deadline
  and yields the rest, trading a little CPU for microsecond timing.
* No spinning on a busy process. Yielding costs a loop iteration each time, and in a process
  whose own work takes most of a core (a producer near the process's limit, its consumers
  reading) those iterations are the limit: Redis with 1 kB messages and three consumers at
  25,000/s, one process, delivered 22,400/s (e2e p50 380 ms) yielding and all of it without
  (e2e p50 1.7 ms), medians of three side by side. Such a loop wakes often by itself, so its
  timers fire on time without the yields: while the process's CPU, less what its yields cost,
  was above :data:`BUSY_SHARE` of a core in the last :data:`PACE_WINDOW`, :func:`sleep_until`
  waits on ordinary timers.
* No spinning beside sibling processes. The worker processes of a multi-process run
  (:mod:`brokerlab.adapters.workers`) always wait on timers: two of them yielding on two cores
  take the CPU the broker needs, and neither counts the other's yields. Redis, 256 B messages,
  two consumers, two processes, medians of two side by side: at 20,000/s e2e p99 17.8 ms
  yielding and 1.5 ms on timers; at 60,000/s 27.6 and 1.4 ms (one process: 5.5 ms); the
  sustained ceiling 20,600-45,000/s yielding (three searches) and beyond 120,000/s on timers
  (the search's highest offer then). A run that needs more
  than one process sends far more than one message per millisecond, so the timers' millisecond
  steps cost it little (its publish delay p99 about 1 ms).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from typing import Any

#: Clock of the whole run (CLOCK_MONOTONIC on Linux, shared by every process on the host).
now = time.monotonic
#: CPU this process used, all its threads (what decides whether its waits may yield).
cpu_time = time.process_time

#: Sleep this much short of a deadline and yield the rest (asyncio sleeps are ms-granular).
SPIN_WINDOW = 0.0012
#: What one yield costs the process at most (an idle loop's takes ~3 us; more is other work).
SPIN_COST = 10e-6
#: Window over which a process's CPU use decides whether its waits yield or use timers.
PACE_WINDOW = 0.05
#: Share of a core the process's own work (its CPU less its yields) may use and still yield.
BUSY_SHARE = 0.8
#: Interval of progress callbacks and drain checks.
TICK = 0.2


class _LoopPace:
    """One loop's CPU account over the current window of :data:`PACE_WINDOW`, and whether its
    waits use timers (see the module docstring)."""

    __slots__ = ("cpu", "since", "spun", "timers")

    def __init__(self) -> None:
        self.since = now()
        self.cpu = cpu_time()
        self.spun = 0.0  # CPU the window's yields cost, at most SPIN_COST each
        self.timers = False


_PACE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPace] = weakref.WeakKeyDictionary()
#: Whether every wait of this process uses timers (a multi-process run's worker, see above).
_TIMERS_ONLY = False


def wait_on_timers() -> None:
    """Make every wait of this process use timers, never yields: for the worker processes of a
    multi-process run, which share the cores with each other and with the broker."""
    global _TIMERS_ONLY
    _TIMERS_ONLY = True


def waits() -> str:
    """How this process's waits end, as ``run.json`` records it."""
    return "timers" if _TIMERS_ONLY else "yields unless busy"


def _pace(t: float) -> _LoopPace:
    """The running loop's account, its window closed and the mode decided if it is over."""
    loop = asyncio.get_running_loop()
    pace = _PACE.get(loop)
    if pace is None:
        pace = _PACE[loop] = _LoopPace()
    elif t - pace.since >= PACE_WINDOW:
        cpu = cpu_time()
        work = cpu - pace.cpu - pace.spun
        pace.timers = work > BUSY_SHARE * (t - pace.since)
        pace.since, pace.cpu, pace.spun = t, cpu, 0.0
    return pace


async def sleep_until(deadline: float) -> None:
    """Wake at ``deadline`` (monotonic) within microseconds, not asyncio's millisecond steps:
    by yielding for the last :data:`SPIN_WINDOW`, or on a timer while the process's own work
    keeps it busy (such a loop wakes often and fires its timers on time) and always in a
    multi-process run's worker (:func:`wait_on_timers`)."""
    t = now()
    pace = None if _TIMERS_ONLY else _pace(t)
    if pace is None or pace.timers:
        if t < deadline:
            await asyncio.sleep(deadline - t)
        return
    if deadline - t > SPIN_WINDOW:
        await asyncio.sleep(deadline - t - SPIN_WINDOW)
        t = now()
    spun = 0.0
    while t < deadline:
        await asyncio.sleep(0)
        last, t = t, now()
        spun += min(t - last, SPIN_COST)
    pace.spun += spun


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Let tasks end by themselves within ``grace``, then cancel them; never wait forever.

    A task that ignores cancellation (a client library stuck in a read) is left behind rather
    than hanging the run; closing the adapter's connections then ends it.
    """
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
