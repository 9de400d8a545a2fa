"""The public API: ``import brokerlab as bl``, for notebooks and scripts.

The CLI's verbs as functions that return result objects instead of printing: load a scenario,
change it (:meth:`Scenario.with_`), simulate or run it, compare targets, select a broker, sweep
fields across seeds, answer a capacity question, make a report, open a stored folder. Every
result is stored exactly as the CLI stores it (a folder under the results folder), so what a
notebook made can be reported on, reused, or opened again with :func:`open`; a result object
reads its folder lazily (metrics first, the trace when asked).

Results share one shape: ``.path`` (the folder), ``.metrics`` (metrics.json), ``.summary()``
(a DataFrame of the main numbers), ``.plot.<figure>()`` (matplotlib Figures, the very figures of
the HTML report), and a rich HTML view in Jupyter. Runs add their trace as DataFrames
(``.sends``, ``.deliveries``, ``.timeline``) and per-message ``.latencies``.

Relative paths are looked up as notebooks look them up: from the current folder, then from
``notebooks/``, then from the repository. Results go to ``results_dir``, else
``$BROKERLAB_RESULTS``, else the lab's ``results/`` folder.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from brokerlab.app import figures, notebook, sweep_figures
from brokerlab.app.capacity import (
    CAPACITY_FILE,
    CapacityError,
    find_capacity,
    lag_series,
    recovery_time,
)
from brokerlab.app.compare import COMPARISON_CSV, comparison_table
from brokerlab.app.compare import compare as _compare
from brokerlab.app.report import FIGURES_DIR, ReportError, build_report
from brokerlab.app.runner import RunOptions, RunRecord, TargetError, run_scenario
from brokerlab.app.select import DEFAULT_CANDIDATES, SELECTION_JSON, SelectionError
from brokerlab.app.select import select as _select
from brokerlab.app.sweep import (
    SWEEP_JSON,
    Axis,
    SweepError,
    check_targets,
    parse_vary,
    read_spec,
    read_table,
    run_sweep,
    summarize,
)
from brokerlab.core import results
from brokerlab.core.checks import check_delivery
from brokerlab.core.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from brokerlab.core.trace import DELIVERIES_FILE, SENDS_FILE, TIMELINE_FILE, FaultWindow, Trace
from brokerlab.core.units import parse_duration
from brokerlab.core.vocabulary import LATENCY_KINDS, SUMMARY_FIELDS

__all__ = [
    "DEFAULT_CANDIDATES",
    "Capacity",
    "CapacityError",
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
    "Sweep",
    "SweepError",
    "TargetError",
    "capacity",
    "compare",
    "describe",
    "load",
    "open",
    "report",
    "results_folder",
    "run",
    "select",
    "simulate",
    "sweep",
]

#: What the verbs accept as a scenario: a Scenario, or the path of a scenario file.
ScenarioLike = Scenario | str | Path
PathLike = str | Path


class OpenError(Exception):
    """A folder :func:`open` cannot read: missing, or not a run, comparison, selection, sweep or
    capacity folder."""


# --------------------------------------------------------------------------- scenarios


def load(path: PathLike) -> Scenario:
    """Read and validate a scenario file; raises :class:`ScenarioError` with every problem.

    A relative path is tried from the current folder, then ``notebooks/``, then the repository,
    so ``bl.load("scenarios/quickstart.yaml")`` works from a notebook's kernel as well.
    """
    return load_scenario(notebook.lab_path(path))


def describe(*scenarios: Scenario, **named: Scenario) -> pd.DataFrame:
    """The knobs a what-if turns, one column per scenario: to see what changed at a glance.

    Columns are named by keyword (``describe(base=a, what_if=b)``) or by scenario name.
    """
    columns: dict[str, Scenario] = {}
    for scenario in scenarios:
        label, n = scenario.name, 2
        while label in columns:
            label, n = f"{scenario.name} ({n})", n + 1
        columns[label] = scenario
    columns.update(named)
    return pd.DataFrame({label: _knobs(s) for label, s in columns.items()})


def _knobs(scenario: Scenario) -> dict[str, Any]:
    producers, consumers = scenario.producers, scenario.consumers
    return {
        "broker": scenario.broker.kind,
        "offered rate (/s)": producers.rate,
        "messages": producers.total_messages,
        "duration (s)": producers.duration,
        "consumers": consumers.count,
        "processing": consumers.processing.dist,
        "processing mean (ms)": round(consumers.processing.mean * 1000, 4),
        "utilisation": round(scenario.utilisation, 3),
        "partitions": scenario.broker.partitions,
        "faults": len(scenario.faults),
    }


def _scenario(scenario: ScenarioLike) -> tuple[Scenario, str | None]:
    """The scenario and, when given as a file, its path (recorded in run.json)."""
    if isinstance(scenario, Scenario):
        return scenario, None
    if not isinstance(scenario, str | Path):
        raise TypeError(f"expected a Scenario or a scenario file, got {type(scenario).__name__}")
    path = notebook.lab_path(scenario)
    return load_scenario(path), str(path)


def _options(
    seed: int | None,
    results_dir: PathLike | None,
    out: PathLike | None,
    redis_url: str | None = None,
    nats_url: str | None = None,
) -> RunOptions:
    return RunOptions(
        seed=seed,
        out=Path(out) if out is not None else None,
        results_dir=notebook.results_path(results_dir or ""),
        redis_url=redis_url,
        nats_url=nats_url,
    )


def results_folder(name: str, results_dir: PathLike | None = None) -> Path:
    """A new timestamped folder under the results folder, for runs you group yourself (pass
    ``out=folder / "point"`` to each run); ``name`` ends its name, e.g. ``quickstart-sweep``."""
    base = notebook.results_path(results_dir or "")
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    folder = base / f"{stamp}-{name}"
    n = 2
    while folder.exists():
        folder, n = base / f"{stamp}-{name}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------- verbs


def run(
    scenario: ScenarioLike,
    target: str = "sim",
    *,
    seed: int | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
    redis_url: str | None = None,
    nats_url: str | None = None,
) -> RunResult:
    """Run the scenario on one target (``sim`` or a real broker) and store it, as
    ``brokerlab run`` does; returns the stored run.

    Real targets use the broker at ``redis_url`` / ``nats_url``, else a session broker
    (``brokerlab brokers up``), else one the lab starts and stops itself. ``seed`` defaults to
    the scenario's; ``out`` names the run folder instead of a new one under the results folder.
    Raises :class:`ScenarioError` for a bad scenario file and :class:`TargetError` for an unknown
    target or a fault the target cannot play.
    """
    loaded, source = _scenario(scenario)
    record = run_scenario(
        loaded, target, _options(seed, results_dir, out, redis_url, nats_url), source
    )
    return RunResult(record.path, record=record)


def simulate(
    scenario: ScenarioLike,
    *,
    seed: int | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
) -> RunResult:
    """Play the scenario on the simulator (the broker kind it names); a seed makes the run
    identical every time. The same as ``run(scenario, "sim", ...)``."""
    return run(scenario, "sim", seed=seed, results_dir=results_dir, out=out)


def compare(
    scenario: ScenarioLike,
    targets: Sequence[str] = ("sim",),
    *,
    seed: int | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
    redis_url: str | None = None,
    nats_url: str | None = None,
) -> Comparison:
    """Run the scenario on every target with the same seed and load plan, into one comparison
    folder, as ``brokerlab compare`` does. A target that fails does not stop the others: its
    error is in :attr:`Comparison.errors`."""
    loaded, source = _scenario(scenario)
    wanted = [targets] if isinstance(targets, str) else list(targets)
    record = _compare(loaded, wanted, _options(seed, results_dir, out, redis_url, nats_url), source)
    runs = {t: RunResult(r.path, record=r) for t, r in record.runs.items()}
    return Comparison(record.path, runs, record.errors)


def select(
    scenario: ScenarioLike,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    real: bool = True,
    reuse: bool = True,
    seed: int | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
) -> Selection:
    """Hold candidate brokers against the scenario's requirements and rank them, as
    ``brokerlab select`` does: real brokers where the lab has an adapter (unless ``real`` is
    False), the simulator's preset otherwise, and the capability table for what a run cannot
    show. With ``reuse``, an earlier run of exactly the same scenario, target and seed is reused.
    Raises :class:`SelectionError` for an unknown candidate."""
    loaded, source = _scenario(scenario)
    wanted = [candidates] if isinstance(candidates, str) else list(candidates)
    chosen = _select(
        loaded,
        wanted,
        _options(seed, results_dir, out),
        real=real,
        reuse=reuse,
        source=source,
    )
    return Selection(
        chosen.path, chosen.ranking, chosen.evidence, chosen.errors, chosen.notes, loaded.name
    )


def report(*folders: Result | PathLike, output: PathLike | None = None) -> Report:
    """Write the lab's self-contained HTML report of runs, comparisons or selections, as
    ``brokerlab report`` does, with every figure as PNG and SVG in ``figures/`` beside it.

    ``output`` defaults to ``report.html`` in the first folder. Raises :class:`ReportError`
    for a folder that is not a run or comparison.
    """
    paths: list[Path] = []
    for given in folders:
        if isinstance(given, Selection):
            paths.extend(r.path for r in given.runs.values())
        elif isinstance(given, Runs) and not isinstance(given, Comparison):
            paths.extend(r.path for r in given.values())
        elif isinstance(given, RunResult | Comparison):
            paths.append(given.path)
        else:
            paths.append(notebook.lab_path(given))
    target = notebook.lab_path(output) if output is not None else None
    return Report(build_report(paths, target))


def open(path: PathLike) -> RunResult | Comparison | Selection | Sweep | Capacity:
    """A stored run, comparison, selection, sweep or capacity folder, as the object the verb
    that made it returned; nothing is re-run. Raises :class:`OpenError` for anything else."""
    folder = notebook.lab_path(path)
    if not folder.is_dir():
        raise OpenError(f"{path}: no such folder")
    if (folder / SWEEP_JSON).is_file():
        return Sweep.from_folder(folder)
    if (folder / CAPACITY_FILE).is_file():
        return Capacity.from_folder(folder)
    info = _read_json(folder / results.RUN_FILE, OpenError)
    kind = info.get("kind", "run")
    if kind == "run":
        return RunResult(folder)
    if kind == "comparison":
        return Comparison.from_folder(folder)
    if kind == "selection":
        return Selection.from_folder(folder)
    raise OpenError(
        f"{folder}: a {kind} folder; open runs, comparisons, selections, sweeps and capacity "
        "answers"
    )


# --------------------------------------------------------------------------- sweep, capacity

#: What :func:`sweep` takes for one varied field: ``"START..STOP:N"`` or ``"V1,V2"`` as
#: ``--vary`` writes it, a list of values as a file writes them, or a single value.
VaryValues = str | Sequence[Any] | int | float


def _axes(vary: Mapping[str, VaryValues]) -> list[Axis]:
    """``--vary`` axes from a mapping; strings are parsed exactly as the CLI parses them."""
    if not isinstance(vary, Mapping) or not vary:
        raise SweepError(
            "vary: give at least one field path and its values, "
            "e.g. {'producers.rate': '500/s..2000/s:4'}"
        )
    axes = []
    for path, values in vary.items():
        if isinstance(values, str):
            axes.append(parse_vary(f"{path}={values}", origin="vary"))
            continue
        if isinstance(values, Sequence | np.ndarray | range):
            items = tuple(v.item() if hasattr(v, "item") else v for v in values)
        else:
            items = (values.item() if hasattr(values, "item") else values,)
        if not items:
            raise SweepError(f"vary {path}: no values")
        parse_vary(f"{path}=0", origin="vary")  # the path itself, checked as the CLI checks it
        axes.append(Axis(str(path), items, "vary"))
    return axes


def sweep(
    scenario: ScenarioLike,
    vary: Mapping[str, VaryValues],
    *,
    seeds: int | None = None,
    targets: str | Sequence[str] = ("sim",),
    workers: int | None = None,
    scheduler: str | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
    redis_url: str | None = None,
    nats_url: str | None = None,
) -> Sweep:
    """Play the scenario at every combination of the ``vary`` values × seeds × targets, as
    ``brokerlab sweep`` does, and return the stored sweep.

    ``vary`` maps field paths to values: ``{"producers.rate": "500/s..2000/s:4"}`` (N evenly
    spaced values, ends included), ``{"consumers.count": [1, 2, 4]}``. Every point uses the
    same ``seeds`` consecutive seeds from the scenario's (common random numbers), so points
    differ only in what was varied. Simulator runs go to ``workers`` local Dask processes
    (1: in this process) or the Dask ``scheduler`` at an address. ``out`` defaults to a folder
    named after the sweep, so the same call again reuses every run already made (and resumes an
    interrupted sweep). Raises :class:`SweepError` for a bad path, value or target, before
    anything runs or is written.
    """
    loaded, source = _scenario(scenario)
    axes = _axes(vary)
    wanted = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    wanted = check_targets(wanted, "targets")
    result = run_sweep(
        loaded,
        axes,
        seeds=seeds,
        targets=wanted,
        out=Path(out) if out is not None else None,
        workers=workers,
        scheduler=scheduler,
        options=_options(None, results_dir, None, redis_url, nats_url),
        source=source,
    )
    return Sweep(result.path, result.table, result.paths, read_spec(result.path))


def capacity(
    scenario: ScenarioLike,
    find: str,
    *,
    target: str = "sim",
    outage: str | float | None = None,
    seeds: int = 3,
    keep_up: float = 0.95,
    tolerance: float = 0.02,
    workers: int | None = None,
    scheduler: str | None = None,
    results_dir: PathLike | None = None,
    out: PathLike | None = None,
    redis_url: str | None = None,
    nats_url: str | None = None,
) -> Capacity:
    """Answer one capacity question, as ``brokerlab capacity --find FIND`` does.

    ``find``: ``"rate"`` (the highest rate meeting every requirement), ``"consumers"`` or
    ``"partitions"`` (the fewest that do), ``"catch-up"`` (seconds until the consumer lag is
    back to normal after every consumer was down for ``outage``, e.g. ``"30s"``). A point meets
    the requirements when every one of ``seeds`` seeds passes and delivers at least ``keep_up``
    × the offered rate; an inconclusive verdict counts as not meeting them. The same question
    asked again finds the same folder and reuses its runs. Raises :class:`CapacityError` for a
    question that cannot be answered, before anything runs.
    """
    loaded, source = _scenario(scenario)
    outage_s = None
    if outage is not None:
        try:
            outage_s = parse_duration(outage)
        except ValueError as error:
            raise CapacityError(f"outage: {error}") from None
        if not outage_s > 0:
            raise CapacityError("outage: must be longer than zero")
    result = find_capacity(
        loaded,
        find,
        target=target,
        out=Path(out) if out is not None else None,
        seeds=seeds,
        outage=outage_s,
        keep_up=keep_up,
        tolerance=tolerance,
        workers=workers,
        scheduler=scheduler,
        options=_options(None, results_dir, None, redis_url, nats_url),
        source=source,
    )
    return Capacity.from_folder(result.path)


# --------------------------------------------------------------------------- reading folders


def _read_json(path: Path, error: type[Exception] = OpenError) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path.parent}: not a run folder (no {path.name})") from None
    except (OSError, ValueError) as problem:
        raise error(f"{path}: cannot read: {problem}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def _html_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A DataFrame as HTML, values escaped (scenario text and paths come from users)."""
    return frame.to_html(index=index, escape=True, na_rep="–", border=0)


def _verdict_html(verdict: Any) -> str:
    colour = {"pass": "#2ca02c", "fail": "#d62728"}.get(str(verdict), "#7f7f7f")
    return f'<b style="color:{colour}">{html.escape(str(verdict))}</b>'


# --------------------------------------------------------------------------- results


def _load_table(runs: Mapping[str, RunResult]) -> pd.DataFrame:
    rows = {}
    for label, r in runs.items():
        latency = r.metrics["latency_ms"]
        rows[label] = {
            "offered /s": r.metrics["throughput_per_s"]["offered"],
            "utilisation": round(r.scenario.utilisation, 3),
            "delivered /s": r.metrics["throughput_per_s"]["delivered"],
            "end_to_end p50 ms": latency["end_to_end"]["p50"],
            "end_to_end p99 ms": latency["end_to_end"]["p99"],
            "end_to_end p99.9 ms": latency["end_to_end"]["p99_9"],
            "completion p99 ms": latency["completion"]["p99"],
            "verdict": r.verdict,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "run"
    return table


class RunResult:
    """One stored run: its folder, metrics.json, its trace as DataFrames, and figures.

    Made by :func:`run`, :func:`simulate`, a comparison or a selection, or read back with
    :func:`open`. Everything is read from the folder on first use (a fresh run keeps its trace
    in memory), so opening a large run is cheap until you ask for its trace.
    """

    def __init__(self, path: PathLike, *, record: RunRecord | None = None, label: str = ""):
        self.path = Path(path)
        self._record = record
        self._label = label

    def __repr__(self) -> str:
        return f"RunResult(target={self.target!r}, verdict={self.verdict!r}, path='{self.path}')"

    # ---------------------------------------------------------------- what the run says

    @cached_property
    def info(self) -> dict[str, Any]:
        """run.json: provenance (target, seed, versions, host, warnings, fault windows)."""
        return _read_json(self.path / results.RUN_FILE)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: counts, latency percentiles (ms), throughput, requirements, verdict."""
        if self._record is not None:
            return self._record.metrics
        return _read_json(self.path / results.METRICS_FILE)

    @property
    def target(self) -> str:
        """``sim`` or the real broker that produced the run."""
        return str(self.metrics.get("target") or self.info.get("target") or "?")

    @property
    def label(self) -> str:
        """The run's name in tables and legends: its key in a comparison, else its target."""
        return self._label or self.target

    @property
    def verdict(self) -> str:
        """``pass`` when every requirement the run could judge was met, else ``fail``."""
        return str(self.metrics.get("verdict"))

    @property
    def seed(self) -> int | None:
        """The seed the run used."""
        return self.metrics.get("seed")

    @property
    def warnings(self) -> list[str]:
        """What a reader should know that is not a requirement failure."""
        return [str(w) for w in self.info.get("warnings") or []]

    @property
    def wall_time_s(self) -> float | None:
        """Seconds the run took on the clock (the simulator is much faster than real time)."""
        if self._record is not None:
            return self._record.wall_time_s
        value = self.info.get("wall_time_s")
        return float(value) if value is not None else None

    @cached_property
    def _scenario_data(self) -> dict[str, Any]:
        try:
            text = (self.path / results.SCENARIO_FILE).read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @cached_property
    def scenario(self) -> Scenario:
        """The scenario exactly as this target played it (scenario.yaml of the run folder)."""
        return parse_scenario(self._scenario_data, self.path / results.SCENARIO_FILE)

    @property
    def warmup(self) -> float:
        """Seconds left out of the percentiles (and of :attr:`latencies`' ``warmup`` rows)."""
        producers = self._scenario_data.get("producers") or {}
        try:
            return float(producers.get("warmup") or 0.0)
        except (AttributeError, TypeError, ValueError):
            return 0.0

    # ---------------------------------------------------------------- tables

    def _trace(self, name: str) -> pd.DataFrame:
        if self._record is not None:
            return getattr(self._record.result.trace, name)
        file = {"sends": SENDS_FILE, "deliveries": DELIVERIES_FILE, "timeline": TIMELINE_FILE}
        try:
            return pd.read_parquet(self.path / file[name])
        except (OSError, ValueError) as error:
            raise OpenError(f"{self.path}: cannot read the trace: {error}") from None

    @cached_property
    def sends(self) -> pd.DataFrame:
        """One row per publish (sends.parquet): intended, sent and acknowledged times, outcome."""
        return self._trace("sends")

    @cached_property
    def deliveries(self) -> pd.DataFrame:
        """One row per delivery (deliveries.parquet), redeliveries and duplicates included."""
        return self._trace("deliveries")

    @cached_property
    def timeline(self) -> pd.DataFrame:
        """One row per interval (timeline.parquet): rates, consumer lag, active faults."""
        return self._trace("timeline")

    @cached_property
    def faults(self) -> list[FaultWindow]:
        """When each fault was active, as played (real runs differ slightly from the plan)."""
        if self._record is not None:
            return list(self._record.result.faults)
        windows = [
            FaultWindow(
                str(w.get("action", "?")),
                str(w.get("target", "?")),
                float(w.get("t_start", 0.0)),
                float(w.get("t_end", 0.0)),
            )
            for w in self.info.get("faults") or []
            if isinstance(w, dict)
        ]
        if not windows and "faults" in self.timeline:
            windows = figures.fault_windows(self.timeline)
        return windows

    @cached_property
    def latencies(self) -> pd.DataFrame:
        """Per-message latencies in ms, measured exactly as metrics.json measures them.

        One row per message sent: ``msg_id``, ``t_intended`` (s), ``end_to_end_ms`` (first
        delivery − intended send), ``completion_ms`` (earliest finished processing − intended
        send), ``publish_ms`` (ack − actual send), ``publish_delay_ms`` (actual − intended
        send), and ``warmup`` (True for messages the percentiles leave out). NaN: never
        delivered, processed or acknowledged.
        """
        sends = self.sends
        checks = check_delivery(sends, self.deliveries)
        intended = sends["t_intended"].to_numpy(dtype="float64")
        sent = sends["t_sent"].to_numpy(dtype="float64")
        acked = sends["t_acked"].to_numpy(dtype="float64")
        first = np.asarray(checks.first_delivered, dtype="float64")
        done = np.asarray(checks.first_done, dtype="float64")
        return pd.DataFrame(
            {
                "msg_id": sends["msg_id"].to_numpy(),
                "t_intended": intended,
                "end_to_end_ms": (first - intended) * 1000.0,
                "completion_ms": (done - intended) * 1000.0,
                "publish_ms": (acked - sent) * 1000.0,
                "publish_delay_ms": (sent - intended) * 1000.0,
                "warmup": intended < self.warmup,
            }
        )

    def latency_table(self) -> pd.DataFrame:
        """Latency statistics in ms from metrics.json: one row per kind (end_to_end,
        completion, publish, publish_delay), columns mean, p50 … max, count."""
        latency = self.metrics.get("latency_ms") or {}
        rows = {kind: latency.get(kind) or {} for kind in LATENCY_KINDS}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_FIELDS))
        table.index.name = "kind"
        return table

    @property
    def requirements(self) -> pd.DataFrame:
        """Each requirement of the scenario with its bound, measured value and ok (None: the
        run cannot judge it), indexed by name."""
        rows = self.metrics.get("requirements") or []
        return pd.DataFrame(rows, columns=["name", "bound", "measured", "ok"]).set_index("name")

    def summary(self) -> pd.DataFrame:
        """The main numbers in one column (the rows of comparison.csv): counts, latency
        percentiles, throughput, verdict."""
        return comparison_table({self.label: self.metrics})

    @property
    def plot(self) -> Plots:
        """The report's figures of this run: ``run.plot.latency_spectrum()`` …"""
        return Plots({self.label: self})

    def _repr_html_(self) -> str:
        name = self.metrics.get("scenario") or self.info.get("scenario") or "?"
        head = (
            f"<p><b>run</b> of <b>{html.escape(str(name))}</b> on "
            f"<code>{html.escape(self.target)}</code>, seed {html.escape(str(self.seed))}: "
            f"{_verdict_html(self.verdict)}<br><small>{html.escape(str(self.path))}</small></p>"
        )
        parts = [head, _html_table(self.summary())]
        if len(self.requirements):
            parts.append(_html_table(self.requirements))
        parts.extend(f"<p>⚠ {html.escape(w)}</p>" for w in self.warnings)
        return '<div class="brokerlab-run">' + "".join(parts) + "</div>"


class Runs(Mapping[str, RunResult]):
    """Several runs side by side, by label: a comparison's targets, or runs you group yourself
    (``bl.Runs({"500/s": run_a, "1000/s": run_b})``, a hand-made sweep)."""

    def __init__(self, runs: Mapping[str, RunResult] | Sequence[RunResult]):
        items = runs.items() if isinstance(runs, Mapping) else [(r.label, r) for r in runs]
        self._runs: dict[str, RunResult] = {}
        for given, result in items:
            label, n = given, 2
            while label in self._runs:  # two runs of one target: keep both, told apart
                label, n = f"{given} ({n})", n + 1
            if result.label != label:
                result = RunResult(result.path, record=result._record, label=label)
            self._runs[label] = result

    def __getitem__(self, label: str) -> RunResult:
        return self._runs[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._runs)})"

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """metrics.json of every run, by label."""
        return {label: result.metrics for label, result in self._runs.items()}

    def summary(self) -> pd.DataFrame:
        """The main numbers side by side: one row per metric, one column per run (the table
        of comparison.csv). ``.summary().T`` gives one row per run."""
        return comparison_table(self.metrics)

    def load_table(self) -> pd.DataFrame:
        """One row per run with what a rate sweep reads: offered and delivered rate,
        utilisation of the consumers, end-to-end p50/p99/p99.9, completion p99 and verdict."""
        return _load_table(self._runs)

    @property
    def plot(self) -> Plots:
        """The report's figures with one line (or panel) per run."""
        return Plots(self._runs)

    def _repr_html_(self) -> str:
        verdicts = ", ".join(
            f"{html.escape(label)} {_verdict_html(r.verdict)}" for label, r in self._runs.items()
        )
        return (
            f'<div class="brokerlab-runs"><p><b>{len(self)} runs</b>: {verdicts}</p>'
            f"{_html_table(self.summary())}</div>"
        )


class Comparison(Runs):
    """A comparison folder: one run per target with the same seed and load, and the targets
    that failed (:attr:`errors`, target → message)."""

    def __init__(
        self, path: PathLike, runs: Mapping[str, RunResult], errors: Mapping[str, str]
    ) -> None:
        super().__init__(runs)
        self.path = Path(path)
        self.errors = dict(errors)

    @classmethod
    def from_folder(cls, path: Path) -> Comparison:
        """Read a comparison folder made by :func:`compare` or ``brokerlab compare``."""
        info = _read_json(path / results.RUN_FILE)
        names = [str(t) for t in info.get("runs") or info.get("targets") or []]
        runs = {
            name: RunResult(path / name, label=name)
            for name in names
            if (path / name / results.METRICS_FILE).is_file()
        }
        errors = {str(k): str(v) for k, v in (info.get("errors") or {}).items()}
        return cls(path, runs, errors)

    def __repr__(self) -> str:
        return f"Comparison(targets={list(self)}, errors={list(self.errors)}, path='{self.path}')"

    def summary(self) -> pd.DataFrame:
        """comparison.csv: one row per metric, one column per target that ran."""
        if not len(self) and (self.path / COMPARISON_CSV).is_file():
            return pd.read_csv(self.path / COMPARISON_CSV, index_col="metric")
        return super().summary()

    def _repr_html_(self) -> str:
        failed = "".join(
            f"<p>✗ {html.escape(t)} did not run: {html.escape(m)}</p>"
            for t, m in self.errors.items()
        )
        return (
            super()._repr_html_().replace("<p><b>", "<p><b>comparison</b> of <b>", 1)
            + f"<small>{html.escape(str(self.path))}</small>{failed}"
        )


class Selection:
    """A selection folder: candidates ranked against a use case's requirements, with the
    evidence behind every verdict (a run, or the capability table with its source)."""

    def __init__(
        self,
        path: PathLike,
        ranking: pd.DataFrame,
        evidence: pd.DataFrame,
        errors: Mapping[str, str],
        notes: Sequence[str] = (),
        scenario: str = "",
    ) -> None:
        self.path = Path(path)
        self.scenario = scenario
        self.ranking = ranking
        self.evidence = evidence
        self.errors = dict(errors)
        self.notes = tuple(notes)

    @classmethod
    def from_folder(cls, path: Path) -> Selection:
        """Read a selection folder made by :func:`select` or ``brokerlab select``."""
        data = _read_json(path / SELECTION_JSON)
        ranking = pd.DataFrame(data.get("ranking") or [])
        evidence = pd.DataFrame(data.get("evidence") or [])
        errors, notes = data.get("errors") or {}, data.get("notes") or ()
        return cls(path, ranking, evidence, errors, notes, str(data.get("scenario") or ""))

    def __repr__(self) -> str:
        return f"Selection(best={self.best!r}, path='{self.path}')"

    @property
    def best(self) -> str | None:
        """The first-ranked candidate (None when none ran)."""
        return str(self.ranking["candidate"].iloc[0]) if len(self.ranking) else None

    @cached_property
    def runs(self) -> Runs:
        """Each candidate's run (made or reused), by candidate."""
        return Runs(
            {
                str(row.candidate): RunResult(Path(str(row.run)), label=str(row.candidate))
                for row in self.ranking.itertuples()
            }
        )

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """metrics.json of each candidate's run, by candidate."""
        return self.runs.metrics

    def summary(self) -> pd.DataFrame:
        """The ranking: best first, with verdict, failed requirements and worst margin."""
        return self.ranking

    def side_by_side(self) -> pd.DataFrame:
        """Every requirement (rows) of every candidate (columns, in rank order): ✓ met,
        ✗ not met, the measured value, and * for a capability fact not yet verified."""
        order = list(self.ranking["candidate"]) if len(self.ranking) else []
        return notebook.side_by_side(self.evidence, order)

    @property
    def plot(self) -> SelectionPlots:
        """``selection.plot.margins()``, and the runs' figures with one line per candidate."""
        return SelectionPlots(self)

    def _repr_html_(self) -> str:
        best = html.escape(self.best or "none")
        parts = [
            f"<p><b>selection</b>: best <b>{best}</b><br>"
            f"<small>{html.escape(str(self.path))}</small></p>",
            _html_table(self.ranking, index=False),
        ]
        parts.extend(f"<p>note: {html.escape(n)}</p>" for n in self.notes)
        parts.extend(
            f"<p>✗ {html.escape(c)} did not run: {html.escape(m)}</p>"
            for c, m in self.errors.items()
        )
        return '<div class="brokerlab-selection">' + "".join(parts) + "</div>"


def _tick(value: Any) -> str:
    """A varied value as a label: 1500.0 -> 1500, 0.002 stays."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _matches(column: pd.Series, wanted: Any) -> pd.Series:
    """Rows whose value of a varied field is ``wanted`` (numbers compared with a tolerance)."""
    numeric = pd.to_numeric(column, errors="coerce")
    if isinstance(wanted, int | float) and not isinstance(wanted, bool) and numeric.notna().all():
        return pd.Series(np.isclose(numeric.to_numpy(dtype="float64"), float(wanted)), column.index)
    return column.astype(str) == str(wanted)


class Sweep:
    """A sweep folder: one run per point × seed × target, the table of their metrics
    (sweep.csv), a summary with means and 95% confidence intervals across seeds, and figures.

    Made by :func:`sweep` or ``brokerlab sweep``, or read back with :func:`open`.
    """

    def __init__(
        self,
        path: PathLike,
        table: pd.DataFrame,
        paths: Sequence[str],
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        #: One row per run: the varied fields, seed, target, every metric (dotted names such
        #: as ``latency_ms.end_to_end.p99``), verdict, run folder (relative) and error.
        self.table = table
        #: The varied field paths, in the order given.
        self.paths = list(paths)
        #: sweep.json: what was varied, seeds, targets, where it ran.
        self.spec = dict(spec or {})

    @classmethod
    def from_folder(cls, path: Path) -> Sweep:
        """Read a sweep folder made by :func:`sweep` or ``brokerlab sweep``."""
        spec = read_spec(path)
        try:
            table = read_table(path)
        except (OSError, ValueError) as problem:
            raise OpenError(f"{path}: not a finished sweep (no sweep table): {problem}") from None
        return cls(path, table, list(spec.get("vary") or []), spec)

    def __repr__(self) -> str:
        return (
            f"Sweep(vary={self.paths}, points={self.points}, runs={len(self.table)}, "
            f"path='{self.path}')"
        )

    @property
    def points(self) -> int:
        """How many combinations of the varied values were played."""
        return len(self.table[self.paths].drop_duplicates()) if len(self.table) else 0

    @property
    def seeds(self) -> list[int]:
        """The seeds every point was played with."""
        return sorted(int(s) for s in self.table["seed"].unique()) if len(self.table) else []

    @property
    def targets(self) -> list[str]:
        """The targets every point was played on."""
        return list(dict.fromkeys(str(t) for t in self.table["target"])) if len(self.table) else []

    @property
    def errors(self) -> pd.DataFrame:
        """The rows of runs that failed (their ``error`` says why); empty when all ran."""
        return self.table[self.table["error"].notna()]

    @cached_property
    def scenario(self) -> Scenario:
        """The base scenario the sweep varied (scenario.yaml of the sweep folder)."""
        return load_scenario(self.path / results.SCENARIO_FILE)

    def summary(self) -> pd.DataFrame:
        """One row per point and target: seeds, how many passed, and for each main metric the
        mean across seeds with the half-width of its 95% confidence interval (column
        ``METRIC ±95%``), as ``brokerlab sweep`` prints it."""
        return summarize(self.table, self.paths)

    def _label(self, row: Any) -> str:
        point = ", ".join(f"{p}={_tick(row[p])}" for p in self.paths)
        return f"{point} {row['target']} s{row['seed']}"

    @cached_property
    def runs(self) -> Runs:
        """Every run that finished, labelled ``PATH=VALUE, … TARGET sSEED``."""
        done = self.table[self.table["error"].isna() & self.table["run"].notna()]
        return Runs(
            {
                self._label(row): RunResult(self.path / str(row["run"]), label=self._label(row))
                for _, row in done.iterrows()
            }
        )

    def run(
        self, point: Any = None, *, target: str | None = None, seed: int | None = None
    ) -> RunResult:
        """The run of one point: ``sweep.run(4)`` when one field was varied, else
        ``sweep.run({"producers.rate": 1000, "consumers.count": 4})`` (values in base units,
        as in :attr:`table`). ``target`` may be left out when the sweep had one, ``seed``
        defaults to the first seed. Raises KeyError naming what exists."""
        wanted = dict(point) if isinstance(point, Mapping) else {}
        if not isinstance(point, Mapping):
            if len(self.paths) != 1:
                raise KeyError(f"name the point by its fields: {{{', '.join(self.paths)}}}")
            wanted = {self.paths[0]: point}
        unknown = [p for p in wanted if p not in self.paths]
        if unknown or len(wanted) != len(self.paths):
            raise KeyError(
                f"a point of this sweep names {', '.join(self.paths)}; got {list(wanted)}"
            )
        rows = self.table
        for path, value in wanted.items():
            rows = rows[_matches(rows[path], value)]
        if rows.empty:
            values = {p: [_tick(v) for v in self.table[p].unique()] for p in self.paths}
            raise KeyError(f"no point {wanted} in this sweep; its values: {values}")
        targets = list(dict.fromkeys(str(t) for t in rows["target"]))
        if target is None and len(targets) > 1:
            raise KeyError(f"this sweep ran on {', '.join(targets)}: pass target=")
        rows = rows[rows["target"] == (target or targets[0])]
        rows = rows[rows["seed"] == (seed if seed is not None else min(rows["seed"], default=0))]
        if rows.empty:
            raise KeyError(f"no run of {wanted} on {target} with seed {seed}")
        row = rows.iloc[0]
        if pd.isna(row["run"]) or pd.notna(row["error"]):
            raise KeyError(f"{self._label(row)} did not run: {row['error']}")
        return RunResult(self.path / str(row["run"]), label=self._label(row))

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """metrics.json of every run that finished, by label."""
        return self.runs.metrics

    @property
    def plot(self) -> SweepPlots:
        """The sweep's figures (the ones ``brokerlab report`` draws for a sweep)."""
        return SweepPlots(self)

    def _repr_html_(self) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        head = (
            f"<p><b>sweep</b> of <b>{html.escape(str(self.spec.get('scenario', '?')))}</b> over "
            f"<code>{html.escape(', '.join(self.paths))}</code>: {self.points} points × seeds "
            f"{html.escape(seeds)} on {html.escape(', '.join(self.targets))} "
            f"({len(self.errors)} failed)<br><small>{html.escape(str(self.path))}</small></p>"
        )
        failed = "".join(
            f"<p>✗ {html.escape(self._label(row))}: {html.escape(str(row['error']))}</p>"
            for _, row in self.errors.iterrows()
        )
        return (
            f'<div class="brokerlab-sweep">{head}{_html_table(self.summary(), False)}{failed}</div>'
        )


class SweepPlots:
    """A sweep's figures: the application's sweep figures (mean across seeds, 95% CI)."""

    def __init__(self, result: Sweep):
        self._sweep = result

    def _varying(self) -> list[str]:
        """The paths given more than one value: a path set to one value is a setting."""
        table, paths = self._sweep.table, self._sweep.paths
        if not len(table) or table["error"].notna().all():
            raise ValueError(f"{self._sweep.path}: no run of this sweep finished; nothing to draw")
        return [p for p in paths if p in table and table[p].nunique() > 1] or list(paths)

    def latency_vs_load(self, kind: str = "end_to_end", bound_ms: float | None = None) -> Figure:
        """p50 and p99 latency against the varied field (the offered rate when it was varied),
        one line per target with the knee of the p99 curve marked, and the p99 bound: by default
        the scenario's own ``kind`` p99 requirement."""
        if kind not in LATENCY_KINDS:
            raise ValueError(f"unknown latency kind {kind!r}; use {', '.join(LATENCY_KINDS)}")
        figure = sweep_figures.latency_vs_load(self._sweep.table, self._varying(), kind)
        if bound_ms is None:
            bound = self._sweep.scenario.requirements.latency.get(kind, {}).get("p99")
            bound_ms = bound * 1000 if bound is not None else None
        if bound_ms is not None:
            axes = figure.axes[0]
            axes.axhline(
                bound_ms, color="#c62828", ls="--", lw=1, label=f"p99 bound {bound_ms:g} ms"
            )
            axes.legend(fontsize=8)
        return figure

    def delivered_vs_offered(self) -> Figure:
        """Delivered rate against offered rate per target: below the diagonal, the consumers
        do not keep up."""
        return sweep_figures.delivered_vs_offered(self._sweep.table, self._varying())

    def pass_fail_map(
        self, x: str | None = None, y: str | None = None, target: str | None = None
    ) -> Figure:
        """Share of seeds meeting every requirement at each point of a two-field sweep (one
        target; the first by default). ``x`` and ``y`` default to the varied fields in order."""
        varying = self._varying()
        if x is None or y is None:
            if len(varying) != 2:
                raise ValueError(
                    f"a pass/fail map needs two varied fields; this sweep varies {varying}: "
                    "pass x= and y="
                )
            x, y = x or varying[0], y or varying[1]
        for path in (x, y):
            if path not in self._sweep.paths:
                raise ValueError(f"{path!r} was not varied; use {', '.join(self._sweep.paths)}")
        chosen = target or self._sweep.targets[0]
        if chosen not in self._sweep.targets:
            raise ValueError(f"{chosen!r} is not a target of this sweep: {self._sweep.targets}")
        return sweep_figures.pass_map(self._sweep.table, x, y, chosen)


class Capacity:
    """A capacity folder: the answer to one question (``.value``, ``.answer``), and the
    evidence (``.points``: every value tried, on every seed, with why it failed).

    Made by :func:`capacity` or ``brokerlab capacity``, or read back with :func:`open`.
    """

    def __init__(self, path: PathLike, data: Mapping[str, Any]) -> None:
        self.path = Path(path)
        #: capacity.json as a dict.
        self.data = dict(data)

    @classmethod
    def from_folder(cls, path: Path) -> Capacity:
        """Read a capacity folder made by :func:`capacity` or ``brokerlab capacity``."""
        return cls(path, _read_json(path / CAPACITY_FILE))

    def __repr__(self) -> str:
        return f"Capacity(find={self.find!r}, value={self.value!r}, path='{self.path}')"

    @property
    def find(self) -> str:
        """The question: ``rate``, ``consumers``, ``partitions`` or ``catch-up``."""
        return str(self.data.get("find", ""))

    @property
    def value(self) -> int | float | None:
        """The answer (messages/s, a count, or seconds); None when nothing met the
        requirements, or the lag did not return to normal."""
        return self.data.get("value")

    @property
    def answer(self) -> str:
        """The one line ``brokerlab capacity`` prints."""
        return str(self.data.get("answer", ""))

    @property
    def target(self) -> str:
        """Where the runs were played."""
        return str(self.data.get("target", ""))

    @property
    def seeds(self) -> list[int]:
        """The seeds every decisive point was played with."""
        return [int(s) for s in self.data.get("seeds") or []]

    @property
    def points(self) -> pd.DataFrame:
        """The evidence, one row per value tried in the order tried: ``value``, ``step`` (why
        it was tried), ``meets`` (every seed met the requirements), ``seeds passing``, the
        worst end-to-end p99 over the seeds, the worst catch-up (catch-up only) and ``why not``."""
        rows = []
        for point in self.data.get("points") or []:
            seeds = point.get("seeds") or []
            passing = [s.get("ok", s.get("catch_up_s") is not None) for s in seeds]
            p99 = [
                s["latency_ms"]["end_to_end"]["p99"]
                for s in seeds
                if (s.get("latency_ms") or {}).get("end_to_end", {}).get("p99") is not None
            ]
            row: dict[str, Any] = {
                "value": point.get("value"),
                "step": point.get("step"),
                "meets": bool(point.get("ok")),
                "seeds passing": f"{sum(bool(p) for p in passing)}/{len(seeds)}",
                "worst end_to_end p99 ms": max(p99) if p99 else None,
            }
            if self.find == "catch-up":
                times = [s.get("catch_up_s") for s in seeds]
                row["worst catch-up s"] = None if None in times or not times else max(times)
            why = [w for s in seeds for w in (s.get("why") or [])]
            row["why not"] = point.get("note") or "; ".join(dict.fromkeys(why))
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """The evidence (:attr:`points`)."""
        return self.points

    @cached_property
    def runs(self) -> Runs:
        """Every run behind the answer, labelled ``VALUE sSEED``."""
        found: dict[str, RunResult] = {}
        for point in self.data.get("points") or []:
            for entry in point.get("seeds") or []:
                if entry.get("run"):
                    label = f"{_tick(point.get('value'))} s{entry.get('seed')}"
                    found[label] = RunResult(self.path / str(entry["run"]), label=label)
        return Runs(found)

    @property
    def figures(self) -> list[Path]:
        """The PNG figures ``brokerlab capacity`` wrote (catch-up: the lag per seed)."""
        return sorted((self.path / "figures").glob("*.png"))

    @property
    def plot(self) -> CapacityPlots:
        """The figures of this answer: ``.plot.catch_up()`` for a catch-up question."""
        return CapacityPlots(self)

    def _repr_html_(self) -> str:
        return (
            f'<div class="brokerlab-capacity"><p><b>capacity</b> ({html.escape(self.find)}): '
            f"<b>{html.escape(self.answer)}</b><br><small>{html.escape(str(self.path))}</small>"
            f"</p>{_html_table(self.points, False)}</div>"
        )


class CapacityPlots:
    """A capacity answer's figures, drawn again from its runs."""

    def __init__(self, result: Capacity):
        self._capacity = result

    def catch_up(self, seed: int | None = None) -> Figure:
        """Consumer lag around the outage for one seed (the first by default): the outage
        shaded, the normal lag, and the moment the lag is back to it. Catch-up answers only."""
        data = self._capacity.data
        if self._capacity.find != "catch-up":
            raise ValueError(f"a {self._capacity.find} answer has no catch-up figure")
        per_seed = [s for s in data.get("per_seed") or [] if s.get("run")]
        chosen = [s for s in per_seed if seed is None or s.get("seed") == seed][:1]
        if not chosen:
            raise ValueError(f"no catch-up run for seed {seed}; seeds: {self._capacity.seeds}")
        (entry,) = chosen
        run = RunResult(self._capacity.path / str(entry["run"]))
        outage, start = float(data["outage_s"]), float(data["outage_start_s"])
        times, lag = lag_series(Trace.read(run.path), max(0.01, min(0.1, outage / 100)))
        seconds, normal = recovery_time(times, lag, start, start + outage, run.warmup)
        return sweep_figures.catch_up(
            times,
            lag,
            (start, start + outage),
            seconds,
            normal,
            title=f"consumer lag, {outage:g} s outage (seed {entry['seed']})",
        )


Result = RunResult | Runs | Selection | Sweep | Capacity


@dataclass(frozen=True)
class Report:
    """A written HTML report: :attr:`path`, and its figures as PNG (and SVG) files."""

    path: Path

    @property
    def figures_dir(self) -> Path:
        """The folder of the report's figures (PNG and SVG)."""
        return self.path.parent / FIGURES_DIR

    @property
    def figures(self) -> list[Path]:
        """The PNG figures, in the order the report draws them."""
        pngs = self.figures_dir.glob("*.png")
        return sorted(pngs, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _repr_html_(self) -> str:
        return (
            f"<p><b>report</b>: <code>{html.escape(str(self.path))}</code> "
            f"({len(self.figures)} figures in <code>{html.escape(str(self.figures_dir))}</code>)"
            "</p>"
        )


# --------------------------------------------------------------------------- figures


class Plots:
    """The report's figures for one run or several (one line or panel per run).

    Each method returns a :class:`matplotlib.figure.Figure`: Jupyter shows it, ``savefig``
    writes it. Latency kinds: ``end_to_end``, ``completion``, ``publish``, ``publish_delay``.
    """

    def __init__(self, runs: Mapping[str, RunResult]):
        self._runs = dict(runs)
        self._colors = figures.target_colors(list(self._runs))

    def _samples(self, kinds: str | Sequence[str]) -> dict[str, np.ndarray]:
        wanted = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in wanted if k not in LATENCY_KINDS]
        if unknown:
            raise ValueError(f"unknown latency kind {unknown[0]!r}; use {', '.join(LATENCY_KINDS)}")
        samples: dict[str, np.ndarray] = {}
        for label, run in self._runs.items():
            for kind in wanted:
                name = kind.replace("_", "-") if len(self._runs) == 1 else label
                if len(self._runs) > 1 and len(wanted) > 1:
                    name = f"{label} {kind.replace('_', '-')}"
                samples[name] = figures.latency_samples(run.sends, run.deliveries, kind, run.warmup)
        return samples

    def _title(self, what: str) -> str:
        if len(self._runs) == 1:
            (run,) = self._runs.values()
            return f"{what}: {run.label}"
        return what

    def latency_spectrum(self, kinds: str | Sequence[str] = "end_to_end") -> Figure:
        """Latency against percentile on a "nines" axis, so the tail is as visible as the
        median; a single run draws each of ``kinds``, several runs one line each."""
        samples = self._samples(kinds)
        colors = self._colors if len(samples) == len(self._runs) else None
        return figures.latency_spectrum(
            samples, title=self._title("latency by percentile"), colors=colors
        )

    def latency_cdf(self, kinds: str | Sequence[str] = "end_to_end") -> Figure:
        """The cumulative distribution of latency (fraction of messages at or below x ms)."""
        samples = self._samples(kinds)
        colors = self._colors if len(samples) == len(self._runs) else None
        return figures.latency_cdf(
            samples, title=self._title("latency distribution"), colors=colors
        )

    def throughput(self) -> Figure:
        """Sent and delivered messages per second over the run, fault windows shaded."""
        return figures.throughput_timeline(
            {label: r.timeline for label, r in self._runs.items()},
            {label: r.faults for label, r in self._runs.items()},
            colors=self._colors,
        )

    def backlog(self) -> Figure:
        """Consumer lag (sent and not yet received) over the run, fault windows shaded: a lag
        that keeps growing means the consumers cannot keep up."""
        return figures.backlog_timeline(
            {label: r.timeline for label, r in self._runs.items()},
            {label: r.faults for label, r in self._runs.items()},
            colors=self._colors,
        )

    def delivery_counts(self) -> Figure:
        """What happened to the messages: volumes, and anomalies on their own scale."""
        return figures.delivery_counts(
            {label: r.metrics.get("counts") or {} for label, r in self._runs.items()},
            colors=self._colors,
        )

    def latency_by_load(self, bound_ms: float | None = None) -> Figure:
        """p50 and p99 end-to-end latency against each run's offered rate, utilisation on top:
        for runs of one scenario at several rates (a sweep). ``bound_ms`` draws a p99 bound;
        by default the scenario's own end_to_end p99 requirement."""
        table = _load_table(self._runs)
        if bound_ms is None and self._runs:
            first = next(iter(self._runs.values()))
            bound = first.scenario.requirements.latency.get("end_to_end", {}).get("p99")
            bound_ms = bound * 1000 if bound is not None else None
        return notebook.latency_by_load(table, bound_ms)


class SelectionPlots(Plots):
    """A selection's figures: the margin chart, and its candidates' runs side by side."""

    def __init__(self, selection: Selection):
        super().__init__(selection.runs)
        self._selection = selection

    def margins(self) -> Figure:
        """Worst margin per candidate in rank order: green meets every requirement."""
        name = self._selection.scenario or self._selection.path.name
        return notebook.margin_chart(
            self._selection.ranking, f"{name}: margin per candidate (green meets every requirement)"
        )
