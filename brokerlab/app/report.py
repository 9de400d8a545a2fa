"""The HTML report: one self-contained file that says which target meets the use case, and why.

``build_report`` reads run folders (and comparison folders, which expand to their target runs)
exactly as they are on disk, draws the figures of :mod:`brokerlab.app.figures`, and writes one HTML
file with the figures inlined as SVG and the CSS inlined too: no script, no font, no URL, so the
file opens offline, attaches to a ticket, and still reads the same in five years. Figures are also
written as PNG and SVG beside it (``figures/``) for slides and documents.

Every string that came from a user (scenario text, names, paths, warnings, error messages) is
HTML-escaped; numbers are formatted here, in one place, so every table reads the same.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from brokerlab.app import figures
from brokerlab.app.compare import ROWS as COMPARISON_ROWS
from brokerlab.core import results
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
    run: dict[str, Any]
    metrics: dict[str, Any]
    scenario_text: str
    sends: pd.DataFrame
    deliveries: pd.DataFrame
    timeline: pd.DataFrame
    faults: list[FaultWindow]

    @property
    def target(self) -> str:
        """The target that produced the run (``sim`` or a real broker)."""
        return str(self.run.get("target") or self.metrics.get("target") or "?")

    @property
    def scenario(self) -> str:
        """The scenario's name."""
        return str(self.metrics.get("scenario") or self.run.get("scenario") or "?")

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


@dataclass(frozen=True)
class ReportedComparison:
    """A comparison folder: its run.json, including targets that failed and why."""

    path: Path
    run: dict[str, Any]

    @property
    def errors(self) -> dict[str, str]:
        """Target -> error message, for targets that did not produce a run."""
        return {str(k): str(v) for k, v in (self.run.get("errors") or {}).items()}


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


def _read_run(path: Path, label: str) -> ReportedRun:
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise ReportError(f"{path}: not a complete run folder (missing {', '.join(missing)})")
    run = _read_json(path / results.RUN_FILE)
    metrics = _read_json(path / results.METRICS_FILE)
    try:
        sends = pd.read_parquet(path / SENDS_FILE)
        deliveries = pd.read_parquet(path / DELIVERIES_FILE)
        timeline = pd.read_parquet(path / TIMELINE_FILE)
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot read the trace: {error}") from None
    faults = [
        FaultWindow(
            str(w.get("action", "?")),
            str(w.get("target", "?")),
            float(w.get("t_start", 0.0)),
            float(w.get("t_end", 0.0)),
        )
        for w in run.get("faults") or []
        if isinstance(w, dict)
    ]
    if not faults and "faults" in timeline:
        faults = figures.fault_windows(timeline)
    return ReportedRun(
        path=path,
        label=label,
        run=run,
        metrics=metrics,
        scenario_text=(path / results.SCENARIO_FILE).read_text(encoding="utf-8"),
        sends=sends,
        deliveries=deliveries,
        timeline=timeline,
        faults=faults,
    )


def _run_target(path: Path) -> str:
    """The target named in a run folder's run.json (for labels, before reading the trace)."""
    run = _read_json(path / results.RUN_FILE)
    return str(run.get("target") or path.name)


def load_runs(paths: Sequence[Path]) -> ReportInput:
    """Read run and comparison folders; a comparison contributes each target run it holds.

    Raises :class:`ReportError` naming the path and the reason for anything that is not a
    complete run or comparison folder. A folder given twice is reported once.
    """
    if not paths:
        raise ReportError("no run or comparison folder given")
    found: list[Path] = []
    report = ReportInput()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ReportError(f"{path}: no such folder")
        if not path.is_dir():
            raise ReportError(f"{path}: not a folder (expected a run or comparison folder)")
        if not (path / results.RUN_FILE).is_file():
            raise ReportError(f"{path}: not a run or comparison folder (no {results.RUN_FILE})")
        run = _read_json(path / results.RUN_FILE)
        if run.get("kind") == "comparison":
            report.comparisons.append(ReportedComparison(path, run))
            names = [str(t) for t in run.get("targets") or run.get("runs") or []]
            children = [path / name for name in names if (path / name).is_dir()]
            if not children and not run.get("errors"):
                raise ReportError(f"{path}: comparison folder holds no target runs")
            found.extend(children)
        else:
            found.append(path)
    unique: list[Path] = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    targets = [_run_target(p) for p in unique]
    for path, target in zip(unique, targets, strict=True):
        label = target
        if targets.count(target) > 1:  # e.g. two sim runs: tell them apart by folder
            where = f"{path.parent.name}/{path.name}" if path.name == target else path.name
            label = f"{target} [{where}]"
        report.runs.append(_read_run(path, label))
    return report


# --------------------------------------------------------------------------- formatting


def _e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute.

    ``://`` becomes ``&#58;//``: it reads the same, but a URL in user text (a broker's monitoring
    address) never appears in the source as one, so "the file holds no URL" stays checkable.
    """
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


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
        return _e(value)
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


def _badge(ok: bool | None, text: str | None = None) -> str:
    kind, default = {True: ("pass", "pass"), False: ("fail", "fail"), None: ("na", "n/a")}[ok]
    return f'<span class="badge {kind}">{_e(text or default)}</span>'


def _verdict_badge(verdict: Any) -> str:
    ok = {"pass": True, "fail": False}.get(str(verdict))
    return _badge(ok, str(verdict).upper() if ok is not None else "?")


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric_from: int = 1,
    caption: str | None = None,
    classes: str = "",
) -> str:
    """A table from already-escaped cells; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{cell}</th>'
        for i, cell in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{cell}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (
        f'<div class="table-wrap"><table class="{classes}">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _lookup(metrics: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = metrics
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _figure_html(rendered: figures.SavedFigure, caption: str) -> str:
    return (
        f'<figure class="chart" id="figure-{_e(rendered.name)}">{rendered.svg}'
        f"<figcaption>{caption} "
        f'<span class="files">({_e(rendered.png_path.name)}, {_e(rendered.svg_path.name)} '
        f"in {FIGURES_DIR}/)</span></figcaption></figure>"
    )


# --------------------------------------------------------------------------- sections


def _summary(report: ReportInput) -> str:
    runs = report.runs
    passed = [r.label for r in runs if r.metrics.get("verdict") == "pass"]
    failed_targets = {
        target: message for comp in report.comparisons for target, message in comp.errors.items()
    }
    if passed:
        lead = (
            f"<strong>{len(passed)} of {len(runs)}</strong> run(s) meet every measurable "
            f"requirement: {', '.join(f'<strong>{_e(p)}</strong>' for p in passed)}."
        )
    else:
        lead = f"<strong>No run</strong> of the {len(runs)} meets every measurable requirement."
    cards = []
    for run in runs:
        metrics = run.metrics
        counts = metrics.get("counts") or {}
        e2e = _lookup(metrics, ("latency_ms", "end_to_end")) or {}
        tput = metrics.get("throughput_per_s") or {}
        reqs = metrics.get("requirements") or []
        met = sum(1 for r in reqs if r.get("ok") is True)
        judged = sum(1 for r in reqs if r.get("ok") is not None)
        facts = [
            ("requirements met", f"{met} / {judged}"),
            ("delivered", f"{fmt_number(counts.get('unique'))} / {fmt_number(counts.get('sent'))}"),
            ("lost", fmt_number(counts.get("lost"))),
            ("duplicates", fmt_number(counts.get("duplicates"))),
            ("end-to-end p99", fmt_number(e2e.get("p99"), "ms")),
            ("delivered rate", fmt_number(tput.get("delivered"), "msg/s")),
        ]
        rows = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
        cards.append(
            f'<div class="card"><div class="card-head"><span class="target">{_e(run.label)}'
            f"</span>{_verdict_badge(metrics.get('verdict'))}</div><dl>{rows}</dl></div>"
        )
    for target, message in failed_targets.items():
        cards.append(
            f'<div class="card broken"><div class="card-head"><span class="target">{_e(target)}'
            f'</span>{_badge(False, "NO RUN")}</div><p class="error">{_e(message)}</p></div>'
        )
    unexpected = [r.label for r in runs if r.run.get("unexpected")]
    alert = ""
    if unexpected:
        alert = (
            '<p class="alert">Delivered ids that were never sent (a bug in a broker, adapter or '
            f"harness) in: {_e(', '.join(unexpected))}. See the environment section.</p>"
        )
    return (
        f'<section id="summary"><h2>Summary</h2><p class="lead">{lead}</p>'
        f'<div class="cards">{"".join(cards)}</div>{alert}</section>'
    )


def _verdict(runs: Sequence[ReportedRun]) -> str:
    """Requirement by requirement, one column per target."""
    names: list[str] = []
    bounds: dict[str, Any] = {}
    for run in runs:
        for req in run.metrics.get("requirements") or []:
            name = str(req.get("name"))
            if name not in names:
                names.append(name)
                bounds[name] = req.get("bound")
    if not names:
        return (
            '<section id="verdict"><h2>Verdict against the requirements</h2>'
            "<p>The scenario states no requirements.</p></section>"
        )
    header = ["requirement", "bound", *(_e(r.label) for r in runs)]
    rows = []
    for name in names:
        unit = requirement_unit(name)
        relation = "≥" if name == "throughput" else ("" if unit in ("", "B") else "≤")
        bound = f"{relation} {fmt_number(bounds[name], unit)}".strip()
        cells = [f"<code>{_e(name)}</code>", bound]
        for run in runs:
            req = next(
                (r for r in run.metrics.get("requirements") or [] if r.get("name") == name), None
            )
            if req is None:
                cells.append('<span class="muted">not stated</span>')
                continue
            ok = req.get("ok")
            if ok is None:
                cells.append(_badge(None))  # the paragraph above says what n/a means
                continue
            measured = req.get("measured")
            shown = fmt_number(measured, unit) if measured is not None else "no data"
            cells.append(f"{shown} {_badge(bool(ok))}")
        rows.append(cells)
    verdicts = ["<strong>verdict</strong>", ""]
    verdicts += [_verdict_badge(r.metrics.get("verdict")) for r in runs]
    rows.append(verdicts)
    return (
        '<section id="verdict"><h2>Verdict against the requirements</h2>'
        "<p>Each requirement of the scenario held against each run. <em>n/a</em>: "
        "not measurable by a run (replay, message size); a capability table judges those. "
        "Latency percentiles leave out the warm-up.</p>"
        f"{_table(header, rows, numeric_from=1, classes='verdict')}</section>"
    )


def _latency(runs: Sequence[ReportedRun], folder: Path, colors: dict[str, str]) -> str:
    parts = [
        '<section id="latency"><h2>Latency</h2>'
        "<p>Latency counts from the <em>intended</em> send time (open-loop load), so a producer "
        "that falls behind cannot hide queueing. Percentiles in the table come from metrics.json "
        "(HDR histogram); the figures use the same per-message latencies from the trace.</p>"
    ]
    header = ["target", "latency", *(c.replace("_", ".") for c in LATENCY_COLUMNS), "count"]
    rows = []
    for run in runs:
        for kind, stats in (run.metrics.get("latency_ms") or {}).items():
            stats = stats or {}
            rows.append(
                [
                    _e(run.label),
                    _e(kind),
                    *(fmt_number(stats.get(c)) for c in LATENCY_COLUMNS),
                    fmt_number(stats.get("count")),
                ]
            )
    parts.append(_table(header, rows, numeric_from=2, caption="latency in milliseconds"))
    for kind in DRAWN_LATENCIES:
        samples = {
            r.label: figures.latency_samples(r.sends, r.deliveries, kind, r.warmup) for r in runs
        }
        title = figures.LATENCY_TITLES[kind]
        parts.append(f"<h3>{_e(title)}</h3>")
        empty = [label for label, values in samples.items() if len(values) == 0]
        if len(empty) == len(samples):
            parts.append(
                f'<p class="muted">No run has {_e(kind.replace("_", "-"))} latencies '
                "(e.g. fire-and-forget publishes have no broker acknowledgement to time).</p>"
            )
            continue
        if empty:
            parts.append(
                f'<p class="muted">No {_e(kind.replace("_", "-"))} latencies for '
                f"{_e(', '.join(empty))} (fire-and-forget publishes or nothing delivered).</p>"
            )
        shown = {label: values for label, values in samples.items() if len(values)}
        spectrum = figures.save_figure(
            figures.latency_spectrum(shown, title=f"{kind} by percentile", colors=colors),
            f"latency-spectrum-{kind}",
            folder,
        )
        cdf = figures.save_figure(
            figures.latency_cdf(shown, title=f"{kind} distribution", colors=colors),
            f"latency-cdf-{kind}",
            folder,
        )
        parts.append(
            '<div class="grid2">'
            + _figure_html(spectrum, "Percentile spectrum: each step right is one more nine.")
            + _figure_html(cdf, "Cumulative distribution.")
            + "</div>"
        )
    parts.append("</section>")
    return "".join(parts)


def _throughput(runs: Sequence[ReportedRun], folder: Path, colors: dict[str, str]) -> str:
    header = ["target", "offered", "sent", "delivered", "delivered / offered", "duration"]
    rows = []
    for run in runs:
        tput = run.metrics.get("throughput_per_s") or {}
        offered, delivered = tput.get("offered"), tput.get("delivered")
        ratio = delivered / offered if offered and delivered is not None else None
        rows.append(
            [
                _e(run.label),
                fmt_number(offered, "msg/s"),
                fmt_number(tput.get("sent"), "msg/s"),
                fmt_number(delivered, "msg/s"),
                fmt_percent(ratio - 1) if ratio is not None else "–",
                fmt_number(run.metrics.get("duration_s"), "s"),
            ]
        )
    timelines = {r.label: r.timeline for r in runs}
    faults = {r.label: r.faults for r in runs}
    throughput = figures.save_figure(
        figures.throughput_timeline(timelines, faults, colors=colors), "throughput", folder
    )
    backlog = figures.save_figure(
        figures.backlog_timeline(timelines, faults, colors=colors), "backlog", folder
    )
    fault_rows = [
        [
            _e(r.label),
            _e(w.action),
            _e(w.target),
            fmt_number(w.t_start, "s"),
            fmt_number(w.t_end, "s"),
            fmt_number(w.t_end - w.t_start, "s"),
        ]
        for r in runs
        for w in r.faults
    ]
    fault_table = (
        _table(
            ["run", "fault", "on", "start", "end", "length"],
            fault_rows,
            numeric_from=3,
            caption="fault windows (shaded in the figures)",
        )
        if fault_rows
        else '<p class="muted">No faults were injected.</p>'
    )
    return (
        '<section id="throughput"><h2>Throughput and consumer lag</h2>'
        "<p>Rates are measured after warm-up; the delivered rate counts distinct messages up to "
        "the last first delivery, so a backlog drained after the producers stopped counts "
        "against it.</p>"
        + _table(header, rows, caption="throughput")
        + _figure_html(throughput, "Messages sent and delivered per second, per run.")
        + _figure_html(backlog, "Backlog: messages sent and not yet received by any consumer.")
        + fault_table
        + "</section>"
    )


def _delivery(runs: Sequence[ReportedRun], folder: Path, colors: dict[str, str]) -> str:
    keys: list[str] = []
    for run in runs:
        for key in run.metrics.get("counts") or {}:
            if key not in keys:
                keys.append(key)
    header = ["target", *(_e(k.replace("_", " ")) for k in keys)]
    rows = [
        [_e(r.label), *(fmt_number((r.metrics.get("counts") or {}).get(k)) for k in keys)]
        for r in runs
    ]
    chart = figures.save_figure(
        figures.delivery_counts({r.label: r.metrics for r in runs}, colors=colors),
        "delivery",
        folder,
    )
    return (
        '<section id="delivery"><h2>Delivery</h2>'
        "<p>After a final drain: <em>lost</em> = acknowledged (or sent, fire-and-forget) and "
        "never delivered; <em>duplicates</em> = deliveries beyond the first; <em>out of "
        "order</em> = delivered before an earlier message of the same key and producer; "
        "<em>unknown</em> = publish outcome unknown (timeout).</p>"
        + _figure_html(chart, "Message counts per run; anomalies on their own scale.")
        + _table(header, rows, caption="delivery counts")
        + "</section>"
    )


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
        if sims and reals:
            pairs.append((sims[0], reals))
    return pairs


def _sim_vs_real(runs: Sequence[ReportedRun], folder: Path, colors: dict[str, str]) -> str:
    pairs = sim_real_pairs(runs)
    if not pairs:
        return ""
    parts = [
        '<section id="sim-vs-real"><h2>Simulator vs real</h2>'
        "<p>Each metric of the simulator next to each real run of the same scenario, with the "
        "relative error (real − sim) / sim. Cells beyond "
        f"±{DISAGREEMENT:.0%} are highlighted: there the model and the broker disagree.</p>"
    ]
    for index, (sim, reals) in enumerate(pairs):
        if len(pairs) > 1:
            parts.append(f"<h3>{_e(sim.scenario)}</h3>")
        others = [r.label for r in reals if sim.broker_kind and r.target != sim.broker_kind]
        if others:
            parts.append(
                f'<p class="note">The simulator modelled <code>{_e(sim.broker_kind)}</code>; '
                f"{_e(', '.join(others))} ran a different broker, so their differences include "
                "the broker choice, not only model error.</p>"
            )
        header = ["metric", _e(sim.label)]
        for real in reals:
            header += [_e(real.label), "error"]
        rows = []
        errors: dict[str, dict[str, float]] = {r.label: {} for r in reals}
        for label, path in COMPARISON_ROWS:
            if path == ("verdict",):
                continue
            sim_value = _lookup(sim.metrics, path)
            row = [_e(label), fmt_number(sim_value)]
            for real in reals:
                real_value = _lookup(real.metrics, path)
                error = relative_error(real_value, sim_value)
                flag = error is not None and abs(error) > DISAGREEMENT
                row += [
                    fmt_number(real_value),
                    f'<span class="{"off" if flag else ""}">{fmt_percent(error)}</span>',
                ]
                if error is not None and path[0] != "counts":
                    errors[real.label][label] = error
            rows.append(row)
        parts.append(_table(header, rows, caption="simulator vs real, side by side"))
        chart = figures.save_figure(
            figures.relative_error(errors, colors=colors), f"sim-vs-real-{index}", folder
        )
        parts.append(
            _figure_html(chart, "Relative error of latencies and rates; the band is ±10%.")
        )
    parts.append("</section>")
    return "".join(parts)


def _scenario(runs: Sequence[ReportedRun]) -> str:
    first = runs[0]
    parts = [
        '<section id="scenario"><h2>Scenario</h2>'
        f"<p>As run, in base units (seconds, bytes, per second), from "
        f"<code>{_e(first.path / results.SCENARIO_FILE)}</code>:</p>"
        f'<pre class="yaml">{_e(first.scenario_text)}</pre>'
    ]
    for run in runs[1:]:
        if run.scenario_text == first.scenario_text:
            continue
        diff = difflib.unified_diff(
            first.scenario_text.splitlines(),
            run.scenario_text.splitlines(),
            fromfile=first.label,
            tofile=run.label,
            lineterm="",
        )
        lines = []
        for line in diff:
            kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")
            lines.append(f'<span class="{kind}">{_e(line)}</span>')
        parts.append(
            f"<p>{_e(run.label)} ran it with these differences "
            "(a real target plays the scenario on its own broker kind):</p>"
            f'<pre class="diff">{chr(10).join(lines)}</pre>'
        )
    parts.append("</section>")
    return "".join(parts)


def _environment(report: ReportInput) -> str:
    runs = report.runs
    facts = [
        ("run folder", lambda r: f"<code>{_e(r.path)}</code>"),
        ("started (UTC)", lambda r: _e(r.run.get("started_at", "–"))),
        ("seed", lambda r: fmt_number(r.run.get("seed"))),
        ("wall time", lambda r: fmt_number(r.run.get("wall_time_s"), "s")),
        ("trace span", lambda r: fmt_number(r.metrics.get("duration_s"), "s")),
        ("lab version", lambda r: _e(r.run.get("lab_version", "–"))),
        ("host", lambda r: _e((r.run.get("host") or {}).get("hostname", "–"))),
        ("platform", lambda r: _e((r.run.get("host") or {}).get("platform", "–"))),
        ("CPUs", lambda r: fmt_number((r.run.get("host") or {}).get("cpus"))),
        ("command", lambda r: f"<code>{_e(r.run.get('command', '–'))}</code>"),
    ]
    header = ["", *(_e(r.label) for r in runs)]
    rows = [[_e(name), *(get(r) for r in runs)] for name, get in facts]
    # Target info (broker version, how it was started, harness settings) is long and nested:
    # one folded block per run keeps the table readable and every detail one click away.
    details = "".join(
        f"<details><summary>{_e(r.label)}: target info</summary>"
        f'<pre class="json">{_e(json.dumps(r.run.get("target_info"), indent=2, sort_keys=True))}'
        "</pre></details>"
        for r in runs
        if r.run.get("target_info")
    )
    packages: list[str] = []
    for run in runs:
        for name in run.run.get("versions") or {}:
            if name not in packages:
                packages.append(name)
    versions = [
        [_e(name), *(_e((r.run.get("versions") or {}).get(name, "–")) for r in runs)]
        for name in packages
    ]
    warning_items = [
        f"<li><strong>{_e(r.label)}</strong>: {_e(w)}</li>"
        for r in runs
        for w in r.run.get("warnings") or []
    ]
    warning_items += [
        f"<li><strong>{_e(target)}</strong> (no run): {_e(message)}</li>"
        for comp in report.comparisons
        for target, message in comp.errors.items()
    ]
    warnings = (
        f'<ul class="warnings">{"".join(warning_items)}</ul>'
        if warning_items
        else '<p class="muted">No warnings.</p>'
    )
    return (
        '<section id="environment"><h2>Environment</h2>'
        + _table(
            header,
            rows,
            numeric_from=99,
            caption="where and how each run happened",
            classes="facts",
        )
        + details
        + "<h3>Warnings</h3>"
        + warnings
        + _table(header, versions, numeric_from=99, caption="versions", classes="facts")
        + "</section>"
    )


# --------------------------------------------------------------------------- page


def render_html(report: ReportInput, figures_dir: Path) -> str:
    """The whole page; figures are drawn into ``figures_dir`` as they are laid out."""
    runs = report.runs
    colors = figures.target_colors([r.label for r in runs])
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    title = f"brokerlab report: {', '.join(scenarios)}"
    first = runs[0]
    description = str(first.scenario_data.get("description") or "")
    inputs = [*(c.path for c in report.comparisons), *(r.path for r in runs)]
    shown_inputs = ", ".join(f"<code>{_e(p)}</code>" for p in inputs[:6])
    if len(inputs) > 6:
        shown_inputs += f" and {len(inputs) - 6} more"
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        _summary(report),
        _verdict(runs),
        _latency(runs, figures_dir, colors),
        _throughput(runs, figures_dir, colors),
        _delivery(runs, figures_dir, colors),
        _sim_vs_real(runs, figures_dir, colors),
        _scenario(runs),
        _environment(report),
    ]
    toc = [
        ("summary", "Summary"),
        ("verdict", "Verdict"),
        ("latency", "Latency"),
        ("throughput", "Throughput & lag"),
        ("delivery", "Delivery"),
        ("sim-vs-real", "Sim vs real"),
        ("scenario", "Scenario"),
        ("environment", "Environment"),
    ]
    body = "".join(sections)
    links = "".join(f'<a href="#{a}">{t}</a>' for a, t in toc if f'id="{a}"' in body)
    version = first.run.get("lab_version") or results.package_versions()["brokerlab"]
    return _template("report.html").substitute(
        title=_e(title),
        css=_template("report.css").template,
        description=f'<p class="description">{_e(description)}</p>' if description else "",
        inputs=(
            f"{len(runs)} run(s): {_e(', '.join(r.label for r in runs))} · from {shown_inputs}"
            f" · generated {created}"
        ),
        toc=links,
        sections=body,
        version=_e(version),
    )


def _template(name: str) -> string.Template:
    """A file of ``brokerlab/templates`` (plain string.Template: no template engine needed)."""
    text = resources.files("brokerlab").joinpath("templates", name).read_text(encoding="utf-8")
    return string.Template(text)


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
