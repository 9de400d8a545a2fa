"""A queue with competing consumers (RabbitMQ, SQS): acked messages leave the queue.

``max_length`` counts only ready messages and drops the oldest ready one when exceeded (RabbitMQ's
default drop-head overflow); a message whose ack (visibility) timeout expires goes back to the
head of the queue; ``retention`` drops messages older than that, even if never received.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from brokerlab.sim.engine import ACKED, Simulation


class QueueModel(Simulation):
    """Competing consumers over one queue."""

    model = "queue"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ready: deque[int] = deque()
        self.max_length = self.broker.max_length
        self.retention = self.broker.retention

    def stored(self, i: int) -> None:
        if self.retention:
            self.t_stored[i] = self.env.now
        ready = self.ready
        ready.append(i)
        if self.max_length and len(ready) > self.max_length:
            ready.popleft()
            self.counts["overflowed"] += 1
        self.offer(0)

    def take(self, lane: int) -> int:
        ready = self.ready
        while ready:
            i = ready.popleft()
            if self.track and self.pending[i] == ACKED:
                continue  # a late ack arrived while it waited for redelivery
            if self.retention and self.env.now - self.t_stored[i] > self.retention:
                self.counts["expired"] += 1
                continue
            return i
        return -1

    def undelivered(self) -> int:
        now, retention = self.env.now, self.retention
        return sum(
            1
            for i in self.ready
            if not (self.track and self.pending[i] == ACKED)
            and not (retention and now - self.t_stored[i] > retention)
        )

    def requeue(self, i: int) -> None:
        self.ready.appendleft(i)
        self.offer(0)

    def lose_stored(self, lost: Callable[[int], bool]) -> None:
        self.ready = deque(i for i in self.ready if not lost(i))
        self.forget_pending(lost)

    def lose_all(self) -> None:
        self.ready.clear()
        self.forget_pending()
