"""``simulate``: the simulator as a lab target (scenario + seed in, TargetResult out)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from brokerlab.core.load import plan_load
from brokerlab.core.scenario import Distribution, Scenario
from brokerlab.core.trace import TargetResult
from brokerlab.sim.engine import Progress, Simulation
from brokerlab.sim.faulted import FAULTED, FaultLayer
from brokerlab.sim.faults import resolve_entries, windows
from brokerlab.sim.idle import Wakes
from brokerlab.sim.models import MODELS
from brokerlab.sim.models.consume import set_consume
from brokerlab.sim.pace import set_pace
from brokerlab.sim.presets import Preset, resolve
from brokerlab.sim.profile import Profile, apply_profile, profile_record, resolve_profile
from brokerlab.sim.sampling import is_zero, samples


def simulate(
    scenario: Scenario,
    seed: int,
    progress: Progress | None = None,
    profile: str | Profile | None = None,
) -> TargetResult:
    """Play ``scenario`` in the discrete-event simulator; the same seed gives the same trace.

    ``progress(done, total)`` is called about every 1% of the messages sent, and once at the end.
    ``profile`` overrides ``broker.profile`` (auto, default, none, a profile file or a loaded
    :class:`~brokerlab.sim.profile.Profile`); a profile's
    costs are charged by playing the scenario with them folded in (see
    :func:`brokerlab.sim.profile.apply_profile`); ``none`` plays the scenario exactly as written.
    """
    if isinstance(profile, Profile):
        spec, chosen = "given", profile
    else:
        spec = profile or scenario.broker.profile
        chosen = resolve_profile(spec, scenario.broker.kind)
    charges: dict[str, float] = {}
    throttle = None
    given = scenario  # as written: the charged one's network delay is the profile's hops
    if chosen is not None:
        charged = apply_profile(scenario, chosen)
        scenario, charges, throttle = charged.scenario, charged.charges, charged.throttle
    preset = resolve(scenario.broker)
    plan = plan_load(scenario, seed)
    # Only a run with faults pays for them: a fault-free run gets the plain collaborators. A
    # publish quota needs the publisher that can be refused and retry (the fault layer's).
    collaborators: dict[str, Any] = FAULTED if scenario.faults or throttle else {}
    if throttle is not None:
        collaborators = {**FAULTED, "faults": partial(FaultLayer, throttle=throttle)}
    model = MODELS[preset.model](scenario, preset, plan, seed, progress, **collaborators)
    consume = "credit"
    if chosen is not None:
        # How consumers get messages (pull fetches, a push window) is a step, not a cost.
        consume = set_consume(
            model,
            chosen.consume.mode,
            chosen.consume.window,
            chosen.consume.wake,
            chosen.consume.fetch,
            chosen.consume.status,
        )
    # Capacity and wake-ups are steps too: the pacer in front of deliveries, the network's clock.
    paced = woken = "none"
    if chosen is not None and chosen.capacity is not None:
        # The capacity depends on how many processes a real run's clients would use.
        processes = chosen.capacity.processes(given)
        capacity = chosen.capacity
        paced = set_pace(
            model,
            *capacity.seconds(processes, given.consumers.prefetch),
            capacity.publish_share,
            capacity.publish_batched,
        )
        if chosen.capacity.clients is not None and paced != "none":
            paced += f" ({processes} client process{'' if processes == 1 else 'es'})"
    if chosen is not None and chosen.idle is not None:
        woken = _set_idle(model, chosen.idle.cost, chosen.idle.tau)
    model.run()
    fault_windows = windows(scenario)
    trace = model.trace(fault_windows)
    info: dict[str, object] = {
        "model": preset.model,
        "preset": preset.kind,
        "events": model.events,
        "end_s": model.end,
        **model.counts,
        "profile": {
            **profile_record(chosen, spec),
            "charges": charges,
            "consume": consume,
            "pace": paced,
            "idle": woken,
        },
        "drain": model.drain,
    }
    warnings = _warnings(scenario, preset)
    if model.counts["unsent"]:
        why = (
            "a producer was down (crash) until the end"
            if scenario.faults
            else "with confirm=sync the producers fell behind the plan by more than drain_timeout"
        )
        warnings.append(
            f"{model.counts['unsent']} messages were never sent: {why} "
            "(outcome 'failed', attempts 0)"
        )
    drain = model.drain
    if drain["reason"] == "timeout":
        held = drain["at_broker"]
        warnings.append(
            f"the drain timed out after {drain['seconds']:g} s with {drain['pending']} "
            f"acknowledged messages not yet completed; the broker still held "
            f"{held['undelivered']} undelivered and {held['unacked']} unacknowledged entries: "
            "those are late, not lost (a longer drain_timeout lets them finish)"
        )
    return TargetResult(trace=trace, faults=fault_windows, info=info, warnings=warnings)


def _warnings(scenario: Scenario, preset: Preset) -> list[str]:
    """What the simulator left out of this scenario, said plainly."""
    warnings = []
    if scenario.faults:
        warnings += resolve_entries(scenario)[1]
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
    if preset.broker.dedup_window > 0 and not preset.dedup:
        warnings.append(
            f"{preset.kind} has no publish dedup: dedup_window={preset.broker.dedup_window:g}s "
            "ignored (a retried publish that lands twice is a duplicate)"
        )
    return warnings


def _set_idle(sim: Simulation, cost: Distribution, tau: float) -> str:
    """Charge ``sim``'s hops an idle machine's wake-ups; returns what was installed, for
    run.json (``none`` when the hops take no time at all, or the cost is zero)."""
    if sim._net is None or is_zero(cost):
        return "none"
    rng = np.random.default_rng((sim.seed, 0x69646C65))
    sim.network.wakes = Wakes(samples(cost, rng), tau)
    return f"mean {cost.mean * 1e3:.3g} ms after idling, tau {tau * 1e3:.3g} ms"
