"""NATS core: publish to a per-run subject, consumers share a queue group; at-most-once.

Also home of :class:`NatsConnections`, the connection handling both NATS targets share (connect
with timeouts, collect errors without credentials, close everything).

Consumers receive through a subscription callback into a bounded buffer of ``pending_limit``
messages, dropping what does not fit, which is what nats-py does on its own pending queue for a
slow consumer; the buffer lets the harness fetch many messages per await instead of paying for
nats-py's ``next_msg`` task per message.

Every producer and consumer has its own connection (as separate processes would), so a fault can
crash or cut off one of them. nats-py reconnects by itself (:data:`MAX_RECONNECTS` tries,
:data:`RECONNECT_WAIT` apart: half a minute, far longer than a broker restart), re-subscribing and
buffering publishes meanwhile; a crashed consumer's buffered messages are simply gone, which is
NATS core's at-most-once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from brokerlab.adapters.harness import BrokerAdapter, Received, Scrubber

#: Client library and version, for run.json.
CLIENT = f"nats-py {version('nats-py')}"
#: Seconds to connect, and to flush or close at the end.
CONNECT_TIMEOUT = 5.0
#: Reconnect attempts per connection during a run, and the wait between them (nats-py: 2 s):
#: short waits, so a client is back within a fraction of a second after a broker restart, and
#: enough of them for half a minute of outage.
MAX_RECONNECTS = 150
RECONNECT_WAIT = 0.2
#: nats-py's own pending bytes limit per subscription; the message limit is the scenario's.
PENDING_BYTES = 1 << 30


class NatsConnections:
    """Opens and closes a run's NATS connections; errors are kept, scrubbed, for warnings."""

    def __init__(self, url: str, scrub: Scrubber) -> None:
        self.url = url
        self.scrub = scrub
        self.clients: list[Client] = []
        self.errors: dict[str, int] = {}

    async def connect(self, name: str, url: str | None = None) -> Client:
        """A new connection named ``name`` to ``url`` (default: the broker's URL)."""

        async def on_error(error: Exception) -> None:
            kind = self.scrub(type(error).__name__)
            self.errors[kind] = self.errors.get(kind, 0) + 1

        try:
            # nats-py retries the first connect like a reconnect; a run should fail fast instead.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                client = await nats.connect(
                    servers=[url or self.url],
                    name=name,
                    connect_timeout=CONNECT_TIMEOUT,
                    reconnect_time_wait=RECONNECT_WAIT,
                    max_reconnect_attempts=MAX_RECONNECTS,
                    error_cb=on_error,
                )
        except TimeoutError:
            raise ConnectionError(
                f"no NATS server answered at {self.scrub.redacted_url} within {CONNECT_TIMEOUT:g} s"
            ) from None
        self.clients.append(client)
        return client

    def warnings(self) -> list[str]:
        if not self.errors:
            return []
        kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(self.errors.items()))
        return [f"NATS client errors: {kinds}"]

    async def close_one(self, client: Client) -> None:
        """Close one connection now (a crashed client), without draining anything."""
        if client in self.clients:
            self.clients.remove(client)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.close()

    async def close(self) -> None:
        for client in reversed(self.clients):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await client.close()
        self.clients.clear()


class _Inbox:
    """A consumer's bounded buffer, filled by its subscription callback."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: deque[Received] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0

    async def on_message(self, msg: Msg) -> None:
        messages = self.messages
        if len(messages) >= self.limit:
            self.dropped += 1  # slow consumer: NATS core does not keep it for anyone
            return
        if not messages:  # a consumer waits only on an empty inbox
            self.ready.set()
        messages.append((msg.data, 1, None))


class NatsCoreAdapter(BrokerAdapter):
    """Subject ``brokerlab.<run id>``, queue group ``consumers.group``, fire-and-forget publish."""

    target = "nats"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The run's subject; consumers share the queue group ``names.group``.
        self.subject = self.names.joined(".")
        self.connections = NatsConnections(self.url, self.scrub)
        self.publisher: Client | None = None
        #: per producer its connection; None while crashed (worker adapters share ``publisher``)
        self.producers: dict[int, Client | None] = {}
        self.consumers: dict[int, Client] = {}
        self.inboxes: list[_Inbox] = []
        self.lost_in_crashes = 0

    @property
    def fire_and_forget(self) -> bool:
        return True

    @property
    def redelivers(self) -> bool:
        """NATS core keeps nothing: a message no subscriber took when it was published, or one
        a crashed consumer held, is gone."""
        return False

    async def setup(self) -> None:
        self.publisher = await self.connections.connect(
            f"brokerlab-{self.names.run_id}-control", self.url_for("control")
        )
        for producer in range(self.scenario.producers.count):
            await self.open_producer(producer)
        version = self.publisher.connected_server_version
        self.info.update(
            {
                "server_version": f"{version.major}.{version.minor}.{version.patch}",
                "subject": self.subject,
                "queue_group": self.names.group,
                "pending_limit": self.scenario.broker.pending_limit,
                "client": CLIENT,
            }
        )

    async def open_producer(self, producer: int) -> None:
        name = f"brokerlab-{self.names.run_id}-p{producer}"
        url = self.url_for(f"producer-{producer}")
        self.producers[producer] = await self.connections.connect(name, url)

    async def close_producer(self, producer: int) -> None:
        client, self.producers[producer] = self.producers.get(producer), None
        if client is not None:
            await self.connections.close_one(client)

    async def open_consumers(self, count: int) -> None:
        self.inboxes = [_Inbox(self.scenario.broker.pending_limit) for _ in range(count)]
        for consumer in range(count):
            await self.open_consumer(consumer)

    async def open_consumer(self, consumer: int) -> None:
        limit = self.scenario.broker.pending_limit
        client = await self.connections.connect(
            f"brokerlab-{self.names.run_id}-c{consumer}", self.url_for(f"consumer-{consumer}")
        )
        inbox = _Inbox(limit)
        await client.subscribe(
            self.subject,
            queue=self.names.group,
            cb=inbox.on_message,
            pending_msgs_limit=limit,
            pending_bytes_limit=PENDING_BYTES,
        )
        # Interest must reach the server before the first publish, or messages vanish.
        await client.flush(CONNECT_TIMEOUT)
        self.consumers[consumer] = client
        self.inboxes[consumer] = inbox

    async def close_consumer(self, consumer: int) -> None:
        # What the crashed process had received but not processed dies with it.
        inbox = self.inboxes[consumer]
        self.lost_in_crashes += len(inbox.messages)
        inbox.messages.clear()
        self.inboxes[consumer] = _Inbox(inbox.limit)
        client = self.consumers.pop(consumer, None)
        if client is not None:
            await self.connections.close_one(client)

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> None:
        client = self.producers.get(producer, self.publisher)
        if client is None or client.is_closed:
            raise ConnectionError(f"producer-{producer} is not connected")
        publish, subject = client.publish, self.subject
        for payload in payloads:
            await publish(subject, payload)
        return None

    async def flush(self) -> None:
        """Push out what the clients buffered; one that cannot (broker away) keeps its loss."""
        for client in [*self.producers.values(), self.publisher]:
            if client is not None and not client.is_closed:
                try:
                    await client.flush(CONNECT_TIMEOUT)
                except Exception as error:
                    self.survived_error("flushing a publisher (what it held is lost)", error)

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        inbox = self.inboxes[consumer]
        if not inbox.messages:
            inbox.ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await inbox.ready.wait()
        messages = inbox.messages
        if len(messages) <= max_messages:
            batch = list(messages)
            messages.clear()
            return batch
        popleft = messages.popleft
        return [popleft() for _ in range(max_messages)]

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        """NATS core has no acknowledgements."""

    async def close(self) -> None:
        dropped = sum(inbox.dropped for inbox in self.inboxes)
        if dropped:
            self.warnings.append(f"slow consumers dropped {dropped} messages (pending limit)")
        if self.lost_in_crashes:
            self.warnings.append(
                f"crashed consumers took {self.lost_in_crashes} received, unprocessed messages "
                "with them (NATS core does not redeliver)"
            )
        self.warnings += self.connections.warnings()
        await self.connections.close()
