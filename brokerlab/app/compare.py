"""Run one scenario on several targets and lay the results side by side.

A comparison folder holds one complete run folder per target (same seed, same load plan), a
``comparison.csv`` / ``comparison.json`` table with one column per target, and a ``run.json``
that says which targets ran and which failed. A target that fails does not stop the others:
its error is recorded, and the comparison still shows what was measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from brokerlab.app.runner import TARGETS, RunOptions, RunRecord, run_scenario
from brokerlab.core import results
from brokerlab.core.scenario import Scenario

COMPARISON_CSV = "comparison.csv"
COMPARISON_JSON = "comparison.json"

#: Rows of the side-by-side table: (label, path into metrics.json).
ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sent", ("counts", "sent")),
    ("acked", ("counts", "acked")),
    ("delivered", ("counts", "delivered")),
    ("lost", ("counts", "lost")),
    ("unprocessed", ("counts", "unprocessed")),
    ("duplicates", ("counts", "duplicates")),
    ("out_of_order", ("counts", "out_of_order")),
    ("redelivered", ("counts", "redelivered")),
    ("failed", ("counts", "failed")),
    ("unknown", ("counts", "unknown")),
    ("end_to_end p50 ms", ("latency_ms", "end_to_end", "p50")),
    ("end_to_end p99 ms", ("latency_ms", "end_to_end", "p99")),
    ("end_to_end p99.9 ms", ("latency_ms", "end_to_end", "p99_9")),
    ("end_to_end max ms", ("latency_ms", "end_to_end", "max")),
    ("completion p50 ms", ("latency_ms", "completion", "p50")),
    ("completion p99 ms", ("latency_ms", "completion", "p99")),
    ("publish p50 ms", ("latency_ms", "publish", "p50")),
    ("publish p99 ms", ("latency_ms", "publish", "p99")),
    ("publish_delay p99 ms", ("latency_ms", "publish_delay", "p99")),
    ("offered /s", ("throughput_per_s", "offered")),
    ("sent /s", ("throughput_per_s", "sent")),
    ("delivered /s", ("throughput_per_s", "delivered")),
    ("verdict", ("verdict",)),
)


def _lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = metrics
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def comparison_table(metrics_by_target: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Metrics side by side: one row per metric, one column per target."""
    return pd.DataFrame(
        {
            target: [_lookup(metrics, path) for _, path in ROWS]
            for target, metrics in metrics_by_target.items()
        },
        index=[label for label, _ in ROWS],
    )


@dataclass(frozen=True)
class ComparisonRecord:
    """A finished comparison: its folder, the runs that worked and the targets that failed."""

    path: Path
    runs: dict[str, RunRecord]
    errors: dict[str, str]
    table: pd.DataFrame


#: Label prefix of a simulator twin: ``sim:<kind>`` plays a real target's kind with its profile.
TWIN = "sim:"


def twinned(scenario: Scenario, targets: list[str]) -> list[tuple[str, Scenario, str]]:
    """What a comparison runs: (label, scenario as played, runner target).

    With real targets beside ``sim``, the simulator runs once per real target, as that target's
    kind (so with that kind's performance profile), labelled ``sim:<kind>`` and placed just
    before its real run: each real run sits beside its own model. ``sim`` alone (or with no real
    target) plays the scenario's own kind, as before.
    """
    real = [t for t in targets if t != "sim" and t in TARGETS]
    if "sim" not in targets or not real:
        return [(t, scenario, t) for t in targets]
    plan: list[tuple[str, Scenario, str]] = []
    for target in targets:
        if target not in real:
            if target != "sim":
                plan.append((target, scenario, target))  # unknown: its run says why
            continue
        broker = scenario.broker.model_copy(update={"kind": target})
        plan.append((TWIN + target, scenario.model_copy(update={"broker": broker}), "sim"))
        plan.append((target, scenario, target))
    return plan


def compare(
    scenario: Scenario,
    targets: list[str],
    options: RunOptions,
    source: str | None = None,
    on_target: Callable[[str], None] | None = None,
) -> ComparisonRecord:
    """Run ``scenario`` on every target in turn and write one comparison folder."""
    seed = options.seed if options.seed is not None else scenario.seed
    started = datetime.now(UTC)
    run_id = results.new_run_id(scenario.name, "compare", seed, started)
    final = results.choose_run_dir(options.results_dir, run_id, options.out)
    runs: dict[str, RunRecord] = {}
    errors: dict[str, str] = {}
    plan = twinned(scenario, targets)
    with results.staged_dir(final) as folder:
        for target, plays, runner_target in plan:
            if on_target:
                on_target(target)
            try:
                runs[target] = run_scenario(
                    plays, runner_target, replace(options, seed=seed, out=folder / target), source
                )
            except KeyboardInterrupt:
                raise
            except Exception as error:  # one broken target must not hide the others' results
                errors[target] = f"{type(error).__name__}: {error}"
        table = comparison_table({t: r.metrics for t, r in runs.items()})
        table.to_csv(folder / COMPARISON_CSV, index_label="metric")
        (folder / COMPARISON_JSON).write_text(
            json.dumps({t: r.metrics for t, r in runs.items()}, indent=2, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        results.write_manifest(
            folder,
            results.ComparisonManifest(
                run_id=final.name,
                scenario=scenario.name,
                scenario_file=source,
                targets=[label for label, _, _ in plan],
                seed=seed,
                started_at=started.isoformat(timespec="seconds"),
                runs=list(runs),  # subfolders that hold a complete run
                errors=errors,
                verdicts={t: r.metrics["verdict"] for t, r in runs.items()},
                versions=results.package_versions(),
                host=results.host_info(),
            ),
        )
    moved = {t: replace(r, path=final / t) for t, r in runs.items()}
    return ComparisonRecord(final, moved, errors, table)
