"""Fault injection on real brokers: the scenario's ``faults`` timeline, played on the run's clock.

One scheduler serves every adapter; adapters only know how to connect, drop and reconnect a
client. What each action does on a real run:

=================  ==========================================================================
action             what happens (``at`` .. ``at + duration``)
=================  ==========================================================================
broker-kill        SIGKILL of the lab's own broker; after ``duration`` a restart on the same
                   port and data folder (the window ends when the broker is ready again)
broker-pause       SIGSTOP, then SIGCONT: connections stay open, nothing is answered
partition          the targeted clients' proxies hold every byte (TCP retransmitting), then
                   deliver them in order
latency            ``delay`` ± ``jitter`` added one way on the targeted clients' proxies
bandwidth          the targeted clients' links limited to ``bandwidth`` bytes/s each way
connection-reset   every connection of the targeted clients reset (RST) once, at ``at``
consumer-crash     the consumer is cancelled mid-message, acking nothing, its connection is
                   dropped; a new one with the same index and name starts after ``duration``
producer-crash     the producer stops; its in-flight publishes end unknown; after ``duration``
                   it restarts and sends its missed messages with their original intended
                   times (``publish_delay`` shows the gap)
slow-consumer      the consumers' processing times multiplied by ``factor``
=================  ==========================================================================

Per-client proxies. Network faults must hit only the clients they target, so in a fault run every
client gets its own :class:`~adapters.proxy.FaultProxy`: ``control`` (setup, reclaiming,
teardown), ``producer-N`` and ``consumer-N`` each connect to their own loopback port, and a fault
targeting ``consumer-1`` changes one proxy. ``broker`` and ``all`` mean every proxy, ``consumers``
and ``producers`` every proxy of that role. All proxies share one event loop in a daemon thread,
so relaying bytes does not run on (and delay) the harness's own loop. Kafka clients connect
wherever the broker's Metadata answers send them, so for a target whose record says
``advertised_listener`` the lab's own broker advertises one :class:`~adapters.proxy.KafkaRouter`
port instead, which hands each connection to its client's proxy by the Kafka ``client_id`` of its
first request; on such a target given by URL, network faults and delay are refused.

The scenario's ``network.delay`` becomes every proxy's latency for the whole run: a constant is
exact, a uniform distribution is exact in range (``mean ± half-width``); other distributions are
approximated by a uniform jitter with the same mean and standard deviation (cut at zero), since the
proxy draws ``delay ± jitter`` per chunk. Overlapping latency faults add up on top of it.

Refusals (a :class:`FaultRefused`, a user error, before anything runs): an action the target's
record (:mod:`brokerlab.adapters.targets`) does not list; ``broker-kill`` and ``broker-pause``
only ever touch a broker the lab started for this run, never a broker given by URL (the machine's
shared services); ``power_loss`` cannot be done to a real broker (a ``kill -9`` keeps the OS page
cache), the simulator models it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import SplitResult, urlsplit, urlunsplit

from brokerlab.adapters.harness.clock import now
from brokerlab.adapters.proxy import FaultProxy, KafkaRouter
from brokerlab.adapters.targets import Target
from brokerlab.core.scenario import (
    Constant,
    Distribution,
    Empirical,
    Exponential,
    Fault,
    LogNormal,
    Scenario,
    Uniform,
)
from brokerlab.core.trace import FaultWindow
from brokerlab.core.vocabulary import BROKER_FAULTS, NETWORK_FAULTS, FaultAction

if TYPE_CHECKING:
    from brokerlab.adapters.embedded import EmbeddedBroker

#: Client faults by the role they hit (both are parts of ``vocabulary.CLIENT_FAULTS``).
CONSUMER_FAULTS: frozenset[FaultAction] = frozenset({"consumer-crash", "slow-consumer"})
PRODUCER_FAULTS: frozenset[FaultAction] = frozenset({"producer-crash"})

#: Longest a broker restart may take before the fault counts as "broker did not come back".
RESTART_TIMEOUT = 15.0
#: Longest one change to the proxies may take (a hop to the proxy thread, normally microseconds).
PROXY_CALL_TIMEOUT = 5.0
#: Default ports when a broker URL does not say.
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "nats": 4222, "tls": 4222, "kafka": 9092}

_T = TypeVar("_T")


class FaultRefused(ValueError):
    """The scenario asks for faults this run must not or cannot play: a user error."""

    def __init__(self, target: str, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{field}: {reason}" for field, reason in self.problems]
        super().__init__(f"cannot play the fault timeline on {target}:\n" + "\n".join(lines))


# --------------------------------------------------------------------------- what may run


def needs_proxies(scenario: Scenario) -> bool:
    """A run with faults or network delay connects its clients through per-client proxies."""
    return bool(scenario.faults) or scenario.network.delay.mean > 0


def check_faults(scenario: Scenario, target: Target, *, own_broker: bool) -> None:
    """Refuse, before anything runs, a timeline this run must not or cannot play.

    Args:
        scenario: the scenario as the target plays it.
        target: the real target's record: which faults it can play, power loss, its URL option
            (for the message that says how to get an own broker instead).
        own_broker: whether the lab starts (and may therefore kill) the broker for this run.
    """
    problems: list[tuple[str, str]] = []
    option = target.url.flag
    for index, fault in enumerate(scenario.faults):
        where = f"faults[{index}]"
        if fault.action not in target.faults:
            played = ", ".join(sorted(target.faults)) or "none"
            problems.append(
                (
                    f"{where}.action",
                    f"{fault.action} is not supported on {target.name} (it plays: {played}); "
                    "play it on the simulator (--target sim)",
                )
            )
            continue
        if fault.power_loss and not target.power_loss:
            problems.append(
                (
                    f"{where}.power_loss",
                    "a real broker cannot lose power: a kill -9 keeps the OS page cache, so "
                    "unsynced writes survive; play power loss on the simulator (--target sim)",
                )
            )
        if fault.action in BROKER_FAULTS and not own_broker:
            problems.append(
                (
                    f"{where}.action",
                    f"{fault.action} only runs on a broker the lab starts itself, never on one "
                    f"given with {option} (a shared service); leave out {option} so "
                    "the lab starts its own, or use a network fault such as partition",
                )
            )
        if fault.action in BROKER_FAULTS and fault.target not in ("broker", "all"):
            problems.append((f"{where}.target", f"{fault.action} hits the broker; use broker"))
        role = fault.target.partition("-")[0]
        if fault.action in CONSUMER_FAULTS and role in ("producer", "producers"):
            problems.append((f"{where}.target", f"{fault.action} needs consumers as target"))
        if fault.action in PRODUCER_FAULTS and role in ("consumer", "consumers"):
            problems.append((f"{where}.target", f"{fault.action} needs producers as target"))
        if fault.action == "latency" and fault.delay is None:
            problems.append((f"{where}.delay", "latency needs the added delay, e.g. 50ms"))
        if fault.action == "bandwidth" and not fault.bandwidth:
            problems.append((f"{where}.bandwidth", "bandwidth needs a limit, e.g. 100000/s"))
        if fault.action in NETWORK_FAULTS and target.advertised_listener and not own_broker:
            problems.append((f"{where}.action", _advertised_refusal(fault.action, target)))
    if scenario.network.delay.mean > 0 and target.advertised_listener and not own_broker:
        problems.append(("network.delay", _advertised_refusal("network delay", target)))
    if problems:
        raise FaultRefused(target.name, problems)


def _advertised_refusal(what: str, target: Target) -> str:
    option = target.url.flag
    return (
        f"{what} needs the lab's fault proxy in the path, and {target.name} clients connect to "
        f"the address the broker advertises, which only a broker the lab starts can be told "
        f"(it advertises the proxy); leave out {option} so the lab starts its own broker, or "
        "play it on the simulator (--target sim)"
    )


def clients_of(scenario: Scenario) -> list[str]:
    """Every client of a run, each of which gets its own proxy."""
    return [
        "control",
        *(f"producer-{i}" for i in range(scenario.producers.count)),
        *(f"consumer-{i}" for i in range(scenario.consumers.count)),
    ]


def targeted(fault: Fault, scenario: Scenario) -> list[str]:
    """The clients a network fault hits: ``broker``/``all`` every one, else a role or one."""
    if fault.target in ("broker", "all"):
        return clients_of(scenario)
    if fault.target in ("producers", "consumers"):
        role = fault.target[:-1]
        return [c for c in clients_of(scenario) if c.startswith(f"{role}-")]
    return [fault.target]


def indexes(fault: Fault, role: str, count: int) -> list[int]:
    """The producers or consumers a crash / slowdown hits (a role-wide target means all)."""
    if fault.target.startswith(f"{role}-"):
        return [int(fault.target.removeprefix(f"{role}-"))]
    return list(range(count))


def delay_as_latency(dist: Distribution) -> tuple[float, float]:
    """``(delay, jitter)`` for the proxy from a one-way delay distribution.

    Constant and uniform are exact; others become a uniform ``mean ± jitter`` with the same
    standard deviation (a uniform of half-width ``w`` has deviation ``w / sqrt(3)``), cut at the
    mean so the proxy never needs a negative delay. An approximation: the tail is lost.
    """
    if isinstance(dist, Constant):
        return dist.value, 0.0
    if isinstance(dist, Uniform):
        return dist.mean, (dist.max - dist.min) / 2
    if isinstance(dist, Exponential):
        std = dist.mean
    elif isinstance(dist, LogNormal):
        std = dist.mean * math.sqrt(math.expm1(dist.sigma**2))
    elif isinstance(dist, Empirical):
        mean = dist.mean
        std = math.sqrt(sum((v - mean) ** 2 for v in dist.values) / len(dist.values))
    else:  # pragma: no cover - validated by the scenario model
        raise TypeError(f"unknown distribution {dist!r}")
    return dist.mean, min(dist.mean, std * math.sqrt(3))


# --------------------------------------------------------------------------- per-client proxies


@dataclass
class _Link:
    """The faults on one client's proxy now; several overlapping entries combine."""

    blackholes: int = 0
    #: fault index -> (delay, jitter) added to the base; delays and jitter ranges add up
    latency: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: fault index -> bytes/s; the tightest limit wins
    bandwidth: dict[int, float] = field(default_factory=dict)


def _proxy_url(url: str, port: int) -> str:
    """``url`` pointing at a loopback proxy port, with its user info, path and query kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class ClientNetwork:
    """One :class:`FaultProxy` per client, all on one loopback event loop in a daemon thread.

    Args:
        url: the broker's URL; proxies forward to its host and port.
        clients: client names (see :func:`clients_of`).
        seed: seeds each proxy's jitter draws.
        delay: the scenario's base one-way delay and jitter, for the whole run.
        front: for clients that connect where the broker tells them (Kafka): the loopback port
            the broker advertises. One :class:`KafkaRouter` listens there and hands each
            connection to its client's proxy by the client_id of its first request (a client's
            id must end with ``-<client name>``); every client bootstraps there too. A
            connection from a client of no known name (the lab's own broker-statistics reader)
            goes through a proxy that never has a fault.
    """

    def __init__(
        self,
        url: str,
        clients: Sequence[str],
        *,
        seed: int,
        delay: tuple[float, float] = (0.0, 0.0),
        front: int | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[parts.scheme])
        self.clients = list(clients)
        self.base = delay
        self.front = front
        self.client_urls: dict[str, str] = {}
        self.router: KafkaRouter | None = None
        #: routed mode: connections handed to each client's proxy ("other": no known client)
        self.routed: dict[str, int] = {}
        self._unrouted: FaultProxy | None = None
        self._seed = seed
        self._proxies: dict[str, FaultProxy] = {}
        self._links = {client: _Link() for client in self.clients}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the proxy thread and one listening proxy per client."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fault-proxies", daemon=True)
        self._thread.start()
        self._loop = loop
        host, port = self.upstream
        routed = self.front is not None
        for number, client in enumerate(self.clients):
            proxy = FaultProxy(host, port, seed=self._seed * 1000 + number, listen=not routed)
            await self._in_proxy_loop(proxy.start())
            self._proxies[client] = proxy
            self.client_urls[client] = _proxy_url(self.url, proxy.port)
        if self.front is not None:
            self._unrouted = FaultProxy(host, port, listen=False)
            await self._in_proxy_loop(self._unrouted.start())
            self.router = KafkaRouter(self.route, listen_port=self.front)
            try:
                await self._in_proxy_loop(self.router.start())
            except OSError as error:
                raise RuntimeError(
                    f"cannot listen on 127.0.0.1:{self.front}, the port the broker advertises "
                    f"for its clients: {error}"
                ) from error
            self.client_urls = dict.fromkeys(self.clients, _proxy_url(self.url, self.front))
        await self._apply(self.clients)

    def route(self, client_id: str | None) -> FaultProxy:
        """The proxy of the client whose id ends with ``-<client name>`` (the adapters name
        theirs ``brokerlab-<run id>-<client name>``); a fault-free one for any other."""
        if client_id is not None:
            for client, proxy in self._proxies.items():
                if client_id == client or client_id.endswith(f"-{client}"):
                    self.routed[client] = self.routed.get(client, 0) + 1
                    return proxy
        self.routed["other"] = self.routed.get("other", 0) + 1
        assert self._unrouted is not None
        return self._unrouted

    async def stop(self) -> None:
        """Stop every proxy (open connections are reset) and the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self.router is not None:
            with contextlib.suppress(Exception):
                await self._in_proxy_loop(self.router.stop())
        for proxy in [*self._proxies.values(), self._unrouted]:
            if proxy is not None:
                with contextlib.suppress(Exception):
                    await self._in_proxy_loop(proxy.stop())
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, PROXY_CALL_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    async def _in_proxy_loop(self, work: Awaitable[_T]) -> _T:
        """Run a coroutine on the proxies' loop and wait for it without blocking this loop."""
        assert self._loop is not None

        async def wrapped() -> _T:
            return await work

        future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), PROXY_CALL_TIMEOUT)

    async def _apply(self, clients: Sequence[str]) -> None:
        """Push each client's combined faults to its proxy, all in one hop."""
        settings = []
        for client in clients:
            link = self._links[client]
            delay = self.base[0] + sum(d for d, _j in link.latency.values())
            jitter = self.base[1] + sum(j for _d, j in link.latency.values())
            limit = min(link.bandwidth.values()) if link.bandwidth else None
            settings.append((self._proxies[client], delay, jitter, limit, link.blackholes > 0))

        async def apply() -> None:
            for proxy, delay, jitter, limit, cut in settings:
                proxy.set_latency(delay, jitter)
                proxy.set_bandwidth(limit)
                proxy.blackhole(cut)

        await self._in_proxy_loop(apply())

    async def partition(self, clients: Sequence[str], on: bool) -> None:
        """Cut the clients off (bytes held) or let one partition of them end."""
        for client in clients:
            self._links[client].blackholes += 1 if on else -1
        await self._apply(clients)

    async def add_latency(
        self, key: int, clients: Sequence[str], delay: float, jitter: float
    ) -> None:
        """Add ``delay ± jitter`` one way for these clients until :meth:`remove`."""
        for client in clients:
            self._links[client].latency[key] = (delay, jitter)
        await self._apply(clients)

    async def limit_bandwidth(self, key: int, clients: Sequence[str], limit: float) -> None:
        """Limit these clients' links to ``limit`` bytes/s each way until :meth:`remove`."""
        for client in clients:
            self._links[client].bandwidth[key] = limit
        await self._apply(clients)

    async def remove(self, key: int, clients: Sequence[str]) -> None:
        """End the latency or bandwidth fault ``key`` on these clients."""
        for client in clients:
            self._links[client].latency.pop(key, None)
            self._links[client].bandwidth.pop(key, None)
        await self._apply(clients)

    async def reset(self, clients: Sequence[str]) -> None:
        """Reset (RST) every open connection of these clients once."""
        proxies = [self._proxies[client] for client in clients]

        async def reset() -> None:
            for proxy in proxies:
                proxy.reset_connections()

        await self._in_proxy_loop(reset())

    async def heal(self) -> None:
        """Lift every fault, keeping the base delay: teardown must reach the broker."""
        self._links = {client: _Link() for client in self.clients}
        await self._apply(self.clients)


# --------------------------------------------------------------------------- the scheduler


class Clients(Protocol):
    """The run's clients as a fault scheduler sees them (``adapters.harness.RunClients``)."""

    async def crash_consumer(self, consumer: int) -> None: ...
    def restart_consumer(self, consumer: int) -> None: ...
    def slow_consumer(self, consumer: int, factor: float) -> None: ...
    async def crash_producer(self, producer: int) -> None: ...
    def restart_producer(self, producer: int) -> None: ...


@dataclass
class _Played:
    """One timeline entry as it actually happened, in monotonic seconds."""

    fault: Fault
    started: float | None = None
    ended: float | None = None


Undo = Callable[[], Awaitable[None]]


class FaultScheduler:
    """Plays a scenario's fault timeline against one run and records when each fault was on.

    Created by :func:`fault_injection`; the harness calls :meth:`start` with the run's ``t0``
    once producers and consumers exist and :meth:`stop` before it tears the run down.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        broker: EmbeddedBroker | None,
        network: ClientNetwork | None,
    ) -> None:
        self.scenario = scenario
        self.broker = broker
        self.network = network
        self.client_urls = dict(network.client_urls) if network else {}
        self.warnings: list[str] = []
        proxies = "one per client (control, producer-N, consumer-N)" if network else None
        if network is not None and network.front is not None:
            proxies += (
                f"; clients connect to the one address the broker advertises "
                f"(127.0.0.1:{network.front}), which hands each connection to its client's "
                "proxy by the client_id of its first request"
            )
        self.info: dict[str, Any] = {
            "proxies": proxies,
            "network_delay_s": list(network.base) if network else None,
            "timeline": len(scenario.faults),
        }
        self._played = [_Played(fault) for fault in scenario.faults]
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    def start(self, t0: float, clients: Clients) -> None:
        """Schedule every entry against ``t0`` (the monotonic time the run's clock reads 0)."""
        self._t0 = t0
        self._tasks = [
            asyncio.create_task(self._play(index, played, clients))
            for index, played in enumerate(self._played)
        ]

    async def stop(self) -> None:
        """Cancel what has not happened, lift what is still on, close the open windows.

        A killed broker is not restarted and crashed clients stay down: the run is over. A paused
        broker is resumed and the network healed, so teardown can delete the run's objects.
        """
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=PROXY_CALL_TIMEOUT)
        if self.network is not None and self.network.front is not None:
            self.info["routed_connections"] = dict(self.network.routed)
        if self.network is not None:
            try:
                await self.network.heal()
            except Exception as error:
                self.warnings.append(f"the network could not be healed at the end: {error!r}")
        if self.broker is not None and self.broker.paused:
            try:
                self.broker.resume()
            except Exception as error:
                self.warnings.append(f"the paused broker could not be resumed: {error!r}")
        end = now()
        for index, played in enumerate(self._played):
            if played.started is None:
                fault = played.fault
                self.warnings.append(
                    f"fault {index} ({fault.action} at {fault.at:g}s) never started: "
                    "the run ended first"
                )
            elif played.ended is None:
                played.ended = end

    def windows(self) -> list[FaultWindow]:
        """When each fault that happened was actually on, in seconds of the run's clock."""
        windows = []
        for played in self._played:
            if played.started is None or played.ended is None:
                continue
            windows.append(
                FaultWindow(
                    action=played.fault.action,
                    target=played.fault.target,
                    t_start=round(played.started - self._t0, 6),
                    t_end=round(played.ended - self._t0, 6),
                )
            )
        return windows

    async def _play(self, index: int, played: _Played, clients: Clients) -> None:
        fault = played.fault
        await asyncio.sleep(max(0.0, self._t0 + fault.at - now()))
        try:
            undo = await self._begin(index, fault, clients)
        except Exception as error:  # the fault could not be applied: say so, run on
            self.warnings.append(f"fault {index} ({fault.action}) failed to start: {error}")
            return
        played.started = now()
        if undo is None:
            played.ended = played.started
            return
        await asyncio.sleep(max(0.0, self._t0 + fault.at + fault.duration - now()))
        try:
            await undo()
        except Exception as error:
            self.warnings.append(f"fault {index} ({fault.action}) did not end cleanly: {error}")
        played.ended = now()

    async def _begin(self, index: int, fault: Fault, clients: Clients) -> Undo | None:
        """Apply one fault; return how to end it (None for an instant fault)."""
        action = fault.action
        scenario = self.scenario
        if action in BROKER_FAULTS:
            return await self._begin_broker(action)
        if action in NETWORK_FAULTS:
            return await self._begin_network(index, fault)
        if action in CONSUMER_FAULTS:
            consumers = indexes(fault, "consumer", scenario.consumers.count)
            if action == "slow-consumer":
                for consumer in consumers:
                    clients.slow_consumer(consumer, fault.factor)

                async def speed_up() -> None:
                    for consumer in consumers:
                        clients.slow_consumer(consumer, 1.0)

                return speed_up
            await asyncio.gather(*(clients.crash_consumer(c) for c in consumers))

            async def restart_consumers() -> None:
                for consumer in consumers:
                    clients.restart_consumer(consumer)

            return restart_consumers
        producers = indexes(fault, "producer", scenario.producers.count)
        await asyncio.gather(*(clients.crash_producer(p) for p in producers))

        async def restart_producers() -> None:
            for producer in producers:
                clients.restart_producer(producer)

        return restart_producers

    async def _begin_broker(self, action: FaultAction) -> Undo:
        broker = self.broker
        if broker is None:  # check_faults refuses this before the run; never a shared broker
            raise RuntimeError(f"{action} needs a broker the lab started")
        if action == "broker-pause":
            broker.pause()

            async def resume() -> None:
                broker.resume()

            return resume
        # Blocking process control runs in a thread so the run's clients keep going meanwhile.
        await asyncio.to_thread(broker.kill)

        async def restart() -> None:
            await asyncio.to_thread(broker.restart, RESTART_TIMEOUT)

        return restart

    async def _begin_network(self, index: int, fault: Fault) -> Undo | None:
        network = self.network
        assert network is not None  # fault_injection starts proxies for every fault run
        clients = targeted(fault, self.scenario)
        if fault.action == "connection-reset":
            if fault.duration:
                self.warnings.append(
                    f"fault {index} (connection-reset) is instant; its duration is ignored"
                )
            await network.reset(clients)
            return None
        if fault.action == "partition":
            await network.partition(clients, True)
            return lambda: network.partition(clients, False)
        if fault.action == "latency":
            await network.add_latency(index, clients, fault.delay or 0.0, fault.jitter)
        else:
            await network.limit_bandwidth(index, clients, float(fault.bandwidth or 0))
        return lambda: network.remove(index, clients)


@contextlib.asynccontextmanager
async def fault_injection(
    scenario: Scenario, url: str, *, broker: EmbeddedBroker | None, seed: int, target: Target
) -> AsyncIterator[FaultScheduler | None]:
    """Per-client proxies and a scheduler for a run that needs them; ``None`` otherwise.

    The proxies live as long as the block, on loopback. Refuses (``FaultRefused``) broker faults
    when ``broker`` is None: only a broker the lab started may be killed or paused.
    """
    if not needs_proxies(scenario):
        yield None
        return
    check_faults(scenario, target, own_broker=broker is not None)
    delay = delay_as_latency(scenario.network.delay)
    front = None
    if target.advertised_listener:
        front = broker.advertised_port if broker is not None else None
        if front is None:
            raise RuntimeError(
                f"{target.name}: the broker must advertise the fault proxy's port; start it with "
                "embedded_for(..., behind_proxy=True)"
            )
    network = ClientNetwork(url, clients_of(scenario), seed=seed, delay=delay, front=front)
    try:
        await network.start()
        yield FaultScheduler(scenario, broker=broker, network=network)
    finally:
        await network.stop()
