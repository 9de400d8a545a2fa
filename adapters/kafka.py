"""The Kafka protocol (confluent-kafka / librdkafka): one topic per run, keyed partitions, an
idempotent producer per producer, one consumer group whose offsets the lab commits.

The scenario becomes Kafka configuration like this:

* ``broker.partitions`` → the topic's partitions; a message's key (``producers.keys``) picks its
  partition (librdkafka's default partitioner), so per-key order holds; without keys, messages
  spread over partitions.
* Producers: ``acks=all`` and ``enable.idempotence=true`` (librdkafka retries inside the
  producer without duplicates or reordering); ``delivery.timeout.ms`` is the scenario's publish
  timeout, after which the harness's own retries (``producers.retry``) take over.
* Consumers: one group (``<group>-<run id>``); offsets are committed after processing
  (``ack: after``), right after receipt (``before``) or automatically (``none``). A consumer that
  crashes leaves the group, the group rebalances, and what it had not committed is delivered
  again: ``delivery_no`` 2 marks an offset this adapter had already delivered (Kafka does not
  count deliveries).

librdkafka is not asyncio: each producer's delivery reports are served by a poll thread and
handed to the event loop; each consumer polls in its own single daemon thread, so a blocking
``consume`` never stalls the harness loop.

The lab's embedded broker is Tansu (Kafka protocol, memory storage, one node): its results show
Kafka's semantics (partitions, keys, groups, offsets, rebalances), not Kafka's storage,
replication or speed; run.json and the summary say so. A URL (``--kafka-url``) measures a real
cluster: ``kafka://[user:pass@]host:port[,host:port]`` (``kafkas://`` for TLS); user and password
select SASL (``?sasl_mechanism=SCRAM-SHA-512``, default PLAIN); other query parameters are
librdkafka settings with ``_`` for ``.`` (``?ssl_ca_location=/path/ca.pem``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from brokerlab.adapters.harness import (
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    decode_payload,
    now,
)

CLIENT = (
    f"confluent-kafka {confluent_kafka.version()[0]} (librdkafka {confluent_kafka.libversion()[0]})"
)
#: What a Tansu broker is (its cluster id says "tansu"), for every place a run is labelled.
TANSU_LABEL = "Kafka protocol on Tansu, memory only, one node"
#: Where librdkafka's own log lines go (connection refused while a broker restarts, ...): a
#: logger of their own, silent unless a user attaches a handler.
LIBRDKAFKA_LOG = logging.getLogger("brokerlab.adapters.kafka.librdkafka")
LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
LIBRDKAFKA_LOG.propagate = False
#: Admin and close timeouts (seconds).
ADMIN_TIMEOUT = 15.0
#: Group session timeout: a crashed consumer's partitions move after this; joins take about
#: half of it on Tansu. 6 s is the lowest a stock Kafka broker accepts.
SESSION_TIMEOUT_MS = 6000
#: How often a producer's poll thread serves delivery reports (seconds).
POLL_INTERVAL = 0.005
#: Delivery-report errors that mean "definitely not written" (a timed-out or in-flight purged
#: message may have been written: its outcome stays unknown).
_NOT_WRITTEN = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError._PURGE_QUEUE,
}


def client_config(url: str) -> dict[str, Any]:
    """librdkafka settings from a Kafka URL (see the module docstring); plain ``host:port``
    lists are accepted too."""
    if "://" not in url:
        return {"bootstrap.servers": url}
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("kafka", "kafkas", "kafka+ssl"):
        raise ValueError(f"Kafka URL must start with kafka:// or kafkas://, not {scheme}://")
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError("Kafka URL names no host:port")
    config: dict[str, Any] = {"bootstrap.servers": hosts}
    tls = scheme != "kafka"
    if "@" in parts.netloc:
        user, _, password = parts.netloc.rpartition("@")[0].partition(":")
        config["security.protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        config["sasl.mechanism"] = "PLAIN"
        config["sasl.username"] = unquote(user)
        config["sasl.password"] = unquote(password)
    elif tls:
        config["security.protocol"] = "SSL"
    for key, value in parse_qsl(parts.query):
        config[key.replace("_", ".")] = value
    return config


class _ProducerClient:
    """One librdkafka producer and the thread that serves its delivery reports.

    Reports are collected as librdkafka hands them over and passed to the event loop once per
    poll, not once per message: a cross-thread wake-up per message cost more than the produce.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        #: A fatal error (e.g. the broker forgot the idempotent producer's id after a restart):
        #: this producer can send nothing more and must be replaced.
        self.fatal: KafkaError | None = None
        self.producer = Producer({**config, "error_cb": self._on_error})
        self.loop = loop
        #: (settle, index, result) of reports not yet handed to the loop
        self.reports: deque[tuple[Any, int, float | BaseException]] = deque()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="brokerlab-kafka-poll", daemon=True)
        self.thread.start()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error

    def _poll(self) -> None:
        while not self.stopped.is_set():
            try:
                self.producer.poll(POLL_INTERVAL)
            except KafkaException as error:  # fatal: reports of what it held still come
                self.fatal = error.args[0]
                time.sleep(POLL_INTERVAL)
            self._hand_over()

    def _hand_over(self) -> None:
        reports = self.reports
        if not reports:
            return
        items = []
        with contextlib.suppress(IndexError):
            while True:
                items.append(reports.popleft())
        with contextlib.suppress(RuntimeError):  # loop closed: the run is over
            self.loop.call_soon_threadsafe(_settle_all, items)

    def close(self, crash: bool) -> None:
        """Stop serving reports; a crash drops what librdkafka still holds (outcome unknown)."""
        with contextlib.suppress(Exception):
            if crash:
                self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(0 if crash else 5.0)
            self.producer.poll(0)
        self.stopped.set()
        self.thread.join(2.0)
        self._hand_over()


def _settle_all(items: list[tuple[Any, int, float | BaseException]]) -> None:
    for settle, index, result in items:
        settle(index, result)


class _CallThread:
    """One daemon thread that makes blocking calls in order.

    Not a ThreadPoolExecutor: the interpreter joins those threads at exit, so a librdkafka call
    that never returns (a consumer's close after Ctrl-C killed the broker) kept the lab alive
    after its run had ended. A daemon thread dies with the process.
    """

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Any] | None] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, function = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = function()
            except BaseException as error:  # handed to the caller, as an executor does
                future.set_exception(error)
            else:
                future.set_result(result)

    def submit(self, function: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.put((future, function))
        return future

    def shutdown(self) -> None:
        self.jobs.put(None)


class _ConsumerClient:
    """One group member and the one thread that makes every (blocking) call on it."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        #: messages polled while waiting for the group to settle, handed out by the next fetch
        self.early: list[Any] = []
        #: the next batch, read ahead while the harness handles the last one (see ``fetch``)
        self.ahead: concurrent.futures.Future[Any] | None = None
        self.worker = _CallThread("brokerlab-kafka-consumer")

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self.worker.submit(lambda: function(*args, **kwargs)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(ADMIN_TIMEOUT):
                await self.call(self.consumer.close)
        self.worker.shutdown()


class KafkaAdapter(BrokerAdapter):
    """Topic ``brokerlab.<run id>`` with ``broker.partitions``, group ``<group>-<run id>``."""

    target = "kafka"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topic = self.names.joined(".")
        self.group = f"{self.names.group}-{self.names.run_id}"
        self.keyed = self.scenario.producers.keys > 0
        self.producers: dict[int, _ProducerClient | None] = {}
        self.consumers: dict[int, _ConsumerClient | None] = {}
        #: highest offset delivered per partition: an offset at or below it is a redelivery
        self.delivered: dict[int, int] = {}
        self.admin: AdminClient | None = None
        self.topic_created = False
        self.recreated = 0
        self.observer: _ConsumerClient | None = None
        self.replaced = 0

    def _config(self, client: str) -> dict[str, Any]:
        config = client_config(self.url_for(client))
        # Also how the lab's fault proxy tells connections apart (``adapters.faults``): every
        # connection's requests carry it, and the name must end with ``-<client>``.
        config["client.id"] = f"brokerlab-{self.names.run_id}-{client}"
        config["logger"] = LIBRDKAFKA_LOG  # not stderr: a run's errors reach the harness
        return config

    async def _create_topic(self) -> None:
        assert self.admin is not None
        topic = NewTopic(
            self.topic, num_partitions=self.scenario.broker.partitions, replication_factor=1
        )
        futures = self.admin.create_topics([topic], operation_timeout=ADMIN_TIMEOUT)
        try:
            await asyncio.to_thread(futures[self.topic].result, ADMIN_TIMEOUT)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    async def setup(self) -> None:
        self.admin = AdminClient(self._config("control"))
        await self._create_topic()
        self.topic_created = True
        metadata = await asyncio.to_thread(self.admin.list_topics, self.topic, ADMIN_TIMEOUT)
        if "tansu" in str(metadata.cluster_id).lower():
            # Say what was measured wherever the run is shown (run.json, summary, report).
            self.info["broker_label"] = TANSU_LABEL
            self.warnings.append(
                f"{TANSU_LABEL}: this run shows Kafka's semantics (partitions, keys, consumer "
                "groups, offsets, rebalances), not Kafka's storage, replication or performance"
            )
        self.info.update(
            {
                "cluster_id": metadata.cluster_id,
                "topic": self.topic,
                "partitions": len(metadata.topics[self.topic].partitions),
                "group": self.group,
                "producer": "acks=all, enable.idempotence=true",
                "commit": {"after": "after processing", "before": "on receipt"}.get(
                    self.scenario.consumers.ack, "automatic (enable.auto.commit)"
                ),
                "brokers": len(metadata.brokers),
                "client": CLIENT,
            }
        )
        for producer in range(self.scenario.producers.count):
            await self.open_producer(producer)

    # ---- producers

    async def open_producer(self, producer: int) -> None:
        config = self._config(f"producer-{producer}")
        config.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 1,
                "delivery.timeout.ms": max(
                    1000, int(self.scenario.producers.publish_timeout * 1000)
                ),
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        self.producers[producer] = await asyncio.to_thread(
            _ProducerClient, config, asyncio.get_running_loop()
        )

    async def close_producer(self, producer: int) -> None:
        client, self.producers[producer] = self.producers.get(producer), None
        if client is not None:
            await asyncio.to_thread(client.close, True)

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> asyncio.Future[PublishResults]:
        client = self.producers.get(producer)
        if client is None:
            raise ConnectionError(f"producer-{producer} is not connected")
        if client.fatal is not None:
            # As an application must: drop the broken producer (what it held ends unknown) and
            # send with a new one, which gets a new producer id from the broker.
            self.replaced += 1
            await asyncio.to_thread(client.close, True)
            await self.open_producer(producer)
            client = self.producers[producer]
            assert client is not None
        loop = client.loop
        batch: asyncio.Future[PublishResults] = loop.create_future()
        results: PublishResults = [0.0] * len(payloads)
        remaining = [len(payloads)]

        def settle(index: int, result: float | BaseException) -> None:
            results[index] = result
            remaining[0] -= 1
            if remaining[0] == 0 and not batch.done():
                batch.set_result(results)

        reports = client.reports

        def report(index: int) -> Any:
            def on_delivery(error: KafkaError | None, _message: Any) -> None:
                # librdkafka's poll thread: stamp the time here, settle on the loop
                if error is None:
                    result: float | BaseException = now()
                elif error.code() in _NOT_WRITTEN and not error.retriable():
                    result = PublishRejected(error.str())
                else:
                    result = ConnectionError(error.str())
                reports.append((settle, index, result))

            return on_delivery

        produce, topic, keyed = client.producer.produce, self.topic, self.keyed
        for index, payload in enumerate(payloads):
            key = str(decode_payload(payload)[2]).encode() if keyed else None
            try:
                produce(topic, payload, key, on_delivery=report(index))
            except (BufferError, KafkaException) as error:
                if index == 0:
                    raise
                for rest in range(index, len(payloads)):
                    settle(rest, PublishRejected(f"not queued: {error}"))
                break
        return batch

    # ---- consumers

    async def open_consumer(self, consumer: int) -> None:
        config = self._config(f"consumer-{consumer}")
        config.update(
            {
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": self.scenario.consumers.ack == "none",
                "enable.auto.offset.store": True,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 6,
                "fetch.wait.max.ms": 50,
            }
        )
        client = _ConsumerClient(await asyncio.to_thread(Consumer, config))
        try:
            await client.call(client.consumer.subscribe, [self.topic])
        except BaseException:
            await client.close()
            raise
        self.consumers[consumer] = client

    async def open_consumers(self, count: int) -> None:
        """Open every consumer, then wait until the group has handed out all partitions.

        Without the wait, a member that joins after the first one has started reading causes a
        rebalance mid-run, and whatever the first had processed but not yet committed would be
        delivered twice in a fault-free run. No message exists yet (producers start later), so
        polling here takes nothing away from the consumers.
        """
        for consumer in range(count):
            await self.open_consumer(consumer)
        partitions = self.scenario.broker.partitions
        deadline = now() + SESSION_TIMEOUT_MS / 1000 * 3
        while now() < deadline:
            assigned = 0
            for consumer in range(count):
                client = self.consumers.get(consumer)
                if client is None:
                    continue
                early = await client.call(client.consumer.consume, 1, 0.05)
                client.early.extend(m for m in early if m.error() is None)
                assigned += len(await client.call(client.consumer.assignment))
            if assigned >= partitions:
                return
        self.warnings.append(
            "the consumer group had not assigned every partition before the run started; a "
            "rebalance during the run may deliver uncommitted messages again"
        )

    async def close_consumer(self, consumer: int) -> None:
        # Nothing is committed; the group rebalances and its partitions go to the others.
        client, self.consumers[consumer] = self.consumers.get(consumer), None
        if client is not None:
            await client.close()

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        client = self.consumers.get(consumer)
        if client is None:
            raise ConnectionError(f"consumer-{consumer} is not connected")
        messages, client.early = client.early, []
        ahead, client.ahead = client.ahead, None
        if ahead is not None:
            messages += await asyncio.wrap_future(ahead)
        elif not messages:
            messages = await client.call(client.consumer.consume, max_messages, wait)
        if self.scenario.consumers.ack != "none":
            # Read the next batch on the consumer's thread while the harness handles this one,
            # as a bare consume loop on its own thread does: otherwise each batch waits for a
            # hand-over between that thread and the event loop, ~9% of the delivered rate when
            # flat out. The batch is read with this call's arguments: the harness asks the same
            # (prefetch, FETCH_WAIT) every time. Offsets are committed explicitly after
            # processing, so a batch read ahead but never handed out (a crash) is not committed
            # and is delivered again after the rebalance. Not with auto-commit (ack none):
            # librdkafka would commit what the lab has not seen yet.
            consume = client.consumer.consume
            client.ahead = client.worker.submit(lambda: consume(max_messages, wait))
        received: list[Received] = []
        delivered = self.delivered
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    await self._restore()
                raise KafkaException(error)
            partition, offset = message.partition(), message.offset()
            seen = delivered.get(partition, -1)
            delivery_no = 2 if offset <= seen else 1
            if offset > seen:
                delivered[partition] = offset
            received.append((message.value(), delivery_no, (partition, offset)))
        return received

    async def _restore(self) -> None:
        """The broker lost the topic (a memory-only broker restarted): create it again."""
        if self.admin is None or not self.topic_created:
            return
        with contextlib.suppress(Exception):
            await self._create_topic()
            self.recreated += 1

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        if self.scenario.consumers.ack == "none":
            return
        client = self.consumers.get(consumer)
        if client is None:
            raise ConnectionError(f"consumer-{consumer} is not connected")
        last: dict[int, int] = {}
        for partition, offset in handles:
            if offset >= last.get(partition, -1):
                last[partition] = offset
        offsets = [TopicPartition(self.topic, p, o + 1) for p, o in last.items()]
        # Asynchronous: the commit is queued now and sent by librdkafka's own thread.
        client.consumer.commit(offsets=offsets, asynchronous=True)

    # ---- broker's own view

    async def broker_stats(self) -> dict[str, float]:
        """Consumer lag as the broker sees it: end offsets minus the group's committed ones.

        Asked through a consumer of its own that never joins the group (it only reads the
        group's committed offsets), on its own thread, so the run's consumers never wait. Its
        client name, ``observer``, is no run client's, so in a fault run its connections go
        through a fault-free proxy: the broker's view is sampled even while clients are cut off.

        No ``broker_unacked``: Kafka has no per-message acknowledgement, and the broker does not
        know what a member has fetched, only what the group committed, so delivered but not yet
        committed messages are part of ``broker_backlog`` and cannot be told apart there. The
        column is left out (NaN wherever frames are combined), never estimated.
        """
        client = self.observer
        if client is None:
            if not self.topic_created:
                return {}
            config = self._config("observer")
            config.update({"group.id": self.group, "enable.auto.commit": False})
            client = self.observer = _ConsumerClient(await asyncio.to_thread(Consumer, config))

        def lag() -> dict[str, float]:
            metadata = client.consumer.list_topics(self.topic, timeout=2.0)
            partitions = [
                TopicPartition(self.topic, p) for p in metadata.topics[self.topic].partitions
            ]
            committed = client.consumer.committed(partitions, timeout=2.0)
            total = 0
            for tp in committed:
                _low, high = client.consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
                total += max(0, high - max(tp.offset, 0))
            return {"broker_backlog": float(total)}

        return await client.call(lag)

    # ---- teardown

    async def close(self) -> None:
        if self.replaced:
            self.warnings.append(
                f"a producer hit a fatal error (e.g. the broker forgot its idempotent producer id "
                f"after a restart) and was replaced {self.replaced} time(s)"
            )
        if self.recreated:
            self.warnings.append(
                "the topic vanished (a memory-only broker restarted) and was created again "
                f"{self.recreated} time(s)"
            )
        for consumer in list(self.consumers):
            await self.close_consumer(consumer)
        if self.observer is not None:
            await self.observer.close()
        for producer, client in list(self.producers.items()):
            self.producers[producer] = None
            if client is not None:
                await asyncio.to_thread(client.close, False)
        if self.admin is not None and self.topic_created:
            with contextlib.suppress(Exception):
                futures = self.admin.delete_topics([self.topic], operation_timeout=ADMIN_TIMEOUT)
                await asyncio.to_thread(futures[self.topic].result, ADMIN_TIMEOUT)
