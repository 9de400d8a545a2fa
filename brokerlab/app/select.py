"""Choose a broker for a use case: run (or reuse) each candidate and rank them by the evidence.

Each candidate runs the scenario where the lab can: on the real broker when an adapter exists
(``redis-streams``, ``nats``, ``nats-jetstream``, ``rabbitmq``, ``kafka``: the Kafka protocol on
the lab's Tansu broker unless a URL is given, which the selection's notes say), else on the
simulator with the candidate's preset (``sqs``, ``kinesis``, ...). Its measured requirement
results are joined with the capability table's verdicts for what a run cannot show (replay,
message size limits, ordering model, durability options). Candidates are ranked: fewer failed
requirements first, then by the worst margin (how close the tightest requirement came to its
bound), so the ranking says both which pass and by how much the others fail.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from brokerlab.app.capabilities import judge
from brokerlab.app.runner import TARGETS, RunOptions, run_scenario, scenario_digest
from brokerlab.core import results
from brokerlab.core.analysis import CAPABILITY_REQUIREMENTS
from brokerlab.core.checks import COUNT_KEYS
from brokerlab.core.scenario import Scenario
from brokerlab.core.vocabulary import BROKER_KINDS, LATENCY_KINDS
from brokerlab.sim.presets import presets

RANKING_CSV = "ranking.csv"
EVIDENCE_CSV = "evidence.csv"
SELECTION_JSON = "selection.json"

#: Requirement names whose bound is a floor; every other run requirement is a ceiling.
AT_LEAST = frozenset({"throughput"})

#: The columns of evidence.csv: one row per candidate and requirement.
EVIDENCE_COLUMNS = (
    "candidate",
    "requirement",
    "bound",
    "measured",
    "capability",
    "status",
    "ok",
    "margin",
    "kind",
    "evidence",
    "source",
    "note",
)

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


def target_for(candidate: str, real: bool, urls: Mapping[str, str | None] | None = None) -> str:
    """The real target when an adapter exists, real runs are wanted and a broker can be had (a
    URL for it in ``urls``, or a server the lab can start here), else the simulator."""
    if not real or candidate not in TARGETS:
        return "sim"
    if urls is None:
        return candidate
    return candidate if _broker_available(candidate, urls) else "sim"


def _broker_available(target: str, urls: Mapping[str, str | None]) -> bool:
    """Whether a run on ``target`` has a broker: a URL given for it (flag or environment), or
    its embedded server installed (e.g. RabbitMQ needs Debian's rabbitmq-server package)."""
    from brokerlab.adapters.binaries import BrokerUnavailable, find_server
    from brokerlab.adapters.targets import TargetError, get_target

    try:
        record = get_target(target)
    except TargetError:
        return True  # not a registered real target: let the run say what is wrong
    if urls.get(record.url.key) or os.environ.get(record.url.env):
        return True
    if record.server is None:
        return False
    try:
        find_server(record.server)
    except BrokerUnavailable:
        return False
    return True


def is_performance(name: str) -> bool:
    """Whether a requirement is about speed (throughput, a latency bound): what the simulator
    can only predict with a performance profile of the broker."""
    return name == "throughput" or name.split(" ", 1)[0] in LATENCY_KINDS


def has_profile(kind: str, choice: str = "auto") -> bool:
    """Whether the simulator's preset for ``kind`` carries a performance profile (what the
    broker costs per publish, delivery and ack) and the scenario's ``broker.profile`` (``choice``)
    did not turn it off. Without one a simulated broker is ideal, so its latency and throughput
    say nothing about the real product."""
    if choice == "none":
        return False
    profile = (presets().get(kind) or {}).get("profile")
    return profile not in (None, False, "", "none")


def _combine(run: str | None, capability: str | None) -> str:
    """One requirement's status from its two sources (each ``ok``, ``fail``, ``unknown``,
    ``not modelled`` or None when the source says nothing).

    Any known failure fails it. A run that could not tell leaves it unknown (the capability says
    what the broker can do, not what it did). An unverified capability decides nothing: it only
    makes the requirement unknown when nothing else judged it.
    """
    parts = {run, capability}
    if "fail" in parts:
        return "fail"
    if run == "unknown":
        return "unknown"
    if "ok" in parts:
        return "ok"
    if capability == "unknown":
        return "unknown"
    return "not modelled"


def evidence_rows(
    candidate: str,
    metrics: dict[str, Any],
    run_path: Path,
    scenario: Scenario,
    target: str = "sim",
    profile_of: Path | None = None,
) -> list[dict[str, Any]]:
    """Every requirement of one candidate, judged once: its run's measurement and the
    capability table's verdict for the same requirement share one row.

    ``status`` is ``ok``, ``fail``, ``unknown`` (the run could not tell, or the only fact is
    unverified) or ``not modelled`` (a speed requirement of a simulated candidate whose preset
    has no performance profile); ``ok`` is True / False for the first two, None otherwise.
    A simulated speed verdict names the profile it rests on, read from the run's run.json (in
    ``profile_of`` when the run's files are not yet at ``run_path``).
    """
    unmodelled = target == "sim" and not has_profile(candidate, scenario.broker.profile)
    profile = profile_label(profile_of or run_path) if target == "sim" else None
    measured = {
        r["name"]: r for r in metrics["requirements"] if r["name"] not in CAPABILITY_REQUIREMENTS
    }
    capability = {v.name: v for v in judge(scenario.requirements, candidate)}
    rows: list[dict[str, Any]] = []
    for name in [*measured, *(n for n in capability if n not in measured)]:
        run, fact = measured.get(name), capability.get(name)
        run_status: str | None = None
        notes: list[str] = []
        if run is not None:
            if unmodelled and is_performance(name):
                run_status = "not modelled"
                notes.append("simulated without a performance profile: not judged")
            else:
                run_status = {True: "ok", False: "fail", None: "unknown"}[run["ok"]]
                if run.get("note"):
                    notes.append(str(run["note"]))
                if target == "sim" and is_performance(name):
                    notes.append(f"predicted with the profile {profile or 'recorded nowhere'}")
        if fact is not None and not fact.verified:
            finding = "would pass" if fact.finding else "would fail"
            notes.append(f"capability fact unverified ({finding}): decides nothing")
        status = _combine(run_status, fact.status if fact is not None else None)
        judged_by_run = run_status in ("ok", "fail")
        kinds = [k for k, present in (("run", run is not None), ("capability", fact)) if present]
        kind = " + ".join(kinds) + ("" if fact is None or fact.verified else " (unverified)")
        rows.append(
            {
                "candidate": candidate,
                "requirement": name,
                "bound": run["bound"] if run is not None else fact.bound,  # type: ignore[union-attr]
                "measured": run["measured"] if run is not None else None,
                "capability": fact.capability if fact is not None else None,
                "status": status,
                "ok": {"ok": True, "fail": False}.get(status),
                "margin": margin(name, run["bound"], run["measured"]) if judged_by_run else None,
                "kind": kind,
                "evidence": str(run_path) if run is not None else fact.source,  # type: ignore[union-attr]
                "source": fact.source if fact is not None else None,
                "note": "; ".join(notes) or None,
            }
        )
    return rows


def evidence_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Evidence rows as a table; values keep their own types (a bound of 0 stays 0, a missing
    note stays None), only ``margin`` is a float column."""
    table = pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS), dtype=object)
    table["margin"] = table["margin"].astype("float64")
    return table


#: Margins that agree to this many decimals (0.1 %, the precision the tables print) are a tie.
MARGIN_DECIMALS = 3


def _names(rows: pd.DataFrame, status: str) -> list[str]:
    return list(rows.loc[rows["status"] == status, "requirement"])


def rank(evidence: pd.DataFrame, runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per candidate, best first, in an order that never depends on the order the
    candidates were listed in:

    1. fewest failed requirements;
    2. then a candidate the evidence fully judges (``pass``) before one it cannot
       (``inconclusive``: unknown or not modelled requirements, never counted as failures);
    3. then the largest worst margin, then the largest mean margin (when the tightest bound
       ties, e.g. every candidate keeps up with the offered rate, the other headroom decides),
       margins compared at 0.1 %.

    Candidates equal on all three share a rank (``tie`` is True) and are listed by name.
    """
    rows = []
    for candidate, info in runs.items():
        mine = evidence[evidence["candidate"] == candidate]
        failed, unknown = _names(mine, "fail"), _names(mine, "unknown")
        unmodelled = _names(mine, "not modelled")
        margins = [float(m) for m in mine["margin"] if m is not None and not math.isnan(m)]
        verdict = "fail" if failed else "inconclusive" if unknown or unmodelled else "pass"
        rows.append(
            {
                "candidate": candidate,
                "target": info["target"],
                "profile": info.get("profile"),
                "verdict": verdict,
                "failed": len(failed),
                "failed_requirements": ", ".join(failed),
                "unknown": len(unknown),
                "unknown_requirements": ", ".join(unknown),
                "not_modelled": ", ".join(unmodelled),
                "worst_margin": min(margins) if margins else None,
                "mean_margin": sum(margins) / len(margins) if margins else None,
                "run": info["run"],
                "reused": info["reused"],
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    key = pd.DataFrame(
        {
            "failed": table["failed"],
            "judged": (table["verdict"] == "inconclusive").astype(int),
            "worst": -_rounded(table["worst_margin"]),
            "mean": -_rounded(table["mean_margin"]),
        }
    )
    keys = list(key.itertuples(index=False, name=None))
    table.insert(0, "rank", [1 + sum(other < mine for other in keys) for mine in keys])
    table.insert(1, "tie", [keys.count(mine) > 1 for mine in keys])
    return table.sort_values(["rank", "candidate"], kind="stable").reset_index(drop=True)


def _rounded(margins: pd.Series) -> pd.Series:
    """Margins at the precision ties are judged by; no margin at all ranks below any margin."""
    return margins.astype("float64").round(MARGIN_DECIMALS).fillna(-math.inf)


def _current_metrics(path: Path) -> bool:
    """Whether a run's metrics.json was judged by today's rules (it has every count key, e.g.
    ``unprocessed``, which ``max_lost`` now holds against), so reusing it judges it the same."""
    try:
        counts = json.loads(path.read_text(encoding="utf-8")).get("counts", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(counts, dict) and all(key in counts for key in COUNT_KEYS)


def find_reusable(results_dir: Path, digest: str, target: str, seed: int) -> Path | None:
    """The newest complete run of exactly this scenario, target and seed, if one exists (and
    was analysed with every count the verdict now uses)."""
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
            and _current_metrics(run_file.parent / results.METRICS_FILE)
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
            target = target_for(candidate, real, options.urls)
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
                # Where the run's files are now (a new run sits in the staging folder until the
                # selection is complete).
                written = previous if previous is not None else folder / candidate
            except KeyboardInterrupt:
                raise
            except Exception as error:  # a broken candidate must not hide the others
                errors[candidate] = f"{type(error).__name__}: {error}"
                continue
            runs[candidate] = {
                "target": target,
                "run": str(run_path),
                "reused": previous is not None,
                "profile": profile_label(written) if target == "sim" else None,
            }
            rows.extend(
                evidence_rows(candidate, metrics, run_path, as_run, target, profile_of=written)
            )
        evidence = evidence_table(rows)
        ranking = rank(evidence, runs) if runs else pd.DataFrame()
        if len(ranking):  # evidence in rank order too, so no listing order shows through
            order = {name: i for i, name in enumerate(ranking["candidate"])}
            evidence = evidence.sort_values(
                "candidate", key=lambda c: c.map(order), kind="stable"
            ).reset_index(drop=True)
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
                verdict=_best(ranking),
                versions=results.package_versions(),
                host=results.host_info(),
            ),
        )
    return Selection(final, ranking, evidence, errors, notes)


def _best(ranking: pd.DataFrame) -> str:
    """The selection's one-line verdict for listings: the top candidate, or the tied ones."""
    if not len(ranking):
        return "none"
    top = ranking.loc[ranking["rank"] == 1, "candidate"]
    return "best: " + " = ".join(top) + (" (tie)" if len(top) > 1 else "")


def _notes(scenario: Scenario, runs: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """What a reader must keep in mind about the ranking: which candidates were not judged on
    speed (simulated without a performance profile), and ties."""
    notes: list[str] = []
    speed = [
        name
        for name, stated in (
            ("throughput", scenario.requirements.throughput is not None),
            ("latency", bool(scenario.requirements.latency)),
        )
        if stated
    ]
    unprofiled = sorted(
        c
        for c, info in runs.items()
        if info["target"] == "sim" and not has_profile(c, scenario.broker.profile)
    )
    if speed and unprofiled:
        every = " (every candidate)" if len(unprofiled) == len(runs) else ""
        notes.append(
            f"{' and '.join(speed)} are not modelled for the simulated candidates "
            f"{', '.join(unprofiled)}{every}: their presets carry no performance profile, so the "
            "simulator plays an ideal broker; those requirements read 'not modelled', are not "
            "judged, and the verdicts and ranking rest on loss, duplicates, ordering and "
            "capabilities (run them on the real broker, or calibrate a profile, to judge speed)"
        )
    for candidate, info in sorted(runs.items()):
        label = _broker_label(Path(info["run"]))
        if label:  # e.g. the Kafka protocol measured on a stand-in broker
            notes.append(
                f"{candidate} was measured on {label}: its evidence shows the protocol's "
                "semantics, not the product's storage, replication or speed"
            )
    return tuple(notes)


def profile_label(run: Path) -> str | None:
    """Which performance profile a simulated run played, with its provenance (run.json
    ``target_info.profile.describe``: calibrated where and when, or shipped default with its
    sources, or none), so a verdict on speed says what it rests on."""
    try:
        record = json.loads((run / results.RUN_FILE).read_text("utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    profile = (record.get("target_info") or {}).get("profile") or {}
    described = profile.get("describe") if isinstance(profile, dict) else None
    return str(described) if described else None


def _broker_label(run: Path) -> str | None:
    """What a real run's broker really was, when its target says (run.json
    ``target_info.broker_label``)."""
    try:
        record = json.loads((run / results.RUN_FILE).read_text("utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    label = (record.get("target_info") or {}).get("broker_label")
    return str(label) if label else None
