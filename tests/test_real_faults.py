"""Fault injection on real brokers the lab starts itself: what breaks, and what the trace says.

Each scenario is small (250-300 msg/s for about 4 s) with consumers slower than producers, so a
backlog exists when the fault hits at 2 s and loss, if the broker allows it, shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from brokerlab.adapters import run_real
from brokerlab.adapters.faults import FaultRefused, delay_as_latency
from brokerlab.app.runner import analyze_result
from brokerlab.core.checks import DeliveryCheck, check_delivery
from brokerlab.core.scenario import Scenario, parse_scenario
from brokerlab.core.trace import TargetResult


def _scenario(target: str, faults: list[dict[str, Any]], **overrides: Any) -> Scenario:
    producers = {"count": 1, "rate": "250/s", "duration": "4s", "arrival": "constant"}
    producers.update(overrides.pop("producers", {}))
    consumers = {"count": 1, "processing": "5ms", "prefetch": 1}
    consumers.update(overrides.pop("consumers", {}))
    return parse_scenario(
        {
            "name": "fault-test",
            "producers": producers,
            "broker": {"kind": target, **overrides.pop("broker", {})},
            "consumers": consumers,
            "faults": faults,
            # Loss shows as a drain that never completes: short where loss is expected.
            "drain_timeout": "4s",
            **overrides,
        }
    )


def _run(target: str, scenario: Scenario, tmp_path: Path) -> tuple[TargetResult, DeliveryCheck]:
    result = run_real(scenario, target, 7, workdir=tmp_path)
    return result, check_delivery(result.trace.sends, result.trace.deliveries)


KILL = [{"at": "2s", "action": "broker-kill", "duration": "1s"}]
#: Where nothing may be lost, the backlog left by the fault must have time to drain (the run
#: ends as soon as it has, so a long drain costs time only when messages really are lost). With
#: AOF always, Redis fsyncs before answering each XREADGROUP and XACK: on a busy disk that is
#: 3-6 ms per round trip, so the 5 ms consumer manages 55-85 msg/s, not 200, and a 1000-message
#: backlog needs 12-18 s (a 12 s drain called the tail of it "lost" in 1 run of 4).
LONG_DRAIN = "40s"


def test_redis_without_persistence_loses_acknowledged_messages_on_a_kill(tmp_path: Path) -> None:
    """Redis without AOF: a kill -9 takes the undelivered backlog (and the group) with it."""
    result, checks = _run("redis-streams", _scenario("redis-streams", KILL), tmp_path)
    assert checks.lost > 0
    assert checks.unique > 0  # the run went on after the restart: the group was recreated
    assert result.trace.sends["t_intended"].max() > 3.5


def test_redis_with_aof_always_loses_nothing_acknowledged_on_a_kill(tmp_path: Path) -> None:
    """Redis with appendfsync always: every acknowledged message is delivered after a kill."""
    scenario = _scenario(
        "redis-streams", KILL, broker={"persistence": "always"}, drain_timeout=LONG_DRAIN
    )
    result, checks = _run("redis-streams", scenario, tmp_path)
    assert checks.lost == 0, result.info.get("drain")
    assert result.info["drain"]["reason"] == "complete"
    assert checks.acked > 0 and checks.unique >= checks.acked


def test_a_drain_that_times_out_says_what_is_pending_and_that_the_broker_still_has_it(
    tmp_path: Path,
) -> None:
    """A consumer far slower than the load and a short drain: run.json's ``drain`` says it timed
    out, how many acknowledged messages were not completed, and (Redis) that the broker still
    holds them, so "lost" is not mistaken for loss."""
    scenario = _scenario(
        "redis-streams",
        [],
        producers={"rate": "200/s", "duration": "1s"},
        consumers={"processing": "50ms"},
        drain_timeout="0.5s",
        requirements={"max_lost": 0},
    )
    result, checks = _run("redis-streams", scenario, tmp_path)
    drain = result.info["drain"]
    completed = result.trace.deliveries.dropna(subset=["t_done"])["msg_id"]
    acked = result.trace.sends[result.trace.sends["outcome"] == "acked"]["msg_id"]
    assert drain["reason"] == "timeout"
    # Consumers finish the one message in hand (prefetch 1) after the drain has ended.
    assert drain["pending"] - 1 <= len(set(acked) - set(completed)) <= drain["pending"]
    assert drain["pending"] > 100
    assert checks.lost > 0  # the checks still count them; the drain record qualifies that
    at_broker = drain["at_broker"]
    # Consumers stop fetching after the drain, so all but the batch in hand are still there.
    assert at_broker["undelivered"] + at_broker["unacked"] >= drain["pending"] - 1
    assert any("drain timed out" in w and "may only be late" in w for w in result.warnings)
    # Nothing was lost, so max_lost cannot fail on this backlog: it cannot tell, and says why.
    (lost,) = analyze_result(result, scenario, "redis-streams", 7).requirements
    assert lost.name == "max_lost" and lost.measured == checks.lost + checks.unprocessed
    assert lost.ok is None and "still at the broker" in lost.note, lost


def test_a_drain_that_completes_says_so(tmp_path: Path) -> None:
    """The usual case: every acknowledged message completed, nothing pending, no warning."""
    scenario = _scenario("redis-streams", [], producers={"rate": "100/s", "duration": "1s"})
    result, checks = _run("redis-streams", scenario, tmp_path)
    assert result.info["drain"]["reason"] == "complete"
    assert result.info["drain"]["pending"] == 0 and checks.lost == 0
    assert not any("drain timed out" in w for w in result.warnings)


def test_nats_core_consumer_crash_loses_what_it_held_without_duplicates(tmp_path: Path) -> None:
    """NATS core: messages buffered at a crashed consumer are lost, never redelivered."""
    scenario = _scenario(
        "nats",
        [{"at": "2s", "action": "consumer-crash", "duration": "1s", "target": "consumer-0"}],
        producers={"rate": "300/s"},
        consumers={"count": 2, "processing": "10ms"},
    )
    _result, checks = _run("nats", scenario, tmp_path)
    assert checks.lost > 0
    assert checks.duplicates == 0


def test_jetstream_file_storage_sync_always_loses_nothing_on_a_kill(tmp_path: Path) -> None:
    """JetStream, file storage, sync always: the stream and durable survive a kill -9."""
    broker = {"storage": "file", "persistence": "always", "ack_timeout": "1s"}
    scenario = _scenario("nats-jetstream", KILL, broker=broker, drain_timeout=LONG_DRAIN)
    _result, checks = _run("nats-jetstream", scenario, tmp_path)
    assert checks.lost == 0
    assert checks.acked > 0


def test_jetstream_consumer_crash_redelivers_after_ack_wait(tmp_path: Path) -> None:
    """JetStream: what a crashed consumer held unacked comes back after AckWait; nothing lost."""
    scenario = _scenario(
        "nats-jetstream",
        [{"at": "2s", "action": "consumer-crash", "duration": "1s", "target": "consumer-0"}],
        broker={"storage": "memory", "ack_timeout": "1s"},
        consumers={"count": 2, "processing": "10ms", "prefetch": 5},
        drain_timeout=LONG_DRAIN,
    )
    _result, checks = _run("nats-jetstream", scenario, tmp_path)
    assert checks.lost == 0
    assert checks.redelivered > 0


def test_partition_with_publish_timeouts_ends_with_unknowns_or_duplicates(tmp_path: Path) -> None:
    """A 1 s partition with 0.5 s publish timeouts and same-id retries: the run ends, Redis has no
    dedup so retried publishes land twice (or stay unknown), and nothing acknowledged is lost."""
    scenario = _scenario(
        "redis-streams",
        [{"at": "2s", "action": "partition", "duration": "1s", "target": "all"}],
        producers={"publish_timeout": "0.5s", "retry": "same-id", "retry_backoff": "100ms"},
        drain_timeout=LONG_DRAIN,
    )
    result, checks = _run("redis-streams", scenario, tmp_path)
    assert checks.unknown > 0 or checks.duplicates > 0
    assert checks.lost == 0
    assert result.trace.sends["attempts"].max() > 1


def test_fault_windows_are_recorded_as_played_and_marked_on_the_timeline(tmp_path: Path) -> None:
    """Each entry gets one window at its actual time (±0.5 s) and the timeline names it."""
    faults = [
        {"at": "1s", "action": "latency", "duration": "1s", "delay": "20ms", "target": "consumers"},
        {"at": "1.5s", "action": "producer-crash", "duration": "0.5s", "target": "producer-0"},
        {"at": "2.5s", "action": "slow-consumer", "duration": "0.5s", "factor": 3},
        {"at": "3.2s", "action": "connection-reset", "target": "producer-0"},
    ]
    scenario = _scenario(
        "nats", faults, producers={"duration": "4s"}, network={"delay": "1ms"}, drain_timeout="2s"
    )
    result = run_real(scenario, "nats", 7, workdir=tmp_path)
    windows = result.faults
    assert [w.action for w in windows] == [f["action"] for f in faults]
    timeline = result.trace.timeline
    for window, fault in zip(windows, scenario.faults, strict=True):
        assert window.t_start == pytest.approx(fault.at, abs=0.5)
        assert window.t_end == pytest.approx(fault.at + fault.duration, abs=0.5)
        inside = timeline[(timeline.t_start <= window.t_start) & (timeline.t_end > window.t_start)]
        assert f"{window.action}:{window.target}" in inside["faults"].iloc[0]
    sends = result.trace.sends
    delay = sends["t_sent"] - sends["t_intended"]
    crashed = sends[(sends.t_intended > 1.6) & (sends.t_intended < 1.9)]
    assert (delay[crashed.index] > 0.1).all()  # sent after the restart, at original intent


def test_broker_faults_on_a_broker_given_by_url_are_refused_before_running(tmp_path: Path) -> None:
    """broker-kill with --redis-url is a user error, raised before any broker or client starts."""
    scenario = _scenario("redis-streams", KILL)
    with pytest.raises(FaultRefused, match="--redis-url"):
        # A port nobody listens on: refusing must not even try to connect.
        run_real(scenario, "redis-streams", 7, workdir=tmp_path, redis_url="redis://127.0.0.1:1")
    assert not any(tmp_path.iterdir())


def test_power_loss_on_a_real_broker_is_refused(tmp_path: Path) -> None:
    """power_loss is simulator-only: a real target refuses it as a user error."""
    faults = [{"at": "1s", "action": "broker-kill", "duration": "1s", "power_loss": True}]
    scenario = _scenario("nats-jetstream", faults)
    with pytest.raises(FaultRefused, match="power_loss"):
        run_real(scenario, "nats-jetstream", 7, workdir=tmp_path)


def test_cli_reports_a_refused_fault_as_a_usage_error(tmp_path: Path) -> None:
    """`brokerlab run` with a broker-kill and --redis-url exits 2 with the reason."""
    from brokerlab.cli import main

    path = tmp_path / "kill.yaml"
    path.write_text(
        "name: kill\nproducers: {rate: 10/s, duration: 1s}\nbroker: {kind: redis-streams}\n"
        "faults: [{at: 0.5s, action: broker-kill, duration: 0.2s}]\n"
    )
    url = "redis://127.0.0.1:1"
    results = str(tmp_path / "results")
    args = ["run", str(path), "-t", "redis-streams", "--redis-url", url, "--results-dir", results]
    outcome = CliRunner().invoke(main, [*args, "-q"])
    assert outcome.exit_code == 2, outcome.output
    assert "broker-kill only runs on a broker the lab starts itself" in outcome.output


def test_network_delay_distributions_become_proxy_latency() -> None:
    """Constant and uniform delays are exact; others keep their mean and deviation."""
    delay = _scenario("nats", [], network={"delay": "5ms"}).network.delay
    assert delay_as_latency(delay) == (0.005, 0.0)
    uniform = _scenario(
        "nats", [], network={"delay": {"dist": "uniform", "min": "1ms", "max": "3ms"}}
    )
    assert delay_as_latency(uniform.network.delay) == pytest.approx((0.002, 0.001))
    expo = _scenario("nats", [], network={"delay": {"dist": "exponential", "mean": "2ms"}})
    assert delay_as_latency(expo.network.delay) == pytest.approx((0.002, 0.002))


def test_nats_core_drain_ends_once_the_consumers_go_quiet_not_at_its_timeout(
    tmp_path: Path,
) -> None:
    """NATS core keeps nothing, so once the consumers complete nothing more after the last
    fault, what they lost never comes: the drain ends ``quiet`` long before its 60 s timeout,
    and its ``pending`` are exactly the messages the checks call lost or unprocessed."""
    from brokerlab.adapters.harness.run import QUIET_S

    scenario = _scenario(
        "nats",
        [{"at": "2s", "action": "consumer-crash", "duration": "1s", "target": "consumer-0"}],
        producers={"rate": "300/s"},
        consumers={"count": 2, "processing": "10ms"},
        drain_timeout="60s",
        requirements={"max_lost": 0},
    )
    result, checks = _run("nats", scenario, tmp_path)
    drain = result.info["drain"]
    assert checks.lost + checks.unprocessed > 0
    assert drain["reason"] == "quiet", drain
    assert drain["quiet_s"] == QUIET_S
    assert QUIET_S <= drain["seconds"] < 30.0, drain
    assert drain["pending"] == checks.lost + checks.unprocessed, (drain, checks)
    # Not "may only be late": nothing is held anywhere, so the loss is certain.
    (lost,) = analyze_result(result, scenario, "nats", 7).requirements
    assert lost.name == "max_lost" and lost.ok is False, lost
    assert "may only be late" not in lost.note, lost


def test_nats_core_drain_waits_for_a_consumer_busy_with_a_slow_message(tmp_path: Path) -> None:
    """Quiet means idle, not busy: a consumer that takes 4 s per message completes nothing for
    longer than QUIET_S, yet both messages arrive, because the drain waits four times the
    slowest processing before it calls the consumers quiet."""
    from brokerlab.adapters.harness.run import QUIET_S

    scenario = _scenario(
        "nats",
        [],
        producers={"rate": "10/s", "duration": "0.2s"},
        consumers={"count": 1, "processing": "4s"},
        drain_timeout="60s",
    )
    assert QUIET_S < 4.0  # the case only tells if one message outlasts the plain quiet period
    result, checks = _run("nats", scenario, tmp_path)
    assert result.info["drain"]["reason"] == "complete", result.info["drain"]
    assert checks.sent == 2 and checks.lost == 0 and checks.unprocessed == 0
