"""Real targets: name -> adapter, and :func:`run_real`, the one entry point the runner calls.

A run either starts its own broker (no URL: :func:`adapters.embedded.embedded_for`, stopped in a
``finally`` whatever happens) or uses an existing one (URL, credentials allowed). Either way the
run's stream / subject / consumer names carry a fresh run id and are deleted at the end, and only
the redacted URL is ever recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapters.harness import (
    AdapterFactory,
    BrokerAdapter,
    RealBrokerError,
    RunNames,
    Scrubber,
    run_harness,
)
from adapters.nats_core import NatsCoreAdapter
from adapters.nats_jetstream import NatsJetStreamAdapter
from adapters.redis_streams import RedisStreamsAdapter
from brokerlab.load import plan_load
from brokerlab.scenario import Scenario
from brokerlab.trace import TargetResult

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
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The URL to use and facts about the broker; an embedded one lives as long as the block."""
    if url is not None:
        yield url, {"broker": "existing"}
        return
    from adapters.embedded import embedded_for

    with embedded_for(target, scenario.broker, workdir) as embedded:
        yield embedded.url, {"broker": "embedded", "embedded": dict(embedded.info)}


async def run_real_async(
    scenario: Scenario,
    target: str,
    seed: int,
    *,
    url: str,
    progress: Callable[[int, int], None] | None = None,
) -> TargetResult:
    """Run a scenario on a broker reachable at ``url`` (inside a running event loop)."""
    factory = ADAPTERS[target]
    adapter: BrokerAdapter = factory(url, scenario, run_names(scenario))
    return await run_harness(adapter, scenario, seed, plan_load(scenario, seed), progress=progress)


def run_real(
    scenario: Scenario,
    target: str,
    seed: int,
    *,
    workdir: Path,
    redis_url: str | None = None,
    nats_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TargetResult:
    """Run ``scenario`` on a real ``target`` and return its trace.

    ``target`` is ``redis-streams``, ``nats`` or ``nats-jetstream``. Without a URL for it, the lab
    starts its own broker in ``workdir`` for this run and stops it afterwards.
    """
    if target not in ADAPTERS:
        raise ValueError(f"unknown real target {target!r}; use one of {', '.join(ADAPTERS)}")
    url = redis_url if target == "redis-streams" else nats_url
    scrub = Scrubber(url) if url else None
    try:
        with _broker_url(target, scenario, url, workdir) as (broker_url, broker_info):
            result = asyncio.run(
                run_real_async(scenario, target, seed, url=broker_url, progress=progress)
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
