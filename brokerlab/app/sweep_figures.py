"""Figures of sweeps and capacity answers: latency against load with the knee marked, delivered
against offered, a pass/fail map of two-dimensional sweeps, and consumer lag around an outage.

Every function takes a sweep table (``sweep.csv``'s columns) or plain arrays and returns a
:class:`matplotlib.figure.Figure` built without pyplot (no global state, same in a test, a report
or a notebook). Means across seeds are drawn with their 95% confidence intervals, the same
numbers the command prints.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brokerlab.app.sweep import t95

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_WIDE = (8.5, 4.4)
_RATE = "producers.rate"
_OFFERED = "throughput_per_s.offered"
_DELIVERED = "throughput_per_s.delivered"


def knee(x: Sequence[float], y: Sequence[float]) -> int | None:
    """Index of the knee of a rising, bending curve (Kneedle: Satopää et al., 2011).

    Both axes are scaled to [0, 1]; the knee is the point farthest below the straight line from
    the first point to the last, i.e. where the curve turns from flat to steep. None with fewer
    than three points or a curve that does not bend upwards.
    """
    xs, ys = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    order = np.argsort(xs)
    xn = (xs[order] - xs.min()) / np.ptp(xs)
    yn = (ys[order] - ys.min()) / np.ptp(ys)
    gap = xn - yn
    best = int(np.argmax(gap))
    if gap[best] <= 0.05:
        return None
    return int(np.flatnonzero(keep)[order[best]])


def _mean_ci(values: pd.Series) -> tuple[float, float]:
    data = values.dropna().to_numpy(dtype="float64")
    if not len(data):
        return math.nan, math.nan
    if len(data) < 2:
        return float(data.mean()), 0.0
    return float(data.mean()), t95(len(data)) * float(data.std(ddof=1)) / math.sqrt(len(data))


def _groups(table: pd.DataFrame, x: str, paths: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """One line per target (and per value of any other varied path)."""
    done = table[table["error"].isna()] if "error" in table else table
    others = [p for p in paths if p != x and p in done and done[p].nunique() > 1]
    keys = ["target", *others]
    groups = []
    for key, group in done.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = str(key[0]) + "".join(f", {p}={v:g}" if isinstance(v, float) else f", {p}={v}"
                                      for p, v in zip(others, key[1:], strict=True))  # fmt: skip
        groups.append((label, group))
    return groups


def _series(group: pd.DataFrame, x: str, column: str) -> pd.DataFrame:
    rows = []
    for value, at in group.groupby(x, sort=True):
        mean, half = _mean_ci(at[column]) if column in at else (math.nan, math.nan)
        rows.append({"x": value, "mean": mean, "half": half})
    return pd.DataFrame(rows)


def x_axis(paths: Sequence[str]) -> str:
    """What to draw along x: the offered rate when it was varied, else the first varied path."""
    return _RATE if _RATE in paths else paths[0]


def latency_vs_load(table: pd.DataFrame, paths: Sequence[str], kind: str = "end_to_end") -> Figure:
    """p50 and p99 latency (mean across seeds, 95% CI) against the varied load, per target,
    with the knee of each p99 curve marked."""
    x = x_axis(paths)
    figure = Figure(figsize=_WIDE, layout="constrained")
    axes = figure.add_subplot()
    for n, (label, group) in enumerate(_groups(table, x, paths)):
        colour = _PALETTE[n % len(_PALETTE)]
        for stat, style in (("p50", ":"), ("p99", "-")):
            data = _series(group, x, f"latency_ms.{kind}.{stat}")
            axes.errorbar(data["x"], data["mean"], yerr=data["half"].fillna(0), fmt=style,
                          marker="o", ms=3, color=colour, capsize=2,
                          label=f"{label} {stat}")  # fmt: skip
            if stat == "p99":
                at = knee(data["x"], data["mean"])
                if at is not None:
                    kx, ky = data["x"].iloc[at], data["mean"].iloc[at]
                    axes.axvline(kx, color=colour, lw=0.8, ls="--", alpha=0.7)
                    axes.annotate(f"knee {kx:,.4g}", (kx, ky), textcoords="offset points",
                                  xytext=(-6, 8), ha="right", color=colour,
                                  fontsize=8)  # fmt: skip
    axes.set_xlabel(_label(x))
    axes.set_ylabel(f"{kind.replace('_', '-')} latency (ms)")
    axes.set_yscale("log")
    axes.set_title(f"{kind.replace('_', '-')} latency against {_label(x)} (mean of seeds, 95% CI)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def delivered_vs_offered(table: pd.DataFrame, paths: Sequence[str]) -> Figure:
    """Delivered rate against offered rate per target; the diagonal is "keeps up"."""
    figure = Figure(figsize=_WIDE, layout="constrained")
    axes = figure.add_subplot()
    top = 0.0
    others = [p for p in paths if p != _RATE]  # the offered rate is the x axis already
    for n, (label, group) in enumerate(_groups(table, _OFFERED, [_OFFERED, *others])):
        data = _series(group, _OFFERED, _DELIVERED)
        axes.errorbar(data["x"], data["mean"], yerr=data["half"].fillna(0), marker="o", ms=3,
                      color=_PALETTE[n % len(_PALETTE)], capsize=2, label=label)  # fmt: skip
        top = max(top, float(np.nanmax(data["x"])) if len(data) else 0.0)
    axes.plot([0, top], [0, top], color="#888", lw=0.8, ls="--", label="delivered = offered")
    axes.set_xlabel("offered (messages/s)")
    axes.set_ylabel("delivered (messages/s)")
    axes.set_title("delivered against offered")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def pass_map(table: pd.DataFrame, x: str, y: str, target: str) -> Figure:
    """Share of seeds that passed at each point of a two-dimensional sweep (one target)."""
    done = table[(table["target"] == target) & table["error"].isna()]
    grid = (
        done.assign(passed=(done["verdict"] == "pass").astype(float))
        .pivot_table(index=y, columns=x, values="passed", aggfunc="mean")
        .sort_index(ascending=False)
    )
    figure = Figure(figsize=(max(5.0, 0.9 * grid.shape[1] + 2.5), max(3.2, 0.55 * len(grid) + 2)),
                    layout="constrained")  # fmt: skip
    axes = figure.add_subplot()
    image = axes.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(grid.shape[1]), [_tick(v) for v in grid.columns])
    axes.set_yticks(range(len(grid)), [_tick(v) for v in grid.index])
    for (row, column), value in np.ndenumerate(grid.to_numpy()):
        text = "-" if value != value else ("pass" if value == 1 else "fail" if value == 0
                                           else f"{value:.0%}")  # fmt: skip
        axes.text(column, row, text, ha="center", va="center", fontsize=8)
    axes.set_xlabel(_label(x))
    axes.set_ylabel(_label(y))
    axes.set_title(f"requirements met on {target} (share of seeds)")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def catch_up(
    times: np.ndarray,
    lag: np.ndarray,
    outage: tuple[float, float],
    recovered_after: float | None,
    normal: float,
    title: str = "consumer lag around a consumer outage",
) -> Figure:
    """Consumer lag over time with the outage shaded and the moment it is back to normal."""
    figure = Figure(figsize=_WIDE, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(times, lag, color=_PALETTE[0], lw=1, label="consumer lag")
    axes.axvspan(*outage, color="#f2b134", alpha=0.3, label="consumers down")
    axes.axhline(normal, color="#888", lw=0.8, ls=":", label=f"normal lag ({normal:g})")
    if recovered_after is not None:
        back = outage[1] + recovered_after
        axes.axvline(back, color=_PALETTE[2], ls="--", lw=1,
                     label=f"back to normal after {recovered_after:.2f} s")  # fmt: skip
    axes.set_xlabel("time (s)")
    axes.set_ylabel("messages not yet delivered")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def sweep_figures(table: pd.DataFrame, paths: Sequence[str]) -> dict[str, Figure]:
    """The figures that fit this sweep, by file name."""
    figures: dict[str, Figure] = {}
    if table["error"].notna().all() if "error" in table else table.empty:
        return figures
    # Paths given a single value (e.g. a fixed message count) are settings, not dimensions.
    varying = [p for p in paths if p in table and table[p].nunique() > 1] or list(paths)
    figures["latency"] = latency_vs_load(table, varying)
    if _OFFERED in table:
        figures["delivered"] = delivered_vs_offered(table, varying)
    if len(varying) == 2:
        for target in sorted(set(table["target"])):
            figures[f"pass-map-{target}"] = pass_map(table, varying[0], varying[1], target)
    return figures


def save(figure: Figure, folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.png`` and ``name.svg`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    figure.savefig(png, dpi=110)
    figure.savefig(svg)
    return png, svg


def svg_text(figure: Figure) -> str:
    """The figure as inline SVG markup (for a self-contained HTML page)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _label(path: str) -> str:
    return {
        _RATE: "offered rate (messages/s)",
        _OFFERED: "offered (messages/s)",
        "consumers.count": "consumers",
        "broker.partitions": "partitions",
    }.get(path, path)


def _tick(value: object) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else str(value)
