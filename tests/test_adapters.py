"""Real-broker adapters: runs on brokers the lab starts itself and on the machine's services.

No mocks: every run talks to a real redis-server or nats-server. The machine's services are used
through their standard ports (Redis 6379, NATS with JetStream 4222) and only with this run's
uniquely named stream / subject, deleted at the end.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from brokerlab.adapters import run_real
from brokerlab.adapters.harness import RealBrokerError, decode_payload, encode_payload, redact_url
from brokerlab.core.scenario import Scenario, parse_scenario

TARGETS = ("redis-streams", "nats", "nats-jetstream")
MACHINE_URLS = {
    "redis-streams": "redis://127.0.0.1:6379",
    "nats": "nats://127.0.0.1:4222",
    "nats-jetstream": "nats://127.0.0.1:4222",
}
RATE = 400.0


def _listening(url: str) -> bool:
    host, port = url.rpartition("/")[2].rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0


def _scenario(target: str, **overrides: Any) -> Scenario:
    producers = {"count": 2, "rate": f"{RATE:g}/s", "duration": "3s", "arrival": "constant"}
    producers["keys"] = 4
    producers.update(overrides.pop("producers", {}))
    consumers = {"count": 2, "processing": "0.5ms", "prefetch": 1}
    consumers.update(overrides.pop("consumers", {}))
    return parse_scenario(
        {
            "name": "adapter-test",
            "producers": producers,
            "broker": {"kind": target, "storage": "memory", **overrides.pop("broker", {})},
            "consumers": consumers,
            "drain_timeout": "10s",
            **overrides,
        }
    )


def _run(target: str, scenario: Scenario, url: str | None, tmp_path: Path) -> Any:
    urls = {"redis_url": url} if target == "redis-streams" else {"nats_url": url}
    return run_real(scenario, target, 7, workdir=tmp_path, **urls)


def _assert_exactly_once(sends: pd.DataFrame, deliveries: pd.DataFrame) -> None:
    assert (sends["outcome"] == "acked").all()
    assert len(deliveries) == len(sends)
    assert deliveries["msg_id"].value_counts().max() == 1
    assert set(deliveries["msg_id"]) == set(sends["msg_id"])
    assert deliveries["t_done"].notna().all()


def _achieved_rate(sends: pd.DataFrame) -> float:
    return len(sends) / (sends["t_sent"].max() - sends["t_intended"].min())


def _assert_per_key_order(sends: pd.DataFrame, deliveries: pd.DataFrame) -> None:
    merged = deliveries.merge(sends[["msg_id", "producer", "seq", "key"]], on="msg_id")
    merged = merged.sort_values("t_delivered", kind="stable")
    for _, group in merged.groupby(["producer", "key"]):
        assert np.all(np.diff(group["seq"].to_numpy()) > 0)


@pytest.fixture(params=["embedded", "machine"])
def where(request: pytest.FixtureRequest) -> str:
    """Run each test on a broker the lab starts and on the machine's running service."""
    return str(request.param)


def _url(target: str, where: str) -> str | None:
    if where == "embedded":
        return None
    url = MACHINE_URLS[target]
    if not _listening(url):
        pytest.skip(f"no {target} service at {url}")
    return url


@pytest.mark.parametrize("target", TARGETS)
def test_fault_free_run_delivers_every_message_once_at_the_offered_rate(
    target: str, where: str, tmp_path: Path
) -> None:
    """A fault-free modest load: no loss, no duplicates, sent at the offered rate (±5%)."""
    result = _run(target, _scenario(target), _url(target, where), tmp_path)
    sends, deliveries = result.trace.sends, result.trace.deliveries
    assert len(sends) == RATE * 3
    _assert_exactly_once(sends, deliveries)
    assert _achieved_rate(sends) == pytest.approx(RATE, rel=0.05)
    assert result.info["broker"] == ("embedded" if where == "embedded" else "existing")
    assert result.trace.timeline["delivered"].sum() == len(deliveries)


@pytest.mark.parametrize("target", ["redis-streams", "nats-jetstream"])
def test_one_consumer_with_prefetch_one_keeps_per_key_order(target: str, tmp_path: Path) -> None:
    """A log (Redis stream, JetStream) read by one consumer, one at a time, keeps key order."""
    scenario = _scenario(
        target,
        producers={"arrival": "poisson", "rate": "800/s", "duration": "1.5s", "keys": 3},
        consumers={"count": 1, "prefetch": 1, "processing": "0s"},
    )
    result = _run(target, scenario, _url(target, "machine"), tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    _assert_per_key_order(result.trace.sends, result.trace.deliveries)


@pytest.mark.parametrize("target", TARGETS)
def test_sync_confirms_and_batched_prefetch_still_deliver_everything(
    target: str, tmp_path: Path
) -> None:
    """confirm: sync, prefetch 10 and ack before processing: every message still arrives once."""
    scenario = _scenario(
        target,
        producers={"confirm": "sync", "duration": "1s", "count": 1},
        consumers={"prefetch": 10, "ack": "before"},
    )
    result = _run(target, scenario, _url(target, "machine"), tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    publish = result.trace.sends["t_acked"] - result.trace.sends["t_sent"]
    if target != "nats":
        assert publish.notna().all() and (publish >= 0).all()


def test_runs_on_an_existing_broker_leave_nothing_behind(tmp_path: Path) -> None:
    """The run's Redis stream and JetStream stream are deleted after a run on a shared broker."""
    import nats
    import redis

    redis_url, nats_url = MACHINE_URLS["redis-streams"], MACHINE_URLS["nats-jetstream"]
    short = _scenario("redis-streams", producers={"duration": "0.5s"})
    redis_result = _run("redis-streams", short, _url("redis-streams", "machine"), tmp_path)
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(str(redis_result.info["stream"])) == 0

    js_result = _run("nats-jetstream", short, _url("nats-jetstream", "machine"), tmp_path)

    async def stream_names() -> list[str]:
        client = await nats.connect(nats_url)
        try:
            return [info.config.name for info in await client.jetstream().streams_info()]
        finally:
            await client.close()

    assert js_result.info["stream"] not in asyncio.run(stream_names())


@pytest.mark.parametrize(
    ("target", "url", "secrets"),
    [
        ("redis-streams", "redis://default:secretpw@127.0.0.1:6379", ["secretpw"]),
        ("nats", "nats://s3cr3t-token@127.0.0.1:4222", ["s3cr3t-token"]),
        ("nats-jetstream", "nats://alice:hunter2@127.0.0.1:4222", ["alice", "hunter2"]),
    ],
)
def test_credentials_never_reach_the_result(
    target: str, url: str, secrets: list[str], tmp_path: Path
) -> None:
    """A URL with a password or token works, and only its redacted form is recorded."""
    _url(target, "machine")
    result = _run(target, _scenario(target, producers={"duration": "0.5s"}), url, tmp_path)
    _assert_exactly_once(result.trace.sends, result.trace.deliveries)
    recorded = repr(result.info) + repr(result.warnings)
    assert all(secret not in recorded for secret in secrets)
    assert "***@127.0.0.1" in str(result.info["url"])


@pytest.mark.parametrize(
    ("target", "url"),
    [
        ("redis-streams", "redis://default:secretpw@127.0.0.1:{port}"),
        ("nats", "nats://secretpw@127.0.0.1:{port}"),
    ],
)
def test_a_broker_that_is_not_there_fails_fast_without_leaking_credentials(
    target: str, url: str, tmp_path: Path
) -> None:
    """Connecting to a closed port raises a clear error that does not quote the password."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RealBrokerError) as raised:
        _run(target, _scenario(target), url.format(port=port), tmp_path)
    assert "secretpw" not in str(raised.value)
    assert target in str(raised.value)


def test_redact_url_hides_user_password_token_and_secret_query_values() -> None:
    """Every credential form a broker URL can carry is replaced by ***."""
    assert redact_url("redis://default:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact_url("rediss://u:p@h:6380") == "rediss://***@h:6380"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("tls://u:p@h:4222") == "tls://***@h:4222"
    assert redact_url("redis://h:6379/0?password=pw&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_payload_carries_the_lab_ids_and_has_the_scenario_size() -> None:
    """A payload decodes to producer, seq, key, t_intended and is padded to its size."""
    payload = encode_payload(3, 12345, -1, 1.25, 1000)
    assert len(payload) == 1000
    assert decode_payload(payload) == (3, 12345, -1, 1.25)


async def test_redis_producers_own_connection_honours_database_and_refuses_bad_auth(
    tmp_path: Path,
) -> None:
    """The fast path's own connection (no redis-py internals) selects the URL's database and
    fails clearly, without the password, when the server refuses AUTH."""
    import redis

    from brokerlab.adapters.embedded import embedded_for
    from brokerlab.adapters.redis_streams import open_raw_connection

    scenario = _scenario("redis-streams")
    with embedded_for("redis-streams", scenario.broker, tmp_path) as server:
        reader, writer = await open_raw_connection(f"{server.url}/3")
        writer.write(b"*3\r\n$3\r\nSET\r\n$7\r\nraw-key\r\n$1\r\nv\r\n")
        assert await reader.readline() == b"+OK\r\n"
        writer.close()
        with redis.Redis.from_url(f"{server.url}/3") as client:
            assert client.get("raw-key") == b"v"
        with redis.Redis.from_url(f"{server.url}/0") as client:
            assert client.get("raw-key") is None
        host_port = server.url.removeprefix("redis://")
        with pytest.raises(redis.ConnectionError) as raised:
            await open_raw_connection(f"redis://:s3cret@{host_port}")  # no password set
        assert "s3cret" not in str(raised.value)
