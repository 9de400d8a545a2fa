"""The network as a collaborator of the engine: one link per direction of each connection.

Links are FIFO (TCP keeps order), so a random delay never reorders messages of one producer or
acks of one consumer. The engine is given a network class at construction and calls
:meth:`Network.arrival` (when something sent now over a link arrives) and :meth:`Network.hop`
(run ``fn(arg)`` on arrival). A fault-free run gets :class:`Network`; a run with faults gets
:class:`FaultedNetwork`, whose connections can drop and whose hops partitions, latency and
bandwidth faults act on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from brokerlab.sim.events import Call, Clock
from brokerlab.sim.faults import Entry
from brokerlab.sim.idle import Wakes
from brokerlab.sim.process import BrokerProcess

#: (callback, argument, client, connection epoch) of something travelling on a connection
Hop = tuple[Callable[[Any], None], Any, int, int]


class Network:
    """Links numbered producer up ``p``, producer down ``P + p``, consumer down ``2P + c``,
    consumer up ``2P + C + c``; ``delays`` draws each hop's delay (None: always zero)."""

    def __init__(self, env: Clock, delays: Iterator[float] | None, producers: int, consumers: int):
        self.env = env
        self.delays = delays
        self.producer_down = producers
        self.consumer_down = 2 * producers
        self.consumer_up = 2 * producers + consumers
        #: when each link is next free (an arrival is never before the previous one)
        self.free = [0.0] * (2 * producers + 2 * consumers)
        #: an idle machine's slow wake-ups (a profile's ``idle``), None: charged nothing
        self.wakes: Wakes | None = None

    @property
    def instant(self) -> bool:
        """Every hop takes no time (the engine then skips the hop events altogether)."""
        return self.delays is None

    def arrival(self, link: int) -> float:
        """Arrival time of something sent now over ``link``."""
        assert self.delays is not None
        t = self.env.now + next(self.delays)
        if self.wakes is not None:
            t = self.wakes.arrive(self.env.now, t)
        if t < self.free[link]:
            t = self.free[link]
        self.free[link] = t
        return t

    def hop(self, link: int, fn: Callable[[Any], None], arg: Any) -> None:
        """Send ``arg`` over ``link``; ``fn(arg)`` runs when it arrives."""
        Call(self.env, self.delay_to(link, self.arrival(link)), fn, arg)

    def delay_to(self, link: int, t: float) -> float:
        """The delay that schedules an arrival at ``t`` on ``link``, never before the previous.

        The clock adds the delay to ``now``, which can round one step (an ulp) above ``t``; a
        later send held back to the same ``t`` (TCP keeps order) could then round below and
        overtake it. The link remembers the time actually scheduled, and a delay that would
        round below it is nudged up: equal times then fire in the order they were sent.
        """
        now = self.env.now
        free = self.free[link]
        if t < free:
            t = free
        delay = t - now
        while now + delay < t:
            delay = math.nextafter(delay, math.inf)
        self.free[link] = now + delay
        return delay


class FaultedNetwork(Network):
    """Connections that drop, and hops that partition, latency and bandwidth faults act on.

    Every client (producers ``0..P-1``, then consumers) has one connection with an epoch.
    Whatever travels on it carries the epoch it was sent with and is dropped on arrival if the
    connection was dropped since (TCP loses what was in flight when a connection dies). What
    reaches the broker goes through the broker process's gate (:meth:`BrokerProcess.receive`).
    """

    def __init__(self, env: Clock, delays: Iterator[float] | None, producers: int, consumers: int):
        super().__init__(env, delays, producers, consumers)
        clients = producers + consumers
        self.connected = [True] * clients
        self.epoch = [0] * clients
        #: hop faults (partition, latency, bandwidth) per client
        self.effects: list[list[Entry]] = [[] for _ in range(clients)]
        self._tx_free = [0.0] * len(self.free)  # bandwidth: when a link's sender is free
        self._process: BrokerProcess | None = None
        self._rng: np.random.Generator | None = None
        self._drop_when_cut = False

    def attach(self, process: BrokerProcess, rng: np.random.Generator, drop_when_cut: bool) -> None:
        """The broker process behind the links, the jitter stream, and whether a partitioned
        client's deliveries are dropped (NATS core) rather than held until it heals."""
        self._process = process
        self._rng = rng
        self._drop_when_cut = drop_when_cut

    def drop(self, client: int) -> None:
        """The client's connection is gone: nothing more is sent, what travels is lost."""
        self.connected[client] = False
        self.epoch[client] += 1

    def send(
        self, client: int, link: int, size: int, fn: Callable[[Any], None], arg: Any, up: bool
    ) -> bool:
        """Send ``arg`` on ``client``'s connection over ``link``; ``fn(arg)`` runs on arrival.

        Returns False when there is no connection to send on (nothing is sent).
        """
        if not self.connected[client]:
            return False
        env = self.env
        now = env.now
        delay = next(self.delays) if self.delays is not None else 0.0
        t = now + delay
        for entry in self.effects[client]:
            if not entry.start <= now < entry.end:
                continue
            fault = entry.fault
            if fault.action == "latency":
                assert fault.delay is not None and self._rng is not None
                extra = fault.delay
                if fault.jitter:
                    extra += self._rng.uniform(-fault.jitter, fault.jitter)
                t += max(extra, 0.0)
            elif fault.action == "bandwidth":
                # Serialisation: bytes leave one after another at the limit (FIFO).
                assert fault.bandwidth
                start = max(now, self._tx_free[link])
                self._tx_free[link] = start + size / fault.bandwidth
                t = max(t, self._tx_free[link] + delay)
            else:  # partition: like the lab's proxy, hold the bytes and deliver after it heals
                if self._drop_when_cut and not up:
                    return True
                t = max(t, entry.end + delay)
        if self.wakes is not None:
            t = self.wakes.arrive(now, t)
        arrive = self._at_broker if up else self._at_client
        # TCP keeps order: never before what was sent earlier on the link.
        Call(env, self.delay_to(link, t), arrive, (fn, arg, client, self.epoch[client]))
        return True

    def _at_client(self, hop: Hop) -> None:
        fn, arg, client, epoch = hop
        if epoch == self.epoch[client]:  # else it was in flight when the connection dropped
            fn(arg)

    def _at_broker(self, hop: Hop) -> None:
        assert self._process is not None
        # Through the broker process's gate: now, after a pause, or never (killed).
        self._process.receive(self._at_client, hop)
