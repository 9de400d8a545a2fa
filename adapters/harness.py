"""The load harness: plays a scenario's load plan against a real broker and records the trace.

Everything all brokers share lives here once: open-loop producers that send each message at its
intended time on one monotonic clock, acknowledgement tracking, the publish retry policy, consumer
loops with processing time and ack modes, the final drain, progress and the trace tables. A broker
adapter (:class:`BrokerAdapter`) only says how to publish a batch, fetch a batch and ack.

Why the shape is what it is:

* Open loop. A producer never waits for the previous message before sending the next one (unless
  the scenario asks for ``confirm: sync``); when it falls behind it sends everything due at once,
  so ``publish_delay = t_sent - t_intended`` shows the harness's own lag instead of hiding it.
* One clock. ``time.monotonic`` is CLOCK_MONOTONIC on Linux: system-wide, so worker processes
  can share a start time; asyncio's own loop clock is the same one.
* Precise waits. asyncio rounds sleeps up to whole milliseconds (epoll), which would add up to
  1 ms to every send and every processing time; :func:`sleep_until` sleeps short of the deadline
  and yields the rest, trading a little CPU for microsecond timing.
* Cheap recording. Sends go into preallocated NumPy columns indexed by plan row; deliveries are
  appended to plain lists and turned into tables once, at the end.
* Crashable clients. Each producer and consumer runs as its own task, so a fault scheduler
  (:mod:`adapters.faults`, through :class:`RunClients`) can kill one mid-message and start it
  again; a crash bumps the producer's generation so late answers to a dead process are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import re
import struct
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit, urlunsplit

import numpy as np

from brokerlab.core.load import LoadPlan, draw, streams
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import (
    TargetResult,
    Trace,
    build_timeline,
    make_deliveries,
    make_sends,
    msg_ids,
)
from brokerlab.core.vocabulary import OUTCOMES, OutcomeCode


class FaultPlayer(Protocol):
    """What the run needs of a fault timeline player (``faults.FaultScheduler``): started on the
    run's clock with its clients, stopped at the end. A protocol, so the harness does not
    import the fault module that imports it."""

    def start(self, t0: float, clients: RunClients) -> None: ...

    async def stop(self) -> None: ...


#: Clock of the whole run (CLOCK_MONOTONIC on Linux, shared by every process on the host).
now = time.monotonic

#: Sleep this much short of a deadline and yield the rest (asyncio sleeps are ms-granular).
SPIN_WINDOW = 0.0012
#: Most messages one producer puts in one publish call when it is behind schedule.
MAX_BATCH = 256
#: Most unacknowledged messages per producer with ``confirm: async`` (open loop, but bounded).
MAX_IN_FLIGHT = 8192
#: How long one fetch waits for messages before the consumer loop checks for stop.
FETCH_WAIT = 0.25
#: Extra time a fetch may take beyond ``FETCH_WAIT`` before it counts as hung.
FETCH_GRACE = 5.0
#: Interval of progress callbacks and drain checks.
TICK = 0.2
#: The harness "fell behind" when p99 publish delay exceeds this (seconds).
BEHIND_P99 = 0.010
#: A consumer whose fetch fails waits this long before trying again (doubling, capped). The cap
#: is short so a consumer is back within half a second of a broker restart.
FETCH_BACKOFF = 0.05
FETCH_BACKOFF_MAX = 0.5
#: Longest ``adapter.close`` may take (deleting the run's stream, closing connections).
CLOSE_TIMEOUT = 10.0
#: Lead time between "everything connected" and the first intended send.
START_LEAD = 0.05
#: Batches at least this long are marked completed with NumPy instead of one by one.
VECTOR_MIN = 32

ACKED, FAILED, UNKNOWN = (int(code) for code in OutcomeCode)

# --------------------------------------------------------------------------- payloads

#: Message header: producer, seq, key, t_intended. Ids are the lab's own, never the broker's.
HEADER = struct.Struct("<IQqd")
_PADDING = bytes(1 << 20)


def encode_payload(producer: int, seq: int, key: int, t_intended: float, size: int) -> bytes:
    """Header plus zero padding up to ``size`` bytes (never shorter than the header)."""
    head = HEADER.pack(producer, seq, key, t_intended)
    pad = size - HEADER.size
    if pad <= 0:
        return head
    if pad <= len(_PADDING):
        return head + _PADDING[:pad]
    return head + bytes(pad)


def decode_payload(payload: bytes) -> tuple[int, int, int, float]:
    """``(producer, seq, key, t_intended)`` from a payload written by :func:`encode_payload`."""
    return HEADER.unpack_from(payload)


_unpack_header = HEADER.unpack_from


def payload_struct(size: int) -> struct.Struct:
    """A struct packing :data:`HEADER` and the zero padding of a ``size``-byte payload in one
    call: the same bytes as :func:`encode_payload` for that size."""
    return struct.Struct(f"{HEADER.format}{max(0, size - HEADER.size)}x")


# --------------------------------------------------------------------------- credentials

_SECRET_QUERY = re.compile(r"(?i)(password|pass|token|secret|nkey|jwt|creds)=([^&]*)")


def redact_url(url: str) -> str:
    """The URL with user name, password, token and secret query values replaced by ``***``.

    Only the redacted form may reach ``TargetResult.info``, warnings, logs or exceptions.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", parts.query)
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """Every secret a URL carries (user info parts and secret query values), for scrubbing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found += [userinfo, *userinfo.split(":")]
    found += [m.group(2) for m in _SECRET_QUERY.finditer(parts.query)]
    # Longest first, so "user:pass" is replaced before "user" breaks it apart.
    return sorted({s for s in found if s}, key=len, reverse=True)


class Scrubber:
    """Removes a URL's secrets from any text before it leaves the harness."""

    def __init__(self, url: str) -> None:
        self.redacted_url = redact_url(url)
        self._url = url
        self._secrets = url_secrets(url)

    def __call__(self, text: str) -> str:
        text = text.replace(self._url, self.redacted_url)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class RealBrokerError(RuntimeError):
    """A real-broker run could not start or finish; the message is free of credentials."""


# --------------------------------------------------------------------------- adapter hooks


class PublishRejected(Exception):
    """The broker answered "no" to a publish: the message was definitely not stored."""


#: What a consumer fetch yields per message: payload, delivery number (1 = first), ack handle.
Received = tuple[bytes, int, Any]

#: Per message of a published batch: the monotonic time its ack arrived (NaN for fire-and-forget)
#: or the exception that ended it (:class:`PublishRejected`: failed; anything else: unknown).
PublishResults = list[float | BaseException]


@dataclass(frozen=True)
class RunNames:
    """Unique per-run broker object names, so runs never see each other's messages."""

    run_id: str
    key: str  # Redis stream key
    subject: str  # NATS subject
    stream: str  # JetStream stream name
    group: str  # consumer group / durable name


class BrokerAdapter(ABC):
    """How one broker publishes, delivers and acknowledges; the harness does everything else.

    Lifecycle, driven by :func:`run_harness`: ``setup`` → ``open_consumers`` → (``publish`` ...,
    ``fetch`` / ``ack`` ...) → ``flush`` → ``close`` (always, even after errors; deletes what
    setup created). Every awaited call must give up within its own timeout or the harness's.
    """

    #: Target name, e.g. ``"redis-streams"``.
    target: str = ""

    def __init__(self, url: str, scenario: Scenario, names: RunNames) -> None:
        self.url = url
        self.scenario = scenario
        self.names = names
        self.scrub = Scrubber(url)
        #: Facts for run.json (never credentials): server version, names, client versions.
        self.info: dict[str, Any] = {"url": self.scrub.redacted_url}
        #: Harness-visible notes (e.g. messages a slow consumer dropped); already scrubbed.
        self.warnings: list[str] = []
        #: Errors the run survived (retried or ignored), by what it was doing and error kind.
        self.survived: dict[tuple[str, str], int] = {}
        #: Client name (``control``, ``producer-N``, ``consumer-N``) -> the URL that client
        #: connects to. Empty unless a fault run puts a proxy in front of each client; set
        #: before :meth:`setup`, so adapters create their connections in ``setup`` or later.
        self.client_urls: dict[str, str] = {}

    def survived_error(self, doing: str, error: BaseException) -> None:
        """Count an error the run carried on after, so the run's warnings show it.

        ``doing`` says what failed and what that means, e.g. "reclaiming stuck entries
        (retried next round)". Nothing the harness survives is dropped silently.
        """
        key = (doing, type(error).__name__)
        self.survived[key] = self.survived.get(key, 0) + 1

    def survived_warnings(self) -> list[str]:
        """One warning per kind of survived error: ``errors while <doing>: Kind ×n, ...``."""
        by_doing: dict[str, list[str]] = {}
        for (doing, kind), count in sorted(self.survived.items()):
            by_doing.setdefault(doing, []).append(f"{kind} ×{count}")
        return [f"errors while {doing}: {', '.join(kinds)}" for doing, kinds in by_doing.items()]

    def url_for(self, client: str) -> str:
        """The URL one client connects to: its own fault proxy in a fault run, else the broker.

        Clients are ``control`` (setup, teardown, reclaiming), ``producer-N`` and ``consumer-N``;
        each needs its own connection so a fault can hit one client and spare the others.
        """
        return self.client_urls.get(client, self.url)

    @abstractmethod
    async def setup(self) -> None:
        """Connect and create this run's stream / group / consumer."""

    async def open_consumers(self, count: int) -> None:
        """Make ``count`` consumers ready to fetch before any message is published."""
        for consumer in range(count):
            await self.open_consumer(consumer)

    async def open_consumer(self, consumer: int) -> None:
        """Connect one consumer (again, after :meth:`close_consumer`: a restarted process).

        Raising means the broker could not be reached; the harness tries again.
        """
        raise NotImplementedError(f"{self.target}: consumers cannot be restarted")

    async def close_consumer(self, consumer: int) -> None:
        """Drop one consumer's connection abruptly, acking nothing, as a crashed process would."""
        raise NotImplementedError(f"{self.target}: consumers cannot crash")

    async def open_producer(self, producer: int) -> None:  # noqa: B027 - optional hook
        """Connect one producer again after :meth:`close_producer` (default: lazily, on send)."""

    async def close_producer(self, producer: int) -> None:
        """Drop one producer's connection abruptly; its unanswered publishes end without acks."""
        raise NotImplementedError(f"{self.target}: producers cannot crash")

    @abstractmethod
    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> Awaitable[PublishResults] | None:
        """Send a batch now, in order, without waiting for acks.

        Returns an awaitable of per-message results, or ``None`` for fire-and-forget brokers
        (every message counts as acked when this call returns). Raising means nothing of the
        batch reached the broker (outcome failed). If the harness cancels the awaitable (publish
        timeout), the adapter must release whatever it holds for those messages.
        """

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Push out anything buffered after the last send (fire-and-forget clients)."""

    @abstractmethod
    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        """Up to ``max_messages`` for ``consumer``, waiting at most ``wait`` s for the first."""

    @abstractmethod
    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        """Acknowledge messages (handles from :meth:`fetch`)."""

    @abstractmethod
    async def close(self) -> None:
        """Delete this run's broker objects and disconnect; must not raise."""

    @property
    def fire_and_forget(self) -> bool:
        """True when the broker never confirms publishes (t_acked stays NaN)."""
        return False

    def dedup_ids_wanted(self) -> bool:
        """Whether publishes carry a broker-level dedup id (the lab's msg id)."""
        return False


AdapterFactory = Callable[[str, Scenario, RunNames], BrokerAdapter]


# --------------------------------------------------------------------------- timing


async def sleep_until(deadline: float) -> None:
    """Wake at ``deadline`` (monotonic) within microseconds, not asyncio's millisecond steps."""
    remaining = deadline - now()
    if remaining > SPIN_WINDOW:
        await asyncio.sleep(remaining - SPIN_WINDOW)
    while now() < deadline:
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- recording


class SendLog:
    """The sends table as preallocated columns, one row per plan row."""

    def __init__(self, plan: LoadPlan) -> None:
        n = len(plan)
        self.plan = plan
        self.t_sent = np.full(n, np.nan)
        self.t_acked = np.full(n, np.nan)
        self.outcome = np.full(n, FAILED, dtype="int8")  # never sent = failed, attempts 0
        self.attempts = np.zeros(n, dtype="int16")
        self.uncertain = np.zeros(n, dtype=bool)  # some attempt ended without an answer
        self.settled = np.zeros(n, dtype=bool)

    def table(self, t0: float) -> Any:
        plan = self.plan
        return make_sends(
            plan.producer,
            plan.seq,
            plan.key,
            plan.size,
            plan.t_intended,
            self.t_sent - t0,
            self.t_acked - t0,
            np.asarray(OUTCOMES, dtype=object)[self.outcome],
            self.attempts,
        )


class DeliveryLog:
    """Deliveries as append-only lists (cheap per message), plus completion per plan message."""

    def __init__(self, plan: LoadPlan) -> None:
        self.producer: list[int] = []
        self.seq: list[int] = []
        self.consumer: list[int] = []
        self.delivery_no: list[int] = []
        self.t_delivered: list[float] = []
        self.t_done: list[float] = []
        counts = np.bincount(plan.producer, minlength=int(plan.producer.max(initial=-1)) + 1)
        #: producer-major position of (producer, seq) = start[producer] + seq
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype("int64").tolist()
        self.per_producer = counts.tolist()
        self.done = np.zeros(len(plan), dtype=bool)
        self.completed = 0
        self.unexpected = 0

    def position(self, producer: int, seq: int) -> int:
        """Producer-major position of a message, or -1 if the plan never had it."""
        if producer < len(self.start) and 0 <= seq < self.per_producer[producer]:
            return self.start[producer] + seq
        return -1

    def record(
        self, received: Sequence[Received], consumer: int, t_delivered: float
    ) -> tuple[int, list[int]]:
        """Append one fetched batch (``t_done`` still NaN): its first row and each message's
        producer-major position (-1: not in the plan). One pass per column, no per-message
        calls beyond decoding the header."""
        heads = [_unpack_header(item[0]) for item in received]
        producers = [head[0] for head in heads]
        seqs = [head[1] for head in heads]
        n = len(received)
        first_row = len(self.t_done)
        self.producer += producers
        self.seq += seqs
        self.consumer += [consumer] * n
        self.delivery_no += [item[1] for item in received]
        self.t_delivered += [t_delivered] * n
        self.t_done += [math.nan] * n
        start, per, count = self.start, self.per_producer, len(self.start)
        positions = [
            start[p] + q if p < count and q < per[p] else -1
            for p, q in zip(producers, seqs, strict=True)
        ]
        return first_row, positions

    def complete(self, positions: Sequence[int]) -> None:
        """Mark messages completed (positions from :meth:`record`); count first completions."""
        done = self.done
        if len(positions) < VECTOR_MIN:
            for position in positions:
                if position >= 0 and not done[position]:
                    done[position] = True
                    self.completed += 1
            return
        found = np.asarray(positions, dtype="int64")
        fresh = found[found >= 0]
        fresh = fresh[~done[fresh]]
        if len(fresh):
            done[fresh] = True
            self.completed += len(np.unique(fresh))  # a batch may hold one message twice

    def table(self, t0: float) -> Any:
        return make_deliveries(
            msg_ids(np.asarray(self.producer, dtype="int64"), np.asarray(self.seq, dtype="int64")),
            np.asarray(self.consumer, dtype="int32"),
            np.asarray(self.delivery_no, dtype="int32"),
            np.asarray(self.t_delivered, dtype="float64") - t0,
            np.asarray(self.t_done, dtype="float64") - t0,
        )


# --------------------------------------------------------------------------- producers


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
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.adapter.close_producer(index)

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


# --------------------------------------------------------------------------- consumers


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

    def start(self, consumer: int, reconnect: bool = False) -> None:
        """Run one consumer as a task (after connecting again, for a restart after a crash)."""
        self.tasks[consumer] = asyncio.create_task(self._live(consumer, reconnect))

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
        while not self.stopping:
            try:
                async with asyncio.timeout(FETCH_WAIT + FETCH_GRACE):
                    received = await adapter.fetch(consumer, prefetch, FETCH_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._error(error)
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
                        await self._ack(consumer, to_ack)
                        to_ack = []
                    t_done = now()
                    for j in waiting:
                        log.t_done[first_row + j] = t_done
                    log.complete([positions[j] for j in waiting])
                    waiting = []
            log.unexpected += positions.count(-1)

    async def _ack(self, consumer: int, handles: list[Any]) -> None:
        try:
            async with asyncio.timeout(FETCH_GRACE):
                await self.adapter.ack(consumer, handles)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an unacked message is redelivered: that is the test
            self._error(error)

    def _error(self, error: BaseException) -> None:
        self.errors.append(now())
        name = type(error).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1


# --------------------------------------------------------------------------- the run


def _delay_warning(log: SendLog, t0: float) -> str | None:
    delay = log.t_sent - (t0 + log.plan.t_intended)
    delay = delay[~np.isnan(delay)]
    if len(delay) == 0:
        return None
    p99 = float(np.percentile(delay, 99))
    if p99 <= BEHIND_P99:
        return None
    return (
        f"the harness fell behind the offered load: p99 publish delay {p99 * 1000:.1f} ms "
        f"(over {BEHIND_P99 * 1000:.0f} ms); latencies include that lag, which is open-loop "
        "correct, but the client machine, not the broker, may be the bottleneck"
    )


def hard_deadline(scenario: Scenario, plan: LoadPlan) -> float:
    """Longest a run may take after its start: sends, every retry timing out, then the drain.

    A crashed producer sends its backlog when it restarts, so the last crash's end counts too.
    """
    producers = scenario.producers
    retries = producers.max_attempts * (producers.publish_timeout + producers.retry_backoff)
    crashes = [f.at + f.duration for f in scenario.faults if f.action == "producer-crash"]
    sending = max([plan.duration, *crashes])
    return sending + retries + scenario.drain_timeout + 5.0


async def run_harness(
    adapter: BrokerAdapter,
    scenario: Scenario,
    seed: int,
    plan: LoadPlan,
    *,
    progress: Callable[[int, int], None] | None = None,
    faults: FaultPlayer | None = None,
) -> TargetResult:
    """Play ``plan`` through ``adapter``, drain, and return the trace; always closes the adapter.

    ``faults`` plays the scenario's fault timeline on the run's clock (``t0`` is its zero); it
    is stopped, and everything it broke healed, before the adapter closes, so teardown reaches
    the broker whatever the timeline did.
    """
    scrub = adapter.scrub
    sends = SendLog(plan)
    deliveries = DeliveryLog(plan)
    rng = streams(seed)["processing"]
    processing = draw(scenario.consumers.processing, rng, len(plan) + 1024)
    consumers = ConsumerGroup(adapter, scenario, deliveries, processing, rng)
    tasks: list[asyncio.Task[Any]] = []
    warnings: list[str] = []
    t0 = now()
    try:
        try:
            async with asyncio.timeout(30.0):
                await adapter.setup()
                await adapter.open_consumers(scenario.consumers.count)
        except Exception as error:
            raise RealBrokerError(
                scrub(f"{adapter.target}: could not set up the broker: {error!r}")
            ) from None
        # Everything alive now (modules, the plan, the logs) outlives the run: keep the
        # collector from walking it again and again (a full collection took ~35 ms, a stall
        # in the middle of the measurement). Cycles made during the run are still collected.
        gc.freeze()
        for consumer in range(scenario.consumers.count):
            consumers.start(consumer)
        t0 = now() + START_LEAD
        producer_group = ProducerGroup(
            adapter, scenario, plan, sends, range(scenario.producers.count), t0
        )
        if faults is not None:
            faults.start(t0, RunClients(producer_group, consumers))
        if progress is not None:
            tasks.append(asyncio.create_task(_report_progress(progress, deliveries, len(plan))))
        send_budget = hard_deadline(scenario, plan) - scenario.drain_timeout
        try:
            async with asyncio.timeout(max(0.0, t0 + send_budget - now())):
                await producer_group.run()
                await adapter.flush()
        except TimeoutError:
            producer_group.abandon()
            warnings.append("publishing did not finish in time; unsettled sends are unknown")
        await _drain(scenario, sends, deliveries)
    finally:
        consumers.stopping = True
        gc.unfreeze()
        if faults is not None:
            await faults.stop()
        await stop_tasks([*tasks, *consumers.tasks.values()], grace=FETCH_WAIT + 1.0)
        await close_adapter(adapter)
    if progress is not None:
        progress(deliveries.completed, len(plan))
    result = _result(adapter, scenario, plan, sends, deliveries, consumers, t0, warnings, faults)
    return result


class RunClients:
    """What a fault scheduler may do to a run's clients: crash, restart and slow them down.

    The harness owns producers and consumers; this narrow view keeps the scheduler
    (:mod:`adapters.faults`) from reaching into their bookkeeping.
    """

    def __init__(self, producers: ProducerGroup, consumers: ConsumerGroup) -> None:
        self._producers = producers
        self._consumers = consumers

    async def crash_consumer(self, consumer: int) -> None:
        """Kill a consumer mid-message without acking (see :meth:`ConsumerGroup.crash`)."""
        await self._consumers.crash(consumer)

    def restart_consumer(self, consumer: int) -> None:
        """Start a crashed consumer again under the same name."""
        self._consumers.restart(consumer)

    def slow_consumer(self, consumer: int, factor: float) -> None:
        """Multiply a consumer's processing times by ``factor`` (1 ends the slowdown)."""
        if factor == 1.0:
            self._consumers.slowdown.pop(consumer, None)
        else:
            self._consumers.slowdown[consumer] = factor

    async def crash_producer(self, producer: int) -> None:
        """Kill a producer (see :meth:`ProducerGroup.crash`)."""
        await self._producers.crash(producer)

    def restart_producer(self, producer: int) -> None:
        """Start a crashed producer again; it catches up on what it missed."""
        self._producers.restart(producer)


async def close_adapter(adapter: BrokerAdapter) -> None:
    """``adapter.close()`` within :data:`CLOSE_TIMEOUT`; a failure is counted, never raised."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await adapter.close()
    except Exception as error:
        adapter.survived_error("tearing down (the run's broker objects may remain)", error)


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Let tasks end by themselves within ``grace``, then cancel them; never wait forever.

    A task that ignores cancellation (a client library stuck in a read) is left behind rather
    than hanging the run; closing the adapter's connections then ends it.
    """
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


async def _report_progress(
    progress: Callable[[int, int], None], deliveries: DeliveryLog, total: int
) -> None:
    while True:
        progress(deliveries.completed, total)
        await asyncio.sleep(TICK)


async def _drain(scenario: Scenario, sends: SendLog, deliveries: DeliveryLog) -> None:
    """Wait until every acknowledged message was delivered and completed, or the drain timeout."""
    owed = _producer_major(sends.plan, deliveries)[sends.outcome == ACKED]
    deadline = now() + scenario.drain_timeout
    while now() < deadline:
        if deliveries.done[owed].all():
            return
        await asyncio.sleep(0.02)


def _producer_major(plan: LoadPlan, deliveries: DeliveryLog) -> np.ndarray:
    """Producer-major position of every plan row (see :meth:`DeliveryLog.position`)."""
    return np.asarray(deliveries.start, dtype="int64")[plan.producer] + plan.seq


def _result(
    adapter: BrokerAdapter,
    scenario: Scenario,
    plan: LoadPlan,
    sends: SendLog,
    deliveries: DeliveryLog,
    consumers: ConsumerGroup,
    t0: float,
    warnings: list[str],
    faults: FaultPlayer | None = None,
) -> TargetResult:
    sends_table = sends.table(t0)
    deliveries_table = deliveries.table(t0)
    errors = np.asarray(consumers.errors, dtype="float64") - t0
    windows = faults.windows() if faults is not None else []
    timeline = build_timeline(sends_table, deliveries_table, windows, errors=errors)
    behind = _delay_warning(sends, t0)
    if behind and windows:
        behind += " (this run's faults, such as outages and producer crashes, delay sends too)"
    warnings = [*warnings, *([behind] if behind else []), *adapter.warnings]
    warnings += adapter.survived_warnings()
    if consumers.error_kinds:
        kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(consumers.error_kinds.items()))
        warnings.append(f"consumer errors (retried): {kinds}")
    if faults is not None:
        warnings += faults.warnings
    else:
        if scenario.faults:
            warnings.append("the fault timeline was not played on this run; it was fault-free")
        if scenario.network.delay.mean > 0:
            warnings.append("network delay was not added on this run (no fault proxy)")
    if deliveries.unexpected:
        warnings.append(f"{deliveries.unexpected} deliveries of messages this run never planned")
    info: dict[str, Any] = {
        "target": adapter.target,
        **adapter.info,
        **({"faults": faults.info} if faults is not None else {}),
        "run_id": adapter.names.run_id,
        "harness": {
            "clock": "time.monotonic",
            "workers": 1,
            "max_batch": 1 if scenario.producers.confirm == "sync" else MAX_BATCH,
            "max_in_flight": 1 if scenario.producers.confirm == "sync" else MAX_IN_FLIGHT,
            "spin_window_s": SPIN_WINDOW,
            "t0_monotonic": t0,  # the run clock's zero, for samples taken outside the harness
        },
    }
    return TargetResult(
        trace=Trace(sends=sends_table, deliveries=deliveries_table, timeline=timeline),
        faults=windows,
        info=info,
        warnings=[adapter.scrub(w) for w in warnings],
    )
