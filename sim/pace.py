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

The capacity is the sustained figure, what capacity questions ask (``brokerlab calibrate``
fits it). A real pipeline far beyond its ceiling drains a deep backlog faster than it sustains a
load (Redis with 1 kB messages kept up with 25,000-29,000/s and delivered 28,000-37,000/s of a
40,000/s offer, both with one client process): the publishes' shares below say why. What also
changes the rate is the number of client processes (the harness plays a run above its
single-process rate in more of them): a profile's ``capacity.clients`` scales the capacity for
the run's process count (:class:`brokerlab.sim.profile.Clients`; Redis delivered
41,000-45,000/s of 60,000/s with two).

Publishing uses the capacity too. A profile's ``capacity.publish_share`` is the share of a
message's capacity its publish takes (the producer's client work, the broker's write); the
delivery takes the rest (:class:`SharedPacer`). A stored publish uses its share and goes on (the
real producer is not held: its publish latency stayed in milliseconds); its work was done while
it was sent, so on an idle capacity it is over when the broker stores it, and only on a busy one
does it queue. A delivery waits until the work before it, publishes and deliveries, is done. A
load the pipeline sustains sees no difference: every message still uses its whole cost. An
overload does: while the producers send, deliveries get what the publishes leave, and once they
stop the backlog drains at the delivery's cost alone. And a producer behind schedule sends what
is due in one call (up to 256 messages in the harness), whose work per message is far smaller:
``capacity.publish_batched`` is a publish's share then. Measured on the development machine,
60,000/s of 1 kB messages for 2 s, three consumers: Redis delivered 25,000/s while the producer
sent and 73,000/s after it stopped; JetStream 6,600/s and 22,000/s, 17,600/s over the whole run,
twice what it sustains with calls of one message each. A producer counts as behind when its
publishes, each costing its whole share (calls of one), would need more than the whole capacity
for longer than :data:`BEHIND`.
"""

from __future__ import annotations

import math
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


#: A producer whose calls of one message would owe the capacity more than this is behind
#: schedule: it sends what is due in one call, at ``publish_batched`` a message.
BEHIND = 0.001
#: How far behind a producer's calls of one are counted at most (so that it catches up within
#: this once its overload ends).
LAG_CAP = 0.010
#: Publish work the capacity owes at most, so deliveries never wait longer than this behind
#: publishes. Beyond it, open-loop producers wait until it owes no more (they fall behind
#: schedule: publish delay), so a load beyond the capacity is not kept up with. Until
#: 2026-12-01 the work beyond it was left undone instead, and the simulator kept up with NATS
#: core loads 38% beyond its capacity (deliveries alone used it). Confirm-sync and faulted
#: publishers still leave it undone.
PUBLISH_BACKLOG = 0.020


class SharedPacer(Pacer):
    """:class:`Pacer` whose capacity the publishes share (see the module docstring): a stored
    publish uses its share of its message's cost at once (``publish_share``, or
    ``publish_batched`` while its producer is behind schedule); a delivery uses the rest
    (``1 - publish_share``) once the work before it is done."""

    def __init__(
        self,
        sim: Simulation,
        per_message: float,
        per_byte: float,
        publish_share: float,
        publish_batched: float,
    ):
        super().__init__(sim, per_message * (1.0 - publish_share), per_byte * (1.0 - publish_share))
        whole = per_message + per_byte * sim.plan.size
        #: capacity a stored publish uses: sent alone, and in a full call
        self.alone: list[float] = (whole * publish_share).tolist()
        self.batched: list[float] = (whole * publish_batched).tolist()
        self.producer: list[int] = sim.plan.producer.tolist()
        #: per producer: when its publishes, as calls of one, would have used the capacity up
        self.calls_done = [0.0] * (max(self.producer, default=0) + 1)
        self.free_at = -math.inf  # a first publish's work may end at time 0
        #: open-loop producers of a fault-free run are held back by work the capacity cannot
        #: queue; confirm-sync and faulted publishers are not (that work is left undone)
        self.hold = sim.faults is None and not sim.sync
        if sim.faults is not None:  # the fault layer's publisher stores through its own hook
            broker = sim.faults.publisher.broker
            self._store = broker.store
            broker.store = self.stored
        else:
            self._store = sim.stored
            sim.stored = self.stored  # type: ignore[method-assign]

    def stored(self, b: int) -> None:
        """Broker index ``b`` is stored: its publish uses its share of the capacity now."""
        now = self.env.now
        i = b
        if i >= len(self.alone):  # a second stored copy of a retried publish
            assert self.sim.faults is not None
            i = self.sim.faults.publisher.message(i)
        alone = self.alone[i]
        p = self.producer[i]
        done = self.calls_done[p]
        done = (done if done > now else now) + alone
        if done > now + LAG_CAP:
            done = now + LAG_CAP
        self.calls_done[p] = done
        cost = self.batched[i] if done - now > BEHIND else alone
        # The publish's work was done while it was sent, before the broker stored it: on an idle
        # capacity it ends now (a delivery of it waits for nothing); on a busy one it queues.
        begin = now - cost
        free = (self.free_at if self.free_at > begin else begin) + cost
        cap = now + PUBLISH_BACKLOG
        if free > cap:
            if self.hold:
                # The producers cannot send faster than the capacity does their work: they wait
                # until what it owes is back within the cap (their publish delay), as the real
                # ones fall behind, and the work is done, not left undone.
                sim = self.sim
                held = free - PUBLISH_BACKLOG
                if held > sim.hold_until:
                    sim.hold_until = held
            else:
                free = cap if cap > self.free_at else self.free_at
        self.free_at = free
        self._store(b)


def set_pace(
    sim: Simulation,
    per_message: float,
    per_byte: float,
    publish_share: float = 0.0,
    publish_batched: float | None = None,
) -> str:
    """Pace ``sim``'s deliveries to the capacity ``per_message`` and ``per_byte`` seconds say,
    ``publish_share`` of it used by each publish (``publish_batched`` in a full call; the same
    when None); returns what was installed, for run.json."""
    if per_message <= 0 and per_byte <= 0:
        return "none"
    paced = f"{per_message * 1e6:.3g} us per message + {per_byte * 1e9:.3g} ns per byte"
    if publish_share > 0:
        batched = publish_share if publish_batched is None else publish_batched
        SharedPacer(sim, per_message, per_byte, publish_share, batched)
        return f"{paced}, {publish_share:.0%} of it by a publish ({batched:.0%} in a full call)"
    Pacer(sim, per_message, per_byte)
    return paced
