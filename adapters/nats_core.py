"""NATS core: publish to a per-run subject, consumers share a queue group; at-most-once.

Also home of :class:`NatsConnections`, the connection handling both NATS targets share (connect
with timeouts, collect errors without credentials, close everything).

Consumers receive through a subscription callback into a bounded buffer of ``pending_limit``
messages, dropping what does not fit, which is what nats-py does on its own pending queue for a
slow consumer; the buffer lets the harness fetch many messages per await instead of paying for
nats-py's ``next_msg`` task per message.
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

from adapters.harness import BrokerAdapter, Received, Scrubber

#: Client library and version, for run.json.
CLIENT = f"nats-py {version('nats-py')}"
#: Seconds to connect, and to flush or close at the end.
CONNECT_TIMEOUT = 5.0
#: Reconnect attempts per connection during a run, and the wait between them (nats-py: 2 s).
MAX_RECONNECTS = 60
RECONNECT_WAIT = 0.5
#: nats-py's own pending bytes limit per subscription; the message limit is the scenario's.
PENDING_BYTES = 1 << 30


class NatsConnections:
    """Opens and closes a run's NATS connections; errors are kept, scrubbed, for warnings."""

    def __init__(self, url: str, scrub: Scrubber) -> None:
        self.url = url
        self.scrub = scrub
        self.clients: list[Client] = []
        self.errors: dict[str, int] = {}

    async def connect(self, name: str) -> Client:
        async def on_error(error: Exception) -> None:
            kind = self.scrub(type(error).__name__)
            self.errors[kind] = self.errors.get(kind, 0) + 1

        try:
            # nats-py retries the first connect like a reconnect; a run should fail fast instead.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                client = await nats.connect(
                    servers=[self.url],
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
        self.messages: deque[bytes] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0

    async def on_message(self, msg: Msg) -> None:
        if len(self.messages) >= self.limit:
            self.dropped += 1  # slow consumer: NATS core does not keep it for anyone
            return
        self.messages.append(msg.data)
        self.ready.set()


class NatsCoreAdapter(BrokerAdapter):
    """Subject ``brokerlab.<run id>``, queue group ``consumers.group``, fire-and-forget publish."""

    target = "nats"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections = NatsConnections(self.url, self.scrub)
        self.publisher: Client | None = None
        self.inboxes: list[_Inbox] = []

    @property
    def fire_and_forget(self) -> bool:
        return True

    async def setup(self) -> None:
        self.publisher = await self.connections.connect(f"brokerlab-{self.names.run_id}-pub")
        version = self.publisher.connected_server_version
        self.info.update(
            {
                "server_version": f"{version.major}.{version.minor}.{version.patch}",
                "subject": self.names.subject,
                "queue_group": self.names.group,
                "pending_limit": self.scenario.broker.pending_limit,
                "client": CLIENT,
            }
        )

    async def open_consumers(self, count: int) -> None:
        limit = self.scenario.broker.pending_limit
        for index in range(count):
            client = await self.connections.connect(f"brokerlab-{self.names.run_id}-c{index}")
            inbox = _Inbox(limit)
            await client.subscribe(
                self.names.subject,
                queue=self.names.group,
                cb=inbox.on_message,
                pending_msgs_limit=limit,
                pending_bytes_limit=PENDING_BYTES,
            )
            # Interest must reach the server before the first publish, or messages vanish.
            await client.flush(CONNECT_TIMEOUT)
            self.inboxes.append(inbox)

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> None:
        assert self.publisher is not None
        publish, subject = self.publisher.publish, self.names.subject
        for payload in payloads:
            await publish(subject, payload)
        return None

    async def flush(self) -> None:
        assert self.publisher is not None
        await self.publisher.flush(CONNECT_TIMEOUT)

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        inbox = self.inboxes[consumer]
        if not inbox.messages:
            inbox.ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await inbox.ready.wait()
        messages = inbox.messages
        count = min(max_messages, len(messages))
        return [(messages.popleft(), 1, None) for _ in range(count)]

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        """NATS core has no acknowledgements."""

    async def close(self) -> None:
        dropped = sum(inbox.dropped for inbox in self.inboxes)
        if dropped:
            self.warnings.append(f"slow consumers dropped {dropped} messages (pending limit)")
        self.warnings += self.connections.warnings()
        await self.connections.close()
