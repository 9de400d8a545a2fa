"""The simulation engine: producers, network, broker servers and consumers around a broker model.

Everything happens in one SimPy environment. Each step of a message (send, network hop, broker
service, delivery, processing, ack) is one scheduled event whose callback performs the next step.
There is no SimPy process, Store or Resource per message: a message is an integer index into
preallocated columns, and callbacks move that index along. This keeps a run a real discrete-event
simulation (SimPy's clock, heap and deterministic event order) at a few microseconds per message.

A broker model (``sim/models``) subclasses :class:`Simulation` and fills three hooks:
``stored(i)`` (a publish reached the broker's storage), ``take(lane)`` (next message a consumer
of that lane may receive) and ``requeue(i)`` (an unacked delivery timed out).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import simpy
from simpy.events import NORMAL, Event

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
from brokerlab.sim.presets import Preset
from brokerlab.sim.sampling import is_zero, samples

#: ``pending[i]`` when message ``i`` has no unacked delivery
NO_ROW = -1
#: ``pending[i]`` once any delivery of message ``i`` was acked (late acks count too)
ACKED = -2

Progress = Callable[[int, int], None]


class Call(Event):
    """A timeout that calls ``fn(arg)`` when it fires: one heap entry, no process, no closure."""

    def __init__(self, env: simpy.Environment, delay: float, fn: Callable[[Any], None], arg: Any):
        # Inlined like simpy's own Timeout.__init__, for speed.
        self.env = env
        self.callbacks = [_fire]
        self._value = None
        self._ok = True
        self.fn = fn
        self.arg = arg
        env.schedule(self, NORMAL, delay)


def _fire(event: Call) -> None:
    event.fn(event.arg)


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
    ):
        self.env = simpy.Environment()
        self.scenario = scenario
        self.preset = preset
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
        self._net = None if is_zero(net) else samples(net, rngs["network"])
        self._publish_time = None if is_zero(publish) else samples(publish, rngs["service"])
        self._deliver_time = None if is_zero(deliver) else samples(deliver, rngs["service"])
        self._processing = samples(consumers.processing, rngs["processing"])

        # Broker servers: parallel, FIFO, shared by publish and delivery work.
        self._servers = broker.servers
        self._busy_servers = 0
        self._server_queue: deque[tuple[float, Callable[[int], None], int]] = deque()

        # Links: producer p up/down, consumer c down/up; value = when the link is next free.
        producers, count = scenario.producers.count, consumers.count
        self._producer_down = producers
        self._consumer_down = 2 * producers
        self._consumer_up = 2 * producers + count
        self._link_free = [0.0] * (2 * producers + 2 * count)

        # Sends, recorded by message index.
        self._sync = scenario.producers.confirm == "sync" and self.publish_acks
        self.t_sent = np.full(n, math.nan)
        self.t_acked = np.full(n, math.nan)
        self.t_stored: list[float] = [0.0] * n if broker.retention else []

        # Consumer acks, pending entries and redelivery.
        self.ack_mode = consumers.ack
        self._track = self.consumer_acks and self.ack_mode != "none"
        self._ack_after = self._track and self.ack_mode == "after"
        self._ack_before = self._track and self.ack_mode == "before"
        self._ack_timeout = broker.ack_timeout if self._track and preset.redelivery else None
        self.max_deliveries = broker.max_deliveries
        self.pending: list[int] = [NO_ROW] * n if self._track else []
        self.deliveries_of = [0] * n
        self.in_flight = 0
        self._cap: int | None = (
            broker.max_ack_pending if self._track and preset.max_ack_pending else None
        )
        self._capped = False
        self._deadlines: deque[tuple[float, int]] = deque()
        self._timer_set = False
        #: a broker kill stops the ack timer; timer events of an older epoch are stale
        self._timer_epoch = 0

        # Consumers: credit (free prefetch slots at the broker), local buffer, busy flag.
        self.free = [consumers.prefetch] * count
        self.busy = [False] * count
        self.buffer: list[deque[int]] = [deque() for _ in range(count)]
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
        self.progress = progress
        self._report_every = max(1, n // 100)
        self._report_at = self._report_every if progress else -1

        # Skip steps that are always zero by binding straight to the step after them: a publish
        # with no network delay and no service time is stored in the same callback as its send.
        if self._publish_time is None:
            self._arrive = self._store  # type: ignore[method-assign]
        if self._net is None:
            self._publish = self._arrive  # type: ignore[method-assign]
            self._to_consumer = self._received  # type: ignore[method-assign]

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
        if self._track:
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
        """Play the whole load plan, then drain until ``end``."""
        if self.n:
            if self._sync:
                self._start_sync_producers()
            else:
                Call(self.env, self.t_intended[0], self._send_async, 0)
        self.env.run(until=self.end)
        if self.progress:
            self.progress(self.n, self.n)

    @property
    def events(self) -> int:
        """Events scheduled in the run (SimPy numbers every event it schedules)."""
        counter = getattr(self.env, "_eid", None)
        return next(counter) if counter is not None else -1

    # ------------------------------------------------------------------ producers

    def _send_async(self, i: int) -> None:
        # Open loop: the producer never falls behind, so the next send is already known.
        following = i + 1
        if following < self.n:
            delay = self.t_intended[following] - self.env.now
            Call(self.env, delay if delay > 0 else 0.0, self._send_async, following)
        if i == self._report_at:
            self._report(i)
        self._publish(i)

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
        if self._publish_time is None:
            self._store(i)
        else:
            self._serve(next(self._publish_time), self._store, i)

    def _store(self, i: int) -> None:
        if self.publish_acks:
            now = self.env.now
            t_ack = (
                now
                if self._net is None
                else self._link_time(self._producer_down + self.producer_of[i])
            )
            self.t_acked[i] = t_ack
            if self._sync:
                following = self._following[i]
                if following >= 0:
                    t_next = max(self.t_intended[following], t_ack)
                    Call(self.env, t_next - now, self._send_sync, following)
        self.stored(i)

    # ------------------------------------------------------------------ network and servers

    def _link_time(self, link: int) -> float:
        """Arrival time of something sent now over ``link`` (FIFO: never before the previous)."""
        assert self._net is not None
        t = self.env.now + next(self._net)
        if t < self._link_free[link]:
            t = self._link_free[link]
        self._link_free[link] = t
        return t

    def _hop(self, link: int, fn: Callable[[int], None], arg: int) -> None:
        Call(self.env, self._link_time(link) - self.env.now, fn, arg)

    def _to_broker(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        if self._net is None:
            fn(r)
        else:
            self._hop(self._consumer_up + consumer, fn, r)

    def _serve(self, duration: float, fn: Callable[[int], None], arg: int) -> None:
        if self._busy_servers < self._servers:
            self._busy_servers += 1
            Call(self.env, duration, self._served, (fn, arg))
        else:
            self._server_queue.append((duration, fn, arg))

    def _served(self, job: tuple[Callable[[int], None], int]) -> None:
        if self._server_queue:
            duration, fn, arg = self._server_queue.popleft()
            Call(self.env, duration, self._served, (fn, arg))
        else:
            self._busy_servers -= 1
        job[0](job[1])

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
        if r == len(self.row_msg):
            self._grow_rows()
        self.rows = r + 1
        number = self.deliveries_of[i] + 1
        self.deliveries_of[i] = number
        self.row_msg[r] = i
        self.row_consumer[r] = c
        self.row_number[r] = number
        if self._track:
            if self.pending[i] < 0:
                self.in_flight += 1
            self.pending[i] = r
            if self._ack_timeout is not None:
                self._watch(r)
        if self._deliver_time is None:
            self._to_consumer(r)
        else:
            self._serve(next(self._deliver_time), self._to_consumer, r)

    def _grow_rows(self) -> None:
        more = max(1024, len(self.row_msg) // 2)
        self.row_msg += [0] * more
        self.row_consumer += [0] * more
        self.row_number += [0] * more
        self.row_t_delivered += [math.nan] * more
        self.row_t_done += [math.nan] * more

    def _to_consumer(self, r: int) -> None:
        if self._net is None:
            self._received(r)
        else:
            self._hop(self._consumer_down + self.row_consumer[r], self._received, r)

    # ------------------------------------------------------------------ consumers

    def _received(self, r: int) -> None:
        c = self.row_consumer[r]
        buffer = self.buffer[c]
        if self.buffer_limit is not None and len(buffer) >= self.buffer_limit:
            # Slow consumer: the client library drops it; the row keeps t_delivered NaN.
            self.counts["slow_consumer_drops"] += 1
            return
        self.row_t_delivered[r] = self.env.now
        if self._ack_before:
            self._to_broker(c, self._acked, r)
        if self.busy[c]:
            buffer.append(r)
        else:
            self.busy[c] = True
            self._start(c, r)

    def _start(self, c: int, r: int) -> None:
        """Consumer ``c`` starts processing delivery row ``r`` (faults change how long it takes)."""
        Call(self.env, next(self._processing), self._processed, r)

    def _processed(self, r: int) -> None:
        self.row_t_done[r] = self.env.now
        c = self.row_consumer[r]
        buffer = self.buffer[c]
        if buffer:
            self._start(c, buffer.popleft())
        else:
            self.busy[c] = False
        if self.consumer_acks:
            # The ack (mode "after") and the next fetch travel together to the broker.
            self._to_broker(c, self._released, r)

    def _released(self, r: int) -> None:
        if self._ack_after:
            self._acked(r)
        c = self.row_consumer[r]
        self.free[c] += 1
        self.credit(c)

    # ------------------------------------------------------------------ acks and redelivery

    def _acked(self, r: int) -> None:
        i = self.row_msg[r]
        if self.pending[i] >= 0:
            self.in_flight -= 1
        self.pending[i] = ACKED
        if self._capped:
            self._uncap()

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

    def _on_timer(self, epoch: int) -> None:
        if epoch != self._timer_epoch:
            return  # armed before a broker kill
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
            self._expire(r)
        self._timer_set = False

    def _expire(self, r: int) -> None:
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
        t_delivered = np.array(self.row_t_delivered[:rows], dtype="float64")
        received = ~np.isnan(t_delivered)
        return (
            np.array(self.row_msg[:rows], dtype="int64")[received],
            np.array(self.row_consumer[:rows], dtype="int32")[received],
            np.array(self.row_number[:rows], dtype="int32")[received],
            t_delivered[received],
            np.array(self.row_t_done[:rows], dtype="float64")[received],
        )

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
        t_sent = self.t_sent if self._sync else self.plan.t_intended.copy()
        sent = ~np.isnan(t_sent)
        self.counts["unsent"] = int(n - sent.sum())
        acked, failed, unknown = (int(code) for code in OutcomeCode)
        if self.publish_acks:
            t_acked = self.t_acked.copy()
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
        self.forget()
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
            timeline=build_timeline(sends, deliveries, faults or []),
        )
