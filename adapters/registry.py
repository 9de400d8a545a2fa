"""Real targets: name -> adapter, and :func:`run_real`, the one entry point the runner calls.

A run either starts its own broker (no URL: :func:`adapters.embedded.embedded_for`, stopped in a
``finally`` whatever happens) or uses an existing one (URL, credentials allowed). Either way the
run's stream / subject / consumer names carry a fresh run id and are deleted at the end, and only
the redacted URL is ever recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brokerlab.adapters.faults import check_faults, fault_injection, needs_proxies
from brokerlab.adapters.harness import (
    AdapterFactory,
    BrokerAdapter,
    RealBrokerError,
    RunNames,
    Scrubber,
    run_harness,
)
from brokerlab.adapters.nats_core import NatsCoreAdapter
from brokerlab.adapters.nats_jetstream import NatsJetStreamAdapter
from brokerlab.adapters.redis_streams import RedisStreamsAdapter
from brokerlab.adapters.workers import run_workers, worker_count
from brokerlab.core.load import plan_load
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import TargetResult

if TYPE_CHECKING:
    from brokerlab.adapters.embedded import EmbeddedBroker

#: Real target name -> adapter class.
ADAPTERS: dict[str, AdapterFactory] = {
    "redis-streams": RedisStreamsAdapter,
    "nats": NatsCoreAdapter,
    "nats-jetstream": NatsJetStreamAdapter,
}


def run_names(scenario: Scenario) -> RunNames:
    """Fresh, broker-safe names for one run (letters, digits, ``-`` and ``_`` only)."""
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
    group = re.sub(r"[^A-Za-z0-9_-]", "_", scenario.consumers.group)
    return RunNames(
        run_id=run_id,
        key=f"brokerlab:{run_id}",
        subject=f"brokerlab.{run_id}",
        stream=f"BROKERLAB_{run_id.replace('-', '_')}",
        group=group,
    )


@contextlib.contextmanager
def _broker_url(
    target: str, scenario: Scenario, url: str | None, workdir: Path
) -> Iterator[tuple[str, dict[str, Any], EmbeddedBroker | None]]:
    """The URL to use, facts about the broker, and the broker if the lab started it (the only
    kind a fault may kill or pause); an embedded one lives as long as the block."""
    if url is not None:
        yield url, {"broker": "existing"}, None
        return
    from brokerlab.adapters.embedded import embedded_for

    with embedded_for(target, scenario.broker, workdir) as embedded:
        yield embedded.url, {"broker": "embedded", "embedded": dict(embedded.info)}, embedded


async def run_real_async(
    scenario: Scenario,
    target: str,
    seed: int,
    *,
    url: str,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    broker: EmbeddedBroker | None = None,
) -> TargetResult:
    """Run a scenario on a broker reachable at ``url`` (inside a running event loop).

    ``workers`` processes play it (default: :func:`adapters.workers.worker_count` decides from
    the offered rate and ``BROKERLAB_WORKERS``); one trace comes back either way. A run with
    faults or network delay plays in one process, its clients behind per-client fault proxies
    (:mod:`adapters.faults`); ``broker`` is the lab's own broker, which only then may be killed.
    """
    factory = ADAPTERS[target]
    names = run_names(scenario)
    faulty = needs_proxies(scenario)
    count = 1 if faulty else worker_count(scenario, target, workers)
    if count > 1:
        return await run_workers(factory, url, scenario, seed, names, count, progress=progress)
    adapter: BrokerAdapter = factory(url, scenario, names)
    plan = plan_load(scenario, seed)
    async with fault_injection(scenario, url, broker=broker, seed=seed, target=target) as faults:
        if faults is not None:
            adapter.client_urls = dict(faults.client_urls)
        return await run_harness(adapter, scenario, seed, plan, progress=progress, faults=faults)


def _run_to_completion(coroutine: Coroutine[Any, Any, TargetResult]) -> TargetResult:
    """``asyncio.run``, also from code that already runs an event loop (a Jupyter kernel).

    ``asyncio.run`` refuses to nest, so inside a running loop the run gets its own loop in a
    worker thread; embedded brokers are forked by their own spawner thread, so they still die
    with the lab.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def run_real(
    scenario: Scenario,
    target: str,
    seed: int,
    *,
    workdir: Path,
    redis_url: str | None = None,
    nats_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> TargetResult:
    """Run ``scenario`` on a real ``target`` and return its trace.

    ``target`` is ``redis-streams``, ``nats`` or ``nats-jetstream``. Without a URL for it, the lab
    starts its own broker in ``workdir`` for this run and stops it afterwards.
    """
    if target not in ADAPTERS:
        raise ValueError(f"unknown real target {target!r}; use one of {', '.join(ADAPTERS)}")
    url = redis_url if target == "redis-streams" else nats_url
    option = "--redis-url" if target == "redis-streams" else "--nats-url"
    # Before any broker or client starts: never kill or pause a broker the lab did not start.
    check_faults(scenario, target, own_broker=url is None, url_option=option)
    scrub = Scrubber(url) if url else None
    try:
        with _broker_url(target, scenario, url, workdir) as (broker_url, broker_info, embedded):
            result = _run_to_completion(
                run_real_async(
                    scenario,
                    target,
                    seed,
                    url=broker_url,
                    progress=progress,
                    workers=workers,
                    broker=embedded,
                )
            )
    except RealBrokerError:
        raise
    except Exception as error:
        if scrub is None:
            raise
        # Client libraries may quote the URL they were given; never let its secrets out.
        raise RealBrokerError(scrub(f"{target}: {type(error).__name__}: {error}")) from None
    result.info.update(broker_info)
    return result
