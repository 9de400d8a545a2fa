"""An idle machine wakes slowly: hops that reach a process idle for long take longer.

Measured on the development machine (2 cores, quiet), one consumer, prefetch 1, 256 B: Redis's
publish p50 was 0.57 ms at 100/s, 0.41 at 200/s, 0.31 at 500/s, 0.26 at 1,000/s, 0.17 at
2,000/s and 0.14 at 4,000/s; NATS's end to end fell the same way. A process blocked in
``epoll`` on an idle CPU is woken late, later the longer it has slept (the CPU sinks into deeper
idle states; a virtual CPU is descheduled by its host). So a round trip is not one distribution:
it depends on how long the process it reaches has been idle.

The profile's ``idle`` charges that on every hop: a hop arriving at a process (the broker, a
producer, a consumer) that has been idle for ``t`` takes ``cost * (1 - exp(-t / tau))`` longer.
A process is active when it sends and when something reaches it. At light load most hops wake
an idle process; under load almost none do, and what is left is the round trip of a busy
machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brokerlab.core.scenario import Distribution
    from brokerlab.sim.engine import Simulation


class Wakes:
    """Who was last active when, and what a hop to an idle process costs.

    Endpoints: 0 is the broker, ``1 + p`` producer ``p``, ``1 + P + c`` consumer ``c``; links are
    numbered as :class:`brokerlab.sim.network.Network` numbers them.
    """

    def __init__(self, producers: int, consumers: int, cost: Iterator[float], tau: float):
        p, c = producers, consumers
        self.cost = cost
        self.tau = tau
        #: sender and receiver of each link
        self.src = [1 + i for i in range(p)] + [0] * p + [0] * c + [1 + p + i for i in range(c)]
        self.dst = [0] * p + [1 + i for i in range(p)] + [1 + p + i for i in range(c)] + [0] * c
        #: when each endpoint was last active (sent, or was reached)
        self.last = [0.0] * (1 + p + c)

    def arrive(self, link: int, now: float, t: float) -> float:
        """When something sent now over ``link``, due at ``t``, is seen by its receiver."""
        last = self.last
        src = self.src[link]
        if last[src] < now:
            last[src] = now
        dst = self.dst[link]
        idle = t - last[dst]
        if idle > 0:
            t += next(self.cost) * (1.0 - math.exp(-idle / self.tau))
        if last[dst] < t:
            last[dst] = t
        return t


def set_idle(sim: Simulation, cost: Distribution, tau: float) -> str:
    """Charge ``sim``'s hops an idle machine's wake-ups; returns what was installed, for
    run.json (``none`` when the hops take no time at all, or the cost is zero)."""
    import numpy as np

    from brokerlab.sim.sampling import is_zero, samples

    if sim._net is None or is_zero(cost):
        return "none"
    rng = np.random.default_rng((sim.seed, 0x69646C65))
    producers, consumers = sim.scenario.producers.count, sim.scenario.consumers.count
    sim.network.wakes = Wakes(producers, consumers, samples(cost, rng), tau)
    return f"mean {cost.mean * 1e3:.3g} ms after idling, tau {tau * 1e3:.3g} ms"
