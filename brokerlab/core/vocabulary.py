"""The lab's vocabulary, defined once: broker kinds, fault actions, publish outcomes, verdicts and
the latency statistics every output reports.

Each is a ``Literal`` type (for type checkers and pydantic) with the tuple of its values derived
from it, so a new word is added in one place and every comparison site can be checked statically.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal, get_args

#: Broker kinds. Real targets are records in ``brokerlab.adapters.targets``; every kind can be
#: played by the simulator through its preset (``sim/presets.yaml``).
BrokerKind = Literal[
    "redis-streams",
    "nats",
    "nats-jetstream",
    "kafka",
    "rabbitmq",
    "sqs",
    "kinesis",
    "event-hubs",
    "eventstoredb",
]
BROKER_KINDS: tuple[BrokerKind, ...] = get_args(BrokerKind)

#: Fault actions of a scenario's timeline.
FaultAction = Literal[
    "broker-kill",
    "broker-pause",
    "partition",
    "latency",
    "connection-reset",
    "bandwidth",
    "consumer-crash",
    "producer-crash",
    "slow-consumer",
]
FAULT_ACTIONS: tuple[FaultAction, ...] = get_args(FaultAction)
#: Faults that act on the broker process itself (only on brokers the lab started).
BROKER_FAULTS: frozenset[FaultAction] = frozenset({"broker-kill", "broker-pause"})
#: Faults played on the network path between clients and the broker (through the fault proxy).
NETWORK_FAULTS: frozenset[FaultAction] = frozenset(
    {"partition", "latency", "connection-reset", "bandwidth"}
)
#: Faults that act on the lab's own clients.
CLIENT_FAULTS: frozenset[FaultAction] = frozenset(
    {"consumer-crash", "producer-crash", "slow-consumer"}
)

#: A publish's outcome as the producer saw it.
Outcome = Literal["acked", "failed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


class OutcomeCode(IntEnum):
    """Outcomes as the small integers the simulator and the harness record in arrays; their
    order is ``OUTCOMES`` so ``pd.Categorical.from_codes(codes, OUTCOMES)`` reads them back."""

    ACKED = 0
    FAILED = 1
    UNKNOWN = 2


assert tuple(code.name.lower() for code in OutcomeCode) == OUTCOMES

#: A run's verdict against its requirements.
Verdict = Literal["pass", "fail", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)

#: Percentiles every latency summary reports: name -> percentile.
PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
#: The fields of one latency summary in metrics.json, in order.
SUMMARY_FIELDS: tuple[str, ...] = ("mean", *PERCENTILES, "max", "count")
#: The statistics a latency requirement may bound, and the columns tables show.
LATENCY_STATISTICS: tuple[str, ...] = (*PERCENTILES, "max", "mean")
#: The latencies a run measures (metrics.json ``latency_ms`` keys).
LatencyKind = Literal["end_to_end", "completion", "publish", "publish_delay"]
LATENCY_KINDS: tuple[LatencyKind, ...] = get_args(LatencyKind)
