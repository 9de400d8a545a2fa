"""``brokerlab calibrate``: the fit recovers known costs, and a real calibration is usable at once.

The known-answer test plays the calibration ladder in the simulator with a profile whose costs
are known, and checks that the fit finds them again (the fit solves the simulator's own cost
equations, so a world that follows them must be recovered). The real-broker tests run the ladder
on brokers the lab starts itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import brokerlab.app.calibrate as calibration
from brokerlab.app.calibrate import (
    SUSTAINED_BISECTIONS,
    Measured,
    Step,
    _capacity,
    _p99_for_mean,
    base_scenario,
    busy_warnings,
    calibrate,
    cpu_share,
    drain_rate,
    fell_behind_at,
    fetch_cost,
    find_sustained,
    fit,
    ladder,
    measure,
    refine,
    replay_pool,
    replays,
    run_rung,
    sustained,
)
from brokerlab.app.runner import RunOptions, run_scenario
from brokerlab.core.scenario import LogNormal
from brokerlab.core.units import parse_rate
from brokerlab.sim.profile import Clients, Profile, load_profile, parse_profile, resolve_profile

KNOWN = {
    "kind": "redis-streams",
    "provenance": {"origin": "default", "sources": []},
    "round_trip": {"dist": "lognormal", "median": "0.4ms", "p99": "2ms"},
    "publish": {"none": "0.05ms", "periodic": "0.05ms", "always": "2ms"},
    "deliver": "0.3ms",
    "client": {"timer": "0.5ms"},
    "consume": {"mode": "pull", "wake": "1ms"},
    "parallelism": 2,
    "bandwidth": 100_000_000,
    "durable_writes_per_delivery": 1.0,
}


def simulated_ladder(tmp_path: Path, known: dict[str, Any]) -> dict[str, Measured]:
    """The quick calibration ladder of ``known``'s kind, run in the simulator with ``known``'s
    costs: measurements whose true profile the test knows."""
    path = tmp_path / "known.yaml"
    path.write_text(yaml.safe_dump(known), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(path))
    base = base_scenario(known["kind"])
    measured = {}
    for step in ladder(known["kind"], quick=True):
        scenario = base.with_(paths=dict(step.changes), name=f"known-{step.name}")
        measured[step.name] = Measured.of(step, run_scenario(scenario, "sim", options))
    return measured


def test_fit_recovers_the_costs_of_a_simulated_broker(tmp_path: Path) -> None:
    """Ladder runs in the simulator with known costs: the fitted profile predicts them again
    (ceiling, light-load latency, the one-consumer rung) within a few percent, and finds the
    round trip and the fsync cost it was given."""
    measured = simulated_ladder(tmp_path, KNOWN)
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.round_trip.median == pytest.approx(0.4e-3, rel=0.25)
    fsync = profile.publish.always.mean - profile.publish.none.mean
    assert fsync == pytest.approx(1.95e-3, rel=0.2)
    # A blocked fetch's wake-up is light load's end to end beyond the round trip and the work.
    assert profile.consume.mode == "pull"
    assert profile.consume.wake.median == pytest.approx(1e-3, rel=0.25)  # type: ignore[union-attr]
    assert profile.consume.fetch.mean == pytest.approx(0.0, abs=0.2e-3)
    # Replayed, the fit predicts what it was fitted on.
    refit = tmp_path / "fitted.yaml"
    refit.write_text(yaml.safe_dump(profile.model_dump(mode="json")), encoding="utf-8")
    replay = RunOptions(results_dir=tmp_path / "replay", profile=str(refit))
    for name in ("light", "consumer", "ceiling"):
        step = next(s for s in ladder("redis-streams", quick=True) if s.name == name)
        scenario = base_scenario("redis-streams").with_(
            paths=dict(step.changes), name=f"replay-{name}"
        )
        again = run_scenario(scenario, "sim", replay).metrics["throughput_per_s"]["delivered"]
        assert again == pytest.approx(measured[name].delivered, rel=0.05), name


def test_fit_charges_a_jetstream_consumer_no_round_trip_for_its_unanswered_ack(
    tmp_path: Path,
) -> None:
    """A JetStream ack is not answered, so a prefetch-1 consumer's cycle holds one round trip
    (its fetch), not two: fitted on the simulator's own JetStream ladder, the consumer's own
    time per message (0.5 ms lateness and 0.3 ms delivery work given: the fit splits them its own
    way) comes back, not that less a ~0.5 ms round trip the consumer never waited for."""
    measured = simulated_ladder(tmp_path, {**KNOWN, "kind": "nats-jetstream"})
    # The fit's own equation, before the refinement's replays (which would move the lateness
    # to whatever the replay needs, or cut the round trip's tail when it needed less than none).
    profile = fit("nats-jetstream", measured, {"origin": "calibrated"})
    own = profile.client.timer.mean + profile.deliver.mean
    assert own == pytest.approx(0.8e-3, abs=0.2e-3)


def test_fit_finds_the_status_that_ends_a_short_jetstream_fetch(tmp_path: Path) -> None:
    """JetStream's ladder has a batch rung (the light rung with prefetch 10): played in the
    simulator with a known 0.4 ms closing status, the fit finds it again; Redis's ladder, whose
    fetch needs no status, has no such rung."""
    known = {**KNOWN, "kind": "nats-jetstream", "consume": {"mode": "pull", "wake": "1ms"}}
    known["consume"]["status"] = "0.4ms"
    measured = simulated_ladder(tmp_path, known)
    profile = refine(fit("nats-jetstream", measured, {"origin": "calibrated"}), measured)
    assert profile.consume.status.mean == pytest.approx(0.4e-3, rel=0.2)
    assert "batch" not in [step.name for step in ladder("redis-streams")]


def test_fit_finds_fetch_work_the_consumers_share(tmp_path: Path) -> None:
    """One broker server doing 1.5 ms per fetch request: two consumers of the consumer rung take
    less than twice what one takes, and the fit finds the fetch's work again (and leaves it out
    of the consumer's own lateness)."""
    known = tmp_path / "known.yaml"
    shared = {**KNOWN, "parallelism": 1, "consume": {"mode": "pull", "fetch": "1.5ms"}}
    shared["publish"] = {"none": "0.05ms"}
    known.write_text(yaml.safe_dump(shared), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    base = base_scenario("redis-streams")
    measured = {}
    for step in ladder("redis-streams", quick=True):
        if step.name in ("fsync", "large"):
            continue
        scenario = base.with_(paths=dict(step.changes), name=f"known-{step.name}")
        measured[step.name] = Measured.of(step, run_scenario(scenario, "sim", options))
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.consume.fetch.mean == pytest.approx(1.5e-3, rel=0.25)
    assert profile.client.timer.mean == pytest.approx(0.5e-3, abs=0.4e-3)


def test_a_consumer_faster_than_the_light_rungs_round_trips_allow_is_honoured(
    tmp_path: Path,
) -> None:
    """The light rungs come from a world whose round trip has a long tail (p99 20x the median:
    an idle machine's wake-ups), the consumer rung from one whose round trips are tight (a busy
    machine's). With no consumer lateness left to take away, the fit shortens the round trip's
    tail until the simulated consumer rung is as fast as the measured one, and keeps the light
    rung's median."""
    tight = {**KNOWN, "client": {"timer": "0ms"}, "consume": {"mode": "pull"}}
    tight["round_trip"] = {"dist": "lognormal", "median": "0.4ms", "p99": "0.42ms"}
    idle = {**tight, "round_trip": {"dist": "lognormal", "median": "0.4ms", "p99": "8ms"}}
    base = base_scenario("redis-streams")
    measured = {}
    for world, names in ((idle, ("light", "large", "fsync", "ceiling")), (tight, ("consumer",))):
        path = tmp_path / f"{len(measured)}.yaml"
        path.write_text(yaml.safe_dump(world), encoding="utf-8")
        options = RunOptions(results_dir=tmp_path / "runs", profile=str(path))
        for step in ladder("redis-streams", quick=True):
            if step.name in names:
                scenario = base.with_(paths=dict(step.changes), name=f"known-{step.name}")
                measured[step.name] = Measured.of(step, run_scenario(scenario, "sim", options))
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.round_trip.median == pytest.approx(0.4e-3, rel=0.25)
    assert profile.round_trip.p99 < 4e-3  # the idle world's 8 ms tail would slow the consumer
    refit = tmp_path / "fitted.yaml"
    refit.write_text(yaml.safe_dump(profile.model_dump(mode="json")), encoding="utf-8")
    step = next(s for s in ladder("redis-streams", quick=True) if s.name == "consumer")
    scenario = base.with_(paths=dict(step.changes), name="replay-consumer")
    replay = RunOptions(results_dir=tmp_path / "replay", profile=str(refit))
    again = run_scenario(scenario, "sim", replay).metrics["throughput_per_s"]["delivered"]
    assert again == pytest.approx(measured["consumer"].delivered, rel=0.03)


def test_lognormal_tail_for_a_mean_inverts_the_mean() -> None:
    """The helper the fit uses to shorten a round trip's tail gives back the tail it came from."""
    for p99 in (0.21e-3, 1e-3, 3e-3):
        mean = LogNormal(dist="lognormal", median=0.2e-3, p99=p99).mean
        assert _p99_for_mean(0.2e-3, mean) == pytest.approx(p99, rel=1e-9)
    assert _p99_for_mean(0.2e-3, 0.1e-3) == pytest.approx(0.21e-3)  # no tail left to remove


def test_the_ceiling_rung_finds_the_highest_offer_kept_up_with(tmp_path: Path) -> None:
    """A broker that takes 40,000/s (8 servers, 0.2 ms of work per message) keeps up with the
    ceiling rung's first offer of 30,000/s and not with 60,000/s: the rung doubles its offer once,
    then bisects between 30,000/s and 44,000/s (just above what the 60,000/s run delivered), and
    measures the highest offer it kept up with, 6% below to 3% above 40,000/s (a run of 1.5 s at
    the ceiling itself still keeps its tails within bounds): the sustained ceiling."""
    fast = {
        **KNOWN,
        "publish": {"none": "0.05ms", "periodic": "0.05ms", "always": "0.05ms"},
        "deliver": "0.15ms",
        "parallelism": 8,
    }
    known = tmp_path / "fast.yaml"
    known.write_text(yaml.safe_dump(fast), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    run = partial(run_rung, base_scenario("redis-streams"), "sim", options)
    step = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    first = run(step)
    assert sustained(first)
    said: list[str] = []
    step, found, bounded = find_sustained(step, first, run, said.append)
    assert bounded
    assert said[0] == "ceiling: kept up; offering 60,000/s"
    assert said[1].startswith("ceiling: the ceiling lies between 30,000/s and 4")
    assert len(said) == 1 + SUSTAINED_BISECTIONS
    rate = parse_rate(step.changes["producers.rate"])
    assert 0.94 * 40_000 <= rate <= 1.03 * 40_000
    assert sustained(found)
    assert found.metrics["throughput_per_s"]["delivered"] == pytest.approx(rate, rel=0.05)


def test_a_ceiling_rung_that_keeps_up_with_every_offer_is_a_lower_bound(tmp_path: Path) -> None:
    """A broker far faster than every offer the rung may make: the search stops after its
    doublings, says the ceiling was not found, and calibrate's warning calls it a lower bound."""
    fast = {**KNOWN, "publish": {"none": "0.001ms"}, "deliver": "0.001ms", "parallelism": 64}
    known = tmp_path / "fast.yaml"
    known.write_text(yaml.safe_dump(fast), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    run = partial(run_rung, base_scenario("redis-streams"), "sim", options)
    step = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    step = replace(step, changes={**step.changes, "producers.rate": "1000/s"})
    step, found, bounded = find_sustained(step, run(step), run, lambda _: None)
    assert not bounded and step.changes["producers.rate"] == f"{1000 * 2**3}/s"  # 3 doublings
    measured = Measured.of(step, found)
    measured.lower_bound = True
    (warning,) = busy_warnings("redis-streams", {"ceiling": measured})
    assert "lower bound" in warning


def _broker_keeping_up_to(ceiling: float, offers: list[float]) -> Any:
    """A known-answer broker for the search alone: it keeps up with any offer up to
    ``ceiling`` (short tails) and falls behind beyond it (a short run delivers its backlog
    late: end-to-end tail in seconds); the offers it was made are appended to ``offers``."""

    def run(step: Any) -> Any:
        offer = parse_rate(step.changes["producers.rate"])
        offers.append(offer)
        behind = offer > ceiling
        metrics = {
            "throughput_per_s": {"offered": offer, "delivered": offer},
            "latency_ms": {"end_to_end": {"p99": 4_000.0 if behind else 5.0}},
        }
        return SimpleNamespace(metrics=metrics)

    return run


@pytest.mark.parametrize(
    ("dearer_ceiling", "runs", "found"),
    [
        # As cheap as the ceiling rung within its bracket: kept up with at its start, done.
        (40_000.0, 1, 37_500.0),
        # Dearer: it falls behind at the start and bisects below, never above the cheaper ceiling.
        (20_000.0, 5, 19_000.0),
    ],
)
def test_a_dearer_rung_searches_no_higher_than_the_cheaper_rungs_ceiling(
    dearer_ceiling: float, runs: int, found: float
) -> None:
    """The 4 kB and prefetch-10 rungs cost more per message than the ceiling rung, which kept up
    with 37,500/s and fell behind at 41,250/s: an offer beyond 37,500/s cannot tell anything,
    so the search stops there (a broker whose dearer messages cost less than the bracket
    resolves is found at 37,500/s in one run, where the unbounded search made five), and a
    dearer broker's ceiling is bisected below it within 10%."""
    step = next(s for s in ladder("redis-streams") if s.name == "ceiling-large")
    step = replace(step, changes={**step.changes, "producers.rate": "37500/s"})
    offers: list[float] = []
    run = _broker_keeping_up_to(dearer_ceiling, offers)
    said: list[str] = []
    behind: list[Any] = []
    step, _, bounded = find_sustained(
        step, run(step), run, said.append, behind=behind, within=(37_500.0, 41_250.0)
    )
    fell = [r.metrics["throughput_per_s"]["offered"] for r in behind]
    assert fell_behind_at(behind) == min(fell, default=None)
    assert bounded and len(offers) == runs and max(offers) <= 37_500.0
    rate = parse_rate(step.changes["producers.rate"])
    assert found * 0.9 <= rate <= min(dearer_ceiling, 37_500.0)
    assert all(offer > dearer_ceiling for offer in fell)
    unbounded: list[float] = []
    run = _broker_keeping_up_to(dearer_ceiling, unbounded)
    step = replace(step, changes={**step.changes, "producers.rate": "37500/s"})
    find_sustained(step, run(step), run, lambda _: None)
    assert max(unbounded) > 37_500.0 if dearer_ceiling > 37_500.0 else len(unbounded) == runs
    if dearer_ceiling > 37_500.0:
        assert len(unbounded) == 5 and "fell behind at 41,250/s" in said[0]


def test_the_fetch_rungs_doubling_stops_at_the_ceiling_rungs_offer() -> None:
    """The prefetch-10 rung starts at half the ceiling: kept up with there, it offers the
    ceiling rung's 37,500/s next (not twice its start, 37,500/s too here, nor beyond), and from
    a start of a third it offers 37,500/s rather than 25,000 then 50,000."""
    step = next(s for s in ladder("redis-streams") if s.name == "ceiling-fetch")
    step = replace(step, changes={**step.changes, "producers.rate": "12500/s"})
    offers: list[float] = []
    run = _broker_keeping_up_to(30_000.0, offers)
    step, _, bounded = find_sustained(
        step, run(step), run, lambda _: None, bisections=2, within=(37_500.0, 41_250.0)
    )
    assert bounded and max(offers) == 37_500.0 and offers[:3] == [12_500.0, 25_000.0, 37_500.0]
    assert 0.9 * 30_000 <= parse_rate(step.changes["producers.rate"]) <= 30_000


def ladder_in(
    tmp_path: Path, world: dict, said: list[str] | None = None
) -> tuple[Path, dict[str, Measured]]:
    """The quick ladder played, as calibrate plays it, in a simulated world with known costs
    (its progress lines appended to ``said``)."""
    known = tmp_path / "world.yaml"
    known.write_text(yaml.safe_dump(world), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    run = partial(run_rung, base_scenario("redis-streams"), "sim", options)
    say = said.append if said is not None else lambda _: None
    return known, measure(ladder("redis-streams", quick=True), run, say, 1, overload=True)


def world_and_fit(tmp_path: Path, known: Path, fitted: Profile, step: Step) -> list[dict]:
    """metrics.json of ``step`` played in the known world and with the fitted profile."""
    path = tmp_path / "fitted.yaml"
    path.write_text(yaml.safe_dump(fitted.model_dump(mode="json")), encoding="utf-8")
    return [
        run_rung(
            base_scenario("redis-streams"),
            "sim",
            RunOptions(results_dir=tmp_path / name, profile=str(profile)),
            step,
        ).metrics
        for name, profile in (("world", known), ("fitted", path))
    ]


def test_fit_finds_the_capacity_of_broker_and_clients_together(tmp_path: Path) -> None:
    """A world whose flat-out capacity is 25,000 messages and 50 MB a second (fast servers):
    the ladder measures it with 256 B and 4 kB messages (each offer raised until the world falls
    behind), and the fitted profile predicts a size it never saw: flat out with 1 kB messages,
    1 / (40 us + 20.5 us) = 16,500/s, within 5% of the world's own."""
    world = {
        **KNOWN,
        "publish": {"none": "0.01ms", "periodic": "0.01ms", "always": "0.5ms"},
        "deliver": "0.01ms",
        "capacity": {"messages": "25000/s", "bytes": "50MB/s"},
    }
    said: list[str] = []
    known, measured = ladder_in(tmp_path, world, said)
    assert "[7/9] ceiling-large: capacity's byte cost" in "\n".join(said)
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.capacity is not None
    per_message, per_byte = profile.capacity.seconds()
    assert per_message + 1024 * per_byte == pytest.approx(1 / 16_500, rel=0.1)
    ceiling = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    unseen = replace(
        ceiling, changes={**ceiling.changes, "producers.size": "1kB", "consumers.count": 3}
    )
    rates = [
        m["throughput_per_s"]["delivered"] for m in world_and_fit(tmp_path, known, profile, unseen)
    ]
    assert rates[0] < 0.8 * 30_000  # the world fell behind: this measures its capacity
    assert rates[1] == pytest.approx(rates[0], rel=0.05)


def test_fit_finds_the_capacitys_cost_per_fetch_and_predicts_another_prefetch(
    tmp_path: Path,
) -> None:
    """A world whose capacity is 25,000 messages, 50 MB and 5,000 fetches a second: a message
    in fetches of 50 uses 40 + 5.1 + 4 us of it (20,400/s with 256 B), in fetches of 10 40 + 5.1
    + 20 us (15,400/s). The ladder's fetch rung (prefetch 10) tells the two apart, the fit
    finds the cost per fetch within 15%, and predicts a shape it never saw: 1 kB in fetches of
    20 with three consumers, 1 / (40 + 20.5 + 10 us) = 14,200/s, within 5% of the world's own,
    where a fit without the fetch rung would say 1 / (40 + 20.5 + 4 us) = 15,500/s (+9%)."""
    world = {
        **KNOWN,
        "publish": {"none": "0.01ms", "periodic": "0.01ms", "always": "0.5ms"},
        "deliver": "0.01ms",
        "capacity": {"messages": "25000/s", "bytes": "50MB/s", "fetches": "5000/s"},
    }
    said: list[str] = []
    known, measured = ladder_in(tmp_path, world, said)
    assert "[8/9] ceiling-fetch: capacity's cost per fetch" in "\n".join(said)
    assert measured["ceiling-fetch"].delivered < 0.85 * measured["ceiling"].delivered
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.capacity is not None and profile.capacity.fetches is not None
    assert profile.capacity.fetches == pytest.approx(5_000, rel=0.15)
    ceiling = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    unseen = replace(
        ceiling,
        changes={
            **ceiling.changes,
            "producers.size": "1kB",
            "consumers.count": 3,
            "consumers.prefetch": 20,
        },
    )
    rates = [
        m["throughput_per_s"]["delivered"] for m in world_and_fit(tmp_path, known, profile, unseen)
    ]
    assert rates[0] == pytest.approx(1 / (40e-6 + 20.48e-6 + 10e-6), rel=0.05)
    assert rates[1] == pytest.approx(rates[0], rel=0.05)


def test_the_cost_per_fetch_is_what_smaller_fetches_cost_more() -> None:
    """Two ceilings of the same messages, in fetches of 50 and of 10: 1/small - 1/full is the
    cost per fetch times (1/10 - 1/50); none when the smaller fetches cost nothing more."""
    per_message, per_fetch = 40e-6 + 256 / 50e6, 200e-6  # 256 B messages, 50 MB/s
    full, small = 1 / (per_message + per_fetch / 50), 1 / (per_message + per_fetch / 10)
    assert fetch_cost(full, small, 50, 10) == pytest.approx(per_fetch)
    assert fetch_cost(full, full * 1.01, 50, 10) == 0.0
    assert fetch_cost(full, 0.0, 50, 10) == 0.0
    large = 1 / (40e-6 + 4096 / 50e6 + per_fetch / 50)
    capacity = _capacity(full, large, 4096, None, per_fetch)
    assert capacity is not None
    assert capacity["fetches"] == pytest.approx(1 / per_fetch)
    assert capacity["messages"] == pytest.approx(25_000)
    assert capacity["bytes"] == pytest.approx(50e6)


def test_fit_finds_a_client_bound_capacity_at_either_process_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A world whose capacity is 25,000 messages and 50 MB a second with one client process and
    whose clients spend 80% of a message's CPU on two cores, above 20,000/s played by two
    processes (x1.6). The 256 B ceiling is found with two processes, the 4 kB one with one; the
    fit puts both on one process and predicts 1 kB flat out with one process (16,500/s) and
    with two (26,500/s) within 5% of the world's own."""
    monkeypatch.delenv("BROKERLAB_WORKERS", raising=False)
    clients = {"share": 0.8, "broker_cores": 1, "cores": 2, "single_process_rate": 20_000}
    world = {
        **KNOWN,
        "publish": {"none": "0.01ms", "periodic": "0.01ms", "always": "0.5ms"},
        "deliver": "0.01ms",
        "capacity": {"messages": "25000/s", "bytes": "50MB/s", "clients": clients},
    }
    # The simulated rungs have no CPU samples: the shares are the world's.
    monkeypatch.setattr(calibration, "client_shares", lambda *_: Clients(**clients))
    known, measured = ladder_in(tmp_path, world)
    assert parse_rate(measured["ceiling"].step.changes["producers.rate"]) > 20_000
    assert parse_rate(measured["ceiling-large"].step.changes["producers.rate"]) < 20_000
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.capacity is not None and profile.capacity.clients == Clients(**clients)
    per_message, per_byte = profile.capacity.seconds()
    assert per_message + 1024 * per_byte == pytest.approx(1 / 16_534, rel=0.1)
    ceiling = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    for rate, expected in (("19000/s", 16_534), ("30000/s", 26_455)):
        unseen = replace(
            ceiling,
            changes={**ceiling.changes, "producers.size": "1kB", "producers.rate": rate},
        )
        (folder := tmp_path / rate[:5]).mkdir()
        rates = [
            m["throughput_per_s"]["delivered"]
            for m in world_and_fit(folder, known, profile, unseen)
        ]
        assert rates[0] == pytest.approx(expected, rel=0.05), rate
        assert rates[1] == pytest.approx(rates[0], rel=0.05), rate


def test_fit_finds_the_publishes_shares_from_the_backlogs_the_ceiling_search_left(
    tmp_path: Path,
) -> None:
    """A world whose capacity (25,000 messages and 50 MB a second) is 40% the publishes' (10%
    for a producer behind schedule, in full calls): the ceiling searches' offers beyond it leave
    backlogs that drain at 1 / (60% of the cost) once the producer stops, and the deep backlog
    (four times the 256 B ceiling for 1 s) is more than calls of one could send. The fit
    finds both shares, and predicts 1 kB overloads it never saw within 5%: what was delivered
    while the producer sent and the drain after, at 30,000/s (calls of one) and at 45,000/s
    (behind, full calls: 20,000/s delivered while it sends, where calls of one would leave
    12,000/s)."""
    world = {
        **KNOWN,
        "publish": {"none": "0.01ms", "periodic": "0.01ms", "always": "0.5ms"},
        "deliver": "0.01ms",
        "capacity": {
            "messages": "25000/s",
            "bytes": "50MB/s",
            "publish_share": 0.4,
            "publish_batched": 0.1,
        },
    }
    known, measured = ladder_in(tmp_path, world)
    assert measured["ceiling"].behind and measured["ceiling-large"].behind
    drains = [
        rate for m in measured.values() for r in m.behind if (rate := drain_rate(r)) is not None
    ]
    assert drains  # the backlogs were deep enough to tell
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.capacity is not None
    assert profile.capacity.publish_share == pytest.approx(0.4, abs=0.05)
    assert profile.capacity.publish_batched == pytest.approx(0.1, abs=0.05)
    ceiling = next(s for s in ladder("redis-streams", quick=True) if s.name == "ceiling")
    for rate in ("30000/s", "45000/s"):
        unseen = replace(
            ceiling, changes={**ceiling.changes, "producers.size": "1kB", "producers.rate": rate}
        )
        (folder := tmp_path / rate[:5]).mkdir()
        world_and_fit(folder, known, profile, unseen)
        world_run, fitted_run = (drain_phases(folder / name) for name in ("world", "fitted"))
        assert fitted_run[0] == pytest.approx(world_run[0], rel=0.05), rate
        assert fitted_run[1] == pytest.approx(world_run[1], rel=0.05), rate
        if rate == "30000/s":
            assert world_run[1] > 1.4 * world_run[0]  # the backlog drained faster than fed
        else:
            assert world_run[0] == pytest.approx(20_000, rel=0.1)


def drain_phases(results_dir: Path) -> tuple[float, float]:
    """Delivered a second while the producer sent, and after (the one run in ``results_dir``)."""
    (folder,) = (p for p in results_dir.iterdir() if p.is_dir())
    sends = pd.read_parquet(folder / "sends.parquet")
    deliveries = pd.read_parquet(folder / "deliveries.parquet")
    stopped, start = float(sends["t_sent"].max()), float(sends["t_sent"].min())
    first = deliveries.groupby("msg_id")["t_delivered"].min()
    during, after = first[first <= stopped], first[first > stopped]
    return len(during) / (stopped - start), len(after) / (float(after.max()) - stopped)


def test_the_clients_share_is_the_machines_busy_cpu_less_the_brokers() -> None:
    """While the run sent (2 s), the broker used half a core and the machine 75% of two cores:
    the clients used one core of 1.5, two thirds; the drain after the run and samples without
    the broker's CPU do not count."""
    timeline = pd.DataFrame(
        {
            "t_end": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            "broker_cpu": [50.0, 50.0, np.nan, 50.0, 100.0, 100.0],
            "machine_cpu": [75.0, 75.0, 99.0, 75.0, 60.0, 60.0],
        }
    )
    record = SimpleNamespace(
        result=SimpleNamespace(trace=SimpleNamespace(timeline=timeline)),
        metrics={"duration_s": 2.0},
    )
    assert cpu_share(record, cores=2) == pytest.approx(2 / 3)  # type: ignore[arg-type]
    timeline["broker_cpu"] = np.nan  # a remote broker
    assert cpu_share(record, cores=2) is None  # type: ignore[arg-type]


def test_fit_separates_a_busy_round_trip_from_an_idle_machines_wake_ups(tmp_path: Path) -> None:
    """A world whose busy round trip is 0.15 ms and whose idle machine wakes 0.45 ms late (tau
    3 ms, as measured here): the light rung (200/s) and the busy one (1,000/s) give both back
    (the wake-up within 25%; the round trip, which shares its tail with it, within 35%), and the
    fit predicts publish latency at a rate it never saw (500/s) within 10%, where the light
    rung's own latency is more than 30% off."""
    world = {
        **KNOWN,
        "round_trip": {"dist": "lognormal", "median": "0.15ms", "p99": "0.3ms"},
        "idle": {"cost": "0.45ms", "tau": "3ms"},
    }
    known, measured = ladder_in(tmp_path, world)
    profile = refine(fit("redis-streams", measured, {"origin": "calibrated"}), measured)
    assert profile.idle is not None
    assert profile.idle.cost.mean == pytest.approx(0.45e-3, rel=0.25)
    assert profile.round_trip.median == pytest.approx(0.15e-3, rel=0.35)
    light = next(s for s in ladder("redis-streams", quick=True) if s.name == "light")
    unseen = replace(light, changes={**light.changes, "producers.rate": "500/s"})
    p50 = [
        m["latency_ms"]["publish"]["p50"] for m in world_and_fit(tmp_path, known, profile, unseen)
    ]
    assert p50[1] == pytest.approx(p50[0], rel=0.1)
    assert measured["light"].publish_p50 * 1e3 > 1.3 * p50[0]  # one round trip would miss it


def test_calibrate_refuses_targets_it_cannot_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", "calibrate", "--targets", "kafka"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--targets" in done.stderr and "kafka" in done.stderr


@pytest.mark.timeout(600)
def test_a_quick_calibration_of_a_real_redis_is_found_by_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reduced ladder on a Redis the lab starts: a valid profile with provenance (this host,
    the server's version, the runs used) lands in $BROKERLAB_PROFILES, and ``auto`` uses it."""
    monkeypatch.setenv("BROKERLAB_PROFILES", str(tmp_path / "store"))
    options = RunOptions(results_dir=tmp_path / "runs")
    said: list[str] = []
    [done] = calibrate(["redis-streams"], options, say=said.append, quick=True)
    assert done.path == tmp_path / "store" / "redis-streams.yaml"
    stored = load_profile(done.path)
    assert stored.provenance.origin == "calibrated"
    assert stored.provenance.broker_version and "redis-streams" in stored.provenance.broker_version
    # Every rung measured, and the provenance names the runs the fit used: one per rung here,
    # more where the host took the machine's CPU time (steal) during a rung's runs, which are
    # run again and, when none was quiet, all kept.
    assert [m.step.name for m in done.measured] == [
        s.name for s in ladder("redis-streams", quick=True)
    ]
    assert stored.provenance.runs == [str(r.path) for m in done.measured for r in m.records]
    assert len(stored.provenance.runs) >= len(done.measured)
    assert stored.round_trip.median > 0 and stored.parallelism >= 1
    assert [row["run"] for row in done.errors] == [s.name for s in ladder("redis-streams")]
    assert any("fsync" in line for line in said)  # progress names each rung
    assert resolve_profile("auto", "redis-streams") == stored
    # The lab's Redis is in sight: the clients' share is measured; Redis runs on one thread.
    assert stored.capacity is not None and stored.capacity.clients is not None
    assert 0 < stored.capacity.clients.share < 1
    assert stored.capacity.clients.broker_cores == 1
    # Where the ceiling search's offers beyond the ceiling left backlogs, they drained faster
    # than the ceiling (a publish costs CPU the drain does not spend): the publishes' share. A
    # quick machine's Redis can keep up even with the deep backlog's offer (a producer behind
    # schedule sends full calls): then no drain tells it and the share stays 0, not a guess.
    drains = [rate for m in done.measured for r in m.behind if (rate := drain_rate(r)) is not None]
    if drains:
        assert 0 < stored.capacity.publish_share < 1
    else:
        assert stored.capacity.publish_share == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_full_calibration_of_the_nats_brokers_through_the_cli(tmp_path: Path) -> None:
    """The whole ladder on the two NATS targets through the CLI, with --out (``--quick``: each
    rung once and shorter; the fit's medians over repeats are tested on their own; this is the
    command end to end; Redis's ladder runs in the test above)."""
    out = tmp_path / "mine.yaml"
    command = [sys.executable, "-m", "brokerlab.cli", "calibrate", "--out", str(out)]
    command += ["--quick", "--targets", "nats,nats-jetstream"]
    done = subprocess.run(
        [*command, "--results-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    for target in ("nats", "nats-jetstream"):
        path = tmp_path / f"mine-{target}.yaml"
        profile = load_profile(path)
        assert profile.kind == target
        assert f"{target}: replay of each run" in done.stdout
        # The clients' share of the machine, from the CPU samples of a broker the lab can see.
        assert profile.capacity is not None and profile.capacity.clients is not None
        clients = profile.capacity.clients
        assert 0 < clients.share < 1 and clients.cores == (os.cpu_count() or 1)
        assert clients.broker_cores == clients.cores  # nats-server runs on every core
        if target == "nats-jetstream":  # the deep backlog: both publishes' shares
            assert 0 < profile.capacity.publish_share < 1
            assert profile.capacity.publish_batched is not None
    assert "clients' share of a message's CPU" in done.stdout
    assert "publishes' share of the capacity" in done.stdout
    assert "nats-jetstream ceiling: a deep backlog for the publishes' share" in done.stderr


def test_repeats_must_be_a_whole_number_of_runs(tmp_path: Path) -> None:
    """``--repeats 0`` is a usage error (exit 2) before any broker starts or anything is written."""
    done = subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", "calibrate", "--repeats", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "--repeats" in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_busy_machine_is_named_not_silently_fitted() -> None:
    """A light rung that delivered 124/s of the 200/s offered says the machine was too busy; a
    ceiling rung that kept up with its offer says its ceiling is only a lower bound."""
    step = ladder("redis-streams")[0]

    def rung(delivered: float) -> Measured:
        return Measured(step, None, 0.5e-3, 2e-3, 1e-3, 5e-3, 1e-3, delivered)  # type: ignore[arg-type]

    assert busy_warnings("redis-streams", {"light": rung(201.0)}) == []
    (warning,) = busy_warnings("redis-streams", {"light": rung(124.0)})
    assert "light rung delivered 124/s of 200/s" in warning and "too busy" in warning
    ceiling = next(s for s in ladder("redis-streams") if s.name == "ceiling")
    kept_up = Measured(ceiling, None, 1e-3, 2e-3, 1e-3, 5e-3, 1e-3, 29_900.0, lower_bound=True)  # type: ignore[arg-type]
    (warning,) = busy_warnings("redis-streams", {"ceiling": kept_up})
    assert "29900/s of 30000/s" in warning and "lower bound" in warning
    saturated = Measured(ceiling, None, 1e-3, 2e-3, 1e-3, 5e-3, 1e-3, 15_000.0)  # type: ignore[arg-type]
    assert busy_warnings("redis-streams", {"ceiling": saturated}) == []


def stolen_timeline(steal: list[float]) -> pd.DataFrame:
    """A real run's resource samples, a quarter second each, with the host taking ``steal`` %
    of the machine's CPU time (nothing else near a limit)."""
    rows = len(steal)
    return pd.DataFrame(
        {
            "t_start": np.arange(rows) * 0.25,
            "t_end": np.arange(1, rows + 1) * 0.25,
            "lab_cpu": 40.0,
            "loop_lag_ms": 1.0,
            "broker_cpu": 20.0,
            "machine_cpu": 50.0,
            "machine_steal": steal,
        }
    )


def test_a_host_that_took_the_machines_cpu_time_during_a_rung_is_named() -> None:
    """Known answer: one of the light rung's three runs had the host take 25 % of the machine's
    CPU time (steal) in most of its intervals; the calibration says so, with the peak, and a
    rung whose host took 3 % is not named."""
    step = ladder("redis-streams")[0]

    def run(steal: float) -> SimpleNamespace:
        frame = stolen_timeline([steal] * 8 + [2.0] * 2)
        return SimpleNamespace(result=SimpleNamespace(trace=SimpleNamespace(timeline=frame)))

    def rung(steals: list[float]) -> Measured:
        records = [run(steal) for steal in steals]
        return Measured(step, records[0], 0.5e-3, 2e-3, 1e-3, 5e-3, 1e-3, 201.0, records=records)

    assert busy_warnings("redis-streams", {"light": rung([3.0, 3.0, 3.0])}) == []
    (warning,) = busy_warnings("redis-streams", {"light": rung([3.0, 25.0, 3.0])})
    assert "host took ≥10% of its CPU time (steal, up to 25%) during 1 run(s) of the light" in (
        warning
    )
    assert "inflated" in warning


def test_a_rung_run_again_when_the_host_took_the_cpu_keeps_only_its_quiet_runs() -> None:
    """Known answer: the light rung's runs alternate between a host taking 25 % of the machine's
    CPU time (end-to-end p50 50 ms) and a quiet one (0.3, 0.4, 0.5 ms). The rung runs again, at
    most twice, until it has three quiet runs, and its median is theirs: 0.4 ms. A host noisy
    in every run gives five runs, their median, and a warning naming the rung."""

    step = ladder("redis-streams")[0]

    def record(p50_ms: float, steal: float) -> SimpleNamespace:
        latency = {"p50": p50_ms, "p99": p50_ms * 4}
        metrics = {
            "throughput_per_s": {"delivered": 201.0},
            "latency_ms": {"end_to_end": latency, "publish": latency, "completion": latency},
        }
        trace = SimpleNamespace(timeline=stolen_timeline([steal] * 8))
        return SimpleNamespace(metrics=metrics, result=SimpleNamespace(trace=trace))

    def playing(runs: list[SimpleNamespace]) -> tuple[list, Any]:
        played: list = []

        def run(_step: Step) -> SimpleNamespace:
            played.append(runs[len(played)])
            return played[-1]

        return played, run

    noisy = [record(50.0, 25.0), record(0.3, 2.0), record(50.0, 25.0), record(0.4, 2.0)]
    played, run = playing([*noisy, record(0.5, 2.0), record(9.0, 2.0)])
    said: list[str] = []
    measured = measure([step], run, said.append, 3)["light"]
    assert len(played) == 5 and measured.e2e_p50 == pytest.approx(0.4e-3)
    assert sum("host took its CPU time (steal)" in line for line in said) == 2
    assert busy_warnings("redis-streams", {"light": measured}) == []

    played, run = playing([record(50.0 + i, 25.0) for i in range(6)])
    measured = measure([step], run, lambda _: None, 3)["light"]
    assert len(played) == 5 and measured.e2e_p50 == pytest.approx(52e-3)
    (warning,) = busy_warnings("redis-streams", {"light": measured})
    assert "during 5 run(s) of the light rung(s)" in warning


def _delivered_run(late: int, late_by: float) -> SimpleNamespace:
    """A 1.5 s run at 8,000/s: each message delivered 1 ms after its send, except the last
    ``late`` ones, ``late_by`` seconds after the run; metrics.json's delivered rate as the
    analysis counts it (every first delivery over the span to the last one)."""
    count, rate = 12_000, 8_000.0
    t_sent = np.arange(count) / rate
    t_delivered = t_sent + 0.001
    if late:
        t_delivered[-late:] = t_sent[-1] + late_by
    sends = pd.DataFrame({"msg_id": np.arange(count), "t_sent": t_sent})
    deliveries = pd.DataFrame({"msg_id": np.arange(count), "t_delivered": t_delivered})
    metrics = {"throughput_per_s": {"offered": rate, "delivered": count / float(t_delivered.max())}}
    trace = SimpleNamespace(sends=sends, deliveries=deliveries)
    return SimpleNamespace(metrics=metrics, result=SimpleNamespace(trace=trace))


def test_a_few_stragglers_do_not_make_a_run_that_kept_up_fall_behind() -> None:
    """Ten messages of 12,000 delivered 190 ms after a 1.5 s run: metrics.json's delivered rate
    says 89% of the offer (the span to the last delivery), but 99% of the messages came at the
    offered rate: kept up. The same run with its last 4% a second late fell behind, and so did
    one with its last 2% never delivered (whatever other messages arrived)."""
    stragglers = _delivered_run(10, 0.19)
    assert stragglers.metrics["throughput_per_s"]["delivered"] < 0.9 * 8_000
    assert calibration.bulk_rate(stragglers) == pytest.approx(0.99 * 8_000, rel=0.01)
    assert calibration.kept_up(stragglers)
    assert not calibration.kept_up(_delivered_run(480, 1.0))
    lost = _delivered_run(0, 0.0)
    kept = lost.result.trace.deliveries.iloc[:-240]
    # ... and deliveries of messages this run never sent do not make up for them
    foreign = pd.DataFrame({"msg_id": np.arange(20_000, 20_240), "t_delivered": 1.0})
    lost.result.trace.deliveries = pd.concat([kept, foreign], ignore_index=True)
    lost.metrics["throughput_per_s"]["delivered"] = 0.9 * 8_000  # as if counted so
    assert not calibration.kept_up(lost)
    assert calibration.kept_up(_delivered_run(0, 0.0))


def test_replays_in_worker_processes_give_what_one_process_gives(tmp_path: Path) -> None:
    """A full calibration replays its rungs in worker processes: the same seeded simulator
    runs, so the same metrics, in the rungs' order, as replaying them here."""
    world = {**KNOWN, "capacity": {"messages": "25000/s", "bytes": "50MB/s"}}
    _known, measured = ladder_in(tmp_path, world)
    rungs = [measured[name] for name in ("light", "consumer", "ceiling")]
    profile = parse_profile(world, "world")
    here = replays(rungs, profile)
    with replay_pool(2) as pool:
        assert pool is not None
        there = replays(rungs, profile, pool)
    assert there == here
    assert [m["throughput_per_s"]["delivered"] for m in here] == pytest.approx(
        [m.delivered for m in rungs], rel=0.05
    )
    with replay_pool(1) as none:
        assert none is None


def test_a_dearer_ceiling_rung_that_kept_up_with_more_is_called_noise(tmp_path: Path) -> None:
    """4 kB messages or fetches of 10 cannot be cheaper than the ceiling rung's: a rung of
    them kept up with as much means the machine's noise hid the cost it measures, and
    calibrate says so; a plausible order, or a ceiling rung that only has a lower bound (it
    kept up with every offer), gets no such warning."""
    fast = {**KNOWN, "publish": {"none": "0.001ms"}, "deliver": "0.001ms", "parallelism": 64}
    known = tmp_path / "fast.yaml"
    known.write_text(yaml.safe_dump(fast), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    record = run_rung(
        base_scenario("redis-streams"),
        "sim",
        options,
        next(s for s in ladder("redis-streams", quick=True) if s.name == "light"),
    )
    steps = {s.name: s for s in ladder("redis-streams", quick=True)}

    def at(name: str, rate: str) -> Measured:
        step = steps[name]
        return Measured.of(replace(step, changes={**step.changes, "producers.rate": rate}), record)

    noisy = {
        "ceiling": at("ceiling", "28000/s"),
        "ceiling-large": at("ceiling-large", "36000/s"),
        "ceiling-fetch": at("ceiling-fetch", "28000/s"),
    }
    said = [w for w in busy_warnings("nats", noisy) if "noise" in w]
    assert len(said) == 2
    assert "ceiling-large rung kept up with 36,000/s" in said[0] and "byte cost" in said[0]
    assert "ceiling-fetch" in said[1] and "cost per fetch" in said[1]
    plausible = {**noisy, "ceiling-large": at("ceiling-large", "12000/s")}
    plausible["ceiling-fetch"] = at("ceiling-fetch", "20000/s")
    assert not [w for w in busy_warnings("nats", plausible) if "noise" in w]
    noisy["ceiling"].lower_bound = True
    assert not [w for w in busy_warnings("nats", noisy) if "noise" in w]
