"""RabbitMQ (AMQP 0-9-1): one queue per run on the default exchange, publisher confirms, basic.qos.

The scenario becomes RabbitMQ configuration like this:

* ``broker.queue_type``: ``classic``, ``quorum`` (Raft log, ``x-delivery-limit`` =
  ``broker.max_deliveries``) or ``stream`` (append-only log, read by offset).
* ``broker.persistence``: ``none`` gives a transient queue and transient messages (a classic
  queue: lost on a broker restart); anything else a durable queue and persistent messages
  (delivery mode 2). Quorum and stream queues are always durable.
* ``broker.max_length`` → ``x-max-length`` with ``broker.overflow`` (``drop-head`` or
  ``reject-publish``: the broker nacks the publish, which the lab records as failed).
* ``consumers.prefetch`` → ``basic.qos``; ``consumers.ack`` after / before (manual acks) or
  none (``no_ack``: the broker forgets a message as it sends it).
* ``producers.confirm``: the channel is in confirm mode; sync or async only changes how many
  publishes the harness keeps outstanding.

RabbitMQ has no publish deduplication for queues (stream dedup exists only over the stream
protocol), so a retried publish whose confirm was lost is a duplicate; the adapter sends no dedup
ids. Publishing uses aio-pika's connections and aiormq's channel underneath directly (no
``Message`` object, no drain wait per message); acks go out as one ``basic.ack multiple`` per
batch, which is safe because one consumer's channel acks in delivery order.

Faults: every client has its own connection (so a fault proxy can cut one). A consumer's
unacked deliveries go back to the queue when its channel closes (``redelivered`` set), so a
crashed consumer loses nothing. After a broker restart a transient queue is gone: whoever
reconnects first declares it again. ``delivery_no`` is the quorum queue's ``x-delivery-count``
plus one, otherwise 2 for a message marked redelivered (AMQP does not count further).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.metadata
import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.connection import make_url
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec

from brokerlab.adapters.harness import (
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    now,
)

# aio-pika and aiormq log every failed reconnect as an error; a run expects them during broker
# faults and reports what matters itself (consumer errors, publish outcomes), so their lines go
# to a handler that drops them unless a user configures logging.
for _name in ("aio_pika", "aiormq"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

#: Connection and AMQP method timeouts (seconds).
CONNECT_TIMEOUT = 10.0
#: Where a broker given by URL is asked for its unacked count: the management API, then the
#: Prometheus plugin's per-queue metrics, on the URL's host (their default ports).
MANAGEMENT_PORT, PROMETHEUS_PORT = 15672, 15692
#: How long one statistics request over HTTP may take (seconds).
STATS_TIMEOUT = 2.0
#: Persistent (2) or transient (1) delivery mode.
PERSISTENT, TRANSIENT = 2, 1
_version = importlib.metadata.version
CLIENT = f"aio-pika {_version('aio-pika')} (aiormq {_version('aiormq')})"


class _Client:
    """One AMQP connection and its one channel (producer, consumer or control)."""

    def __init__(self, connection: Any, channel: Any, raw: aiormq.Channel) -> None:
        self.connection = connection
        self.channel = channel
        self.raw = raw

    @property
    def alive(self) -> bool:
        return not self.connection.is_closed and not self.raw.is_closed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.connection.close()


class _Inbox:
    """What the broker pushed to one consumer, waiting for the harness to fetch it."""

    def __init__(self) -> None:
        self.messages: deque[DeliveredMessage] = deque()
        self.ready = asyncio.Event()

    async def on_message(self, message: DeliveredMessage) -> None:
        self.messages.append(message)
        self.ready.set()


async def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = STATS_TIMEOUT
) -> tuple[int, bytes]:
    """``GET url`` over plain HTTP/1.1 (or TLS for ``https``): (status, body). A few lines of
    asyncio instead of an HTTP client dependency; enough for the broker's statistics pages."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=tls or None)
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            response = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ConnectionError(f"not an HTTP answer from {host}:{port}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return int(status_line[1]), body


def _unchunk(body: bytes) -> bytes:
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def prometheus_unacked(text: str, vhost: str, queue: str) -> float | None:
    """``rabbitmq_detailed_queue_messages_unacked`` of one queue from a Prometheus page of
    ``/metrics/detailed?family=queue_coarse_metrics`` (None if the queue is not on it)."""
    pattern = re.compile(r"^rabbitmq_detailed_queue_messages_unacked\{([^}]*)\}\s+(\S+)", re.M)
    for labels, value in pattern.findall(text):
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        if found.get("queue") == queue and found.get("vhost") == vhost:
            return float(value)
    return None


class UnackedSource:
    """Where the broker's count of delivered-but-unacknowledged messages of one queue comes
    from. AMQP itself cannot say; RabbitMQ's management API and its Prometheus plugin can, from
    the statistics each queue emits every ``collect_statistics_interval`` (5 s by default; the
    lab's own node emits every 0.5 s), so a figure may be that old. ``kind`` is ``management``
    or ``prometheus``; ``url`` never carries credentials (they go in a header)."""

    def __init__(self, kind: str, url: str, headers: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.url = url
        self.headers = headers or {}

    async def unacked(self, vhost: str, queue: str) -> float | None:
        """The queue's unacked count now, or None when the broker has no figure for it yet."""
        status, body = await http_get(self.url, self.headers)
        if status != 200:
            raise ConnectionError(f"{self.kind} statistics answered HTTP {status}")
        if self.kind == "management":
            value = json.loads(body).get("messages_unacknowledged")
            return None if value is None else float(value)
        return prometheus_unacked(body.decode("utf-8", "replace"), vhost, queue)

    @classmethod
    async def find(
        cls, amqp_url: str, vhost: str, queue: str, metrics_url: str | None
    ) -> UnackedSource | None:
        """The first source that answers for this queue: ``metrics_url`` (the Prometheus
        endpoint of a node the lab started), else the management API, then the Prometheus
        plugin on the AMQP URL's host at their default ports; None if none does."""
        parts = urlsplit(amqp_url)
        host = parts.hostname or "127.0.0.1"
        scheme = "https" if parts.scheme == "amqps" else "http"
        detailed = f"/metrics/detailed?vhost={quote(vhost, safe='')}&family=queue_coarse_metrics"
        candidates: list[UnackedSource] = []
        if metrics_url:
            candidates.append(cls("prometheus", metrics_url.rstrip("/") + detailed))
        else:
            user = unquote(parts.username or "guest")
            password = unquote(parts.password or "guest")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            candidates += [
                cls(
                    "management",
                    f"{scheme}://{host}:{MANAGEMENT_PORT}/api/queues/{quote(vhost, safe='')}/"
                    f"{quote(queue, safe='')}?columns=messages_unacknowledged",
                    {"Authorization": f"Basic {token}"},
                ),
                cls("prometheus", f"{scheme}://{host}:{PROMETHEUS_PORT}{detailed}"),
            ]
        for source in candidates:
            with contextlib.suppress(Exception):
                await source.unacked(vhost, queue)
                return source
        return None


class RabbitMQAdapter(BrokerAdapter):
    """Queue ``brokerlab.<run id>`` of the scenario's type; each client its own connection."""

    target = "rabbitmq"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        broker = self.scenario.broker
        self.queue = self.names.joined(".")
        self.queue_type = broker.queue_type
        self.durable = self.queue_type != "classic" or broker.persistence.mode != "none"
        self.delivery_mode = PERSISTENT if self.durable else TRANSIENT
        self.no_ack = self.scenario.consumers.ack == "none"
        self.control: _Client | None = None
        self.producers: dict[int, _Client | None] = {}
        self.consumers: dict[int, _Client | None] = {}
        self.inboxes: dict[int, _Inbox] = {}
        #: stream queues: the next offset each consumer reads from (the lab keeps it)
        self.offsets: dict[int, int] = {}
        self.redeclared = 0
        self.returned = 0
        #: per consumer: the newest (channel, delivery tag) to ack when the consumer next waits
        self.acks: dict[int, tuple[Any, int]] = {}
        self._ack_tasks: set[asyncio.Future[Any]] = set()
        self.ack_errors = 0
        #: where ``broker_unacked`` comes from (None: nowhere; the column stays empty)
        self.unacked_source: UnackedSource | None = None
        path = urlsplit(self.url).path
        self.vhost = unquote(path[1:]) if len(path) > 1 else "/"

    # ---- connections

    def arguments(self) -> dict[str, Any]:
        """The queue's ``x-`` arguments from the scenario."""
        broker = self.scenario.broker
        args: dict[str, Any] = {"x-queue-type": self.queue_type}
        if broker.max_length:
            args["x-max-length"] = broker.max_length
            if self.queue_type != "stream":
                args["x-overflow"] = broker.overflow
        if self.queue_type == "quorum" and broker.max_deliveries:
            args["x-delivery-limit"] = broker.max_deliveries
        if broker.retention:
            if self.queue_type == "stream":
                args["x-max-age"] = f"{max(1, round(broker.retention))}s"
            else:
                args["x-message-ttl"] = max(1, round(broker.retention * 1000))
        return args

    async def _connect(self, client: str, *, confirms: bool = False) -> _Client:
        # aio_pika.connect() drops a connection whose connect failed without closing it; an
        # error record that keeps its traceback keeps it alive until the loop ends, and then its
        # __del__ schedules a close that never runs ("coroutine ... was never awaited").
        connection = aio_pika.Connection(
            make_url(self.url_for(client)),
            client_properties={"connection_name": f"brokerlab-{self.names.run_id}-{client}"},
        )
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT)
            channel = await connection.channel(publisher_confirms=confirms, on_return_raises=False)
            raw = await channel.get_underlay_channel()
        except BaseException:
            # bounded: a run's watchdog cancels a connect once, and a close that waited on a
            # broker still booting would keep the client from ever trying again
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await connection.close()
            raise
        return _Client(connection, channel, raw)

    async def _declare(self, client: _Client) -> None:
        """Declare the run's queue (again after a restart lost a transient one; idempotent)."""
        await client.raw.queue_declare(
            self.queue, durable=self.durable, arguments=self.arguments(), timeout=CONNECT_TIMEOUT
        )

    async def setup(self) -> None:
        self.control = await self._connect("control")
        await self._declare(self.control)
        properties = self.control.connection.transport.connection.server_properties
        version = properties.get("version")
        self.info.update(
            {
                "server_version": version.decode() if isinstance(version, bytes) else version,
                "queue": self.queue,
                "queue_type": self.queue_type,
                "durable_queue": self.durable,
                "delivery_mode": "persistent" if self.durable else "transient",
                "arguments": self.arguments(),
                "dedup": "none (RabbitMQ queues do not deduplicate publishes)",
                "client": CLIENT,
            }
        )
        await self._find_unacked_source()
        if self.queue_type == "stream" and self.scenario.consumers.count > 1:
            self.warnings.append(
                "stream queue: every consumer reads the whole stream (no competing consumers), "
                "so each message is delivered once per consumer"
            )
        for producer in range(self.scenario.producers.count):
            await self.open_producer(producer)

    async def _find_unacked_source(self) -> None:
        own = self.own_broker or {}
        metrics_url = own.get("metrics_url") if own.get("kind") == "rabbitmq" else None
        source = await UnackedSource.find(self.url, self.vhost, self.queue, metrics_url)
        self.unacked_source = source
        if source is None:
            self.info["broker_unacked"] = (
                "unknown: AMQP cannot report it and neither the management API "
                f"(port {MANAGEMENT_PORT}) nor the Prometheus plugin (port {PROMETHEUS_PORT}) "
                "answered on the broker's host; the column stays empty"
            )
        else:
            where = source.url.split("?", 1)[0]
            self.info["broker_unacked"] = (
                f"{source.kind} statistics at {where}, as fresh as the broker's "
                "collect_statistics_interval (the lab's own node: 0.5 s; RabbitMQ's default: 5 s)"
            )

    async def open_producer(self, producer: int) -> None:
        client = await self._connect(f"producer-{producer}", confirms=True)
        self.producers[producer] = client
        with contextlib.suppress(Exception):
            await self._declare(client)

    async def close_producer(self, producer: int) -> None:
        client, self.producers[producer] = self.producers.get(producer), None
        if client is not None:
            await client.close()  # unconfirmed publishes fail: their outcome is unknown

    async def open_consumer(self, consumer: int) -> None:
        client = await self._connect(f"consumer-{consumer}")
        try:
            await self._declare(client)
            await client.raw.basic_qos(prefetch_count=self.scenario.consumers.prefetch)
            inbox = _Inbox()
            arguments: dict[str, Any] = {}
            if self.queue_type == "stream":
                arguments["x-stream-offset"] = self.offsets.get(consumer, "first")
            await client.raw.basic_consume(
                self.queue,
                inbox.on_message,
                no_ack=self.no_ack and self.queue_type != "stream",
                consumer_tag=f"brokerlab-{self.names.run_id}-c{consumer}",
                arguments=arguments,
                timeout=CONNECT_TIMEOUT,
            )
        except BaseException:
            await client.close()
            raise
        self.consumers[consumer] = client
        self.inboxes[consumer] = inbox

    async def close_consumer(self, consumer: int) -> None:
        # Its unacked deliveries go back to the queue when the channel closes.
        client, self.consumers[consumer] = self.consumers.get(consumer), None
        self.inboxes.pop(consumer, None)
        self.acks.pop(consumer, None)  # a crashed process's acks never leave
        if client is not None:
            await client.close()

    # ---- publishing

    async def _producer(self, producer: int) -> _Client:
        client = self.producers.get(producer)
        if client is not None and client.alive:
            return client
        if producer in self.producers and client is None:
            raise ConnectionError(f"producer-{producer} is not connected")
        if client is not None:  # broken by the broker or the network: a client reconnects
            await client.close()
        client = await self._connect(f"producer-{producer}", confirms=True)
        self.producers[producer] = client
        await self._declare(client)
        return client

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> asyncio.Future[PublishResults]:
        client = await self._producer(producer)
        raw = client.raw
        properties = spec.Basic.Properties(delivery_mode=self.delivery_mode, message_id="-")
        loop = asyncio.get_running_loop()
        batch: asyncio.Future[PublishResults] = loop.create_future()
        results: PublishResults = [0.0] * len(payloads)
        remaining = [len(payloads)]

        def settle(index: int, task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                result: float | BaseException = ConnectionAbortedError("cancelled")
            elif task.exception() is not None:
                error = task.exception()
                assert error is not None
                rejected = isinstance(error, aiormq.exceptions.DeliveryError)
                result = PublishRejected(str(error)) if rejected else error
            else:
                frame = task.result()
                if isinstance(frame, spec.Basic.Ack):
                    result = now()
                elif isinstance(frame, DeliveredMessage):  # returned: no queue to route to
                    self.returned += 1
                    result = PublishRejected("unroutable (returned by the broker)")
                else:  # Basic.Nack / Reject: e.g. reject-publish at max_length
                    result = PublishRejected(f"nacked by the broker ({type(frame).__name__})")
            results[index] = result
            remaining[0] -= 1
            if remaining[0] == 0 and not batch.done():
                batch.set_result(results)

        tasks = []
        for index, payload in enumerate(payloads):
            task = loop.create_task(
                raw.basic_publish(
                    payload,
                    routing_key=self.queue,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
            )
            task.add_done_callback(lambda done, i=index: settle(i, done))
            tasks.append(task)

        def forget(done: asyncio.Future[PublishResults]) -> None:
            if done.cancelled():  # publish timeout: stop waiting for these confirms
                for task in tasks:
                    task.cancel()

        batch.add_done_callback(forget)
        return batch

    # ---- consuming

    async def _consumer(self, consumer: int) -> _Inbox:
        client = self.consumers.get(consumer)
        if client is not None and client.alive and consumer in self.inboxes:
            return self.inboxes[consumer]
        if consumer in self.consumers and client is None:
            raise ConnectionError(f"consumer-{consumer} is not connected")
        if client is not None:  # broken: what it held unacked is back in the queue
            self.inboxes.pop(consumer, None)
            await client.close()
        await self.open_consumer(consumer)
        return self.inboxes[consumer]

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        inbox = await self._consumer(consumer)
        messages = inbox.messages
        if not messages:
            ready = inbox.ready
            ready.clear()
            client = self.consumers.get(consumer)
            # A timer that wakes the wait, not an ``asyncio.timeout``: a consumer that keeps up
            # waits here once per few messages, and the timeout's own bookkeeping showed in
            # the lab's CPU per message.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            timer = loop.call_at(deadline, ready.set)
            try:
                while not messages and loop.time() < deadline:
                    await ready.wait()
                    ready.clear()
            finally:
                timer.cancel()
            if not messages:
                if client is None or not client.alive:
                    raise ConnectionError(f"consumer-{consumer}: connection lost")
                return []
        count = min(max_messages, len(messages))
        received: list[Received] = []
        stream = self.queue_type == "stream"
        for _ in range(count):
            message = messages.popleft()
            delivery_no = 1
            if message.redelivered:
                delivery_no = 2
            headers = message.header.properties.headers
            if headers and "x-delivery-count" in headers:
                delivery_no = int(headers["x-delivery-count"]) + 1
            offset = None
            if stream and headers and "x-stream-offset" in headers:
                offset = int(headers["x-stream-offset"])
            handle = (message.channel, message.delivery_tag, offset)
            received.append((message.body, delivery_no, handle))
        if stream and self.no_ack:  # streams need acks to keep credit flowing: ack on receipt
            await self.ack(consumer, [received[-1][2]])
        return received

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        if self.no_ack and self.queue_type != "stream":
            return
        channel, tag, offset = handles[-1]
        if offset is not None:  # a stream: a restarted consumer resumes after what it acked
            self.offsets[consumer] = offset + 1
        if channel.is_closed:
            raise ConnectionError(f"consumer-{consumer}: channel closed before the ack")
        # Everything this channel delivered up to ``tag`` is in this batch or acked before it,
        # so one ``basic.ack multiple`` covers them. It goes out when the consumer next waits:
        # acks of batches processed back to back under load become one frame (each ack frame
        # costs the broker as much as a delivery), an idle consumer's ack leaves at once.
        first = consumer not in self.acks
        self.acks[consumer] = (channel, tag)
        if first:
            asyncio.get_running_loop().call_soon(self._send_ack, consumer)

    def _send_ack(self, consumer: int) -> None:
        channel, tag = self.acks.pop(consumer, (None, 0))
        if channel is None or channel.is_closed:  # crashed meanwhile: nothing is acked
            return
        # The frame goes straight into the connection's write queue, as aiormq's own basic_ack
        # puts it there, without a task and a coroutine per ack (a consumer that keeps up acks
        # every ~2.6 messages, and those were a measurable share of the lab's CPU per message).
        # A full queue (the writer behind) takes the ordinary way, which waits for room.
        frame = ChannelFrame.marshall(
            channel_number=channel.number,
            frames=[spec.Basic.Ack(delivery_tag=tag, multiple=True)],
        )
        try:
            channel.write_queue.put_nowait(frame)
            return
        except asyncio.QueueFull:
            pass
        task = asyncio.ensure_future(channel.basic_ack(tag, multiple=True, wait=False))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_done)

    def _ack_done(self, task: asyncio.Future[Any]) -> None:
        self._ack_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.ack_errors += 1  # unacked: the broker delivers it again, which runs record

    # ---- broker's own view

    async def broker_stats(self) -> dict[str, float]:
        """The queue's depth (ready messages, from a passive declare: always current) and,
        when the broker has a statistics endpoint (:class:`UnackedSource`), its unacked count.
        AMQP has no way to ask for unacked messages, so without one that figure is absent
        rather than guessed."""
        control = self.control
        if control is None or not control.alive:
            return {}
        declared = await control.raw.queue_declare(self.queue, passive=True, timeout=2.0)
        stats = {"broker_backlog": float(declared.message_count or 0)}
        source = self.unacked_source
        if source is not None:
            unacked = None
            with contextlib.suppress(Exception):  # a missed figure, not a failed sample
                unacked = await source.unacked(self.vhost, self.queue)
            if unacked is not None:
                stats["broker_unacked"] = unacked
        return stats

    # ---- teardown

    async def close(self) -> None:
        for consumer in list(self.acks):  # acks still waiting for their consumer to yield
            self._send_ack(consumer)
        if self._ack_tasks:
            await asyncio.wait(list(self._ack_tasks), timeout=CONNECT_TIMEOUT)
        if self.ack_errors:
            self.warnings.append(f"{self.ack_errors} acks could not be sent (connection lost)")
        if self.returned:
            self.warnings.append(
                f"{self.returned} publishes came back unroutable (the queue was missing, e.g. "
                "a transient queue lost in a broker restart before it was declared again)"
            )
        for client in [*self.consumers.values(), *self.producers.values()]:
            if client is not None:
                await client.close()
        control = self.control
        with contextlib.suppress(Exception):
            if control is None or not control.alive:
                control = self.control = await self._connect("control")
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await control.raw.queue_delete(self.queue)
        if control is not None:
            await control.close()
