"""The HTML report: one self-contained file that says which target meets the use case, and why.

``build_report`` reads run folders (and comparison folders, which expand to their target runs)
exactly as they are on disk, draws the figures of :mod:`brokerlab.app.figures`, and writes one HTML
file with the figures inlined as SVG and the CSS inlined too: no script, no font, no URL, so the
file opens offline, attaches to a ticket, and still reads the same in five years. Figures are also
written as PNG and SVG beside it (``figures/``) for slides and documents.

The page is laid out by Jinja2 templates in ``brokerlab/templates`` (``report.html``, one
``sections/ANCHOR.html`` per section, ``macros.html`` for tables, badges and figures); this
module only prepares what each section shows. :data:`SECTIONS` is the one list of sections: the
contents bar and the page are both drawn from it. Templates escape everything (autoescape, plus
:func:`_escape` for every value they print), so a scenario's text is shown, never run; numbers
are formatted here, in one place, so every table reads the same.
"""

from __future__ import annotations

import difflib
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup
from matplotlib.figure import Figure

from brokerlab.app import figures
from brokerlab.app.compare import ROWS as COMPARISON_ROWS
from brokerlab.core import results
from brokerlab.core.analysis import CAPABILITY_REQUIREMENTS, inconclusive_reasons
from brokerlab.core.trace import DELIVERIES_FILE, SENDS_FILE, TIMELINE_FILE, FaultWindow
from brokerlab.core.vocabulary import LATENCY_STATISTICS

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
#: Files a folder must hold to be reported on as a run.
RUN_FILES = (
    results.RUN_FILE,
    results.METRICS_FILE,
    results.SCENARIO_FILE,
    SENDS_FILE,
    DELIVERIES_FILE,
    TIMELINE_FILE,
)
#: The latency kinds drawn as figures (the table shows all four).
DRAWN_LATENCIES = ("end_to_end", "publish")
LATENCY_COLUMNS = LATENCY_STATISTICS
#: Above this relative error (real vs sim) a cell is highlighted: the model and reality disagree.
DISAGREEMENT = 0.25


class ReportError(Exception):
    """A user's mistake about what to report on: a missing folder, or one that is not a run."""


# --------------------------------------------------------------------------- reading runs


@dataclass(frozen=True)
class ReportedRun:
    """One run folder as the report needs it: provenance, metrics, scenario text and trace."""

    path: Path
    label: str
    manifest: results.RunManifest
    metrics: dict[str, Any]
    scenario_text: str
    sends: pd.DataFrame
    deliveries: pd.DataFrame
    timeline: pd.DataFrame
    faults: list[FaultWindow]

    @property
    def target(self) -> str:
        """The target that produced the run (``sim`` or a real broker)."""
        return self.manifest.target or str(self.metrics.get("target") or "?")

    @property
    def scenario(self) -> str:
        """The scenario's name."""
        return str(self.metrics.get("scenario") or self.manifest.scenario or "?")

    @cached_property
    def scenario_data(self) -> dict[str, Any]:
        """scenario.yaml parsed as plain data (not validated: an old run must still report)."""
        try:
            data = yaml.safe_load(self.scenario_text)
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def warmup(self) -> float:
        """Seconds of warm-up the analysis left out of percentiles; the figures do the same."""
        producers = self.scenario_data.get("producers") or {}
        try:
            return float(producers.get("warmup") or 0.0)
        except (AttributeError, TypeError, ValueError):
            return 0.0

    @property
    def broker_kind(self) -> str | None:
        """The broker kind in the scenario as run (what the simulator modelled)."""
        broker = self.scenario_data.get("broker")
        kind = broker.get("kind") if isinstance(broker, dict) else None
        return str(kind) if kind is not None else None

    @property
    def counts(self) -> dict[str, Any]:
        """metrics.json ``counts`` (empty for a run that has none)."""
        counts = self.metrics.get("counts")
        return counts if isinstance(counts, dict) else {}

    @property
    def requirements(self) -> list[dict[str, Any]]:
        """metrics.json ``requirements``: {name, bound, measured, ok, note?} each."""
        reqs = self.metrics.get("requirements")
        return [r for r in reqs if isinstance(r, dict)] if isinstance(reqs, list) else []


@dataclass(frozen=True)
class ReportedComparison:
    """A comparison folder: its manifest, including targets that failed and why."""

    path: Path
    manifest: results.ComparisonManifest

    @property
    def errors(self) -> dict[str, str]:
        """Target -> error message, for targets that did not produce a run."""
        return dict(self.manifest.errors)


@dataclass
class ReportInput:
    """Everything a report shows, read once from disk."""

    runs: list[ReportedRun] = field(default_factory=list)
    comparisons: list[ReportedComparison] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"{path}: cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise ReportError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def _manifest(path: Path) -> results.Manifest:
    """``path/run.json`` as its typed manifest; any problem is a ReportError naming the file."""
    raw = _read_json(path / results.RUN_FILE)
    if raw.get("kind", "run") == "run":  # a run folder missing its files says so first
        missing = [name for name in RUN_FILES if not (path / name).is_file()]
        if missing:
            raise ReportError(f"{path}: not a complete run folder (missing {', '.join(missing)})")
    try:
        return results.parse_manifest(raw, path / results.RUN_FILE)
    except results.ManifestError as error:
        raise ReportError(str(error)) from None


def _read_run(path: Path, label: str, manifest: results.RunManifest) -> ReportedRun:
    metrics = _read_json(path / results.METRICS_FILE)
    try:
        sends = pd.read_parquet(path / SENDS_FILE)
        deliveries = pd.read_parquet(path / DELIVERIES_FILE)
        timeline = pd.read_parquet(path / TIMELINE_FILE)
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot read the trace: {error}") from None
    faults = list(manifest.faults)
    if not faults and "faults" in timeline:
        faults = figures.fault_windows(timeline)
    return ReportedRun(
        path=path,
        label=label,
        manifest=manifest,
        metrics=metrics,
        scenario_text=(path / results.SCENARIO_FILE).read_text(encoding="utf-8"),
        sends=sends,
        deliveries=deliveries,
        timeline=timeline,
        faults=faults,
    )


def load_runs(paths: Sequence[Path]) -> ReportInput:
    """Read run and comparison folders; a comparison contributes each target run it holds.

    Raises :class:`ReportError` naming the path and the reason for anything that is not a
    complete run or comparison folder. A folder given twice is reported once.
    """
    if not paths:
        raise ReportError("no run or comparison folder given")
    found: list[tuple[Path, results.RunManifest]] = []
    report = ReportInput()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ReportError(f"{path}: no such folder")
        if not path.is_dir():
            raise ReportError(f"{path}: not a folder (expected a run or comparison folder)")
        if not (path / results.RUN_FILE).is_file():
            raise ReportError(f"{path}: not a run or comparison folder (no {results.RUN_FILE})")
        manifest = _manifest(path)
        if isinstance(manifest, results.ComparisonManifest):
            report.comparisons.append(ReportedComparison(path, manifest))
            names = manifest.targets or manifest.runs
            children = [path / name for name in names if (path / name).is_dir()]
            if not children and not manifest.errors:
                raise ReportError(f"{path}: comparison folder holds no target runs")
            for child in children:
                child_manifest = _manifest(child)
                if not isinstance(child_manifest, results.RunManifest):
                    raise ReportError(
                        f"{child}: expected a run folder, found a {child_manifest.kind}"
                    )
                found.append((child, child_manifest))
        elif isinstance(manifest, results.RunManifest):
            found.append((path, manifest))
        else:
            raise ReportError(
                f"{path}: a {manifest.kind} folder; report the run folders inside it instead"
            )
    unique: list[tuple[Path, results.RunManifest]] = []
    for path, manifest in found:
        if path.resolve() not in {p.resolve() for p, _ in unique}:
            unique.append((path, manifest))
    targets = [manifest.target or path.name for path, manifest in unique]
    for (path, manifest), target in zip(unique, targets, strict=True):
        label = target
        if target == "sim" and path.name.startswith("sim:"):
            label = path.name  # compare's simulator twin of a real target: sim:<kind>
        elif targets.count(target) > 1:  # e.g. two sim runs: tell them apart by folder
            where = f"{path.parent.name}/{path.name}" if path.name == target else path.name
            label = f"{target} [{where}]"
        report.runs.append(_read_run(path, label, manifest))
    return report


# --------------------------------------------------------------------------- formatting


def _escape(value: object) -> Markup:
    """Escape anything a template prints (text or a quoted attribute); markup passes as it is.

    ``://`` becomes ``&#58;//``: it reads the same, but a URL in user text (a broker's monitoring
    address) never appears in the source as one, so "the file holds no URL" stays checkable.
    """
    if hasattr(value, "__html__"):
        return Markup(value)
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True).replace("://", "&#58;//"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_number(value: Any, unit: str = "") -> str:
    """A number as people read it: thousands separators, about four significant digits."""
    if _missing(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        text = f"{int(value):,}"
    elif isinstance(value, float | np.floating):
        magnitude = abs(float(value))
        if magnitude == 0:
            text = "0"
        elif magnitude >= 1000:
            text = f"{value:,.0f}"
        elif magnitude >= 100:
            text = f"{value:.1f}"
        elif magnitude >= 1:
            text = f"{value:.2f}"
        else:
            text = f"{value:.3f}"
    else:
        return str(value)
    return f"{text} {unit}".rstrip()


def fmt_percent(ratio: float | None) -> str:
    """A signed relative difference: ``+12.3%``."""
    if ratio is None or math.isnan(ratio):
        return "–"
    if math.isinf(ratio):
        return "∞"
    return f"{ratio * 100:+.1f}%"


def requirement_unit(name: str) -> str:
    """The unit a requirement's bound and measurement are in (see analysis.RequirementResult)."""
    if name == "throughput":
        return "msg/s"
    if name == "max_message_size":
        return "B"
    if name.split(" ")[0] in figures.LATENCY_TITLES:
        return "ms"
    if name in ("max_lost", "max_duplicates") or name.startswith("ordering"):
        return "msgs"
    return ""


BadgeKind = Literal["pass", "fail", "inconclusive", "na"]


@dataclass(frozen=True)
class Badge:
    """A coloured mark: ``kind`` picks the colour (a CSS class), ``text`` is what it says."""

    kind: BadgeKind
    text: str


@dataclass(frozen=True)
class Cell:
    """A table cell with more than text: code, a muted or highlighted value, a badge, a note."""

    text: str = ""
    code: bool = False
    muted: bool = False
    off: bool = False
    badge: Badge | None = None
    note: str | None = None


#: A table cell: plain text, or a :class:`Cell`.
CellValue = str | Cell


def verdict_badge(verdict: Any) -> Badge:
    """A run's verdict: PASS, FAIL, INCONCLUSIVE (never shown as a pass), or ``?``."""
    if verdict in ("pass", "fail", "inconclusive"):
        return Badge(verdict, str(verdict).upper())
    return Badge("na", "?")


def requirement_cell(req: dict[str, Any] | None, unit: str) -> Cell:
    """One requirement held against one run, with why it could not be judged if it could not."""
    if req is None:
        return Cell("not stated", muted=True)
    ok, note = req.get("ok"), req.get("note")
    note = str(note) if note else None
    measured = req.get("measured")
    shown = fmt_number(measured, unit) if measured is not None else "no data"
    if ok is None and str(req.get("name")) in CAPABILITY_REQUIREMENTS:
        return Cell(badge=Badge("na", "n/a"), note=note)
    if ok is None:
        return Cell(shown, badge=Badge("inconclusive", "cannot tell"), note=note)
    return Cell(shown, badge=Badge("pass", "pass") if ok else Badge("fail", "fail"), note=note)


@dataclass(frozen=True)
class Undecided:
    """Why a run cannot tell: the requirement (or ``run`` for the whole run) and the reason."""

    requirement: str
    why: str


def undecided(run: ReportedRun) -> list[Undecided]:
    """What makes a run inconclusive, as the analysis says (measured requirements with ``ok``
    null and their notes; a run with nothing acknowledged or delivered)."""
    reasons = inconclusive_reasons(run.metrics)
    return [Undecided(*reason.split(": ", 1)) for reason in reasons]


def _lookup(metrics: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = metrics
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass(frozen=True)
class ShownFigure:
    """A figure as the page shows it: inline SVG and the names of its files in figures/."""

    name: str
    svg: Markup
    png: str
    svg_file: str
    folder: str = FIGURES_DIR


@dataclass(frozen=True)
class Canvas:
    """Where a report's figures are saved, and each run's colour in every figure."""

    folder: Path
    colors: dict[str, str]

    def save(self, figure: Figure, name: str) -> ShownFigure:
        """Save ``figure`` as PNG and SVG in the figures folder and return it for the page."""
        saved = figures.save_figure(figure, name, self.folder)
        # Matplotlib's own SVG drawn from our data (text as paths): markup, not user text.
        return ShownFigure(saved.name, Markup(saved.svg), saved.png_path.name, saved.svg_path.name)


# --------------------------------------------------------------------------- sections

#: What a section's template gets, or None when the section has nothing to show.
SectionData = dict[str, Any] | None


def _summary(report: ReportInput, canvas: Canvas) -> SectionData:
    runs = report.runs
    cards = []
    for run in runs:
        counts = run.counts
        e2e = _lookup(run.metrics, ("latency_ms", "end_to_end")) or {}
        tput = run.metrics.get("throughput_per_s") or {}
        met = sum(1 for r in run.requirements if r.get("ok") is True)
        judged = sum(1 for r in run.requirements if r.get("ok") is not None)
        facts = [
            ("requirements met", f"{met} / {judged}"),
            ("delivered", f"{fmt_number(counts.get('unique'))} / {fmt_number(counts.get('sent'))}"),
            ("lost", fmt_number(counts.get("lost"))),
        ]
        if "unprocessed" in counts:
            facts.append(("unprocessed", fmt_number(counts.get("unprocessed"))))
        facts += [
            ("duplicates", fmt_number(counts.get("duplicates"))),
            ("end-to-end p99", fmt_number(e2e.get("p99"), "ms")),
            ("delivered rate", fmt_number(tput.get("delivered"), "msg/s")),
        ]
        verdict = run.metrics.get("verdict")
        cards.append(
            {
                "label": run.label,
                "badge": verdict_badge(verdict),
                "facts": facts,
                "undecided": undecided(run) if verdict == "inconclusive" else [],
            }
        )
    return {
        "total": len(runs),
        "passed": [r.label for r in runs if r.metrics.get("verdict") == "pass"],
        "inconclusive": [
            (r.label, undecided(r)) for r in runs if r.metrics.get("verdict") == "inconclusive"
        ],
        "cards": cards,
        "no_run": [(t, m) for comp in report.comparisons for t, m in comp.errors.items()],
        "unexpected": [r.label for r in runs if r.manifest.unexpected],
    }


def _verdict(report: ReportInput, canvas: Canvas) -> SectionData:
    """Requirement by requirement, one column per target."""
    runs = report.runs
    bounds: dict[str, Any] = {}
    for run in runs:
        for req in run.requirements:
            bounds.setdefault(str(req.get("name")), req.get("bound"))
    rows = []
    for name, bound in bounds.items():
        unit = requirement_unit(name)
        relation = "≥" if name == "throughput" else ("" if unit in ("", "B") else "≤")
        by_run = [
            next((r for r in run.requirements if r.get("name") == name), None) for run in runs
        ]
        rows.append(
            {
                "name": name,
                "bound": f"{relation} {fmt_number(bound, unit)}".strip(),
                "cells": [requirement_cell(req, unit) for req in by_run],
            }
        )
    return {
        "labels": [r.label for r in runs],
        "rows": rows,
        "verdicts": [verdict_badge(r.metrics.get("verdict")) for r in runs],
        "inconclusive": [
            (r.label, undecided(r)) for r in runs if r.metrics.get("verdict") == "inconclusive"
        ],
    }


def _latency(report: ReportInput, canvas: Canvas) -> SectionData:
    runs = report.runs
    rows = [
        [
            run.label,
            kind,
            *(fmt_number((stats or {}).get(c)) for c in LATENCY_COLUMNS),
            fmt_number((stats or {}).get("count")),
        ]
        for run in runs
        for kind, stats in (run.metrics.get("latency_ms") or {}).items()
    ]
    drawn = []
    for kind in DRAWN_LATENCIES:
        samples = {
            r.label: figures.latency_samples(r.sends, r.deliveries, kind, r.warmup) for r in runs
        }
        empty = [label for label, values in samples.items() if len(values) == 0]
        shown = {label: values for label, values in samples.items() if len(values)}
        entry: dict[str, Any] = {
            "title": figures.LATENCY_TITLES[kind],
            "name": kind.replace("_", "-"),
            "empty": empty,
            "none": len(empty) == len(samples),
        }
        if shown:
            entry["spectrum"] = canvas.save(
                figures.latency_spectrum(
                    shown, title=f"{kind} by percentile", colors=canvas.colors
                ),
                f"latency-spectrum-{kind}",
            )
            entry["cdf"] = canvas.save(
                figures.latency_cdf(shown, title=f"{kind} distribution", colors=canvas.colors),
                f"latency-cdf-{kind}",
            )
        drawn.append(entry)
    header = ["target", "latency", *(c.replace("_", ".") for c in LATENCY_COLUMNS), "count"]
    return {"header": header, "rows": rows, "drawn": drawn}


def _throughput(report: ReportInput, canvas: Canvas) -> SectionData:
    runs = report.runs
    rows = []
    for run in runs:
        tput = run.metrics.get("throughput_per_s") or {}
        offered, delivered = tput.get("offered"), tput.get("delivered")
        ratio = delivered / offered if offered and delivered is not None else None
        rows.append(
            [
                run.label,
                fmt_number(offered, "msg/s"),
                fmt_number(tput.get("sent"), "msg/s"),
                fmt_number(delivered, "msg/s"),
                fmt_percent(ratio - 1) if ratio is not None else "–",
                fmt_number(run.metrics.get("duration_s"), "s"),
            ]
        )
    timelines = {r.label: r.timeline for r in runs}
    faults = {r.label: r.faults for r in runs}
    return {
        "header": ["target", "offered", "sent", "delivered", "delivered / offered", "duration"],
        "rows": rows,
        "throughput": canvas.save(
            figures.throughput_timeline(timelines, faults, colors=canvas.colors), "throughput"
        ),
        "backlog": canvas.save(
            figures.backlog_timeline(timelines, faults, colors=canvas.colors), "backlog"
        ),
        "faults": [
            [
                r.label,
                w.action,
                w.target,
                fmt_number(w.t_start, "s"),
                fmt_number(w.t_end, "s"),
                fmt_number(w.t_end - w.t_start, "s"),
            ]
            for r in runs
            for w in r.faults
        ],
    }


def _delivery(report: ReportInput, canvas: Canvas) -> SectionData:
    runs = report.runs
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run.counts if key not in keys]
    # Ids delivered and never sent are counted in run.json (metrics.json may carry them too).
    from_manifest = "unexpected" not in keys
    if from_manifest:
        keys.append("unexpected")
    rows = [
        [
            run.label,
            *(
                fmt_number(
                    run.manifest.unexpected
                    if key == "unexpected" and from_manifest
                    else run.counts.get(key)
                )
                for key in keys
            ),
        ]
        for run in runs
    ]
    chart = canvas.save(
        figures.delivery_counts({r.label: r.metrics for r in runs}, colors=canvas.colors),
        "delivery",
    )
    return {
        "header": ["target", *(k.replace("_", " ") for k in keys)],
        "rows": rows,
        "chart": chart,
    }


def relative_error(real: Any, sim: Any) -> float | None:
    """(real − sim) / |sim|; None when either is missing, ∞ when only the simulator says 0."""
    if _missing(real) or _missing(sim) or isinstance(real, str) or isinstance(sim, str):
        return None
    real, sim = float(real), float(sim)
    if sim == 0:
        return 0.0 if real == 0 else math.copysign(math.inf, real)
    return (real - sim) / abs(sim)


def sim_real_pairs(runs: Sequence[ReportedRun]) -> list[tuple[ReportedRun, list[ReportedRun]]]:
    """For each scenario with a simulator run and real runs: (the first sim run, the real runs)."""
    pairs = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        of_scenario = [r for r in runs if r.scenario == scenario]
        sims = [r for r in of_scenario if r.target == "sim"]
        reals = [r for r in of_scenario if r.target != "sim"]
        # Simulator twins (compare's sim:<kind>): each real run beside the model of its kind.
        twins = [(sim, [r for r in reals if r.target == sim.broker_kind]) for sim in sims]
        twins = [(sim, mine) for sim, mine in twins if mine]
        if twins:
            pairs.extend(twins)
        elif sims and reals:
            pairs.append((sims[0], reals))
    return pairs


def _sim_vs_real(report: ReportInput, canvas: Canvas) -> SectionData:
    pairs = sim_real_pairs(report.runs)
    if not pairs:
        return None
    shown = []
    for index, (sim, reals) in enumerate(pairs):
        header = ["metric", sim.label]
        for real in reals:
            header += [real.label, "error"]
        rows: list[list[CellValue]] = []
        errors: dict[str, dict[str, float]] = {r.label: {} for r in reals}
        for label, path in COMPARISON_ROWS:
            if path == ("verdict",):
                continue
            sim_value = _lookup(sim.metrics, path)
            row: list[CellValue] = [label, fmt_number(sim_value)]
            for real in reals:
                real_value = _lookup(real.metrics, path)
                error = relative_error(real_value, sim_value)
                flag = error is not None and abs(error) > DISAGREEMENT
                row += [fmt_number(real_value), Cell(fmt_percent(error), off=flag)]
                if error is not None and path[0] != "counts":
                    errors[real.label][label] = error
            rows.append(row)
        shown.append(
            {
                "scenario": sim.scenario if len(pairs) > 1 else None,
                "modelled": sim.broker_kind,
                "others": [
                    r.label for r in reals if sim.broker_kind and r.target != sim.broker_kind
                ],
                "header": header,
                "rows": rows,
                "chart": canvas.save(
                    figures.relative_error(errors, colors=canvas.colors), f"sim-vs-real-{index}"
                ),
            }
        )
    return {"pairs": shown, "disagreement": f"{DISAGREEMENT:.0%}"}


def _scenario(report: ReportInput, canvas: Canvas) -> SectionData:
    first, *others = report.runs
    diffs = []
    for run in others:
        if run.scenario_text == first.scenario_text:
            continue
        lines = difflib.unified_diff(
            first.scenario_text.splitlines(),
            run.scenario_text.splitlines(),
            fromfile=first.label,
            tofile=run.label,
            lineterm="",
        )
        kinds = {"+": "add", "-": "del", "@": "hunk"}
        diffs.append({"label": run.label, "lines": [(kinds.get(x[:1], ""), x) for x in lines]})
    return {"file": first.path / results.SCENARIO_FILE, "text": first.scenario_text, "diffs": diffs}


def _environment(report: ReportInput, canvas: Canvas) -> SectionData:
    runs = report.runs
    facts: list[tuple[str, Callable[[ReportedRun], CellValue]]] = [
        ("run folder", lambda r: Cell(str(r.path), code=True)),
        ("started (UTC)", lambda r: r.manifest.started_at or "–"),
        ("seed", lambda r: fmt_number(r.manifest.seed)),
        ("wall time", lambda r: fmt_number(r.manifest.wall_time_s, "s")),
        ("trace span", lambda r: fmt_number(r.metrics.get("duration_s"), "s")),
        ("lab version", lambda r: r.manifest.lab_version or "–"),
        ("simulator profile", lambda r: _profile(r.manifest.profile)),
        ("host", lambda r: str(r.manifest.host.get("hostname", "–"))),
        ("platform", lambda r: str(r.manifest.host.get("platform", "–"))),
        ("CPUs", lambda r: fmt_number(r.manifest.host.get("cpus"))),
        ("command", lambda r: Cell(r.manifest.command or "–", code=True)),
    ]
    packages: list[str] = []
    for run in runs:
        packages += [name for name in run.manifest.versions if name not in packages]
    warnings = [(r.label, w, False) for r in runs for w in r.manifest.warnings]
    warnings += [(t, m, True) for comp in report.comparisons for t, m in comp.errors.items()]
    return {
        "header": ["", *(r.label for r in runs)],
        "facts": [[name, *(get(r) for r in runs)] for name, get in facts],
        # Target info (broker version, how it was started, harness settings) is long and
        # nested: one folded block per run keeps the table readable and every detail a click away.
        "target_info": [
            (r.label, json.dumps(r.manifest.target_info, indent=2, sort_keys=True))
            for r in runs
            if r.manifest.target_info
        ],
        "warnings": warnings,
        "versions": [
            [name, *(r.manifest.versions.get(name, "–") for r in runs)] for name in packages
        ],
    }


def _profile(profile: str | dict[str, Any] | None) -> str:
    """run.json's ``profile``: a name, a description of a calibrated profile, or none (real)."""
    if profile is None:
        return "– (real broker)"
    if isinstance(profile, dict) and "describe" in profile:
        return str(profile["describe"])  # the simulator's own one-line account of its profile
    if isinstance(profile, dict):
        return ", ".join(f"{k}: {v}" for k, v in profile.items())
    return str(profile)


@dataclass(frozen=True)
class Section:
    """One section of the report: its anchor, its link in the contents bar, its heading, and the
    function that prepares what its template (``sections/ANCHOR.html``) shows."""

    anchor: str
    link: str
    heading: str
    prepare: Callable[[ReportInput, Canvas], SectionData]

    @property
    def template(self) -> str:
        """The template that lays the section out."""
        return f"sections/{self.anchor}.html"


#: The report's sections, in page order: the only list of them (page and contents bar alike).
SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", "Summary", _summary),
    Section("verdict", "Verdict", "Verdict against the requirements", _verdict),
    Section("latency", "Latency", "Latency", _latency),
    Section("throughput", "Throughput & lag", "Throughput and consumer lag", _throughput),
    Section("delivery", "Delivery", "Delivery", _delivery),
    Section("sim-vs-real", "Sim vs real", "Simulator vs real", _sim_vs_real),
    Section("scenario", "Scenario", "Scenario", _scenario),
    Section("environment", "Environment", "Environment", _environment),
)


# --------------------------------------------------------------------------- page


def templates() -> jinja2.Environment:
    """The report's templates (package data), escaping every value they print.

    Undefined names are errors, so a misspelt field fails a test instead of leaving a blank.
    """
    return jinja2.Environment(
        loader=jinja2.PackageLoader("brokerlab", "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(report: ReportInput, figures_dir: Path) -> str:
    """The whole page; figures are drawn into ``figures_dir`` as the sections are prepared."""
    runs = report.runs
    canvas = Canvas(figures_dir, figures.target_colors([r.label for r in runs]))
    sections = [
        (section, data)
        for section in SECTIONS
        if (data := section.prepare(report, canvas)) is not None
    ]
    env = templates()
    inputs = [*(c.path for c in report.comparisons), *(r.path for r in runs)]
    version = runs[0].manifest.lab_version or results.package_versions()["brokerlab"]
    page = env.get_template("report.html")
    return page.render(
        title=f"brokerlab report: {', '.join(dict.fromkeys(r.scenario for r in runs))}",
        css=Markup(env.loader.get_source(env, "report.css")[0]),  # type: ignore[union-attr]
        description=str(runs[0].scenario_data.get("description") or ""),
        labels=[r.label for r in runs],
        inputs=inputs[:6],
        more_inputs=max(len(inputs) - 6, 0),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        sections=sections,
        version=version,
    )


def build_report(paths: list[Path], output: Path | None = None) -> Path:
    """Write one self-contained HTML report of run and/or comparison folders; return its path.

    ``output`` defaults to ``<first path>/report.html`` (an existing folder gets a report.html
    inside). Figures are also written as PNG and SVG in ``<output folder>/figures/``. Raises
    :class:`ReportError` for a path that is missing or not a run or comparison folder.
    """
    report = load_runs([Path(p) for p in paths])
    if not report.runs:
        failed = "; ".join(f"{t}: {m}" for c in report.comparisons for t, m in c.errors.items())
        raise ReportError(f"{report.comparisons[0].path}: no target produced a run ({failed})")
    if output is None:
        output = Path(paths[0]) / REPORT_FILE
    output = Path(output)
    if output.is_dir():
        output = output / REPORT_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(report, output.parent / FIGURES_DIR)
    output.write_text(page, encoding="utf-8")
    return output
