"""An idle machine wakes slowly: what happens first after a quiet spell takes longer.

Measured on the development machine (2 cores, quiet), one consumer, prefetch 1, 256 B: Redis's
publish p50 was 0.57 ms at 100/s, 0.41 at 200/s, 0.31 at 500/s, 0.26 at 1,000/s, 0.17 at
2,000/s and 0.14 at 4,000/s; NATS's end to end fell the same way. An idle machine's CPUs sink
into deeper idle states (a virtual CPU is descheduled by its host) the longer nothing runs, and
the first thing to happen after a quiet spell (a producer's timer firing, a packet arriving)
waits for a CPU to wake. So a round trip is not one distribution: it depends on how long the
machine has been idle.

The profile's ``idle`` charges that on hops: a hop sent when the machine (the broker and the
clients together) has been idle for ``t`` takes ``cost * (1 - exp(-t / tau))`` longer, and the
machine is busy until it arrives. At light load most messages find the machine idle; under load
almost none do, and what is left is the round trip of a busy machine. One clock for the whole
machine, not one per process, is what the measurements say: with one consumer working 3 ms per
message at 350/s, real consumers lost no more per message than at 600/s with 2 ms (their ack
and fetch follow the consumer's own wake-up, which ``client.timer`` charges), and a simulated
clock per process predicted them 7% slower.
"""

from __future__ import annotations

import math
from collections.abc import Iterator


class Wakes:
    """When the machine was last busy, and what a hop after a quiet spell costs."""

    def __init__(self, cost: Iterator[float], tau: float):
        self.cost = cost
        self.tau = tau
        #: when the last hop arrived (the machine is busy until then)
        self.busy_until = 0.0

    def arrive(self, now: float, t: float) -> float:
        """When something sent now, due at ``t``, arrives."""
        idle = now - self.busy_until
        if idle > 0:
            t += next(self.cost) * (1.0 - math.exp(-idle / self.tau))
        if self.busy_until < t:
            self.busy_until = t
        return t
