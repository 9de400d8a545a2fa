"""``brokerlab calibrate``: the fit recovers known costs, and a real calibration is usable at once.

The known-answer test plays the calibration ladder in the simulator with a profile whose costs
are known, and checks that the fit finds them again (the fit solves the simulator's own cost
equations, so a world that follows them must be recovered). The real-broker tests run the ladder
on brokers the lab starts itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brokerlab.app.calibrate import (
    Measured,
    base_scenario,
    busy_warnings,
    calibrate,
    fit,
    ladder,
    refine,
)
from brokerlab.app.runner import RunOptions, run_scenario
from brokerlab.sim.profile import load_profile, resolve_profile

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


def test_fit_recovers_the_costs_of_a_simulated_broker(tmp_path: Path) -> None:
    """Ladder runs in the simulator with known costs: the fitted profile predicts them again
    (ceiling, light-load latency, the one-consumer rung) within a few percent, and finds the
    round trip and the fsync cost it was given."""
    known = tmp_path / "known.yaml"
    known.write_text(yaml.safe_dump(KNOWN), encoding="utf-8")
    options = RunOptions(results_dir=tmp_path / "runs", profile=str(known))
    base = base_scenario("redis-streams")
    measured = {}
    for step in ladder("redis-streams", quick=True):
        scenario = base.with_(paths=dict(step.changes), name=f"known-{step.name}")
        measured[step.name] = Measured.of(step, run_scenario(scenario, "sim", options))
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
        scenario = base.with_(paths=dict(step.changes), name=f"replay-{name}")
        again = run_scenario(scenario, "sim", replay).metrics["throughput_per_s"]["delivered"]
        assert again == pytest.approx(measured[name].delivered, rel=0.05), name


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
    assert len(stored.provenance.runs) == len(ladder("redis-streams", quick=True))
    assert stored.round_trip.median > 0 and stored.parallelism >= 1
    assert [row["run"] for row in done.errors] == [s.name for s in ladder("redis-streams")]
    assert any("fsync" in line for line in said)  # progress names each rung
    assert resolve_profile("auto", "redis-streams") == stored


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_full_calibration_of_every_local_broker(tmp_path: Path) -> None:
    """The whole ladder on the three local targets through the CLI, with --out (each rung once:
    the fit's medians over repeats are tested on their own; this is the command end to end)."""
    out = tmp_path / "mine.yaml"
    command = [sys.executable, "-m", "brokerlab.cli", "calibrate", "--out", str(out)]
    command += ["--repeats", "1"]
    done = subprocess.run(
        [*command, "--results-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    for target in ("redis-streams", "nats", "nats-jetstream"):
        path = tmp_path / f"mine-{target}.yaml"
        assert load_profile(path).kind == target
        assert f"{target}: replay of each run" in done.stdout


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
    kept_up = Measured(ceiling, None, 1e-3, 2e-3, 1e-3, 5e-3, 1e-3, 29_900.0)  # type: ignore[arg-type]
    (warning,) = busy_warnings("redis-streams", {"ceiling": kept_up})
    assert "29900/s of 30000/s" in warning and "lower bound" in warning
    saturated = Measured(ceiling, None, 1e-3, 2e-3, 1e-3, 5e-3, 1e-3, 15_000.0)  # type: ignore[arg-type]
    assert busy_warnings("redis-streams", {"ceiling": saturated}) == []
