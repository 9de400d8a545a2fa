"""NATS JetStream: a per-run stream, a durable pull consumer shared by the consumers, PubAcks.

The stream and consumer are built from the scenario: storage, ``max_msgs`` (max_length),
``max_age`` (retention), ``duplicate_window`` (dedup_window), ``ack_wait`` (ack_timeout),
``max_deliver`` (max_deliveries), ``max_ack_pending``. Publishes go out with ``publish_async``
(one request per message on the connection, acks matched by reply inbox) whether the scenario
confirms sync or async; the harness decides how many may be outstanding, so the two modes differ
only in waiting, as they do for a real client.

Faults: every producer and consumer has its own connection, which nats-py reconnects by itself
(see :mod:`adapters.nats_core`). With file storage the stream and the durable consumer survive a
broker restart; with memory storage they are gone, so a consumer whose fetch fails with a
JetStream API error (no stream, no consumer) has them created again, at most once a second, and
carries on. Messages a crashed consumer held unacked come back after AckWait
(``broker.ack_timeout``); ``delivery_no`` is the server's ``num_delivered``, which starts again
at 1 after a memory-storage restart.
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
#: Least time between two attempts to recreate a vanished stream and consumer.
RESTORE_INTERVAL = 1.0


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
        self.publisher: Client | None = None  # the control connection
        self.js: JetStreamContext | None = None
        #: per producer its own JetStream context; None while crashed (workers use ``js``)
        self.producers: dict[int, tuple[Client, JetStreamContext] | None] = {}
        self.consumers: dict[int, Client] = {}
        self.subscriptions: list[JetStreamContext.PullSubscription | None] = []
        self.stream_created = False
        self.restored = 0
        self._next_restore = 0.0

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
        self.publisher = await self.connections.connect(
            f"brokerlab-{self.names.run_id}-control", self.url_for("control")
        )
        # The harness bounds outstanding publishes itself; nats-py's semaphore must not be lower.
        self.js = self.publisher.jetstream(
            timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT * 4
        )
        stream = self._stream_config()
        await self.js.add_stream(stream)
        self.stream_created = True
        await self.js.add_consumer(self.names.stream, self._consumer_config())
        for producer in range(self.scenario.producers.count):
            await self.open_producer(producer)
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

    async def open_producer(self, producer: int) -> None:
        client = await self.connections.connect(
            f"brokerlab-{self.names.run_id}-p{producer}", self.url_for(f"producer-{producer}")
        )
        js = client.jetstream(timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT * 4)
        self.producers[producer] = (client, js)

    async def close_producer(self, producer: int) -> None:
        entry, self.producers[producer] = self.producers.get(producer), None
        if entry is not None:
            await self.connections.close_one(entry[0])

    async def open_consumers(self, count: int) -> None:
        self.subscriptions = [None] * count
        for consumer in range(count):
            await self.open_consumer(consumer)

    async def open_consumer(self, consumer: int) -> None:
        client = await self.connections.connect(
            f"brokerlab-{self.names.run_id}-c{consumer}", self.url_for(f"consumer-{consumer}")
        )
        js = client.jetstream(timeout=API_TIMEOUT)
        try:
            subscription = await js.pull_subscribe_bind(
                durable=self.names.group,
                stream=self.names.stream,
                pending_bytes_limit=PENDING_BYTES,
            )
        except BaseException:
            await self.connections.close_one(client)
            raise
        self.consumers[consumer] = client
        self.subscriptions[consumer] = subscription

    async def close_consumer(self, consumer: int) -> None:
        # Unacked messages it held stay with the server and come back after AckWait.
        self.subscriptions[consumer] = None
        client = self.consumers.pop(consumer, None)
        if client is not None:
            await self.connections.close_one(client)

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> Awaitable[PublishResults]:
        if producer in self.producers:
            entry = self.producers[producer]
            if entry is None:
                raise ConnectionError(f"producer-{producer} is not connected")
            js = entry[1]
        else:
            assert self.js is not None
            js = self.js
        publish_async, subject = js.publish_async, self.names.subject
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
        subscription = self.subscriptions[consumer]
        if subscription is None:
            raise ConnectionError(f"consumer-{consumer} is not connected")
        try:
            messages = await subscription.fetch(max_messages, timeout=wait)
        except nats.errors.TimeoutError:
            return []
        except nats.js.errors.APIError:
            await self._restore()  # e.g. a memory stream lost in a restart
            raise
        return [(msg.data, msg.metadata.num_delivered, msg) for msg in messages]

    async def _restore(self) -> None:
        """Create the stream and the durable consumer again if the broker lost them."""
        if self.js is None or not self.stream_created or now() < self._next_restore:
            return
        self._next_restore = now() + RESTORE_INTERVAL
        try:
            await self.js.stream_info(self.names.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(self._stream_config())
            self.restored += 1
        try:
            await self.js.consumer_info(self.names.stream, self.names.group)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(self.names.stream, self._consumer_config())

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        for msg in handles:
            await msg.ack()

    async def close(self) -> None:
        if self.restored:
            self.warnings.append(
                "the stream vanished (broker restarted with memory storage) and was created "
                f"again {self.restored} time(s)"
            )
        self.warnings += self.connections.warnings()
        if self.stream_created and self.js is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self.js.delete_stream(self.names.stream)  # deletes the consumer too
        await self.connections.close()


async def _extend(batch: asyncio.Future[PublishResults], tail: PublishResults) -> PublishResults:
    """The batch's results followed by ``tail`` (messages that never left the client)."""
    return [*(await batch), *tail]
