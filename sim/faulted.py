"""Faults played inside the engine: broker kill and pause, network faults, client crashes.

A run with faults uses a class made of :class:`FaultMixin` and the broker's model class
(:func:`faulted`), so a run without faults never pays for any of it: the fault-free engine path
has no fault checks at all. The mixin replaces the engine's message path with one that knows
about connections, publish attempts and a broker that can stop:

- **Connections.** Every client (producer ``p``, consumer ``c``) has one connection to the broker
  with an epoch. Whatever travels on a connection (a publish, an ack, a delivery) carries the
  epoch it was sent with and is dropped on arrival if the connection was dropped since (TCP
  loses what was in flight when a connection dies). Clients reconnect after
  :data:`~sim.faults.RECONNECT_DELAY` (once the broker is back).
- **Publish attempts.** A producer waits for each attempt's ack up to ``publish_timeout``; an
  attempt that times out or whose connection drops has an unknown outcome (it may have been
  stored), one refused because the broker is down has failed (nothing was sent). Both follow the
  retry policy (``retry_backoff`` between attempts, ``max_attempts``). A retry that reaches the
  broker again is a second stored copy with its own broker index (delivery_no starts at 1),
  unless the broker honours ``dedup_window`` and the id is the same (``same-id``; ``new-id``
  retries carry a new dedup id, as the harness does). The trace keeps one sends row per planned
  message, so copies show up as duplicate deliveries of its msg_id, as in the harness.
- **The broker.** Work reaching the broker (arrivals, service completions, the ack timer) goes
  through one gate: done at once when up, held in arrival order while paused (TCP queues it;
  it is served on resume), dropped while down (the process is gone).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from brokerlab.core.load import LoadPlan, streams
from brokerlab.core.scenario import Scenario
from brokerlab.core.vocabulary import OutcomeCode
from brokerlab.sim.engine import Call, Progress, Simulation
from brokerlab.sim.faults import RECONNECT_DELAY, Entry, kept_on_kill, resolve_entries
from brokerlab.sim.presets import Preset

UP, PAUSED, DOWN = 0, 1, 2
ACKED, FAILED, UNKNOWN = (int(code) for code in OutcomeCode)

#: (callback, argument, client, connection epoch) of something travelling on a connection
Hop = tuple[Callable[[Any], None], Any, int, int]


class FaultMixin(Simulation):
    """Plays the scenario's fault timeline; combine with a model class through :func:`faulted`."""

    def __init__(
        self,
        scenario: Scenario,
        preset: Preset,
        plan: LoadPlan,
        seed: int,
        progress: Progress | None = None,
    ):
        super().__init__(scenario, preset, plan, seed, progress)
        # The engine binds zero-cost shortcuts on the instance; faults need every step.
        for shortcut in ("_arrive", "_publish", "_to_consumer"):
            self.__dict__.pop(shortcut, None)
        self.entries, _ = resolve_entries(scenario)
        self._rng = streams(seed)["faults"]
        n = self.n
        self.producers = producers = scenario.producers.count
        clients = producers + scenario.consumers.count
        self._prefetch = scenario.consumers.prefetch

        # The broker process.
        self.broker_state = UP
        self._broker_epoch = 0  # bumped by a kill: service completions of before are void
        self._broker_started = 0.0  # periodic syncs count from the (re)start
        self._held: list[tuple[Callable[[Any], None], Any]] = []  # work waiting out a pause
        self._timer_held = False  # the ack timer came due during a pause
        self._kept = kept_on_kill(preset)

        # Clients: producers 0..P-1, then consumers. Epoch = which connection is current.
        self._connected = [True] * clients
        self._crashed = [False] * clients
        self._epoch = [0] * clients
        self._life = [0] * scenario.consumers.count  # a crash voids processing in progress
        self._effects: list[list[Entry]] = [[] for _ in range(clients)]  # hop faults
        self._slow: list[list[Entry]] = [[] for _ in range(scenario.consumers.count)]
        self._tx_free = [0.0] * len(self._link_free)  # bandwidth: when a link's sender is free
        # NATS core: a partitioned subscriber's messages are dropped (the server cannot write
        # to it and drops past its limits), not delivered late as on the acked brokers.
        self._drop_when_cut = self.model == "pubsub"
        self._requeue_on_disconnect = self._track and not preset.redelivery

        # Publish attempts, per message.
        settings = scenario.producers
        self._retry = settings.retry != "none"
        self._same_id = settings.retry == "same-id"
        self._max_attempts = settings.max_attempts
        self._backoff = settings.retry_backoff
        self._timeout = settings.publish_timeout
        self.attempts = [0] * n
        self.live = [0] * n  # the attempt whose answer the producer waits for; 0 = none
        self.uncertain = [False] * n  # some attempt ended without an answer
        self.sent_ok = [False] * n  # fire-and-forget: a publish went out on a live connection
        self.t_sent = np.full(n, math.nan)
        self._waiting: list[dict[int, int]] = [{} for _ in range(producers)]  # i -> attempt
        self._parked: list[list[int]] = [[] for _ in range(producers)]
        self._publish_deadlines: deque[tuple[float, int, int]] = deque()
        self._publish_timer = False
        self._size: list[int] = plan.size.tolist()

        # Stored copies: broker index -> message, store time (for power loss), dedup.
        self._stored_once = [False] * n
        self._copy_of: list[int] = []  # broker index n + k -> message
        self._t_store = [math.nan] * n
        broker = preset.broker
        # As the harness does: message ids go out with same-id retries or an explicit window, and
        # a window of 0 leaves the broker's own default (JetStream: 2 minutes).
        self._window = broker.dedup_window or preset.dedup_default_window
        ids_sent = broker.dedup_window > 0 or self._same_id
        self._dedup = preset.dedup and ids_sent and self._window > 0
        self._dedup_at = [math.nan] * n if self._dedup else []

        self.counts.update(deduplicated=0, retried=0, refused=0, timed_out=0)

    # ------------------------------------------------------------------ timeline

    def run(self) -> None:
        consumers_from = self.producers
        for entry in self.entries:
            action = entry.fault.action
            if action in ("partition", "latency", "bandwidth"):
                # Hop faults need no event: a hop checks them when it is sent.
                for p in entry.producers:
                    self._effects[p].append(entry)
                for c in entry.consumers:
                    self._effects[consumers_from + c].append(entry)
            elif action == "slow-consumer":
                for c in entry.consumers:
                    self._slow[c].append(entry)
            else:
                begin, end = EVENTS[action]
                Call(self.env, entry.start, getattr(self, begin), entry)
                if end is not None:
                    Call(self.env, entry.end, getattr(self, end), entry)
        super().run()

    # ------------------------------------------------------------------ network

    def _send_hop(
        self, client: int, link: int, size: int, fn: Callable[[Any], None], arg: Any, up: bool
    ) -> None:
        """Send ``arg`` on ``client``'s connection over ``link``; ``fn(arg)`` runs on arrival."""
        if not self._connected[client]:
            return  # no connection to send on
        env = self.env
        now = env.now
        delay = next(self._net) if self._net is not None else 0.0
        t = now + delay
        for entry in self._effects[client]:
            if not entry.start <= now < entry.end:
                continue
            fault = entry.fault
            if fault.action == "latency":
                assert fault.delay is not None
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
                    return
                t = max(t, entry.end + delay)
        if t < self._link_free[link]:
            t = self._link_free[link]  # TCP keeps order
        self._link_free[link] = t
        arrive = self._at_broker_hop if up else self._at_client_hop
        Call(env, t - now, arrive, (fn, arg, client, self._epoch[client]))

    def _at_client_hop(self, hop: Hop) -> None:
        fn, arg, client, epoch = hop
        if epoch == self._epoch[client]:  # else it was in flight when the connection dropped
            fn(arg)

    def _at_broker_hop(self, hop: Hop) -> None:
        fn, arg, client, epoch = hop
        if epoch != self._epoch[client]:
            return
        if self.broker_state == PAUSED:
            self._held.append((self._at_broker_hop, hop))
        elif self.broker_state == UP:
            fn(arg)

    def _at_broker(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Broker work: now if up, after the pause if paused, never if down."""
        if self.broker_state == UP:
            fn(arg)
        elif self.broker_state == PAUSED:
            self._held.append((fn, arg))

    def _serve(self, duration: float, fn: Callable[[Any], None], arg: Any) -> None:
        if self._busy_servers < self._servers:
            self._busy_servers += 1
            Call(self.env, duration, self._served, (fn, arg, self._broker_epoch))
        else:
            self._server_queue.append((duration, fn, arg))

    def _served(self, job: Any) -> None:
        fn, arg, epoch = job
        if epoch != self._broker_epoch:
            return  # the broker was killed mid-operation
        if self.broker_state == PAUSED:
            self._held.append((self._served, job))  # a stopped process finishes after resume
            return
        if self._server_queue:
            duration, next_fn, next_arg = self._server_queue.popleft()
            Call(self.env, duration, self._served, (next_fn, next_arg, epoch))
        else:
            self._busy_servers -= 1
        fn(arg)

    def _on_timer(self, epoch: int) -> None:
        if self.broker_state == PAUSED and epoch == self._timer_epoch:
            self._timer_held = True  # redelivery waits out the pause (see _broker_resume)
            return
        super()._on_timer(epoch)

    # ------------------------------------------------------------------ producers

    def _publish(self, i: int) -> None:
        # First attempt of message i, when the plan (or a sync producer's last ack) says.
        p = self.producer_of[i]
        if not self._connected[p] and (self._crashed[p] or self.broker_state != DOWN):
            # A crashed producer sends on restart; a reconnecting one once connected. Both keep
            # the message's t_intended, so publish_delay shows the gap.
            self._parked[p].append(i)
            return
        self._attempt(i)

    def _attempt(self, i: int) -> None:
        p = self.producer_of[i]
        a = self.attempts[i] + 1
        self.attempts[i] = a
        now = self.env.now
        if a == 1:
            self.t_sent[i] = now
        else:
            self.counts["retried"] += 1
        if not self._connected[p]:
            # Only while the broker is down: connection refused, so nothing was sent.
            self.counts["refused"] += 1
            self._attempt_failed(i, uncertain=False)
            return
        if self.publish_acks:
            self.live[i] = a
            self._waiting[p][i] = a
            self._publish_deadlines.append((now + self._timeout, i, a))
            if not self._publish_timer:
                self._publish_timer = True
                Call(self.env, self._timeout, self._on_publish_timer, 0)
        else:
            self.sent_ok[i] = True  # fire-and-forget: the call succeeded, whatever follows
        self._send_hop(p, p, self._size[i], self._publish_arrived, (i, a), True)

    def _publish_arrived(self, token: tuple[int, int]) -> None:
        if self._publish_time is None:
            self._store_copy(token)
        else:
            self._serve(next(self._publish_time), self._store_copy, token)

    def _store_copy(self, token: tuple[int, int]) -> None:
        """The broker writes an attempt: dedup, then a new copy unless it is the first."""
        i, a = token
        now = self.env.now
        if self._dedup and (a == 1 or self._same_id):
            seen = self._dedup_at[i]
            if seen == seen and now - seen <= self._window:  # seen is not NaN
                self.counts["deduplicated"] += 1  # acked, not stored again (PubAck duplicate)
                self._send_ack(i, a)
                return
            self._dedup_at[i] = now
        if self._stored_once[i]:
            b = self.add_copy(i)
            self._copy_of.append(i)
            self._t_store.append(now)
        else:
            self._stored_once[i] = True
            b = i
            self._t_store[i] = now
        if self.publish_acks:
            self._send_ack(i, a)
        self.stored(b)

    def _send_ack(self, i: int, a: int) -> None:
        p = self.producer_of[i]
        self._send_hop(p, self._producer_down + p, 0, self._ack_arrived, (i, a), False)

    def _ack_arrived(self, token: tuple[int, int]) -> None:
        i, a = token
        if self.live[i] != a:
            return  # the producer gave up on this attempt (timeout); a late reply is ignored
        self.live[i] = 0
        del self._waiting[self.producer_of[i]][i]
        self.t_acked[i] = self.env.now
        self._settled(i)

    def _on_publish_timer(self, _: int) -> None:
        # One timer walks the deadlines in send order (all have the same timeout).
        deadlines, live = self._publish_deadlines, self.live
        now = self.env.now
        while deadlines:
            deadline, i, a = deadlines[0]
            if live[i] != a:
                deadlines.popleft()
                continue
            if deadline > now + 1e-12:
                Call(self.env, deadline - now, self._on_publish_timer, 0)
                return
            deadlines.popleft()
            live[i] = 0
            del self._waiting[self.producer_of[i]][i]
            self.counts["timed_out"] += 1
            self._attempt_failed(i, uncertain=True)
        self._publish_timer = False

    def _attempt_failed(self, i: int, uncertain: bool) -> None:
        if uncertain:
            self.uncertain[i] = True
        if self._retry and self.attempts[i] < self._max_attempts:
            Call(self.env, self._backoff, self._retry_publish, i)
        else:
            self._settled(i)

    def _retry_publish(self, i: int) -> None:
        p = self.producer_of[i]
        if self._crashed[p]:
            self._settled(i)  # the retry died with the producer
        elif not self._connected[p] and self.broker_state != DOWN:
            self._parked[p].append(i)
        else:
            self._attempt(i)

    def _settled(self, i: int) -> None:
        """Message ``i`` is done (acked or given up): a sync producer sends its next one."""
        if self._sync:
            following = self._following[i]
            if following >= 0:
                now = self.env.now
                t_next = max(self.t_intended[following], now)
                Call(self.env, t_next - now, self._send_sync, following)

    def _drop_producer(self, p: int) -> None:
        """The connection dropped: every attempt waiting for an ack is unknown now."""
        self._connected[p] = False
        self._epoch[p] += 1
        waiting, self._waiting[p] = self._waiting[p], {}
        for i in waiting:
            self.live[i] = 0
            self._attempt_failed(i, uncertain=True)

    # ------------------------------------------------------------------ consumers

    def _to_consumer(self, r: int) -> None:
        c = self.row_consumer[r]
        size = self._size[self._message(self.row_msg[r])]
        self._send_hop(self.producers + c, self._consumer_down + c, size, self._received, r, False)

    def _to_broker(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        link = self._consumer_up + consumer
        self._send_hop(self.producers + consumer, link, 0, fn, r, True)

    def _processing_time(self, c: int) -> float:
        duration = next(self._processing)
        now = self.env.now
        for entry in self._slow[c]:
            if entry.start <= now < entry.end:
                duration *= entry.fault.factor
        return duration

    def _start(self, c: int, r: int) -> None:
        # The job carries the consumer's life, so a crash mid-message leaves it unfinished.
        Call(self.env, self._processing_time(c), self._processed, (r, self._life[c]))

    def _processed(self, job: Any) -> None:
        r, life = job
        c = self.row_consumer[r]
        if life != self._life[c]:
            return  # the consumer crashed while processing: t_done stays NaN
        self.row_t_done[r] = self.env.now
        buffer = self.buffer[c]
        if buffer:
            self._start(c, buffer.popleft())
        else:
            self.busy[c] = False
        if self.consumer_acks:
            self._to_broker(c, self._released, r)

    def _drop_consumer(self, c: int) -> None:
        """The connection dropped: the broker stops sending; what was in flight is lost."""
        self._connected[self.producers + c] = False
        self._epoch[self.producers + c] += 1
        self.free[c] = 0
        members: list[int] | None = getattr(self, "members", None)
        if members is not None and c in members:
            members.remove(c)
        if self._requeue_on_disconnect:
            self._at_broker(self._give_back, c)

    def _give_back(self, c: int | None) -> None:
        """Brokers without an ack timer (Kafka rebalance, RabbitMQ channel close) make a lost
        consumer's unacked deliveries deliverable again at once."""
        pending, row_msg, row_consumer = self.pending, self.row_msg, self.row_consumer
        rows = sorted(r for r in pending if r >= 0 and (c is None or row_consumer[r] == c))
        for r in rows:
            if pending[row_msg[r]] == r:
                self._expire(r)

    def _consumer_joined(self, c: int) -> None:
        # A new connection gets fresh credit, minus what the consumer still holds from the old
        # one (it processes and acks those on the new connection).
        if not self._connected[self.producers + c]:
            return
        held = len(self.buffer[c]) + self.busy[c]
        self.free[c] = max(self._prefetch - held, 0)
        members: list[int] | None = getattr(self, "members", None)
        if members is not None and c not in members:
            members.append(c)
        self.credit(c)

    # ------------------------------------------------------------------ clients up and down

    def _client_up(self, client: int) -> None:
        """A client (re)connects, if it is alive and the broker is there."""
        if self.broker_state == DOWN or self._crashed[client] or self._connected[client]:
            return
        self._connected[client] = True
        if client < self.producers:
            parked, self._parked[client] = self._parked[client], []
            for i in parked:
                self._attempt(i)
        else:
            self._at_broker(self._consumer_joined, client - self.producers)

    def _reconnect(self, entry: Entry) -> None:
        for p in entry.producers:
            self._client_up(p)
        for c in entry.consumers:
            self._client_up(self.producers + c)

    def _reconnect_all(self, _: Any) -> None:
        for client in range(len(self._connected)):
            self._client_up(client)

    def _connection_reset(self, entry: Entry) -> None:
        for p in entry.producers:
            if self._connected[p]:
                self._drop_producer(p)
        for c in entry.consumers:
            if self._connected[self.producers + c]:
                self._drop_consumer(c)
        Call(self.env, RECONNECT_DELAY, self._reconnect, entry)

    def _consumer_crash(self, entry: Entry) -> None:
        # The process dies mid-message: nothing it holds is finished or acked.
        for c in entry.consumers:
            self._drop_consumer(c)
            self._crashed[self.producers + c] = True
            self._life[c] += 1
            self.busy[c] = False
            self.buffer[c].clear()

    def _producer_crash(self, entry: Entry) -> None:
        for p in entry.producers:
            self._crashed[p] = True
            self._connected[p] = False
            self._epoch[p] += 1
            waiting, self._waiting[p] = self._waiting[p], {}
            for i in waiting:  # never learns the answer: unknown, and no retry
                self.live[i] = 0
                self.uncertain[i] = True
                self._settled(i)
            parked, self._parked[p] = self._parked[p], []
            for i in parked:
                if self.attempts[i]:
                    self._settled(i)  # a retry waiting to reconnect dies with the process
                else:
                    self._parked[p].append(i)

    def _client_restart(self, entry: Entry) -> None:
        for p in entry.producers:
            self._crashed[p] = False
        for c in entry.consumers:
            self._crashed[self.producers + c] = False
        self._reconnect(entry)

    # ------------------------------------------------------------------ the broker process

    def _broker_kill(self, entry: Entry) -> None:
        self.broker_state = DOWN
        self._broker_epoch += 1
        self._timer_epoch += 1  # the ack timer dies with the process
        self._timer_set = False
        self._timer_held = False
        self._busy_servers = 0
        self._server_queue.clear()
        self._held.clear()
        for p in range(self.producers):
            if self._connected[p]:
                self._drop_producer(p)
        for c in range(len(self.free)):
            if self._connected[self.producers + c]:
                self._drop_consumer(c)
        self._lose_unsaved(entry.fault.power_loss)

    def _lose_unsaved(self, power_loss: bool) -> None:
        """What the kill takes with it, by the preset's durability (see sim.faults.kept_on_kill).

        ``memory``: every message and the group state (cursor, pending entries) are gone.
        ``always``: nothing acknowledged is lost. A sync interval: a process kill loses nothing
        (the OS page cache survives); with power loss the writes since the last sync are lost.
        The group state is kept as it was at the kill (its recent changes are not rolled back).
        """
        kept = self._kept
        if kept == "always":
            return
        if kept == "memory":
            self.lose_all()
            if self._dedup:
                self._dedup_at = [math.nan] * self.n  # the dedup table is rebuilt from storage
            return
        if not power_loss:
            return
        assert isinstance(kept, float)
        started = self._broker_started
        synced = started + math.floor((self.env.now - started) / kept) * kept
        t_store = self._t_store
        self.lose_stored(lambda b: t_store[b] > synced)
        if self._dedup:
            self._dedup_at = [math.nan if t > synced else t for t in self._dedup_at]

    def _broker_restart(self, entry: Entry) -> None:
        if self.broker_state != DOWN:
            return
        self.broker_state = UP
        self._broker_started = self.env.now
        if self._requeue_on_disconnect:
            self._give_back(None)
        if self._deadlines and not self._timer_set:
            # Surviving pending entries keep their delivery times (Redis PEL idle times,
            # JetStream's stored state): those past ack_timeout are redelivered at once.
            self._timer_set = True
            Call(self.env, 0.0, self._on_timer, self._timer_epoch)
        Call(self.env, RECONNECT_DELAY, self._reconnect_all, None)

    def _broker_pause(self, entry: Entry) -> None:
        if self.broker_state == UP:
            self.broker_state = PAUSED

    def _broker_resume(self, entry: Entry) -> None:
        if self.broker_state != PAUSED:
            return
        self.broker_state = UP
        held, self._held = self._held, []
        for fn, arg in held:  # in arrival order, as TCP delivers it
            fn(arg)
        # The ack timer last: acks that reached the broker's socket during the pause count as
        # in time, so only deliveries still unacked after the backlog are redelivered.
        if self._timer_held:
            self._timer_held = False
            self._on_timer(self._timer_epoch)

    # ------------------------------------------------------------------ trace

    def _message(self, b: int) -> int:
        return b if b < self.n else self._copy_of[b - self.n]

    def _delivery_columns(self) -> tuple[np.ndarray, ...]:
        msg, *rest = super()._delivery_columns()
        if self._copy_of:
            copy_of = np.asarray(self._copy_of, dtype="int64")
            copies = msg >= self.n
            msg[copies] = copy_of[msg[copies] - self.n]
        return (msg, *rest)

    def _send_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        attempts = np.asarray(self.attempts, dtype="int16")
        self.counts["unsent"] = int(np.count_nonzero(attempts == 0))
        t_acked = self.t_acked.copy()
        if self.publish_acks:
            acked = ~np.isnan(t_acked)
            unknown = np.asarray(self.uncertain) | (np.asarray(self.live) > 0)
        else:
            acked = np.asarray(self.sent_ok)
            unknown = np.zeros(self.n, dtype=bool)
        codes = np.where(acked, ACKED, np.where(unknown, UNKNOWN, FAILED))
        t_sent = self.t_sent.copy()
        t_sent[attempts == 0] = math.nan  # parked by a crash that lasted to the end
        return t_sent, t_acked, codes, attempts


#: timeline action -> (method at ``at``, method at ``at + duration`` or None)
EVENTS: dict[str, tuple[str, str | None]] = {
    "broker-kill": ("_broker_kill", "_broker_restart"),
    "broker-pause": ("_broker_pause", "_broker_resume"),
    "connection-reset": ("_connection_reset", None),
    "consumer-crash": ("_consumer_crash", "_client_restart"),
    "producer-crash": ("_producer_crash", "_client_restart"),
}


@cache
def faulted(model: type[Simulation]) -> type[Simulation]:
    """``model`` with the fault timeline played (a subclass; the model class is untouched)."""
    return type(f"Faulted{model.__name__}", (FaultMixin, model), {"__doc__": model.__doc__})
