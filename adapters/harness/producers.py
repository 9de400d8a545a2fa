"""Producers: open loop on the plan's intended times, acks, the retry policy, publish timeouts.

Open loop: a producer never waits for the previous message before sending the next one (unless
the scenario asks for ``confirm: sync``); when it falls behind it sends everything due at once,
so ``publish_delay = t_sent - t_intended`` shows the harness's own lag instead of hiding it.
Each producer runs as its own task, so a fault can crash one and start it again; a crash bumps
its generation so late answers to a dead process are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brokerlab.adapters.harness.adapter import (
    CLOSE_TIMEOUT,
    FETCH_BACKOFF,
    FETCH_BACKOFF_MAX,
    FETCH_GRACE,
    BrokerAdapter,
    PublishRejected,
    PublishResults,
)
from brokerlab.adapters.harness.clock import now, sleep_until
from brokerlab.adapters.harness.payload import encode_payload, payload_struct
from brokerlab.adapters.harness.recording import ACKED, FAILED, UNKNOWN, SendLog
from brokerlab.core.load import LoadPlan
from brokerlab.core.scenario import Scenario

#: Most messages one producer puts in one publish call when it is behind schedule.
MAX_BATCH = 256
#: Most unacknowledged messages per producer with ``confirm: async`` (open loop, but bounded).
MAX_IN_FLIGHT = 8192


@dataclass
class _Producer:
    """One producer's slice of the plan and its in-flight state."""

    index: int
    rows: np.ndarray  # plan rows, in send order
    due: np.ndarray  # absolute monotonic intended send times
    next: int = 0
    in_flight: int = 0
    retries: deque[tuple[float, int]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when every message is settled; cleared by a crash until the restart finishes.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: Bumped by a crash: answers to publishes of an older generation reach a dead process.
    generation: int = 0


class ProducerGroup:
    """Plays some producers of a plan against an adapter: open loop, acks, retries, timeouts.

    Which producers is a parameter so that a plan can be split across worker processes; each
    part fills the rows of its own producers in a :class:`SendLog`.
    """

    def __init__(
        self,
        adapter: BrokerAdapter,
        scenario: Scenario,
        plan: LoadPlan,
        log: SendLog,
        producers: Sequence[int],
        t0: float,
    ) -> None:
        self.adapter = adapter
        self.config = scenario.producers
        self.plan = plan
        self.log = log
        self.t0 = t0
        self.sync = self.config.confirm == "sync"
        self.max_batch = 1 if self.sync else MAX_BATCH
        self.max_in_flight = 1 if self.sync else MAX_IN_FLIGHT
        self.with_ids = adapter.dedup_ids_wanted()
        # Python lists: element access in the send loop is much cheaper than on NumPy arrays.
        self._seq = plan.seq.tolist()
        self._key = plan.key.tolist()
        self._size = plan.size.tolist()
        self._t_intended = plan.t_intended.tolist()
        #: One struct for every payload when the plan has one message size (the usual case).
        sizes = np.unique(plan.size)
        self._pack = payload_struct(int(sizes[0])).pack if len(sizes) == 1 else None
        self._producers = [
            _Producer(p, rows, t0 + plan.t_intended[rows])
            for p in producers
            for rows in [np.flatnonzero(plan.producer == p)]
        ]
        self._by_index = {producer.index: producer for producer in self._producers}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None

    async def run(self) -> None:
        """Send every message of these producers and wait until each is settled.

        Each producer runs as its own task so a fault can crash and restart one of them; the
        group is done when every producer has finished (after its restart, if it crashed).
        """
        for producer in self._producers:
            self._tasks[producer.index] = asyncio.create_task(self._play(producer))
        try:
            for producer in self._producers:
                await producer.finished.wait()
            if self._failure is not None:
                raise self._failure
        finally:
            for task in self._tasks.values():
                task.cancel()

    async def _play(self, producer: _Producer, reconnect: bool = False) -> None:
        try:
            if reconnect:
                await self._reconnect(producer)
            await self._run_one(producer)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # a bug: end the run with it instead of hanging
            self._failure = error
        producer.finished.set()

    async def _reconnect(self, producer: _Producer) -> None:
        """A restarted producer connects first, retrying while the broker is unreachable."""
        backoff = FETCH_BACKOFF
        while True:
            try:
                async with asyncio.timeout(FETCH_GRACE):
                    await self.adapter.open_producer(producer.index)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.adapter.survived_error("reconnecting a restarted producer (retried)", error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, FETCH_BACKOFF_MAX)

    # ---- faults

    async def crash(self, index: int) -> None:
        """Stop producer ``index`` as a process crash would, and drop its connection.

        What it had in flight, or queued for a retry, ends with the process: unknown if the
        broker may have it, failed if every attempt was refused. Messages it has not sent yet
        stay in the plan and go out after :meth:`restart` with their original intended times,
        so ``publish_delay`` shows the outage.
        """
        producer = self._by_index.get(index)
        if producer is None:
            return
        producer.generation += 1
        producer.finished.clear()
        task = self._tasks.pop(index, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        log = self.log
        queued = np.asarray([row for _t, row in producer.retries], dtype="int64")
        producer.retries.clear()
        producer.in_flight = 0
        started = producer.rows[: producer.next]
        open_rows = started[~log.settled[started]]
        # In flight or cut off mid-publish: nobody will ever know; queued retries: as last seen.
        unknown = ~np.isin(open_rows, queued) | log.uncertain[open_rows]
        log.uncertain[open_rows] |= unknown
        log.outcome[open_rows] = np.where(unknown, UNKNOWN, FAILED)
        log.settled[open_rows] = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.adapter.close_producer(index)
        except Exception as error:
            self.adapter.survived_error("dropping a crashed producer's connection", error)

    def restart(self, index: int) -> None:
        """Start producer ``index`` again after :meth:`crash`: it reconnects, then catches up."""
        producer = self._by_index.get(index)
        if producer is None or index in self._tasks:
            return
        self._tasks[index] = asyncio.create_task(self._play(producer, reconnect=True))

    # ---- sending

    async def _run_one(self, producer: _Producer) -> None:
        total = len(producer.rows)
        while True:
            while producer.in_flight >= self.max_in_flight:
                producer.wake.clear()
                await producer.wake.wait()
            t = now()
            if producer.retries and producer.retries[0][0] <= t:
                batch = []
                while producer.retries and producer.retries[0][0] <= t:
                    batch.append(producer.retries.popleft()[1])
                    if len(batch) >= self.max_batch:
                        break
                await self._send(producer, np.asarray(batch, dtype="int64"))
            elif producer.next < total:
                due = producer.due[producer.next]
                if due > t:
                    await sleep_until(self._wake_time(producer, due))
                    continue
                end = int(np.searchsorted(producer.due, t, side="right"))
                end = max(producer.next + 1, min(end, producer.next + self.max_batch, total))
                batch_rows = producer.rows[producer.next : end]
                producer.next = end
                await self._send(producer, batch_rows)
            elif producer.in_flight or producer.retries:
                producer.wake.clear()
                if producer.retries:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, producer.retries[0][0] - now())):
                            await producer.wake.wait()
                else:
                    await producer.wake.wait()
            else:
                return

    @staticmethod
    def _wake_time(producer: _Producer, due: float) -> float:
        """Wake for the next send, or earlier for a retry that comes due first."""
        if producer.retries:
            return min(due, producer.retries[0][0])
        return due

    async def _send(self, producer: _Producer, rows: np.ndarray) -> None:
        log = self.log
        generation = producer.generation
        row_list = rows.tolist()
        seq, key, size, t_int = self._seq, self._key, self._size, self._t_intended
        index = producer.index
        pack = self._pack
        if pack is not None:
            payloads = [pack(index, seq[r], key[r], t_int[r]) for r in row_list]
        else:
            payloads = [encode_payload(index, seq[r], key[r], t_int[r], size[r]) for r in row_list]
        dedup_ids = None
        if self.with_ids:
            dedup_ids = [self._dedup_id(index, seq[r], int(log.attempts[r])) for r in row_list]
        t_sent = now()
        first = log.attempts[rows] == 0
        log.t_sent[rows[first]] = t_sent
        log.attempts[rows] += 1
        try:
            pending = await self.adapter.publish(index, payloads, dedup_ids)
        except Exception as error:  # nothing reached the broker
            self._settle(producer, row_list, [PublishRejected(str(error))] * len(row_list))
            return
        if pending is None:  # fire-and-forget: sent is all we will ever know
            log.outcome[rows] = ACKED
            log.settled[rows] = True
            return
        future = asyncio.ensure_future(pending)
        producer.in_flight += len(row_list)
        timer = asyncio.get_running_loop().call_later(self.config.publish_timeout, future.cancel)
        future.add_done_callback(
            lambda done: self._on_done(producer, generation, row_list, timer, done)
        )

    def _dedup_id(self, producer: int, seq: int, attempts: int) -> str:
        """Broker dedup id: the msg id, plus the attempt when a retry must look new."""
        if self.config.retry == "new-id" and attempts > 0:
            return f"{producer}:{seq}:{attempts}"
        return f"{producer}:{seq}"

    def _on_done(
        self,
        producer: _Producer,
        generation: int,
        rows: list[int],
        timer: asyncio.TimerHandle,
        done: Any,
    ) -> None:
        timer.cancel()
        if done.cancelled():
            results: PublishResults = [TimeoutError("publish timeout")] * len(rows)
        elif done.exception() is not None:
            results = [done.exception()] * len(rows)
        else:
            results = done.result()
        if generation != producer.generation:
            # Sent before a crash: an ack that still made it counts, nothing is retried.
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, float):
                    self.log.t_acked[row] = result
                    self.log.outcome[row] = ACKED
            return
        producer.in_flight -= len(rows)
        self._settle(producer, rows, results)
        producer.wake.set()

    def _settle(self, producer: _Producer, rows: list[int], results: PublishResults) -> None:
        log = self.log
        try:  # fast path: every message acked
            times = np.asarray(results, dtype="float64")
        except (TypeError, ValueError):
            times = None
        if times is not None:
            log.t_acked[rows] = times
            log.outcome[rows] = ACKED
            log.settled[rows] = True
            return
        retry = self.config.retry != "none"
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, float):
                log.t_acked[row] = result
                log.outcome[row] = ACKED
                log.settled[row] = True
                continue
            if not isinstance(result, PublishRejected):
                log.uncertain[row] = True
            attempts = int(log.attempts[row])
            if retry and attempts < self.config.max_attempts:
                producer.retries.append((now() + self.config.retry_backoff, row))
            else:
                log.outcome[row] = UNKNOWN if log.uncertain[row] else FAILED
                log.settled[row] = True

    def abandon(self) -> None:
        """After a hard deadline: in-flight messages become unknown, the rest stay failed."""
        log = self.log
        for producer in self._producers:
            rows = producer.rows[~log.settled[producer.rows]]
            log.uncertain[rows] |= log.attempts[rows] > 0
            log.outcome[rows] = np.where(log.uncertain[rows], UNKNOWN, FAILED)
