"""The engine's event loop: SimPy's clock and heap, with callbacks as the heap's entries.

Every step of a message is a callback ``fn(arg)`` due at some simulated time. SimPy schedules a
:class:`~simpy.events.Event` object per step (a ``Timeout`` with a callbacks list, stepped by
:meth:`simpy.Environment.step`); at half a million messages that object is most of the cost of a
run. :class:`Clock` keeps SimPy's environment, its heap and its event order — entries sorted by
(time, priority, event id), ids from the environment's own counter — but a scheduled callback is
the heap entry itself, ``(time, NORMAL, id, fn, arg)``, and :meth:`Clock.run` pops and calls it.
SimPy events (the run's stop event) still work: :meth:`Clock.schedule` files them as entries
whose callback processes the event exactly as ``Environment.step`` does. The order of events, and
so every trace, is the one SimPy's own loop gives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import EmptySchedule, StopSimulation
from simpy.events import NORMAL, URGENT, Event, EventPriority


class Clock(simpy.Environment):
    """SimPy's environment whose heap entries are callbacks (see the module's docstring).

    ``now`` is a plain attribute here (SimPy's is a property): callbacks read it constantly.
    """

    #: the current simulated time (shadows SimPy's read-only property with a plain attribute)
    now: float = 0.0  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        #: SimPy events scheduled (the rest of the event ids went to callbacks)
        self._simpy_events = 0

    # SimPy's own code reads and writes ``_now``: the same value as ``now``.
    @property  # type: ignore[override]
    def _now(self) -> float:
        return self.now

    @_now.setter
    def _now(self, value: float) -> None:
        self.now = value

    @property
    def scheduled(self) -> int:
        """Callbacks scheduled so far (``info["events"]``): event ids taken, minus SimPy's."""
        return next(copy.copy(self._eid)) - self._simpy_events

    def call(self, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` ``delay`` from now: one heap entry, no event object."""
        heappush(self._queue, (self.now + delay, NORMAL, next(self._eid), fn, arg))  # type: ignore[arg-type]

    def schedule(self, event: Event, priority: EventPriority = NORMAL, delay: float = 0) -> None:
        """File a SimPy event as an entry whose callback processes it (as SimPy's ``step``)."""
        self._simpy_events += 1
        heappush(
            self._queue,
            (self.now + delay, priority, next(self._eid), _process, event),  # type: ignore[arg-type]
        )

    def step(self) -> None:
        """Process the next entry (SimPy's ``step``, for entries of either kind)."""
        if not self._queue:
            raise EmptySchedule
        now, _, _, fn, arg = heappop(self._queue)  # type: ignore[misc]
        self.now = now
        fn(arg)

    def run(self, until: float | Event | None = None) -> Any:
        """SimPy's ``run``: until the ``until`` event is processed (or that time, or no entry is
        left), popping entries and calling their callbacks in SimPy's order."""
        if until is not None:
            if not isinstance(until, Event):
                at = float(until)
                if at <= self.now:
                    raise ValueError(
                        f"until ({at}) must be greater than the current simulation time"
                    )
                until = Event(self)
                until._ok = True
                until._value = None
                self.schedule(until, URGENT, at - self.now)
            elif until.callbacks is None:
                return until.value
            until.callbacks.append(StopSimulation.callback)
        queue = self._queue
        try:
            while queue:
                now, _, _, fn, arg = heappop(queue)  # type: ignore[misc]
                self.now = now
                fn(arg)
        except StopSimulation as stop:
            return stop.args[0]
        if until is not None:
            raise RuntimeError(
                f'No scheduled events left but "until" event was not triggered: {until}'
            )
        return None


def _process(event: Event) -> None:
    """Process a SimPy event popped from the heap, exactly as ``Environment.step`` does."""
    callbacks, event.callbacks = event.callbacks, None  # type: ignore[assignment]
    assert callbacks is not None
    try:
        for callback in callbacks:
            callback(event)
    except StopSimulation:
        event.callbacks = callbacks[callbacks.index(callback) + 1 :]
        event.env.schedule(event, EventPriority(-1))
        raise
    if not event._ok and not hasattr(event, "_defused"):
        error = type(event._value)(*event._value.args)
        error.__cause__ = event._value
        raise error


def Call(env: Clock, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
    """Call ``fn(arg)`` ``delay`` from now on ``env`` (:meth:`Clock.call`; no object is made)."""
    heappush(env._queue, (env.now + delay, NORMAL, next(env._eid), fn, arg))  # type: ignore[arg-type]


__all__ = ["Call", "Clock"]
