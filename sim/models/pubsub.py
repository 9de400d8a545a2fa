"""Fire-and-forget publish/subscribe (NATS core): no acks, no storage, no redelivery.

A queue group spreads messages over its consumers (round robin here; the server picks at random,
which gives the same long-run share). Each consumer buffers what arrives while it is busy; past
``broker.pending_limit`` waiting messages the client drops new ones (slow consumer), and they
never appear in the deliveries table.
"""

from __future__ import annotations

from typing import Any

from sim.engine import Simulation


class PubSubModel(Simulation):
    """Messages go straight through the broker to one member of the queue group."""

    model = "pubsub"
    publish_acks = False
    consumer_acks = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.buffer_limit = self.broker.pending_limit
        self._next_consumer = 0

    def stored(self, i: int) -> None:
        c = self._next_consumer
        self._next_consumer = (c + 1) % len(self.free)
        self.deliver(i, c)

    def take(self, lane: int) -> int:
        return -1  # nothing is stored

    def requeue(self, i: int) -> None:  # pragma: no cover - no acks, so nothing times out
        raise AssertionError("fire-and-forget never redelivers")
