"""The kafka target: runs on the Tansu broker the lab starts, and by URL on a broker the test
starts (this machine has no Kafka service; the URL path is the one users take to their cluster).

No mocks: every run talks to a real Kafka-protocol broker over TCP. Group joins take about half
of the session timeout on Tansu (~3 s), so each run has that on top of its load.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from brokerlab.adapters import run_real
from brokerlab.adapters.embedded import EmbeddedBroker
from brokerlab.adapters.harness import RealBrokerError, redact_url
from brokerlab.adapters.kafka import TANSU_LABEL, client_config
from brokerlab.core.scenario import Scenario, parse_scenario

RATE = 300.0


def _scenario(**overrides: Any) -> Scenario:
    producers = {"count": 2, "rate": f"{RATE:g}/s", "duration": "2s", "arrival": "constant"}
    producers["keys"] = 8
    producers.update(overrides.pop("producers", {}))
    consumers = {"count": 2, "processing": "0s", "prefetch": 10}
    consumers.update(overrides.pop("consumers", {}))
    return parse_scenario(
        {
            "name": "kafka-test",
            "producers": producers,
            "broker": {"kind": "kafka", "partitions": 4, **overrides.pop("broker", {})},
            "consumers": consumers,
            "drain_timeout": "30s",
            **overrides,
        }
    )


def _run(scenario: Scenario, url: str | None, tmp_path: Path) -> Any:
    return run_real(scenario, "kafka", 7, workdir=tmp_path, kafka_url=url)


def _assert_exactly_once(sends: pd.DataFrame, deliveries: pd.DataFrame) -> None:
    assert (sends["outcome"] == "acked").all()
    assert len(deliveries) == len(sends)
    assert deliveries["msg_id"].value_counts().max() == 1
    assert set(deliveries["msg_id"]) == set(sends["msg_id"])
    assert deliveries["t_done"].notna().all()


def _assert_per_key_order(sends: pd.DataFrame, deliveries: pd.DataFrame) -> None:
    merged = deliveries.merge(sends[["msg_id", "producer", "seq", "key"]], on="msg_id")
    merged = merged.sort_values("t_delivered", kind="stable")
    for _, group in merged.groupby(["producer", "key"]):
        assert np.all(np.diff(group["seq"].to_numpy()) > 0)


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After each test no broker runs in its tmp_path; strays are killed and fail the test."""
    yield
    stray = []
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if cwd and Path(cwd).is_relative_to(tmp_path):
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    stray.append(process.pid)
                    process.kill()
    assert not stray, f"processes outlived the test: {stray}"


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A Tansu broker the test starts, used by URL like a user's Kafka."""
    with EmbeddedBroker("tansu", tmp_path / "tansu") as broker:
        yield broker


# --------------------------------------------------------------------------- URLs


def test_kafka_urls_become_librdkafka_settings_and_are_redacted() -> None:
    """Known answers: bootstrap list, SASL from user info, TLS from kafkas://, query settings."""
    assert client_config("kafka://127.0.0.1:9092") == {"bootstrap.servers": "127.0.0.1:9092"}
    assert client_config("h1:9092,h2:9092") == {"bootstrap.servers": "h1:9092,h2:9092"}
    config = client_config(
        "kafkas://alice:s%40cret@h1:9093,h2:9093?sasl_mechanism=SCRAM-SHA-512&ssl_ca_location=/ca"
    )
    assert config == {
        "bootstrap.servers": "h1:9093,h2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s@cret",
        "ssl.ca.location": "/ca",
    }
    assert client_config("kafka://u:p@h:1")["security.protocol"] == "SASL_PLAINTEXT"
    assert client_config("kafkas://h:1")["security.protocol"] == "SSL"
    assert redact_url("kafkas://alice:s%40cret@h1:9093,h2:9093") == "kafkas://***@h1:9093,h2:9093"
    with pytest.raises(ValueError, match="kafka://"):
        client_config("http://h:1")


# --------------------------------------------------------------------------- runs


def test_embedded_run_delivers_every_message_once_in_key_order_at_the_offered_rate(
    tmp_path: Path,
) -> None:
    """Tansu started by the lab: no loss, no duplicates, delivered = sent, the offered rate
    (±5%), and per-key order across two consumers (a key's partition has one reader)."""
    result = _run(_scenario(), None, tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    assert len(sends) == RATE * 2
    _assert_exactly_once(sends, deliveries)
    _assert_per_key_order(sends, deliveries)
    achieved = len(sends) / (sends["t_sent"].max() - sends["t_intended"].min())
    assert achieved == pytest.approx(RATE, rel=0.05)
    assert result.info["broker"] == "embedded"
    assert result.info["broker_label"] == TANSU_LABEL
    assert result.info["embedded"]["label"] == TANSU_LABEL
    assert any(TANSU_LABEL in warning for warning in result.warnings)
    assert result.info["partitions"] == 4


def test_url_run_on_a_broker_the_lab_did_not_start(tansu: EmbeddedBroker, tmp_path: Path) -> None:
    """--kafka-url: the lab starts nothing, ack before processing still delivers everything."""
    scenario = _scenario(
        producers={"count": 1, "duration": "1s", "confirm": "sync", "rate": "100/s"},
        consumers={"count": 1, "ack": "before", "prefetch": 1},
    )
    result = _run(scenario, tansu.url, tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    assert result.info["broker"] == "existing"
    assert not list(tmp_path.glob("tansu-*"))  # no embedded broker folder


def test_a_broker_that_is_not_there_fails_without_leaking_credentials(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RealBrokerError) as raised:
        _run(_scenario(), f"kafka://alice:secretpw@127.0.0.1:{port}", tmp_path)
    assert "secretpw" not in str(raised.value)


@pytest.mark.slow
def test_a_crashed_consumers_uncommitted_messages_come_again_after_the_rebalance(
    tmp_path: Path,
) -> None:
    """consumer-crash: the group rebalances; the survivor is handed the crashed member's
    partitions and reads from their committed offsets, so nothing acknowledged is lost."""
    scenario = _scenario(
        producers={"count": 1, "rate": "200/s", "duration": "4s"},
        consumers={"count": 2, "prefetch": 20, "processing": "2ms"},
        faults=[{"at": "1s", "action": "consumer-crash", "target": "consumer-0", "duration": "2s"}],
        drain_timeout="40s",
    )
    result = _run(scenario, None, tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    done = deliveries[deliveries["t_done"].notna()]
    assert set(done["msg_id"]) == set(sends.loc[sends["outcome"] == "acked", "msg_id"])


def _default_sigint() -> None:
    # A suite run in the background of a non-interactive shell inherits SIGINT ignored, and so
    # would the lab; a user's terminal gives Ctrl-C its default meaning.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


LAB = """
import json, sys
from pathlib import Path
from brokerlab.adapters import run_real
from brokerlab.core.scenario import parse_scenario
scenario = parse_scenario({"name": "ctrl-c", "producers": {"rate": "50/s", "duration": "120s"},
                           "broker": {"kind": "kafka"}})
print(json.dumps("go"), flush=True)
run_real(scenario, "kafka", 1, workdir=Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_ctrl_c_during_a_run_leaves_no_broker_behind(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a kafka run: the lab's Tansu broker is gone afterwards."""
    script = tmp_path / "lab.py"
    script.write_text(LAB)
    lab = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "work")],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert lab.stdout is not None and lab.stdout.readline()
    deadline = time.monotonic() + 60
    brokers: list[psutil.Process] = []
    while time.monotonic() < deadline and not brokers:
        brokers = [p for p in psutil.Process(lab.pid).children() if p.name() == "tansu"]
        time.sleep(0.2)
    assert brokers, "the run did not start its broker"
    time.sleep(3)  # into the run
    lab.send_signal(signal.SIGINT)
    lab.wait(60)
    _gone, alive = psutil.wait_procs(brokers, timeout=10)
    assert not alive


# --------------------------------------------------------------------------- the broker's view


def test_broker_samples_are_held_per_interval_known_answer() -> None:
    """build_timeline's broker columns: each interval shows the last sample taken at or before
    its end, NaN before the first; a column the target did not report is absent."""
    from brokerlab.core.trace import build_timeline, make_deliveries, make_sends

    sends = make_sends(
        np.zeros(4, dtype="int64"),
        np.arange(4, dtype="int64"),
        np.zeros(4, dtype="int64"),
        np.full(4, 10, dtype="int64"),
        np.array([0.0, 0.5, 1.0, 1.5]),
        np.array([0.0, 0.5, 1.0, 1.5]),
        np.array([0.01, 0.51, 1.01, 1.51]),
        np.array(["acked"] * 4, dtype=object),
        np.ones(4, dtype="int16"),
    )
    deliveries = make_deliveries(
        sends["msg_id"].to_numpy(),
        np.zeros(4, dtype="int32"),
        np.ones(4, dtype="int32"),
        np.array([0.1, 0.6, 1.1, 1.9]),
        np.array([0.1, 0.6, 1.1, 1.9]),
    )
    broker = pd.DataFrame({"t": [0.6, 1.2], "broker_backlog": [3.0, 1.0]})
    timeline = build_timeline(sends, deliveries, interval=0.5, broker=broker)
    assert timeline["t_end"].tolist() == [0.5, 1.0, 1.5, 2.0]
    assert np.isnan(timeline["broker_backlog"][0])
    assert timeline["broker_backlog"].tolist()[1:] == [3.0, 1.0, 1.0]
    assert "broker_unacked" not in timeline
    assert "broker_backlog" not in build_timeline(sends, deliveries, interval=0.5)


def test_kafka_run_records_the_brokers_own_lag(tmp_path: Path) -> None:
    """A real run samples the broker's committed-offset lag into the timeline; it ends at 0
    once everything is processed and committed."""
    scenario = _scenario(producers={"count": 1, "duration": "3s", "rate": "200/s"})
    result = _run(scenario, None, tmp_path)
    timeline = result.trace.timeline
    assert "broker_backlog" in timeline
    sampled = timeline["broker_backlog"].dropna()
    assert len(sampled) > 0 and (sampled >= 0).all()
    # Kafka counts no unacknowledged messages: the column is left out, never estimated
    assert "broker_unacked" not in timeline


# --------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_runs_the_quickstart_on_every_real_target_and_the_simulator(
    tmp_path: Path,
) -> None:
    """`brokerlab compare --targets sim,redis-streams,nats,nats-jetstream,rabbitmq,kafka` on the
    quickstart (2 s of it: the README's command runs all of it): every target gives a run, the
    kafka run says what it ran on."""
    from brokerlab.adapters.binaries import BrokerUnavailable, find_rabbitmq_server

    try:
        find_rabbitmq_server()
    except BrokerUnavailable:
        pytest.skip("rabbitmq-server is not installed")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "cmp"
    targets = "sim,redis-streams,nats,nats-jetstream,rabbitmq,kafka"
    quickstart = (repo / "scenarios/quickstart.yaml").read_text(encoding="utf-8")
    assert "duration: 10s" in quickstart
    short = tmp_path / "quickstart.yaml"
    short.write_text(quickstart.replace("duration: 10s", "duration: 2s"), encoding="utf-8")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "brokerlab"),
            "compare",
            str(short),
            *("--targets", targets, "--out", str(out), "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for target in targets.split(","):
        assert target in done.stdout
    kafka_runs = [json.loads(p.read_text()) for p in out.rglob("run.json")]
    labels = [r.get("target_info", {}).get("broker_label") for r in kafka_runs]
    assert TANSU_LABEL in labels


def test_a_crashed_producer_restarts_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    """producer-crash on kafka: a new idempotent producer takes over after the restart; every
    acknowledged message is consumed."""
    scenario = _scenario(
        producers={"count": 1, "rate": "200/s", "duration": "2s"},
        faults=[
            {"at": "0.7s", "action": "producer-crash", "target": "producer-0", "duration": "0.5s"}
        ],
    )
    result = _run(scenario, None, tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    acked = set(sends.loc[sends["outcome"] == "acked", "msg_id"])
    assert len(acked) >= 0.9 * len(sends)
    assert acked <= set(deliveries["msg_id"])
    assert sends["t_sent"].notna().all()


# --------------------------------------------------------------------------- network faults


def test_the_lab_broker_advertises_the_fault_proxy_only_in_a_fault_run(tmp_path: Path) -> None:
    """Known answer from the broker itself: Metadata names the reserved proxy port when the run
    needs proxies, and the broker's own port otherwise."""
    from confluent_kafka.admin import AdminClient

    from brokerlab.adapters.embedded import embedded_for
    from brokerlab.core.scenario import Broker

    for behind_proxy in (True, False):
        broker = embedded_for(
            "kafka", Broker(kind="kafka"), tmp_path / str(behind_proxy), behind_proxy=behind_proxy
        )
        with broker:
            admin = AdminClient({"bootstrap.servers": f"{broker.host}:{broker.port}"})
            (advertised,) = admin.list_topics(timeout=10).brokers.values()
        if behind_proxy:
            assert broker.advertised_port not in (None, broker.port)
            assert advertised.port == broker.advertised_port
            assert broker.info["advertised_listener"] == f"127.0.0.1:{broker.advertised_port}"
        else:
            assert broker.advertised_port is None and advertised.port == broker.port


def _network_run(fault: dict[str, Any], tmp_path: Path, **producers: Any) -> Any:
    """One producer at 200/s for 4 s, one consumer, one network fault from 1 s to 3 s."""
    scenario = _scenario(
        producers={"count": 1, "rate": "200/s", "duration": "4s", **producers},
        consumers={"count": 1, "prefetch": 10},
        broker={"partitions": 2},
        faults=[{"at": "1s", "duration": "2s", **fault}],
    )
    return _run(scenario, None, tmp_path)


def _latencies(result: Any) -> pd.DataFrame:
    """Per acknowledged message: when it was sent, its publish and its end-to-end latency."""
    sends, deliveries = result.trace.sends, result.trace.deliveries
    first = deliveries.sort_values("t_delivered").drop_duplicates("msg_id")
    merged = sends[sends["outcome"] == "acked"].merge(first[["msg_id", "t_delivered"]], on="msg_id")
    merged["publish"] = merged["t_acked"] - merged["t_sent"]
    merged["e2e"] = merged["t_delivered"] - merged["t_sent"]
    return merged


def _assert_each_client_went_through_its_proxy(result: Any) -> None:
    routed = result.info["faults"]["routed_connections"]
    for client in ("control", "producer-0", "consumer-0"):
        assert routed.get(client, 0) >= 1, routed


def test_latency_on_every_client_adds_two_one_way_delays_end_to_end(tmp_path: Path) -> None:
    """100 ms one way on every client: a message sent inside the window crosses the producer's
    link and the consumer's, so it arrives at least 2 x 100 ms later than one sent outside."""
    delay = 0.1
    result = _network_run(
        {"action": "latency", "target": "all", "delay": f"{delay * 1000:g}ms"}, tmp_path
    )
    latencies = _latencies(result)
    assert len(latencies) == len(result.trace.sends)  # nothing lost or left unknown
    (window,) = result.faults
    inside = latencies[
        (latencies.t_sent > window.t_start + 0.1) & (latencies.t_sent < window.t_end - 0.3)
    ]
    outside = latencies[(latencies.t_sent < window.t_start - 0.1) | (latencies.t_sent > 3.5)]
    assert len(inside) > 100 and len(outside) > 50
    assert inside["e2e"].min() >= 2 * delay * 0.95
    assert inside["e2e"].median() >= outside["e2e"].median() + 2 * delay * 0.9
    # the produce request and its answer both cross the producer's link
    assert inside["publish"].min() >= 2 * delay * 0.95
    _assert_each_client_went_through_its_proxy(result)


def test_partition_of_every_client_loses_nothing_acknowledged_and_the_run_ends(
    tmp_path: Path,
) -> None:
    """A 2 s partition of every client with retries: bytes are held, not lost, so every
    message is acknowledged and delivered once (the idempotent producer dedups its own
    retries), and none sent during the cut arrives before the cut ends."""
    result = _network_run(
        {"action": "partition", "target": "all"},
        tmp_path,
        retry="same-id",
        max_attempts=3,
        publish_timeout="10s",
    )
    sends, deliveries = result.trace.sends, result.trace.deliveries
    _assert_exactly_once(sends, deliveries)
    (window,) = result.faults
    assert window.t_end - window.t_start == pytest.approx(2.0, abs=0.3)
    latencies = _latencies(result)
    cut = latencies[(latencies.t_sent > window.t_start + 0.05) & (latencies.t_sent < 2.8)]
    assert len(cut) > 200
    assert (cut["t_delivered"] >= window.t_end - 0.05).all()
    assert (cut["t_acked"] >= window.t_end - 0.05).all()
    _assert_each_client_went_through_its_proxy(result)


def test_partition_of_the_consumers_only_leaves_the_producer_unaffected(tmp_path: Path) -> None:
    """Consumers cut off for 2 s: the producer's publishes are acknowledged as quickly as
    outside the window (its link is untouched), while what is sent in the window reaches the
    consumer only once the cut ends."""
    result = _network_run({"action": "partition", "target": "consumers"}, tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    _assert_exactly_once(sends, deliveries)
    (window,) = result.faults
    latencies = _latencies(result)
    inside = latencies[
        (latencies.t_sent > window.t_start + 0.05) & (latencies.t_sent < window.t_end - 0.5)
    ]
    outside = latencies[(latencies.t_sent < window.t_start - 0.1) | (latencies.t_sent > 3.5)]
    assert len(inside) > 200
    assert (inside["t_delivered"] >= window.t_end - 0.05).all()
    # unaffected: far below the ~1 s a cut producer would wait; same order as outside
    assert inside["publish"].quantile(0.9) < 0.25
    assert inside["publish"].median() < outside["publish"].median() + 0.05


def test_a_connection_reset_of_every_client_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Every client's connections reset (RST) once: librdkafka reconnects through the router,
    retries what was in flight, and nothing acknowledged is lost."""
    result = _network_run(
        {"action": "connection-reset", "target": "all"},
        tmp_path,
        retry="same-id",
        max_attempts=3,
        publish_timeout="10s",
    )
    sends, deliveries = result.trace.sends, result.trace.deliveries
    acked = set(sends.loc[sends["outcome"] == "acked", "msg_id"])
    assert len(acked) == len(sends)
    assert acked == set(deliveries["msg_id"])
    routed = result.info["faults"]["routed_connections"]
    # the reset made the producer and the consumer connect again
    assert routed["producer-0"] >= 2 and routed["consumer-0"] >= 2, routed


def test_a_bandwidth_limit_on_the_producer_caps_what_reaches_the_broker(tmp_path: Path) -> None:
    """10 kB/s on the producer's link for 2 s: each 256 B message takes at least 256 B of it,
    so at most ~80 messages (20 kB) can be acknowledged inside the window where 200/s would
    give ~360; the rest is acknowledged after it, and nothing is lost."""
    result = _network_run(
        {"action": "bandwidth", "target": "producers", "bandwidth": "10000/s"},
        tmp_path,
        size="256B",
        publish_timeout="20s",
    )
    sends, deliveries = result.trace.sends, result.trace.deliveries
    _assert_exactly_once(sends, deliveries)
    (window,) = result.faults
    acked_inside = sends[(sends.t_acked > window.t_start + 0.1) & (sends.t_acked <= window.t_end)]
    fits = 10_000 * (window.t_end - window.t_start) / 256
    assert len(acked_inside) <= fits + 10
    assert (sends.t_acked > window.t_end).sum() > 200  # held back by the limit, sent after


def test_network_faults_on_a_kafka_given_by_url_are_refused_before_running(
    tmp_path: Path,
) -> None:
    """--kafka-url: the broker advertises its own address, so no proxy can stand in the path;
    a network fault (or network delay) is a user error raised before anything starts."""
    from brokerlab.adapters.faults import FaultRefused

    for extra in (
        {"faults": [{"at": "1s", "action": "partition", "duration": "1s"}]},
        {"network": {"delay": "5ms"}},
    ):
        scenario = _scenario(**extra)
        with pytest.raises(FaultRefused, match="--kafka-url") as refused:
            # a port nobody listens on: refusing must not even try to connect
            _run(scenario, "kafka://127.0.0.1:1", tmp_path)
        assert "advertises" in str(refused.value)
    assert not any(tmp_path.iterdir())


def test_cli_refuses_a_partition_with_kafka_url_as_a_usage_error(tmp_path: Path) -> None:
    """`brokerlab run --kafka-url` with a partition exits 2 and says why."""
    from click.testing import CliRunner

    from brokerlab.cli import main

    path = tmp_path / "partition.yaml"
    path.write_text(
        "name: partition\nproducers: {rate: 10/s, duration: 1s}\nbroker: {kind: kafka}\n"
        "faults: [{at: 0.5s, action: partition, duration: 0.2s}]\n"
    )
    results = tmp_path / "results"
    args = ["run", str(path), "-t", "kafka", "--kafka-url", "kafka://127.0.0.1:1"]
    outcome = CliRunner().invoke(main, [*args, "--results-dir", str(results), "-q"])
    assert outcome.exit_code == 2, outcome.output
    assert "faults[0].action" in outcome.output and "--kafka-url" in outcome.output
    assert not results.exists() or not any(results.rglob("*.json"))
