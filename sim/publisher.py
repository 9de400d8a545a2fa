"""Publishers that can fail, time out and retry: the producers' collaborator of a faulted run.

A fault-free run publishes through the engine's own open-loop (or confirm-sync) path, which has
no attempt bookkeeping at all. A run with faults gets a :class:`RetryingPublisher`: the engine
calls :meth:`~RetryingPublisher.publish` for each message's first attempt, and reads the outcome
columns, the drain's condition and the copies' messages from it. The fault timeline calls
:meth:`~RetryingPublisher.drop`, :meth:`~RetryingPublisher.crash`,
:meth:`~RetryingPublisher.restart` and :meth:`~RetryingPublisher.connected`.

A producer waits for each attempt's ack up to ``publish_timeout``; an attempt that times out or
whose connection drops has an unknown outcome (it may have been stored), one refused because the
broker is down has failed (nothing was sent). Both follow the retry policy (``retry_backoff``
between attempts, ``max_attempts``). A retry that reaches the broker again is a second stored copy
with its own broker index (delivery_no starts at 1), unless the broker honours ``dedup_window``
and the id is the same (``same-id``; ``new-id`` retries carry a new dedup id, as the harness
does). The trace keeps one sends row per planned message, so copies show up as duplicate
deliveries of its msg_id, as in the harness.

A managed service's publish quota (a profile's ``quota``, see :class:`Quotas`) is enforced here
too: an attempt over it is rejected by the broker (ThrottlingException, ServerBusy), the reply
travels back, and the producer retries it by its policy or gives up (outcome failed): visible in
the trace as attempts and as publish latency, never as a queue at the broker.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from brokerlab.core.load import LoadPlan
from brokerlab.core.scenario import Scenario
from brokerlab.core.vocabulary import OutcomeCode
from brokerlab.sim.events import Call, Clock
from brokerlab.sim.network import FaultedNetwork
from brokerlab.sim.presets import Preset
from brokerlab.sim.process import BrokerProcess, InOrder, reorders
from brokerlab.sim.profile import Throttle

ACKED, FAILED, UNKNOWN = (int(code) for code in OutcomeCode)


@dataclass
class Broker:
    """What a publisher needs of the broker side of the engine."""

    #: publish service times (None: zero, no service event)
    service: Iterator[float] | None
    #: the broker stores broker index ``b`` (the model's storage hook)
    store: Callable[[int], None]
    #: a new broker index for a second stored copy of message ``i``
    add_copy: Callable[[int], int]
    #: a producer is free for its next message after ``i`` (confirm sync), or None
    settled: Callable[[int], None] | None


class Quotas:
    """Publish quotas as token buckets, one per unit (or one pooled), each holding one second's
    quota: a unit takes its per-second limit on average and absorbs no burst beyond a second's
    worth, as the services' per-second limits do.

    With ``per_partition`` a message counts against its partition's unit: its key's partition
    (key mod units), keyless messages round robin, as the log model places them.
    """

    def __init__(self, throttle: Throttle, keys: list[int]):
        pooled = 1 if throttle.per_partition else throttle.units
        self.units = throttle.units if throttle.per_partition else 1
        self.messages = throttle.messages * pooled if throttle.messages else None
        self.bytes = throttle.bytes * pooled if throttle.bytes else None
        self._keys = keys
        # start full: a unit at rest has a second's quota to give
        self._tokens = [self.messages or 0.0] * self.units
        self._byte_tokens = [self.bytes or 0.0] * self.units
        self._last = [0.0] * self.units

    def unit(self, i: int) -> int:
        """The unit message ``i`` counts against."""
        if self.units == 1:
            return 0
        key = self._keys[i]
        return key % self.units if key >= 0 else i % self.units

    def admit(self, i: int, size: int, now: float) -> bool:
        """Whether the broker takes a publish of message ``i`` (``size`` bytes) now."""
        u = self.unit(i)
        elapsed = now - self._last[u]
        self._last[u] = now
        ok = True
        if self.messages is not None:
            tokens = min(self.messages, self._tokens[u] + elapsed * self.messages)
            self._tokens[u] = tokens
            ok = tokens >= 1 - 1e-9
        if self.bytes is not None:
            byte_tokens = min(self.bytes, self._byte_tokens[u] + elapsed * self.bytes)
            self._byte_tokens[u] = byte_tokens
            ok = ok and byte_tokens >= size - 1e-6
        if ok:
            if self.messages is not None:
                self._tokens[u] -= 1
            if self.bytes is not None:
                self._byte_tokens[u] -= size
        return ok


class RetryingPublisher:
    """Publish attempts per message: timeouts, retries, refusals, dedup and stored copies."""

    def __init__(
        self,
        env: Clock,
        scenario: Scenario,
        preset: Preset,
        plan: LoadPlan,
        network: FaultedNetwork,
        process: BrokerProcess,
        broker: Broker,
        counts: dict[str, int],
        publish_acks: bool,
        throttle: Throttle | None = None,
    ):
        self.env = env
        self.network = network
        self.process = process
        #: a producer's attempts are stored in the order they reached the broker (see InOrder)
        self._order: InOrder | None = None
        if reorders(scenario.broker.servers, scenario.broker.service_time.publish):
            self._order = InOrder(process, scenario.producers.count)
        self.broker = broker
        self.counts = counts
        self.publish_acks = publish_acks
        n = self.n = len(plan)
        self.plan = plan
        self.producers = producers = scenario.producers.count
        self._producer_of: list[int] = plan.producer.tolist()
        self._size: list[int] = plan.size.tolist()
        settings = scenario.producers
        self._retry = settings.retry != "none"
        self._same_id = settings.retry == "same-id"
        self._max_attempts = settings.max_attempts
        self._backoff = settings.retry_backoff
        self._timeout = settings.publish_timeout
        #: publishes while the broker is down wait in the client for the reconnect
        self._buffers = preset.buffers_publishes

        self.crashed = [False] * producers
        self.attempts = [0] * n
        self.unsettled = n  # messages whose publish is not over (answered or given up)
        self.live = [0] * n  # the attempt whose answer the producer waits for; 0 = none
        self.uncertain = [False] * n  # some attempt ended without an answer
        self.sent_ok = [False] * n  # fire-and-forget: a publish went out on a live connection
        self.t_sent = np.full(n, math.nan)
        self.t_acked = np.full(n, math.nan)
        self._waiting: list[dict[int, int]] = [{} for _ in range(producers)]  # i -> attempt
        self._parked: list[list[int]] = [[] for _ in range(producers)]
        self._deadlines: deque[tuple[float, int, int]] = deque()
        self._timer = False

        # Stored copies: broker index -> message, store time (for power loss), dedup.
        self._stored_once = [False] * n
        self.copy_of: list[int] = []  # broker index n + k -> message
        self.t_store = [math.nan] * n
        settings_broker = preset.broker
        # As the harness does: message ids go out with same-id retries or an explicit window, and
        # a window of 0 leaves the broker's own default (JetStream: 2 minutes).
        self._window = settings_broker.dedup_window or preset.dedup_default_window
        ids_sent = settings_broker.dedup_window > 0 or self._same_id
        self._dedup = preset.dedup and ids_sent and self._window > 0
        self._dedup_at = [math.nan] * n if self._dedup else []
        counts.update(deduplicated=0, retried=0, refused=0, timed_out=0)
        #: the publish quota the broker enforces (None: no quota)
        self._quotas = Quotas(throttle, plan.key.tolist()) if throttle is not None else None
        if self._quotas is not None:
            counts["throttled"] = 0

    # ------------------------------------------------------------------ what the engine calls

    def publish(self, i: int) -> None:
        """First attempt of message ``i``, when the plan (or a sync producer's last ack) says."""
        p = self._producer_of[i]
        if not self.network.connected[p]:
            buffered = self._buffers and self.process.down and not self.crashed[p]
            if buffered:
                # The client takes the publish at once (the call returns: t_sent is now) and
                # sends it, in order, once it has reconnected.
                self.t_sent[i] = self.env.now
                self._parked[p].append(i)
                return
            if self.crashed[p] or not self.process.down:
                # A crashed producer sends on restart; a reconnecting one once connected. Both
                # keep the message's t_intended, so publish_delay shows the gap.
                self._parked[p].append(i)
                return
        self._attempt(i)

    def message(self, b: int) -> int:
        """The planned message a broker index stores (itself, or the message it is a copy of)."""
        return b if b < self.n else self.copy_of[b - self.n]

    def messages(self, b: np.ndarray) -> np.ndarray:
        """:meth:`message` for a column of broker indices (the deliveries' ``msg``)."""
        if self.copy_of:
            copies = b >= self.n
            b[copies] = np.asarray(self.copy_of, dtype="int64")[b[copies] - self.n]
        return b

    def publishing(self) -> bool:
        """Some publish is not over yet (answer, retry) beyond a producer that stays crashed."""
        if self.unsettled <= 0:
            return False
        crashed = [p for p in range(self.producers) if self.crashed[p]]
        if not crashed:
            return True
        never = np.isin(self.plan.producer, crashed) & (np.asarray(self.attempts) == 0)
        return self.unsettled > int(np.count_nonzero(never))

    def owed(self) -> list[int]:
        """Messages whose publish succeeded: the drain waits for them to be done."""
        if self.publish_acks:
            return np.flatnonzero(~np.isnan(self.t_acked)).tolist()
        return np.flatnonzero(self.sent_ok).tolist()

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``t_sent``, ``t_acked``, outcome codes and attempts, one entry per message."""
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

    # ------------------------------------------------------------------ what faults call

    def drop(self, p: int) -> None:
        """Producer ``p``'s connection dropped: every attempt waiting for an ack is unknown."""
        self.network.drop(p)
        waiting, self._waiting[p] = self._waiting[p], {}
        for i in waiting:
            self.live[i] = 0
            self._attempt_failed(i, uncertain=True)

    def crash(self, p: int) -> None:
        """The producer process dies: it never learns its answers and retries nothing."""
        self.crashed[p] = True
        self.network.drop(p)
        waiting, self._waiting[p] = self._waiting[p], {}
        for i in waiting:  # never learns the answer: unknown, and no retry
            self.live[i] = 0
            self.uncertain[i] = True
            self._settled(i)
        parked, self._parked[p] = self._parked[p], []
        for i in parked:
            if self.attempts[i]:
                self._settled(i)  # a retry waiting to reconnect dies with the process
            elif self._buffers and not math.isnan(self.t_sent[i]):
                # Taken by a client that buffered it: its call succeeded, the buffer is gone.
                self.attempts[i] = 1
                self.sent_ok[i] = True
                self._settled(i)
            else:
                self._parked[p].append(i)

    def restart(self, p: int) -> None:
        self.crashed[p] = False

    def connected(self, p: int) -> None:
        """Producer ``p`` (re)connected: it sends what it parked."""
        parked, self._parked[p] = self._parked[p], []
        for i in parked:
            self._attempt(i)

    def stored_after(self, t: float) -> Callable[[int], bool]:
        """Which broker indices were stored after ``t`` (a power loss takes them)."""
        t_store = self.t_store
        return lambda b: t_store[b] > t

    def forget_dedup(self, after: float | None = None) -> None:
        """The broker's dedup table lost its entries (all, or those after ``after``)."""
        if not self._dedup:
            return
        if after is None:
            self._dedup_at = [math.nan] * self.n  # rebuilt from (empty) storage
        else:
            self._dedup_at = [math.nan if t > after else t for t in self._dedup_at]

    # ------------------------------------------------------------------ attempts

    def _attempt(self, i: int) -> None:
        p = self._producer_of[i]
        a = self.attempts[i] + 1
        self.attempts[i] = a
        now = self.env.now
        if a == 1:
            if math.isnan(self.t_sent[i]):  # else a buffering client took it earlier
                self.t_sent[i] = now
        else:
            self.counts["retried"] += 1
        if not self.network.connected[p]:
            # Only while the broker is down: connection refused, so nothing was sent.
            self.counts["refused"] += 1
            self._attempt_failed(i, uncertain=False)
            return
        if self.publish_acks:
            self.live[i] = a
            self._waiting[p][i] = a
            self._deadlines.append((now + self._timeout, i, a))
            if not self._timer:
                self._timer = True
                Call(self.env, self._timeout, self._on_timer, 0)
        else:
            self.sent_ok[i] = True  # fire-and-forget: the call succeeded, whatever follows
            self.unsettled -= 1
        self.network.send(p, p, self._size[i], self._arrived, (i, a), True)

    def _arrived(self, token: tuple[int, int]) -> None:
        quotas = self._quotas
        if quotas is not None:
            i = token[0]
            if not quotas.admit(i, self._size[i], self.env.now):
                self.counts["throttled"] += 1
                if self.publish_acks:  # the rejection travels back like an ack
                    p = self._producer_of[i]
                    link = self.network.producer_down + p
                    self.network.send(p, link, 0, self._rejected, token, False)
                return
        service = self.broker.service
        if service is None:
            self._store_copy(token)
        else:
            if self._order is None:
                self.process.serve(next(service), self._store_copy, token)
            else:
                p = self._producer_of[token[0]]
                self._order.serve(next(service), p, self._store_copy, token)

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
            b = self.broker.add_copy(i)
            self.copy_of.append(i)
            self.t_store.append(now)
        else:
            self._stored_once[i] = True
            b = i
            self.t_store[i] = now
        if self.publish_acks:
            self._send_ack(i, a)
        self.broker.store(b)

    def _send_ack(self, i: int, a: int) -> None:
        p = self._producer_of[i]
        self.network.send(p, self.network.producer_down + p, 0, self._ack_arrived, (i, a), False)

    def _ack_arrived(self, token: tuple[int, int]) -> None:
        i, a = token
        if self.live[i] != a:
            return  # the producer gave up on this attempt (timeout); a late reply is ignored
        self.live[i] = 0
        del self._waiting[self._producer_of[i]][i]
        self.t_acked[i] = self.env.now
        self._settled(i)

    def _rejected(self, token: tuple[int, int]) -> None:
        """The broker refused attempt ``a`` over its quota: nothing was stored."""
        i, a = token
        if self.live[i] != a:
            return  # the producer had given up on this attempt already (timeout)
        self.live[i] = 0
        del self._waiting[self._producer_of[i]][i]
        self._attempt_failed(i, uncertain=False)

    def _on_timer(self, _: int) -> None:
        # One timer walks the deadlines in send order (all have the same timeout).
        deadlines, live = self._deadlines, self.live
        now = self.env.now
        while deadlines:
            deadline, i, a = deadlines[0]
            if live[i] != a:
                deadlines.popleft()
                continue
            if deadline > now + 1e-12:
                Call(self.env, deadline - now, self._on_timer, 0)
                return
            deadlines.popleft()
            live[i] = 0
            del self._waiting[self._producer_of[i]][i]
            self.counts["timed_out"] += 1
            self._attempt_failed(i, uncertain=True)
        self._timer = False

    def _attempt_failed(self, i: int, uncertain: bool) -> None:
        if uncertain:
            self.uncertain[i] = True
        if self._retry and self.attempts[i] < self._max_attempts:
            Call(self.env, self._backoff, self._retry_publish, i)
        else:
            self._settled(i)

    def _retry_publish(self, i: int) -> None:
        p = self._producer_of[i]
        if self.crashed[p]:
            self._settled(i)  # the retry died with the producer
        elif not self.network.connected[p] and not self.process.down:
            self._parked[p].append(i)
        else:
            self._attempt(i)

    def _settled(self, i: int) -> None:
        """Message ``i`` is done (acked or given up): a sync producer sends its next one."""
        self.unsettled -= 1
        if self.broker.settled is not None:
            self.broker.settled(i)
