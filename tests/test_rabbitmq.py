"""The rabbitmq target: runs on a private node the lab starts and on the machine's own RabbitMQ.

No mocks: every run talks to a real RabbitMQ. The machine's service (5672) is used only through
this run's uniquely named queue, which is deleted at the end; a private node takes ~4-12 s to
boot, so the tests that start one are few and the long ones are marked slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from brokerlab.adapters import run_real
from brokerlab.adapters.binaries import BrokerUnavailable, find_rabbitmq_server
from brokerlab.adapters.harness import RealBrokerError
from brokerlab.core.scenario import Scenario, ScenarioError, parse_scenario

MACHINE_URL = "amqp://guest:guest@127.0.0.1:5672/"
RATE = 300.0
REPO = Path(__file__).resolve().parents[1]

try:
    find_rabbitmq_server()
    HAVE_SERVER = True
except BrokerUnavailable:
    HAVE_SERVER = False
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="rabbitmq-server is not installed")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _machine() -> str:
    if not _listening(5672):
        pytest.skip("no RabbitMQ service at 127.0.0.1:5672")
    return MACHINE_URL


def _scenario(**overrides: Any) -> Scenario:
    producers = {"count": 2, "rate": f"{RATE:g}/s", "duration": "2s", "arrival": "constant"}
    producers["keys"] = 4
    producers.update(overrides.pop("producers", {}))
    consumers = {"count": 1, "processing": "0s", "prefetch": 1}
    consumers.update(overrides.pop("consumers", {}))
    return parse_scenario(
        {
            "name": "rabbitmq-test",
            "producers": producers,
            "broker": {"kind": "rabbitmq", **overrides.pop("broker", {})},
            "consumers": consumers,
            "drain_timeout": "20s",
            **overrides,
        }
    )


def _run(scenario: Scenario, url: str | None, tmp_path: Path) -> Any:
    return run_real(scenario, "rabbitmq", 7, workdir=tmp_path, amqp_url=url)


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


def _queue_exists(name: str) -> bool:
    import aiormq

    async def check() -> bool:
        connection = await aiormq.connect(MACHINE_URL)
        try:
            channel = await connection.channel()
            await channel.queue_declare(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            await connection.close()

    return asyncio.run(check())


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After each test nothing runs in its tmp_path (node, epmd); strays are killed and fail."""
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


# --------------------------------------------------------------------------- scenario fields


def test_queue_type_and_overflow_are_validated() -> None:
    """broker.queue_type and broker.overflow accept only RabbitMQ's words, with the field path."""
    assert _scenario(broker={"queue_type": "quorum"}).broker.queue_type == "quorum"
    assert _scenario().broker.queue_type == "classic"
    assert _scenario().broker.overflow == "drop-head"
    with pytest.raises(ScenarioError, match="queue_type"):
        _scenario(broker={"queue_type": "lazy"})
    with pytest.raises(ScenarioError, match="overflow"):
        _scenario(broker={"overflow": "reject-publish-dlx"})


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("where", ["machine", pytest.param("embedded", marks=needs_server)])
def test_fault_free_run_delivers_every_message_once_in_key_order_at_the_offered_rate(
    where: str, tmp_path: Path
) -> None:
    """No loss, no duplicates, delivered = sent, sent at the offered rate (±5%), and one
    consumer of a queue sees each producer's keys in order."""
    url = _machine() if where == "machine" else None
    result = _run(_scenario(), url, tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    assert len(sends) == RATE * 2
    _assert_exactly_once(sends, deliveries)
    _assert_per_key_order(sends, deliveries)
    achieved = len(sends) / (sends["t_sent"].max() - sends["t_intended"].min())
    assert achieved == pytest.approx(RATE, rel=0.05)
    assert result.info["broker"] == ("embedded" if where == "embedded" else "existing")
    assert result.info["queue_type"] == "classic"
    if url is not None:
        assert "guest" not in repr(result.info) + repr(result.warnings)
        assert not _queue_exists(result.info["queue"])  # deleted at the end


def test_durable_quorum_queue_with_two_consumers_delivers_everything_once(
    tmp_path: Path,
) -> None:
    """A quorum queue (durable, persistent messages, delivery limit), two competing consumers,
    prefetch 10, sync confirms: every message arrives once, every publish was confirmed."""
    scenario = _scenario(
        broker={"queue_type": "quorum", "persistence": "always", "max_deliveries": 5},
        producers={"confirm": "sync", "count": 1, "rate": "200/s", "duration": "1s"},
        consumers={"count": 2, "prefetch": 10},
    )
    result = _run(scenario, _machine(), tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    assert result.info["durable_queue"] is True
    assert result.info["arguments"]["x-delivery-limit"] == 5
    publish = result.trace.sends["t_acked"] - result.trace.sends["t_sent"]
    assert publish.notna().all() and (publish >= 0).all()


def test_reject_publish_at_max_length_fails_the_publishes_the_broker_refused(
    tmp_path: Path,
) -> None:
    """overflow reject-publish: with no consumer reading fast enough, the broker nacks what does
    not fit and those sends are failed (not lost); drop-head would have dropped old ones."""
    scenario = _scenario(
        broker={"max_length": 50, "overflow": "reject-publish"},
        producers={"count": 1, "rate": "400/s", "duration": "0.5s"},
        consumers={"processing": "20ms", "prefetch": 1},
    )
    result = _run(scenario, _machine(), tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    failed = sends[sends["outcome"] == "failed"]
    assert len(failed) > 0
    assert set(deliveries["msg_id"]) == set(sends.loc[sends["outcome"] == "acked", "msg_id"])


def test_a_crashed_consumers_unacked_messages_are_redelivered(tmp_path: Path) -> None:
    """consumer-crash: what the crashed consumer held unacked goes back to the queue (marked
    redelivered) and the survivor processes it; nothing acknowledged is lost."""
    scenario = _scenario(
        producers={"count": 1, "rate": "200/s", "duration": "2s"},
        consumers={"count": 2, "prefetch": 20, "processing": "5ms"},
        faults=[
            {"at": "0.5s", "action": "consumer-crash", "target": "consumer-0", "duration": "1s"}
        ],
    )
    result = _run(scenario, _machine(), tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    done = deliveries[deliveries["t_done"].notna()]
    assert set(done["msg_id"]) == set(sends.loc[sends["outcome"] == "acked", "msg_id"])
    assert (deliveries["delivery_no"] > 1).any()


@needs_server
@pytest.mark.slow
def test_broker_kill_loses_transient_messages_but_not_confirmed_persistent_ones(
    tmp_path: Path,
) -> None:
    """kill -9 of the lab's own node: a durable queue with persistent messages and confirms
    keeps every confirmed message (delivered after the restart)."""
    scenario = _scenario(
        broker={"persistence": "always"},
        producers={"count": 1, "rate": "100/s", "duration": "3s", "retry": "same-id"},
        consumers={"processing": "20ms", "prefetch": 5},
        faults=[{"at": "1s", "action": "broker-kill", "duration": "0.5s"}],
        drain_timeout="60s",
    )
    for attempt in (1, 2):
        workdir = tmp_path / f"attempt-{attempt}"
        result = _run(scenario, None, workdir)
        sends, deliveries = result.trace.sends, result.trace.deliveries
        acked = set(sends.loc[sends["outcome"] == "acked", "msg_id"])
        missing = acked - set(deliveries["msg_id"])
        if not (missing and attempt == 1 and _queue_forgotten(workdir)):
            break
        # The node itself came back without the durable queue (its log says so): that run
        # says nothing about the lab's accounting, which reported the loss as it should.
        warnings.warn(_node_story(workdir, result, missing), stacklevel=1)
    assert acked and not missing, _node_story(workdir, result, missing)


def _queue_forgotten(workdir: Path) -> bool:
    """Whether the node, restarted after the kill, recovered no classic queue (RabbitMQ's log:
    "Recovering 0 queues of type rabbit_classic_queue" after its second start)."""
    starts = _node_log(workdir).split("Starting RabbitMQ")
    return len(starts) > 2 and "Recovering 0 queues of type rabbit_classic_queue" in starts[-1]


def _node_log(workdir: Path) -> str:
    """The lab's own node's log (one node per run: its every start appends to it)."""
    logs = sorted(workdir.glob("rabbitmq-*/log/*.log"))
    return "".join(log.read_text(encoding="utf-8", errors="replace") for log in logs)


def _node_story(workdir: Path, result: Any, missing: set[str]) -> str:
    """Why confirmed messages were missing: what the node logged at each (re)start (queues it
    recovered, connections it accepted and closed) and what the run's clients saw."""
    lines = [f"{len(missing)} confirmed messages never delivered: {sorted(missing)[:10]} ..."]
    wanted = ("Starting RabbitMQ", "Recovering", "startup complete", "AMQP connection", "rror")
    lines += [
        line[:220] for line in _node_log(workdir).splitlines() if any(w in line for w in wanted)
    ]
    lines.append(f"warnings: {result.warnings}")
    lines.append(f"faults: {result.faults}; drain: {result.info.get('drain')}")
    return "\n".join(lines)


def test_a_broker_that_is_not_there_fails_fast_without_leaking_credentials(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RealBrokerError) as raised:
        _run(_scenario(), f"amqp://alice:secretpw@127.0.0.1:{port}/", tmp_path)
    assert "secretpw" not in str(raised.value)
    assert "rabbitmq" in str(raised.value)


def test_without_server_or_url_the_cli_names_both_ways_and_exits_2(tmp_path: Path) -> None:
    """No rabbitmq-server to start and no --amqp-url: exit 2, both ways named, nothing written."""
    env = {**os.environ, "BROKERLAB_RABBITMQ_SERVER": str(tmp_path / "missing")}
    env.pop("BROKERLAB_AMQP_URL", None)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "brokerlab"),
            "run",
            str(REPO / "scenarios/quickstart.yaml"),
            *("--target", "rabbitmq", "--out", str(out), "-q"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--amqp-url" in done.stderr and "rabbitmq-server" in done.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- cleanup


def _default_sigint() -> None:
    # A suite run in the background of a non-interactive shell inherits SIGINT ignored, and so
    # would the lab; a user's terminal gives Ctrl-C its default meaning.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


LAB = """
import json, sys, time
from pathlib import Path
from brokerlab.adapters.embedded import EmbeddedBroker
with EmbeddedBroker("rabbitmq", Path(sys.argv[1])) as node:
    print(json.dumps([node.pid, node._epmd.pid, node.port]), flush=True)
    time.sleep(300)
"""


@needs_server
@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_a_lab_that_is_interrupted_leaves_no_node_behind(how: str, tmp_path: Path) -> None:
    """Ctrl-C unwinds the `with` block; SIGKILL leaves it to PDEATHSIG: either way the node,
    its helpers and its private epmd are gone, and the port is free again."""
    script = tmp_path / "lab.py"
    script.write_text(LAB)
    lab = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "node")],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert lab.stdout is not None
    line = lab.stdout.readline()
    assert line, f"the lab exited early with {lab.wait(10)}"
    node, epmd, port = json.loads(line)
    group = [p.pid for p in psutil.Process(node).children(recursive=True)]
    lab.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    lab.wait(60)
    deadline = time.monotonic() + 30
    pids = [node, epmd, *group]
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    assert not alive
    assert not _listening(port)


def test_select_runs_rabbitmq_for_real_only_when_a_broker_can_be_had(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """select: the real target when a URL is given or the server is installed, else the
    simulator (instead of a failed candidate)."""
    from brokerlab.app.select import target_for

    monkeypatch.delenv("BROKERLAB_AMQP_URL", raising=False)
    monkeypatch.setenv("BROKERLAB_RABBITMQ_SERVER", str(tmp_path / "missing"))
    assert target_for("rabbitmq", True, {}) == "sim"
    assert target_for("rabbitmq", True, {"amqp_url": MACHINE_URL}) == "rabbitmq"
    assert target_for("rabbitmq", False, {"amqp_url": MACHINE_URL}) == "sim"
    assert target_for("kafka", True, {}) == "kafka"  # the Tansu broker ships with the lab
    monkeypatch.delenv("BROKERLAB_RABBITMQ_SERVER")
    assert target_for("rabbitmq", True, {}) == ("rabbitmq" if HAVE_SERVER else "sim")


def test_a_crashed_producer_restarts_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    """producer-crash: the producer's connection drops mid-run; unconfirmed publishes end
    unknown, the restarted producer sends the rest, and every confirmed message arrives."""
    scenario = _scenario(
        producers={"count": 1, "rate": "200/s", "duration": "2s"},
        faults=[
            {"at": "0.7s", "action": "producer-crash", "target": "producer-0", "duration": "0.5s"}
        ],
    )
    result = _run(scenario, _machine(), tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    acked = set(sends.loc[sends["outcome"] == "acked", "msg_id"])
    assert len(acked) >= 0.9 * len(sends)
    assert acked <= set(deliveries["msg_id"])
    assert sends["t_sent"].notna().all()  # what it missed was sent after the restart


def test_a_stream_queue_is_read_by_offset_and_a_restarted_consumer_resumes(
    tmp_path: Path,
) -> None:
    """queue_type stream: every message once; a consumer that crashes resumes after the last
    offset it acknowledged, so what it held unacked is read again and nothing is skipped."""
    scenario = _scenario(
        broker={"queue_type": "stream"},
        producers={"count": 1, "rate": "200/s", "duration": "2s"},
        consumers={"count": 1, "prefetch": 20, "processing": "3ms"},
        faults=[
            {"at": "0.8s", "action": "consumer-crash", "target": "consumer-0", "duration": "0.3s"}
        ],
    )
    result = _run(scenario, _machine(), tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    done = deliveries[deliveries["t_done"].notna()]
    assert set(done["msg_id"]) == set(sends.loc[sends["outcome"] == "acked", "msg_id"])
    assert result.info["queue_type"] == "stream"


# --------------------------------------------------------------------------- the broker's view


def test_prometheus_unacked_reads_one_queue_of_one_vhost() -> None:
    """The per-queue line of the right vhost and queue, not a neighbour's; None if absent."""
    from brokerlab.adapters.rabbitmq import prometheus_unacked

    page = (
        "# TYPE rabbitmq_detailed_queue_messages_unacked gauge\n"
        'rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="other"} 9\n'
        'rabbitmq_detailed_queue_messages_unacked{vhost="v2",queue="q"} 4\n'
        'rabbitmq_detailed_queue_messages_unacked{vhost="/",queue="q"} 7\n'
        'rabbitmq_detailed_queue_messages_ready{vhost="/",queue="q"} 23\n'
    )
    assert prometheus_unacked(page, "/", "q") == 7.0
    assert prometheus_unacked(page, "v2", "q") == 4.0
    assert prometheus_unacked(page, "/", "missing") is None


@needs_server
def test_broker_unacked_on_the_own_node_is_what_a_slow_consumer_holds(tmp_path: Path) -> None:
    """Known answer: one consumer with prefetch 5 and slow processing holds 5 deliveries
    unacked while the queue has more ready, so the broker's unacked count reaches 5 and never
    exceeds it; the ready count (backlog) is a different figure."""
    prefetch = 5
    scenario = _scenario(
        producers={"count": 1, "rate": "100/s", "duration": "0.3s", "keys": 1},
        consumers={"count": 1, "prefetch": prefetch, "processing": "150ms"},
    )
    result = _run(scenario, None, tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    timeline = result.trace.timeline
    assert "prometheus" in result.info["broker_unacked"]
    unacked = timeline["broker_unacked"].dropna()
    assert len(unacked) > 0
    assert unacked.max() == prefetch
    assert (timeline["broker_backlog"].dropna() > prefetch).any()


def test_broker_unacked_stays_empty_where_the_broker_cannot_say(tmp_path: Path) -> None:
    """The machine's RabbitMQ serves neither the management API nor the Prometheus plugin: no
    unacked figure is made up, run.json says why, the ready count is still sampled."""
    url = _machine()
    for port in (15672, 15692):
        if _listening(port):
            pytest.skip(f"the machine's broker serves statistics on {port}")
    scenario = _scenario(consumers={"processing": "20ms", "prefetch": 4})
    result = _run(scenario, url, tmp_path)
    timeline = result.trace.timeline
    assert result.info["broker_unacked"].startswith("unknown")
    assert "broker_unacked" not in timeline or timeline["broker_unacked"].isna().all()
    assert timeline["broker_backlog"].notna().any()
