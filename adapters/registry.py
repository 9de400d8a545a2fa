""":func:`run_real`, the one entry point the runner calls for a real target (a record of
:mod:`brokerlab.adapters.targets`).

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
    BrokerAdapter,
    Crew,
    LocalCrew,
    RealBrokerError,
    RunNames,
    Scrubber,
    play,
)
from brokerlab.adapters.monitor import RunMonitor
from brokerlab.adapters.targets import Target, get_target, target_names, url_options
from brokerlab.adapters.workers import WorkerCrew, worker_count
from brokerlab.core.load import plan_load, streams
from brokerlab.core.scenario import Scenario
from brokerlab.core.trace import TargetResult

if TYPE_CHECKING:
    from brokerlab.adapters.embedded import EmbeddedBroker

__all__ = ["get_target", "run_names", "run_real", "run_real_async", "target_names"]


def run_names(scenario: Scenario) -> RunNames:
    """Fresh, broker-safe names for one run (letters, digits, ``-`` and ``_`` only)."""
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
    group = re.sub(r"[^A-Za-z0-9_-]", "_", scenario.consumers.group)
    return RunNames(run_id=run_id, group=group)


@contextlib.contextmanager
def _broker_url(
    target: Target, scenario: Scenario, url: str | None, workdir: Path
) -> Iterator[tuple[str, dict[str, Any], EmbeddedBroker | None]]:
    """The URL to use, facts about the broker, and the broker if the lab started it (the only
    kind a fault may kill or pause); an embedded one lives as long as the block."""
    if url is not None:
        yield url, {"broker": "existing"}, None
        return
    from brokerlab.adapters.embedded import embedded_for

    behind_proxy = needs_proxies(scenario)
    with embedded_for(target.name, scenario.broker, workdir, behind_proxy=behind_proxy) as embedded:
        yield embedded.url, {"broker": "embedded", "embedded": dict(embedded.info)}, embedded


async def run_real_async(
    scenario: Scenario,
    target: str | Target,
    seed: int,
    *,
    url: str,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    broker: EmbeddedBroker | None = None,
    names: RunNames | None = None,
    on_start: Callable[[list[int]], None] | None = None,
) -> TargetResult:
    """Run a scenario on a broker reachable at ``url`` (inside a running event loop).

    ``workers`` processes play it (default: :func:`adapters.workers.worker_count` decides from
    the offered rate and ``BROKERLAB_WORKERS``); one trace comes back either way, from the one
    run function :func:`brokerlab.adapters.harness.play`. A run with faults or network delay
    plays in one process, its clients behind per-client fault proxies
    (:mod:`adapters.faults`); ``broker`` is the lab's own broker, which only then may be killed.
    ``names`` fixes the run's broker object names and ``on_start`` gets worker pids (tests).
    """
    record = target if isinstance(target, Target) else get_target(target)
    names = names or run_names(scenario)
    plan = plan_load(scenario, seed)
    count = 1 if needs_proxies(scenario) else worker_count(scenario, record, workers)
    adapter: BrokerAdapter = record.adapter_class()(url, scenario, names)
    adapter.own_broker = broker.info if broker is not None else None
    async with (
        RunMonitor(url, broker) as monitor,  # the lab's and the broker's CPU, loop lag
        fault_injection(scenario, url, broker=broker, seed=seed, target=record) as faults,
    ):
        crew: Crew
        if count > 1:
            crew = WorkerCrew(record, url, scenario, seed, names, plan, count, on_start=on_start)
        else:
            if faults is not None:
                adapter.client_urls = dict(faults.client_urls)
            crew = LocalCrew(adapter, scenario, plan, streams(seed)["processing"])
        result = await play(adapter, scenario, crew, progress=progress, faults=faults)
    return monitor.attach(result)


def _run_to_completion(coroutine: Coroutine[Any, Any, TargetResult]) -> TargetResult:
    """``asyncio.run``, also from code that already runs an event loop (a Jupyter kernel).

    ``asyncio.run`` refuses to nest, so inside a running loop the run gets its own loop in a
    worker thread; embedded brokers are forked by their own spawner thread, so they still die
    with the lab. Under the command line's Ctrl-C handling the run is the task Ctrl-C cancels.
    """
    from brokerlab.adapters.embedded import interruptible

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(interruptible(coroutine))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, interruptible(coroutine)).result()


def run_real(
    scenario: Scenario,
    target: str,
    seed: int,
    *,
    workdir: Path,
    url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    **urls: str | None,
) -> TargetResult:
    """Run ``scenario`` on a real ``target`` and return its trace.

    ``target`` names a registered target (:mod:`brokerlab.adapters.targets`). ``url``, or the
    target's URL option by its Python name (``redis_url=...``, ``nats_url=...``), names an
    existing broker; without one the lab starts its own in ``workdir`` for this run and stops it
    afterwards. Faults the target cannot or must not play are refused (``FaultRefused``) before
    any broker or client starts.
    """
    record = get_target(target)
    known = {option.key for option in url_options()}
    unknown = sorted(set(urls) - known)
    if unknown:
        raise TypeError(f"run_real: unknown URL arguments {unknown}; use url= or {sorted(known)}")
    url = url or urls.get(record.url.key)
    # Before any broker or client starts: never kill or pause a broker the lab did not start.
    check_faults(scenario, record, own_broker=url is None)
    scrub = Scrubber(url) if url else None
    try:
        with _broker_url(record, scenario, url, workdir) as (broker_url, broker_info, embedded):
            result = _run_to_completion(
                run_real_async(
                    scenario,
                    record,
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
