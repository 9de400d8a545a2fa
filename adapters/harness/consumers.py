"""Consumers: competing consumers that fetch, record, process for a drawn time and ack.

Each consumer runs as its own task, so a fault can crash one mid-message (nothing acked, its
connection dropped) and start it again under the same index and broker-side name.

A consumer's fetch and ack calls have deadlines (a client library stuck in a call must not hang
the run), but a consumer that keeps up fetches a few messages at a time, and an
``asyncio.timeout`` per call (a timer armed and cancelled each time) was a measurable share of
the harness's cost per message. So each consumer stores the deadline of the call in hand in a
slot, and one watchdog task per group looks at the slots every :data:`GUARD_TICK`: a call past
its deadline has its consumer's task cancelled, and the consumer turns that cancellation into
the :class:`TimeoutError` the call would have raised (up to one tick late).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from brokerlab.adapters.harness.adapter import (
    CLOSE_TIMEOUT,
    FETCH_BACKOFF,
    FETCH_BACKOFF_MAX,
    FETCH_GRACE,
    FETCH_WAIT,
    BrokerAdapter,
)
from brokerlab.adapters.harness.clock import TICK, now, sleep_until
from brokerlab.adapters.harness.recording import DeliveryLog
from brokerlab.core.load import draw
from brokerlab.core.scenario import Scenario

#: How often the watchdog looks for a fetch or ack past its deadline (seconds).
GUARD_TICK = TICK
#: Deadline of a fetch: the adapter's own wait plus the grace a client library may take.
FETCH_DEADLINE = FETCH_WAIT + FETCH_GRACE


class ConsumerGroup:
    """Competing consumers: fetch, record, process (drawn time), ack as the scenario says."""

    def __init__(
        self,
        adapter: BrokerAdapter,
        scenario: Scenario,
        deliveries: DeliveryLog,
        processing: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        self.adapter = adapter
        self.config = scenario.consumers
        self.log = deliveries
        self._processing = processing.tolist()
        self._next_draw = 0
        self._rng = rng
        self.errors: list[float] = []
        self.error_kinds: dict[str, int] = {}
        #: Set at the end of the drain: consumers finish the batch in hand and return. (Cancelling
        #: a consumer inside a blocking client read can leave the client library stuck.)
        self.stopping = False
        #: Each consumer's running task (see :meth:`start`); a crash removes it.
        self.tasks: dict[int, asyncio.Task[None]] = {}
        #: Processing time multiplier per consumer while a slow-consumer fault is on.
        self.slowdown: dict[int, float] = {}
        #: Per consumer: monotonic deadline of the fetch or ack in hand (``inf``: none).
        self._guards: dict[int, list[float]] = {}
        #: Consumers whose task the watchdog cancelled for a call past its deadline.
        self._expired: set[int] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def start(self, consumer: int, reconnect: bool = False) -> None:
        """Run one consumer as a task (after connecting again, for a restart after a crash)."""
        self.tasks[consumer] = asyncio.create_task(self._live(consumer, reconnect))
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())

    @property
    def helpers(self) -> list[asyncio.Task[None]]:
        """Tasks besides the consumers' own (the deadline watchdog), to stop with them."""
        return [self._watchdog] if self._watchdog is not None else []

    async def _watch(self) -> None:
        """Cancel a consumer whose fetch or ack is past its deadline (see the module doc)."""
        while not self.stopping or any(not task.done() for task in self.tasks.values()):
            await asyncio.sleep(GUARD_TICK)
            t = now()
            for consumer, guard in self._guards.items():
                if guard[0] < t:
                    task = self.tasks.get(consumer)
                    guard[0] = math.inf
                    if task is not None and not task.done():
                        self._expired.add(consumer)
                        task.cancel()

    def _timed_out(self, consumer: int) -> bool:
        """In a consumer's ``except CancelledError``: was it the watchdog (a call past its
        deadline, to carry on from) rather than a crash or the end of the run (to obey)?"""
        if consumer not in self._expired:
            return False
        self._expired.discard(consumer)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    async def _live(self, consumer: int, reconnect: bool) -> None:
        if reconnect:
            backoff = FETCH_BACKOFF
            while not self.stopping:
                try:
                    async with asyncio.timeout(FETCH_GRACE):
                        await self.adapter.open_consumer(consumer)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # broker away: a restarted process retries too
                    self._error(error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, FETCH_BACKOFF_MAX)
        await self.run(consumer)

    async def crash(self, consumer: int) -> None:
        """Kill one consumer mid-message: its task is cancelled wherever it is, nothing is acked,
        and its connection is dropped. Deliveries it held keep ``t_done`` empty."""
        task = self.tasks.pop(consumer, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.adapter.close_consumer(consumer)
        except Exception as error:
            self.adapter.survived_error("dropping a crashed consumer's connection", error)

    def restart(self, consumer: int) -> None:
        """Start a crashed consumer again, with the same index (and broker-side name)."""
        if not self.stopping and consumer not in self.tasks:
            self.start(consumer, reconnect=True)

    def _draws(self, consumer: int, count: int) -> list[float]:
        """The next ``count`` processing times; pre-drawn per delivery, topped up (in the same
        steps as one at a time would) if redeliveries use them up."""
        start = self._next_draw
        end = start + count
        while end > len(self._processing):
            more = draw(self.config.processing, self._rng, max(1024, len(self._processing)))
            self._processing.extend(more.tolist())
        self._next_draw = end
        values = self._processing[start:end]
        factor = self.slowdown.get(consumer)
        if factor is not None:
            values = [value * factor for value in values]
        return values

    async def run(self, consumer: int) -> None:
        """One consumer's loop; runs until :attr:`stopping` (or cancellation as a last resort)."""
        adapter, log = self.adapter, self.log
        prefetch, mode = self.config.prefetch, self.config.ack
        backoff = FETCH_BACKOFF
        guard = self._guards[consumer] = [math.inf]
        self._expired.discard(consumer)
        while not self.stopping:
            guard[0] = now() + FETCH_DEADLINE
            failure: BaseException | None = None
            try:
                received = await adapter.fetch(consumer, prefetch, FETCH_WAIT)
            except asyncio.CancelledError:
                if not self._timed_out(consumer):
                    raise
                failure = TimeoutError("fetch past its deadline")
            except Exception as error:
                failure = error
            finally:
                guard[0] = math.inf
            if failure is not None:
                self._error(failure)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, FETCH_BACKOFF_MAX)
                continue
            backoff = FETCH_BACKOFF
            if not received:
                continue
            first_row, positions = log.record(received, consumer, now())
            if mode == "before":
                await self._ack(consumer, [item[2] for item in received])
            times = self._draws(consumer, len(received))
            if not any(times):  # no processing time: the whole batch finishes together
                if mode == "after":
                    await self._ack(consumer, [item[2] for item in received])
                end = first_row + len(received)
                log.t_done[first_row:end] = [now()] * len(received)
                log.complete(positions)
                log.unexpected += positions.count(-1)
                continue
            to_ack: list[Any] = []
            waiting: list[int] = []  # rows processed, waiting for their ack
            for i, (_payload, _no, handle) in enumerate(received):
                if times[i] > 0:
                    await sleep_until(now() + times[i])
                waiting.append(i)
                if mode == "after":
                    to_ack.append(handle)
                # Ack together what finished together; a message with processing time waits.
                if i + 1 == len(received) or times[i + 1] > 0:
                    if to_ack:
                        try:
                            await self._ack(consumer, to_ack)
                        except asyncio.CancelledError:
                            # Crashed with the ack in flight: processing finished, and whether
                            # the broker applied the ack shows as a redelivery (or none), not
                            # as business loss.
                            self._finish(first_row, positions, waiting)
                            raise
                        to_ack = []
                    self._finish(first_row, positions, waiting)
                    waiting = []
            log.unexpected += positions.count(-1)

    def _finish(self, first_row: int, positions: list[int], rows: list[int]) -> None:
        """Rows of one fetched batch processed to the end (and acked, or their ack sent)."""
        t_done = now()
        for j in rows:
            self.log.t_done[first_row + j] = t_done
        self.log.complete([positions[j] for j in rows])

    async def _ack(self, consumer: int, handles: list[Any]) -> None:
        guard = self._guards[consumer]
        guard[0] = now() + FETCH_GRACE
        try:
            await self.adapter.ack(consumer, handles)
        except asyncio.CancelledError:
            if not self._timed_out(consumer):
                raise
            self._error(TimeoutError("ack past its deadline"))
        except Exception as error:  # an unacked message is redelivered: that is the test
            self._error(error)
        finally:
            guard[0] = math.inf

    def _error(self, error: BaseException) -> None:
        self.errors.append(now())
        name = type(error).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1
