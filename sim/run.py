"""``simulate``: the simulator as a lab target (scenario + seed in, TargetResult out)."""

from __future__ import annotations

from brokerlab.load import plan_load
from brokerlab.scenario import Scenario
from brokerlab.trace import TargetResult
from sim.engine import Progress
from sim.models import MODELS
from sim.presets import Preset, resolve


def simulate(scenario: Scenario, seed: int, progress: Progress | None = None) -> TargetResult:
    """Play ``scenario`` in the discrete-event simulator; the same seed gives the same trace.

    ``progress(done, total)`` is called about every 1% of the messages sent, and once at the end.
    """
    preset = resolve(scenario.broker)
    plan = plan_load(scenario, seed)
    model = MODELS[preset.model](scenario, preset, plan, seed, progress)
    model.run()
    trace = model.trace()
    info: dict[str, object] = {
        "model": preset.model,
        "preset": preset.kind,
        "events": model.events,
        "end_s": model.end,
        **model.counts,
    }
    warnings = _warnings(scenario, preset)
    if model.counts["unsent"]:
        warnings.append(
            f"{model.counts['unsent']} messages were never sent: with confirm=sync the producers "
            "fell behind the plan by more than drain_timeout (outcome 'failed', attempts 0)"
        )
    return TargetResult(trace=trace, faults=[], info=info, warnings=warnings)


def _warnings(scenario: Scenario, preset: Preset) -> list[str]:
    """What the simulator left out of this scenario, said plainly."""
    warnings = []
    if scenario.faults:
        warnings.append(f"faults are not simulated yet: {len(scenario.faults)} entries ignored")
    if preset.broker.partitions > 1 and not preset.partitioned:
        warnings.append(
            f"{preset.kind} is simulated without partitions: "
            f"partitions={preset.broker.partitions} ignored"
        )
    if preset.model == "pubsub":
        if scenario.producers.confirm == "sync":
            warnings.append(f"{preset.kind} has no publish acks: confirm=sync ignored")
        if "ack" in scenario.consumers.model_fields_set and scenario.consumers.ack != "none":
            warnings.append(
                f"{preset.kind} has no consumer acks: ack={scenario.consumers.ack} ignored"
            )
    if scenario.producers.retry != "none":
        warnings.append("publish retries are not simulated yet (no publish fails without faults)")
    return warnings
