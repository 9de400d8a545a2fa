"""The harness's waits: precise yields on an idle process, timers on a busy one.

The decision is tested with an injected CPU clock (what the process "used"), so that it does
not depend on how busy the test machine is; the waits themselves are real.
"""

from __future__ import annotations

import asyncio

import pytest

from brokerlab.adapters.harness import clock


class _Sleeps:
    """asyncio.sleep, counting the yields (sleeps of 0) and the timers (longer sleeps)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.yields = self.timers = 0
        self._sleep = asyncio.sleep
        monkeypatch.setattr(asyncio, "sleep", self)

    async def __call__(self, delay: float) -> None:
        if delay > 0:
            self.timers += 1
        else:
            self.yields += 1
        await self._sleep(delay)


def _pace() -> clock._LoopPace:
    return clock._PACE[asyncio.get_running_loop()]


def test_an_idle_process_yields_to_wake_on_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that used no CPU of its own keeps yielding: its waits end at the deadline,
    not at epoll's next millisecond, and the yields themselves do not count as its work."""
    monkeypatch.setattr(clock, "cpu_time", lambda: 0.0)  # no work at all

    async def main() -> None:
        for _ in range(3):  # more than one window: the decision is remade and stays
            deadline = clock.now() + clock.PACE_WINDOW * 0.6
            await clock.sleep_until(deadline)
            assert clock.now() >= deadline
        assert not _pace().timers
        sleeps = _Sleeps(monkeypatch)
        await clock.sleep_until(clock.now() + 0.0008)
        assert sleeps.yields > 10 and sleeps.timers == 0  # yielded, went round and round

    asyncio.run(main())


def test_yields_alone_do_not_make_a_process_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU spent yielding is not the process's work: a process that did nothing but wait
    (its CPU clock running with the wall clock, as a spinning one's does) keeps yielding."""
    start = clock.now()
    monkeypatch.setattr(clock, "cpu_time", lambda: clock.now() - start)

    async def main() -> None:
        end = clock.now() + clock.PACE_WINDOW * 2.5  # windows of nothing but yields
        while clock.now() < end:
            await clock.sleep_until(clock.now() + clock.SPIN_WINDOW)
        assert clock.now() - _pace().since < clock.PACE_WINDOW * 1.5  # decided on the yields
        assert not _pace().timers

    asyncio.run(main())


def test_a_busy_process_waits_on_timers_and_yields_again_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process whose own work used more than BUSY_SHARE of a core over a window waits on
    ordinary timers (no yielding), and yields again after a window in which it was idle."""
    used = {"cpu": 0.0}
    monkeypatch.setattr(clock, "cpu_time", lambda: used["cpu"])

    async def main() -> None:
        await clock.sleep_until(clock.now())  # opens the account
        t = clock.now()
        await asyncio.sleep(clock.PACE_WINDOW)  # a window of work, not waits
        used["cpu"] += (clock.now() - t) * 0.95
        await clock.sleep_until(clock.now())
        assert _pace().timers
        sleeps = _Sleeps(monkeypatch)
        await clock.sleep_until(clock.now() + 0.0008)
        assert (sleeps.yields, sleeps.timers) == (0, 1)  # one timer: the loop waited in epoll
        await asyncio.sleep(clock.PACE_WINDOW)  # a window with no work
        await clock.sleep_until(clock.now())
        assert not _pace().timers

    asyncio.run(main())


def test_a_process_just_under_the_share_still_yields(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boundary: work of 70% of a core (below BUSY_SHARE) keeps the precise waits."""
    used = {"cpu": 0.0}
    monkeypatch.setattr(clock, "cpu_time", lambda: used["cpu"])

    async def main() -> None:
        await clock.sleep_until(clock.now())
        t = clock.now()
        await asyncio.sleep(clock.PACE_WINDOW)
        used["cpu"] += (clock.now() - t) * (clock.BUSY_SHARE - 0.1)
        await clock.sleep_until(clock.now())
        assert not _pace().timers

    asyncio.run(main())


def test_a_multi_process_runs_worker_waits_on_timers_even_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker process of a multi-process run never yields: an idle one (which would yield)
    waits on one timer per wait, still not before its deadline, and says so for run.json."""
    monkeypatch.setattr(clock, "cpu_time", lambda: 0.0)  # idle: would yield
    monkeypatch.setattr(clock, "_TIMERS_ONLY", False)
    assert clock.waits() == "yields unless busy"
    clock.wait_on_timers()
    assert clock.waits() == "timers"

    async def main() -> None:
        sleeps = _Sleeps(monkeypatch)
        for _ in range(3):
            deadline = clock.now() + 0.0008
            await clock.sleep_until(deadline)
            assert clock.now() >= deadline
        assert sleeps.yields == 0 and sleeps.timers == 3

    asyncio.run(main())
