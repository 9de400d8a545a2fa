"""The public API: ``import brokerlab as bl``, for notebooks and scripts.

The CLI's verbs as functions that return result objects instead of printing: load a scenario,
change it (:meth:`Scenario.with_`), simulate or run it, compare targets, select a broker, make a
report, open a stored run. Every result is stored exactly as the CLI stores it (a run folder
under the results folder), so what a notebook made can be reported on, reused, or opened again
with :func:`open`; a result object reads its folder lazily (metrics first, the trace when asked).

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

from brokerlab.app import figures, notebook
from brokerlab.app.compare import COMPARISON_CSV, comparison_table
from brokerlab.app.compare import compare as _compare
from brokerlab.app.report import FIGURES_DIR, ReportError, build_report
from brokerlab.app.runner import RunOptions, RunRecord, TargetError, run_scenario
from brokerlab.app.select import DEFAULT_CANDIDATES, SELECTION_JSON, SelectionError
from brokerlab.app.select import select as _select
from brokerlab.core import results
from brokerlab.core.checks import check_delivery
from brokerlab.core.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from brokerlab.core.trace import DELIVERIES_FILE, SENDS_FILE, TIMELINE_FILE, FaultWindow
from brokerlab.core.vocabulary import LATENCY_KINDS, SUMMARY_FIELDS

__all__ = [
    "DEFAULT_CANDIDATES",
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
    "TargetError",
    "compare",
    "describe",
    "load",
    "open",
    "report",
    "results_folder",
    "run",
    "select",
    "simulate",
    # sweep and capacity: see the section "sweep, capacity" below
]

#: What the verbs accept as a scenario: a Scenario, or the path of a scenario file.
ScenarioLike = Scenario | str | Path
PathLike = str | Path


class OpenError(Exception):
    """A folder :func:`open` cannot read: missing, or not a run, comparison or selection."""


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


def open(path: PathLike) -> RunResult | Comparison | Selection:
    """A stored run, comparison or selection folder, as the object the verb that made it
    returned; nothing is re-run. Raises :class:`OpenError` for anything else."""
    folder = notebook.lab_path(path)
    if not folder.is_dir():
        raise OpenError(f"{path}: no such folder")
    info = _read_json(folder / results.RUN_FILE, OpenError)
    kind = info.get("kind", "run")
    if kind == "run":
        return RunResult(folder)
    if kind == "comparison":
        return Comparison.from_folder(folder)
    if kind == "selection":
        return Selection.from_folder(folder)
    raise OpenError(f"{folder}: a {kind} folder; open runs, comparisons and selections")


# --------------------------------------------------------------------------- sweep, capacity
#
# `bl.sweep(...)` and `bl.capacity(...)` belong here, next to compare and select: thin wrappers
# of brokerlab.app.sweep and brokerlab.app.capacity that take a ScenarioLike, build RunOptions
# with _options(), and return a result object built on Runs (one RunResult per point, plus the
# sweep's own table as .summary() and its figures under .plot). Add their names to __all__
# and to brokerlab/__init__.py's lazy exports.


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


Result = RunResult | Runs | Selection


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
