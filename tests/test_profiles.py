"""Performance profiles: the format, how a run chooses one, and what the simulator charges.

Known answers use constant costs, so each latency is an exact sum of the charged steps.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from brokerlab.app.runner import RunOptions, run_scenario
from brokerlab.core.analysis import analyze
from brokerlab.core.load import plan_load
from brokerlab.core.scenario import Scenario, load_scenario, parse_scenario
from brokerlab.core.vocabulary import BROKER_KINDS
from brokerlab.sim import simulate
from brokerlab.sim.models import MODELS
from brokerlab.sim.presets import presets, resolve
from brokerlab.sim.profile import (
    PROFILES_DIR,
    Clients,
    ProfileError,
    apply_profile,
    default_profile,
    load_profile,
    parse_profile,
    resolve_profile,
)

US = 1.01e-6  # the trace keeps microseconds


def make(broker: dict[str, Any] | None = None, **sections: Any) -> Scenario:
    """200 evenly spaced messages at 100/s (no queueing), one consumer, no processing."""
    data: dict[str, Any] = {
        "name": "profiles",
        "producers": {"rate": "100/s", "messages": 200, "arrival": "constant"},
        "broker": {"kind": "redis-streams", **(broker or {})},
        "consumers": {"count": 1},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_scenario(data)


def profile_data(**changes: Any) -> dict[str, Any]:
    """A profile with constant costs (all zero unless changed)."""
    data: dict[str, Any] = {
        "kind": "redis-streams",
        "provenance": {"origin": "default", "sources": []},
    }
    data.update(changes)
    return data


def write_profile(folder: Path, **changes: Any) -> Path:
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(profile_data(**changes)), encoding="utf-8")
    return path


def metrics(scenario: Scenario, seed: int = 1) -> dict[str, Any]:
    result = simulate(scenario, seed)
    span = float(np.nanmax(result.trace.deliveries["t_done"]))
    return analyze(result.trace, scenario, target="sim", seed=seed, duration_s=span).to_metrics()


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_every_kind_ships_a_valid_profile_with_dated_sources(kind: str) -> None:
    """Every broker kind's preset points at a shipped profile that validates, and every number
    says where it comes from and when; a profile with no measured number says it is unverified."""
    assert presets()[kind]["profile"] == f"profiles/{kind}.yaml"
    profile = default_profile(kind)
    assert profile is not None and profile.kind == kind
    provenance = profile.provenance
    assert provenance.origin in ("default", "calibrated")
    if provenance.origin == "default":
        assert provenance.sources, "a shipped default names its sources"
        assert all(s.date and s.source for s in provenance.sources)
        assert provenance.unverified == (not any(s.verified for s in provenance.sources))


def test_managed_services_model_their_published_quotas() -> None:
    """Kinesis: 1,000 records/s or 1 MB/s per shard; Event Hubs: the same per throughput unit."""
    kinesis = default_profile("kinesis")
    hubs = default_profile("event-hubs")
    assert kinesis and kinesis.quota and kinesis.quota.unit == "shard"
    assert (kinesis.quota.messages, kinesis.quota.bytes) == (1000.0, 1_000_000.0)
    assert hubs and hubs.quota and hubs.quota.unit == "throughput-unit"
    assert (hubs.quota.messages, hubs.quota.bytes) == (1000.0, 1_000_000.0)
    kafka = default_profile("kafka")
    assert kafka and kafka.batching.mean == pytest.approx(0.005)  # linger.ms 5 (Kafka 4.0)


def test_a_bad_profile_names_file_field_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "redis-streams",
                "provenance": {"origin": "guessed"},
                "round_trip": "fast",
                "parallelism": 0,
                "colour": "blue",
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    text = str(caught.value)
    for expected in (
        f"{path}: provenance.origin:",
        f"{path}: round_trip:",
        f"{path}: parallelism:",
        f"{path}: colour: unknown field",
    ):
        assert expected in text, text
    with pytest.raises(ProfileError, match="unknown broker kind"):
        parse_profile(profile_data(kind="kafka-ish"), "x.yaml")


def test_a_profile_for_another_kind_is_refused(tmp_path: Path) -> None:
    path = write_profile(tmp_path)
    with pytest.raises(
        ProfileError, match="profile is for redis-streams, the run's broker is nats"
    ):
        resolve_profile(str(path), "nats")


def test_cli_exits_2_on_a_bad_profile_and_writes_nothing(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "producers": {"rate": "100/s", "messages": 10},
                "broker": {"kind": "redis-streams"},
            }
        ),
        encoding="utf-8",
    )
    results_dir = tmp_path / "results"
    missing = str(tmp_path / "missing.yaml")
    command = [sys.executable, "-m", "brokerlab.cli", "run", str(scenario), "-q"]
    done = subprocess.run(
        [*command, "--profile", missing, "--results-dir", str(results_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "missing.yaml: no such profile file" in done.stderr
    assert not results_dir.exists() or not any(results_dir.iterdir())


# --------------------------------------------------------------------------- choosing


def test_auto_prefers_this_machines_calibration_then_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKERLAB_PROFILES", str(tmp_path / "store"))
    shipped = resolve_profile("auto", "redis-streams")
    assert shipped is not None and shipped == default_profile("redis-streams")
    store = tmp_path / "store"
    store.mkdir()
    calibrated = profile_data(
        provenance={"origin": "calibrated", "host": "here", "date": "2026-11-29"}
    )
    (store / "redis-streams.yaml").write_text(yaml.safe_dump(calibrated), encoding="utf-8")
    chosen = resolve_profile("auto", "redis-streams")
    assert chosen is not None and chosen.provenance.origin == "calibrated"
    assert resolve_profile("default", "redis-streams") == shipped
    assert resolve_profile("none", "redis-streams") is None


def test_profile_none_plays_the_scenario_exactly_as_the_bare_engine(tmp_path: Path) -> None:
    """``none`` charges nothing: the trace is the one the engine gives for the scenario as
    written (what the simulator did before profiles), message for message."""
    scenario = make(
        {"profile": "none"},
        producers={"rate": "900/s", "messages": 3000, "arrival": "poisson"},
        consumers={"count": 2, "processing": {"dist": "exponential", "mean": "2ms"}},
        network={"delay": {"dist": "exponential", "mean": "0.3ms"}},
    )
    charged = simulate(scenario, 7).trace
    preset = resolve(scenario.broker)
    model = MODELS[preset.model](scenario, preset, plan_load(scenario, 7), 7)
    model.run()
    bare = model.trace()
    for table in ("sends", "deliveries"):
        left, right = getattr(charged, table), getattr(bare, table)
        assert left.equals(right), table


def test_run_json_names_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKERLAB_PROFILES", str(tmp_path / "empty"))
    options = RunOptions(results_dir=tmp_path / "results")
    record = run_scenario(make(), "sim", options)
    profile = json.loads((record.path / "run.json").read_text())["profile"]
    assert profile["name"] == "default" and profile["requested"] == "auto"
    assert profile["describe"].startswith("redis-streams: shipped default")
    forced = run_scenario(make(), "sim", RunOptions(results_dir=tmp_path / "r2", profile="none"))
    run = json.loads((forced.path / "run.json").read_text())
    assert run["profile"]["name"] == "none"
    assert yaml.safe_load((forced.path / "scenario.yaml").read_text())["broker"]["profile"] == (
        "none"
    )


# --------------------------------------------------------------------------- charging


def test_constant_costs_add_up_exactly(tmp_path: Path) -> None:
    """Round trip 2 ms, publish work 0.5 ms, delivery 0.3 ms, ack 0.2 ms, consumer client 0.1 ms,
    processing 1 ms: publish latency = 2 + 0.5; end to end = 2 + 0.5 + 0.3 + 0.2 (the ack is
    charged with its delivery); completion = end to end + 1 + 0.1 + 2 (the ack's round trip)."""
    path = write_profile(
        tmp_path,
        round_trip="2ms",
        publish={"none": "0.5ms"},
        deliver="0.3ms",
        ack="0.2ms",
        client={"consume": "0.1ms"},
        parallelism=4,
    )
    scenario = make({"profile": str(path)}, consumers={"processing": "1ms"})
    trace = simulate(scenario, 1).trace
    sends, deliveries = trace.sends, trace.deliveries
    publish = (sends["t_acked"] - sends["t_sent"]).to_numpy()
    assert np.allclose(publish, 2.5e-3, atol=US)
    joined = deliveries.merge(sends, on="msg_id")
    e2e = (joined["t_delivered"] - joined["t_intended"]).to_numpy()
    assert np.allclose(e2e, 3.0e-3, atol=US)
    completion = (joined["t_done"] - joined["t_intended"]).to_numpy()
    assert np.allclose(completion, 6.1e-3, atol=US)


def test_persistence_always_costs_an_fsync_per_write(tmp_path: Path) -> None:
    path = write_profile(
        tmp_path, round_trip="1ms", publish={"none": "0.1ms", "always": "2.1ms"}, parallelism=4
    )
    fast = simulate(make({"profile": str(path)}), 1).trace.sends
    slow = simulate(make({"profile": str(path), "persistence": "always"}), 1).trace.sends
    gap = (slow["t_acked"] - slow["t_sent"]) - (fast["t_acked"] - fast["t_sent"])
    assert np.allclose(gap.to_numpy(), 2e-3, atol=US)


def test_broker_work_and_parallelism_set_the_ceiling(tmp_path: Path) -> None:
    """1 ms of work per publish and per delivery on 2 servers: a ceiling of 1,000 messages/s,
    whatever is offered beyond it."""
    path = write_profile(
        tmp_path, publish={"none": "1ms"}, deliver="1ms", parallelism=2, round_trip="0.1ms"
    )
    scenario = make(
        {"profile": str(path)},
        producers={"rate": "1600/s", "messages": 8000},
        consumers={"count": 4, "prefetch": 10},
    )
    delivered = metrics(scenario)["throughput_per_s"]["delivered"]
    assert delivered == pytest.approx(1000, rel=0.03)


def quota_run(
    tmp_path: Path, load: dict[str, Any], quota: str = "100/s", seconds: int = 40, **broker: Any
) -> Any:
    """Kinesis-like, one shard of ``quota``, offered twice that: 2 x quota x seconds."""
    path = write_profile(
        tmp_path,
        kind="kinesis",
        quota={"unit": "shard", "messages": quota},
        round_trip="2ms",
        parallelism=1000,
    )
    rate = 2 * float(quota.removesuffix("/s"))
    scenario = make(
        {"kind": "kinesis", "profile": str(path), **broker},
        producers={"rate": f"{rate:g}/s", "messages": int(rate * seconds), "keys": 64, **load},
        consumers={"prefetch": 10},
    )
    return simulate(scenario, 1)


def test_a_publish_over_the_quota_is_rejected_and_fails_without_retry(tmp_path: Path) -> None:
    """Offered 2 x the quota with retry none: the shard takes its quota (plus the one second
    its bucket holds at the start) and rejects the rest; a rejected publish failed."""
    quota, seconds = 100.0, 40
    result = quota_run(tmp_path, {"retry": "none"}, seconds=seconds)
    sends = result.trace.sends
    offered = 2 * quota * seconds
    assert len(sends) == offered
    failed = (sends["outcome"] == "failed").mean()
    assert failed == pytest.approx(0.5 - 1 / (2 * seconds), abs=0.003)  # 0.4875
    assert (sends["attempts"] == 1).all()
    assert result.info["throttled"] == (sends["outcome"] == "failed").sum()
    delivered = result.trace.deliveries["msg_id"].nunique()
    assert delivered == (sends["outcome"] == "acked").sum()
    assert delivered / seconds == pytest.approx(quota, rel=0.03)
    # the failures are the rejections a client sees: answered, not timed out
    assert result.info["timed_out"] == 0


def test_a_throttled_publish_is_retried_with_the_scenarios_backoff(tmp_path: Path) -> None:
    """Retried after 100 ms: more than half the first attempts are rejected (retries take part
    of the quota too), the shard still takes exactly its quota, and a message published on its
    second attempt took at least the backoff plus two round trips."""
    quota, seconds = 100.0, 40
    retry = {"retry": "same-id", "retry_backoff": "100ms", "max_attempts": 3}
    result = quota_run(tmp_path, {**retry, "arrival": "poisson"}, seconds=seconds)
    sends = result.trace.sends
    first_rejected = ((sends["attempts"] > 1) | (sends["outcome"] == "failed")).mean()
    assert first_rejected > 0.5
    acked = sends["outcome"] == "acked"
    # every attempt but an acked message's last was rejected
    rejected = int(sends["attempts"].sum() - acked.sum())
    assert result.info["throttled"] == rejected
    assert result.info["retried"] == int((sends["attempts"] - 1).sum())
    second = sends[acked & (sends["attempts"] == 2)]
    assert len(second) > 100
    assert ((second["t_acked"] - second["t_sent"]) >= 0.100 + 2 * 0.002 - US).all()
    # the shard took its quota for the whole run, plus the second its bucket held at the start
    assert acked.sum() == pytest.approx(quota * (seconds + 1), rel=0.02)
    assert result.trace.deliveries["msg_id"].nunique() == acked.sum()
    assert set(sends["outcome"]) <= {"acked", "failed"}


def test_a_quota_holds_per_shard_or_pooled_throughput_units(tmp_path: Path) -> None:
    """Two shards of 500/s take 1,000/s of 1,500/s offered (keys spread over them); three
    throughput units pool 1,500/s and take it all."""
    path = write_profile(
        tmp_path, kind="kinesis", quota={"unit": "shard", "messages": "500/s"}, round_trip="1ms"
    )
    scenario = make(
        {"kind": "kinesis", "profile": str(path), "partitions": 2},
        producers={"rate": "1500/s", "messages": 30000, "keys": 64},
        consumers={"count": 2, "prefetch": 10},
    )
    acked = (simulate(scenario, 1).trace.sends["outcome"] == "acked").sum()
    assert acked / 20 == pytest.approx(1000 * 21 / 20, rel=0.03)  # plus one second's burst
    hubs = write_profile(
        tmp_path,
        kind="event-hubs",
        quota={"unit": "throughput-unit", "messages": "500/s"},
        round_trip="1ms",
    )
    pooled = make(
        {"kind": "event-hubs", "profile": str(hubs), "partitions": 2, "throughput_units": 3},
        producers={"rate": "1400/s", "messages": 28000, "keys": 64},
        consumers={"count": 2, "prefetch": 10},
    )
    outcomes = simulate(pooled, 1).trace.sends["outcome"]
    assert (outcomes == "acked").all()


def test_batching_is_latency_not_capacity(tmp_path: Path) -> None:
    """A 5 ms linger adds 5 ms to every publish but leaves the broker's ceiling where it was
    (servers are added in whole numbers: 4 x (2 + 5) / 2 = 14 keeps it exactly)."""
    base = {"publish": {"none": "1ms"}, "deliver": "1ms", "parallelism": 4}
    plain = write_profile(tmp_path, **base)
    lingering = tmp_path / "linger.yaml"
    lingering.write_text(yaml.safe_dump(profile_data(**base, batching="5ms")), encoding="utf-8")
    light = make({"profile": str(lingering)})
    sends = simulate(light, 1).trace.sends
    publish = (sends["t_acked"] - sends["t_sent"]).to_numpy()
    assert np.allclose(publish, 6e-3, atol=US)
    flat_out = {"producers": {"rate": "800/s", "messages": 4000}, "consumers": {"prefetch": 10}}
    ceiling = [
        metrics(make({"profile": str(p)}, **flat_out))["throughput_per_s"]["delivered"]
        for p in (plain, lingering)
    ]
    assert ceiling[1] == pytest.approx(ceiling[0], rel=0.03)


def test_capacity_limits_flat_out_by_size_and_adds_no_light_load_latency(tmp_path: Path) -> None:
    """A capacity of 40,000 messages and 20 MB a second: flat out, 256 B messages pass at
    1 / (25 us + 12.8 us) = 26,455/s and 4 kB ones at 1 / (25 us + 204.8 us) = 4,352/s (a
    message uses 1 / messages + size / bytes of it), while light load's latency is exactly what
    it is without it (the capacity is no service time)."""
    base = {"publish": {"none": "0.01ms"}, "round_trip": "0.2ms"}
    plain = write_profile(tmp_path, **base)
    capped = tmp_path / "capped.yaml"
    capacity = {"messages": "40000/s", "bytes": "20MB/s"}
    capped.write_text(yaml.safe_dump(profile_data(**base, capacity=capacity)), encoding="utf-8")
    for size, expected in ((256, 26_455), (4096, 4_352)):
        flat_out = make(
            {"profile": str(capped)},
            producers={"rate": "60000/s", "messages": 60_000, "size": f"{size}B"},
            consumers={"count": 2, "prefetch": 50},
        )
        delivered = metrics(flat_out)["throughput_per_s"]["delivered"]
        assert delivered == pytest.approx(expected, rel=0.03), size
    light = [
        simulate(make({"profile": str(p)}, producers={"size": "4kB"}), 1).trace.deliveries
        for p in (plain, capped)
    ]
    assert np.array_equal(light[0]["t_delivered"], light[1]["t_delivered"])


def test_more_client_processes_raise_a_client_bound_capacity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capacity of 10,000/s with one client process, all of a message's CPU in the clients,
    two cores: a run offered more than the single-process rate (15,000/s) is played by two
    processes, as the harness would, and gets 10,000 x (1 / 0.5) = 20,000/s; one offered less
    gets 10,000/s; ``BROKERLAB_WORKERS`` changes it as it changes the real run."""
    monkeypatch.delenv("BROKERLAB_WORKERS", raising=False)
    clients = {"share": 1.0, "broker_cores": 1, "cores": 2, "single_process_rate": 15_000}
    path = write_profile(
        tmp_path, round_trip="0.2ms", capacity={"messages": "10000/s", "clients": clients}
    )

    def delivered(rate: str) -> float:
        flat_out = make(
            {"profile": str(path)},
            producers={"rate": rate, "messages": 40_000, "size": "0B"},
            consumers={"count": 2, "prefetch": 50},
        )
        return metrics(flat_out)["throughput_per_s"]["delivered"]

    assert delivered("30000/s") == pytest.approx(20_000, rel=0.03)
    assert delivered("14000/s") == pytest.approx(10_000, rel=0.03)
    monkeypatch.setenv("BROKERLAB_WORKERS", "2")
    assert delivered("14000/s") == pytest.approx(14_000, rel=0.03)  # kept up
    # A broker-bound profile gains nothing from more clients; a machine-bound one stops at its
    # cores: share 0.8 of 2 cores -> one process 1 / 0.8, two 1 / 0.5 (the machine).
    load = Clients(share=0.2, broker_cores=1, cores=2, single_process_rate=1)
    assert load.load(2) == load.load(1) == 0.8
    load = Clients(share=0.8, broker_cores=1, cores=2, single_process_rate=1)
    assert load.load(1) / load.load(2) == pytest.approx(1.6)


def phases(result: Any) -> tuple[float, float]:
    """Distinct messages delivered a second while the producers sent, and after they stopped."""
    stopped = float(np.nanmax(result.trace.sends["t_sent"]))
    start = float(np.nanmin(result.trace.sends["t_sent"]))
    first = result.trace.deliveries.groupby("msg_id")["t_delivered"].min()
    during, after = first[first <= stopped], first[first > stopped]
    return len(during) / (stopped - start), len(after) / (float(after.max()) - stopped)


def test_publishes_share_the_capacity_and_a_backlog_drains_faster_once_they_stop(
    tmp_path: Path,
) -> None:
    """A capacity of 10,000/s (100 us a message), half of it the publish's: offered 15,000/s
    for 3 s, the publishes take 15,000 x 50 us = 75% of it, so deliveries get 25% / 50 us =
    5,000/s while the producer sends, and the 30,000 left drain at 1 / 50 us = 20,000/s after.
    A load below the capacity is kept up with as before (each message still uses 100 us); so is
    an overload's total without the share (10,000/s throughout)."""
    shared = write_profile(
        tmp_path, round_trip="0.1ms", capacity={"messages": "10000/s", "publish_share": 0.5}
    )
    (tmp_path / "plain").mkdir()
    plain = write_profile(tmp_path / "plain", round_trip="0.1ms", capacity={"messages": "10000/s"})

    def played(path: Path, rate: str, messages: int) -> Any:
        return simulate(
            make(
                {"profile": str(path)},
                producers={"rate": rate, "messages": messages, "size": "0B"},
                consumers={"count": 2, "prefetch": 50},
            ),
            1,
        )

    overload = played(shared, "15000/s", 45_000)
    assert "50% of it by a publish (50% in a full call)" in overload.info["profile"]["pace"]
    during, after = phases(overload)
    assert during == pytest.approx(5_000, rel=0.05)
    assert after == pytest.approx(20_000, rel=0.05)
    during, after = phases(played(plain, "15000/s", 45_000))
    assert during == pytest.approx(10_000, rel=0.05)
    assert after == pytest.approx(10_000, rel=0.05)
    # 8,000/s uses 80% of the capacity: kept up with, no backlog.
    kept = played(shared, "8000/s", 8_000)
    first = kept.trace.deliveries.groupby("msg_id")["t_delivered"].min()
    sent = kept.trace.sends.set_index("msg_id")["t_sent"]
    assert len(first) == 8_000
    assert float((first - sent.loc[first.index]).quantile(0.99)) < 0.005


def test_a_load_beyond_the_capacity_holds_its_producers_and_is_not_kept_up_with(
    tmp_path: Path,
) -> None:
    """NATS core pushes every message as it arrives: a capacity of 10,000/s (100 us a
    message), a quarter of it the publish's. Offered 12,000/s, its deliveries alone (75 us
    each, 13,333/s) could take it, so when the publish work the capacity could not queue was
    left undone (before 2026-12-01) the simulator delivered 12,000/s and kept up with a load
    20% beyond its capacity. Now the producer waits for the capacity, as a real one falls
    behind: 10,000/s delivered while it sends, and after 2 s it is a third of a second behind
    (2 s x 2,000/s left over / 12,000/s). Offered 9,000/s: kept up, no publish delay."""
    path = write_profile(
        tmp_path,
        kind="nats",
        round_trip="0.1ms",
        capacity={"messages": "10000/s", "publish_share": 0.25},
    )

    def played(rate: str, messages: int) -> tuple[Any, dict[str, Any]]:
        scenario = make(
            {"kind": "nats", "profile": str(path)},
            producers={"rate": rate, "messages": messages, "size": "0B"},
            consumers={"count": 2, "prefetch": 50},
        )
        return simulate(scenario, 1), metrics(scenario)

    beyond, measured = played("12000/s", 24_000)
    assert "25% of it by a publish" in beyond.info["profile"]["pace"]
    assert phases(beyond)[0] == pytest.approx(10_000, rel=0.05)
    delay = measured["latency_ms"]["publish_delay"]
    assert 250 <= delay["max"] <= 400 and delay["p99"] > 100
    _, kept = played("9000/s", 18_000)
    assert kept["latency_ms"]["publish_delay"]["max"] == 0
    assert kept["throughput_per_s"]["delivered"] == pytest.approx(9_000, rel=0.02)


def test_a_producer_behind_schedule_publishes_in_full_calls_at_their_cost(tmp_path: Path) -> None:
    """A capacity of 10,000/s, a publish 50% of it alone and 10% in a full call. Offered
    30,000/s, calls of one would need 30,000 x 50 us = 150% of it: the producer falls behind and
    sends full calls, whose publishes take 30,000 x 10 us = 30%, so deliveries get 70% / 50 us =
    14,000/s while it sends. Offered 15,000/s (75%) it keeps up with calls of one: 5,000/s."""
    path = write_profile(
        tmp_path,
        round_trip="0.1ms",
        capacity={"messages": "10000/s", "publish_share": 0.5, "publish_batched": 0.1},
    )

    def during(rate: str, messages: int) -> float:
        scenario = make(
            {"profile": str(path)},
            producers={"rate": rate, "messages": messages, "size": "0B"},
            consumers={"count": 2, "prefetch": 50},
        )
        return phases(simulate(scenario, 1))[0]

    assert during("30000/s", 60_000) == pytest.approx(14_000, rel=0.05)
    assert during("15000/s", 30_000) == pytest.approx(5_000, rel=0.05)


def test_a_shared_capacity_adds_no_latency_at_light_load(tmp_path: Path) -> None:
    """A publish's work is done while it is sent: at 100/s a capacity of 5,000/s, 90% of it
    the publish's (180 us each, more than the 100 us hop to the consumer), delays no delivery,
    exactly as the same capacity without the share."""
    (tmp_path / "plain").mkdir()
    times = []
    for folder, share in ((tmp_path, 0.9), (tmp_path / "plain", 0.0)):
        path = write_profile(
            folder, round_trip="0.2ms", capacity={"messages": "5000/s", "publish_share": share}
        )
        result = simulate(make({"profile": str(path)}), 1)
        times.append(result.trace.deliveries.sort_values("msg_id")["t_delivered"].to_numpy())
    assert np.array_equal(times[0], times[1])


def test_a_faulted_run_charges_its_publishes_to_a_shared_capacity(tmp_path: Path) -> None:
    """The fault layer's publisher stores through its own hook: with a publish share, a faulted
    run's publishes use the capacity too (its deliveries drain faster once they stop)."""
    shared = write_profile(
        tmp_path, round_trip="0.1ms", capacity={"messages": "10000/s", "publish_share": 0.5}
    )
    scenario = make(
        {"profile": str(shared)},
        producers={"rate": "15000/s", "messages": 15_000, "size": "0B"},
        consumers={"count": 2, "prefetch": 50},
    ).model_dump(mode="json")
    # A fault that changes nothing here (no processing to slow), so the fault layer plays it.
    scenario["faults"] = [
        {"at": "0.5s", "duration": "0.1s", "action": "slow-consumer", "target": "consumers"}
    ]
    result = simulate(parse_scenario(scenario), 1)
    assert "50% of it by a publish" in result.info["profile"]["pace"]
    during, after = phases(result)
    assert during == pytest.approx(5_000, rel=0.08)
    assert after == pytest.approx(20_000, rel=0.08)


def test_capacity_paces_the_copies_a_faulted_run_stores_twice(tmp_path: Path) -> None:
    """A broker pause makes producers retry, and a retried publish without dedup is stored twice:
    those second copies are deliveries too, and pay the capacity of the message they copy."""
    capped = write_profile(
        tmp_path, round_trip="0.2ms", capacity={"messages": "40000/s", "bytes": "20MB/s"}
    )
    scenario = load_scenario(Path("scenarios/faults/redis-none--broker-pause.yaml"))
    result = simulate(scenario, 1, profile=str(capped))
    assert result.info["profile"]["pace"] != "none"
    deliveries = result.trace.deliveries
    first = deliveries[deliveries["delivery_no"] == 1]
    assert len(first) > first["msg_id"].nunique()  # second copies were delivered (and paced)


def test_batching_keeps_one_producers_order_within_a_partition(tmp_path: Path) -> None:
    """Kafka: a 5 ms linger and random broker work on parallel servers must not reorder one
    producer's messages within a partition (Kafka appends them in send order). Charged at the
    means, the publish latency of a lone message is exactly rtt + work + linger."""
    path = write_profile(
        tmp_path,
        kind="kafka",
        round_trip="1ms",
        publish={"none": {"dist": "lognormal", "median": "1ms", "p99": "10ms"}},
        deliver={"dist": "lognormal", "median": "0.2ms", "p99": "2ms"},
        parallelism=4,
        batching="5ms",
    )
    light = make({"kind": "kafka", "profile": str(path)})
    work = load_profile(path).publish.none.mean
    sends = simulate(light, 1).trace.sends
    publish = (sends["t_acked"] - sends["t_sent"]).to_numpy()
    assert np.allclose(publish, 1e-3 + work + 5e-3, atol=US)
    busy = make(
        {"kind": "kafka", "profile": str(path), "partitions": 3},
        producers={"rate": "2000/s", "messages": 6000, "arrival": "poisson", "keys": 16},
        consumers={"count": 3, "prefetch": 10},
    )
    trace = simulate(busy, 1).trace
    rows = trace.deliveries.merge(trace.sends[["msg_id", "key", "seq"]], on="msg_id")
    assert len(rows) == 6000
    for column in ("t_delivered", "t_done"):
        ordered = rows.sort_values([column, "seq"], kind="stable")
        assert (ordered.groupby("key")["seq"].diff().dropna() > 0).all(), column


def test_the_shipped_kafka_profile_keeps_per_key_order() -> None:
    """The shipped kafka profile (linger, lognormal work, 8 request threads): no reordering."""
    scenario = make(
        {"kind": "kafka", "profile": "default", "partitions": 4},
        producers={"rate": "3000/s", "messages": 9000, "arrival": "poisson", "keys": 32},
        consumers={"count": 4, "prefetch": 20},
    )
    trace = simulate(scenario, 2).trace
    rows = trace.deliveries.merge(trace.sends[["msg_id", "key", "seq"]], on="msg_id")
    assert len(rows) == 9000
    ordered = rows.sort_values(["t_delivered", "seq"], kind="stable")
    assert (ordered.groupby("key")["seq"].diff().dropna() > 0).all()


def test_a_scenarios_own_service_time_and_network_win(tmp_path: Path) -> None:
    """Explicit scenario service times are kept; a scenario's network delay adds to the
    profile's round trip (it is the network between client and broker)."""
    path = write_profile(tmp_path, round_trip="2ms", publish={"none": "1ms"})
    scenario = make(
        {"profile": str(path), "service_time": {"publish": "3ms"}},
        network={"delay": "1ms"},
    )
    charged = apply_profile(scenario, load_profile(path)).scenario
    assert charged.broker.service_time.publish.mean == pytest.approx(3e-3)
    assert charged.network.delay.mean == pytest.approx(2e-3)  # 1 ms + half the round trip


def test_tails_come_from_the_distributions(tmp_path: Path) -> None:
    """A lognormal round trip (median 1 ms, p99 10 ms) gives publish latencies with that shape."""
    path = write_profile(tmp_path, round_trip={"dist": "lognormal", "median": "1ms", "p99": "10ms"})
    scenario = make({"profile": str(path)}, producers={"rate": "50/s", "messages": 4000})
    publish = metrics(scenario)["latency_ms"]["publish"]
    # Two hops of half the round trip each: the sum's median is above 1 ms, its p99 well above.
    assert 0.8 < publish["p50"] < 2.5
    assert publish["p99"] > 4 * publish["p50"]
    assert math.isfinite(publish["max"])


def test_reference_scenarios_use_the_ideal_broker() -> None:
    root = Path(__file__).resolve().parents[1] / "scenarios"
    for name in ("mm1", "mmc", "md1"):
        data = yaml.safe_load((root / f"{name}.yaml").read_text())
        assert data["broker"]["profile"] == "none", name


def test_shipped_profiles_are_package_data() -> None:
    assert sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")) == sorted(BROKER_KINDS)


def test_the_suite_never_plays_a_profile_calibrated_on_this_machine() -> None:
    """The session's profile store is its own empty folder (tests/conftest.py), so ``auto``
    means the shipped default in every test, whatever was calibrated here before."""
    from brokerlab.sim.profile import calibrated_dir

    store = calibrated_dir()
    assert "brokerlab-test-profiles-" in str(store)
    assert not store.exists() or not any(store.iterdir())


# --------------------------------------------------------------------------- consume modes


def _done_gaps(scenario: Scenario) -> np.ndarray:
    """Time between consecutive completions of a backlogged consumer (first batches dropped)."""
    done = np.sort(simulate(scenario, 1).trace.deliveries["t_done"].to_numpy())
    return np.diff(done[20:])


def test_a_pull_consumer_pays_a_fetch_round_trip_per_batch(tmp_path: Path) -> None:
    """Pull, prefetch 1, 3 ms processing, a 1 ms round trip, a backlog: each message costs its
    processing, the ack's round trip and the next fetch's round trip, 5 ms (200/s). The engine's
    credit (a push window of prefetch) gives the next message as the ack arrives: 4 ms."""
    pull = write_profile(tmp_path, round_trip="1ms", consume={"mode": "pull"})
    scenario = make(
        {"profile": str(pull)},
        producers={"rate": "1000/s", "messages": 200},
        consumers={"processing": "3ms"},
    )
    assert np.allclose(_done_gaps(scenario), 5e-3, atol=3 * US)
    push = tmp_path / "push.yaml"
    push.write_text(yaml.safe_dump(profile_data(round_trip="1ms", consume={"mode": "push"})))
    credit = scenario.with_(**{"broker.profile": str(push)})
    assert np.allclose(_done_gaps(credit), 4e-3, atol=3 * US)


def test_an_unanswered_ack_costs_no_round_trip_of_its_own(tmp_path: Path) -> None:
    """Pull, prefetch 1, 3 ms processing, a 1 ms round trip, a backlog. Redis awaits the reply to
    its XACK before it fetches again: 3 + 1 + 1 = 5 ms per message. A JetStream ack is a publish
    nothing answers, so the fetch follows it at once: 3 + 1 = 4 ms. With ``ack: before`` the
    JetStream consumer starts processing at once (4 ms); Redis waits for the reply first (5 ms).
    And with no processing and prefetch 4, a JetStream batch costs its fetch only (1 ms per 4)."""
    gaps = {}
    for kind in ("redis-streams", "nats-jetstream"):
        path = tmp_path / f"{kind}.yaml"
        data = profile_data(kind=kind, round_trip="1ms", consume={"mode": "pull"})
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        for ack in ("after", "before"):
            scenario = make(
                {"kind": kind, "profile": str(path)},
                producers={"rate": "1000/s", "messages": 200},
                consumers={"processing": "3ms", "ack": ack},
            )
            gaps[kind, ack] = _done_gaps(scenario)
    assert np.allclose(gaps["redis-streams", "after"], 5e-3, atol=3 * US)
    assert np.allclose(gaps["nats-jetstream", "after"], 4e-3, atol=3 * US)
    assert np.allclose(gaps["redis-streams", "before"], 5e-3, atol=3 * US)
    assert np.allclose(gaps["nats-jetstream", "before"], 4e-3, atol=3 * US)
    batch = make(
        {"kind": "nats-jetstream", "profile": str(tmp_path / "nats-jetstream.yaml")},
        producers={"rate": "8000/s", "messages": 1000},
        consumers={"prefetch": 4},
    )
    done = np.unique(np.round(simulate(batch, 1).trace.deliveries["t_done"].to_numpy(), 6))
    assert np.allclose(np.diff(done[10:-10]), 1e-3, atol=3 * US)


def test_a_pull_batch_of_prefetch_pays_one_fetch(tmp_path: Path) -> None:
    """Pull, prefetch 4, 2 ms processing, 1 ms round trip: a batch of 4 takes 4 x (2 + 1) ms of
    processing and acks, then one fetch round trip: 13 ms per 4 messages."""
    pull = write_profile(tmp_path, round_trip="1ms", consume={"mode": "pull"})
    scenario = make(
        {"profile": str(pull)},
        producers={"rate": "1000/s", "messages": 400},
        consumers={"processing": "2ms", "prefetch": 4},
    )
    result = simulate(scenario, 1)
    assert result.info["profile"]["consume"] == "pull"
    done = np.sort(result.trace.deliveries["t_done"].to_numpy())
    batches = done[40:360:4]  # the first message of each batch, from the 11th batch on
    assert np.allclose(np.diff(batches), 13e-3, atol=3 * US)


def test_a_push_window_caps_unacked_messages_per_consumer(tmp_path: Path) -> None:
    """Push with window W, no acks to wait for (ack none), 1 ms processing, a 4 ms round trip:
    a message holds a slot for half a round trip down, its processing and half a round trip back
    (5 ms), so one consumer takes W / 5 ms: 200/s with a window of 1, 400/s with 2, and its
    processing's 1,000/s once the window is wide enough (10)."""
    rates = {}
    for window in (1, 2, 10):
        path = tmp_path / f"w{window}.yaml"
        data = profile_data(round_trip="4ms", consume={"mode": "push", "window": window})
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        scenario = make(
            {"profile": str(path)},
            producers={"rate": "2000/s", "messages": 600},
            consumers={"processing": "1ms", "ack": "none"},
        )
        rates[window] = 1 / float(np.mean(_done_gaps(scenario)))
    assert rates[1] == pytest.approx(200, rel=5e-3)
    assert rates[2] == pytest.approx(400, rel=5e-3)
    assert rates[10] == pytest.approx(1000, rel=5e-3)


def test_a_pull_batch_without_processing_is_acked_in_one_call(tmp_path: Path) -> None:
    """Pull, prefetch 4, no processing, 1 ms round trip, a backlog: the harness acks a batch that
    finished together in one call, so a batch costs one ack and one fetch round trip (2 ms per 4
    messages, all 4 done at once), not an ack round trip per message."""
    pull = write_profile(tmp_path, round_trip="1ms", consume={"mode": "pull"})
    scenario = make(
        {"profile": str(pull)},
        producers={"rate": "5000/s", "messages": 1000},
        consumers={"prefetch": 4},
    )
    deliveries = simulate(scenario, 1).trace.deliveries
    done = np.unique(np.round(deliveries["t_done"].to_numpy(), 6))
    assert len(done) == pytest.approx(len(deliveries) / 4, abs=3)
    assert np.allclose(np.diff(done[10:-10]), 2e-3, atol=3 * US)
    # The batch is delivered as one reply: its rows share t_delivered.
    assert deliveries.groupby("t_done")["t_delivered"].nunique().max() == 1


def test_a_blocked_fetch_pays_the_wake_up_and_a_backlog_does_not(tmp_path: Path) -> None:
    """Pull with a 2 ms wake-up, 1 ms round trip: at light load each message finds its consumer
    blocked in a fetch, so end to end is half a round trip + the wake-up + half a round trip
    (3 ms); a backlogged consumer with 3 ms processing finds messages waiting at every fetch and
    keeps its 5 ms cycle (processing, ack and fetch round trips), with no wake-up in it."""
    path = write_profile(tmp_path, round_trip="1ms", consume={"mode": "pull", "wake": "2ms"})
    light = simulate(make({"profile": str(path)}), 1).trace
    joined = light.deliveries.merge(light.sends, on="msg_id")
    e2e = (joined["t_delivered"] - joined["t_intended"]).to_numpy()
    assert np.allclose(e2e, 3e-3, atol=US)
    backlog = make(
        {"profile": str(path)},
        producers={"rate": "1000/s", "messages": 200},
        consumers={"processing": "3ms"},
    )
    assert np.allclose(_done_gaps(backlog), 5e-3, atol=3 * US)


def test_fetch_requests_are_broker_work_the_consumers_share(tmp_path: Path) -> None:
    """Pull, prefetch 1, 2 ms processing, 1 ms round trip, 2 ms of broker work per fetch: one
    consumer's cycle is 2 + 1 + 1 + 2 = 6 ms. Four consumers would take 4 / 6 ms = 667/s, but
    one broker server does 2 ms per fetch, so they get 500/s; four servers let them have 667/s."""
    rates = {}
    for servers in (1, 4):
        path = tmp_path / f"s{servers}.yaml"
        data = profile_data(
            round_trip="1ms", consume={"mode": "pull", "fetch": "2ms"}, parallelism=servers
        )
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        scenario = make(
            {"profile": str(path)},
            producers={"rate": "1000/s", "messages": 1500},
            consumers={"count": 4, "processing": "2ms"},
        )
        rates[servers] = 1 / float(np.mean(_done_gaps(scenario)[:-40]))
    assert rates[1] == pytest.approx(500, rel=0.01)
    assert rates[4] == pytest.approx(4 / 6e-3, rel=0.01)


def _e2e(scenario: Scenario) -> np.ndarray:
    """Each message's end to end (first delivery less intended send), in send order."""
    trace = simulate(scenario, 1).trace
    first = trace.deliveries.groupby("msg_id")["t_delivered"].min()
    sends = trace.sends.set_index("msg_id")
    return (first - sends["t_intended"].reindex(first.index)).to_numpy()


def test_a_short_answer_to_a_jetstream_fetch_waits_for_its_closing_status(
    tmp_path: Path,
) -> None:
    """JetStream with nats-py: a fetch of more than one message answered with fewer ends when
    the status after them arrives (consume.status, 0.4 ms here). At 100/s every answer holds one
    message: with prefetch 10 each arrives exactly 0.4 ms later than with prefetch 1, which asks
    for one and needs no status; Redis (no such status) is the same with either."""
    profile = tmp_path / "status.yaml"
    data = profile_data(round_trip="1ms", consume={"mode": "pull", "status": "0.4ms"})
    for kind in ("nats-jetstream", "redis-streams"):
        profile.write_text(yaml.safe_dump({**data, "kind": kind}), encoding="utf-8")
        one, ten = (
            _e2e(make({"kind": kind, "profile": str(profile)}, consumers={"prefetch": prefetch}))
            for prefetch in (1, 10)
        )
        expected = 0.4e-3 if kind == "nats-jetstream" else 0.0
        assert np.allclose(ten - one, expected, atol=3 * US), kind


def test_a_full_answer_to_a_jetstream_fetch_needs_no_status(tmp_path: Path) -> None:
    """20 messages published at once, prefetch 10, 10 ms processing: the first answer holds the
    one message there when the consumer's fetch was waiting (short: it pays the 0.4 ms status),
    the second the ten that waited meanwhile (full: no status), so it arrives one round trip
    (1 ms, the fetch that travels with the unanswered ack) after the first batch is done."""
    profile = tmp_path / "status.yaml"
    data = profile_data(
        kind="nats-jetstream", round_trip="1ms", consume={"mode": "pull", "status": "0.4ms"}
    )
    profile.write_text(yaml.safe_dump(data), encoding="utf-8")
    scenario = make(
        {"kind": "nats-jetstream", "profile": str(profile)},
        producers={"rate": "100000/s", "messages": 20},
        consumers={"prefetch": 10, "processing": "10ms"},
    )
    trace = simulate(scenario, 1).trace
    deliveries = trace.deliveries.sort_values("t_delivered")
    delivered = deliveries["t_delivered"].to_numpy()
    done = deliveries["t_done"].to_numpy()
    sent = trace.sends.set_index("msg_id")["t_intended"]
    first = delivered[0] - sent[deliveries["msg_id"].iloc[0]]
    assert first == pytest.approx(1e-3 + 0.4e-3, abs=3 * US)  # publish and delivery hops + status
    assert np.allclose(delivered[1:11], delivered[1])  # one answer of ten
    assert delivered[1] - done[0] == pytest.approx(1e-3, abs=3 * US)
