"""NATS JetStream: a per-run stream, a durable pull consumer shared by the consumers, PubAcks.

The stream and consumer are built from the scenario: storage, ``max_msgs`` (max_length),
``max_age`` (retention), ``duplicate_window`` (dedup_window), ``ack_wait`` (ack_timeout),
``max_deliver`` (max_deliveries), ``max_ack_pending``. Publishes go out with ``publish_async``
(one request per message on the connection, acks matched by reply inbox) whether the scenario
confirms sync or async; the harness decides how many may be outstanding, so the two modes differ
only in waiting, as they do for a real client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)

from adapters.harness import (
    MAX_IN_FLIGHT,
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    now,
)
from adapters.nats_core import CLIENT, CONNECT_TIMEOUT, PENDING_BYTES, NatsConnections

#: Timeout of JetStream API requests (stream and consumer management).
API_TIMEOUT = 10.0
#: Header JetStream deduplicates on, within the stream's duplicate window.
MSG_ID = "Nats-Msg-Id"
#: PubAck errors that mean "not stored" (anything else leaves the outcome unknown).
_REJECTED = (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError)


def _batch_future(futures: list[asyncio.Future[Any]]) -> asyncio.Future[PublishResults]:
    """One future for a batch of PubAck futures, with each message's own ack time.

    Cancelling it (publish timeout) cancels the PubAck futures still open, which gives their
    slots back to nats-py's pending-publish semaphore.
    """
    batch: asyncio.Future[PublishResults] = asyncio.get_running_loop().create_future()
    results: PublishResults = [0.0] * len(futures)
    remaining = len(futures)

    def settle(index: int, future: asyncio.Future[Any]) -> None:
        nonlocal remaining
        if future.cancelled():
            results[index] = TimeoutError("publish timeout")
        elif (error := future.exception()) is not None:
            results[index] = PublishRejected(str(error)) if isinstance(error, _REJECTED) else error
        else:
            results[index] = now()
        remaining -= 1
        if remaining == 0 and not batch.done():
            batch.set_result(results)

    def on_batch_done(done: asyncio.Future[PublishResults]) -> None:
        if done.cancelled():
            for future in futures:
                future.cancel()

    for index, future in enumerate(futures):
        future.add_done_callback(lambda f, i=index: settle(i, f))
    batch.add_done_callback(on_batch_done)
    return batch


class NatsJetStreamAdapter(BrokerAdapter):
    """Stream ``BROKERLAB_<run id>`` on subject ``brokerlab.<run id>``, durable ``<group>``."""

    target = "nats-jetstream"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections = NatsConnections(self.url, self.scrub)
        self.publisher: Client | None = None
        self.js: JetStreamContext | None = None
        self.subscriptions: list[JetStreamContext.PullSubscription] = []
        self.stream_created = False

    def dedup_ids_wanted(self) -> bool:
        return self.scenario.producers.retry == "same-id" or self.scenario.broker.dedup_window > 0

    def _stream_config(self) -> StreamConfig:
        broker = self.scenario.broker
        config = StreamConfig(
            name=self.names.stream,
            subjects=[self.names.subject],
            storage=StorageType.MEMORY if broker.storage == "memory" else StorageType.FILE,
            num_replicas=1,
            max_msgs=broker.max_length or -1,
            max_age=broker.retention or None,
        )
        if broker.dedup_window > 0:
            config.duplicate_window = broker.dedup_window
        return config

    def _consumer_config(self) -> ConsumerConfig:
        broker, consumers = self.scenario.broker, self.scenario.consumers
        return ConsumerConfig(
            durable_name=self.names.group,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE if consumers.ack == "none" else AckPolicy.EXPLICIT,
            ack_wait=broker.ack_timeout,
            max_deliver=broker.max_deliveries or -1,
            max_ack_pending=broker.max_ack_pending,
            filter_subject=self.names.subject,
        )

    async def setup(self) -> None:
        self.publisher = await self.connections.connect(f"brokerlab-{self.names.run_id}-pub")
        # The harness bounds outstanding publishes itself; nats-py's semaphore must not be lower.
        self.js = self.publisher.jetstream(
            timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT * 4
        )
        stream = self._stream_config()
        await self.js.add_stream(stream)
        self.stream_created = True
        await self.js.add_consumer(self.names.stream, self._consumer_config())
        version = self.publisher.connected_server_version
        self.info.update(
            {
                "server_version": f"{version.major}.{version.minor}.{version.patch}",
                "stream": self.names.stream,
                "subject": self.names.subject,
                "durable": self.names.group,
                "storage": str(stream.storage.value if stream.storage else None),
                "duplicate_window_s": stream.duplicate_window or "server default (120)",
                "msg_id_header": self.dedup_ids_wanted(),
                "client": CLIENT,
            }
        )

    async def open_consumers(self, count: int) -> None:
        for index in range(count):
            client = await self.connections.connect(f"brokerlab-{self.names.run_id}-c{index}")
            js = client.jetstream(timeout=API_TIMEOUT)
            subscription = await js.pull_subscribe_bind(
                durable=self.names.group,
                stream=self.names.stream,
                pending_bytes_limit=PENDING_BYTES,
            )
            self.subscriptions.append(subscription)

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> Awaitable[PublishResults]:
        assert self.js is not None
        publish_async, subject = self.js.publish_async, self.names.subject
        futures = []
        try:
            if dedup_ids is None:
                for payload in payloads:
                    futures.append(await publish_async(subject, payload))
            else:
                for payload, msg_id in zip(payloads, dedup_ids, strict=True):
                    futures.append(await publish_async(subject, payload, headers={MSG_ID: msg_id}))
        except Exception:
            # Part of the batch is out: let those finish, and report the rest as not sent.
            if not futures:
                raise
            rest = len(payloads) - len(futures)
            batch = _batch_future(futures)
            return _extend(batch, [PublishRejected("not sent")] * rest)
        return _batch_future(futures)

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        try:
            messages = await self.subscriptions[consumer].fetch(max_messages, timeout=wait)
        except nats.errors.TimeoutError:
            return []
        return [(msg.data, msg.metadata.num_delivered, msg) for msg in messages]

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        for msg in handles:
            await msg.ack()

    async def close(self) -> None:
        self.warnings += self.connections.warnings()
        if self.stream_created and self.js is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self.js.delete_stream(self.names.stream)  # deletes the consumer too
        await self.connections.close()


async def _extend(batch: asyncio.Future[PublishResults], tail: PublishResults) -> PublishResults:
    """The batch's results followed by ``tail`` (messages that never left the client)."""
    return [*(await batch), *tail]
