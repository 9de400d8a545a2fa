"""The rabbitmq and kafka adapters against bare client loops on the same broker process.

For each target the lab starts its own broker (a private RabbitMQ node, the Tansu broker), then
plays the same flat-out load (everything offered at once, one producer, one consumer acking
after each batch) through the lab's adapter and through a bare client loop, 3 times each, and
prints the medians and their ratios. The runs alternate (bare, adapter, adapter, bare, ...), so
a machine shared with other work slows both sides alike; each line also shows the lab process's
CPU time per message, which other load on the machine hardly moves.

* RabbitMQ: confirmed publishes per second and delivered messages per second, the adapter
  against a bare aio-pika loop. Like for like: a transient classic queue and transient
  messages, confirm mode with the same number of publishes in flight, one consumer with the
  same prefetch (``PREFETCH``) and manual acks after processing (no processing time) sent as
  ``basic.ack multiple`` (the bare loop every ``BARE_ACK_EVERY`` deliveries; the adapter once
  per processed batch, batches processed back to back sharing one, see ``adapters/rabbitmq.py``).
* Kafka: acknowledged (delivery-reported) produces per second and consumed messages per second,
  the adapter against a bare confluent-kafka loop (idempotent producer, ``acks=all``; a consumer
  in a group committing asynchronously).

Goal: the adapter >= 90% of the bare loop on both rates.

    python bench/bench_rabbit_kafka.py                      # both targets
    python bench/bench_rabbit_kafka.py --targets kafka --messages 50000
    python bench/bench_rabbit_kafka.py --amqp-url amqp://guest:guest@127.0.0.1:5672/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerlab.adapters.embedded import EmbeddedBroker
from brokerlab.adapters.harness import MAX_IN_FLIGHT, encode_payload
from brokerlab.adapters.registry import run_real_async
from brokerlab.core.scenario import Scenario, parse_scenario

REPEATS = 3
PAYLOAD = 256
PREFETCH = 256
#: The bare RabbitMQ consumer acks (``multiple``) every this many deliveries.
BARE_ACK_EVERY = 64
GOAL = 0.90
MESSAGES = {"rabbitmq": 20_000, "kafka": 50_000}


def ceiling_scenario(target: str, messages: int) -> Scenario:
    """Offered far above any ceiling: the harness sends everything as fast as it can."""
    return parse_scenario(
        {
            "name": f"ceiling-{target}",
            "producers": {
                "rate": "5000000/s",
                "messages": messages,
                "arrival": "constant",
                "size": f"{PAYLOAD}B",
                # a ceiling run waits for every acknowledgement, as the bare loops do: with
                # MAX_IN_FLIGHT outstanding on a busy machine the default 5 s would cancel some
                "publish_timeout": "120s",
            },
            "broker": {"kind": target, "partitions": 1},
            "consumers": {"count": 1, "prefetch": PREFETCH, "ack": "after"},
            "drain_timeout": "120s",
        }
    )


def adapter_rates(target: str, url: str, messages: int) -> tuple[float, float]:
    """(acknowledged publishes/s, delivered/s) of one flat-out adapter run, which must have
    every publish acknowledged and delivered (else its rates would not compare with the bare
    loop's, which waits for all)."""
    result = asyncio.run(run_real_async(ceiling_scenario(target, messages), target, 1, url=url))
    sends, deliveries = result.trace.sends, result.trace.deliveries
    acked = int((sends["outcome"] == "acked").sum())
    delivered = deliveries["msg_id"].nunique()
    if acked != messages or delivered != messages:
        raise SystemExit(
            f"{target}: adapter run not comparable: {acked} of {messages} publishes acknowledged, "
            f"{delivered} delivered; warnings: {result.warnings}"
        )
    start = sends["t_sent"].min()
    return (
        acked / (sends["t_acked"].max() - start),
        delivered / (deliveries["t_delivered"].max() - start),
    )


# --------------------------------------------------------------------------- bare loops


async def bare_rabbitmq(url: str, messages: int, ack_every: int | None) -> tuple[float, float]:
    """aio-pika: publish with confirms (up to MAX_IN_FLIGHT outstanding) while one consumer
    (qos PREFETCH) acks with ``multiple``; (confirmed/s, delivered/s).

    ``ack_every=None`` acks the way the adapter does: everything delivered so far, once the
    deliveries that arrived together have been handled (one ``basic.ack multiple`` per turn of
    the event loop that had deliveries). ``ack_every=N`` acks every N deliveries instead: fewer
    ack frames, but an ack held until N-1 more messages arrived, which the adapter does not do.
    """
    import aio_pika
    from pamqp import commands as spec

    queue_name = f"brokerlab-bench-{time.monotonic_ns()}"
    producer = await aio_pika.connect(url)
    consumer = await aio_pika.connect(url)
    try:
        pchannel = await producer.channel(publisher_confirms=True)
        cchannel = await consumer.channel()
        await cchannel.set_qos(prefetch_count=PREFETCH)
        raw_p = await pchannel.get_underlay_channel()
        raw_c = await cchannel.get_underlay_channel()
        await raw_c.queue_declare(queue_name)
        done = asyncio.get_running_loop().create_future()
        received = [0]
        last_delivery = [0.0]

        pending_tag = [0]
        ack_tasks: set[asyncio.Task[Any]] = set()

        def ack_pending() -> None:
            task = asyncio.ensure_future(raw_c.basic_ack(pending_tag[0], multiple=True, wait=False))
            pending_tag[0] = 0
            ack_tasks.add(task)
            task.add_done_callback(ack_tasks.discard)

        async def on_message(message: Any) -> None:
            received[0] += 1
            if ack_every is None:
                if not pending_tag[0]:
                    asyncio.get_running_loop().call_soon(ack_pending)
                pending_tag[0] = message.delivery_tag
            elif received[0] % ack_every == 0 or received[0] == messages:
                await raw_c.basic_ack(message.delivery_tag, multiple=True, wait=False)
            if received[0] == messages and not done.done():
                last_delivery[0] = time.monotonic()
                done.set_result(None)

        consuming = await raw_c.basic_consume(queue_name, on_message)
        body = encode_payload(0, 0, 0, 0.0, PAYLOAD)
        properties = spec.Basic.Properties(delivery_mode=1, message_id="-")
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        last_confirm = [0.0]

        def confirmed(_task: Any) -> None:
            in_flight.release()
            last_confirm[0] = time.monotonic()

        start = time.monotonic()
        tasks = []
        for _ in range(messages):
            await in_flight.acquire()
            task = asyncio.create_task(
                raw_p.basic_publish(body, routing_key=queue_name, properties=properties, wait=False)
            )
            task.add_done_callback(confirmed)
            tasks.append(task)
        await asyncio.gather(*tasks)
        await asyncio.wait_for(done, 120)
        await raw_c.basic_cancel(consuming.consumer_tag)
        await raw_c.queue_delete(queue_name)
        return messages / (last_confirm[0] - start), messages / (last_delivery[0] - start)
    finally:
        await producer.close()
        await consumer.close()


def bare_kafka(url: str, messages: int) -> tuple[float, float]:
    """confluent-kafka: an idempotent producer (acks=all) producing flat out while a consumer
    thread reads and commits asynchronously; (acknowledged/s, consumed/s)."""
    import threading

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from brokerlab.adapters.kafka import client_config

    base = client_config(url)
    topic = f"brokerlab-bench-{time.monotonic_ns()}"
    admin = AdminClient(base)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    consumer = Consumer(
        {**base, "group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False,
         "session.timeout.ms": 6000, "fetch.wait.max.ms": 50}
    )  # fmt: skip
    consumer.subscribe([topic])
    while not consumer.assignment():  # join the group before producing, as the adapter does
        consumer.consume(1, 0.1)
    consumed = [0, 0.0]

    def consume() -> None:
        while consumed[0] < messages:
            batch = consumer.consume(PREFETCH, 0.25)
            batch = [m for m in batch if m.error() is None]
            if batch:
                consumed[0] += len(batch)
                consumer.commit(message=batch[-1], asynchronous=True)
        consumed[1] = time.monotonic()

    reader = threading.Thread(target=consume)
    producer = Producer(
        {**base, "acks": "all", "enable.idempotence": True, "linger.ms": 1,
         "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    acked = [0, 0.0]

    def on_delivery(error: Any, _message: Any) -> None:
        if error is None:
            acked[0] += 1
            acked[1] = time.monotonic()

    body = encode_payload(0, 0, 0, 0.0, PAYLOAD)
    start = time.monotonic()
    reader.start()
    for i in range(messages):
        producer.produce(topic, body, str(i % 8).encode(), on_delivery=on_delivery)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    reader.join(120)
    consumer.close()
    admin.delete_topics([topic])[topic].result(30)
    return messages / (acked[1] - start), messages / (consumed[1] - start)


# --------------------------------------------------------------------------- driver


@contextlib.contextmanager
def broker_for(target: str, url: str | None) -> Iterator[str]:
    """The broker to measure: the given URL, or one the lab starts for the benchmark."""
    if url:
        yield url
        return
    kind = "rabbitmq" if target == "rabbitmq" else "tansu"
    with tempfile.TemporaryDirectory() as folder, EmbeddedBroker(kind, Path(folder)) as broker:
        yield broker.url


Rates = tuple[float, float, float]  # (acknowledged/s, delivered/s, lab CPU us per message)


def _measured(run: Callable[[], tuple[float, float]], messages: int) -> Rates:
    """One run's two rates and this process's CPU time per message over the whole run."""
    start = time.process_time()
    published, delivered = run()
    return published, delivered, (time.process_time() - start) / messages * 1e6


def _rotating(runs: list[Callable[[], tuple[float, float]]], messages: int) -> list[list[Rates]]:
    """REPEATS runs of each, the order rotated every round (a b c, b c a, c a b...) so that load
    from other work hits them alike."""
    values: list[list[Rates]] = [[] for _ in runs]
    for repeat in range(REPEATS):
        for k in range(len(runs)):
            index = (k + repeat) % len(runs)
            values[index].append(_measured(runs[index], messages))
    return values


def _median(values: list[Rates], index: int) -> float:
    return statistics.median(v[index] for v in values)


def _fmt(values: list[Rates], index: int) -> str:
    return ", ".join(f"{v[index]:,.0f}" for v in values)


def bench(target: str, url: str | None, messages: int) -> None:
    """Print both rates of the adapter and of the bare loops, and the adapter's ratios.

    The goal is judged against the first bare loop, which acknowledges the way the adapter does
    (on RabbitMQ: once per handled group of deliveries; on Kafka: a commit per fetched batch);
    RabbitMQ also shows a bare loop that acks every BARE_ACK_EVERY deliveries, for scale.
    """
    with broker_for(target, url) as broker_url:
        bares: list[tuple[str, Callable[[], tuple[float, float]]]]
        if target == "rabbitmq":
            bares = [
                (
                    "bare aio-pika, acks like adapter",
                    lambda: asyncio.run(bare_rabbitmq(broker_url, messages, None)),
                ),
                (
                    f"bare aio-pika, ack every {BARE_ACK_EVERY}",
                    lambda: asyncio.run(bare_rabbitmq(broker_url, messages, BARE_ACK_EVERY)),
                ),
            ]
        else:
            bares = [("bare confluent-kafka loop", lambda: bare_kafka(broker_url, messages))]
        runs = [run for _, run in bares] + [lambda: adapter_rates(target, broker_url, messages)]
        measured = _rotating(runs, messages)
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{target} ({messages:,} messages of {PAYLOAD} B, {REPEATS} runs each, median;"
        f" load average {load} at the end):"
    )
    labels = [label for label, _ in bares] + ["adapter"]
    for label, values in zip(labels, measured, strict=True):
        print(f"  {label:<34} acked     {_median(values, 0):>9,.0f}/s  [{_fmt(values, 0)}]")
        print(f"  {label:<34} delivered {_median(values, 1):>9,.0f}/s  [{_fmt(values, 1)}]")
        print(f"  {label:<34} lab CPU   {_median(values, 2):>9,.0f} us/msg  [{_fmt(values, 2)}]")
    adapter = measured[-1]
    for k, label in enumerate(labels[:-1]):
        for name, index in (("acked", 0), ("delivered", 1)):
            ratio = _median(adapter, index) / _median(measured[k], index)
            verdict = (
                f"goal {GOAL:.0%}: {'met' if ratio >= GOAL else 'MISSED'}" if k == 0 else "no goal"
            )
            print(f"    {name:<10} {ratio:6.1%} of {label} ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="rabbitmq,kafka")
    parser.add_argument("--messages", type=int, default=None, help="per run (default per target)")
    parser.add_argument("--amqp-url", default=None, help="measure this RabbitMQ instead")
    parser.add_argument("--kafka-url", default=None, help="measure this Kafka instead")
    args = parser.parse_args()
    for target in args.targets.split(","):
        url = args.amqp_url if target == "rabbitmq" else args.kafka_url
        bench(target, url, args.messages or MESSAGES[target])


if __name__ == "__main__":
    main()
