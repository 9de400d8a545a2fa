"""A broker in one file: a real target is one record, and the runner, the CLI, workers, embedded
brokers and fault checks all read it.

The test adapter (tests/redis_plain.py: Redis Streams through plain redis-py) takes that one
module and the one ``register(...)`` line in the ``plain`` fixture; it then runs end to end
through the normal runner against a real redis-server the lab starts itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from redis_plain import TARGET, PlainRedisAdapter

from brokerlab.adapters.harness import BrokerAdapter
from brokerlab.adapters.targets import (
    REDIS_URL,
    Target,
    TargetError,
    get_target,
    register,
    target_names,
    targets,
    unregister,
)
from brokerlab.app.runner import TARGETS, RunOptions, run_scenario
from brokerlab.app.runner import TargetError as RunTargetError
from brokerlab.cli import main
from brokerlab.core import results
from brokerlab.core.checks import check_delivery
from brokerlab.core.scenario import Scenario, parse_scenario
from brokerlab.core.vocabulary import BROKER_FAULTS, CLIENT_FAULTS

NAME = "redis-plain"


@pytest.fixture
def plain() -> Iterator[Target]:
    """The test adapter, registered for one test (and removed again)."""
    record = register(TARGET)  # the one registry line
    yield record
    unregister(NAME)


def _scenario(faults: list[dict[str, object]] | None = None) -> Scenario:
    return parse_scenario(
        {
            "name": "plain-test",
            "producers": {"count": 2, "rate": "300/s", "duration": "2s", "arrival": "constant"},
            "broker": {"kind": "kafka"},  # the record's kind replaces it on a real target
            "consumers": {"count": 2, "processing": "1ms", "prefetch": 10},
            "faults": faults or [],
            "drain_timeout": "10s",
        }
    )


def test_a_registered_test_adapter_runs_end_to_end_through_the_runner(
    plain: Target, tmp_path: Path
) -> None:
    """`run_scenario(..., target="redis-plain")`: a lab-started Redis, a valid trace and metrics,
    a network fault played through the proxies, the record's kind in the stored scenario."""
    faults = [{"at": "0.5s", "action": "latency", "duration": "0.5s", "delay": "5ms"}]
    record = run_scenario(_scenario(faults), NAME, RunOptions(results_dir=tmp_path))

    sends, deliveries = record.result.trace.sends, record.result.trace.deliveries
    checks = check_delivery(sends, deliveries)
    assert checks.sent == 600 and checks.acked == 600
    assert checks.lost == 0 and checks.duplicates == 0
    assert record.result.info["target"] == NAME
    assert record.result.info["broker"] == "embedded"
    assert [w.action for w in record.result.faults] == ["latency"]
    assert record.metrics["target"] == NAME
    run = json.loads((record.path / results.RUN_FILE).read_text())
    assert run["target"] == NAME
    assert "kind: redis-streams" in (record.path / results.SCENARIO_FILE).read_text()
    stored = pd.read_parquet(record.path / "sends.parquet")
    assert len(stored) == 600


def test_an_unsupported_fault_is_refused_before_anything_starts(
    plain: Target, tmp_path: Path
) -> None:
    """The CLI exits 2 naming the fault and the target, and writes nothing to results."""
    scenario = tmp_path / "crash.yaml"
    scenario.write_text(
        "name: crash\nproducers: {rate: 10/s, duration: 1s}\nbroker: {kind: redis-streams}\n"
        "faults: [{at: 0.5s, action: consumer-crash, duration: 0.2s}]\n"
    )
    out = tmp_path / "results"
    done = CliRunner().invoke(
        main, ["run", str(scenario), "-t", NAME, "--results-dir", str(out), "-q"]
    )
    assert done.exit_code == 2, done.output
    assert f"consumer-crash is not supported on {NAME}" in done.output
    assert not out.exists() or not any(out.iterdir())


def test_the_runner_refuses_before_creating_a_run_folder(plain: Target, tmp_path: Path) -> None:
    """The same refusal from code: a TargetError, and no folder, broker or client."""
    faults = [{"at": "0.5s", "action": "producer-crash", "duration": "0.2s"}]
    with pytest.raises(RunTargetError, match="producer-crash is not supported on redis-plain"):
        run_scenario(_scenario(faults), NAME, RunOptions(results_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_the_url_option_and_its_environment_variable_come_from_the_record(tmp_path: Path) -> None:
    """$BROKERLAB_REDIS_URL still names an existing Redis: a broker-kill on it is refused (2)."""
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(
        "name: kill\nproducers: {rate: 10/s, duration: 1s}\nbroker: {kind: redis-streams}\n"
        "faults: [{at: 0.5s, action: broker-kill, duration: 0.2s}]\n"
    )
    done = CliRunner().invoke(
        main,
        ["run", str(scenario), "-t", "redis-streams", "--results-dir", str(tmp_path / "r"), "-q"],
        env={"BROKERLAB_REDIS_URL": "redis://127.0.0.1:1"},
    )
    assert done.exit_code == 2, done.output
    assert "given with --redis-url" in done.output


def test_the_registry_knows_the_lab_targets_and_their_faults_have_adapter_hooks() -> None:
    """Each built-in record names importable adapters whose hooks cover the faults it lists."""
    assert target_names()[:3] == ["redis-streams", "nats", "nats-jetstream"]
    for record in targets():
        assert issubclass(record.adapter_class(), BrokerAdapter)
        worker = record.worker_adapter_class()
        assert worker is None or issubclass(worker, BrokerAdapter)
        assert record.missing_hooks() == [], record.name
    assert get_target("nats").url == get_target("nats-jetstream").url  # one --nats-url


def test_a_record_that_lists_faults_its_adapter_cannot_play_is_refused() -> None:
    """Registering consumer crashes for an adapter without crash hooks fails at once, and so does
    a record with broker faults but no server the lab could kill."""
    with pytest.raises(
        TargetError, match=r"consumer-crash needs PlainRedisAdapter\.close_consumer"
    ):
        register(
            Target(NAME, "redis-streams", PlainRedisAdapter, REDIS_URL, 2_000.0, server="redis",
                   faults=CLIENT_FAULTS)
        )  # fmt: skip
    with pytest.raises(TargetError, match="broker faults need a server the lab starts"):
        Target(NAME, "redis-streams", PlainRedisAdapter, REDIS_URL, 2_000.0, faults=BROKER_FAULTS)
    assert NAME not in target_names()


def test_names_are_unique_and_unknown_names_are_clear(plain: Target) -> None:
    """A second record with a taken name is refused; an unknown name lists the known ones."""
    with pytest.raises(TargetError, match="already registered"):
        register(plain)
    with pytest.raises(
        TargetError, match="redis-streams, nats, nats-jetstream, rabbitmq, kafka, redis-plain"
    ):
        get_target("kafkaesque")
    assert NAME in TARGETS and "sim" in TARGETS


def test_an_installed_package_registers_a_target_with_one_entry_point(tmp_path: Path) -> None:
    """An entry point in the ``brokerlab.targets`` group naming the record is enough: the CLI
    lists the target (in a fresh process, as a user would run it)."""
    import subprocess
    import sys

    dist = tmp_path / "redis_plain_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: redis-plain-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[brokerlab.targets]\nredis-plain = redis_plain:TARGET\n"
    )
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "brokerlab.cli", "run", "--help"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tests)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "redis-plain" in done.stdout
    assert "not loaded" not in done.stderr
