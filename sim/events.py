"""The engine's one event type: a SimPy timeout that calls a function when it fires."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import Timeout

_timeout_init = Timeout.__init__


class Clock(simpy.Environment):
    """SimPy's environment, counting the events the engine schedules (``info["events"]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0


class Call(Timeout):
    """A timeout that calls ``fn(arg)`` when it fires: one heap entry, no process, no closure.

    Built only from SimPy's public API: a :class:`~simpy.events.Timeout` subclass with one
    callback appended (``Event.callbacks`` is the documented way to react to an event).
    """

    def __init__(self, env: Clock, delay: float, fn: Callable[[Any], None], arg: Any):
        _timeout_init(self, env, delay)  # super().__init__, without the lookup on the hot path
        env.scheduled += 1
        self.fn = fn
        self.arg = arg
        self.callbacks.append(_fire)


def _fire(event: Call) -> None:
    event.fn(event.arg)


__all__ = ["Call", "Clock"]
