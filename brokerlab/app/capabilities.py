"""The broker capability table, and verdicts on what a run cannot measure.

A run measures loss, duplicates, order and latency; it cannot show whether a broker can replay
old messages, how large a message it accepts, or which durability and delivery guarantees it can
be configured for. Those facts live in ``brokerlab/data/capabilities.yaml``, one entry per broker
kind, each fact with a vendor documentation source and a ``verified`` flag. :func:`judge` holds a
scenario's requirements against them with a few simple, documented rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

from brokerlab.core.scenario import Requirements
from brokerlab.core.vocabulary import BROKER_KINDS

OrderingScope = Literal[
    "total-per-stream",
    "per-partition",
    "per-queue",
    "per-publisher-subject",
    "per-message-group",
    "best-effort",
]
DeliveryMode = Literal["at-most-once", "at-least-once", "exactly-once-processing"]

DATA_FILE = "capabilities.yaml"


class Source(BaseModel):
    """The documentation page a fact comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    title: str = Field(min_length=1)


class _Fact(BaseModel):
    """Common to every fact: words for people, a vendor page, and whether we checked it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    note: str = Field(min_length=1)
    source: Source
    verified: bool

    @model_validator(mode="after")
    def _unverified_said(self) -> _Fact:
        if not self.verified and "unverified" not in self.note.lower():
            raise ValueError("a fact with verified: false must say 'unverified' in its note")
        return self


class Ordering(_Fact):
    """Scope of the ordering guarantee, and whether a use case can get per-key order."""

    value: OrderingScope
    per_key_possible: bool


class Replay(_Fact):
    """Whether a consumer can re-read old messages (limits in the note)."""

    value: bool


class Persistence(_Fact):
    """Storage options; ``durable_options`` keep acknowledged writes through a broker crash."""

    value: list[str] = Field(min_length=1)
    durable_options: list[str]

    @model_validator(mode="after")
    def _durable_are_options(self) -> Persistence:
        unknown = set(self.durable_options) - set(self.value)
        if unknown:
            raise ValueError(f"durable_options not among the options: {sorted(unknown)}")
        return self


class MaxMessageSize(_Fact):
    """Default message size limit in bytes, and how far configuration can move it.

    ``configurable_up_to`` is None either when the limit is fixed (``configurable`` false) or when
    no upper bound is documented.
    """

    value: int = Field(gt=0)
    configurable: bool
    configurable_up_to: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> MaxMessageSize:
        if self.configurable_up_to is not None and not self.configurable:
            raise ValueError("configurable_up_to given for a limit that is not configurable")
        return self

    @property
    def ceiling(self) -> int | None:
        """Largest size the broker can be configured to accept; None when unbounded."""
        if not self.configurable:
            return self.value
        if self.configurable_up_to is None:
            return None
        return max(self.value, self.configurable_up_to)


class FanOut(_Fact):
    """Whether several independent consumers can each get every message."""

    value: bool


class Delivery(_Fact):
    """Delivery guarantees the broker can give (conditions in the note)."""

    value: list[DeliveryMode] = Field(min_length=1)


class Managed(_Fact):
    """Managed offerings, by vendor product name."""

    value: list[str]


class BrokerCapabilities(BaseModel):
    """Everything the table says about one broker kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    simulated_only: bool
    ordering: Ordering
    replay: Replay
    persistence: Persistence
    max_message_size: MaxMessageSize
    fan_out: FanOut
    delivery: Delivery
    managed: Managed

    def facts(self) -> dict[str, _Fact]:
        """Each capability by name, for checks that apply to all of them."""
        return {
            "ordering": self.ordering,
            "replay": self.replay,
            "persistence": self.persistence,
            "max_message_size": self.max_message_size,
            "fan_out": self.fan_out,
            "delivery": self.delivery,
            "managed": self.managed,
        }


@cache
def load_capabilities() -> dict[str, BrokerCapabilities]:
    """Read and validate the capability table shipped in ``brokerlab/data``."""
    text = (
        resources.files("brokerlab")
        .joinpath("data")
        .joinpath(DATA_FILE)
        .read_text(encoding="utf-8")
    )
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{DATA_FILE}: expected a mapping of broker kinds")
    unknown = set(raw) - set(BROKER_KINDS)
    if unknown:
        raise ValueError(f"{DATA_FILE}: unknown broker kinds {sorted(unknown)}")
    table: dict[str, BrokerCapabilities] = {}
    for kind, entry in raw.items():
        try:
            table[kind] = BrokerCapabilities.model_validate(entry)
        except ValidationError as error:
            raise ValueError(f"{DATA_FILE}: {kind}: {error}") from None
    return table


CapabilityStatus = Literal["ok", "fail", "unknown"]


@dataclass(frozen=True)
class CapabilityVerdict:
    """One capability-type requirement held against the table.

    ``name`` and ``bound`` match the run's requirement records (``replay``, ``max_message_size``,
    ``ordering per-key``, ``max_lost``, ``max_duplicates``), so a selection can join the two.

    ``finding`` is what the table's fact says; ``ok`` is that finding only when the fact was
    checked against its source (``verified``), else None: an unverified fact neither passes nor
    fails a candidate, it is ``unknown`` (:attr:`status`) and shown as such.
    """

    name: str
    bound: bool | int | str
    capability: str
    ok: bool | None
    source: str
    verified: bool
    finding: bool

    @property
    def status(self) -> CapabilityStatus:
        """``ok``, ``fail``, or ``unknown`` for a fact nobody has checked yet."""
        if self.ok is None:
            return "unknown"
        return "ok" if self.ok else "fail"

    def to_dict(self) -> dict[str, object]:
        """A plain record for JSON and tables."""
        return {
            "name": self.name,
            "bound": self.bound,
            "capability": self.capability,
            "ok": self.ok,
            "status": self.status,
            "finding": self.finding,
            "source": self.source,
            "verified": self.verified,
        }


def _verdict(
    name: str, bound: bool | int | str, fact: _Fact, capability: str, finding: bool
) -> CapabilityVerdict:
    ok = finding if fact.verified else None
    url = str(fact.source.url)
    return CapabilityVerdict(name, bound, capability, ok, url, fact.verified, finding)


def _size_verdict(bound: int, size: MaxMessageSize) -> CapabilityVerdict:
    # Passes if the default accepts it, or configuration can raise the limit far enough; the
    # capability text says which, so a reader knows a setting must change.
    ceiling = size.ceiling
    if bound <= size.value:
        return _verdict("max_message_size", bound, size, f"default limit {size.value} B", True)
    if not size.configurable:
        return _verdict("max_message_size", bound, size, f"fixed limit {size.value} B", False)
    if ceiling is None:
        text = f"default {size.value} B; configurable, no documented upper bound"
        return _verdict("max_message_size", bound, size, text, True)
    text = f"default {size.value} B; at most {ceiling} B when configured"
    return _verdict("max_message_size", bound, size, text, bound <= ceiling)


def judge(requirements: Requirements, kind: str) -> list[CapabilityVerdict]:
    """Hold the capability-type requirements a scenario states against the broker's table entry.

    Rules, one per requirement, only for requirements the scenario states:

    - ``replay: true`` needs ``replay.value``.
    - ``max_message_size`` needs the default limit, or the configurable ceiling, to reach it.
    - ``ordering: per-key`` needs ``ordering.per_key_possible`` (how is in the note).
    - ``max_lost: 0`` needs at least one durable persistence option (acknowledged writes survive
      a broker crash); whether the run used it is for the run to show.
    - ``max_duplicates: 0`` needs exactly-once processing, or at-most-once delivery when loss is
      allowed (at-most-once trades duplicates for loss, so it cannot meet both bounds at zero).

    Capabilities are what a broker *can* be configured for; measured runs say what it did. A
    rule resting on a fact marked ``verified: false`` gives ``ok`` None (status ``unknown``): the
    table's finding is kept for reading, but it decides nothing.
    """
    table = load_capabilities()
    if kind not in table:
        raise KeyError(f"no capability entry for broker kind {kind!r}")
    broker = table[kind]
    verdicts: list[CapabilityVerdict] = []

    if requirements.replay:
        replay = broker.replay
        text = "replay: " + ("yes" if replay.value else "no")
        verdicts.append(_verdict("replay", True, replay, text, replay.value))

    if requirements.max_message_size is not None:
        verdicts.append(_size_verdict(requirements.max_message_size, broker.max_message_size))

    if requirements.ordering == "per-key":
        ordering = broker.ordering
        text = f"ordered {ordering.value}; per-key order " + (
            "possible" if ordering.per_key_possible else "not possible"
        )
        verdicts.append(
            _verdict("ordering per-key", "per-key", ordering, text, ordering.per_key_possible)
        )

    if requirements.max_lost == 0:
        durable = broker.persistence.durable_options
        text = "durable options: " + (", ".join(durable) if durable else "none")
        verdicts.append(_verdict("max_lost", 0, broker.persistence, text, bool(durable)))

    if requirements.max_duplicates == 0:
        modes = broker.delivery.value
        ok = "exactly-once-processing" in modes or (
            "at-most-once" in modes and requirements.max_lost != 0
        )
        text = "delivery: " + ", ".join(modes)
        verdicts.append(_verdict("max_duplicates", 0, broker.delivery, text, ok))

    return verdicts
