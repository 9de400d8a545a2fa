"""The scenario's fault timeline, resolved for the simulator: who each entry hits, and durability.

This module only reads the timeline (which clients an entry affects, what a broker kill keeps,
what cannot be played); :mod:`brokerlab.sim.faulted` plays it on the engine's collaborators.
"""

from __future__ import annotations

from dataclasses import dataclass

from brokerlab.core.scenario import Fault, Scenario
from brokerlab.core.trace import FaultWindow
from brokerlab.sim.presets import Preset

#: Clients reconnect this long after a broker restart or a connection reset (client libraries
#: retry connecting every few tens of milliseconds; a fixed delay keeps runs reproducible).
RECONNECT_DELAY = 0.05

#: A consumer waits this long for the reply to an ack before it goes on without it (the
#: harness's per-call grace): a lost connection or a stopped broker does not stall it forever.
ACK_REPLY_WAIT = 5.0

#: Actions that act on the broker process; the rest act on clients or on their network hops.
BROKER_ACTIONS = ("broker-kill", "broker-pause")
#: Actions that act on the hops between clients and the broker.
NETWORK_ACTIONS = ("partition", "latency", "connection-reset", "bandwidth")
#: Actions that act on consumer processes, and on producer processes.
CONSUMER_ACTIONS = ("consumer-crash", "slow-consumer")
PRODUCER_ACTIONS = ("producer-crash",)


@dataclass(frozen=True)
class Entry:
    """One timeline entry with its targets resolved to client numbers."""

    fault: Fault
    producers: tuple[int, ...]
    consumers: tuple[int, ...]

    @property
    def start(self) -> float:
        return self.fault.at

    @property
    def end(self) -> float:
        return self.fault.at + self.fault.duration

    def window(self) -> FaultWindow:
        return FaultWindow(self.fault.action, self.fault.target, self.start, self.end)


def windows(scenario: Scenario) -> list[FaultWindow]:
    """One window per timeline entry: from ``at`` to ``at + duration``, as the scenario says."""
    return [
        FaultWindow(fault.action, fault.target, fault.at, fault.at + fault.duration)
        for fault in scenario.faults
    ]


def _clients(target: str, producers: int, consumers: int) -> tuple[list[int], list[int]]:
    """Producer and consumer numbers a target names (``broker`` = every client's hops)."""
    if target in ("all", "broker"):
        return list(range(producers)), list(range(consumers))
    if target == "producers":
        return list(range(producers)), []
    if target == "consumers":
        return [], list(range(consumers))
    kind, _, number = target.partition("-")
    index = int(number)
    if kind == "producer":
        return ([index] if index < producers else []), []
    return [], ([index] if index < consumers else [])


def resolve_entries(scenario: Scenario) -> tuple[list[Entry], list[str]]:
    """Entries the simulator plays (in time order) and warnings for what it leaves out."""
    producers, consumers = scenario.producers.count, scenario.consumers.count
    entries: list[Entry] = []
    warnings: list[str] = []
    for number, fault in enumerate(scenario.faults):
        where = f"faults[{number}] ({fault.action} at {fault.at:g}s)"
        action, target = fault.action, fault.target
        if fault.power_loss and action != "broker-kill":
            warnings.append(f"{where}: power_loss only applies to broker-kill; ignored")
        if action in BROKER_ACTIONS:
            if target != "broker":
                warnings.append(f"{where}: acts on the broker; target {target!r} ignored")
            entries.append(Entry(fault, (), ()))
            continue
        mine_p, mine_c = _clients(target, producers, consumers)
        if action in CONSUMER_ACTIONS:
            if mine_p:
                warnings.append(f"{where}: acts on consumers; producers in {target!r} ignored")
            mine_p = []
        if action in PRODUCER_ACTIONS:
            if mine_c:
                warnings.append(f"{where}: acts on producers; consumers in {target!r} ignored")
            mine_c = []
        if action == "latency" and fault.delay is None:
            warnings.append(f"{where}: latency needs 'delay'; entry ignored")
            continue
        if action == "bandwidth" and not fault.bandwidth:
            warnings.append(f"{where}: bandwidth needs 'bandwidth'; entry ignored")
            continue
        if action == "connection-reset" and fault.duration:
            warnings.append(
                f"{where}: a reset is instant (clients reconnect after "
                f"{RECONNECT_DELAY * 1e3:g} ms); duration only widens its window"
            )
        if not mine_p and not mine_c:
            warnings.append(f"{where}: target {target!r} names no simulated client; ignored")
            continue
        entries.append(Entry(fault, tuple(mine_p), tuple(mine_c)))
    entries.sort(key=lambda entry: entry.start)
    return entries, warnings


def kept_on_kill(preset: Preset) -> str | float:
    """What a broker kill keeps: ``"memory"`` (nothing), ``"always"`` (every acked write), or
    the sync interval in seconds (a process kill keeps everything, a power loss loses the writes
    after the last sync).

    ``storage: memory`` wins over persistence (JetStream memory streams lose everything);
    ``persistence: none`` means what the preset says for an unpersisted broker (Redis without
    AOF keeps nothing; JetStream file storage still syncs every 2 minutes).
    """
    broker = preset.broker
    if preset.model == "pubsub" or broker.storage == "memory":
        return "memory"
    if broker.persistence.mode == "always":
        return "always"
    if broker.persistence.mode == "periodic":
        return broker.persistence.interval
    return preset.unpersisted
