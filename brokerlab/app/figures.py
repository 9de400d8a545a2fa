"""Figures of runs: latency spectra and CDFs, throughput and lag over time, delivery counts.

Every function takes plain tables (the trace's DataFrames, metrics.json dicts, latency samples)
and returns a :class:`matplotlib.figure.Figure`, so the HTML report and the notebooks draw the
very same pictures. Figures are built without :mod:`matplotlib.pyplot`: no global figure state,
no backend to choose, nothing to close, and they work the same in a script, a test or Jupyter.

One target (a run) is one line, drawn in the same colour in every figure of a report.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from brokerlab.core.checks import check_delivery
from brokerlab.core.trace import FaultWindow

#: Percentiles that label the "nines" axis of a spectrum: the x position is 1 / (1 - q).
NINES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
#: Points on a spectrum or CDF line; enough to look smooth, few enough to keep an SVG small.
CURVE_POINTS = 400
#: Latency kinds a report draws, with their readable names.
LATENCY_TITLES: dict[str, str] = {
    "end_to_end": "end-to-end latency (first delivery − intended send)",
    "publish": "publish latency (broker ack − actual send)",
    "completion": "completion latency (processing done − intended send)",
    "publish_delay": "publish delay (actual send − intended send)",
}
#: Delivery counts drawn as volumes, and as anomalies (a different scale: usually far smaller).
VOLUME_COUNTS: tuple[str, ...] = ("sent", "acked", "delivered", "unique")
ANOMALY_COUNTS: tuple[str, ...] = (
    "lost",
    "unprocessed",
    "duplicates",
    "out_of_order",
    "redelivered",
    "unknown",
)

_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
_FAULT_COLOR = "#f2b134"
_WIDE = (9.0, 4.2)
#: Figures shown two side by side: smaller, so their text is as large as in wide ones.
_HALF = (6.4, 4.4)


def target_colors(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour per target label, so a target looks the same in every figure."""
    return {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}


def _color(colors: Mapping[str, str] | None, label: str, index: int) -> str:
    if colors and label in colors:
        return colors[label]
    return _PALETTE[index % len(_PALETTE)]


def _style(ax: Axes) -> None:
    """Quiet axes: light grid, no top/right spines; the data carries the figure."""
    ax.grid(True, which="major", color="#d9d9d9", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- latency samples


def latency_samples(
    sends: pd.DataFrame, deliveries: pd.DataFrame, kind: str = "end_to_end", warmup: float = 0.0
) -> np.ndarray:
    """Per-message latencies in milliseconds, measured exactly as metrics.json measures them.

    The delivery checks give each message's first delivery and earliest finished processing, so
    the figures and the percentiles in metrics.json come from one definition. Messages intended
    before ``warmup`` are left out (as in the analysis); messages never delivered, and publishes
    never acknowledged (fire-and-forget NATS core), have no latency and are dropped.
    """
    t_intended = sends["t_intended"].to_numpy(dtype="float64")
    t_sent = sends["t_sent"].to_numpy(dtype="float64")
    if kind == "publish":
        seconds = sends["t_acked"].to_numpy(dtype="float64") - t_sent
    elif kind == "publish_delay":
        seconds = t_sent - t_intended
    elif kind in ("end_to_end", "completion"):
        checks = check_delivery(sends, deliveries)
        reached = checks.first_delivered if kind == "end_to_end" else checks.first_done
        seconds = np.asarray(reached, dtype="float64") - t_intended
    else:
        raise ValueError(f"unknown latency kind {kind!r}; use one of {', '.join(LATENCY_TITLES)}")
    seconds = seconds[t_intended >= warmup]
    return seconds[~np.isnan(seconds)] * 1000.0


def percentile_spectrum(latencies_ms: np.ndarray, points: int = CURVE_POINTS) -> pd.DataFrame:
    """Latency at evenly spaced "nines" (numpy percentiles), up to what the sample can show.

    Returns columns ``q`` (0.5 … 1 − 1/n), ``x`` = 1 / (1 − q) and ``latency_ms``. A sample of
    n values says nothing beyond the (1 − 1/n) quantile, so the curve stops there; the exact
    maximum is added as the last point, drawn at the next step of the axis.
    """
    values = np.asarray(latencies_ms, dtype="float64")
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return pd.DataFrame({"q": [], "x": [], "latency_ms": []}, dtype="float64")
    top = np.log10(max(len(values), 2))
    x = np.logspace(np.log10(2.0), max(top, np.log10(2.0)), points)
    q = 1.0 - 1.0 / x
    latency = np.percentile(values, q * 100.0)
    return pd.DataFrame({"q": q, "x": x, "latency_ms": latency})


def _nines_label(x: float, _pos: int | None = None) -> str:
    q = 1.0 - 1.0 / x
    text = f"{q * 100:.6f}".rstrip("0").rstrip(".")
    return f"{text}%"


#: The trace's resolution: on a log axis, latencies below it (0 in the trace) are drawn here.
LOG_FLOOR_MS = 0.001


def _wants_log(values: list[np.ndarray]) -> bool:
    """Log scale when the tail is far above the body (faults, stalls); linear reads better else."""
    merged = np.concatenate(values) if values else np.empty(0)
    merged = merged[merged > 0]
    if len(merged) == 0:
        return False
    return bool(merged.max() / max(float(np.percentile(merged, 1)), LOG_FLOOR_MS) > 50)


def _latency_label(log: bool, values: list[np.ndarray]) -> str:
    if not log:
        return "latency (ms)"
    floored = any((v < LOG_FLOOR_MS).any() for v in values)
    return "latency (ms, log; < 1 µs drawn at 1 µs)" if floored else "latency (ms, log)"


def latency_spectrum(
    samples_ms: Mapping[str, np.ndarray],
    *,
    title: str = "latency by percentile",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Latency against percentile on a log "nines" axis: one line per target.

    The x axis is 1 / (1 − q) on a log scale, labelled 50%, 90%, 99%, 99.9% …, so every nine
    gets the same width and the tail, where brokers differ, is not squeezed into the right edge.
    Targets with no samples are listed in the legend as "no data".
    """
    figure = Figure(figsize=_HALF, layout="constrained")
    ax = figure.subplots()
    spectra = {label: percentile_spectrum(values) for label, values in samples_ms.items()}
    drawn = [s["latency_ms"].to_numpy() for s in spectra.values() if not s.empty]
    log = _wants_log(drawn)
    top = 2.0
    for index, (label, spectrum) in enumerate(spectra.items()):
        color = _color(colors, label, index)
        if spectrum.empty:
            ax.plot([], [], color=color, label=f"{label} (no data)")
            continue
        latency = spectrum["latency_ms"].to_numpy()
        latency = np.maximum(latency, LOG_FLOOR_MS) if log else latency
        ax.plot(spectrum["x"], latency, color=color, linewidth=1.8, label=label)
        top = max(top, float(spectrum["x"].iloc[-1]))
    if not drawn:
        _no_data(ax, "no latency samples")
    else:
        ax.set_xscale("log")
        ticks = [1 / (1 - q) for q in NINES if 1 / (1 - q) <= top * 1.0001]
        ax.set_xlim(2.0, max(top, ticks[-1]))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(_nines_label))
        ax.xaxis.set_minor_locator(NullLocator())
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("percentile")
        ax.set_ylabel(_latency_label(log, drawn))
        _style(ax)
    ax.set_title(title, loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    return figure


def latency_cdf(
    samples_ms: Mapping[str, np.ndarray],
    *,
    title: str = "latency distribution",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """The cumulative distribution of latency: one line per target, x in ms (log when the tail is
    long, with sub-microsecond values at 1 µs), y the fraction of messages at or below it."""
    figure = Figure(figsize=_HALF, layout="constrained")
    ax = figure.subplots()
    curves: dict[str, np.ndarray] = {}
    for label, values in samples_ms.items():
        values = np.sort(np.asarray(values, dtype="float64"))
        curves[label] = values[~np.isnan(values)]
    drawn = [values for values in curves.values() if len(values)]
    log = _wants_log(drawn)
    for index, (label, values) in enumerate(curves.items()):
        color = _color(colors, label, index)
        if len(values) == 0:
            ax.plot([], [], color=color, label=f"{label} (no data)")
            continue
        fraction = np.arange(1, len(values) + 1) / len(values)
        if len(values) > CURVE_POINTS * 4:  # thin the curve; keep both ends exact
            keep = np.unique(np.linspace(0, len(values) - 1, CURVE_POINTS * 4).astype(int))
            values, fraction = values[keep], fraction[keep]
        values = np.maximum(values, LOG_FLOOR_MS) if log else values
        ax.step(values, fraction, where="post", color=color, linewidth=1.8, label=label)
    if not drawn:
        _no_data(ax, "no latency samples")
    else:
        if log:
            ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(_latency_label(log, drawn))
        ax.set_ylabel("fraction of messages")
        _style(ax)
    ax.set_title(title, loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=9, loc="lower right")
    return figure


# --------------------------------------------------------------------------- over time


def fault_windows(timeline: pd.DataFrame) -> list[FaultWindow]:
    """Fault windows read back from a timeline's ``faults`` column (for runs whose run.json has
    none): each stretch of intervals with the same active fault becomes one window."""
    windows: list[FaultWindow] = []
    open_since: dict[str, float] = {}
    last_end = 0.0
    for row in timeline.itertuples(index=False):
        labels = {part for part in str(row.faults or "").split(",") if part}
        for name in list(open_since):
            if name not in labels:
                action, _, target = name.partition(":")
                windows.append(
                    FaultWindow(action, target, open_since.pop(name), float(row.t_start))
                )
        for name in labels - set(open_since):
            open_since[name] = float(row.t_start)
        last_end = float(row.t_end)
    for name, start in open_since.items():
        action, _, target = name.partition(":")
        windows.append(FaultWindow(action, target, start, last_end))
    return sorted(windows, key=lambda w: (w.t_start, w.action))


def _shade_faults(ax: Axes, faults: Sequence[FaultWindow], label_them: bool) -> None:
    """Fault windows as shaded bands, named once at the top of the axes."""
    for window in faults:
        end = window.t_end if window.t_end > window.t_start else window.t_start + 1e-3
        ax.axvspan(window.t_start, end, color=_FAULT_COLOR, alpha=0.22, linewidth=0, zorder=0)
        if label_them:
            ax.text(
                window.t_start,
                1.0,
                f" {window.action} ({window.target})",
                transform=ax.get_xaxis_transform(),
                va="top",
                ha="left",
                fontsize=8,
                color="#8a5a00",
            )


def throughput_timeline(
    timelines: Mapping[str, pd.DataFrame],
    faults: Mapping[str, Sequence[FaultWindow]] | None = None,
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Sent and delivered messages per second over the run, one panel per target, with each
    target's own fault windows shaded (real runs inject faults at slightly different times)."""
    faults = faults or {}
    rows = max(len(timelines), 1)
    figure = Figure(figsize=(9.0, 1.1 + 2.0 * rows), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    if not timelines:
        _no_data(axes[0], "no timeline")
        return figure
    for index, (ax, (label, timeline)) in enumerate(zip(axes, timelines.items(), strict=True)):
        color = _color(colors, label, index)
        mid = (timeline["t_start"] + timeline["t_end"]) / 2
        ax.plot(mid, timeline["sent_per_s"], color="#9a9a9a", linewidth=1.2, label="sent")
        ax.plot(mid, timeline["delivered_per_s"], color=color, linewidth=1.6, label="delivered")
        _shade_faults(ax, faults.get(label, ()), label_them=True)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("msgs/s")
        ax.set_title(label, loc="left", fontsize=10)
        ax.legend(frameon=False, fontsize=8, loc="upper right", ncols=2)
        _style(ax)
    axes[-1].set_xlabel("time since run start (s)")
    figure.suptitle("throughput over time", x=0.01, ha="left", fontsize=11)
    return figure


def backlog_timeline(
    timelines: Mapping[str, pd.DataFrame],
    faults: Mapping[str, Sequence[FaultWindow]] | None = None,
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Consumer lag (messages sent and not yet received) over the run, one line per target on
    shared axes so backlogs compare directly; every target's fault windows are shaded. A real
    run's broker-reported backlog (``broker_backlog``) is drawn dashed beside the lab's own."""
    figure = Figure(figsize=_WIDE, layout="constrained")
    ax = figure.subplots()
    if not timelines:
        _no_data(ax, "no timeline")
        return figure
    seen: set[tuple[str, str, float, float]] = set()
    windows: list[FaultWindow] = []
    for target_faults in (faults or {}).values():
        for w in target_faults:
            key = (w.action, w.target, round(w.t_start, 1), round(w.t_end, 1))
            if key not in seen:
                seen.add(key)
                windows.append(w)
    _shade_faults(ax, windows, label_them=True)
    for index, (label, timeline) in enumerate(timelines.items()):
        ax.step(
            timeline["t_end"],
            timeline["backlog"],
            where="post",
            color=_color(colors, label, index),
            linewidth=1.6,
            label=label,
        )
        if "broker_backlog" in timeline and timeline["broker_backlog"].notna().any():
            # The broker's own count beside the lab's: both sides should agree.
            ax.step(
                timeline["t_end"],
                timeline["broker_backlog"],
                where="post",
                color=_color(colors, label, index),
                linewidth=1.2,
                linestyle="--",
                label=f"{label} (broker's own count)",
            )
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time since run start (s)")
    ax.set_ylabel("backlog (messages)")
    ax.set_title("consumer lag over time", loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(0.0, 0.92))
    _style(ax)
    return figure


# --------------------------------------------------------------------------- delivery


def _bars(
    ax: Axes,
    metrics_by_target: Mapping[str, Mapping[str, object]],
    keys: Sequence[str],
    colors: Mapping[str, str] | None,
) -> None:
    """Grouped bars: one group per count, one bar per target, each labelled with its value."""
    count = max(len(metrics_by_target), 1)
    width = 0.8 / count
    positions = np.arange(len(keys))
    for index, (label, metrics) in enumerate(metrics_by_target.items()):
        counts = metrics.get("counts") or {}
        assert isinstance(counts, Mapping)
        values = [float(counts.get(key) or 0) for key in keys]
        bars = ax.bar(
            positions + (index - (count - 1) / 2) * width,
            values,
            width * 0.92,
            color=_color(colors, label, index),
            label=label,
        )
        if count <= 2 or max(values, default=0) < 1000:  # wide numbers would overlap
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(positions, [key.replace("_", " ") for key in keys])
    ax.margins(y=0.15)
    _style(ax)
    ax.grid(False, axis="x")


def delivery_counts(
    metrics_by_target: Mapping[str, Mapping[str, object]],
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """What happened to the messages, per target: volumes (sent, acked, delivered, unique) and,
    on their own scale so a handful is visible next to thousands, the anomalies (lost,
    duplicates, out of order, redelivered, unknown)."""
    figure = Figure(figsize=(9.0, 3.8), layout="constrained")
    volumes, anomalies = figure.subplots(1, 2, width_ratios=(4, 5))
    _bars(volumes, metrics_by_target, VOLUME_COUNTS, colors)
    volumes.set_title("messages", loc="left", fontsize=11)
    # runs analysed before ``unprocessed`` existed do not count it: no bar rather than a false 0
    counted = {key for metrics in metrics_by_target.values() for key in metrics.get("counts") or {}}
    shown = [key for key in ANOMALY_COUNTS if key != "unprocessed" or key in counted]
    _bars(anomalies, metrics_by_target, shown, colors)
    anomalies.set_title("anomalies", loc="left", fontsize=11)
    anomalies.legend(frameon=False, fontsize=8, loc="upper right")
    return figure


def relative_error(
    errors: Mapping[str, Mapping[str, float]],
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Relative error of real runs against the simulator, metric by metric (horizontal bars).

    ``errors`` maps each real target to {metric: (real − sim) / sim}; metrics without a finite
    error are left out. A band marks ±10 %, where the model can be called close.
    """
    metrics: list[str] = []
    for by_metric in errors.values():
        for name, value in by_metric.items():
            if np.isfinite(value) and name not in metrics:
                metrics.append(name)
    figure = Figure(figsize=(9.0, 1.4 + 0.32 * max(len(metrics), 1)), layout="constrained")
    ax = figure.subplots()
    if not metrics:
        _no_data(ax, "no metric measured by both")
        return figure
    count = max(len(errors), 1)
    height = 0.8 / count
    positions = np.arange(len(metrics))
    for index, (label, by_metric) in enumerate(errors.items()):
        values = [100.0 * by_metric.get(name, np.nan) for name in metrics]
        ax.barh(
            positions + (index - (count - 1) / 2) * height,
            values,
            height * 0.9,
            color=_color(colors, label, index),
            label=f"{label} vs sim",
        )
    spread = max(
        (abs(100.0 * v) for by in errors.values() for v in by.values() if np.isfinite(v)),
        default=0.0,
    )
    if spread > 300:  # one wild metric must not flatten the others into slivers
        ax.set_xscale("symlog", linthresh=10)
    ax.axvspan(-10, 10, color="#2ca02c", alpha=0.08, linewidth=0)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(positions, metrics)
    ax.invert_yaxis()
    ax.set_xlabel("relative error of real vs simulator (%)")
    ax.set_title("simulator vs real", loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    _style(ax)
    return figure


# --------------------------------------------------------------------------- saving

#: PNG resolution: sharp on slides and high-density screens, still small files.
PNG_DPI = 150

_XML_PROLOGUE = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_NAMESPACES = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_SIZE = re.compile(r'(<svg\b[^>]*?)\s+width="[^"]*"\s+height="[^"]*"')
#: Where matplotlib's SVG names or points at an id: definitions, ``<use>`` links, clip paths.
_ID_USE = re.compile(r'(\bid="|\bhref="#|url\(#)([^")]+)')


def inline_svg(svg: str, prefix: str) -> str:
    """Matplotlib's SVG made fit to sit inside HTML next to other figures.

    Drops the XML prologue, DOCTYPE, RDF metadata and namespace declarations (HTML's parser
    knows SVG; the namespace URLs are the only URLs matplotlib writes), prefixes every id so
    two figures' clip paths and glyphs never collide, and lets CSS size the drawing.
    """
    svg = _XML_PROLOGUE.sub("", svg, count=1)
    svg = _METADATA.sub("", svg)
    svg = _COMMENT.sub("", svg)
    svg = _NAMESPACES.sub("", svg)
    svg = svg.replace("xlink:href=", "href=")
    svg = _SIZE.sub(r"\1", svg, count=1)
    svg = _ID_USE.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    return svg.replace("<svg ", '<svg role="img" ', 1).strip()


@dataclass(frozen=True)
class SavedFigure:
    """A figure drawn for the report: its inline SVG and where its PNG and SVG files are."""

    name: str
    svg: str
    png_path: Path
    svg_path: Path


def save_figure(figure: Figure, name: str, folder: Path) -> SavedFigure:
    """Save ``figure`` as ``folder/name.png`` and ``.svg`` and return its inline SVG.

    A fixed hash salt and no dates make the files identical from one report to the next, so a
    report under version control diffs only when the data changed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    png_path, svg_path = folder / f"{name}.png", folder / f"{name}.svg"
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "path"}):
        figure.savefig(png_path, format="png", dpi=PNG_DPI, metadata={"Software": None})
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg_path.write_text(svg, encoding="utf-8")
    return SavedFigure(name, inline_svg(svg, f"fig-{name}"), png_path, svg_path)
