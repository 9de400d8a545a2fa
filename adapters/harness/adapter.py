"""The adapter interface: what one broker must say (publish a batch, fetch a batch, ack, set up,
tear down, drop and reconnect a client); the harness does everything else.

Writing an adapter for a new broker means subclassing :class:`BrokerAdapter` and registering a
:class:`~brokerlab.adapters.targets.Target` record for it (see that module).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from brokerlab.adapters.harness.redaction import Scrubber
from brokerlab.core.scenario import Scenario

#: How long one fetch waits for messages before the consumer loop checks for stop.
FETCH_WAIT = 0.25
#: Extra time a fetch (or connect, or ack) may take beyond ``FETCH_WAIT`` before it counts as hung.
FETCH_GRACE = 5.0
#: A client whose fetch or connect fails waits this long before trying again (doubling, capped).
#: The cap is short so a client is back within half a second of a broker restart.
FETCH_BACKOFF = 0.05
FETCH_BACKOFF_MAX = 0.5
#: Longest ``setup`` (with opening the consumers) may take.
SETUP_TIMEOUT = 30.0
#: Longest ``adapter.close`` may take (deleting the run's stream, closing connections).
CLOSE_TIMEOUT = 10.0


class PublishRejected(Exception):
    """The broker answered "no" to a publish: the message was definitely not stored."""


#: What a consumer fetch yields per message: payload, delivery number (1 = first), ack handle.
Received = tuple[bytes, int, Any]

#: Per message of a published batch: the monotonic time its ack arrived (NaN for fire-and-forget)
#: or the exception that ended it (:class:`PublishRejected`: failed; anything else: unknown).
PublishResults = list[float | BaseException]


@dataclass(frozen=True)
class RunNames:
    """Unique per-run names, so runs never see each other's messages on a shared broker.

    Generic for every broker: each adapter derives the names of its own objects (stream key,
    subject, stream name...) from the run id with :meth:`joined` or :meth:`identifier`, so a new
    broker needs no new field here.
    """

    run_id: str  # letters, digits and "-" only: "<UTC time>-<8 hex digits>"
    group: str  # the scenario's consumer group / durable name, made broker-safe

    def joined(self, separator: str) -> str:
        """``brokerlab<separator><run id>``, e.g. the Redis key ``brokerlab:<run id>``."""
        return f"brokerlab{separator}{self.run_id}"

    def identifier(self) -> str:
        """``BROKERLAB_<run id>`` with letters, digits and ``_`` only (e.g. a JetStream stream)."""
        return "BROKERLAB_" + re.sub(r"[^A-Za-z0-9_]", "_", self.run_id)


class BrokerAdapter(ABC):
    """How one broker publishes, delivers and acknowledges; the harness does everything else.

    Lifecycle, driven by :func:`brokerlab.adapters.harness.run.play`: ``setup`` →
    ``open_consumers`` → (``publish`` ..., ``fetch`` / ``ack`` ...) → ``flush`` → ``close``
    (always, even after errors; deletes what setup created). Every awaited call must give up
    within its own timeout or the harness's. Optional hooks (``close_consumer``,
    ``close_producer``...) are needed only for the faults the target's record lists.
    """

    #: Target name, e.g. ``"redis-streams"``.
    target: str = ""
    #: Run-wide numbers of the consumers this adapter plays, when a worker process plays a share
    #: of them (broker-side consumer names must be unique across workers); None: ``0..count-1``.
    consumer_ids: Sequence[int] | None = None

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
        #: What the lab knows of a broker it started itself (``EmbeddedBroker.info``: kind,
        #: ports, endpoints), None for a broker given by URL. Set before :meth:`setup`.
        self.own_broker: dict[str, Any] | None = None

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

    async def backlog(self) -> dict[str, int] | None:
        """What still sits at the broker for this run's consumers, when the broker can say
        (e.g. ``{"undelivered": 12, "unacked": 3}``); None where it cannot.

        Asked when a drain times out: messages still at the broker were not lost, only not
        drained in time, and run.json's ``drain`` says so.
        """
        return None

    @abstractmethod
    async def close(self) -> None:
        """Delete this run's broker objects and disconnect; must not raise."""

    async def broker_stats(self) -> dict[str, float]:
        """The broker's own view of this run now (``broker_backlog``, ``broker_unacked``: see
        ``brokerlab.core.trace.BROKER_COLUMNS``), sampled a few times a second into the
        timeline; empty when the broker has nothing to say. One cheap request, no side effects.
        """
        return {}

    @property
    def fire_and_forget(self) -> bool:
        """True when the broker never confirms publishes (t_acked stays NaN)."""
        return False

    @property
    def redelivers(self) -> bool:
        """Whether a message not yet completed can still come: the broker keeps it until it is
        acknowledged (and hands it out again) or holds a backlog for the consumers.

        False (NATS core): whatever the consumers have not received by the time they go
        quiet will never come, so the drain need not wait out its whole ``drain_timeout``.
        """
        return True

    def dedup_ids_wanted(self) -> bool:
        """Whether publishes carry a broker-level dedup id (the lab's msg id)."""
        return False


AdapterFactory = Callable[[str, Scenario, RunNames], BrokerAdapter]


async def close_adapter(adapter: BrokerAdapter) -> None:
    """``adapter.close()`` within :data:`CLOSE_TIMEOUT`; a failure is counted, never raised."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await adapter.close()
    except Exception as error:
        adapter.survived_error("tearing down (the run's broker objects may remain)", error)
