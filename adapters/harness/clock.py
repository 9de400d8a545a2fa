"""The run's one clock, precise waits, and ending tasks without waiting forever.

* One clock. ``time.monotonic`` is CLOCK_MONOTONIC on Linux: system-wide, so worker processes
  can share a start time; asyncio's own loop clock is the same one.
* Precise waits. asyncio rounds sleeps up to whole milliseconds (epoll), which would add up to
  1 ms to every send and every processing time; :func:`sleep_until` sleeps short of the deadline
  and yields the rest, trading a little CPU for microsecond timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

#: Clock of the whole run (CLOCK_MONOTONIC on Linux, shared by every process on the host).
now = time.monotonic

#: Sleep this much short of a deadline and yield the rest (asyncio sleeps are ms-granular).
SPIN_WINDOW = 0.0012
#: Interval of progress callbacks and drain checks.
TICK = 0.2


async def sleep_until(deadline: float) -> None:
    """Wake at ``deadline`` (monotonic) within microseconds, not asyncio's millisecond steps."""
    remaining = deadline - now()
    if remaining > SPIN_WINDOW:
        await asyncio.sleep(remaining - SPIN_WINDOW)
    while now() < deadline:
        await asyncio.sleep(0)


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
