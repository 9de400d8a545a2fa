"""The report of a sweep: one self-contained HTML page (figures inline as SVG, no external files
needed to read it), plus the figures as PNG and SVG in ``figures/`` beside it.

It reads only the sweep folder (``sweep.parquet`` or ``sweep.csv``, ``sweep.json``), never runs
anything, so a report can be made again at any time from what was stored.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from brokerlab.app import sweep_figures
from brokerlab.app.sweep import SWEEP_CSV, read_spec, read_table, summarize
from brokerlab.core.vocabulary import LATENCY_KINDS

REPORT_FILE = "report.html"
#: Rows of the full table shown on the page (the CSV next to it has them all).
MAX_ROWS = 500

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td.text { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #c62828; } .inconclusive { color: #a66900; }
.figure svg { max-width: 100%; height: auto; } .note { color: #555; }
.scroll { overflow-x: auto; }
"""


class SweepReportError(Exception):
    """The folder is not a sweep folder (a user's mistake: exit code 2)."""


def is_sweep_folder(folder: Path) -> bool:
    return (folder / SWEEP_CSV).is_file()


def _paths(table: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    if spec.get("vary"):
        return [p for p in spec["vary"] if p in table.columns]
    return list(table.columns[: list(table.columns).index("seed")])


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return html.escape(str(value))


def _summary_html(summary: pd.DataFrame, paths: list[str]) -> str:
    columns = [
        ("e2e p50 ms", "latency_ms.end_to_end.p50"),
        ("e2e p99 ms", "latency_ms.end_to_end.p99"),
        ("completion p99 ms", "latency_ms.completion.p99"),
        ("delivered/s", "throughput_per_s.delivered"),
        ("lost", "counts.lost"),
    ]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*paths, "target", "pass"))
    head += "".join(f"<th>{html.escape(label)}<br>mean ± 95% CI</th>" for label, _ in columns)
    rows = []
    for row in summary.to_dict("records"):
        cells = [f"<td>{_number(row[p])}</td>" for p in paths]
        cells.append(f"<td class=text>{html.escape(str(row['target']))}</td>")
        cls = "pass" if row["passed"] == row["seeds"] else "fail"
        cells.append(f"<td class={cls}>{row['passed']}/{row['seeds']}</td>")
        for _, metric in columns:
            mean, half = row.get(metric), row.get(f"{metric} ±95%")
            text = _number(mean) + ("" if half is None or half != half else f" ± {_number(half)}")
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _table_html(table: pd.DataFrame, paths: list[str]) -> str:
    shown = [*paths, "seed", "target"]
    shown += [f"latency_ms.{k}.p99" for k in LATENCY_KINDS[:2]]
    shown += ["throughput_per_s.delivered", "counts.lost", "verdict", "run", "error"]
    shown = [c for c in shown if c in table.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    rows = []
    for row in table.head(MAX_ROWS).to_dict("records"):
        cells = []
        for column in shown:
            value = row[column]
            if column == "run" and isinstance(value, str):
                cells.append(f"<td class=text><a href='{html.escape(value)}/'>"
                             f"{html.escape(value)}</a></td>")  # fmt: skip
            elif column == "verdict" and isinstance(value, str):
                cells.append(f"<td class='text {html.escape(value)}'>{html.escape(value)}</td>")
            elif column in ("target", "error"):
                text = "" if value is None or value != value else html.escape(str(value))
                cells.append(f"<td class=text>{text}</td>")
            else:
                cells.append(f"<td>{_number(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f"<p class=note>First {MAX_ROWS} of {len(table)} rows; all are in {SWEEP_CSV}.</p>"
        if len(table) > MAX_ROWS
        else ""
    )
    return f"<div class=scroll><table><tr>{head}</tr>{''.join(rows)}</table></div>{more}"


def build_sweep_report(folder: Path, output: Path | None = None) -> Path:
    """Write the sweep's report (default ``FOLDER/report.html``) and its figures; return it."""
    if not is_sweep_folder(folder):
        raise SweepReportError(f"{folder}: not a sweep folder (no {SWEEP_CSV})")
    table = read_table(folder)
    spec = read_spec(folder)
    paths = _paths(table, spec)
    if not paths:
        raise SweepReportError(f"{folder}: {SWEEP_CSV} has no varied columns")
    output = output or folder / REPORT_FILE
    figures_dir = output.parent / "figures"
    summary = summarize(table, paths)
    parts = []
    for stale in ("latency.*", "delivered.*", "pass-map-*"):  # from an earlier report
        for path in figures_dir.glob(stale):
            path.unlink()
    for name, figure in sweep_figures.sweep_figures(table, paths).items():
        sweep_figures.save(figure, figures_dir, name)
        parts.append(f"<div class=figure>{sweep_figures.svg_text(figure)}</div>")
    title = f"Sweep of {spec.get('scenario', folder.name)}"
    vary = spec.get("vary", {})
    placement = spec.get("placement") or {}
    failed = int(table["error"].notna().sum())
    facts = [
        ("varied", ", ".join(f"{p} ({len(vary.get(p, []))} values)" for p in paths)),
        ("seeds", ", ".join(str(s) for s in spec.get("seeds", sorted(set(table["seed"]))))),
        ("targets", ", ".join(spec.get("targets", sorted(set(table["target"]))))),
        ("runs", f"{len(table)} ({spec.get('reused', 0)} reused, {failed} failed)"),
        ("where", str(placement.get("kind", "?"))),
        ("wall time", f"{spec.get('wall_time_s', '?')} s"),
    ]
    facts_html = "".join(
        f"<tr><th>{k}</th><td class=text>{html.escape(v)}</td></tr>" for k, v in facts
    )
    errors = table[table["error"].notna()]
    error_html = "".join(
        f"<li>{html.escape(str(r['target']))} seed {r['seed']}: {html.escape(str(r['error']))}</li>"
        for r in errors.to_dict("records")
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{facts_html}</table>
<h2>Means across seeds</h2>
<p class=note>Each cell is the mean over seeds ± the half-width of its 95% confidence interval
(Student t); "pass" counts the seeds whose verdict was pass.</p>
{_summary_html(summary, paths)}
<h2>Figures</h2>
<p class=note>The knee (dashed line) is where p99 latency turns from flat to steep (Kneedle:
the point farthest below the chord of the curve).</p>
{"".join(parts) or "<p>No run finished: nothing to draw.</p>"}
{"<h2>Failed runs</h2><ul>" + error_html + "</ul>" if error_html else ""}
<h2>Every run</h2>
{_table_html(table, paths)}
</body></html>
"""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return output
