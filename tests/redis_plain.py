"""A second Redis Streams adapter, plain redis-py without the fast path: the test that adding a
broker takes one module (this one, the adapter and its record) and one registry line
(``register(TARGET)`` in tests/test_registry.py, or an entry point naming ``redis_plain:TARGET``).

Deliberately simple: each batch is one redis-py pipeline of XADDs awaited in ``publish``, and
consumers read with XREADGROUP and ack with XACK. Every client (control, producer-N,
consumer-N) has its own connection through :meth:`url_for`, so network faults work through the
per-client proxies; it has no crash hooks, so its record must not list client crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis

from brokerlab.adapters.harness import (
    BrokerAdapter,
    PublishRejected,
    PublishResults,
    Received,
    now,
)
from brokerlab.adapters.targets import REDIS_URL, Target
from brokerlab.core.vocabulary import NETWORK_FAULTS


class PlainRedisAdapter(BrokerAdapter):
    """Stream ``brokerlab:<run id>``, one consumer group, redis-py for everything."""

    target = "redis-plain"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = self.names.joined(":")
        self.clients: dict[str, aioredis.Redis] = {}

    def _client(self, name: str) -> aioredis.Redis:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = aioredis.Redis.from_url(
                self.url_for(name), socket_connect_timeout=5.0, socket_timeout=10.0
            )
        return client

    async def setup(self) -> None:
        control = self._client("control")
        server = await control.info("server")
        self.info.update({"server_version": server.get("redis_version"), "stream": self.key})
        await control.xgroup_create(self.key, self.names.group, id="0", mkstream=True)

    async def open_consumer(self, consumer: int) -> None:
        await self._client(f"consumer-{consumer}").ping()

    async def publish(
        self, producer: int, payloads: Sequence[bytes], dedup_ids: Sequence[str] | None
    ) -> Awaitable[PublishResults]:
        pipe = self._client(f"producer-{producer}").pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(self.key, {"d": payload})
        done: asyncio.Future[PublishResults] = asyncio.get_running_loop().create_future()
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as error:  # sent, answer lost: the outcome is unknown
            done.set_result([ConnectionError(str(error))] * len(payloads))
            return done
        t = now()
        done.set_result(
            [PublishRejected(str(r)) if isinstance(r, Exception) else t for r in replies]
        )
        return done

    async def fetch(self, consumer: int, max_messages: int, wait: float) -> list[Received]:
        reply = await self._client(f"consumer-{consumer}").xreadgroup(
            self.names.group,
            f"consumer-{consumer}",
            {self.key: ">"},
            count=max_messages,
            block=max(1, int(wait * 1000)),
        )
        if not reply:
            return []
        return [(fields[b"d"], 1, entry_id) for entry_id, fields in reply[0][1]]

    async def ack(self, consumer: int, handles: Sequence[Any]) -> None:
        await self._client(f"consumer-{consumer}").xack(self.key, self.names.group, *handles)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client("control").delete(self.key)
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


#: Its record: Redis Streams measured through plain redis-py, on the lab's own redis-server or
#: the one --redis-url names; network faults and slow consumers, no crashes (no crash hooks).
TARGET = Target(
    name="redis-plain",
    kind="redis-streams",
    adapter=PlainRedisAdapter,
    url=REDIS_URL,
    server="redis",
    faults=NETWORK_FAULTS | {"slow-consumer"},
    single_process_rate=2_000.0,
)
