"""The simulation engine: producers, network, broker servers and consumers around a broker model.

Everything happens in one SimPy environment. Each step of a message (send, network hop, broker
service, delivery, processing, ack) is one scheduled event whose callback performs the next step.
There is no SimPy process, Store or Resource per message: a message is an integer index into
preallocated columns, and callbacks move that index along. This keeps a run a real discrete-event
simulation (SimPy's clock, heap and deterministic event order) at a few microseconds per message.

A broker model (``sim/models``) subclasses :class:`Simulation` and fills three hooks:
``stored(i)`` (a publish reached the broker's storage), ``take(lane)`` (next message a consumer
of that lane may receive) and ``requeue(i)`` (an unacked delivery timed out).

The broker process (``sim/process.py``) and the network (``sim/network.py``) are collaborators
given at construction, as Ciw is given node and server classes; a run with faults also gets a
fault layer (``sim/faulted.py``: a retrying publisher, faulted consumers, the timeline) whose
steps the engine calls through :class:`FaultLayer`. A fault-free run gets the plain process and
network and no layer, so its path has no fault checks at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from heapq import heappush
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from brokerlab.core.load import LoadPlan, streams
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import (
    FaultWindow,
    Trace,
    build_timeline,
    make_deliveries,
    make_sends,
)
from brokerlab.core.vocabulary import OUTCOMES, OutcomeCode
from brokerlab.sim.events import Call, Clock
from brokerlab.sim.network import Network
from brokerlab.sim.presets import Preset
from brokerlab.sim.process import BrokerProcess, InOrder, reorders
from brokerlab.sim.publisher import RetryingPublisher
from brokerlab.sim.sampling import samples, step_samples

#: ``pending[i]`` when message ``i`` has no unacked delivery
NO_ROW = -1
#: ``pending[i]`` once any delivery of message ``i`` was acked (late acks count too)
ACKED = -2

Progress = Callable[[int, int], None]

#: How often the drain looks whether every acknowledged message is done (the harness's poll).
DRAIN_TICK = 0.02

#: SimPy's priority of an ordinary event (the hot paths push heap entries themselves, as
#: :meth:`brokerlab.sim.events.Clock.call` does, to save a function call per step)
NORMAL = 1


class ConsumerSteps(Protocol):
    """The consumer steps a fault layer takes over (``brokerlab.sim.faulted.FaultedConsumers``)."""

    def to_consumer(self, r: int) -> None: ...
    def to_broker(self, consumer: int, fn: Callable[[Any], None], r: Any) -> None: ...
    def to_client(self, consumer: int, fn: Callable[[int], None], r: int) -> None: ...
    def start(self, c: int, r: int) -> None: ...
    def processed(self, job: Any) -> None: ...
    def ack_batch(self, c: int, r: int) -> None: ...
    def done(self, r: int) -> None: ...


class FaultLayer(Protocol):
    """What the engine calls on a fault layer (see :class:`brokerlab.sim.faulted.FaultLayer`)."""

    publisher: RetryingPublisher
    consumers: ConsumerSteps

    def schedule(self) -> None: ...


class Simulation:
    """Shared machinery of every broker model; subclasses add the broker's storage semantics.

    Message ``i`` is the ``i``-th entry of the load plan; delivery attempt ``r`` is the ``r``-th
    row of the deliveries table. Network links are FIFO per connection (TCP keeps order), so a
    random delay never reorders messages of one producer or acks of one consumer.
    """

    #: name written to ``info["model"]``
    model: ClassVar[str] = "base"
    #: the broker acknowledges publishes (fire-and-forget brokers do not)
    publish_acks: ClassVar[bool] = True
    #: consumers ack deliveries and return credit (their next fetch) after processing
    consumer_acks: ClassVar[bool] = True

    def __init__(
        self,
        scenario: Scenario,
        preset: Preset,
        plan: LoadPlan,
        seed: int,
        progress: Progress | None = None,
        *,
        process: type[BrokerProcess] = BrokerProcess,
        network: type[Network] = Network,
        faults: Callable[[Simulation], FaultLayer] | None = None,
    ):
        self.env = Clock()
        self.scenario = scenario
        self.preset = preset
        self.seed = seed
        self.broker = broker = preset.broker
        self.plan = plan
        self.n = n = len(plan)
        #: the run ends this long after the last intended send, drained or not (like the harness)
        self.end = plan.duration + scenario.drain_timeout
        self.t_intended: list[float] = plan.t_intended.tolist()
        self.producer_of: list[int] = plan.producer.tolist()

        rngs = streams(seed)
        consumers = scenario.consumers
        net, publish, deliver = (
            scenario.network.delay,
            broker.service_time.publish,
            broker.service_time.deliver,
        )
        # None means "always zero": that step is skipped and schedules no event.
        self._net = step_samples(net, rngs["network"])
        self.publish_time = step_samples(publish, rngs["service"])
        self._deliver_time = step_samples(deliver, rngs["service"])
        self.processing_times = samples(consumers.processing, rngs["processing"])

        #: the broker process (its servers; a faulted run's can stop): chosen by the caller
        self.process = process(self.env, broker.servers)
        self._serve = self.process.serve
        # Parallel servers with random service times would reorder one connection's work; the
        # broker keeps it in order (None: the servers cannot reorder it).
        servers = broker.servers
        self._publish_order = (
            InOrder(self.process, scenario.producers.count) if reorders(servers, publish) else None
        )
        self._deliver_order = (
            InOrder(self.process, consumers.count) if reorders(servers, deliver) else None
        )

        # The network (links per connection direction): chosen by the caller.
        producers, count = scenario.producers.count, consumers.count
        self.network = network(self.env, self._net, producers, count)
        self._producer_down = self.network.producer_down
        self._consumer_down = self.network.consumer_down
        self._consumer_up = self.network.consumer_up
        self._hop = self.network.hop

        # Sends, recorded by message index.
        self.sync = scenario.producers.confirm == "sync" and self.publish_acks
        self.t_sent = np.full(n, math.nan)
        #: open-loop producers send nothing before this (a capacity owed more publish work than
        #: it can queue holds them: :class:`brokerlab.sim.pace.SharedPacer`), and the sends it
        #: made late, by message index: when they went
        self.hold_until = -math.inf
        self.late: dict[int, float] = {}
        #: a list, not an array: the hot path sets one entry per message (5x cheaper)
        self.t_acked: list[float] = [math.nan] * n
        self.t_stored: list[float] = [0.0] * n if broker.retention else []

        # Consumer acks, pending entries and redelivery.
        self.ack_mode = consumers.ack
        self.track = self.consumer_acks and self.ack_mode != "none"
        self.ack_after = self.track and self.ack_mode == "after"
        self._ack_before = self.track and self.ack_mode == "before"
        #: the consumer waits for its ack's reply (Redis XACK); false: the ack is sent unanswered
        #: (a JetStream ack, RabbitMQ's basic.ack) and the consumer goes on at once
        self.ack_waits = preset.ack_reply
        #: a short answer to a pull fetch of more than one message ends with a status (nats-py)
        self.pull_status = preset.pull_status
        self._ack_timeout = broker.ack_timeout if self.track and preset.redelivery else None
        self.max_deliveries = broker.max_deliveries
        self.pending: list[int] = [NO_ROW] * n if self.track else []
        self.deliveries_of = [0] * n
        self.in_flight = 0
        self._cap: int | None = (
            broker.max_ack_pending if self.track and preset.max_ack_pending else None
        )
        self._capped = False
        self._deadlines: deque[tuple[float, int]] = deque()
        self._timer_set = False
        #: a broker kill stops the ack timer; timer events of an older epoch are stale
        self._timer_epoch = 0

        # Consumers: credit (free prefetch slots at the broker), the client library's buffer
        # (arrived, not yet handed to the consumer: not delivered), the batch in hand (handed
        # over, delivered, not yet processed) and a busy flag (processing or awaiting an ack).
        self.free = [consumers.prefetch] * count
        self.busy = [False] * count
        self.buffer: list[deque[int]] = [deque() for _ in range(count)]
        self.hand: list[deque[int]] = [deque() for _ in range(count)]
        #: the most messages a consumer's fetch hands over at once (the harness's fetch size)
        self.batch = consumers.prefetch
        #: ``finished[b]`` once some delivery of broker index ``b`` was processed (and acked)
        self.finished = bytearray(n)
        #: waiting messages a consumer keeps before dropping new ones (fire-and-forget only)
        self.buffer_limit: int | None = None

        # Lanes: a lane is what one cursor reads (a stream, a queue, a partition). By default one
        # lane shared by all consumers; partitioned models override these.
        self.lane_owners: list[list[int]] = [list(range(count))]
        self.consumer_lanes: list[list[int]] = [[0] for _ in range(count)]
        self._rr = [0]

        # Deliveries, one row per attempt, preallocated for one delivery per message and grown
        # when redeliveries need more. Lists rather than NumPy arrays: the hot path reads msg and
        # consumer back, and a list hands out a plain int where NumPy would box a scalar.
        self.rows = 0
        self.row_msg: list[int] = [0] * n
        self.row_consumer: list[int] = [0] * n
        self.row_number: list[int] = [0] * n
        self.row_t_delivered: list[float] = [math.nan] * n
        self.row_t_done: list[float] = [math.nan] * n

        self.counts = {
            "dead_lettered": 0,
            "trimmed": 0,
            "expired": 0,
            "overflowed": 0,
            "slow_consumer_drops": 0,
            "unsent": 0,
        }
        #: the drain's end: every acknowledged message done (see :meth:`_drain_tick`), or ``end``
        self._stop = self.env.event()
        self._owed: list[int] | None = None
        self._owed_at = 0
        self.progress = progress
        self._report_every = max(1, n // 100)
        self._report_at = self._report_every if progress else -1

        self.done = self.finish
        #: the fault layer (None in a fault-free run, whose path has no fault checks at all)
        self.faults: FaultLayer | None = None
        if faults is not None:
            self.faults = layer = faults(self)
            # The layer's collaborators take over these steps; the engine calls them as its own.
            self._publish = layer.publisher.publish  # type: ignore[method-assign]
            self._to_consumer = layer.consumers.to_consumer  # type: ignore[method-assign]
            self._to_broker = layer.consumers.to_broker  # type: ignore[method-assign]
            self._to_client = layer.consumers.to_client  # type: ignore[method-assign]
            self._start = layer.consumers.start  # type: ignore[method-assign]
            self._processed = layer.consumers.processed  # type: ignore[method-assign]
            self._ack_batch = layer.consumers.ack_batch  # type: ignore[method-assign]
            self.done = layer.consumers.done
            return
        # Skip steps that are always zero by binding straight to the step after them: a publish
        # with no network delay and no service time is stored in the same callback as its send.
        if self.publish_time is None:
            self._arrive = self._store  # type: ignore[method-assign]
        if self._net is None:
            self._publish = self._arrive  # type: ignore[method-assign]
            self._to_consumer = self._received_plain  # type: ignore[method-assign]
            if self.publish_time is None and not self.sync:
                self._send_async = self._send_and_store  # type: ignore[method-assign]
            if self.consumer_acks:
                self._processed = self._processed_instant  # type: ignore[method-assign]
        else:
            self.received = self._received_plain  # type: ignore[method-assign]

    # ------------------------------------------------------------------ hooks for the models

    def stored(self, i: int) -> None:
        """Message ``i`` is in the broker's storage: keep it and offer it to consumers."""
        raise NotImplementedError

    def take(self, lane: int) -> int:
        """The next message a consumer of ``lane`` receives, or -1 when there is none."""
        raise NotImplementedError

    def requeue(self, i: int) -> None:
        """An unacked delivery of ``i`` timed out: make ``i`` deliverable again."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks for faults

    def add_copy(self, i: int) -> int:
        """A second stored copy of message ``i`` (a retried publish, no dedup): its broker index.

        Copies get indices from ``n`` up, so every per-message list grows by one entry; the
        trace maps them back to the message (one sends row per planned message).
        """
        b = len(self.deliveries_of)
        self.deliveries_of.append(0)
        self.finished.append(0)
        if self.track:
            self.pending.append(NO_ROW)
        if self.broker.retention:
            self.t_stored.append(0.0)
        return b

    def lose_stored(self, lost: Callable[[int], bool]) -> None:
        """A broker kill lost the stored messages ``lost(i)`` says (pending ones included)."""
        raise NotImplementedError

    def lose_all(self) -> None:
        """A broker kill lost every stored message and the consumer group's state."""
        raise NotImplementedError

    def forget_pending(self, lost: Callable[[int], bool] | None = None) -> None:
        """Drop pending entries (of messages ``lost(i)`` says, or all): they never come back."""
        pending = self.pending
        for i, row in enumerate(pending):
            if row >= 0 and (lost is None or lost(i)):
                pending[i] = NO_ROW
                self.in_flight -= 1
        if lost is None:
            self._deadlines.clear()
        self._capped = False

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        """Play the whole load plan, then drain as the harness does.

        The drain ends when every message whose publish was acknowledged has been processed
        (and acked) by a consumer, checked every :data:`DRAIN_TICK` from the end of the plan, or
        at ``end`` (``drain_timeout`` after the last intended send), whichever comes first;
        ``end`` is then the time the run stopped.
        """
        if self.n:
            if self.sync:
                self._start_sync_producers()
            else:
                Call(self.env, self.t_intended[0], self._send_async, 0)
        if self.faults is not None:
            self.faults.schedule()
        Call(self.env, self.plan.duration, self._drain_tick, None)
        Call(self.env, self.end, self._stop_now, None)
        self.env.run(until=self._stop)
        self.end = self.env.now
        self.drain = self._drain_record()
        if self.progress:
            self.progress(self.n, self.n)

    def _drain_record(self) -> dict[str, Any]:
        """How the drain ended, in the harness's shape (run.json ``target_info.drain``).

        A drain that timed out leaves acknowledged messages undelivered; some may only be late
        (still stored at the broker, or in a consumer's client library), so the record says how
        many each holds and the analysis does not call them lost on the broker's behalf.
        """
        owed = self._owed
        if owed is not None and self._owed_at == len(owed):
            return {"reason": "complete", "pending": 0}
        finished = self.finished
        open_ = [i for i in (owed if owed is not None else self.owed()) if not finished[i]]
        # Processed and acked, with the ack's answer still on its way back: late, not lost.
        answering = sum(1 for i in open_ if self.pending[i] == ACKED) if self.track else 0
        return {
            "reason": "timeout",
            "seconds": float(self.scenario.drain_timeout),
            "pending": len(open_),
            "at_broker": {
                "undelivered": self.undelivered(),
                "unacked": self.unacked() + answering,
            },
        }

    def undelivered(self) -> int:
        """Stored entries no consumer has taken yet (a model that stores nothing holds none)."""
        return 0

    def unacked(self) -> int:
        """Messages delivered to a consumer and not yet acknowledged, or waiting in a consumer's
        client library (fire and forget: delivered but not yet handed to the application)."""
        if self.track:
            return self.in_flight
        return sum(len(buffer) for buffer in self.buffer)

    def _stop_now(self, _: Any) -> None:
        if not self._stop.triggered:
            self._stop.succeed()

    def publishing(self) -> bool:
        """Whether a producer still has sends or publish answers to wait for."""
        if self.faults is not None:
            return self.faults.publisher.publishing()
        if self.sync and self._sent < self.n:
            return True
        if not self.publish_acks:
            return False
        t_acked = np.asarray(self.t_acked, dtype="float64")
        return bool(np.isnan(t_acked).any()) or bool(np.nanmax(t_acked) > self.env.now)

    def owed(self) -> list[int]:
        """Messages the drain waits for: those whose publish was acknowledged (all, fire and
        forget: the harness counts a publish call that returned as acknowledged)."""
        if self.faults is not None:
            return self.faults.publisher.owed()
        if not self.publish_acks:
            return list(range(self.n))
        return np.flatnonzero(np.asarray(self.t_acked, dtype="float64") <= self.env.now).tolist()

    def _drain_tick(self, _: Any) -> None:
        # Like the harness's drain loop: from the moment the producers are done, look every
        # DRAIN_TICK whether every acknowledged message is done. Completion only grows, so a
        # pointer walks the owed list once over the whole drain.
        if self._owed is None:
            if self.publishing():
                Call(self.env, DRAIN_TICK, self._drain_tick, None)
                return
            self._owed = self.owed()
        owed, finished, at = self._owed, self.finished, self._owed_at
        while at < len(owed) and finished[owed[at]]:
            at += 1
        self._owed_at = at
        if at == len(owed):
            self._stop_now(None)
        else:
            Call(self.env, DRAIN_TICK, self._drain_tick, None)

    @property
    def events(self) -> int:
        """Events the engine scheduled in the run."""
        return self.env.scheduled

    # ------------------------------------------------------------------ producers

    def _send_async(self, i: int) -> None:
        # Open loop: the producer falls behind only when held, so the next send is known.
        following = i + 1
        if following < self.n:
            env = self.env
            now = env.now
            intended = self.t_intended[following]
            delay = intended - now if intended >= self.hold_until else self._held(following, now)
            # Call(env, max(delay, 0), self._send_async, following), inlined
            heappush(
                env._queue,
                (
                    now + (delay if delay > 0 else 0.0),
                    NORMAL,
                    next(env._eid),
                    self._send_async,
                    following,
                ),
            )
        if i == self._report_at:
            self._report(i)
        self._publish(i)

    def _send_and_store(self, i: int) -> None:
        """:meth:`_send_async` then :meth:`_store`, inlined: a fault-free run with no network
        delay and no publish service time stores a publish in the callback of its send."""
        following = i + 1
        env = self.env
        now = env.now
        if following < self.n:
            intended = self.t_intended[following]
            delay = intended - now if intended >= self.hold_until else self._held(following, now)
            heappush(
                env._queue,
                (
                    now + (delay if delay > 0 else 0.0),
                    NORMAL,
                    next(env._eid),
                    self._send_async,
                    following,
                ),
            )
        if i == self._report_at:
            self._report(i)
        if self.publish_acks:
            self.t_acked[i] = now  # acked the moment it is stored (no way back to travel)
        self.stored(i)

    def _held(self, i: int, now: float) -> float:
        """Message ``i``'s send, intended before :attr:`hold_until`, goes then (or now, if that
        has passed): recorded as late; returns its delay from now."""
        at = self.hold_until if self.hold_until > now else now
        self.late[i] = at
        return at - now

    def _start_sync_producers(self) -> None:
        producer = self.plan.producer
        following = np.full(self.n, -1, dtype="int64")
        for p in np.unique(producer):
            mine = np.flatnonzero(producer == p)
            following[mine[:-1]] = mine[1:]
            Call(self.env, self.t_intended[mine[0]], self._send_sync, int(mine[0]))
        self._following: list[int] = following.tolist()
        self._sent = 0

    def _send_sync(self, i: int) -> None:
        self.t_sent[i] = self.env.now
        self._sent += 1
        if self._sent == self._report_at:
            self._report(self._sent)
        self._publish(i)

    def producer_free(self, i: int) -> None:
        """Message ``i``'s publish is over: a confirm-sync producer sends its next one when due."""
        following = self._following[i]
        if following >= 0:
            now = self.env.now
            t_next = max(self.t_intended[following], now)
            Call(self.env, t_next - now, self._send_sync, following)

    def _report(self, done: int) -> None:
        assert self.progress is not None
        self.progress(done, self.n)
        self._report_at += self._report_every

    def _publish(self, i: int) -> None:
        if self._net is None:
            self._arrive(i)
        else:
            self._hop(self.producer_of[i], self._arrive, i)

    def _arrive(self, i: int) -> None:
        if self.publish_time is None:
            self._store(i)
        elif self._publish_order is None:
            self._serve(next(self.publish_time), self._store, i)
        else:  # a producer's publishes are stored in the order sent (see InOrder)
            self._publish_order.serve(next(self.publish_time), self.producer_of[i], self._store, i)

    def _store(self, i: int) -> None:
        if self.publish_acks:
            now = self.env.now
            t_ack = (
                now
                if self._net is None
                else self.network.arrival(self._producer_down + self.producer_of[i])
            )
            self.t_acked[i] = t_ack
            if self.sync:
                following = self._following[i]
                if following >= 0:
                    t_next = max(self.t_intended[following], t_ack)
                    Call(self.env, t_next - now, self._send_sync, following)
        self.stored(i)

    # ------------------------------------------------------------------ network and servers

    def _to_broker(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        if self._net is None:
            fn(r)
        else:
            self._hop(self._consumer_up + consumer, fn, r)

    # ------------------------------------------------------------------ dispatch

    def offer(self, lane: int) -> None:
        """Hand what ``lane`` holds to its consumers with free credit, round robin."""
        owners = self.lane_owners[lane]
        free = self.free
        k = len(owners)
        if k == 1:  # one consumer (or a partition's owner): no rotation to keep
            c = owners[0]
            while free[c] > 0:
                i = self.take(lane)
                if i < 0:
                    return
                free[c] -= 1
                self.deliver(i, c)
            return
        start = self._rr[lane]
        for step in range(k):
            c = owners[(start + step) % k]
            while free[c] > 0:
                i = self.take(lane)
                if i < 0:
                    return
                free[c] -= 1
                self._rr[lane] = (start + step + 1) % k
                self.deliver(i, c)

    def credit(self, c: int) -> None:
        """Consumer ``c`` has a free slot again: give it what its lanes hold."""
        free = self.free
        for lane in self.consumer_lanes[c]:
            while free[c] > 0:
                i = self.take(lane)
                if i < 0:
                    break
                free[c] -= 1
                self.deliver(i, c)
            if free[c] == 0:
                return

    def deliver(self, i: int, c: int) -> None:
        """The broker sends message ``i`` to consumer ``c`` (credit already taken)."""
        r = self.rows
        row_msg = self.row_msg
        if r == len(row_msg):
            self._grow_rows()  # grows the lists in place
        self.rows = r + 1
        deliveries_of = self.deliveries_of
        number = deliveries_of[i] + 1
        deliveries_of[i] = number
        row_msg[r] = i
        self.row_consumer[r] = c
        self.row_number[r] = number
        if self.track:
            pending = self.pending
            if pending[i] < 0:
                self.in_flight += 1
            pending[i] = r
            timeout = self._ack_timeout
            if timeout is not None:
                # self._watch(r), inlined
                self._deadlines.append((self.env.now + timeout, r))
                if not self._timer_set:
                    self._timer_set = True
                    Call(self.env, timeout, self._on_timer, self._timer_epoch)
        if self._deliver_time is None:
            self._to_consumer(r)
        elif self._deliver_order is None:
            self._serve(next(self._deliver_time), self._to_consumer, r)
        else:  # a consumer's deliveries leave in the order taken (see InOrder)
            self._deliver_order.serve(next(self._deliver_time), c, self._to_consumer, r)

    def _grow_rows(self) -> None:
        more = max(1024, len(self.row_msg) // 2)
        self.row_msg += [0] * more
        self.row_consumer += [0] * more
        self.row_number += [0] * more
        self.row_t_delivered += [math.nan] * more
        self.row_t_done += [math.nan] * more

    def _to_consumer(self, r: int) -> None:
        if self._net is None:
            self.received(r)
        else:
            self._hop(self._consumer_down + self.row_consumer[r], self.received, r)

    # ------------------------------------------------------------------ consumers

    def received(self, r: int) -> None:
        """Delivery row ``r`` reached its consumer's client library (not yet delivered)."""
        c = self.row_consumer[r]
        buffer = self.buffer[c]
        if self.buffer_limit is not None and len(buffer) >= self.buffer_limit:
            # Slow consumer: the client library drops it; the row keeps t_delivered NaN.
            self.counts["slow_consumer_drops"] += 1
            return
        if self.busy[c]:
            buffer.append(r)
            return
        # An idle consumer's buffer is empty: its handler takes this one at once.
        self.busy[c] = True
        self.row_t_delivered[r] = self.env.now
        if self._ack_before:
            self._ack_batch(c, r)
        else:
            self._start(c, r)

    def _received_plain(self, r: int) -> None:
        """:meth:`received` of a fault-free run, whose ``_start`` is the engine's own (inlined)."""
        c = self.row_consumer[r]
        buffer = self.buffer[c]
        if self.buffer_limit is not None and len(buffer) >= self.buffer_limit:
            self.counts["slow_consumer_drops"] += 1
            return
        busy = self.busy
        if busy[c]:
            buffer.append(r)
            return
        busy[c] = True
        env = self.env
        now = env.now
        self.row_t_delivered[r] = now
        if self._ack_before:
            self._ack_batch(c, r)
        else:
            # self._start(c, r), inlined
            heappush(
                env._queue,
                (now + next(self.processing_times), NORMAL, next(env._eid), self._processed, r),
            )

    def _fetch(self, c: int) -> None:
        """Consumer ``c``'s handler takes a batch from its buffer: the moment of delivery.

        As the harness's fetch: up to ``prefetch`` waiting messages at once, all delivered now,
        then processed one after the other; with ``ack: before`` the batch is acked first and
        processing waits for the ack's reply.
        """
        buffer = self.buffer[c]
        now = self.env.now
        r = buffer.popleft()
        self.row_t_delivered[r] = now
        if buffer and self.batch > 1:
            hand = self.hand[c]
            for _ in range(min(self.batch - 1, len(buffer))):
                more = buffer.popleft()
                self.row_t_delivered[more] = now
                hand.append(more)
        if self._ack_before:
            self._ack_batch(c, r)
        else:
            self._start(c, r)

    def _ack_batch(self, c: int, r: int) -> None:
        """``ack: before``: ack the batch (first row ``r``), start ``r`` once the reply is back."""
        rows = [r, *self.hand[c]]
        if self._net is None or not self.ack_waits:
            # No time to travel, or an unanswered ack: processing starts at once (_to_broker
            # calls acked at once when there is no network).
            for row in rows:
                self._to_broker(c, self.acked, row)
            self._start(c, r)
            return
        for row in rows[:-1]:
            self._to_broker(c, self.acked, row)
        self._to_broker(c, self.acked_early, (rows[-1], r))

    def acked_early(self, rows: tuple[int, int]) -> None:
        last, first = rows
        self.acked(last)
        self._to_client(self.row_consumer[first], self.begin, first)

    def begin(self, r: int) -> None:
        self._start(self.row_consumer[r], r)

    def _to_client(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        """A reply from the broker to ``consumer`` (same link as its deliveries)."""
        if self._net is None:
            fn(r)
        else:
            self._hop(self._consumer_down + consumer, fn, r)

    def _start(self, c: int, r: int) -> None:
        """Consumer ``c`` starts processing delivery row ``r`` (faults change how long it takes)."""
        env = self.env
        heappush(
            env._queue,
            (env.now + next(self.processing_times), NORMAL, next(env._eid), self._processed, r),
        )

    def _processed(self, r: int) -> None:
        if self._net is None:
            # The ack's round trip takes no time: done now, and the ack (mode "after") and the
            # next fetch reach the broker in the same instant.
            self.finish(r)
            if self.consumer_acks:
                self.released(r)
        elif self.ack_after and self.ack_waits:
            # The ack and the next fetch travel together; the consumer waits for the ack's
            # reply before it counts the message done and takes the next (as the harness does).
            self._to_broker(self.row_consumer[r], self.ack_reached, r)
        elif self.ack_after:
            # An unanswered ack: sent, and the consumer goes on at once (its next fetch follows
            # the ack on the same link).
            self._to_broker(self.row_consumer[r], self.released, r)
            self.finish(r)
        else:
            self.finish(r)
            if self.consumer_acks:
                self._to_broker(self.row_consumer[r], self.released, r)

    def _processed_instant(self, r: int) -> None:
        """:meth:`_processed` of a fault-free run with no network delay and consumer acks:
        :meth:`finish` inlined (it runs for every message), then :meth:`released`."""
        now = self.env.now
        self.row_t_done[r] = now
        i = self.row_msg[r]
        self.finished[i] = 1
        c = self.row_consumer[r]
        hand = self.hand[c]
        if hand:
            self._start(c, hand.popleft())
        elif self.buffer[c]:
            self._fetch(c)
        else:
            self.busy[c] = False
        self.released(r)

    def ack_reached(self, r: int) -> None:
        self.released(r)
        self._to_client(self.row_consumer[r], self.done, r)

    def finish(self, r: int) -> None:
        """Row ``r`` is processed and, with ``ack: after``, acked: ``t_done``; take the next.

        The engine calls it as ``self.done`` (a fault layer may put its own step first)."""
        self.row_t_done[r] = self.env.now
        self.finished[self.row_msg[r]] = 1
        c = self.row_consumer[r]
        hand = self.hand[c]
        if hand:
            self._start(c, hand.popleft())
        elif self.buffer[c]:
            self._fetch(c)
        else:
            self.busy[c] = False

    def released(self, r: int) -> None:
        if self.ack_after:
            # self.acked(r), inlined
            i = self.row_msg[r]
            pending = self.pending
            if pending[i] >= 0:
                self.in_flight -= 1
            pending[i] = ACKED
            if self._capped:
                self._uncap()
        c = self.row_consumer[r]
        free = self.free
        free[c] += 1
        # self.credit(c), inlined for the usual single lane
        lanes = self.consumer_lanes[c]
        if len(lanes) == 1:
            take, deliver, lane = self.take, self.deliver, lanes[0]
            while free[c] > 0:
                i = take(lane)
                if i < 0:
                    return
                free[c] -= 1
                deliver(i, c)
        else:
            self.credit(c)

    # ------------------------------------------------------------------ acks and redelivery

    def acked(self, r: int) -> None:
        i = self.row_msg[r]
        if self.pending[i] >= 0:
            self.in_flight -= 1
        self.pending[i] = ACKED
        if self._capped:
            self._uncap()

    def unack(self, rows: list[int]) -> None:
        """A broker kill lost these deliveries' acks (its store had not written them yet): each
        message is pending again and comes back when its ack timeout, counted from its
        delivery, has passed (at once after the restart if it already has)."""
        pending, row_msg = self.pending, self.row_msg
        back: list[tuple[float, int]] = []
        for r in rows:
            i = row_msg[r]
            if pending[i] != ACKED:
                continue
            pending[i] = r
            self.in_flight += 1
            if self._ack_timeout is not None:
                back.append((self.row_t_delivered[r] + self._ack_timeout, r))
        if back:
            self._deadlines = deque(sorted([*self._deadlines, *back]))

    def _uncap(self) -> None:
        assert self._cap is not None
        if self.in_flight < self._cap:
            self._capped = False
            for lane in range(len(self.lane_owners)):
                self.offer(lane)

    def _watch(self, r: int) -> None:
        # Deadlines arrive in delivery order, so one timer walks a FIFO instead of one timer
        # event per delivery; acked entries are skipped when the timer reaches them.
        assert self._ack_timeout is not None
        self._deadlines.append((self.env.now + self._ack_timeout, r))
        if not self._timer_set:
            self._timer_set = True
            Call(self.env, self._ack_timeout, self._on_timer, self._timer_epoch)

    def stop_ack_timer(self) -> None:
        """The broker process died: its ack timer with it (pending deadlines stay recorded)."""
        self._timer_epoch += 1
        self._timer_set = False

    def restart_ack_timer(self) -> None:
        """The broker is back: deadlines already past redeliver at once, the rest in time."""
        if self._deadlines and not self._timer_set:
            self._timer_set = True
            Call(self.env, 0.0, self._on_timer, self._timer_epoch)

    def run_ack_timer(self) -> None:
        """Run the ack timer now (it came due while the broker was paused)."""
        self._on_timer(self._timer_epoch)

    def _on_timer(self, epoch: int) -> None:
        if epoch != self._timer_epoch:
            return  # armed before a broker kill
        if not self.process.timer_due():
            return  # a paused broker runs it on resume
        deadlines, pending, row_msg = self._deadlines, self.pending, self.row_msg
        now = self.env.now
        while deadlines:
            deadline, r = deadlines[0]
            if pending[row_msg[r]] != r:
                deadlines.popleft()  # acked, or superseded by a later delivery
                continue
            if deadline > now + 1e-12:
                Call(self.env, deadline - now, self._on_timer, epoch)
                return
            deadlines.popleft()
            self.expire(r)
        self._timer_set = False

    def expire(self, r: int) -> None:
        i = self.row_msg[r]
        self.pending[i] = NO_ROW
        self.in_flight -= 1
        if self.max_deliveries and self.deliveries_of[i] >= self.max_deliveries:
            self.counts["dead_lettered"] += 1
            if self._capped:
                self._uncap()
            return
        self.requeue(i)
        if self._capped:
            self._uncap()

    # ------------------------------------------------------------------ trace

    def _delivery_columns(self) -> tuple[np.ndarray, ...]:
        """Delivery rows as NumPy columns, keeping only attempts that reached the consumer."""
        rows = self.rows

        def column(values: list[Any], dtype: str) -> np.ndarray:
            # fromiter reads the first ``rows`` entries without copying the list first
            return np.fromiter(values, dtype=dtype, count=rows)

        t_delivered = column(self.row_t_delivered, "float64")
        columns = (
            column(self.row_msg, "int64"),
            column(self.row_consumer, "int32"),
            column(self.row_number, "int32"),
            t_delivered,
            column(self.row_t_done, "float64"),
        )
        received = ~np.isnan(t_delivered)
        if received.all():
            return columns
        return tuple(values[received] for values in columns)

    def forget(self) -> None:
        """Drop per-message run state once recorded, so building the trace needs less memory."""
        self.row_msg, self.row_consumer, self.row_number = [], [], []
        self.row_t_delivered, self.row_t_done = [], []
        self.pending, self.deliveries_of, self.t_stored = [], [], []
        self.t_intended, self.producer_of = [], []
        self._deadlines.clear()

    def _send_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``t_sent``, ``t_acked``, outcome codes and attempts, one entry per message."""
        n = self.n
        t_sent = self.t_sent if self.sync else self.plan.t_intended.copy()
        if self.late:
            # Held sends went late, in order: from the first due after the run ended, none went.
            index = np.fromiter(self.late, dtype="int64", count=len(self.late))
            at = np.fromiter(self.late.values(), dtype="float64", count=len(self.late))
            t_sent[index] = at
            after = index[at > self.end]
            if len(after):
                t_sent[after.min() :] = math.nan
        sent = ~np.isnan(t_sent)
        self.counts["unsent"] = int(n - sent.sum())
        acked, failed, unknown = (int(code) for code in OutcomeCode)
        if self.publish_acks:
            t_acked = np.fromiter(self.t_acked, dtype="float64", count=n)
            t_acked[t_acked > self.end] = math.nan  # the ack was still on its way
            codes = np.where(np.isnan(t_acked), unknown, acked)
        else:
            t_acked = np.full(n, math.nan)
            codes = np.full(n, acked)
        codes = np.where(sent, codes, failed)
        return t_sent, t_acked, codes, sent.astype("int16")

    def trace(self, faults: list[FaultWindow] | None = None) -> Trace:
        """The run as the lab's flat tables (message ids are built once, here).

        ``faults`` are the fault windows the timeline's ``faults`` column marks.
        """
        msg, consumer, number, t_delivered, t_done = self._delivery_columns()
        if self.faults is not None:
            msg = self.faults.publisher.messages(msg)
        first = np.full(self.n, np.inf)
        np.minimum.at(first, msg, t_delivered)
        first[np.isinf(first)] = math.nan
        self.forget()
        if self.faults is not None:
            t_sent, t_acked, codes, attempts = self.faults.publisher.columns()
        else:
            t_sent, t_acked, codes, attempts = self._send_columns()
        plan = self.plan
        # Categorical codes, not strings: half a million outcome strings cost a tenth of a second.
        outcome = pd.Categorical.from_codes(codes, categories=OUTCOMES)
        sends = make_sends(
            plan.producer,
            plan.seq,
            plan.key,
            plan.size,
            plan.t_intended,
            t_sent,
            t_acked,
            outcome,
            attempts,
        )
        # Take message ids from the sends column without making a Python string per row.
        deliveries = make_deliveries(
            sends["msg_id"].array.take(msg), consumer, number, t_delivered, t_done
        )
        return Trace(
            sends=sends,
            deliveries=deliveries,
            timeline=build_timeline(sends, deliveries, faults or [], first=np.round(first, 6)),
        )
