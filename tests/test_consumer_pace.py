"""A consumer's processing waits owe back what the OS overslept, so a loaded machine does not
slow the scenario's consumer down by its wake-up lag on every message."""

from __future__ import annotations

import numpy as np

from brokerlab.adapters.harness.consumers import MAX_OVERSLEPT, ConsumerGroup
from brokerlab.adapters.harness.recording import DeliveryLog
from brokerlab.core.load import plan_load
from brokerlab.core.scenario import parse_scenario

SCENARIO = parse_scenario(
    {
        "name": "pace",
        "producers": {"rate": "10/s", "duration": "1s"},
        "broker": {"kind": "redis-streams"},
        "consumers": {"processing": "5ms"},
    }
)


def _group() -> ConsumerGroup:
    plan = plan_load(SCENARIO, 1)
    rng = np.random.default_rng(1)
    return ConsumerGroup(None, SCENARIO, DeliveryLog(plan), np.zeros(4), rng)  # type: ignore[arg-type]


async def test_an_overslept_wait_shortens_the_next_one() -> None:
    """30 ms owed: a 5 ms message is processed at once and 25 ms stay owed (known answer)."""
    group = _group()
    group.overslept[0] = 0.030
    await group._process(0, 0.005)
    assert 0.025 <= group.overslept[0] < 0.030  # owed minus 5 ms, plus the µs this took
    group.overslept[0] = 0.0
    await group._process(0, 0.002)  # an ordinary wait: wakes on time or a little late
    assert 0.0 <= group.overslept[0] <= MAX_OVERSLEPT


async def test_the_debt_is_capped_so_a_stall_is_not_replayed_as_a_burst() -> None:
    group = _group()
    group.overslept[1] = 5.0  # as if the process had been stopped for seconds
    await group._process(1, 0.005)
    assert group.overslept[1] == MAX_OVERSLEPT
