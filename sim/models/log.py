"""An append-only log read by a consumer group (Redis Streams, JetStream, Kafka-like logs).

The group shares one cursor per lane (the stream, or each partition); delivered entries stay
pending until acked and come back first after the ack timeout. The log keeps acked entries, so
``max_length`` trims the oldest entries whether or not the group has read them (undelivered ones
are lost), and ``retention`` drops entries older than that. Trimming is applied lazily when the
cursor or a redelivery reaches an entry, which gives the same result as trimming on every append.
With ``partitioned`` presets a key always maps to the same partition (keyless messages go round
robin) and each partition to exactly one consumer of the group, so per-key order holds with many
consumers and consumers beyond the partition count sit idle.

A partitioned group rebalances: a member that crashed leaves the group when its session times out
(the preset's ``session_timeout``), and its partitions are spread over the survivors; what it held
uncommitted is delivered again to the new owner (first, before the partition's later entries).
When it returns, it joins and gets its partitions back. A partition a live member still holds
deliveries of moves only once that member has finished them (Kafka revokes a partition at the
member's next poll, after the batch it fetched), so no two members ever read one partition at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from brokerlab.sim.engine import ACKED, DRAIN_TICK, Simulation
from brokerlab.sim.events import Call


class LogModel(Simulation):
    """Consumer group over a log (or over partitions of a log)."""

    model = "log"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        consumers = self.scenario.consumers.count
        lanes = self.broker.partitions if self.preset.partitioned else 1
        self.lanes = lanes
        self.logs: list[list[int]] = [[] for _ in range(lanes)]
        self.cursor = [0] * lanes
        self.redeliveries: list[deque[int]] = [deque() for _ in range(lanes)]
        self.max_length = self.broker.max_length
        self.retention = self.broker.retention
        self.position: list[int] = [0] * self.n if self.max_length else []
        if self.preset.partitioned:
            # A group assigns each partition to exactly one consumer (partition p to consumer
            # p mod count), so consumers beyond the partition count sit idle, as in Kafka: one
            # partition is read by one consumer however many the group has.
            self.lane_owners = [[p % consumers] for p in range(lanes)]
            self.consumer_lanes = [
                [p for p in range(lanes) if p % consumers == c] for c in range(consumers)
            ]
            self._rr = [0] * lanes
            #: members whose session is live (a crashed one leaves at its session timeout)
            self.group: set[int] = set(range(consumers))
            #: lanes waiting for their old owner to finish what it holds: lane -> (old, new)
            self._handover: dict[int, tuple[int, int]] = {}
        if lanes > 1:
            self.lane_of: list[int] = [0] * self.n
            self._keys: list[int] = self.plan.key.tolist()

    def forget(self) -> None:
        super().forget()
        self.logs = [[] for _ in range(self.lanes)]
        self.position = []
        if self.lanes > 1:
            self.lane_of, self._keys = [], []

    def _lane(self, i: int) -> int:
        key = self._keys[i]
        # Keyless messages are spread round robin over partitions.
        lane = key % self.lanes if key >= 0 else i % self.lanes
        self.lane_of[i] = lane
        return lane

    def stored(self, i: int) -> None:
        lane = 0 if self.lanes == 1 else self._lane(i)
        log = self.logs[lane]
        if self.max_length:
            self.position[i] = len(log)
        if self.retention:
            self.t_stored[i] = self.env.now
        log.append(i)
        self.offer(lane)

    def _gone(self, lane: int, i: int) -> bool:
        """Trimmed by length or age since it was appended."""
        if self.max_length and len(self.logs[lane]) - self.position[i] > self.max_length:
            return True
        return bool(self.retention) and self.env.now - self.t_stored[i] > self.retention

    def take(self, lane: int) -> int:
        if self._cap is not None and self.in_flight >= self._cap:
            self._capped = True
            return -1
        again = self.redeliveries[lane]
        while again:
            i = again.popleft()
            if self.pending[i] == ACKED:
                continue  # a late ack arrived while it waited for redelivery
            if self._gone(lane, i):
                self.counts["trimmed"] += 1
                continue
            return i
        log = self.logs[lane]
        cursor = self.cursor[lane]
        length = len(log)
        if self.max_length and length - cursor > self.max_length:
            self.counts["trimmed"] += length - self.max_length - cursor
            cursor = length - self.max_length
        if self.retention:
            horizon = self.env.now - self.retention
            t_stored = self.t_stored
            while cursor < length and t_stored[log[cursor]] < horizon:
                cursor += 1
                self.counts["expired"] += 1
        if cursor < length:
            self.cursor[lane] = cursor + 1
            return log[cursor]
        self.cursor[lane] = cursor
        return -1

    def requeue(self, i: int) -> None:
        lane = 0 if self.lanes == 1 else self.lane_of[i]
        self.redeliveries[lane].append(i)
        self.offer(lane)

    def undelivered(self) -> int:
        held = 0
        for lane, log in enumerate(self.logs):
            held += sum(1 for i in log[self.cursor[lane] :] if not self._gone(lane, i))
            held += sum(
                1
                for i in self.redeliveries[lane]
                if not (self.track and self.pending[i] == ACKED) and not self._gone(lane, i)
            )
        return held

    # ------------------------------------------------------------------ rebalance

    def leave_group(self, c: int) -> None:
        """Member ``c``'s session expired: its partitions go to the surviving members."""
        if self.preset.partitioned and c in self.group:
            self.group.discard(c)
            self._rebalance()

    def join_group(self, c: int) -> None:
        """Member ``c`` is back: the group rebalances and gives it its share again."""
        if self.preset.partitioned and c not in self.group:
            self.group.add(c)
            self._rebalance()

    def owner(self, lane: int) -> int:
        """The member reading ``lane`` (-1: none, while it waits for a member or a handover)."""
        owners = self.lane_owners[lane]
        return owners[0] if owners else -1

    def _rebalance(self) -> None:
        # Partition p goes to the (p mod k)-th live member: with every member live this is the
        # initial assignment (p mod count).
        members = sorted(self.group)
        held: dict[int, set[int]] = {}  # live member -> lanes it holds unfinished deliveries of
        for lane in range(self.lanes):
            new = members[lane % len(members)] if members else -1
            if lane in self._handover:
                old = self._handover.pop(lane)[0]
            else:
                old = self.owner(lane)
                if old == new:
                    continue
                self._detach(lane, old)
            if old >= 0 and old != new and old in self.group:
                if old not in held:
                    held[old] = self._held_lanes(old)
                if lane in held[old]:
                    self._handover[lane] = (old, new)
                    continue
            self._attach(lane, new)
        if self._handover:
            Call(self.env, DRAIN_TICK, self._handover_tick, None)

    def _handover_tick(self, _: object) -> None:
        held: dict[int, set[int]] = {}
        for lane, (old, new) in list(self._handover.items()):
            if old in self.group:
                if old not in held:
                    held[old] = self._held_lanes(old)
                if lane in held[old]:
                    continue
            del self._handover[lane]
            self._attach(lane, new)
        if self._handover:
            Call(self.env, DRAIN_TICK, self._handover_tick, None)

    def _detach(self, lane: int, c: int) -> None:
        self.lane_owners[lane] = []
        if c >= 0 and lane in self.consumer_lanes[c]:
            self.consumer_lanes[c].remove(lane)

    def _attach(self, lane: int, c: int) -> None:
        if c < 0:
            return  # no member left: the partition waits for one
        self.lane_owners[lane] = [c]
        self.consumer_lanes[c] = sorted({*self.consumer_lanes[c], lane})
        self.offer(lane)

    def _held_lanes(self, c: int) -> set[int]:
        """Lanes member ``c`` still has deliveries of that it has not finished (one pass)."""
        row_msg = self.row_msg
        lane_of = self.lane_of if self.lanes > 1 else None
        rows = [*self.buffer[c], *self.hand[c]]
        if self.track:
            row_consumer = self.row_consumer
            rows += [r for r in self.pending if r >= 0 and row_consumer[r] == c]
        if lane_of is None:
            return {0} if rows else set()
        return {lane_of[row_msg[r]] for r in rows}

    # ------------------------------------------------------------------ faults

    def add_copy(self, i: int) -> int:
        b = super().add_copy(i)
        if self.max_length:
            self.position.append(0)
        if self.lanes > 1:
            self.lane_of.append(0)
            self._keys.append(self._keys[i])  # a copy goes to its message's partition
        return b

    def lose_stored(self, lost: Callable[[int], bool]) -> None:
        # Entries after the last sync form the log's tail, but filtering keeps this obviously
        # right (a kill is rare; the log is at most the run's messages).
        for lane, log in enumerate(self.logs):
            read = self.cursor[lane]
            kept = [i for i in log if not lost(i)]
            self.cursor[lane] = sum(1 for i in log[:read] if not lost(i))
            self.logs[lane] = kept
            if self.max_length:
                for at, i in enumerate(kept):
                    self.position[i] = at
            self.redeliveries[lane] = deque(i for i in self.redeliveries[lane] if not lost(i))
        self.forget_pending(lost)

    def lose_all(self) -> None:
        self.logs = [[] for _ in range(self.lanes)]
        self.cursor = [0] * self.lanes
        self.redeliveries = [deque() for _ in range(self.lanes)]
        self.forget_pending()
