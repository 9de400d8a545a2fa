"""Choose a broker for a use case: run (or reuse) each candidate and rank them by the evidence.

Each candidate runs the scenario where the lab can: on the real broker when an adapter exists
(``redis-streams``, ``nats``, ``nats-jetstream``), else on the simulator with the candidate's
preset (``kafka``, ``rabbitmq``, ``sqs``, ...). Its measured requirement results are joined with
the capability table's verdicts for what a run cannot show (replay, message size limits, ordering
model, durability options). Candidates are ranked: fewer failed requirements first, then by the
worst margin (how close the tightest requirement came to its bound), so the ranking says both
which pass and by how much the others fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from brokerlab.app.capabilities import judge
from brokerlab.app.runner import TARGETS, RunOptions, run_scenario, scenario_digest
from brokerlab.core import results
from brokerlab.core.scenario import Scenario
from brokerlab.core.vocabulary import BROKER_KINDS

RANKING_CSV = "ranking.csv"
EVIDENCE_CSV = "evidence.csv"
SELECTION_JSON = "selection.json"

#: Requirement names whose bound is a floor; every other run requirement is a ceiling.
AT_LEAST = frozenset({"throughput"})

DEFAULT_CANDIDATES = ("redis-streams", "nats", "nats-jetstream", "kafka", "rabbitmq", "sqs")


class SelectionError(Exception):
    """A user's mistake in a selection request (unknown candidate, empty list)."""


def margin(name: str, bound: Any, measured: Any) -> float | None:
    """Relative headroom of a measured value against its bound: > 0 passes, < 0 fails.

    ``(bound - measured) / bound`` for ceilings, ``(measured - bound) / bound`` for floors. A zero
    bound (``max_lost: 0``) has no scale: no margin when met (pass/fail only, so it cannot mask
    the headroom of the others), -1.0 per unit over it (so 3 lost messages rank below 1).
    Non-numeric requirements have no margin.
    """
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        return None
    if measured is None or isinstance(measured, bool) or not isinstance(measured, int | float):
        return None
    if bound == 0:
        over = measured if name not in AT_LEAST else -measured
        return None if over <= 0 else -float(over)
    if name in AT_LEAST:
        return (measured - bound) / abs(bound)
    return (bound - measured) / abs(bound)


def target_for(candidate: str, real: bool) -> str:
    """The real target when an adapter exists and real runs are wanted, else the simulator."""
    return candidate if real and candidate in TARGETS else "sim"


def evidence_rows(
    candidate: str, metrics: dict[str, Any], run_path: Path, scenario: Scenario
) -> list[dict[str, Any]]:
    """Every requirement of one candidate: measured by its run, or judged by the table."""
    rows: list[dict[str, Any]] = []
    capability = {v.name: v for v in judge(scenario.requirements, candidate)}
    for requirement in metrics["requirements"]:
        name = requirement["name"]
        if requirement["ok"] is not None:
            rows.append(
                {
                    "candidate": candidate,
                    "requirement": name,
                    "bound": requirement["bound"],
                    "measured": requirement["measured"],
                    "ok": requirement["ok"],
                    "margin": margin(name, requirement["bound"], requirement["measured"]),
                    "kind": "run",
                    "evidence": str(run_path),
                }
            )
    for verdict in capability.values():
        rows.append(
            {
                "candidate": candidate,
                "requirement": verdict.name,
                "bound": verdict.bound,
                "measured": verdict.capability,
                "ok": verdict.ok,
                "margin": None,
                "kind": "capability" if verdict.verified else "capability (unverified)",
                "evidence": verdict.source,
            }
        )
    return rows


def rank(evidence: pd.DataFrame, runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per candidate, best first: fewest failures, then the largest worst margin, then
    the largest mean margin (when the tightest bound ties, e.g. every candidate keeps up with the
    offered rate, the headroom on the other requirements decides)."""
    rows = []
    for candidate, info in runs.items():
        mine = evidence[evidence["candidate"] == candidate]
        failed = mine[~mine["ok"].astype(bool)]
        margins = [m for m in mine["margin"] if m is not None and not math.isnan(m)]
        rows.append(
            {
                "candidate": candidate,
                "target": info["target"],
                "verdict": "pass" if failed.empty else "fail",
                "failed": len(failed),
                "failed_requirements": ", ".join(failed["requirement"]),
                "worst_margin": min(margins) if margins else None,
                "mean_margin": sum(margins) / len(margins) if margins else None,
                "run": info["run"],
                "reused": info["reused"],
            }
        )
    table = pd.DataFrame(rows)
    order = table.assign(
        _worst=table["worst_margin"].astype("float64").fillna(-math.inf),
        _mean=table["mean_margin"].astype("float64").fillna(-math.inf),
    ).sort_values(["failed", "_worst", "_mean"], ascending=[True, False, False], kind="stable")
    ranked = order.drop(columns=["_worst", "_mean"]).reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return ranked


def find_reusable(results_dir: Path, digest: str, target: str, seed: int) -> Path | None:
    """The newest complete run of exactly this scenario, target and seed, if one exists."""
    found: tuple[str, Path] | None = None
    # Runs stand alone in results/ or inside comparison and selection folders.
    run_files = [
        *results_dir.glob(f"*/{results.RUN_FILE}"),
        *results_dir.glob(f"*/*/{results.RUN_FILE}"),
    ]
    for run_file in run_files:
        if any(part.startswith(".") for part in run_file.relative_to(results_dir).parts):
            continue  # still being written
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            run.get("kind") == "run"
            and run.get("target") == target
            and run.get("scenario_sha256") == digest
            and run.get("seed") == seed
            and (run_file.parent / results.METRICS_FILE).is_file()
        ):
            started = str(run.get("started_at", ""))
            if found is None or started >= found[0]:
                found = (started, run_file.parent)
    return found[1] if found else None


@dataclass(frozen=True)
class Selection:
    """A finished selection: where it is stored, the ranking and the evidence behind it."""

    path: Path
    ranking: pd.DataFrame
    evidence: pd.DataFrame
    errors: dict[str, str]
    notes: tuple[str, ...] = ()


def select(
    scenario: Scenario,
    candidates: list[str],
    options: RunOptions,
    *,
    real: bool = True,
    reuse: bool = True,
    source: str | None = None,
    on_candidate: Callable[[str, str], None] | None = None,
) -> Selection:
    """Run or reuse every candidate, rank them, and store the selection folder."""
    unknown = [c for c in candidates if c not in BROKER_KINDS]
    if not candidates or unknown:
        raise SelectionError(
            f"unknown candidates {unknown or '(none given)'}; use {', '.join(BROKER_KINDS)}"
        )
    seed = options.seed if options.seed is not None else scenario.seed
    started = datetime.now(UTC)
    final = results.choose_run_dir(
        options.results_dir, results.new_run_id(scenario.name, "select", seed, started), options.out
    )
    runs: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    with results.staged_dir(final) as folder:
        for candidate in candidates:
            target = target_for(candidate, real)
            as_run = scenario.model_copy(
                update={"broker": scenario.broker.model_copy(update={"kind": candidate})}
            )
            previous = None
            if reuse:
                digest = scenario_digest(as_run, target)
                previous = find_reusable(options.results_dir, digest, target, seed)
            if on_candidate:
                on_candidate(candidate, "reusing " + str(previous) if previous else f"on {target}")
            try:
                if previous is not None:
                    metrics = json.loads((previous / results.METRICS_FILE).read_text("utf-8"))
                    run_path = previous
                else:
                    record = run_scenario(
                        as_run, target, replace(options, seed=seed, out=folder / candidate), source
                    )
                    metrics, run_path = record.metrics, final / candidate
            except KeyboardInterrupt:
                raise
            except Exception as error:  # a broken candidate must not hide the others
                errors[candidate] = f"{type(error).__name__}: {error}"
                continue
            runs[candidate] = {
                "target": target,
                "run": str(run_path),
                "reused": previous is not None,
            }
            rows.extend(evidence_rows(candidate, metrics, run_path, as_run))
        evidence = pd.DataFrame(
            rows,
            columns=[
                "candidate",
                "requirement",
                "bound",
                "measured",
                "ok",
                "margin",
                "kind",
                "evidence",
            ],
        )
        ranking = rank(evidence, runs) if runs else pd.DataFrame()
        notes = _notes(scenario, runs)
        ranking.to_csv(folder / RANKING_CSV, index=False)
        evidence.to_csv(folder / EVIDENCE_CSV, index=False)
        payload = {
            "scenario": scenario.name,
            "seed": seed,
            "ranking": json.loads(ranking.to_json(orient="records")),
            "evidence": json.loads(evidence.to_json(orient="records")),
            "errors": errors,
            "notes": list(notes),
        }
        results.write_json(folder / SELECTION_JSON, payload)
        results.write_manifest(
            folder,
            results.SelectionManifest(
                run_id=final.name,
                scenario=scenario.name,
                scenario_file=source,
                targets=list(candidates),
                seed=seed,
                started_at=started.isoformat(timespec="seconds"),
                real=real,
                errors=errors,
                verdict=f"best: {ranking['candidate'].iloc[0]}" if len(ranking) else "none",
                versions=results.package_versions(),
                host=results.host_info(),
            ),
        )
    return Selection(final, ranking, evidence, errors, notes)


def _notes(scenario: Scenario, runs: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """What a reader must keep in mind when real and simulated candidates share one ranking."""
    targets = {info["target"] for info in runs.values()}
    if "sim" not in targets or targets == {"sim"}:
        return ()
    service = scenario.broker.service_time
    costless = service.publish.mean == 0 and service.deliver.mean == 0
    if costless and scenario.network.delay.mean == 0:
        return (
            "simulated candidates carry no broker or network cost (the scenario sets no "
            "broker.service_time or network.delay), so their latencies are lower bounds next to "
            "the real brokers'; the ranking's verdicts stand, its latency margins favour them",
        )
    return ()
