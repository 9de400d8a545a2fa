"""Capacity that costs no latency: what a broker and its clients sustain together.

A local broker shares the machine with its clients. Flat out, every message costs CPU in several
processes (the broker's event loop, the clients' encoding, parsing and copying of its bytes), and
the whole pipeline moves at most so many messages and bytes a second. At light load most of that
work runs beside the message's own path (on another core, in another process), so it adds almost
no latency. Measured on the development machine: a 16 kB message took 0.02 ms longer to publish
than a 256 B one, yet flat out Redis moved 64,000/s of 256 B messages and 44,800/s of 1 kB ones.

Broker service time cannot say both, because all of it is latency. So the profile's
``capacity`` is charged here instead. A pacer sits in front of each delivery's trip to its
consumer. It lets a delivery through at once, unless the deliveries before it have used up the
capacity; then it holds the delivery until they have. Each delivery uses
``per_message + per_byte * size`` seconds of it. Below the capacity nothing waits. Above it,
deliveries leave at the capacity's rate and the backlog grows at the broker, as it does in the
real runs (flat out, real publish latency stayed in milliseconds while end to end grew to
seconds).

One rate for every backlog with the same client processes: a real pipeline far beyond its
ceiling works in fuller batches and drains a deep backlog faster than it sustains a load (Redis
with 1 kB messages kept up with 25,000-29,000/s and delivered 28,000-37,000/s of a 40,000/s
offer, both with one client process). ``brokerlab calibrate`` fits the sustained figure, what
capacity questions ask; a deep backlog drains here at that rate. What does change the rate is
the number of client processes (the harness plays a run above its single-process rate in more
of them): a profile's ``capacity.clients`` scales the capacity for the run's process count
(:class:`brokerlab.sim.profile.Clients`; Redis delivered 41,000-45,000/s of 60,000/s with two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokerlab.sim.events import Call

if TYPE_CHECKING:
    from brokerlab.sim.engine import Simulation


class Pacer:
    """Deliveries of ``sim`` pass at most at the capacity's rate (see the module docstring).

    Installed after the consumers' fetch mode (:func:`brokerlab.sim.models.consume.set_consume`),
    whose answer step it then paces, and after a fault layer, whose delivery step it wraps.
    """

    def __init__(self, sim: Simulation, per_message: float, per_byte: float):
        self.sim = sim
        self.env = sim.env
        #: capacity each message uses per delivery (a redelivery uses it again)
        self.cost: list[float] = (per_message + per_byte * sim.plan.size).tolist()
        #: when the deliveries let through so far have used the capacity up
        self.free_at = 0.0
        self._next = sim._to_consumer
        sim._to_consumer = self.deliver  # type: ignore[method-assign]

    def deliver(self, r: int) -> None:
        """Delivery row ``r`` leaves for its consumer once the capacity allows it."""
        now = self.env.now
        start = self.free_at if self.free_at > now else now
        i = self.sim.row_msg[r]
        if i >= len(self.cost):  # a second stored copy of a retried publish (a faulted run)
            assert self.sim.faults is not None
            i = self.sim.faults.publisher.message(i)
        self.free_at = start + self.cost[i]
        if start > now:
            Call(self.env, start - now, self._next, r)
        else:
            self._next(r)


def set_pace(sim: Simulation, per_message: float, per_byte: float) -> str:
    """Pace ``sim``'s deliveries to the capacity ``per_message`` and ``per_byte`` seconds say;
    returns what was installed, for run.json."""
    if per_message <= 0 and per_byte <= 0:
        return "none"
    Pacer(sim, per_message, per_byte)
    return f"{per_message * 1e6:.3g} us per message + {per_byte * 1e9:.3g} ns per byte"
