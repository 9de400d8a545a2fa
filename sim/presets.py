"""Broker presets: named brokers are data (``presets.yaml``), not subclasses.

A preset says which model plays a broker kind and which defaults the kind brings. Scenario values
are authoritative: a default only fills a broker field the scenario file left unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from brokerlab.core.scenario import Broker
from brokerlab.core.units import parse_duration

PRESETS_FILE = Path(__file__).with_name("presets.yaml")
MODELS = ("log", "queue", "pubsub")
UNPERSISTED = ("memory", "always")


@dataclass(frozen=True)
class Preset:
    """How the simulator plays one broker kind, with the scenario's broker settings resolved."""

    kind: str
    model: str
    partitioned: bool
    redelivery: bool
    max_ack_pending: bool
    broker: Broker
    source: str = ""
    #: what a kill keeps with persistence none: "memory", "always" or a sync interval (seconds)
    unpersisted: str | float = "memory"
    #: the broker honours ``broker.dedup_window`` (drops a republished message id)
    dedup: bool = False
    #: the window the broker applies when the scenario's ``dedup_window`` is 0 (seconds)
    dedup_default_window: float = 0.0
    #: partitioned kinds: a crashed group member's partitions move to the survivors this long
    #: after the crash (its session times out); 0 = never (they wait for its return)
    session_timeout: float = 0.0
    #: the client buffers publishes while the broker is down and sends them, in order, once it
    #: has reconnected (nats-py's reconnect buffer) instead of failing them
    buffers_publishes: bool = False
    #: the consumer waits for the broker's reply to its ack before it goes on (false: the ack
    #: is sent unanswered and the consumer's next fetch travels with it)
    ack_reply: bool = True
    #: at most this often the broker writes a consumer's ack state to its store (seconds); a
    #: kill that keeps the messages loses the acks since the last write (0: written with the ack)
    ack_state_write: float = 0.0
    #: a pull fetch of more than one message that the broker answers with fewer ends only when
    #: a status message that follows them reaches the client (nats-py's JetStream fetch)
    pull_status: bool = False


@cache
def presets() -> dict[str, dict[str, Any]]:
    """The raw preset table, read once."""
    table = yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8"))
    for kind, entry in table.items():
        if entry.get("model") not in MODELS:
            raise ValueError(f"{PRESETS_FILE}: {kind}.model must be one of {', '.join(MODELS)}")
        unpersisted = entry.get("unpersisted", "memory")
        if unpersisted not in UNPERSISTED:
            entry["unpersisted"] = parse_duration(unpersisted)
    return table


def resolve(broker: Broker) -> Preset:
    """The preset for ``broker.kind`` with its defaults filled into the fields left unset."""
    entry = presets().get(broker.kind)
    if entry is None:
        raise ValueError(f"no simulator preset for broker kind {broker.kind!r} in {PRESETS_FILE}")
    explicit = broker.model_fields_set
    defaults = {
        name: value for name, value in (entry.get("defaults") or {}).items() if name not in explicit
    }
    if defaults:
        # Validate through the scenario model so preset defaults get the same unit parsing.
        broker = Broker.model_validate({**broker.model_dump(exclude_unset=True), **defaults})
    # An explicit ack_timeout in the scenario turns redelivery on even for offset-based logs.
    redelivery = bool(entry.get("redelivery", True)) or "ack_timeout" in explicit
    return Preset(
        kind=broker.kind,
        model=entry["model"],
        partitioned=bool(entry.get("partitioned", False)),
        redelivery=redelivery,
        max_ack_pending=bool(entry.get("max_ack_pending", False)),
        broker=broker,
        source=str(entry.get("source", "")),
        unpersisted=entry.get("unpersisted", "memory"),
        dedup=bool(entry.get("dedup", False)),
        dedup_default_window=parse_duration(entry.get("dedup_default_window", 0)),
        session_timeout=parse_duration(entry.get("session_timeout", 0)),
        buffers_publishes=bool(entry.get("buffers_publishes", False)),
        ack_reply=bool(entry.get("ack_reply", True)),
        ack_state_write=parse_duration(entry.get("ack_state_write", 0)),
        pull_status=bool(entry.get("pull_status", False)),
    )
