"""NATS JetStream: a per-run stream, a durable pull consumer shared by the consumers, PubAcks.

The stream and consumer are built from the scenario: storage, ``max_msgs`` (max_length),
``max_age`` (retention), ``duplicate_window`` (dedup_window), ``ack_wait`` (ack_timeout),
``max_deliver`` (max_deliveries), ``max_ack_pending``. Publishes go out as ``publish_async`` sends
them (one request per message on the connection, PubAcks matched by reply subject; see
:class:`_PubAcks`) whether the scenario confirms sync or async; the harness decides how many may
be outstanding, so the two modes differ only in waiting, as they do for a real client.

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
import json
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)

from brokerlab.adapters.harness import (
    MAX_IN_FLIGHT,
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    now,
)
from brokerlab.adapters.nats_core import CLIENT, CONNECT_TIMEOUT, PENDING_BYTES, NatsConnections

#: Timeout of JetStream API requests (stream and consumer management).
API_TIMEOUT = 10.0
#: Header JetStream deduplicates on, within the stream's duplicate window.
MSG_ID = "Nats-Msg-Id"
#: PubAck errors that mean "not stored" (anything else leaves the outcome unknown).
_REJECTED = (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError)
#: Least time between two attempts to recreate a vanished stream and consumer.
RESTORE_INTERVAL = 1.0
#: The status header of a reply the server sends when no stream listens on the subject.
STATUS, NO_RESPONDERS = "Status", "503"


class _Batch:
    """One published batch: each message's result as its PubAck arrives, one future for all."""

    __slots__ = ("first", "future", "remaining", "results")

    def __init__(self, count: int, first: int) -> None:
        self.future: asyncio.Future[PublishResults] = asyncio.get_running_loop().create_future()
        self.results: PublishResults = [0.0] * count
        self.remaining = count
        self.first = first  # reply number of its first message


class _PubAcks:
    """JetStream publishing on one connection, PubAcks matched by reply subject.

    What ``publish_async`` does, without its per-message costs: each message is a core publish
    with reply subject ``<inbox>.<n>``; one subscription on ``<inbox>.*`` resolves the batch's
    entry when the PubAck arrives. No future, semaphore or done callback per message, and the
    PubAck is only JSON-decoded when it carries an error. A batch the harness cancels (publish
    timeout) forgets its open replies; nats-py re-subscribes the inbox after a reconnect.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.prefix = f"{client.new_inbox()}."
        self.open: dict[str, tuple[_Batch, int]] = {}  # reply token -> batch, index
        self.count = 0

    async def start(self) -> None:
        await self.client.subscribe(
            f"{self.prefix}*",
            cb=self._on_reply,
            pending_msgs_limit=MAX_IN_FLIGHT * 4,
            pending_bytes_limit=PENDING_BYTES,
        )

    async def publish(
        self, subject: str, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> asyncio.Future[PublishResults]:
        first = self.count
        batch = _Batch(len(payloads), first)
        self.count += len(payloads)
        batch.future.add_done_callback(lambda done: self._forget(done, batch))
        publish, prefix, opened = self.client.publish, self.prefix, self.open
        sent = 0
        try:
            for index, payload in enumerate(payloads):
                token = str(first + index)
                opened[token] = (batch, index)
                if dedup_ids is None:
                    await publish(subject, payload, reply=prefix + token)
                else:
                    headers = {MSG_ID: dedup_ids[index]}
                    await publish(subject, payload, reply=prefix + token, headers=headers)
                sent += 1
        except Exception:
            # Part of the batch is out: let those finish, and report the rest as not sent.
            for index in range(sent, len(payloads)):
                opened.pop(str(first + index), None)
            if not sent:
                batch.future.cancel()
                raise
            for index in range(sent, len(payloads)):
                self._settle(batch, index, PublishRejected("not sent"))
        return batch.future

    async def _on_reply(self, msg: Msg) -> None:
        entry = self.open.pop(msg.subject[len(self.prefix) :], None)
        if entry is None:  # its batch timed out, or not ours
            return
        batch, index = entry
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            self._settle(batch, index, PublishRejected(str(nats.js.errors.NoStreamResponseError())))
            return
        data = msg.data
        if b'"error"' in data:
            try:
                error = json.loads(data).get("error")
            except ValueError:
                error = None
            if error:
                try:
                    nats.js.errors.APIError.from_error(error)  # raises the matching APIError
                except nats.js.errors.Error as api_error:
                    self._settle(batch, index, PublishRejected(str(api_error)))
                    return
                self._settle(batch, index, PublishRejected(str(error)))
                return
        self._settle(batch, index, now())

    @staticmethod
    def _settle(batch: _Batch, index: int, result: float | BaseException) -> None:
        batch.results[index] = result
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.future.done():
            batch.future.set_result(batch.results)

    def _forget(self, done: asyncio.Future[PublishResults], batch: _Batch) -> None:
        if done.cancelled():  # publish timeout: PubAcks still on the way are ignored
            for index in range(len(batch.results)):
                self.open.pop(str(batch.first + index), None)


class NatsJetStreamAdapter(BrokerAdapter):
    """Stream ``BROKERLAB_<run id>`` on subject ``brokerlab.<run id>``, durable ``<group>``."""

    target = "nats-jetstream"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream = self.names.identifier()
        self.subject = self.names.joined(".")
        self.connections = NatsConnections(self.url, self.scrub)
        self.publisher: Client | None = None  # the control connection
        self.js: JetStreamContext | None = None
        #: per producer its own connection's publisher; None while crashed
        self.producers: dict[int, _PubAcks | None] = {}
        #: workers publish on the control connection (``publisher``) through this one
        self.shared_publisher: _PubAcks | None = None
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
            name=self.stream,
            subjects=[self.subject],
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
            filter_subject=self.subject,
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
        await self.js.add_consumer(self.stream, self._consumer_config())
        for producer in range(self.scenario.producers.count):
            await self.open_producer(producer)
        version = self.publisher.connected_server_version
        self.info.update(
            {
                "server_version": f"{version.major}.{version.minor}.{version.patch}",
                "stream": self.stream,
                "subject": self.subject,
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
        publisher = _PubAcks(client)
        try:
            await publisher.start()
        except BaseException:
            await self.connections.close_one(client)
            raise
        self.producers[producer] = publisher

    async def close_producer(self, producer: int) -> None:
        entry, self.producers[producer] = self.producers.get(producer), None
        if entry is not None:
            await self.connections.close_one(entry.client)

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
                stream=self.stream,
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
    ) -> asyncio.Future[PublishResults]:
        if producer in self.producers:
            publisher = self.producers[producer]
            if publisher is None:
                raise ConnectionError(f"producer-{producer} is not connected")
        else:
            publisher = self.shared_publisher
            if publisher is None:
                assert self.publisher is not None
                publisher = self.shared_publisher = _PubAcks(self.publisher)
                await publisher.start()
        return await publisher.publish(self.subject, payloads, dedup_ids)

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
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(self._stream_config())
            self.restored += 1
        try:
            await self.js.consumer_info(self.stream, self.names.group)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(self.stream, self._consumer_config())

    async def broker_stats(self) -> dict[str, float]:
        """The durable consumer's ``num_pending`` (in the stream, not yet delivered to it) and
        ``num_ack_pending`` (delivered, not acknowledged)."""
        if self.js is None or not self.stream_created:
            return {}
        info = await self.js.consumer_info(self.stream, self.names.group)
        return {
            "broker_backlog": float(info.num_pending or 0),
            "broker_unacked": float(info.num_ack_pending or 0),
        }

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
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self.js.delete_stream(self.stream)  # deletes the consumer too
            except Exception as error:
                doing = f"deleting the run's stream {self.stream} (it may remain)"
                self.survived_error(doing, error)
        await self.connections.close()


class NatsJetStreamWorker(NatsJetStreamAdapter):
    """JetStream in a worker process: binds to the parent's stream and durable, never creates or
    deletes them (the target record's ``worker_adapter``)."""

    async def setup(self) -> None:
        self.publisher = await self.connections.connect(f"brokerlab-{self.names.run_id}-pub")
        self.js = self.publisher.jetstream(
            timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT * 4
        )
        # ``stream_created`` stays False, so ``close`` only disconnects.
