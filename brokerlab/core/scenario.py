"""The scenario: one YAML file that describes a use case end to end.

A scenario is parsed into immutable, typed objects (pydantic models) so that every target, the
simulator and the real-broker adapters alike, reads exactly the same numbers. Quantities are
written with units (``5ms``, ``2kB``, ``800/s``) and stored in seconds, bytes and events per
second. Every problem a user can make is reported at once, with the file, the field path and the
reason, through :class:`ScenarioError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from brokerlab.core.units import parse_duration, parse_rate, parse_size
from brokerlab.core.vocabulary import (
    BROKER_KINDS,
    FAULT_ACTIONS,
    LATENCY_KINDS,
    LATENCY_STATISTICS,
    BrokerKind,
    FaultAction,
)

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Rate = Annotated[float, BeforeValidator(parse_rate)]


class _Model(BaseModel):
    """Base for scenario parts: unknown fields are errors, parsed objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- distributions


class Constant(_Model):
    """Always the same value."""

    dist: Literal["constant"] = "constant"
    value: float = Field(ge=0)

    @property
    def mean(self) -> float:
        return self.value


class Exponential(_Model):
    """Memoryless times: the M in M/M/1."""

    dist: Literal["exponential"]
    mean: float = Field(ge=0)


class Uniform(_Model):
    """Anything between ``min`` and ``max`` with equal chance."""

    dist: Literal["uniform"]
    min: float = Field(ge=0)
    max: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.max < self.min:
            raise ValueError("max must be at least min")
        return self

    @property
    def mean(self) -> float:
        return (self.min + self.max) / 2


#: z-score of the 99th percentile of a standard normal distribution (a lognormal's
#: p99 / median is e^(Z99 sigma)).
Z99 = 2.3263478740408408


class LogNormal(_Model):
    """Long-tailed service times, given as a median and a 99th percentile as people measure them."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    p99: float = Field(gt=0)

    @model_validator(mode="after")
    def _tail(self) -> LogNormal:
        if self.p99 < self.median:
            raise ValueError("p99 must be at least the median")
        return self

    @property
    def sigma(self) -> float:
        return math.log(self.p99 / self.median) / Z99

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)


class Empirical(_Model):
    """Values measured elsewhere, drawn with equal chance (resampling)."""

    dist: Literal["empirical"]
    values: list[float] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _non_negative(cls, values: list[float]) -> list[float]:
        if any(v < 0 for v in values):
            raise ValueError("values cannot be negative")
        return values

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


Distribution = Constant | Exponential | Uniform | LogNormal | Empirical

_DIST_KINDS = {"constant", "exponential", "uniform", "lognormal", "empirical"}


def _distribution_parser(parse: Any, fields: tuple[str, ...]) -> Any:
    """Build a validator that accepts ``5ms`` (constant) or ``{dist: ..., <fields with units>}``."""

    def convert(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value
        if isinstance(value, dict):
            kind = value.get("dist")
            if kind is None:
                raise ValueError(f"a distribution needs 'dist' (one of {sorted(_DIST_KINDS)})")
            if kind not in _DIST_KINDS:
                raise ValueError(f"unknown dist {kind!r}; use one of {sorted(_DIST_KINDS)}")
            out = dict(value)
            for name in fields:
                if name in out:
                    out[name] = parse(out[name])
            if "values" in out:
                if not isinstance(out["values"], list):
                    raise ValueError("'values' must be a list")
                out["values"] = [parse(v) for v in out["values"]]
            return out
        return {"dist": "constant", "value": parse(value)}

    return convert


_DIST_FIELDS = ("value", "mean", "min", "max", "median", "p99")
TimeDistribution = Annotated[
    Distribution,
    Field(discriminator="dist"),
    BeforeValidator(_distribution_parser(parse_duration, _DIST_FIELDS)),
]
SizeDistribution = Annotated[
    Distribution,
    Field(discriminator="dist"),
    BeforeValidator(_distribution_parser(parse_size, _DIST_FIELDS)),
]


# --------------------------------------------------------------------------- producers


class Poisson(_Model):
    """Independent arrivals at the mean rate (exponential gaps)."""

    process: Literal["poisson"] = "poisson"


class Steady(_Model):
    """Evenly spaced sends at the rate."""

    process: Literal["constant"]


class OnOff(_Model):
    """Bursts: Poisson at ``rate * (on + off) / on`` while on, silence while off.

    The mean over a whole cycle is the producer ``rate``, so bursty and steady scenarios offer
    the same load and differ only in its shape.
    """

    process: Literal["on-off"]
    on: Duration = Field(gt=0)
    off: Duration = Field(ge=0)


class Ramp(_Model):
    """Rate rising (or falling) linearly from ``start`` to the producer ``rate`` over ``over``."""

    process: Literal["ramp"]
    start: Rate
    over: Duration = Field(gt=0)


Arrival = Poisson | Steady | OnOff | Ramp


_ARRIVAL_KINDS = ("poisson", "constant", "on-off", "ramp")


def _arrival(value: Any) -> Any:
    if isinstance(value, str):
        value = {"process": value}
    if isinstance(value, dict):
        # YAML 1.1 reads bare `on:` / `off:` keys as booleans; users mean the field names.
        value = {
            {True: "on", False: "off"}.get(k, k) if isinstance(k, bool) else k: v
            for k, v in value.items()
        }
        process = value.get("process", "poisson")
        if process not in _ARRIVAL_KINDS:
            raise ValueError(
                f"unknown arrival process {process!r}; use one of {', '.join(_ARRIVAL_KINDS)}"
            )
        return {"process": process, **value}
    return value


class Producers(_Model):
    """Who sends what, how fast, for how long, and what to do when a publish fails."""

    count: int = Field(1, ge=1, description="producer clients")
    rate: Rate = Field(description="offered rate of all producers together, e.g. 800/s")
    arrival: Annotated[Arrival, Field(discriminator="process"), BeforeValidator(_arrival)] = (
        Poisson()
    )
    messages: int | None = Field(None, ge=1, description="total messages of all producers")
    duration: Duration | None = Field(None, description="how long producers send")
    warmup: Duration = Field(0.0, description="sends before this are left out of percentiles")
    size: SizeDistribution = Constant(value=256)
    keys: int = Field(0, ge=0, description="key space size; 0 means no keys")
    retry: Literal["none", "same-id", "new-id"] = "none"
    max_attempts: int = Field(3, ge=1)
    retry_backoff: Duration = Field(0.1, description="wait between publish attempts")
    publish_timeout: Duration = Field(5.0, gt=0)
    confirm: Literal["sync", "async"] = Field(
        "async", description="wait for each publish ack before the next (sync) or pipeline"
    )

    @field_validator("rate")
    @classmethod
    def _positive_rate(cls, rate: float) -> float:
        if rate <= 0:
            raise ValueError("rate must be greater than zero")
        return rate

    @model_validator(mode="after")
    def _bounded(self) -> Producers:
        if self.messages is None and self.duration is None:
            raise ValueError("say how long producers send: 'messages' or 'duration'")
        if self.messages is not None and self.duration is not None:
            raise ValueError("give 'messages' or 'duration', not both")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be greater than zero")
        return self

    @property
    def total_messages(self) -> int:
        """Messages offered in the whole run (derived from duration × rate when needed)."""
        if self.messages is not None:
            return self.messages
        assert self.duration is not None
        return max(1, round(self.duration * self.rate))


# --------------------------------------------------------------------------- broker


class Persistence(_Model):
    """How durable an acknowledged write is: ``none``, ``periodic`` (with interval), ``always``."""

    mode: Literal["none", "periodic", "always"] = "none"
    interval: Duration = Field(1.0, gt=0)


def _persistence(value: Any) -> Any:
    if isinstance(value, str):
        return {"mode": value}
    return value


class ServiceTime(_Model):
    """Broker work per operation, so the simulated broker saturates like a real one."""

    publish: TimeDistribution = Constant(value=0.0)
    deliver: TimeDistribution = Constant(value=0.0)


def _service_time(value: Any) -> Any:
    if isinstance(value, str | int | float):
        return {"publish": value, "deliver": value}
    return value


class Broker(_Model):
    """The broker and its settings; real adapters turn these into real configuration."""

    kind: BrokerKind = Field(description="one of " + ", ".join(BROKER_KINDS))
    persistence: Annotated[Persistence, BeforeValidator(_persistence)] = Persistence()
    storage: Literal["memory", "file"] = "file"
    max_length: int = Field(0, ge=0, description="keep at most this many messages; 0 = no limit")
    retention: Duration = Field(0.0, description="drop messages older than this; 0 = no limit")
    partitions: int = Field(1, ge=1)
    ack_timeout: Duration = Field(30.0, gt=0, description="redeliver unacked after this")
    max_deliveries: int = Field(0, ge=0, description="give up after this many; 0 = no limit")
    max_ack_pending: int = Field(1000, ge=1)
    dedup_window: Duration = Field(0.0, description="drop republished ids within this window")
    pending_limit: int = Field(
        512 * 1024, ge=1, description="fire-and-forget: messages a slow consumer may queue"
    )
    service_time: Annotated[ServiceTime, BeforeValidator(_service_time)] = ServiceTime()
    servers: int = Field(1, ge=1, description="operations the broker serves in parallel")
    throughput_units: int | None = Field(
        None,
        ge=1,
        description="provisioned capacity units of a managed service (Event Hubs throughput "
        "units); a profile's quota holds per unit; unset: one unit per partition (Kinesis shards)",
    )
    profile: str = Field(
        "auto",
        min_length=1,
        description="simulator performance profile: auto (this machine's calibration, else the "
        "shipped default), default, none (ideal broker, no costs) or a profile file",
    )
    queue_type: Literal["classic", "quorum", "stream"] = Field(
        "classic", description="RabbitMQ: classic, quorum (Raft, delivery limit) or stream (log)"
    )
    overflow: Literal["drop-head", "reject-publish"] = Field(
        "drop-head", description="at max_length: drop the oldest, or refuse new publishes"
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, kind: Any) -> Any:
        if kind not in BROKER_KINDS:
            raise ValueError(f"unknown broker kind {kind!r}; use one of {', '.join(BROKER_KINDS)}")
        return kind


# --------------------------------------------------------------------------- consumers


class Consumers(_Model):
    """Competing consumers in one group, their processing time, prefetch and ack mode."""

    count: int = Field(1, ge=1)
    group: str = Field("workers", min_length=1)
    processing: TimeDistribution = Constant(value=0.0)
    prefetch: int = Field(1, ge=1, description="messages a consumer holds before acking")
    ack: Literal["after", "before", "none"] = "after"


class Network(_Model):
    """One-way delay between any client and the broker."""

    delay: TimeDistribution = Constant(value=0.0)


# --------------------------------------------------------------------------- faults


class Fault(_Model):
    """One entry of the fault timeline."""

    at: Duration
    action: FaultAction
    duration: Duration = 0.0
    target: str = Field("broker", description="broker, consumer-N, producer-N, or all")
    delay: Duration | None = Field(None, description="latency: added one-way delay")
    jitter: Duration = 0.0
    factor: float = Field(1.0, gt=0, description="slow-consumer: processing time multiplier")
    bandwidth: Rate | None = Field(None, description="bandwidth limit in bytes per second")
    power_loss: bool = Field(
        False,
        description="broker-kill: the machine loses power too, so unsynced writes are lost "
        "(simulator only; a real kill -9 keeps the OS page cache)",
    )

    @field_validator("action", mode="before")
    @classmethod
    def _known_action(cls, action: Any) -> Any:
        if action not in FAULT_ACTIONS:
            raise ValueError(
                f"unknown fault action {action!r}; use one of {', '.join(FAULT_ACTIONS)}"
            )
        return action

    @field_validator("target")
    @classmethod
    def _known_target(cls, target: str) -> str:
        head, _, index = target.partition("-")
        if target in ("broker", "all", "consumers", "producers"):
            return target
        if head in ("consumer", "producer") and index.isdigit():
            return target
        raise ValueError(
            f"unknown fault target {target!r}; use broker, all, consumers, producers, "
            "consumer-N or producer-N"
        )


# --------------------------------------------------------------------------- requirements


class Requirements(_Model):
    """What the use case needs; every run is judged against these."""

    throughput: Rate | None = Field(None, description="delivered messages per second at least")
    latency: dict[str, dict[str, Duration]] = Field(
        default_factory=dict, description="e.g. {end_to_end: {p99: 50ms}}"
    )
    max_lost: int | None = Field(0, ge=0, description="lost messages allowed; null = any")
    max_duplicates: int | None = Field(None, ge=0, description="duplicates allowed; null = any")
    ordering: Literal["none", "per-key"] = "none"
    replay: bool = False
    max_message_size: Size | None = None

    @field_validator("latency")
    @classmethod
    def _known_percentiles(
        cls, latency: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        for kind, bounds in latency.items():
            if kind not in LATENCY_KINDS:
                raise ValueError(f"unknown latency {kind!r}; use one of {', '.join(LATENCY_KINDS)}")
            for name in bounds:
                if name not in LATENCY_STATISTICS:
                    known = ", ".join(LATENCY_STATISTICS)
                    raise ValueError(
                        f"unknown percentile {name!r} under {kind}; use one of {known}"
                    )
        return latency


# --------------------------------------------------------------------------- scenario


class Scenario(_Model):
    """A whole use case: the one object every target runs."""

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = Field(1, description="default seed; the CLI's --seed wins")
    producers: Producers
    broker: Broker
    consumers: Consumers = Consumers()
    network: Network = Network()
    faults: list[Fault] = Field(default_factory=list)
    requirements: Requirements = Requirements()
    drain_timeout: Duration = Field(30.0, gt=0, description="how long to wait for stragglers")

    @model_validator(mode="after")
    def _faults_fit(self) -> Scenario:
        for fault in self.faults:
            for role, count in (
                ("consumer", self.consumers.count),
                ("producer", self.producers.count),
            ):
                prefix = f"{role}-"
                if fault.target.startswith(prefix) and int(fault.target[len(prefix) :]) >= count:
                    raise ValueError(
                        f"fault target {fault.target!r} does not exist: there are {count} "
                        f"{role}s, numbered from 0"
                    )
        return self

    # ----------------------------------------------------------------- what-ifs (public API)

    @property
    def utilisation(self) -> float:
        """Offered load over what the consumers can process: ``rate × mean processing time ÷
        consumers``. Queueing grows without bound as it nears 1, so it is the first number to
        read when sizing consumers."""
        return self.producers.rate * self.consumers.processing.mean / self.consumers.count

    def with_(self, paths: Mapping[str, Any] | None = None, **changes: Any) -> Scenario:
        """A copy with some fields changed, validated exactly as a scenario file is.

        Scenarios are immutable, and a what-if must not skip the checks a file gets: the
        scenario is turned back into data, changed, and validated again, so a bad value raises
        the same :class:`ScenarioError`, with its field path, as the same value in a file.

        Keywords are shorthands (``rate``, ``messages``, ``duration``, ``warmup``, ``consumers``
        (a count), ``processing``, ``prefetch``, ``kind``, ``partitions``, ``persistence``),
        top-level fields (``faults``, ``seed``, ``name``, ``requirements`` …) or dotted field
        paths (``**{"broker.partitions": 4}``, ``"faults[0].at"``); ``paths`` takes dotted
        paths as a mapping. Values are written as in a file (``"1200/s"``, ``"2ms"``).
        ``processing_mean`` rescales the processing-time distribution to a new mean, keeping
        its shape (a scenario with no processing time gets an exponential one). Setting one of
        ``messages`` / ``duration`` clears the other.
        """
        return _changed(self, {**(paths or {}), **changes})


#: Keyword shorthands of :meth:`Scenario.with_`: the knobs a what-if turns most.
WITH_SHORTHANDS: dict[str, str] = {
    "rate": "producers.rate",
    "messages": "producers.messages",
    "duration": "producers.duration",
    "warmup": "producers.warmup",
    "consumers": "consumers.count",
    "processing": "consumers.processing",
    "prefetch": "consumers.prefetch",
    "kind": "broker.kind",
    "partitions": "broker.partitions",
    "persistence": "broker.persistence",
}
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_FIELD_PATH = re.compile(r"[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*)*")


def _plain(value: Any) -> Any:
    """Scenario parts (models) as the plain data a file holds, so they validate like one."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _set_path(data: dict[str, Any], path: str, value: Any) -> str | None:
    """Write ``value`` at a dotted path (``broker.partitions``, ``faults[0].at``) of scenario
    data; returns why not when the path cannot lead to a field."""
    if not _FIELD_PATH.fullmatch(path):
        return "not a field path (write it as section.field, or faults[0].at for a list item)"
    parts: list[str | int] = [
        int(index) if index else name for name, index in _PATH_PART.findall(path)
    ]
    node: Any = data
    for depth, part in enumerate(parts):
        where = _field_path(tuple(parts[:depth])) or "the scenario"
        if isinstance(part, int) and not isinstance(node, list):
            return f"{where} is not a list"
        if isinstance(part, int) and part >= len(node):
            return f"{where} has {len(node)} items, numbered from 0"
        if isinstance(part, str) and not isinstance(node, dict):
            return f"{where} is not a section, so it has no field {part!r}"
        if depth == len(parts) - 1:
            node[part] = value
            return None
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}  # an optional section not written yet
        node = node[part]
    return None


def _scaled(distribution: dict[str, Any], factor: float) -> dict[str, Any]:
    """A time distribution (as data) with every time in it multiplied by ``factor``."""
    return {
        name: value
        if name == "dist"
        else [v * factor for v in value]
        if isinstance(value, list)
        else value * factor
        for name, value in distribution.items()
    }


def _changed(scenario: Scenario, changes: dict[str, Any]) -> Scenario:
    """:meth:`Scenario.with_`: change the scenario's data and validate it as a file."""
    source = f"{scenario.name} (with_)"
    data = scenario.model_dump(mode="json")
    mean = changes.pop("processing_mean", None)
    problems: list[tuple[str, str]] = []
    written: set[str] = set()
    for key, value in changes.items():
        whole_section = key == "consumers" and isinstance(value, dict | BaseModel)
        path = key if whole_section else WITH_SHORTHANDS.get(key, key)
        why = _set_path(data, path, _plain(value))
        if why:
            problems.append((path, why))
        written.add(path)
    producers = data.get("producers")
    if isinstance(producers, dict):  # one of messages / duration says how long: keep one
        for given, other in (("messages", "duration"), ("duration", "messages")):
            alone = f"producers.{given}" in written and f"producers.{other}" not in written
            if alone and producers.get(given) is not None:
                producers[other] = None
    if mean is not None:
        try:
            wanted = parse_duration(mean)
        except ValueError as error:
            problems.append(("consumers.processing.mean", str(error)))
        else:
            consumers = data.setdefault("consumers", {})
            try:
                current: Distribution | None = Consumers.model_validate(consumers).processing
            except ValidationError:
                current = None  # the other changes broke it: parse_scenario says how
            if current is not None and current.mean > 0 and wanted > 0:
                consumers["processing"] = _scaled(
                    current.model_dump(mode="json"), wanted / current.mean
                )
            else:
                consumers["processing"] = {"dist": "exponential", "mean": wanted}
    if problems:
        raise ScenarioError(source, problems)
    return parse_scenario(data, source)


class ScenarioError(Exception):
    """A user's mistake in a scenario file: every problem, each with file, field path and reason."""

    def __init__(self, path: str | Path, problems: Iterable[tuple[str, str]]):
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        """One line per problem: ``file: field.path: reason``."""
        return "\n".join(
            f"{self.path}: {field}: {reason}" if field else f"{self.path}: {reason}"
            for field, reason in self.problems
        )


# Discriminator values pydantic puts in error locations; users never wrote them as fields.
_TAGS = frozenset(_DIST_KINDS) | frozenset(_ARRIVAL_KINDS)


def _field_path(loc: tuple[Any, ...]) -> str:
    """Turn pydantic's location into ``producers.arrival.on``, dropping union branch names."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        name = str(item)
        # pydantic names the union branch it tried (e.g. "Exponential", "function-before[...]");
        # users never wrote those, so they are noise in a field path.
        if name[:1].isupper() or "[" in name or name.startswith("function-") or name in _TAGS:
            continue
        parts.append(("." if parts else "") + name)
    return "".join(parts)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for item in error.errors():
        field = _field_path(item["loc"])
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = "unknown field"
        elif item["type"] == "missing":
            reason = "required field is missing"
        # A bad value inside a union is reported once per branch; keep the first, clearest one.
        seen.setdefault(field, reason)
    return list(seen.items())


def parse_scenario(data: Any, source: str | Path = "<scenario>") -> Scenario:
    """Validate already-loaded YAML data; raise :class:`ScenarioError` with every problem."""
    if data is None:
        raise ScenarioError(source, [("", "the file is empty")])
    if not isinstance(data, dict):
        raise ScenarioError(
            source, [("", f"expected a mapping of fields, got {type(data).__name__}")]
        )
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        raise ScenarioError(source, _problems(error)) from None


#: The most a scenario file may hold. Scenarios are a few kB; these bounds keep a hostile or
#: mistaken file (a 50 MB dump, a million-item list, an alias bomb, thousands of nested brackets)
#: a one-line error found within a second, instead of a RecursionError, a frozen machine or an
#: exhausted memory. They are documented in docs/scenarios.md ("Limits").
MAX_FILE_BYTES = 1 << 20
#: Levels of nested lists and mappings (a scenario uses about five).
MAX_DEPTH = 64
#: Lists, mappings and scalars in the file, counting what every alias (``*name``) expands to.
MAX_NODES = 20_000


class _LimitExceeded(yaml.MarkedYAMLError):
    """The file is valid YAML but beyond what a scenario may hold (depth, values, aliases)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds checked while it composes, before anything is built.

    PyYAML composes recursively (a few thousand nested brackets overflow Python's stack) and
    aliases share nodes, so ``&a [*b, *b, ...]`` chains stay small as a graph but expand
    exponentially in whatever walks the data later. The composer therefore counts every node
    as it is composed and every alias at the size of what it expands to; depth and that count
    are refused past :data:`MAX_DEPTH` / :data:`MAX_NODES`, so the work stays bounded too.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size

    def _spend(self, count: int, mark: Any, what: str) -> None:
        self._expanded += count
        if self._expanded > MAX_NODES:
            raise _LimitExceeded(
                problem=f"{what}: more than {MAX_NODES} values (lists, mappings and scalars, "
                "aliases expanded); a scenario needs far fewer",
                problem_mark=mark,
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still being composed: the alias is inside it
                raise _LimitExceeded(
                    problem=f"alias *{event.anchor} refers to a node that contains it",
                    problem_mark=event.start_mark,
                )
            self._spend(size, event.start_mark, f"alias *{event.anchor} makes the file hold")
            return node
        event = self.peek_event()
        if self._depth >= MAX_DEPTH:
            raise _LimitExceeded(
                problem=f"nested more than {MAX_DEPTH} levels deep; a scenario needs far fewer",
                problem_mark=event.start_mark,
            )
        self._spend(1, event.start_mark, "the file holds")
        before = self._expanded - 1
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._sizes[id(node)] = self._expanded - before
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # The safe constructor raises plain Python errors for some bad scalars (a 13th month,
        # an integer of 5,000 digits, `!!int x`); name the place in the file instead.
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as error:
            raise yaml.constructor.ConstructorError(
                # the first clause only: Python's advice on its own limits is no help here
                problem=f"cannot read this value ({str(error).split(';')[0]})",
                problem_mark=node.start_mark,
            ) from None


def _read_text(path: Path) -> str:
    """The file's text, read only up to :data:`MAX_FILE_BYTES` (a device or FIFO has no size)."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
            size = path.stat().st_size
    except FileNotFoundError:
        raise ScenarioError(path, [("", "no such file")]) from None
    except IsADirectoryError:
        raise ScenarioError(path, [("", "is a folder, not a scenario file")]) from None
    except OSError as error:
        raise ScenarioError(path, [("", f"cannot read: {error.strerror or error}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        actual = f" ({size} bytes)" if size > MAX_FILE_BYTES else ""
        raise ScenarioError(
            path,
            [("", f"too large{actual}: a scenario file may have at most {MAX_FILE_BYTES} bytes")],
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError(
            path, [("", f"not a text file (UTF-8 expected; byte {error.start} is not UTF-8)")]
        ) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line, column) and what."""
    if isinstance(error, yaml.reader.ReaderError):
        return (
            f"not valid YAML: character {error.position + 1}: unacceptable character "
            f"#x{error.character:04x} (binary data?)"
            if isinstance(error.character, int)
            else f"not valid YAML: character {error.position + 1}: {error.reason}"
        )
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    if context:
        problem = f"{problem} ({context})"
    return " ".join(f"not valid YAML: {where}{problem}".split())


def load_yaml(text: str) -> Any:
    """Parse scenario YAML within the limits (:data:`MAX_DEPTH`, :data:`MAX_NODES`)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; any problem is a :class:`ScenarioError` (one line each).

    Bounded before and while parsing: the size before reading, depth, values and alias
    expansion while composing, so hostile input fails fast and plainly.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise ScenarioError(path, [("", _yaml_problem(error))]) from None
    return parse_scenario(data, path)


def scenario_to_yaml(scenario: Scenario) -> str:
    """The scenario as run, in base units (seconds, bytes, per second), for results folders.

    Uses libyaml's emitter where PyYAML has it (the same text, about 5x faster: a sweep writes
    and fingerprints one of these per point).
    """
    return yaml.dump(scenario.model_dump(mode="json"), Dumper=_SAFE_DUMPER, sort_keys=False)


_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
