"""What notebooks and ``brokerlab lab`` need beyond the report: the lab's files, wherever the
kernel runs; the figures and tables only notebooks draw; how JupyterLab is started on them.

A notebook's kernel may start in ``notebooks/``, the repository root, or a temporary folder
(papermill); parameters name paths relative to any of them. Real-broker runs need nothing here:
they work inside the kernel's running event loop on their own.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

#: The source checkout this package was installed from (editable installs), if any.
SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = "notebooks"


def _lab_roots() -> list[Path]:
    """Folders that hold the lab's files: the kernel's folder or a parent holding scenarios/,
    then the source checkout."""
    roots = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scenarios").is_dir()]
    roots.append(SOURCE_CHECKOUT)
    return roots


def lab_path(path: str | Path) -> Path:
    """The first existing of: ``path`` from the kernel's folder, from ``notebooks/``, from the
    repository; a path that does not exist yet (an output) is taken from the kernel's folder."""
    given = Path(path).expanduser()
    roots = _lab_roots()
    tries = [
        Path.cwd() / given,
        *(r / NOTEBOOKS_DIR / given for r in roots),
        *(r / given for r in roots),
    ]
    return next((p for p in tries if p.exists()), tries[0]).resolve()


def results_path(results_dir: str | Path = "") -> Path:
    """Where runs go, as for the CLI: the parameter, else ``$BROKERLAB_RESULTS``, else results/."""
    return lab_path(results_dir or os.environ.get("BROKERLAB_RESULTS") or "results")


# --------------------------------------------------------------------------- figures


def latency_by_load(points: pd.DataFrame, bound_ms: float | None = None) -> Figure:
    """p50 and p99 end-to-end latency against offered load, with utilisation on the top axis.

    ``points`` has one row per run with columns ``offered /s``, ``utilisation``,
    ``end_to_end p50 ms`` and ``end_to_end p99 ms``: the table of a rate sweep. The curve shows
    where latency bends: the headroom before the consumers saturate.
    """
    figure = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax = figure.subplots()
    table = points.sort_values("offered /s")
    offered = table["offered /s"].astype(float)
    for column, color in (("end_to_end p50 ms", "#9a9a9a"), ("end_to_end p99 ms", "#1f77b4")):
        ax.plot(offered, table[column].astype(float), "o-", color=color, label=column)
    highest = float(table["end_to_end p99 ms"].astype(float).max()) if len(table) else 0.0
    if bound_ms is not None and bound_ms <= 2 * highest:
        ax.axhline(bound_ms, color="#d62728", linestyle="--", linewidth=1, label="p99 bound")
    elif bound_ms is not None:  # far above: drawing it would flatten the curve
        ax.plot([], [], color="#d62728", linestyle="--", label=f"p99 bound {bound_ms:g} ms, above")
    ratios = (table["utilisation"].astype(float) / offered).dropna()
    per_message = float(ratios.iloc[0]) if len(ratios) else 0.0
    if per_message > 0:  # utilisation is proportional to the offered rate
        top = ax.secondary_xaxis(
            "top", functions=(lambda rate: rate * per_message, lambda load: load / per_message)
        )
        top.set_xlabel("utilisation of the consumers")
    ax.set_xlabel("offered load (messages / s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, color="#d9d9d9", linewidth=0.7)
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    figure.suptitle("latency against offered load", x=0.01, ha="left", fontsize=11)
    return figure


def margin_chart(ranking: pd.DataFrame, title: str = "margin per candidate") -> Figure:
    """Worst margin per candidate (a selection's ranking) as horizontal bars in rank order:
    green meets every requirement, red fails one, grey cannot tell (inconclusive)."""
    figure = Figure(figsize=(9.0, 1.4 + 0.45 * max(len(ranking), 1)), layout="constrained")
    ax = figure.subplots()
    labels = [
        f"{row.rank}. {row.candidate} ({'simulated' if row.target == 'sim' else 'real'})"
        for row in ranking.itertuples()
    ]
    values = [
        100.0 * float(m) if m is not None and not math.isnan(float(m)) else 0.0
        for m in ranking.get("worst_margin", pd.Series(dtype="float64"))
    ]
    palette = {"pass": "#2ca02c", "fail": "#d62728"}  # inconclusive: grey
    colors = [palette.get(str(v), "#9a9a9a") for v in ranking.get("verdict", [])]
    bars = ax.barh(range(len(ranking)), values, color=colors, height=0.6)
    notes = [
        f"{value:.1f}%" + (f" · fails {row.failed_requirements}" if row.failed else "")
        for value, row in zip(values, ranking.itertuples(), strict=True)
    ]
    ax.bar_label(bars, labels=notes, padding=4, fontsize=8)
    if values and max(abs(v) for v in values) > 300:  # a loss of many messages: keep the others
        ax.set_xscale("symlog", linthresh=100)
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(range(len(ranking)), labels)
    ax.invert_yaxis()
    ax.margins(x=0.35)
    ax.set_xlabel("worst margin: headroom of the tightest measured requirement (%)")
    ax.grid(True, axis="x", color="#d9d9d9", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, loc="left", fontsize=11)
    return figure


def _verdict_cell(row: Any) -> str:
    """One verdict as a short text: mark, measured value, and * when unverified."""
    mark = {True: "✓", False: "✗"}.get(row.ok, "?")
    measured = row.measured
    if isinstance(measured, float):
        measured = f"{measured:.4g}"
    return f"{mark} {measured}" + (" *" if "unverified" in str(row.kind) else "")


def side_by_side(evidence: pd.DataFrame, candidates: Sequence[str]) -> pd.DataFrame:
    """A selection's evidence as one row per requirement and one column per candidate:
    ✓ met, ✗ not met, the measured value, and * for a capability fact not yet verified."""
    if evidence.empty:
        return pd.DataFrame()
    return (
        evidence.assign(
            source=evidence["kind"].str.split(" ").str[0],
            verdict=[_verdict_cell(row) for row in evidence.itertuples()],
        )
        .pivot_table(
            index=["source", "requirement"], columns="candidate", values="verdict", aggfunc="first"
        )
        .reindex(columns=list(candidates))
    )


# --------------------------------------------------------------------------- brokerlab lab

#: JupyterLab settings of ``brokerlab lab``: a double-click opens a .py file with jupytext's
#: notebook view instead of the text editor (what ``jupytext-config set-default-viewer``
#: writes, here for this server only), and the lab does not fetch Jupyter's news feed.
DEFAULT_VIEWERS = {
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"},
}


class LabError(Exception):
    """``brokerlab lab`` cannot start: no notebooks folder, or JupyterLab is missing."""


def find_lab_root() -> Path:
    """The repository whose notebooks/ ``brokerlab lab`` serves: the current folder or a parent
    holding notebooks/, else the source checkout this package was installed from."""
    for folder in (Path.cwd(), *Path.cwd().parents, SOURCE_CHECKOUT):
        if (folder / NOTEBOOKS_DIR).is_dir() and any((folder / NOTEBOOKS_DIR).glob("*.py")):
            return folder
    raise LabError(
        f"no {NOTEBOOKS_DIR}/ folder with notebooks here or above {Path.cwd()}; "
        "run brokerlab lab inside a brokerlab checkout"
    )


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class LabLaunch:
    """How to start JupyterLab for ``brokerlab lab``: the command, its environment, its URL."""

    command: list[str]
    env: dict[str, str]
    url: str


def lab_launch(root: Path, config_dir: Path, port: int, open_browser: bool) -> LabLaunch:
    """The JupyterLab command serving ``root`` with the notebooks opening as notebooks.

    JupyterLab reads "default setting overrides" from ``labconfig/`` in every Jupyter config
    folder; a private one (``config_dir``) put first on ``JUPYTER_CONFIG_PATH`` makes jupytext's
    notebook view the default viewer of Python files for this server only. The user's own
    settings still win, and nothing is written to their Jupyter folders.
    """
    labconfig = config_dir / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "default_setting_overrides.json").write_text(
        json.dumps(DEFAULT_VIEWERS, indent=2) + "\n", encoding="utf-8"
    )
    token = secrets.token_hex(24)
    given = os.environ.get("JUPYTER_CONFIG_PATH", "")
    paths = [str(config_dir), *filter(None, given.split(os.pathsep))]
    env = {**os.environ, "JUPYTER_CONFIG_PATH": os.pathsep.join(paths)}
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.default_url=/lab/tree/{NOTEBOOKS_DIR}",
        f"--ServerApp.open_browser={open_browser}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers run as root; so may users
        command.append("--ServerApp.allow_root=True")
    url = f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOKS_DIR}?token={token}"
    return LabLaunch(command, env, url)
