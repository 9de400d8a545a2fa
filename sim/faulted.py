"""Faults played inside the engine: broker kill and pause, network faults, client crashes.

A run with faults is built from collaborators chosen at construction (as Ciw is given node and
server classes), so a run without faults never pays for any of it: the fault-free engine path has
no fault checks at all. The engine is given

- a :class:`~brokerlab.sim.process.FaultedBrokerProcess` (pause, kill, restart; its gate holds
  or drops work reaching the broker),
- a :class:`~brokerlab.sim.network.FaultedNetwork` (connections with epochs that drop; hops that
  partitions, latency and bandwidth faults act on),
- and a :class:`FaultLayer`, which owns a :class:`~brokerlab.sim.publisher.RetryingPublisher`
  (attempts, timeouts, retries, dedup, stored copies) and :class:`FaultedConsumers` (crash,
  slow processing, acks whose reply may never come), and plays the timeline: at each entry's
  start and end it tells the process, the network, the publisher and the consumers what
  happened, and applies what a kill loses by the preset's durability.

The engine calls the collaborators through a small interface: the publisher's ``publish``,
``publishing``, ``owed``, ``columns`` and ``messages``; the consumers' ``to_consumer``,
``to_broker``, ``to_client``, ``start``, ``processed``, ``ack_batch`` and ``done``; the layer's
``schedule``. The collaborators call the engine's public steps (``received``, ``released``,
``acked``, ``expire``, ``credit``, ``finish``, ``lose_stored``, the ack timer's ``stop_``/
``restart_``/``run_ack_timer``) and read its public state (delivery rows, consumer buffers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from brokerlab.core.load import streams
from brokerlab.sim.engine import ACKED
from brokerlab.sim.events import Call
from brokerlab.sim.faults import (
    ACK_REPLY_WAIT,
    RECONNECT_DELAY,
    Entry,
    kept_on_kill,
    resolve_entries,
)
from brokerlab.sim.network import FaultedNetwork
from brokerlab.sim.process import FaultedBrokerProcess
from brokerlab.sim.profile import Throttle
from brokerlab.sim.publisher import Broker as PublisherBroker
from brokerlab.sim.publisher import RetryingPublisher

if TYPE_CHECKING:
    from brokerlab.sim.engine import Simulation
    from brokerlab.sim.models.log import LogModel


class FaultedConsumers:
    """Consumers that crash, slow down, and wait for acks whose reply may never come.

    A crash voids what the consumer holds (its ``life`` changes, so processing in progress never
    finishes); an ack's reply is awaited up to :data:`~sim.faults.ACK_REPLY_WAIT`, and not at
    all once the connection is gone (the call fails at once, as in the harness).
    """

    def __init__(self, sim: Simulation, network: FaultedNetwork, publisher: RetryingPublisher):
        self.sim = sim
        self.env = sim.env
        self.network = network
        self.publisher = publisher
        count = sim.scenario.consumers.count
        self.producers = sim.scenario.producers.count
        self.prefetch = sim.scenario.consumers.prefetch
        self.crashed = [False] * count
        self.life = [0] * count  # a crash voids processing in progress
        self.awaiting = [-1] * count  # row whose ack reply a consumer awaits
        self.then: list[Callable[[int], None]] = [self.done] * count
        #: slow-consumer entries per consumer
        self.slow: list[list[Entry]] = [[] for _ in range(count)]
        self.requeue_on_disconnect = sim.track and not sim.preset.redelivery
        self._size: list[int] = sim.plan.size.tolist()

    # ------------------------------------------------------------------ what the engine calls

    def to_consumer(self, r: int) -> None:
        sim = self.sim
        c = sim.row_consumer[r]
        size = self._size[self.publisher.message(sim.row_msg[r])]
        self.network.send(
            self.producers + c, self.network.consumer_down + c, size, sim.received, r, False
        )

    def to_broker(self, consumer: int, fn: Callable[[Any], None], r: Any) -> None:
        link = self.network.consumer_up + consumer
        self.network.send(self.producers + consumer, link, 0, fn, r, True)

    def to_client(self, consumer: int, fn: Callable[[int], None], r: int) -> None:
        link = self.network.consumer_down + consumer
        self.network.send(self.producers + consumer, link, 0, self._replied, (fn, r), False)

    def start(self, c: int, r: int) -> None:
        # The job carries the consumer's life, so a crash mid-message leaves it unfinished.
        Call(self.env, self._processing_time(c), self.processed, (r, self.life[c]))

    def processed(self, job: Any) -> None:
        sim = self.sim
        r, life = job
        c = sim.row_consumer[r]
        if life != self.life[c]:
            return  # the consumer crashed while processing: t_done stays NaN
        if sim.ack_after:
            if not self.network.connected[self.producers + c]:
                self.done(r)  # the ack call fails at once without a connection
                return
            if not sim.ack_waits:  # an unanswered ack: sent, and the consumer goes on
                self.to_broker(c, sim.released, r)
                self.done(r)
                return
            self._await_reply(c, r, self.done)
            self.to_broker(c, sim.ack_reached, r)
            return
        self.done(r)
        if sim.consumer_acks:
            self.to_broker(c, sim.released, r)

    def ack_batch(self, c: int, r: int) -> None:
        sim = self.sim
        if not self.network.connected[self.producers + c]:
            self.start(c, r)  # the ack call fails at once without a connection
            return
        rows = [r, *sim.hand[c]]
        if not sim.ack_waits:  # an unanswered ack: sent, and processing starts at once
            for row in rows:
                self.to_broker(c, sim.acked, row)
            self.start(c, r)
            return
        self._await_reply(c, r, self._begin)
        for row in rows[:-1]:
            self.to_broker(c, sim.acked, row)
        self.to_broker(c, sim.acked_early, (rows[-1], r))

    def done(self, r: int) -> None:
        sim = self.sim
        sim.finished[self.publisher.message(sim.row_msg[r])] = 1  # a copy finishes its message
        sim.finish(r)

    # ------------------------------------------------------------------ what faults call

    def drop(self, c: int) -> None:
        """The connection dropped: the broker stops sending; what was in flight is lost."""
        sim = self.sim
        self.network.drop(self.producers + c)
        sim.free[c] = 0
        r = self.awaiting[c]
        if r >= 0:  # the ack call fails at once on a dead connection: the consumer goes on
            Call(self.env, 0.0, self._reply_overdue, (r, self.life[c], self.then[c]))
        members: list[int] | None = getattr(sim, "members", None)
        if members is not None and c in members:
            members.remove(c)
        if self.requeue_on_disconnect:
            sim.process.receive(self.give_back, c)

    def give_back(self, c: int | None) -> None:
        """Brokers without an ack timer (Kafka rebalance, RabbitMQ channel close) make a lost
        consumer's unacked deliveries deliverable again at once."""
        sim = self.sim
        pending, row_msg, row_consumer = sim.pending, sim.row_msg, sim.row_consumer
        rows = sorted(r for r in pending if r >= 0 and (c is None or row_consumer[r] == c))
        for r in rows:
            if pending[row_msg[r]] == r:
                sim.expire(r)

    def joined(self, c: int) -> None:
        """Consumer ``c`` has a new connection: fresh credit, minus what it still holds from the
        old one (it processes and acks those on the new connection)."""
        sim = self.sim
        if not self.network.connected[self.producers + c]:
            return
        # A consumer awaiting an ack's reply sent that message's credit on the old connection.
        held = len(sim.buffer[c]) + len(sim.hand[c]) + (sim.busy[c] and self.awaiting[c] < 0)
        sim.free[c] = max(self.prefetch - held, 0)
        members: list[int] | None = getattr(sim, "members", None)
        if members is not None and c not in members:
            members.append(c)
        sim.credit(c)
        join_group: Callable[[int], None] | None = getattr(sim, "join_group", None)
        if join_group is not None:
            join_group(c)  # back after its session expired: the group rebalances

    def _session_expired(self, job: tuple[int, int]) -> None:
        """A crashed member's session timed out: what it held uncommitted becomes deliverable
        again (first in its partition), then the group hands its partitions to the survivors."""
        c, life = job
        if not self.crashed[c] or life != self.life[c]:
            return  # it came back (or crashed again: that crash has its own timer)
        self.give_back(c)
        cast("LogModel", self.sim).leave_group(c)

    def crash(self, c: int) -> None:
        """The process dies mid-message: nothing it holds is finished or acked."""
        sim = self.sim
        r = self.awaiting[c]
        if r >= 0 and self.then[c] == self.done:
            # Crashed with the ack in flight, as the harness records it: processing finished,
            # and whether the broker applied the ack shows as a redelivery (or none), never as
            # a message the business did not process.
            sim.row_t_done[r] = self.env.now
            sim.finished[self.publisher.message(sim.row_msg[r])] = 1
        self.drop(c)
        self.crashed[c] = True
        self.life[c] += 1
        self.awaiting[c] = -1
        sim.busy[c] = False
        # The batch in hand was delivered and is never done; what the client library still
        # buffered was never delivered: lost for NATS core, redelivered by acking brokers.
        sim.hand[c].clear()
        sim.buffer[c].clear()
        timeout = sim.preset.session_timeout
        if timeout and sim.preset.partitioned:
            Call(self.env, timeout, self._session_expired, (c, self.life[c]))

    # ------------------------------------------------------------------ inside

    def _processing_time(self, c: int) -> float:
        duration = next(self.sim.processing_times)
        now = self.env.now
        for entry in self.slow[c]:
            if entry.start <= now < entry.end:
                duration *= entry.fault.factor
        return duration

    def _await_reply(self, c: int, r: int, then: Callable[[int], None]) -> None:
        """Consumer ``c`` waits for the reply to its ack of row ``r``, then calls ``then(r)``.

        Like the harness, it gives up waiting after :data:`~sim.faults.ACK_REPLY_WAIT` (a lost
        connection, a paused or dead broker) and goes on; the broker redelivers what it missed.
        """
        self.awaiting[c] = r
        self.then[c] = then
        Call(self.env, ACK_REPLY_WAIT, self._reply_overdue, (r, self.life[c], then))

    def _reply_overdue(self, job: tuple[int, int, Callable[[int], None]]) -> None:
        r, life, then = job
        c = self.sim.row_consumer[r]
        if life == self.life[c] and self.awaiting[c] == r:
            self.awaiting[c] = -1
            then(r)

    def _replied(self, reply: tuple[Callable[[int], None], int]) -> None:
        fn, r = reply
        c = self.sim.row_consumer[r]
        if self.awaiting[c] == r:
            self.awaiting[c] = -1
            fn(r)

    def _begin(self, r: int) -> None:
        c = self.sim.row_consumer[r]
        if self.sim.busy[c]:  # not emptied by a crash since the batch was taken
            self.start(c, r)


class AckStateWrites:
    """When the broker last wrote its consumers' ack state, and the acks it holds unwritten.

    A broker that writes a consumer's state at most every ``interval`` (JetStream's file store:
    ``consumerFileStore.flushLoop``, about 10 writes a second under load) writes at once when
    an ack comes ``interval`` or more after its last write, and otherwise once ``interval`` has
    passed since it, with every ack up to then. A kill loses the acks after the last write:
    their messages are pending again, and come back after the ack timeout.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self.last_write = -interval
        #: when the delayed write happens (None: none waiting)
        self.due: float | None = None
        #: acks the store does not hold yet: (time, delivery row)
        self.unwritten: list[tuple[float, int]] = []

    def ack(self, now: float, row: int) -> None:
        self._written_by(now)
        if self.due is None:
            if now - self.last_write >= self.interval:
                self.last_write = now  # written at once, this ack with it
                return
            self.due = self.last_write + self.interval
        self.unwritten.append((now, row))

    def lost(self, now: float) -> list[int]:
        """At a kill: the rows whose acks the store did not hold (their acks are gone)."""
        self._written_by(now)
        rows = [row for _, row in self.unwritten]
        self.unwritten = []
        self.due = None
        return rows

    def _written_by(self, now: float) -> None:
        if self.due is not None and now >= self.due:
            self.last_write, self.due = self.due, None
            self.unwritten = []


class FaultLayer:
    """The scenario's fault timeline, played on the engine's collaborators.

    A run with a publish quota (``throttle``) gets the layer too, with or without faults: its
    publisher is the one that can be refused and retry.
    """

    def __init__(self, sim: Simulation, throttle: Throttle | None = None):
        network, process = sim.network, sim.process
        assert isinstance(network, FaultedNetwork) and isinstance(process, FaultedBrokerProcess)
        self.sim = sim
        self.env = sim.env
        self.network = network
        self.process = process
        self.entries, _ = resolve_entries(sim.scenario)
        # NATS core: a partitioned subscriber's messages are dropped (the server cannot write
        # to it and drops past its limits), not delivered late as on the acked brokers.
        network.attach(process, streams(sim.seed)["faults"], sim.model == "pubsub")
        self.producers = sim.scenario.producers.count
        self.kept = kept_on_kill(sim.preset)
        self.publisher = RetryingPublisher(
            sim.env,
            sim.scenario,
            sim.preset,
            sim.plan,
            network,
            process,
            PublisherBroker(
                service=sim.publish_time,
                store=sim.stored,
                add_copy=sim.add_copy,
                settled=sim.producer_free if sim.sync else None,
            ),
            sim.counts,
            sim.publish_acks,
            throttle,
        )
        self.consumers = FaultedConsumers(sim, network, self.publisher)
        #: the ack state's writes, when a kill can roll acks back (see :class:`AckStateWrites`)
        self.ack_writes: AckStateWrites | None = None
        kills = any(entry.fault.action == "broker-kill" for entry in self.entries)
        interval = sim.preset.ack_state_write
        if kills and interval > 0 and sim.track and self.kept != "memory":
            self.ack_writes = AckStateWrites(interval)
            self._journal_acks(self.ack_writes)

    def _journal_acks(self, writes: AckStateWrites) -> None:
        """Note every ack's time (the engine's ``acked`` and ``released`` steps, wrapped)."""
        sim, env = self.sim, self.env
        acked, released = sim.acked, sim.released

        def journaled(step: Callable[[int], None]) -> Callable[[int], None]:
            def call(r: int) -> None:
                i = sim.row_msg[r]
                before = sim.pending[i]
                step(r)
                if before >= 0 and sim.pending[i] == ACKED:
                    writes.ack(env.now, r)

            return call

        sim.acked = journaled(acked)  # type: ignore[method-assign]
        sim.released = journaled(released)  # type: ignore[method-assign]

    def schedule(self) -> None:
        """Put the timeline's entries on the clock (hop faults need no event: a hop checks
        them when it is sent)."""
        consumers_from = self.producers
        for entry in self.entries:
            action = entry.fault.action
            if action in ("partition", "latency", "bandwidth"):
                for p in entry.producers:
                    self.network.effects[p].append(entry)
                for c in entry.consumers:
                    self.network.effects[consumers_from + c].append(entry)
            elif action == "slow-consumer":
                for c in entry.consumers:
                    self.consumers.slow[c].append(entry)
            else:
                begin, end = EVENTS[action]
                Call(self.env, entry.start, getattr(self, begin), entry)
                if end is not None:
                    Call(self.env, entry.end, getattr(self, end), entry)

    # ------------------------------------------------------------------ clients up and down

    def _client_up(self, client: int) -> None:
        """A client (re)connects, if it is alive and the broker is there."""
        producer = client < self.producers
        if producer:
            crashed = self.publisher.crashed[client]
        else:
            crashed = self.consumers.crashed[client - self.producers]
        if self.process.down or crashed or self.network.connected[client]:
            return
        self.network.connected[client] = True
        if producer:
            self.publisher.connected(client)
        else:
            self.process.receive(self.consumers.joined, client - self.producers)

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
                self.consumers.drop(c)
        Call(self.env, RECONNECT_DELAY, self._reconnect, entry)

    def _consumer_crash(self, entry: Entry) -> None:
        for c in entry.consumers:
            self.consumers.crash(c)

    def _producer_crash(self, entry: Entry) -> None:
        for p in entry.producers:
            self.publisher.crash(p)

    def _client_restart(self, entry: Entry) -> None:
        for p in entry.producers:
            self.publisher.restart(p)
        for c in entry.consumers:
            self.consumers.crashed[c] = False
        self._reconnect(entry)

    # ------------------------------------------------------------------ the broker process

    def _broker_kill(self, entry: Entry) -> None:
        self.process.kill()
        self.sim.stop_ack_timer()  # the ack timer dies with the process
        for p in range(self.producers):
            if self.network.connected[p]:
                self.publisher.drop(p)
        for c in range(len(self.consumers.life)):
            if self.network.connected[self.producers + c]:
                self.consumers.drop(c)
        self._lose_unsaved(entry.fault.power_loss)

    def _lose_unsaved(self, power_loss: bool) -> None:
        """What the kill takes with it, by the preset's durability (see sim.faults.kept_on_kill).

        ``memory``: every message and the group state (cursor, pending entries) are gone.
        ``always``: nothing acknowledged is lost. A sync interval: a process kill loses nothing
        (the OS page cache survives); with power loss the writes since the last sync are lost.
        The group state is kept as it was last written: acks since the broker's last write of it
        (the preset's ``ack_state_write``) are lost, and their messages are pending again.
        """
        kept = self.kept
        if self.ack_writes is not None:
            self.sim.unack(self.ack_writes.lost(self.env.now))
        if kept == "always":
            return
        if kept == "memory":
            self.sim.lose_all()
            self.publisher.forget_dedup()  # the dedup table is rebuilt from (empty) storage
            return
        if not power_loss:
            return
        assert isinstance(kept, float)
        synced = self.process.synced_since(kept)
        self.sim.lose_stored(self.publisher.stored_after(synced))
        self.publisher.forget_dedup(synced)

    def _broker_restart(self, entry: Entry) -> None:
        if not self.process.restart():
            return
        if self.consumers.requeue_on_disconnect:
            self.consumers.give_back(None)
        # Surviving pending entries keep their delivery times (Redis PEL idle times,
        # JetStream's stored state): those past ack_timeout are redelivered at once.
        self.sim.restart_ack_timer()
        Call(self.env, RECONNECT_DELAY, self._reconnect_all, None)

    def _broker_pause(self, entry: Entry) -> None:
        self.process.pause()

    def _broker_resume(self, entry: Entry) -> None:
        held, timer = self.process.resume()
        for fn, arg in held:  # in arrival order, as TCP delivers it
            fn(arg)
        # The ack timer last: acks that reached the broker's socket during the pause count as
        # in time, so only deliveries still unacked after the backlog are redelivered.
        if timer:
            self.sim.run_ack_timer()


#: timeline action -> (method at ``at``, method at ``at + duration`` or None)
EVENTS: dict[str, tuple[str, str | None]] = {
    "broker-kill": ("_broker_kill", "_broker_restart"),
    "broker-pause": ("_broker_pause", "_broker_resume"),
    "connection-reset": ("_connection_reset", None),
    "consumer-crash": ("_consumer_crash", "_client_restart"),
    "producer-crash": ("_producer_crash", "_client_restart"),
}

#: the constructor arguments that make an engine play faults (see :func:`brokerlab.sim.simulate`)
FAULTED: dict[str, Any] = {
    "process": FaultedBrokerProcess,
    "network": FaultedNetwork,
    "faults": FaultLayer,
}
