"""The fault proxy with real clients and brokers: latency, bandwidth, partition, reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from brokerlab.adapters.proxy import (
    FaultProxy,
    KafkaRouter,
    ThreadedFaultProxy,
    read_kafka_client_id,
)

REDIS = ("127.0.0.1", 6379)
NATS = ("127.0.0.1", 4222)

pytestmark = pytest.mark.timeout(60)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def _unique(name: str) -> str:
    return f"brokerlab-test-proxy:{name}:{uuid.uuid4().hex}"


@pytest.fixture
async def redis_proxy() -> AsyncIterator[FaultProxy]:
    """A proxy in front of the machine's Redis."""
    if not _reachable(REDIS):
        pytest.skip("no Redis on 127.0.0.1:6379")
    async with FaultProxy(*REDIS) as proxy:
        yield proxy


@pytest.fixture
async def redis_key() -> AsyncIterator[str]:
    """A unique key, deleted afterwards through a fault-free proxy."""
    key = _unique("key")
    yield key
    async with FaultProxy(*REDIS) as proxy:
        client = aioredis.Redis(port=proxy.port)
        await client.delete(key)
        await client.aclose()


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    """A TCP echo server on a free loopback port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _elapsed(operation: Callable[[], Awaitable[object]]) -> float:
    started = time.monotonic()
    await operation()
    return time.monotonic() - started


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


async def test_redis_commands_work_through_proxy(redis_proxy: FaultProxy, redis_key: str) -> None:
    """PING, SET and GET reach Redis and come back unchanged through a fault-free proxy."""
    client = aioredis.Redis(port=redis_proxy.port)
    assert await client.ping()
    await client.set(redis_key, b"value")
    assert await client.get(redis_key) == b"value"
    await client.aclose()
    stats = redis_proxy.stats
    assert stats.connections_opened == 1
    assert stats.bytes_to_upstream > 0 and stats.bytes_to_client > 0


async def test_latency_delays_both_directions_and_clear_restores(redis_proxy: FaultProxy) -> None:
    """With 50 ms one-way latency a round trip takes two delays; clear() removes them."""
    client = aioredis.Redis(port=redis_proxy.port)
    await client.ping()  # connect before measuring
    redis_proxy.set_latency(0.05)
    slow = [await _elapsed(client.ping) for _ in range(3)]
    assert min(slow) >= 0.09
    assert max(slow) < 2.0
    redis_proxy.clear()
    fast = [await _elapsed(client.ping) for _ in range(5)]
    assert min(fast) < 0.05
    await client.aclose()


async def test_blackhole_times_out_commands_until_lifted(redis_proxy: FaultProxy) -> None:
    """During a partition commands and new connections time out; after it heals they work."""
    client = aioredis.Redis(port=redis_proxy.port, socket_timeout=0.5, retry=_no_retry())
    await client.ping()
    redis_proxy.blackhole()
    with pytest.raises(redis.exceptions.TimeoutError):
        await client.ping()
    newcomer = aioredis.Redis(port=redis_proxy.port, socket_timeout=0.5, retry=_no_retry())
    with pytest.raises(redis.exceptions.TimeoutError):
        await newcomer.ping()
    redis_proxy.blackhole(False)
    assert await client.ping()
    assert await newcomer.ping()
    await client.aclose()
    await newcomer.aclose()


async def test_blackhole_delivers_held_bytes_in_order_when_lifted(
    echo_server: tuple[str, int],
) -> None:
    """A partition holds bytes (TCP retransmits) and delivers them in order when it heals."""
    async with FaultProxy(*echo_server) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.blackhole()
        writer.write(b"before-")
        await writer.drain()
        writer.write(b"heal")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), timeout=0.3)
        assert proxy.stats.bytes_held == len(b"before-heal")
        proxy.blackhole(False)
        assert await asyncio.wait_for(reader.readexactly(11), timeout=5) == b"before-heal"
        writer.close()


async def test_reset_fails_open_connection_then_client_reconnects(
    redis_proxy: FaultProxy,
) -> None:
    """reset_connections() breaks a connection in use; the next command reconnects by itself."""
    client = aioredis.Redis(port=redis_proxy.port, single_connection_client=True, retry=_no_retry())
    await client.ping()
    redis_proxy.reset_connections()
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.ping()
    assert await client.ping()
    await client.aclose()

    retrying = aioredis.Redis(port=redis_proxy.port, single_connection_client=True)
    await retrying.ping()
    redis_proxy.reset_connections()
    assert await retrying.ping()  # redis-py's default Retry reconnects and resends
    await retrying.aclose()
    assert redis_proxy.stats.connections_reset == 2


async def test_reset_breaks_a_blocked_command(redis_proxy: FaultProxy, redis_key: str) -> None:
    """A command waiting for the broker fails with ConnectionError when the connection resets."""
    client = aioredis.Redis(port=redis_proxy.port, retry=_no_retry())
    blocked = asyncio.create_task(client.blpop([redis_key], timeout=10))
    await asyncio.sleep(0.3)
    redis_proxy.reset_connections()
    with pytest.raises(redis.exceptions.ConnectionError):
        await asyncio.wait_for(blocked, timeout=5)
    assert await client.ping()
    await client.aclose()


async def test_reset_sends_rst_to_the_client(echo_server: tuple[str, int]) -> None:
    """A reset reaches the client as ECONNRESET, not as an orderly close."""
    async with FaultProxy(*echo_server) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"ping"
        proxy.reset_connections()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), timeout=5)
        writer.close()
        await asyncio.sleep(0.1)
        assert proxy.stats.connections_open == 0


async def test_bandwidth_paces_a_large_value(redis_proxy: FaultProxy, redis_key: str) -> None:
    """Sending 200 kB at 100 kB/s takes about two seconds."""
    client = aioredis.Redis(port=redis_proxy.port, socket_timeout=10)
    await client.ping()
    redis_proxy.set_bandwidth(100_000)
    elapsed = await _elapsed(lambda: client.set(redis_key, b"x" * 200_000))
    assert 1.5 <= elapsed < 10
    redis_proxy.set_bandwidth(None)
    assert len(await client.get(redis_key)) == 200_000
    await client.aclose()


async def test_nats_reconnects_by_itself_after_reset() -> None:
    """nats-py pub/sub works through the proxy and resumes on its own after a reset."""
    if not _reachable(NATS):
        pytest.skip("no NATS on 127.0.0.1:4222")
    async with FaultProxy(*NATS) as proxy:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        client = await nats.connect(
            proxy.url_for("nats"),
            reconnect_time_wait=0.1,
            max_reconnect_attempts=-1,
            reconnected_cb=on_reconnect,
            dont_randomize=True,
        )
        subject = _unique("subject")
        subscription = await client.subscribe(subject)
        await client.publish(subject, b"first")
        assert (await subscription.next_msg(timeout=5)).data == b"first"

        proxy.reset_connections()
        await asyncio.wait_for(reconnected.wait(), timeout=10)
        await client.publish(subject, b"second")
        assert (await subscription.next_msg(timeout=5)).data == b"second"
        assert proxy.stats.connections_opened >= 2
        await client.close()


async def test_jitter_never_reorders_bytes(echo_server: tuple[str, int]) -> None:
    """10,000 numbered lines come back in order through 1 ms ± 1 ms latency each way."""
    count = 10_000
    async with FaultProxy(*echo_server, seed=7) as proxy:
        proxy.set_latency(0.001, jitter=0.001)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        async def send() -> None:
            for start in range(0, count, 50):
                writer.write(b"".join(b"%d\n" % n for n in range(start, start + 50)))
                await writer.drain()
                await asyncio.sleep(0.0002)  # many chunks, so jitter has something to reorder

        sender = asyncio.create_task(send())
        received = [int(await reader.readline()) for _ in range(count)]
        await sender
        writer.close()
    assert received == list(range(count))


async def test_blackholed_fast_producer_is_capped(echo_server: tuple[str, int]) -> None:
    """Behind a partition the proxy holds at most about max_held_bytes, then stops reading."""
    cap = 1024 * 1024
    async with FaultProxy(*echo_server, max_held_bytes=cap) as proxy:
        proxy.blackhole()
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        block = b"x" * 65536

        async def flood() -> None:
            for _ in range(32 * 16):  # 32 MiB, far more than the cap and socket buffers
                writer.write(block)
                await writer.drain()

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        assert not flooding.done()  # the producer is blocked by backpressure
        assert cap <= proxy.stats.bytes_held <= cap + 65536
        flooding.cancel()
        writer.transport.abort()


async def test_stop_closes_connections_and_is_idempotent(echo_server: tuple[str, int]) -> None:
    """stop() ends every connection (clients see EOF or a reset) and may be called twice."""
    proxy = FaultProxy(*echo_server)
    await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"ping"
    await proxy.stop()
    await proxy.stop()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(100), timeout=5) == b""
    stats = proxy.stats
    assert stats.connections_opened == stats.connections_closed == 1
    writer.close()


async def test_unreachable_upstream_resets_the_client() -> None:
    """When the broker refuses the connection, the client gets a reset, not a silent hang."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with FaultProxy("127.0.0.1", closed_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), timeout=5)
        writer.close()


def test_threaded_proxy_serves_sync_clients() -> None:
    """ThreadedFaultProxy runs on its own thread, so a synchronous redis-py client can use it."""
    if not _reachable(REDIS):
        pytest.skip("no Redis on 127.0.0.1:6379")
    key = _unique("sync")
    with ThreadedFaultProxy(*REDIS) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=5)
        client.set(key, b"sync")
        assert client.get(key) == b"sync"
        proxy.set_latency(0.05)
        started = time.monotonic()
        client.ping()
        assert 0.09 <= time.monotonic() - started < 2.0
        proxy.clear()
        client.delete(key)
        assert proxy.stats.connections_opened == 1
        client.close()


async def test_threaded_proxy_controlled_from_a_scheduler_coroutine(
    echo_server: tuple[str, int],
) -> None:
    """A fault scheduler coroutine in the harness's loop controls a proxy on another thread."""
    with ThreadedFaultProxy(*echo_server) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        async def partition_for(seconds: float) -> None:
            proxy.blackhole()
            await asyncio.sleep(seconds)
            proxy.blackhole(False)

        scheduler = asyncio.create_task(partition_for(0.5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        writer.write(b"late")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"late"
        assert time.monotonic() - started >= 0.3
        await scheduler
        writer.close()


# --------------------------------------------------------------------------- Kafka routing


def _kafka_request(client_id: bytes | None, body: bytes = b"", flexible: bool = False) -> bytes:
    """A Kafka request: header v1 (or v2, with an empty tagged-field block) and ``body``."""
    name = struct.pack(">h", -1) if client_id is None else struct.pack(">h", len(client_id))
    header = struct.pack(">hhi", 18, 3 if flexible else 2, 42) + name + (client_id or b"")
    payload = header + (b"\x00" if flexible else b"") + body
    return struct.pack(">i", len(payload)) + payload


async def _client_id_of(data: bytes) -> tuple[bytes, str | None]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_kafka_client_id(reader)


async def test_kafka_client_id_is_read_from_the_first_request_header() -> None:
    """Known answers: header v1 and flexible v2 (client_id stays a plain STRING), a null id,
    a truncated request; the bytes read are exactly the request's start, nothing more."""
    request = _kafka_request(b"brokerlab-r1-producer-0", b"body")
    read, client_id = await _client_id_of(request)
    assert client_id == "brokerlab-r1-producer-0"
    assert read == request[: 4 + 10 + len(b"brokerlab-r1-producer-0")]
    flexible = _kafka_request(b"rdkafka-consumer-1", b"\x01\x02", flexible=True)
    assert (await _client_id_of(flexible))[1] == "rdkafka-consumer-1"
    assert await _client_id_of(_kafka_request(None)) == (_kafka_request(None)[:14], None)
    assert await _client_id_of(request[:9]) == (request[:9], None)
    assert await _client_id_of(request[:20]) == (request[:20], None)
    # a length the request's size cannot hold is no client_id
    lying = struct.pack(">ihhih", 12, 18, 2, 1, 500) + b"x" * 20
    assert (await _client_id_of(lying))[1] is None


async def test_kafka_router_hands_each_connection_to_its_clients_proxy(
    echo_server: tuple[str, int],
) -> None:
    """Two clients on the one router port: the one whose proxy is blackholed gets nothing
    back, the other gets its whole request echoed (the header the router read included); a
    connection of no known client goes through the fault-free proxy."""
    proxies = {name: FaultProxy(*echo_server, listen=False) for name in ("a", "b", "other")}
    seen: list[str | None] = []

    def route(client_id: str | None) -> FaultProxy:
        seen.append(client_id)
        return proxies.get((client_id or "").rpartition("-")[2], proxies["other"])

    router = KafkaRouter(route)
    for proxy in proxies.values():
        await proxy.start()
    await router.start()
    try:
        proxies["a"].blackhole()
        streams = {}
        for name in ("run-a", "run-b", "stranger"):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            request = _kafka_request(name.encode(), b"payload-" + name.encode())
            writer.write(request)
            streams[name] = (reader, writer, request)
        for name in ("run-b", "stranger"):
            reader, _writer, request = streams[name]
            echoed = await asyncio.wait_for(reader.readexactly(len(request)), timeout=5)
            assert echoed == request
        reader, _writer, request = streams["run-a"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=0.5)
        proxies["a"].blackhole(False)
        assert await asyncio.wait_for(reader.readexactly(len(request)), timeout=5) == request
        assert sorted(seen, key=str) == ["run-a", "run-b", "stranger"]
        assert [proxies[n].stats.connections_opened for n in ("a", "b", "other")] == [1, 1, 1]
        for _reader, writer, _request in streams.values():
            writer.close()
    finally:
        await router.stop()
        for proxy in proxies.values():
            await proxy.stop()


async def test_kafka_router_stop_resets_a_connection_still_being_read(
    echo_server: tuple[str, int],
) -> None:
    """A client that connects and sends half a header is reset when the router stops."""
    proxy = FaultProxy(*echo_server, listen=False)
    await proxy.start()
    router = KafkaRouter(lambda _client_id: proxy)
    await router.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"\x00\x00")
    await asyncio.sleep(0.1)
    await router.stop()
    await router.stop()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(100), timeout=5) == b""
    assert proxy.stats.connections_opened == 0
    await proxy.stop()
    writer.close()
