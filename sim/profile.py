"""Performance profiles: what a broker kind costs, as data the simulator charges.

Queueing theory needs an ideal broker; a real one charges for every step: a round trip between
client and broker, broker work per publish (more with an fsync per write), per delivery and per
ack, the consumer's own per-message cost, a byte-rate cost, and a ceiling (parallelism, quotas).
A profile holds those costs for one broker kind (``sim/profiles/<kind>.yaml`` ships a default for
every kind; ``brokerlab calibrate`` measures this machine's local brokers and stores theirs).

A scenario chooses with ``broker.profile``: ``auto`` (this machine's calibration for the kind if
there is one, else the shipped default), ``default``, ``none`` (the ideal broker: what queueing
theory describes, exactly the simulator without costs) or a path to a profile file.

Until the simulator's collaborators charge each cost at its own step, :func:`apply_profile` maps
a profile onto the knobs every model already has (one-way network delay, broker service times
and servers, the consumer's time per message), so every model and preset pays them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from brokerlab.core.load import client_processes, draw
from brokerlab.core.scenario import (
    Constant,
    Distribution,
    Duration,
    Empirical,
    Scenario,
    TimeDistribution,
    _field_path,
)
from brokerlab.core.units import parse_rate, parse_size
from brokerlab.core.vocabulary import BROKER_KINDS

#: Shipped default profiles, one per broker kind.
PROFILES_DIR = Path(__file__).with_name("profiles")
#: Names ``broker.profile`` accepts besides a path.
PROFILE_CHOICES = ("auto", "default", "none")
#: Samples used to add two distributions (a fixed seed: the same sum for every run).
SUM_SAMPLES = 20_000
_SUM_SEED = 20_261_129


class ProfileError(Exception):
    """A profile a user gave (or calibrated) cannot be used: file, field, reason."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        super().__init__(
            "\n".join(f"{self.path}: {f}: {r}" if f else f"{self.path}: {r}" for f, r in problems)
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """Where one number comes from: a document or benchmark, when it was read, checked or not."""

    what: str = Field(description="which numbers this source gives")
    source: str = Field(description="URL or citation")
    date: str = Field(description="when the source was published or read (YYYY-MM or -DD)")
    verified: bool = Field(False, description="measured by the lab, not only read")


class Provenance(_Model):
    """How the profile came about: calibrated here (host, date, versions, runs) or shipped."""

    origin: Literal["calibrated", "default"]
    note: str = ""
    host: str | None = None
    date: str | None = None
    broker_version: str | None = None
    lab_version: str | None = None
    runs: list[str] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    unverified: bool = Field(False, description="no number was measured by the lab")

    def describe(self, kind: str) -> str:
        """One line for summaries and reports."""
        if self.origin == "calibrated":
            return (
                f"{kind}: calibrated on {self.host or '?'} at {self.date or '?'} against "
                f"{self.broker_version or 'unknown version'} (brokerlab {self.lab_version or '?'}, "
                f"{len(self.runs)} runs)"
            )
        mark = ", unverified" if self.unverified else ""
        dates = sorted({s.date for s in self.sources})
        span = f", sources {dates[0]}..{dates[-1]}" if len(dates) > 1 else ""
        span = span or (f", source {dates[0]}" if dates else "")
        count = f"{len(self.sources)} source{'' if len(self.sources) == 1 else 's'}"
        measured = f", measured on {self.host}" if self.host else ""
        return f"{kind}: shipped default ({count}{span}{measured}{mark})"


class PublishCost(_Model):
    """Broker work per publish by ``broker.persistence.mode`` (an fsync per write costs more)."""

    none: TimeDistribution = Constant(dist="constant", value=0.0)
    periodic: TimeDistribution = Constant(dist="constant", value=0.0)
    always: TimeDistribution = Constant(dist="constant", value=0.0)


class Consume(_Model):
    """How consumers get messages: ``pull`` (a round trip per fetch of up to ``prefetch``) or
    ``push`` (the broker sends while fewer than ``window`` are unacked; 0 = ``prefetch``).
    Charged by :mod:`brokerlab.sim.models.consume`."""

    mode: Literal["pull", "push"] = "pull"
    window: int = Field(0, ge=0)
    wake: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="pull: how long a consumer blocked in a fetch takes to see the message the "
        "broker answers it with (the broker waking blocked readers, the client's event loop "
        "waking); paid only by answers to a fetch that had to wait, so light load pays it and a "
        "backlog does not",
    )
    status: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="pull, where the kind's preset says pull_status: how long after a short "
        "answer's last message (fewer than the fetch asked for, prefetch above 1) the client "
        "sees the status that ends its fetch (JetStream with nats-py: the server's 408 or 404 "
        "after the messages; measured by calibrate's batch rung)",
    )
    fetch: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="pull: broker work per fetch request, served on the broker's servers like "
        "publishes and deliveries (a JetStream pull request is a message the server handles "
        "and a waiting request it keeps; XREADGROUP is a command): with prefetch 1 every "
        "message pays it, and all consumers share the servers that do it",
    )


class ClientCost(_Model):
    """The client library's own time per message on each side (serialising, syscalls, dispatch)."""

    publish: TimeDistribution = Constant(dist="constant", value=0.0)
    consume: TimeDistribution = Constant(dist="constant", value=0.0)
    timer: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="how late a consumer wakes from a processing wait (charged per message "
        "with processing time; a busy machine wakes sleepers late)",
    )


def _byte_rate(value: Any) -> Any:
    """``200MB/s``, ``1MiB/s`` (bytes per second) or a plain rate (``1000/s``, a number)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().endswith("/s"):
        head = value.strip()[:-2].strip()
        if head and not head.replace(".", "", 1).isdigit():
            return float(parse_size(head))
    return parse_rate(value)


ByteRate = Annotated[float | None, BeforeValidator(_byte_rate)]


class Quota(_Model):
    """Managed-service limits per provisioned unit (a shard, a partition, a throughput unit):
    publishes over them are throttled."""

    unit: Literal["shard", "partition", "throughput-unit", "queue"] = "queue"
    messages: ByteRate = Field(None, description="publishes per second per unit")
    bytes: ByteRate = Field(None, description="published bytes per second per unit")


class Clients(_Model):
    """Who spends a local broker's capacity: the broker process and the clients' processes,
    on one machine's cores.

    A message costs CPU in the broker and in the client processes (a Python process uses at
    most one core). The capacity is what the first of three limits allows: the broker's own
    cores (Redis runs its commands on one thread), the client processes (one core each) and
    the machine's cores (all of it). Measured on the development machine, Redis with 1 kB
    messages offered 60,000/s: one client process used a whole core and delivered about
    35,000/s with Redis at half a core; two client processes (the harness's rule above
    40,000/s) used the rest of the machine and delivered 41,000-45,000/s. So the capacity a
    scenario gets depends on how many client processes play it, which the simulator decides
    with the harness's own rule (:func:`brokerlab.core.load.client_processes`).
    """

    share: float = Field(
        ge=0,
        le=1,
        description="of the CPU a message costs, the share spent in the client processes "
        "(measured by brokerlab calibrate at its ceilings: the machine's busy CPU less the "
        "broker's)",
    )
    broker_cores: float = Field(
        gt=0, description="cores the broker's own work can use (Redis: 1; NATS: every core)"
    )
    cores: int = Field(ge=1, description="the machine's cores")
    single_process_rate: float = Field(
        gt=0,
        description="offered rate one client process plays; above it the harness uses more "
        "processes (the target's single_process_rate when the profile was measured)",
    )

    def load(self, processes: int) -> float:
        """The busiest limit's share of a message's CPU with ``processes`` client processes
        (per core of that limit): its capacity is proportional to ``1 / load``."""
        return max(
            (1.0 - self.share) / self.broker_cores,
            self.share / max(processes, 1),
            1.0 / self.cores,
        )

    def scale(self, processes: int) -> float:
        """Capacity a message uses with ``processes`` client processes, relative to one."""
        return self.load(processes) / self.load(1)


class Capacity(_Model):
    """What the broker and its clients sustain together, beyond what its servers say: a
    message of ``size`` bytes uses ``1 / messages + size / bytes`` seconds of it. Charged as
    capacity only, with no latency below it (:mod:`brokerlab.sim.pace`): near its ceiling the
    machine's CPU is shared by the broker and the clients, and bigger messages cost more of it,
    while at light load that work runs beside the message's own path.

    With ``clients``, ``messages`` and ``bytes`` are the capacity with one client process, and
    a run played by more processes gets what :meth:`Clients.load` says; without it, one
    capacity for every run.

    With ``publish_share``, publishes use that share of it and deliveries the rest
    (:class:`brokerlab.sim.pace.SharedPacer`): beyond the ceiling, deliveries get what the
    producers' publishes leave while they send, and a backlog drains faster once they stop, as
    the real brokers do."""

    messages: ByteRate = Field(None, description="messages per second (of no size)")
    bytes: ByteRate = Field(None, description="bytes per second")
    fetches: ByteRate = Field(
        None,
        description="fetch requests per second (pull consumers: Redis XREADGROUP and its XACK, "
        "a JetStream fetch and its acks): a message uses 1 / (fetches x prefetch) of the "
        "capacity more, a full fetch's share, as at the ceiling where every fetch comes back "
        "full (measured by brokerlab calibrate from ceilings with prefetch 50 and 10); unset: "
        "no cost per fetch (push consumers, or a profile from before 2026-12-01)",
    )
    clients: Clients | None = Field(
        None, description="the broker's and the clients' shares of the machine (see Clients)"
    )
    publish_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="of the capacity a message uses, the share its publish takes (measured by "
        "brokerlab calibrate: 1 - the ceiling's rate / the rate a backlog drains at once the "
        "producers stop); 0: deliveries alone use it",
    )
    publish_batched: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="the same share for a publish in a full call, as a producer behind "
        "schedule sends them (measured by brokerlab calibrate from what an overload delivered "
        "while its producer sent); unset: publish_share",
    )

    def seconds(self, processes: int = 1, prefetch: int | None = None) -> tuple[float, float]:
        """Capacity a message uses with ``processes`` client processes: (seconds per message,
        seconds per byte); with ``prefetch``, the message's share of a full fetch is in the
        first (a fetch of up to ``prefetch`` messages costs the same whatever it holds)."""
        scale = 1.0 if self.clients is None else self.clients.scale(processes)
        fetch = scale / (self.fetches * prefetch) if self.fetches and prefetch else 0.0
        return (
            (scale / self.messages if self.messages else 0.0) + fetch,
            scale / self.bytes if self.bytes else 0.0,
        )

    def processes(self, scenario: Scenario) -> int:
        """Client processes a real run of ``scenario`` uses (1 without ``clients``)."""
        if self.clients is None:
            return 1
        return client_processes(scenario, self.clients.single_process_rate, self.clients.cores)


class Idle(_Model):
    """An idle machine wakes slowly (:mod:`brokerlab.sim.idle`): a hop sent after the machine
    has been idle for ``t`` takes ``cost * (1 - exp(-t / tau))`` longer."""

    cost: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="the wake-up of a machine idle for long (the round trip is a busy one's)",
    )
    tau: Duration = Field(0.003, gt=0, description="how fast the wake-up grows with idle time")


class Profile(_Model):
    """The costs that decide latency and capacity of one broker kind."""

    kind: str
    provenance: Provenance
    round_trip: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="client to broker and back, client stacks included",
    )
    publish: PublishCost = PublishCost()
    deliver: TimeDistribution = Field(
        Constant(dist="constant", value=0.0), description="broker work per delivery"
    )
    ack: TimeDistribution = Field(
        Constant(dist="constant", value=0.0), description="broker work per ack"
    )
    durable_writes_per_delivery: float = Field(
        0.0,
        ge=0,
        description="with persistence always, the fsyncs a delivery and its ack cost (consumer "
        "group state is written too), in units of publish.always - publish.none",
    )
    consume: Consume = Consume()
    client: ClientCost = ClientCost()
    parallelism: int = Field(1, ge=1, description="broker operations served at once")
    bandwidth: ByteRate = Field(None, description="broker bytes per second (size cost)")
    batching: TimeDistribution = Field(
        Constant(dist="constant", value=0.0),
        description="producer linger before a batch leaves (Kafka linger.ms)",
    )
    quota: Quota | None = None
    idle: Idle | None = Field(
        None,
        description="an idle machine's slow wake-ups, charged on hops (brokerlab calibrate "
        "measures them at light and at busier load)",
    )
    capacity: Capacity | None = Field(
        None,
        description="sustained capacity of broker and clients together, charged without latency "
        "(brokerlab calibrate measures it with small and large messages)",
    )

    def describe(self) -> str:
        return self.provenance.describe(self.kind)


# --------------------------------------------------------------------------- loading


def calibrated_dir() -> Path:
    """Where ``brokerlab calibrate`` stores this machine's profiles: ``$BROKERLAB_PROFILES``, else
    ``$XDG_DATA_HOME/brokerlab/profiles`` (``~/.local/share/brokerlab/profiles``)."""
    given = os.environ.get("BROKERLAB_PROFILES")
    if given:
        return Path(given)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "brokerlab" / "profiles"


def parse_profile(data: Any, source: str | Path) -> Profile:
    """Validate loaded YAML as a profile; :class:`ProfileError` names every bad field."""
    if not isinstance(data, dict):
        raise ProfileError(source, [("", "expected a mapping of profile fields")])
    try:
        profile = Profile.model_validate(data)
    except ValidationError as error:
        problems: dict[str, str] = {}
        for item in error.errors():
            reason = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                reason = "unknown field"
            elif item["type"] == "missing":
                reason = "required field is missing"
            problems.setdefault(_field_path(item["loc"]), reason)
        raise ProfileError(source, list(problems.items())) from None
    if profile.kind not in BROKER_KINDS:
        raise ProfileError(
            source, [("kind", f"unknown broker kind {profile.kind!r}; use one of {BROKER_KINDS}")]
        )
    return profile


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise ProfileError(path, [("", "no such profile file")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ProfileError(path, [("", f"not valid YAML: {error}")]) from None
    return parse_profile(data, path)


@cache
def _shipped(kind: str) -> Profile | None:
    from brokerlab.sim.presets import PRESETS_FILE, presets

    pointer = (presets().get(kind) or {}).get("profile")
    path = PRESETS_FILE.parent / pointer if pointer else PROFILES_DIR / f"{kind}.yaml"
    return load_profile(path) if path.exists() else None


def default_profile(kind: str) -> Profile | None:
    """The profile shipped with the lab for ``kind`` (published figures or a reference machine)."""
    return _shipped(kind)


def calibrated_profile(kind: str) -> Profile | None:
    """This machine's calibrated profile for ``kind``, if ``brokerlab calibrate`` stored one."""
    path = calibrated_dir() / f"{kind}.yaml"
    return load_profile(path) if path.exists() else None


def resolve_profile(spec: str, kind: str) -> Profile | None:
    """The profile ``broker.profile`` names for a run of ``kind``; None for ``none``."""
    if spec == "none":
        return None
    if spec == "auto":
        return calibrated_profile(kind) or default_profile(kind)
    if spec == "default":
        profile = default_profile(kind)
        if profile is None:
            raise ProfileError(PROFILES_DIR / f"{kind}.yaml", [("", "no shipped profile")])
        return profile
    profile = load_profile(spec)
    if profile.kind != kind:
        raise ProfileError(
            spec, [("kind", f"profile is for {profile.kind}, the run's broker is {kind}")]
        )
    return profile


def store_profile(profile: Profile, out: Path | None = None) -> Path:
    """Write ``profile`` (to ``out`` or this machine's store) completely or not at all."""
    path = out or calibrated_dir() / f"{profile.kind}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    staging.write_text(profile_to_yaml(profile), encoding="utf-8")
    staging.replace(path)
    return path


def profile_to_yaml(profile: Profile) -> str:
    """The profile as a file: times in seconds, rates per second."""
    return yaml.safe_dump(profile.model_dump(mode="json", exclude_none=True), sort_keys=False)


# --------------------------------------------------------------------------- charging


@dataclass(frozen=True)
class Throttle:
    """A publish quota the broker enforces: what goes over it is rejected, not queued.

    ``messages`` and ``bytes`` are per second per unit (None: no such limit). With
    ``per_partition`` each of ``units`` partitions (Kinesis shards) has its own limit and a
    message counts against its key's partition; otherwise the ``units`` pool their limits
    (Event Hubs throughput units, a queue).
    """

    messages: float | None
    bytes: float | None
    units: int
    per_partition: bool


@dataclass(frozen=True)
class Charged:
    """A scenario with a profile's costs folded in, and what was charged (for run.json).

    ``throttle`` is the profile's publish quota, which the simulator's publisher enforces.
    """

    scenario: Scenario
    charges: dict[str, float]
    throttle: Throttle | None = None


def _mean(dist: Distribution) -> float:
    return float(dist.mean)


def add(*dists: Distribution) -> Distribution:
    """The distribution of a sum of independent draws (constants stay exact; otherwise an
    empirical distribution of :data:`SUM_SAMPLES` sums from a fixed seed)."""
    moving = [d for d in dists if not (isinstance(d, Constant))]
    shift = sum(float(d.value) for d in dists if isinstance(d, Constant))
    if not moving:
        return Constant(dist="constant", value=shift)
    if len(moving) == 1 and shift == 0:
        return moving[0]
    rng = np.random.default_rng(_SUM_SEED)
    total = np.full(SUM_SAMPLES, shift)
    for dist in moving:
        total += draw(dist, rng, SUM_SAMPLES)
    return Empirical(dist="empirical", values=[round(float(v), 9) for v in total])


def scaled(dist: Distribution, factor: float) -> Distribution:
    """``dist`` with every draw multiplied by ``factor``."""
    if factor == 1:
        return dist
    data = dist.model_dump()
    for name, value in data.items():
        if name != "dist":
            data[name] = [v * factor for v in value] if isinstance(value, list) else value * factor
    return type(dist).model_validate(data)


def _keeps_partition_order(kind: str) -> bool:
    """Whether ``kind``'s preset is partitioned: one producer's messages to a partition keep
    their order (a partition is an ordered log)."""
    from brokerlab.sim.presets import presets

    return bool((presets().get(kind) or {}).get("partitioned"))


def apply_profile(scenario: Scenario, profile: Profile) -> Charged:
    """The scenario as the simulator plays it with ``profile``'s costs charged.

    Each hop between a client and the broker takes half the round trip plus half the size cost
    of a mean message (a scenario's own ``network.delay`` is the network, and is added to it).
    The broker's servers do the publish work of the scenario's persistence mode, and for each
    delivery the delivery and ack work (the ack is charged with its delivery), ``parallelism`` at
    a time; service times the scenario sets itself win. A consumer's time per message is its
    processing plus the client's per-message cost and, when it has processing time, its
    lateness waking from it (the ack's round trip is the engine's own: a consumer waits for the
    reply, as the harness does).
    Producer batching (``linger``) is publish latency that does not use broker capacity. So is
    an fsync per write (``persistence.mode: always``, the extra of ``publish.always`` over
    ``publish.none``, and its share per delivery): brokers commit in groups — Redis appends the
    commands of one event-loop iteration, from every client, with a single write and a single
    fsync before replying (redis.io, "Redis persistence", appendfsync always) — so each write
    waits for the fsync but concurrent writes share it. For
    partitioned kinds (Kafka, Kinesis, Event Hubs) the broker's steps are charged at their means
    so that the parallel servers never reorder a producer's messages within a partition.
    Publish quotas (``units × quota``, the units being ``broker.throughput_units``, else
    ``broker.partitions``) are not folded in: they come back as :class:`Throttle`, and the
    publisher rejects a publish over the quota, as the service answers ThrottlingException /
    ServerBusy; the producer retries it with the scenario's retry policy or gives up. Nor is the
    profile's ``capacity`` (what broker and clients sustain, by messages and bytes), which
    paces deliveries without adding latency below it (:mod:`brokerlab.sim.pace`), nor its
    ``idle`` wake-ups, charged on hops (:mod:`brokerlab.sim.idle`).
    """
    broker, consumers = scenario.broker, scenario.consumers
    size = _mean(scenario.producers.size)
    per_byte = 1.0 / profile.bandwidth if profile.bandwidth else 0.0
    half_rtt = scaled(profile.round_trip, 0.5)
    # The size cost rides on the hops (two of a message's four carry its payload): it is time on
    # the wire and in the client stacks, not broker capacity.
    hop = add(
        half_rtt,
        profile.client.publish,
        scenario.network.delay,
        Constant(dist="constant", value=size * per_byte / 2),
    )
    always = broker.persistence.mode == "always"
    # An fsync per write is group-committed: the time a write waits, not broker capacity.
    fsync_publish = (
        max(_mean(profile.publish.always) - _mean(profile.publish.none), 0.0) if always else 0.0
    )
    work = add(
        profile.publish.none if always else getattr(profile.publish, broker.persistence.mode),
        Constant(dist="constant", value=fsync_publish),
    )
    acks = consumers.ack != "none" and broker.kind != "nats"
    fsync = fsync_publish * profile.durable_writes_per_delivery
    deliver = add(
        profile.deliver,
        profile.ack if acks else Constant(dist="constant", value=0.0),
        Constant(dist="constant", value=fsync),
    )
    batching = profile.batching
    if _keeps_partition_order(broker.kind):
        # Parallel servers with random service times finish out of order, but a partitioned log
        # appends one producer's messages to a partition in the order they were sent (Kafka
        # handles a connection's requests one at a time). Equal work per step on FIFO servers
        # keeps that order, so each step is charged at its mean (the tails come from the round
        # trip, on FIFO links); the linger is a constant wait for the batch, never a reordering.
        work, deliver, batching = (
            Constant(dist="constant", value=_mean(d)) for d in (work, deliver, batching)
        )
    # A scenario's own servers and service times (anything but the defaults) win over the profile.
    own_servers = broker.servers != 1
    servers = broker.servers if own_servers else profile.parallelism
    linger = _mean(batching)
    publish = add(work, batching)
    waits = linger + fsync_publish + fsync  # latency on the servers that is not broker work
    if waits > 0 and not own_servers:
        # A batch waiting to leave the producer, or a write waiting for a shared fsync, is
        # latency, not broker work: add servers so the broker's ceiling stays
        # parallelism / (publish + delivery work).
        busy = _mean(work) + _mean(deliver) - fsync_publish - fsync
        servers = max(servers, math.ceil(servers * (busy + waits) / busy) if busy else servers)
    throttle = None
    quota = profile.quota
    if quota is not None and (quota.messages or quota.bytes):
        throttle = Throttle(
            messages=quota.messages,
            bytes=quota.bytes,
            units=broker.throughput_units or broker.partitions,
            per_partition=quota.unit in ("shard", "partition"),
        )
    service: dict[str, Any] = dict(broker.service_time)
    if _mean(broker.service_time.publish) == 0:
        service["publish"] = publish
    if _mean(broker.service_time.deliver) == 0:
        service["deliver"] = deliver
    per_message = [consumers.processing, profile.client.consume]
    processes = _mean(consumers.processing) > 0
    if processes:
        per_message.append(profile.client.timer)
    processing = add(*per_message)
    charged = scenario.model_copy(
        update={
            "network": scenario.network.model_copy(update={"delay": hop}),
            "broker": broker.model_copy(
                update={
                    "service_time": broker.service_time.model_copy(update=service),
                    "servers": servers,
                }
            ),
            "consumers": consumers.model_copy(update={"processing": processing}),
        }
    )
    charges = {
        "hop_mean_s": _mean(hop),
        "publish_mean_s": _mean(charged.broker.service_time.publish),
        "deliver_mean_s": _mean(charged.broker.service_time.deliver),
        "servers": float(servers),
        "consumer_per_message_mean_s": _mean(processing) - _mean(consumers.processing),
    }
    if profile.capacity is not None and any(profile.capacity.seconds()):
        processes = profile.capacity.processes(scenario)
        per_message, per_byte = profile.capacity.seconds(processes, consumers.prefetch)
        charges["capacity_per_s"] = 1.0 / (per_message + per_byte * size)
        if profile.capacity.clients is not None:
            charges["client_processes"] = float(processes)
    if throttle is not None:
        charges["quota_units"] = float(throttle.units)
        if throttle.messages:
            charges["quota_messages_per_s"] = throttle.messages * throttle.units
        if throttle.bytes:
            charges["quota_bytes_per_s"] = throttle.bytes * throttle.units
    return Charged(charged, charges, throttle)


def profile_record(profile: Profile | None, spec: str) -> dict[str, Any]:
    """What run.json says about the profile a simulator run used."""
    if profile is None:
        return {"name": "none", "requested": spec, "describe": "none (ideal broker, no costs)"}
    return {
        "name": profile.provenance.origin,
        "requested": spec,
        "kind": profile.kind,
        "describe": profile.describe(),
        "provenance": profile.provenance.model_dump(mode="json", exclude_none=True),
    }
