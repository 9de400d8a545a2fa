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

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from brokerlab.core.load import LoadPlan, streams
from brokerlab.core.scenario import Scenario
from brokerlab.sim.engine import Call, Progress, Simulation
from brokerlab.sim.faults import (
    ACK_REPLY_WAIT,
    RECONNECT_DELAY,
    Entry,
    kept_on_kill,
    resolve_entries,
)
from brokerlab.sim.network import FaultedNetwork
from brokerlab.sim.presets import Preset
from brokerlab.sim.process import FaultedBrokerProcess
from brokerlab.sim.publisher import Broker as PublisherBroker
from brokerlab.sim.publisher import RetryingPublisher


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
        super().__init__(
            scenario,
            preset,
            plan,
            seed,
            progress,
            process=FaultedBrokerProcess,
            network=FaultedNetwork,
        )
        self.broker_process: FaultedBrokerProcess = self.process  # type: ignore[assignment]
        self.network: FaultedNetwork = self.network  # type: ignore[assignment]
        # The engine binds zero-cost shortcuts on the instance; faults need every step.
        for shortcut in ("_arrive", "_publish", "_to_consumer"):
            self.__dict__.pop(shortcut, None)
        self.entries, _ = resolve_entries(scenario)
        # NATS core: a partitioned subscriber's messages are dropped (the server cannot write
        # to it and drops past its limits), not delivered late as on the acked brokers.
        self.network.attach(self.process, streams(seed)["faults"], self.model == "pubsub")
        self.producers = producers = scenario.producers.count
        clients = producers + scenario.consumers.count
        self._prefetch = scenario.consumers.prefetch

        # What a kill of the broker process keeps.
        self._kept = kept_on_kill(preset)

        # Clients: producers 0..P-1, then consumers (their connections are the network's).
        self._crashed = [False] * clients
        self._life = [0] * scenario.consumers.count  # a crash voids processing in progress
        self._awaiting = [-1] * scenario.consumers.count  # row whose ack reply a consumer awaits
        self._then: list[Callable[[int], None]] = [self._done] * scenario.consumers.count
        self._slow: list[list[Entry]] = [[] for _ in range(scenario.consumers.count)]
        self._requeue_on_disconnect = self._track and not preset.redelivery

        # Publish attempts, retries, dedup and stored copies.
        self.publisher = RetryingPublisher(
            self.env,
            scenario,
            preset,
            plan,
            self.network,
            self.process,
            PublisherBroker(
                service=self._publish_time,
                store=self.stored,
                add_copy=self.add_copy,
                settled=self.producer_free if self._sync else None,
            ),
            self.counts,
            self.publish_acks,
        )
        self._publish = self.publisher.publish  # type: ignore[method-assign]
        self._size: list[int] = plan.size.tolist()

    # ------------------------------------------------------------------ timeline

    def run(self) -> None:
        consumers_from = self.producers
        for entry in self.entries:
            action = entry.fault.action
            if action in ("partition", "latency", "bandwidth"):
                # Hop faults need no event: a hop checks them when it is sent.
                for p in entry.producers:
                    self.network.effects[p].append(entry)
                for c in entry.consumers:
                    self.network.effects[consumers_from + c].append(entry)
            elif action == "slow-consumer":
                for c in entry.consumers:
                    self._slow[c].append(entry)
            else:
                begin, end = EVENTS[action]
                Call(self.env, entry.start, getattr(self, begin), entry)
                if end is not None:
                    Call(self.env, entry.end, getattr(self, end), entry)
        super().run()

    # ------------------------------------------------------------------ drain

    def publishing(self) -> bool:
        return self.publisher.publishing()

    def owed(self) -> list[int]:
        return self.publisher.owed()

    # ------------------------------------------------------------------ consumers

    def _to_consumer(self, r: int) -> None:
        c = self.row_consumer[r]
        size = self._size[self.publisher.message(self.row_msg[r])]
        self.network.send(
            self.producers + c, self.network.consumer_down + c, size, self._received, r, False
        )

    def _to_broker(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        link = self.network.consumer_up + consumer
        self.network.send(self.producers + consumer, link, 0, fn, r, True)

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
        if self._ack_after:
            if not self.network.connected[self.producers + c]:
                self._done(r)  # the ack call fails at once without a connection
                return
            self._await_reply(c, r, self._done)
            self._to_broker(c, self._ack_reached, r)
            return
        self._done(r)
        if self.consumer_acks:
            self._to_broker(c, self._released, r)

    def _ack_batch(self, c: int, r: int) -> None:
        if not self.network.connected[self.producers + c]:
            self._start(c, r)  # the ack call fails at once without a connection
            return
        rows = [r, *self.hand[c]]
        self._await_reply(c, r, self._begin)
        for row in rows[:-1]:
            self._to_broker(c, self._acked, row)
        self._to_broker(c, self._acked_early, (rows[-1], r))

    def _await_reply(self, c: int, r: int, then: Callable[[int], None]) -> None:
        """Consumer ``c`` waits for the reply to its ack of row ``r``, then calls ``then(r)``.

        Like the harness, it gives up waiting after :data:`~sim.faults.ACK_REPLY_WAIT` (a lost
        connection, a paused or dead broker) and goes on; the broker redelivers what it missed.
        """
        self._awaiting[c] = r
        self._then[c] = then
        Call(self.env, ACK_REPLY_WAIT, self._reply_overdue, (r, self._life[c], then))

    def _reply_overdue(self, job: tuple[int, int, Callable[[int], None]]) -> None:
        r, life, then = job
        c = self.row_consumer[r]
        if life == self._life[c] and self._awaiting[c] == r:
            self._awaiting[c] = -1
            then(r)

    def _to_client(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        link = self.network.consumer_down + consumer
        self.network.send(self.producers + consumer, link, 0, self._replied, (fn, r), False)

    def _replied(self, reply: tuple[Callable[[int], None], int]) -> None:
        fn, r = reply
        c = self.row_consumer[r]
        if self._awaiting[c] == r:
            self._awaiting[c] = -1
            fn(r)

    def _begin(self, r: int) -> None:
        c = self.row_consumer[r]
        if self.busy[c]:  # not emptied by a crash since the batch was taken
            self._start(c, r)

    def _done(self, r: int) -> None:
        self.finished[self.publisher.message(self.row_msg[r])] = 1  # a copy finishes its message
        super()._done(r)

    def _drop_consumer(self, c: int) -> None:
        """The connection dropped: the broker stops sending; what was in flight is lost."""
        self.network.drop(self.producers + c)
        self.free[c] = 0
        r = self._awaiting[c]
        if r >= 0:  # the ack call fails at once on a dead connection: the consumer goes on
            Call(self.env, 0.0, self._reply_overdue, (r, self._life[c], self._then[c]))
        members: list[int] | None = getattr(self, "members", None)
        if members is not None and c in members:
            members.remove(c)
        if self._requeue_on_disconnect:
            self.process.receive(self._give_back, c)

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
        if not self.network.connected[self.producers + c]:
            return
        # A consumer awaiting an ack's reply sent that message's credit on the old connection.
        held = len(self.buffer[c]) + len(self.hand[c]) + (self.busy[c] and self._awaiting[c] < 0)
        self.free[c] = max(self._prefetch - held, 0)
        members: list[int] | None = getattr(self, "members", None)
        if members is not None and c not in members:
            members.append(c)
        self.credit(c)

    # ------------------------------------------------------------------ clients up and down

    def _client_up(self, client: int) -> None:
        """A client (re)connects, if it is alive and the broker is there."""
        producer = client < self.producers
        crashed = self.publisher.crashed[client] if producer else self._crashed[client]
        if self.process.down or crashed or self.network.connected[client]:
            return
        self.network.connected[client] = True
        if producer:
            self.publisher.connected(client)
        else:
            self.process.receive(self._consumer_joined, client - self.producers)

    def _reconnect(self, entry: Entry) -> None:
        for p in entry.producers:
            self._client_up(p)
        for c in entry.consumers:
            self._client_up(self.producers + c)

    def _reconnect_all(self, _: Any) -> None:
        for client in range(len(self.network.connected)):
            self._client_up(client)

    def _connection_reset(self, entry: Entry) -> None:
        for p in entry.producers:
            if self.network.connected[p]:
                self.publisher.drop(p)
        for c in entry.consumers:
            if self.network.connected[self.producers + c]:
                self._drop_consumer(c)
        Call(self.env, RECONNECT_DELAY, self._reconnect, entry)

    def _consumer_crash(self, entry: Entry) -> None:
        # The process dies mid-message: nothing it holds is finished or acked.
        for c in entry.consumers:
            self._drop_consumer(c)
            self._crashed[self.producers + c] = True
            self._life[c] += 1
            self._awaiting[c] = -1
            self.busy[c] = False
            # The batch in hand was delivered and is never done; what the client library still
            # buffered was never delivered: lost for NATS core, redelivered by acking brokers.
            self.hand[c].clear()
            self.buffer[c].clear()

    def _producer_crash(self, entry: Entry) -> None:
        for p in entry.producers:
            self.publisher.crash(p)

    def _client_restart(self, entry: Entry) -> None:
        for p in entry.producers:
            self.publisher.restart(p)
        for c in entry.consumers:
            self._crashed[self.producers + c] = False
        self._reconnect(entry)

    # ------------------------------------------------------------------ the broker process

    def _broker_kill(self, entry: Entry) -> None:
        self.broker_process.kill()
        self._timer_epoch += 1  # the ack timer dies with the process
        self._timer_set = False
        for p in range(self.producers):
            if self.network.connected[p]:
                self.publisher.drop(p)
        for c in range(len(self.free)):
            if self.network.connected[self.producers + c]:
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
            self.publisher.forget_dedup()  # the dedup table is rebuilt from (empty) storage
            return
        if not power_loss:
            return
        assert isinstance(kept, float)
        synced = self.broker_process.synced_since(kept)
        self.lose_stored(self.publisher.stored_after(synced))
        self.publisher.forget_dedup(synced)

    def _broker_restart(self, entry: Entry) -> None:
        if not self.broker_process.restart():
            return
        if self._requeue_on_disconnect:
            self._give_back(None)
        if self._deadlines and not self._timer_set:
            # Surviving pending entries keep their delivery times (Redis PEL idle times,
            # JetStream's stored state): those past ack_timeout are redelivered at once.
            self._timer_set = True
            Call(self.env, 0.0, self._on_timer, self._timer_epoch)
        Call(self.env, RECONNECT_DELAY, self._reconnect_all, None)

    def _broker_pause(self, entry: Entry) -> None:
        self.broker_process.pause()

    def _broker_resume(self, entry: Entry) -> None:
        held, timer = self.broker_process.resume()
        for fn, arg in held:  # in arrival order, as TCP delivers it
            fn(arg)
        # The ack timer last: acks that reached the broker's socket during the pause count as
        # in time, so only deliveries still unacked after the backlog are redelivered.
        if timer:
            self._on_timer(self._timer_epoch)

    # ------------------------------------------------------------------ trace

    def _delivery_columns(self) -> tuple[np.ndarray, ...]:
        msg, *rest = super()._delivery_columns()
        copy_of = self.publisher.copy_of
        if copy_of:
            copies = msg >= self.n
            msg[copies] = np.asarray(copy_of, dtype="int64")[msg[copies] - self.n]
        return (msg, *rest)

    def _send_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.publisher.columns()


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
