"""How consumers get messages, as a profile's ``consume`` says: pull fetches or a push window.

The engine's own consumers hold ``prefetch`` credits each and get one back when an ack reaches
the broker: a push with a window of ``prefetch``, what RabbitMQ's ``basic.qos`` does. Real
clients differ in two ways a profile can charge:

* **push with a window** (``consume: {mode: push, window: W}``): the broker keeps at most ``W``
  unacked messages in flight per consumer (a JetStream push consumer's ``max_ack_pending``, an
  EventStoreDB subscription's buffer), whatever the harness's fetch size; ``W = 0`` is
  ``prefetch``. A window caps each consumer's throughput at ``W / (time a message holds a slot)``:
  delivery, processing and the ack's trip back.
* **pull** (``consume: {mode: pull}``: Redis ``XREADGROUP``, a JetStream pull ``fetch``, Kafka's
  ``poll``): a consumer asks for up to ``prefetch`` messages and the broker answers with what it
  has (at least one: the request blocks until then). Only when the consumer has processed and
  acked the whole answer does it ask again, so every batch pays a request's trip to the broker on
  top of the ack: with ``prefetch`` 1 and an ack whose reply the consumer awaits (Redis ``XACK``),
  two round trips per message; with an unanswered ack (a JetStream ack, the preset's
  ``ack_reply: false``) the fetch follows the ack at once, one round trip. That is why a real
  consumer with 3 ms of processing takes fewer than 333 messages a second.
* **a status ends a short answer** (the preset's ``pull_status``, a profile's
  ``consume.status``): nats-py's JetStream ``fetch`` of more than one message returns once the
  server's 408 Request Timeout (or 404 No Messages) that follows an answer with fewer messages
  than asked reaches it. Measured against the machine's own nats-server, one message published
  into an empty stream: ``fetch(10)`` returned 1.2-1.3 ms after the publish, ``fetch(1)``
  0.9-1.0 ms, the 408 arriving 0.16-0.18 ms after the message.

Fault-free runs only: a run with faults keeps the engine's credit (its fault layer reconnects
consumers with fresh credit), so its pull consumers behave as a push window of ``prefetch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokerlab.sim.events import Call

if TYPE_CHECKING:
    from brokerlab.core.scenario import Distribution
    from brokerlab.sim.engine import Simulation


def set_consume(
    sim: Simulation,
    mode: str,
    window: int,
    wake: Distribution | None = None,
    fetch: Distribution | None = None,
    status: Distribution | None = None,
) -> str:
    """Make ``sim``'s consumers get messages the way ``mode`` says; returns what was installed
    (``credit`` when the engine's own credit stays: no acks, a faulted run, a window of
    ``prefetch``). ``wake``: how long a consumer blocked in a pull fetch takes to see the answer
    (charged on answers to a fetch that had to wait); ``fetch``: the broker's work per fetch
    request (served on its servers); ``status``: how long after a short answer's messages the
    status that ends the fetch reaches the consumer (kinds whose preset says ``pull_status``)."""
    if sim.faults is not None or not sim.consumer_acks:
        return "credit"
    if mode == "push":
        if window and window != sim.scenario.consumers.prefetch:
            sim.free = [window] * len(sim.free)
            return f"push window {window}"
        return "credit"
    if mode == "pull":
        _Pull(sim, wake, fetch, status)
        return "pull"
    raise ValueError(f"unknown consume mode {mode!r}")


class _Pull:
    """Pull fetches on a simulation: replaces its consumer steps (instance attributes, so a run
    without a profile keeps the engine's path untouched).

    ``asked[c]`` is the size of consumer ``c``'s open fetch (0: none open, -1: on its way). The
    broker answers a fetch with what it has (closing it: the consumer's credit drops to 0), or,
    with nothing to give, keeps it open and answers when a message comes (a *blocked* fetch: its
    answer also pays the consumer's wake-up). The answer is one reply: it travels as one hop once
    the broker has served all its messages, and the whole batch is delivered when it arrives (as
    the harness records a fetch). The consumer asks again only once it has processed and acked
    all of it. With no processing time the harness acks the whole batch in one call (what
    finished together is acked together): one ack round trip per batch.
    """

    def __init__(
        self,
        sim: Simulation,
        wake: Distribution | None,
        fetch: Distribution | None,
        status: Distribution | None = None,
    ):
        import numpy as np

        from brokerlab.sim.sampling import is_zero, step_samples

        self.sim = sim
        count = len(sim.free)
        self.size = sim.scenario.consumers.prefetch
        # Every consumer starts blocked in a fetch of up to prefetch messages.
        self.asked = [self.size] * count
        #: rows of a closed answer the broker has served so far, and how many it holds
        self.served: list[list[int]] = [[] for _ in range(count)]
        self.expected = [0] * count
        self.blocked = [False] * count
        #: the open answer holds fewer than the fetch asked for
        self.short = [False] * count
        #: an answer is being served or travelling to the consumer
        self.answering = [False] * count
        self.wake = step_samples(wake, np.random.default_rng((sim.seed, 0x70756C6C)))
        self.fetch_work = step_samples(fetch, np.random.default_rng((sim.seed, 0x6665746368)))
        #: a short answer ends with a status (see the module docstring)
        self.status = (
            step_samples(status, np.random.default_rng((sim.seed, 0x737461747573)))
            if sim.pull_status and self.size > 1
            else None
        )
        sim.free = [self.size] * count
        # The engine's fault-free shortcuts inline steps this class replaces (``_start``,
        # ``finish``, ``released``): put back the generic steps, which call the replacements.
        engine = type(sim)
        sim.received = engine.received.__get__(sim)  # type: ignore[method-assign]
        sim._processed = engine._processed.__get__(sim)  # type: ignore[method-assign]
        self._offer, self._credit = sim.offer, sim.credit
        self._received, self._finish = sim.received, sim.finish
        sim.offer = self.offer  # type: ignore[method-assign]
        sim.credit = self.credit  # type: ignore[method-assign]
        sim.released = self.released  # type: ignore[method-assign]
        sim._to_consumer = self.served_row  # type: ignore[method-assign]
        sim.finish = sim.done = self.finish  # type: ignore[method-assign]
        if sim.ack_after and is_zero(sim.scenario.consumers.processing) and sim._net is not None:
            sim._start = self.batch_ack  # type: ignore[method-assign]

    # ---------------------------------------------------------------- the broker's side

    def _answer(self, c: int, blocked: bool) -> None:
        """Close ``c``'s fetch if the broker just answered it with something."""
        asked = self.asked[c]
        sent = asked - self.sim.free[c]
        if asked > 0 and sent > 0:
            self.sim.free[c] = 0
            self.asked[c] = 0
            self.expected[c] = sent
            self.blocked[c] = blocked
            self.short[c] = sent < asked
            self.answering[c] = True
            self._flush(c)

    def offer(self, lane: int) -> None:
        """New messages (or a redelivery) in ``lane``: open fetches there are answered."""
        self._offer(lane)
        for c in self.sim.lane_owners[lane]:
            self._answer(c, blocked=True)

    def credit(self, c: int) -> None:
        self._credit(c)
        self._answer(c, blocked=False)

    def fetched(self, c: int) -> None:
        """``c``'s fetch reached the broker: its servers handle the request, then answer."""
        if self.fetch_work is None:
            self.handled(c)
        else:
            self.sim._serve(next(self.fetch_work), self.handled, c)

    def handled(self, c: int) -> None:
        """The broker has handled ``c``'s fetch: it answers with what it has, or blocks."""
        self.asked[c] = self.size
        self.sim.free[c] = self.size
        self.credit(c)

    def served_row(self, r: int) -> None:
        """The broker has served row ``r`` of an answer (its delivery work done)."""
        c = self.sim.row_consumer[r]
        self.served[c].append(r)
        self._flush(c)

    def _flush(self, c: int) -> None:
        """Send the answer once all of it is served: one reply, late by a wake-up if blocked
        and by the status that ends it if short."""
        rows = self.served[c]
        if not self.expected[c] or len(rows) < self.expected[c]:
            return
        self.served[c] = []
        self.expected[c] = 0
        late = 0.0
        if self.blocked[c] and self.wake is not None:
            late += next(self.wake)
        if self.short[c] and self.status is not None:
            late += next(self.status)
        if late > 0:
            Call(self.sim.env, late, self._reply, rows)
        else:
            self._reply(rows)

    def _reply(self, rows: list[int]) -> None:
        sim = self.sim
        if sim._net is None:
            self._arrived(rows)
        else:
            sim._hop(sim._consumer_down + sim.row_consumer[rows[0]], self._arrived, rows)

    def released(self, r: int) -> None:
        """An ack (or a done message) reached the broker: it frees no credit in a pull."""
        if self.sim.ack_after:
            self.sim.acked(r)

    # ---------------------------------------------------------------- the consumer's side

    def _arrived(self, rows: list[int]) -> None:
        """The answer reached the (idle) consumer: the whole batch is delivered now."""
        sim = self.sim
        c = sim.row_consumer[rows[0]]
        self.answering[c] = False
        now = sim.env.now
        hand = sim.hand[c]
        for more in rows[1:]:
            sim.row_t_delivered[more] = now
            hand.append(more)
        self._received(rows[0])

    def finish(self, r: int) -> None:
        sim = self.sim
        self._finish(r)
        c = sim.row_consumer[r]
        if not sim.busy[c] and not self.asked[c] and not self.answering[c]:
            # Idle, the whole answer processed (and acked): ask for the next batch.
            self.asked[c] = -1
            sim._to_broker(c, self.fetched, c)

    def batch_ack(self, c: int, r: int) -> None:
        """No processing time: the batch in hand is acked in one call, done when it returns (at
        once when nothing answers the ack)."""
        sim = self.sim
        rows = [r, *sim.hand[c]]
        sim.hand[c].clear()
        if sim.ack_waits:
            sim._to_broker(c, self._batch_acked, rows)
            return
        for row in rows:
            sim._to_broker(c, self.released, row)
        self._batch_done(rows)

    def _batch_acked(self, rows: list[int]) -> None:
        for row in rows:
            self.released(row)
        self.sim._to_client(self.sim.row_consumer[rows[0]], self._batch_done, rows)

    def _batch_done(self, rows: list[int]) -> None:
        for row in rows:
            self.finish(row)
