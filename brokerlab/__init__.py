"""brokerlab: choose and size a message broker by evidence.

``import brokerlab as bl`` is the public API (:mod:`brokerlab.api`): ``bl.load``,
``bl.simulate``, ``bl.run``, ``bl.compare``, ``bl.select``, ``bl.sweep``, ``bl.capacity``,
``bl.report``, ``bl.open`` and the result objects. It is loaded on first use, so
``import brokerlab`` and ``brokerlab.core`` stay cheap: no pandas, matplotlib, simulator or
adapters until a name of the API is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: The names of :mod:`brokerlab.api` that ``brokerlab`` exports.
API_NAMES: tuple[str, ...] = (
    "DEFAULT_CANDIDATES",
    "Comparison",
    "OpenError",
    "Plots",
    "Report",
    "ReportError",
    "RunResult",
    "Runs",
    "Scenario",
    "ScenarioError",
    "Selection",
    "SelectionError",
    "TargetError",
    "compare",
    "describe",
    "load",
    "open",
    "report",
    "results_folder",
    "run",
    "select",
    "simulate",
    "Sweep",
    "SweepError",
    "Capacity",
    "CapacityError",
    "sweep",
    "capacity",
)

__all__ = list(API_NAMES)

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ loads them
    from brokerlab.api import (  # noqa: F401
        DEFAULT_CANDIDATES,
        Capacity,
        CapacityError,
        Comparison,
        OpenError,
        Plots,
        Report,
        ReportError,
        RunResult,
        Runs,
        Scenario,
        ScenarioError,
        Selection,
        SelectionError,
        Sweep,
        SweepError,
        TargetError,
        capacity,
        compare,
        describe,
        load,
        open,
        report,
        results_folder,
        run,
        select,
        simulate,
        sweep,
    )


def __getattr__(name: str) -> Any:
    """Load :mod:`brokerlab.api` the first time one of its names is used (PEP 562)."""
    if name in API_NAMES:
        from brokerlab import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'brokerlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API_NAMES])
