"""Fire-and-forget publish/subscribe (NATS core): no acks, no storage, no redelivery.

A queue group spreads messages over its consumers (round robin here; the server picks at random,
which gives the same long-run share). Each consumer buffers what arrives while it is busy; past
``broker.pending_limit`` waiting messages the client drops new ones (slow consumer), and they
never appear in the deliveries table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from brokerlab.sim.engine import Simulation


class PubSubModel(Simulation):
    """Messages go straight through the broker to one member of the queue group."""

    model = "pubsub"
    publish_acks = False
    consumer_acks = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.buffer_limit = self.broker.pending_limit
        self.counts["no_interest"] = 0
        #: connected members of the queue group, in round-robin order (faults change it)
        self.members: list[int] = list(range(len(self.free)))
        self._next_consumer = 0

    def stored(self, i: int) -> None:
        members = self.members
        if not members:
            # No subscriber connected: the server has no interest and drops the message.
            self.counts["no_interest"] += 1
            return
        turn = self._next_consumer % len(members)
        self._next_consumer = turn + 1
        self.deliver(i, members[turn])

    def take(self, lane: int) -> int:
        return -1  # nothing is stored

    def requeue(self, i: int) -> None:  # pragma: no cover - no acks, so nothing times out
        raise AssertionError("fire-and-forget never redelivers")

    def lose_stored(self, lost: Callable[[int], bool]) -> None:
        pass  # nothing is stored

    def lose_all(self) -> None:
        pass
