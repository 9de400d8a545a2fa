"""A TCP fault proxy between clients and a broker: latency, bandwidth, partitions, resets.

The lab puts a :class:`FaultProxy` on a free loopback port, points clients at it instead of at the
broker, and changes its faults while a run goes, so a scenario's ``faults`` timeline can say
"partition the clients from the broker at 10 s for 5 s" and the same run measures what the broker
and its client library do about it. Everything stays on loopback; the proxy never touches the
broker process.

How each fault models the network, and why:

- **Latency** is added per chunk, not per message: the proxy cannot see packets or protocol
  frames, but each ``read()`` returns what arrived since the last one, so delaying every chunk by
  the same one-way delay shifts the whole byte stream by that delay and keeps its timing shape
  (like ``netem delay`` per packet). Each direction of a connection has one queue of
  ``(release_time, bytes)`` and one writer task; jitter is drawn per chunk but release times are
  made monotonic per direction, so bytes are never reordered (TCP never reorders what it delivers).
- **Bandwidth** is a token bucket per direction, shared by every connection, because it models the
  link between the clients and the broker, not one socket. Chunks are cut into slices of about
  :data:`BANDWIDTH_SLICE_SECONDS` worth of bytes so the flow is paced smoothly instead of in
  bursts of one large chunk followed by a long silence.
- **Blackhole** (partition) *holds* bytes instead of dropping them or raising errors. A real
  partition drops packets and TCP retransmits them until the link heals or a timeout fires; to the
  application that looks exactly like bytes that are late, then delivered in order. So while the
  blackhole is on nothing is delivered and nobody gets an error (clients see only their own
  timeouts), and when it is lifted every held byte is delivered, in order, at once. New
  connections are accepted (the proxy's listening socket cannot pretend not to exist), but the
  proxy does not connect to the broker until the partition heals, just as a handshake would not
  complete. Bytes already handed to the kernel before the blackhole went on are delivered: they
  were already "on the wire". A client that closes its socket during the partition is
  treated as TCP would treat it: once the partition heals the broker gets the held bytes, then the
  close. The proxy never gives up on held bytes by itself (Linux TCP gives up after about 15
  minutes of retransmissions); a scenario that wants that follows the partition with
  :meth:`FaultProxy.reset_connections`.
- **Reset** aborts every open connection with an RST (``SO_LINGER`` 0, then ``transport.abort()``)
  on both sides, dropping whatever is held: clients see ``ConnectionResetError`` or EOF and must
  reconnect, as after a middlebox or broker-side reset.

Backpressure: writers honour ``drain()``, and a direction stops reading its source while more than
``max_held_bytes`` (default :data:`MAX_HELD_BYTES`) are held, so a fast producer behind a
blackhole fills its own socket buffers and blocks, instead of the proxy eating unbounded memory.
Under latency the same cap acts like a TCP window: one connection carries at most about
``max_held_bytes / delay`` bytes per second each way (8 MiB / 100 ms = 80 MiB/s, far above what a
lab run needs). A broker that refuses the upstream connection is passed on to the client as a
reset.

:class:`ThreadedFaultProxy` runs a proxy on its own event loop in a daemon thread, for callers
that are synchronous or run their own event loop; its fault methods are thread-safe.

:class:`KafkaRouter` is for clients that do not stay at the address they were given: Kafka
clients reconnect to the address the broker advertises. The broker advertises the router's one
listening port, and the router hands each accepted connection to the :class:`FaultProxy` of the
client that opened it (:meth:`FaultProxy.adopt`), known by the ``client_id`` of the
connection's first request; those proxies need no listening socket of their own
(``listen=False``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

MAX_HELD_BYTES = 8 * 1024 * 1024
"""Per connection and direction, stop reading the source while more than this is held."""

READ_CHUNK_BYTES = 64 * 1024
"""Largest chunk read from a socket at once; one chunk is the unit latency is applied to."""

BANDWIDTH_SLICE_SECONDS = 0.02
"""A rate-limited chunk is written in slices of about this much transfer time (and bucket depth)."""

MIN_BANDWIDTH_SLICE_BYTES = 256
"""Smallest slice, so very low rates do not degenerate into byte-by-byte writes."""

_T = TypeVar("_T")

THREAD_CALL_TIMEOUT_S = 30.0
"""How long a :class:`ThreadedFaultProxy` call waits for the proxy's loop before giving up."""


class Direction(StrEnum):
    """Which way bytes flow through the proxy."""

    TO_UPSTREAM = "to_upstream"
    TO_CLIENT = "to_client"


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of what went through a proxy since it was created.

    Attributes:
        connections_opened: client connections accepted.
        connections_closed: client connections finished, for any reason (close, error, reset).
        connections_reset: connections aborted by :meth:`FaultProxy.reset_connections`.
        bytes_to_upstream: bytes delivered from clients to the broker.
        bytes_to_client: bytes delivered from the broker to clients.
        bytes_held: bytes read but not yet delivered (delayed, paced or blackholed) right now.
    """

    connections_opened: int = 0
    connections_closed: int = 0
    connections_reset: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    bytes_held: int = 0

    @property
    def connections_open(self) -> int:
        """Connections accepted and not yet finished."""
        return self.connections_opened - self.connections_closed


class _TokenBucket:
    """Paces bytes to ``rate`` per second with a bucket one slice deep.

    Callers *reserve* tokens and may go into debt; the debt is how long they sleep. Reserving is
    atomic in the event loop, so concurrent connections are served in the order they asked.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.slice_bytes = max(MIN_BANDWIDTH_SLICE_BYTES, int(rate * BANDWIDTH_SLICE_SECONDS))
        self._tokens = float(self.slice_bytes)
        self._updated = now

    def reserve(self, size: int, now: float) -> float:
        """Take ``size`` tokens; return the seconds to wait before sending them."""
        self._tokens = min(
            float(self.slice_bytes), self._tokens + (now - self._updated) * self.rate
        )
        self._updated = now
        self._tokens -= size
        return max(0.0, -self._tokens / self.rate)


class _Flow:
    """One direction of one connection: reads its source, holds chunks, delivers them in order."""

    def __init__(self, proxy: FaultProxy, direction: Direction) -> None:
        self._proxy = proxy
        self._direction = direction
        # (release_time, chunk); None as chunk marks the source's EOF.
        self._chunks: deque[tuple[float, bytes | None]] = deque()
        self._last_release = 0.0
        self._held = 0
        self._has_chunks = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()

    def push(self, data: bytes) -> None:
        """Hold ``data`` as if just read: stamped with this moment's delay (empty means EOF)."""
        loop = asyncio.get_running_loop()
        # Monotonic release times: jitter may shorten one chunk's delay, never reorder bytes.
        release = max(loop.time() + self._proxy._draw_delay(), self._last_release)
        self._last_release = release
        self._chunks.append((release, data or None))
        self._held += len(data)
        self._proxy._held += len(data)
        self._has_chunks.set()

    async def read_from(self, source: asyncio.StreamReader) -> None:
        """Read chunks until EOF, stamping each with its release time."""
        while True:
            while self._held >= self._proxy.max_held_bytes:
                self._has_room.clear()
                await self._has_room.wait()
            data = await source.read(READ_CHUNK_BYTES)
            self.push(data)
            if not data:
                return

    async def write_to(self, destination: asyncio.StreamWriter) -> None:
        """Deliver held chunks when due, paced and only while no blackhole is on."""
        loop = asyncio.get_running_loop()
        proxy = self._proxy
        while True:
            while not self._chunks:
                self._has_chunks.clear()
                await self._has_chunks.wait()
            release, data = self._chunks[0]
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                await proxy._flowing.wait()
                self._chunks.popleft()
                if destination.can_write_eof():
                    destination.write_eof()
                return
            offset = 0
            while offset < len(data):
                size = await proxy._pace(self._direction, len(data) - offset)
                # Checked last, right before writing, so a blackhole set during a latency or
                # pacing sleep still holds these bytes.
                await proxy._flowing.wait()
                destination.write(data[offset : offset + size])
                offset += size
                self._held -= size
                proxy._held -= size
                proxy._count_delivered(self._direction, size)
                await destination.drain()
            self._chunks.popleft()
            if self._held < proxy.max_held_bytes // 2:
                self._has_room.set()

    def drop(self) -> None:
        """Forget held bytes (the connection was aborted)."""
        self._proxy._held -= self._held
        self._held = 0
        self._chunks.clear()


def _abort_with_rst(writer: asyncio.StreamWriter | None) -> None:
    """Close a socket so the peer gets an RST, not a FIN: that is what "reset" means."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One client connection and, once the network lets it through, its upstream connection."""

    def __init__(
        self,
        proxy: FaultProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        prefix: bytes = b"",
    ) -> None:
        self._proxy = proxy
        self._prefix = prefix
        self._client_reader = client_reader
        self._client_writer = client_writer
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._to_upstream = _Flow(proxy, Direction.TO_UPSTREAM)
        self._to_client = _Flow(proxy, Direction.TO_CLIENT)
        self._task: asyncio.Task[None] | None = None
        self._aborted = False

    async def run(self) -> None:
        """Relay both directions until both ends close, one fails, or the proxy aborts us."""
        self._task = asyncio.current_task()
        if self._prefix:  # bytes a router read to pick this proxy: the stream's first chunk
            self._to_upstream.push(self._prefix)
        try:
            async with asyncio.TaskGroup() as group:
                # The client may write at once (into the held queue), like into a socket buffer.
                group.create_task(self._to_upstream.read_from(self._client_reader))
                group.create_task(self._connect_upstream(group))
        except* OSError:
            # A peer reset, refused or broke the connection: pass it on as a reset.
            self.abort()
        except* asyncio.CancelledError:
            if not self._aborted:
                raise
        finally:
            self._to_upstream.drop()
            self._to_client.drop()
            for writer in (self._client_writer, self._upstream_writer):
                if writer is not None:
                    writer.close()

    async def _connect_upstream(self, group: asyncio.TaskGroup) -> None:
        # During a partition the handshake to the broker would not complete either.
        await self._proxy._flowing.wait()
        upstream_reader, self._upstream_writer = await asyncio.open_connection(
            self._proxy.upstream_host, self._proxy.upstream_port
        )
        group.create_task(self._to_upstream.write_to(self._upstream_writer))
        group.create_task(self._to_client.read_from(upstream_reader))
        group.create_task(self._to_client.write_to(self._client_writer))

    def abort(self) -> None:
        """Reset both sides now and stop relaying; held bytes are dropped."""
        if self._aborted:
            return
        self._aborted = True
        _abort_with_rst(self._client_writer)
        _abort_with_rst(self._upstream_writer)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()


class FaultProxy:
    """An asyncio TCP proxy to one upstream broker whose network faults change at any time.

    Use it inside the event loop that runs the clients (``async with FaultProxy(...) as proxy``);
    the fault methods are plain synchronous calls, so a fault scheduler coroutine in the same loop
    can call them between awaits. From other threads use :class:`ThreadedFaultProxy`.

    Args:
        upstream_host: the broker's host.
        upstream_port: the broker's port.
        listen_host: where clients connect; keep it on loopback.
        listen_port: 0 picks a free port, read it from :attr:`port` after :meth:`start`.
        seed: seeds the jitter draws, so a run's delays repeat.
        max_held_bytes: per connection and direction, stop reading the source beyond this.
        listen: open a listening socket of its own; False for a proxy that only relays the
            connections a :class:`KafkaRouter` hands it (:meth:`adopt`).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        seed: int | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
        listen: bool = True,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.max_held_bytes = max_held_bytes
        self.listen = listen
        self._listen_port = listen_port
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._running = False
        self._connections: set[_Connection] = set()
        self._connection_tasks: set[asyncio.Task[Any]] = set()
        self._latency = 0.0
        self._jitter = 0.0
        self._bandwidth: float | None = None
        self._buckets: dict[Direction, _TokenBucket] = {}
        # Set while traffic flows; cleared by a blackhole.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._opened = 0
        self._closed = 0
        self._reset = 0
        self._delivered = dict.fromkeys(Direction, 0)
        self._held = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for clients; :attr:`port` and :meth:`url_for` work from now on."""
        if self._running:
            return
        if self.listen:
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self._listen_port
            )
            self._listen_port = self._server.sockets[0].getsockname()[1]
        self._running = True

    async def stop(self) -> None:
        """Stop listening and abort every connection (held bytes are dropped). Idempotent."""
        if not self._running:
            return
        self._running = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        if server is not None:
            await server.wait_closed()
        if self._connection_tasks:
            await asyncio.gather(*self._connection_tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port clients connect to (the chosen free port after :meth:`start`)."""
        return self._listen_port

    def url_for(self, scheme: str) -> str:
        """A client URL pointing at the proxy, e.g. ``url_for("nats")`` -> ``nats://127.0.0.1:P``."""
        return f"{scheme}://{self.listen_host}:{self.port}"

    # -- faults ------------------------------------------------------------------------------

    def set_latency(self, delay: float, jitter: float = 0.0) -> None:
        """Add ``delay`` ± ``jitter`` seconds (uniform, never negative) one-way, per chunk.

        Applies to chunks read from now on; bytes already held keep their release time, and order
        is always kept, so lowering the delay lets later chunks wait behind earlier ones.
        """
        if delay < 0 or jitter < 0:
            raise ValueError(f"latency needs delay >= 0 and jitter >= 0, got {delay}, {jitter}")
        self._latency = delay
        self._jitter = jitter

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Limit each direction of the link to ``bytes_per_second``; None removes the limit."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s or None, got {bytes_per_second}")
        self._bandwidth = bytes_per_second
        self._buckets.clear()

    def blackhole(self, on: bool = True) -> None:
        """Partition clients from the broker: hold every byte while on, deliver them when lifted.

        Holding (rather than dropping) is the faithful model of TCP under a packet-dropping
        partition: the sender retransmits, so the receiver gets the bytes late and in order.
        Nobody gets an error from the proxy; clients only see their own timeouts.
        """
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def reset_connections(self) -> None:
        """Abort every open connection now with an RST on both sides; clients must reconnect."""
        for connection in list(self._connections):
            connection.abort()
            self._reset += 1

    def clear(self) -> None:
        """Remove every fault: no latency, no bandwidth limit, no blackhole."""
        self.set_latency(0.0)
        self.set_bandwidth(None)
        self.blackhole(False)

    @property
    def blackholed(self) -> bool:
        """Whether a blackhole is on."""
        return not self._flowing.is_set()

    @property
    def stats(self) -> ProxyStats:
        """Counters since creation, as an immutable snapshot."""
        return ProxyStats(
            connections_opened=self._opened,
            connections_closed=self._closed,
            connections_reset=self._reset,
            bytes_to_upstream=self._delivered[Direction.TO_UPSTREAM],
            bytes_to_client=self._delivered[Direction.TO_CLIENT],
            bytes_held=self._held,
        )

    # -- internals used by connections -------------------------------------------------------

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        await self.adopt(client_reader, client_writer)

    async def adopt(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        prefix: bytes = b"",
    ) -> None:
        """Relay a client connection accepted elsewhere under this proxy's faults until it ends.

        ``prefix`` is what the acceptor already read from the client (a :class:`KafkaRouter`
        reads the first request's header to choose the proxy); it goes upstream first, held,
        delayed and paced like every later byte.
        """
        if not self._running:  # accepted while stopping
            _abort_with_rst(client_writer)
            return
        connection = _Connection(self, client_reader, client_writer, prefix)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(connection)
        self._connection_tasks.add(task)
        self._opened += 1
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self._connection_tasks.discard(task)
            self._closed += 1

    def _draw_delay(self) -> float:
        if self._jitter == 0.0:
            return self._latency
        return max(0.0, self._latency + self._rng.uniform(-self._jitter, self._jitter))

    async def _pace(self, direction: Direction, wanted: int) -> int:
        """Wait for the bandwidth to send up to ``wanted`` bytes; return how many to send."""
        if self._bandwidth is None:
            return wanted
        loop = asyncio.get_running_loop()
        bucket = self._buckets.get(direction)
        if bucket is None:
            bucket = self._buckets[direction] = _TokenBucket(self._bandwidth, loop.time())
        size = min(wanted, bucket.slice_bytes)
        wait = bucket.reserve(size, loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
        return size

    def _count_delivered(self, direction: Direction, size: int) -> None:
        self._delivered[direction] += size


#: Size, api_key, api_version, correlation_id, client_id length: a Kafka request's fixed start.
_KAFKA_HEAD = struct.Struct(">ihhih")
#: Longest client_id a :class:`KafkaRouter` reads to route a connection (longer: unrouted).
MAX_KAFKA_CLIENT_ID = 1024


async def read_kafka_client_id(reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
    """Read a connection's first Kafka request up to its client_id; return the bytes read and
    the client_id (None: null, unreadable, or the client closed first).

    Every request header from v1 on starts ``int32 size, int16 api_key, int16 api_version,
    int32 correlation_id, int16-length client_id``; the flexible header v2 keeps client_id a
    plain nullable STRING (its tagged fields come after it). Only header v0, which no client
    uses for a connection's first request, lacks it. The bytes read are returned so the caller
    can send them on: nothing is consumed.
    """
    head = b""
    try:
        head = await reader.readexactly(_KAFKA_HEAD.size)
        size, _api_key, _api_version, _correlation_id, length = _KAFKA_HEAD.unpack(head)
        if length < 0 or length > MAX_KAFKA_CLIENT_ID or size < _KAFKA_HEAD.size - 4 + length:
            return head, None
        name = await reader.readexactly(length)
    except asyncio.IncompleteReadError as error:
        return head + error.partial, None
    return head + name, name.decode("utf-8", "replace")


class KafkaRouter:
    """One listening socket in front of many :class:`FaultProxy` objects, for Kafka clients.

    A Kafka client bootstraps from the address it is given, then opens its connections to the
    address each broker *advertises* in Metadata (and FindCoordinator) answers, so a port per
    client cannot stay in its path: every client of a broker ends up at the same advertised
    address. Make the broker advertise this router's address, and the router hands each
    accepted connection to the proxy of the client that opened it, known by the client_id of
    the connection's first request (:func:`read_kafka_client_id`), so each client's faults
    still apply to all of its own connections. The bytes read to decide are passed on first.

    Args:
        route: the proxy for a client_id (None when the first request carries none).
        listen_host: where clients connect; keep it on loopback.
        listen_port: the address the broker advertises (0 picks a free one).
    """

    def __init__(
        self,
        route: Callable[[str | None], FaultProxy],
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.route = route
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._waiting: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The port clients connect to (and the broker advertises)."""
        return self._listen_port

    async def start(self) -> None:
        """Listen on the advertised address."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self._listen_port
            )
            self._listen_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening; connections not yet routed are reset (routed ones end with their
        proxies). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task, writer in list(self._waiting.items()):
            _abort_with_rst(writer)
            task.cancel()
        await server.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = client_writer
        try:
            prefix, client_id = await read_kafka_client_id(client_reader)
        except (OSError, asyncio.CancelledError):
            _abort_with_rst(client_writer)
            return
        finally:
            self._waiting.pop(task, None)
        if self._server is None:
            _abort_with_rst(client_writer)
            return
        await self.route(client_id).adopt(client_reader, client_writer, prefix)


class ThreadedFaultProxy:
    """A :class:`FaultProxy` on its own event loop in a daemon thread.

    For synchronous code (a sync client, a notebook) and for harnesses that run their own event
    loop and want the proxy's relaying not to compete with their measurements. ``start()`` and
    ``stop()`` block until done; every fault method is thread-safe and returns once the fault is
    in force in the proxy's loop, so a command sent right after ``blackhole()`` is held.
    Called from a coroutine in another loop, these calls block that loop only for a hop between
    threads (well under a millisecond on an idle machine).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        seed: int | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.proxy = FaultProxy(
            upstream_host,
            upstream_port,
            listen_host,
            listen_port,
            seed=seed,
            max_held_bytes=max_held_bytes,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop thread and the proxy; returns once it listens."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"fault-proxy-{id(self):x}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.start(), loop).result(THREAD_CALL_TIMEOUT_S)
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self) -> None:
        """Stop the proxy, its loop and its thread. Idempotent."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(
                THREAD_CALL_TIMEOUT_S
            )
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_CALL_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, method: Callable[..., _T], *args: Any) -> _T:
        """Run ``method(*args)`` in the proxy's loop and wait for it (directly if already there)."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return method(*args)
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(method(*args))
            except BaseException as exc:  # handed to the caller's thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(THREAD_CALL_TIMEOUT_S)

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self.proxy.port

    def url_for(self, scheme: str) -> str:
        """A client URL pointing at the proxy."""
        return self.proxy.url_for(scheme)

    def set_latency(self, delay: float, jitter: float = 0.0) -> None:
        """See :meth:`FaultProxy.set_latency`."""
        self._call(self.proxy.set_latency, delay, jitter)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """See :meth:`FaultProxy.set_bandwidth`."""
        self._call(self.proxy.set_bandwidth, bytes_per_second)

    def blackhole(self, on: bool = True) -> None:
        """See :meth:`FaultProxy.blackhole`."""
        self._call(self.proxy.blackhole, on)

    def reset_connections(self) -> None:
        """See :meth:`FaultProxy.reset_connections`."""
        self._call(self.proxy.reset_connections)

    def clear(self) -> None:
        """See :meth:`FaultProxy.clear`."""
        self._call(self.proxy.clear)

    @property
    def blackholed(self) -> bool:
        """Whether a blackhole is on."""
        return self._call(lambda: self.proxy.blackholed)

    @property
    def stats(self) -> ProxyStats:
        """Counters since creation, as an immutable snapshot."""
        return self._call(lambda: self.proxy.stats)
