"""Real runs from code that already has an event loop, as in a Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

from brokerlab.adapters import run_real
from brokerlab.core.checks import check_delivery
from brokerlab.core.scenario import parse_scenario


async def test_run_real_inside_a_running_event_loop(tmp_path: Path) -> None:
    """run_real works when called from a coroutine (notebooks run inside an event loop)."""
    scenario = parse_scenario(
        {
            "name": "in-loop",
            "producers": {"rate": "200/s", "messages": 200, "arrival": "constant"},
            "broker": {"kind": "nats-jetstream"},
            "consumers": {"count": 1},
        }
    )
    result = run_real(scenario, "nats-jetstream", 1, workdir=tmp_path)
    checks = check_delivery(result.trace.sends, result.trace.deliveries)
    assert checks.sent == 200 and checks.lost == 0 and checks.unique == 200
