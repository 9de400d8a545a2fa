"""Sweeps: one scenario played at many points (a grid of varied fields) × seeds × targets.

A sweep answers "how does this change when I change that": every point is an ordinary run folder
(``DIR/runs/...``) and the whole sweep is one table, ``DIR/sweep.csv`` and ``DIR/sweep.parquet``,
with one row per point × seed × target. Run folders are named by the digest of the scenario as
the target plays it, so a sweep run again (after an interruption, or with more values) reuses
every run that already exists instead of playing it again.

Where the work runs: simulator points are independent, so they run in parallel on Dask
distributed (a LocalCluster sized to the machine, or an existing cluster). Workers only compute
and return the trace and metrics; this process writes every folder and table, so a cluster needs
no shared disk. A point's seed is part of the point, never of the worker, so the numbers do not
depend on where a point ran. Real-broker points run one at a time on this machine: they share
its brokers and CPUs, and two at once would measure each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from brokerlab.app import runner
from brokerlab.core import results
from brokerlab.core.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    scenario_to_yaml,
)
from brokerlab.core.trace import (
    DELIVERIES_FILE,
    SENDS_FILE,
    TIMELINE_FILE,
    TargetResult,
    Trace,
)

SWEEP_CSV = "sweep.csv"
SWEEP_PARQUET = "sweep.parquet"
SWEEP_JSON = "sweep.json"
RUNS_DIR = "runs"
#: The environment variable Dask itself reads for a scheduler's address.
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"

#: Columns that follow the varied paths, in this order, then the metrics, then the tail.
KEY_COLUMNS = ("seed", "target")
TAIL_COLUMNS = ("verdict", "run", "error")

#: Metrics the printed summary shows with a confidence interval across seeds.
SUMMARY_METRICS = (
    "latency_ms.end_to_end.p50",
    "latency_ms.end_to_end.p99",
    "latency_ms.completion.p99",
    "throughput_per_s.delivered",
    "counts.lost",
)

#: Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


class SweepError(Exception):
    """A user's mistake in a sweep: a bad ``--vary`` path or value, a bad sweep file or flag.

    The message names the flag (or file) and the field path, and says why.
    """


# --------------------------------------------------------------------------- what to vary


@dataclass(frozen=True)
class Axis:
    """One varied field: its path in the scenario and the values, as the user wrote them."""

    path: str
    values: tuple[Any, ...]
    #: where the axis came from, for error messages: ``--vary producers.rate=...`` or a file
    origin: str = "--vary"


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*|\.\d+|\[\d+\])*")
_RANGE = re.compile(r"^\s*(?P<start>[^,]+?)\s*\.\.\s*(?P<stop>[^,:]+?)\s*:\s*(?P<num>\d+)\s*$")


def _path_parts(path: str) -> list[str | int]:
    """``faults[0].at`` or ``faults.0.at`` -> ``["faults", 0, "at"]``."""
    parts: list[str | int] = []
    for name, index in _PART.findall(path):
        if index:
            parts.append(int(index))
        elif name.isdigit():
            parts.append(int(name))
        else:
            parts.append(name)
    return parts


def _scalar(text: str) -> Any:
    """A value as YAML would read it in a scenario file (``4`` -> 4, ``1ms`` stays text)."""
    text = text.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | str | bool) else text


def parse_vary(text: str, origin: str = "--vary") -> Axis:
    """``PATH=V1,V2,...`` or ``PATH=START..STOP:N`` (N evenly spaced values, ends included).

    A range keeps its ends as written; :func:`build_points` turns them into base units and fills
    in the values between (rounded for whole-number fields such as ``consumers.count``).
    """
    path, sep, values = text.partition("=")
    path = path.strip()
    where = f"{origin} {text}"
    if not sep or not path:
        raise SweepError(f"{where}: expected PATH=V1,V2,... or PATH=START..STOP:N")
    if not _PATH.fullmatch(path):
        raise SweepError(f"{where}: {path!r} is not a field path (e.g. producers.rate)")
    match = _RANGE.match(values)
    if match:
        num = int(match["num"])
        if num < 2:
            raise SweepError(f"{where}: a range needs at least 2 values (N >= 2)")
        return Axis(path, (("range", match["start"], match["stop"], num),), origin)
    items = [v for v in values.split(",") if v.strip()]
    if not items:
        raise SweepError(f"{where}: no values")
    return Axis(path, tuple(_scalar(v) for v in items), origin)


# --------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One combination of varied values, as a valid scenario."""

    index: int
    scenario: Scenario
    #: varied path -> its value in base units (per second, seconds, bytes), for the table
    columns: dict[str, Any]


def _get(data: Any, parts: list[str | int]) -> Any:
    node = data
    for part in parts:
        node = node[part]
    return node


def _set(data: dict[str, Any], parts: list[str | int], value: Any, where: str) -> None:
    """Set ``value`` at ``parts`` in the dumped scenario; say which part does not exist."""
    node: Any = data
    for depth, part in enumerate(parts):
        walked = ".".join(str(p) for p in parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, dict):
            if not isinstance(part, str) or part not in node:
                known = ", ".join(sorted(str(k) for k in node))
                raise SweepError(f"{where}: {walked}: no such field (fields here: {known})")
            if last:
                node[part] = value
                return
            if node[part] is None:
                node[part] = {}
            node = node[part]
        elif isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise SweepError(
                    f"{where}: {walked}: the list has {len(node)} entries, numbered from 0"
                )
            if last:
                node[part] = value
                return
            node = node[part]
        else:
            raise SweepError(f"{where}: {walked}: {parts[depth - 1]} is a value, not a mapping")


def _apply(base: dict[str, Any], settings: Sequence[tuple[Axis, Any]]) -> Scenario:
    """The base scenario with each axis set to its value, validated like a file."""
    data = json.loads(json.dumps(base))
    for axis, value in settings:
        _set(data, _path_parts(axis.path), value, f"{axis.origin} {axis.path}")
    try:
        return parse_scenario(data, "sweep point")
    except ScenarioError as error:
        written = ", ".join(f"{axis.path}={value}" for axis, value in settings)
        reasons = "; ".join(f"{f}: {r}" if f else r for f, r in error.problems)
        origin = settings[0][0].origin if settings else "--vary"
        raise SweepError(f"{origin} {written}: {reasons}") from None


def _base_value(scenario: Scenario, path: str) -> Any:
    """A varied field's value in the validated scenario, in base units, fit for one cell."""
    value = _get(scenario.model_dump(mode="json"), _path_parts(path))
    if isinstance(value, dict):
        numbers = [v for k, v in value.items() if k != "dist" and isinstance(v, int | float)]
        if value.get("dist") == "constant" and len(numbers) == 1:
            return numbers[0]
        if "mean" in value:
            return value["mean"]
        return json.dumps(value, sort_keys=True)
    return value


def _expand(base: dict[str, Any], axis: Axis) -> tuple[Any, ...]:
    """An axis's values; a range becomes N evenly spaced base-unit values."""
    if len(axis.values) != 1 or not (
        isinstance(axis.values[0], tuple) and axis.values[0][:1] == ("range",)
    ):
        return axis.values
    _, start, stop, num = axis.values[0]
    ends = [_base_value(_apply(base, [(axis, _scalar(end))]), axis.path) for end in (start, stop)]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in ends):
        raise SweepError(f"{axis.origin} {axis.path}: a range needs numeric ends")
    values = np.linspace(float(ends[0]), float(ends[1]), num)
    if all(isinstance(v, int) for v in ends):
        whole = list(dict.fromkeys(round(v) for v in values))
        return tuple(whole)
    return tuple(float(f"{v:.12g}") for v in values)


def build_points(base: Scenario, axes: Sequence[Axis]) -> list[Point]:
    """Every combination of the axes' values (a grid), each validated; raises SweepError.

    Everything is checked before anything runs, so a bad value stops the sweep with nothing
    written.
    """
    if not axes:
        raise SweepError("--vary: say what to vary (PATH=V1,V2,... or PATH=START..STOP:N)")
    paths = [axis.path for axis in axes]
    if len(set(paths)) != len(paths):
        raise SweepError(f"--vary: a path is varied twice ({', '.join(paths)})")
    data = base.model_dump(mode="json")
    expanded = [(axis, _expand(data, axis)) for axis in axes]
    points = []
    for index, combination in enumerate(itertools.product(*(values for _, values in expanded))):
        settings = [(axis, value) for (axis, _), value in zip(expanded, combination, strict=True)]
        scenario = _apply(data, settings)
        columns = {axis.path: _base_value(scenario, axis.path) for axis in axes}
        points.append(Point(index, scenario, columns))
    return points


def with_values(scenario: Scenario, values: dict[str, Any]) -> Scenario:
    """``scenario`` with fields set by path (``{"producers.rate": "1200/s"}``), in the
    scenario's units, validated like a file (SweepError names the path and the reason)."""
    settings = [(Axis(path, (value,), "set"), value) for path, value in values.items()]
    return _apply(scenario.model_dump(mode="json"), settings)


# --------------------------------------------------------------------------- sweep files


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep file (or the command line) says: scenario, axes, seeds, targets."""

    scenario_path: Path
    axes: tuple[Axis, ...] = ()
    seeds: int | None = None
    targets: tuple[str, ...] = ()
    out: Path | None = None


def is_sweep_file(path: Path) -> bool:
    """A YAML file with a top-level ``vary`` is a sweep file (a scenario never has one)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "vary" in data


def load_sweep_file(path: Path) -> SweepSpec:
    """Read a sweep file::

    scenario: ../scenarios/mm1.yaml       # relative to this file
    vary:
      producers.rate: [400/s, 600/s, 800/s]
      consumers.count: 1..4:4             # or a list
    seeds: 3
    targets: [sim]
    out: results/mm1-rate-sweep           # optional, relative to the working folder
    """
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SweepError(f"{where}: cannot read the sweep file: {error}") from None
    known = {"scenario", "vary", "seeds", "targets", "out", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SweepError(f"{where}: {unknown[0]}: unknown field (use {', '.join(sorted(known))})")
    if not isinstance(data.get("scenario"), str):
        raise SweepError(f"{where}: scenario: required, the scenario file to sweep")
    vary = data["vary"]
    if not isinstance(vary, dict) or not vary:
        raise SweepError(f"{where}: vary: a mapping of field paths to values")
    axes = []
    for name, values in vary.items():
        origin = f"{where}: vary"
        if isinstance(values, list):
            if not values:
                raise SweepError(f"{origin}.{name}: no values")
            axes.append(Axis(str(name), tuple(values), origin))
        elif isinstance(values, dict) and set(values) == {"start", "stop", "num"}:
            text = f"{name}={values['start']}..{values['stop']}:{values['num']}"
            axes.append(parse_vary(text, origin))
        elif isinstance(values, str):
            axes.append(parse_vary(f"{name}={values}", origin))
        else:
            raise SweepError(
                f"{origin}.{name}: a list of values, 'START..STOP:N' or {{start, stop, num}}"
            )
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise SweepError(f"{where}: seeds: a whole number of seeds per point, at least 1")
    targets = data.get("targets") or []
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",")]
    out = data.get("out")
    return SweepSpec(
        scenario_path=(path.parent / data["scenario"]),
        axes=tuple(axes),
        seeds=seeds,
        targets=tuple(str(t) for t in targets),
        out=Path(out) if out else None,
    )


def check_targets(targets: Sequence[str], flag: str = "--targets") -> list[str]:
    """Known targets, each once; SweepError otherwise."""
    chosen = [t for t in targets if t]
    unknown = [t for t in chosen if t not in runner.TARGETS]
    if not chosen or unknown:
        raise SweepError(
            f"{flag}: unknown {unknown or 'empty list'}; use {', '.join(runner.TARGETS)}"
        )
    if len(set(chosen)) != len(chosen):
        raise SweepError(f"{flag}: a target is named twice")
    return chosen


# --------------------------------------------------------------------------- where it runs


@dataclass
class Played:
    """What a worker hands back for one simulated point: everything a run folder holds.

    The trace comes back already encoded as Parquet (``trace_files``): the encoding is a fair
    share of a point's cost, and it belongs on the worker, not on the one process that writes
    every folder. ``result`` keeps the target's info, warnings and fault windows.
    """

    result: TargetResult
    trace_files: dict[str, bytes]
    metrics: dict[str, Any]
    warnings: list[str]
    unexpected: int
    started: datetime
    wall_time_s: float
    #: The run folder the worker already wrote (a local cluster shares this machine's disk).
    stored: str | None = None


@dataclass(frozen=True)
class StoreHere:
    """Asks the worker to write the point's run folder itself instead of returning its files.

    Only for workers on this machine (a local cluster): they share the disk, so each point's few
    MB of trace need not travel to the one process that writes every folder, which on a small
    machine competes with the workers for the same cores.
    """

    folder: str
    source: str | None


def play_point(
    scenario_data: dict[str, Any], target: str, seed: int, store: StoreHere | None = None
) -> Played:
    """Run one point where the caller is (a Dask worker, or this process) and analyse it.

    Takes the scenario as plain data so any worker can rebuild it; writes nothing unless
    ``store`` says where (then the returned ``Played`` carries no trace files).
    """
    scenario = runner.for_target(parse_scenario(scenario_data, "sweep point"), target)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brokerlab-point-") as workdir:
        result = runner.TARGETS[target](scenario, seed, Path(workdir), runner.RunOptions())
    analysis = runner.analyze_result(result, scenario, target, seed)
    wall = time.perf_counter() - clock
    trace = result.trace
    files = {
        SENDS_FILE: trace.sends,
        DELIVERIES_FILE: trace.deliveries,
        TIMELINE_FILE: trace.timeline,
    }
    encoded = {}
    for name, frame in files.items():
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        encoded[name] = buffer.getvalue()
    light = TargetResult(
        trace=Trace(
            sends=trace.sends.iloc[:0], deliveries=trace.deliveries.iloc[:0],
            timeline=trace.timeline.iloc[:0],
        ),
        faults=result.faults,
        info=result.info,
        warnings=result.warnings,
    )  # fmt: skip
    played = Played(
        result=light,
        trace_files=encoded,
        metrics=analysis.to_metrics(),
        warnings=list(analysis.warnings),
        unexpected=analysis.unexpected,
        started=started,
        wall_time_s=wall,
    )
    if store is not None:
        _write_folder(scenario, target, seed, played, Path(store.folder), store.source)
        played.trace_files, played.stored = {}, store.folder
    return played


@dataclass(frozen=True)
class Placement:
    """Where simulator points run: ``serial`` (this process), ``local`` or ``cluster``."""

    kind: str
    workers: int
    address: str | None = None

    def describe(self) -> str:
        if self.kind == "serial":
            return "in this process, one point at a time (--workers 1)"
        if self.kind == "local":
            return f"on a local Dask cluster of {self.workers} worker processes"
        return f"on the Dask cluster at {self.address}"


def choose_placement(workers: int | None, scheduler: str | None) -> Placement:
    """``--scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), else ``--workers`` (default: one worker
    process per core); ``--workers 1`` runs in this process. Both flags at once are a mistake."""
    if workers is not None and workers < 1:
        raise SweepError(f"--workers: {workers}: at least 1")
    if scheduler and workers is not None:
        raise SweepError("--workers and --scheduler: give one (a cluster has its own workers)")
    if scheduler:
        return Placement("cluster", 0, scheduler)
    if workers is None and os.environ.get(SCHEDULER_ENV):
        return Placement("cluster", 0, os.environ[SCHEDULER_ENV])
    count = workers if workers is not None else (os.cpu_count() or 1)
    return Placement("serial" if count == 1 else "local", count)


class Executor:
    """Runs simulator points serially or on Dask; a context manager that owns its cluster."""

    def __init__(self, placement: Placement):
        self.placement = placement
        self.client: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Executor:
        if self.placement.kind == "serial":
            return self
        import dask
        from dask.distributed import Client, LocalCluster

        try:
            if self.placement.kind == "local":
                # On Linux the local workers are forked from this process, which has already
                # imported the lab: they start in about a second instead of a dozen (a spawned
                # worker imports pandas, pyarrow and brokerlab again), and a script needs no
                # `__main__` guard. Elsewhere fork is unsafe (macOS frameworks): spawn.
                method = "fork" if sys.platform.startswith("linux") else "spawn"
                # The simulator too, so forked workers do not import it for their first point.
                import brokerlab.sim.run  # noqa: F401

                self._stack.enter_context(
                    dask.config.set(
                        {
                            "distributed.worker.multiprocessing-method": method,
                            # Send every point to a worker at once instead of one more per
                            # finished point: the scheduler runs on a thread of this process,
                            # which also writes the run folders, and a worker must not sit
                            # idle while this process holds the GIL. Points cost about the
                            # same, and work stealing still evens out the end.
                            "distributed.scheduler.worker-saturation": float("inf"),
                            # The dashboard's statistical profiler samples the running point's
                            # stack every 10 ms on another thread of the worker: about 5% of a
                            # worker's CPU, for a dashboard a sweep does not show.
                            "distributed.worker.profile.enabled": False,
                            # Health checks that wake every worker 10-50 times a second (event
                            # loop ticks, memory and system monitors) take the GIL from the
                            # point being simulated; once a second is plenty for a sweep.
                            "distributed.admin.tick.interval": "1s",
                            "distributed.worker.memory.monitor-interval": "1s",
                            "distributed.admin.system-monitor.interval": "2s",
                            "distributed.admin.system-monitor.disk": False,
                        }
                    )
                )
                if method == "fork":
                    # Forked workers share this process's memory until they write to it; the
                    # garbage collector writes to every object it visits, which would copy the
                    # whole heap into each worker. Frozen objects are never visited.
                    gc.freeze()
                    self._stack.callback(gc.unfreeze)
                cluster = self._stack.enter_context(
                    LocalCluster(
                        n_workers=self.placement.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=":0",
                        silence_logs=logging.ERROR,
                    )
                )
                self.client = self._stack.enter_context(Client(cluster))
            else:
                self.client = self._stack.enter_context(
                    Client(self.placement.address, timeout="10s")
                )
        except OSError as error:
            self._stack.close()
            raise SweepError(
                f"--scheduler: cannot reach a Dask scheduler at {self.placement.address}: {error}"
            ) from None
        except RuntimeError as error:
            self._stack.close()
            raise RuntimeError(
                f"could not start {self.placement.workers} local Dask workers ({error}); where "
                "they start as new Python processes (spawn, outside Linux) they import the "
                "calling script, which then needs `if __name__ == '__main__':` around its work; "
                "or run in this process with --workers 1 (workers=1)"
            ) from error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def shares_disk(self) -> bool:
        """Whether workers write to this machine's disk (a local cluster's do)."""
        return self.placement.kind == "local"

    def map(
        self, jobs: Sequence[tuple[dict[str, Any], str, int, StoreHere | None]]
    ) -> Iterator[tuple[int, Played | BaseException]]:
        """Run ``play_point`` on each job; yield (job index, result or exception) as each ends."""
        if self.client is None:
            for index, job in enumerate(jobs):
                try:
                    yield index, play_point(*job)
                except Exception as error:
                    yield index, error
            return
        from dask.distributed import as_completed

        # pure=False: a fresh key per submission, so a step of a capacity search never gets an
        # earlier step's result back from the scheduler's memory.
        futures = {
            self.client.submit(play_point, *job, pure=False): index
            for index, job in enumerate(jobs)
        }
        for future in as_completed(futures):
            index = futures[future]
            try:
                yield index, future.result()
            except Exception as error:
                yield index, error
            future.release()


# --------------------------------------------------------------------------- running tasks


@dataclass(frozen=True)
class Task:
    """One run of a sweep: a point on one target with one seed."""

    point: Point
    target: str
    seed: int

    @functools.cached_property
    def played(self) -> Scenario:
        return runner.for_target(self.point.scenario, self.target)

    @functools.cached_property
    def digest(self) -> str:
        return runner.scenario_digest(self.point.scenario, self.target)

    def folder(self, runs_dir: Path) -> Path:
        """Named by what is played, so the same scenario, target and seed find the same folder."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.point.scenario.name).strip("-") or "run"
        return runs_dir / f"{name}-{self.target}-s{self.seed}-{self.digest[:12]}"


@dataclass
class Outcome:
    """A finished task: its metrics and folder, or the error that stopped it."""

    task: Task
    metrics: dict[str, Any] | None = None
    folder: Path | None = None
    error: str | None = None
    reused: bool = False


def _reusable(task: Task, folder: Path) -> dict[str, Any] | None:
    """The metrics of an earlier run of exactly this task in ``folder``, if there is one."""
    try:
        run = json.loads((folder / results.RUN_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((folder / results.METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (
        run.get("scenario_sha256") == task.digest
        and run.get("target") == task.target
        and run.get("seed") == task.seed
    )
    return metrics if same else None


def _write_folder(
    scenario: Scenario, target: str, seed: int, played: Played, folder: Path, source: str | None
) -> None:
    """Write a point's result as an ordinary run folder (all or nothing)."""
    if folder.exists():
        shutil.rmtree(folder)  # a folder of ours that is not this task's run: replace it
    with results.staged_dir(folder) as stage:
        runner.write_run_files(
            stage,
            scenario,
            target,
            seed,
            played.result,
            played.metrics,
            warnings=played.warnings,
            unexpected=played.unexpected,
            started=played.started,
            wall_time_s=played.wall_time_s,
            source=source,
            run_id=folder.name,
            trace_files=played.trace_files,
        )


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def run_tasks(
    tasks: Sequence[Task],
    runs_dir: Path,
    executor: Executor,
    options: runner.RunOptions,
    *,
    source: str | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Run (or reuse) every task; return outcomes in the tasks' order.

    Simulator tasks go to the executor (in parallel on Dask); real-broker tasks run here, one at
    a time, after the simulator tasks when the cluster is local (so they do not share CPUs with
    them) and alongside them when it is remote.
    """
    outcomes: list[Outcome | None] = [None] * len(tasks)

    def finish(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if on_done:
            on_done(outcome)

    sim_jobs: list[int] = []
    real_jobs: list[int] = []
    for index, task in enumerate(tasks):
        folder = task.folder(runs_dir)
        previous = _reusable(task, folder)
        if previous is not None:
            finish(index, Outcome(task, previous, folder, reused=True))
        elif task.target == "sim":
            sim_jobs.append(index)
        else:
            real_jobs.append(index)
    if real_jobs and on_note:
        on_note(
            f"{len(real_jobs)} real-broker runs run one at a time on this machine "
            "(they share its brokers and CPUs)"
            + ("; the simulator runs go first" if executor.placement.kind == "local" else "")
        )

    def run_sim() -> None:
        jobs = [
            (
                tasks[i].played.model_dump(mode="json"),
                tasks[i].target,
                tasks[i].seed,
                StoreHere(str(tasks[i].folder(runs_dir)), source) if executor.shares_disk else None,
            )
            for i in sim_jobs
        ]
        for job_index, played in executor.map(jobs):
            index = sim_jobs[job_index]
            task = tasks[index]
            if isinstance(played, BaseException):
                finish(index, Outcome(task, error=_error_text(played)))
                continue
            folder = task.folder(runs_dir)
            if played.stored is None:
                _write_folder(task.played, task.target, task.seed, played, folder, source)
            finish(index, Outcome(task, played.metrics, folder))

    def run_real() -> None:
        for index in real_jobs:
            task = tasks[index]
            folder = task.folder(runs_dir)
            if folder.exists():
                shutil.rmtree(folder)
            point_options = dataclasses.replace(options, seed=task.seed, out=folder, progress=None)
            try:
                record = runner.run_scenario(
                    task.point.scenario, task.target, point_options, source
                )
            except Exception as error:
                finish(index, Outcome(task, error=_error_text(error)))
            else:
                finish(index, Outcome(task, record.metrics, record.path))

    if executor.placement.kind == "cluster" and real_jobs:
        # The cluster is elsewhere: real runs here do not compete with it for CPUs.
        import threading

        thread = threading.Thread(target=run_sim, daemon=True)
        thread.start()
        run_real()
        thread.join()
    else:
        run_sim()
        run_real()
    return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------- the table


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json as one row: nested keys joined with dots (``latency_ms.completion.p99``);
    each requirement as ``requirements.NAME.measured`` and ``requirements.NAME.ok``."""
    row: dict[str, Any] = {"duration_s": metrics.get("duration_s")}
    for group in ("counts", "throughput_per_s"):
        for key, value in metrics.get(group, {}).items():
            row[f"{group}.{key}"] = value
    for kind, stats in metrics.get("latency_ms", {}).items():
        for key, value in stats.items():
            row[f"latency_ms.{kind}.{key}"] = value
    for requirement in metrics.get("requirements", []):
        row[f"requirements.{requirement['name']}.measured"] = requirement["measured"]
        row[f"requirements.{requirement['name']}.ok"] = requirement["ok"]
    return row


def build_table(outcomes: Sequence[Outcome], paths: Sequence[str], out: Path) -> pd.DataFrame:
    """One row per point × seed × target, in a stable order (point, target, seed)."""
    rows = []
    for outcome in outcomes:
        task = outcome.task
        row: dict[str, Any] = dict(task.point.columns)
        row.update(seed=task.seed, target=task.target)
        row.update(flatten_metrics(outcome.metrics or {}))
        row["verdict"] = outcome.metrics["verdict"] if outcome.metrics else None
        row["run"] = str(outcome.folder.relative_to(out)) if outcome.folder else None
        row["error"] = outcome.error
        row["_order"] = (task.point.index, task.target, task.seed)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*paths, *KEY_COLUMNS, *TAIL_COLUMNS])
    table = table.sort_values("_order", kind="stable").drop(columns="_order")
    metric_columns = [c for c in table.columns if c not in (*paths, *KEY_COLUMNS, *TAIL_COLUMNS)]
    table = table[[*paths, *KEY_COLUMNS, *metric_columns, *TAIL_COLUMNS]].reset_index(drop=True)
    for column in metric_columns:
        if column.endswith(".ok"):
            table[column] = table[column].astype("boolean")
        elif table[column].dtype == object:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    table["seed"] = table["seed"].astype("int64")
    for column in TAIL_COLUMNS:
        table[column] = table[column].astype("string")
    return table


def t95(n: int) -> float:
    """The 95% two-sided Student t quantile for ``n`` samples (n - 1 degrees of freedom)."""
    if n < 2:
        return math.nan
    return _T95[n - 2] if n - 1 <= len(_T95) else 1.96


def summarize(table: pd.DataFrame, paths: Sequence[str]) -> pd.DataFrame:
    """Per point and target: how many seeds, how many passed, and for each summary metric the
    mean across seeds with the half-width of its 95% confidence interval (Student t)."""
    done = table[table["error"].isna()] if "error" in table else table
    keys = [*paths, "target"]
    rows = []
    for key, group in done.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["seeds"] = len(group)
        row["passed"] = int((group["verdict"] == "pass").sum())
        for metric in SUMMARY_METRICS:
            if metric not in group:
                continue
            values = group[metric].dropna().to_numpy(dtype="float64")
            mean = float(values.mean()) if len(values) else math.nan
            half = (
                t95(len(values)) * float(values.std(ddof=1)) / math.sqrt(len(values))
                if len(values) > 1
                else math.nan
            )
            row[metric] = mean
            row[f"{metric} ±95%"] = half
        rows.append(row)
    return pd.DataFrame(rows)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    stage = path.with_name(f".{path.name}.partial-{os.getpid()}")
    write(stage)
    stage.replace(path)


def write_tables(table: pd.DataFrame, out: Path) -> None:
    """``sweep.csv`` and ``sweep.parquet``, each replaced whole."""
    _write_atomic(out / SWEEP_CSV, lambda p: table.to_csv(p, index=False))
    _write_atomic(out / SWEEP_PARQUET, lambda p: table.to_parquet(p, index=False))


def read_table(folder: Path) -> pd.DataFrame:
    """A sweep folder's table (Parquet keeps the types; CSV when Parquet is missing)."""
    if (folder / SWEEP_PARQUET).exists():
        return pd.read_parquet(folder / SWEEP_PARQUET)
    return pd.read_csv(folder / SWEEP_CSV)


def read_spec(folder: Path) -> dict[str, Any]:
    """``sweep.json``: what was varied, seeds, targets, where it ran."""
    try:
        return json.loads((folder / SWEEP_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """A finished sweep: its folder, table, per-point summary and what to tell the user."""

    path: Path
    table: pd.DataFrame
    summary: pd.DataFrame
    paths: list[str]
    placement: Placement
    reused: int = 0
    failed: int = 0
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def seeds_for(scenario: Scenario, seeds: int | None) -> list[int]:
    """``seeds`` consecutive seeds from the scenario's own: the same for every point, so points
    differ only in what was varied (common random numbers)."""
    count = 1 if seeds is None else seeds
    if count < 1:
        raise SweepError(f"--seeds: {count}: at least 1")
    return [scenario.seed + i for i in range(count)]


def default_out(
    scenario: Scenario,
    results_dir: Path,
    axes: Sequence[Axis],
    seeds: int | None,
    targets: Sequence[str],
) -> Path:
    """``results/NAME-sweep-FINGERPRINT``: the same sweep (scenario, axes, seeds, targets) finds
    the same folder, so running an interrupted sweep's command again resumes it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario.name).strip("-") or "sweep"
    described = json.dumps(
        {
            "scenario": scenario.model_dump(mode="json"),
            "vary": [[axis.path, [str(v) for v in axis.values]] for axis in axes],
            "seeds": seeds,
            "targets": list(targets),
        },
        sort_keys=True,
    )
    fingerprint = hashlib.sha256(described.encode("utf-8")).hexdigest()[:10]
    return results_dir / f"{name}-sweep-{fingerprint}"


def plan_sweep(
    scenario: Scenario, axes: Sequence[Axis], seeds: int | None, targets: Sequence[str]
) -> list[Task]:
    """Every task of a sweep, validated before anything runs (SweepError on a bad input)."""
    chosen = check_targets(targets)
    points = build_points(scenario, axes)
    return [
        Task(point, target, seed)
        for point in points
        for target in chosen
        for seed in seeds_for(scenario, seeds)
    ]


def run_sweep(
    scenario: Scenario,
    axes: Sequence[Axis],
    *,
    seeds: int | None = None,
    targets: Sequence[str] = ("sim",),
    out: Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    options: runner.RunOptions | None = None,
    source: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> SweepResult:
    """Play every point × seed × target, write the run folders and the sweep table.

    ``on_progress(points_done, points)`` follows the points (a point is done when all its seeds
    and targets are). A failing run is recorded in the table's ``error`` column; the rest go on.
    """
    options = options or runner.RunOptions()
    tasks = plan_sweep(scenario, axes, seeds, targets)
    placement = choose_placement(workers, scheduler)
    out = out or default_out(scenario, options.results_dir, axes, seeds, targets)
    if out.exists() and not out.is_dir():
        raise results.ResultsError(f"{out}: exists and is not a folder")
    paths = [axis.path for axis in axes]
    points = sorted({task.point.index for task in tasks})
    per_point = {p: sum(1 for t in tasks if t.point.index == p) for p in points}
    left = dict(per_point)
    done_points = 0
    if on_progress:
        on_progress(0, len(points))

    def on_done(outcome: Outcome) -> None:
        nonlocal done_points
        left[outcome.task.point.index] -= 1
        if left[outcome.task.point.index] == 0:
            done_points += 1
            if on_progress:
                on_progress(done_points, len(points))

    clock = time.perf_counter()
    with Executor(placement) as executor:
        # Only now, with the inputs checked and the cluster reached, is anything written.
        out.mkdir(parents=True, exist_ok=True)
        runs_dir = out / RUNS_DIR
        runs_dir.mkdir(exist_ok=True)
        (out / results.SCENARIO_FILE).write_text(scenario_to_yaml(scenario), encoding="utf-8")
        if on_note:
            on_note(
                f"{len(points)} points × {len(tasks) // len(points)} runs, simulator runs "
                f"{placement.describe()}"
            )
        outcomes = run_tasks(
            tasks, runs_dir, executor, options, source=source, on_done=on_done, on_note=on_note
        )
    wall = time.perf_counter() - clock
    table = build_table(outcomes, paths, out)
    write_tables(table, out)
    reused = sum(o.reused for o in outcomes)
    failed = sum(o.error is not None for o in outcomes)
    results.write_json(
        out / SWEEP_JSON,
        {
            "kind": "sweep",
            "scenario": scenario.name,
            "scenario_file": source,
            "vary": {
                axis.path: [_jsonable(v) for v in _axis_values(tasks, axis.path)] for axis in axes
            },
            "seeds": seeds_for(scenario, seeds),
            "targets": list(dict.fromkeys(t.target for t in tasks)),
            "points": len(points),
            "runs": len(tasks),
            "reused": reused,
            "failed": failed,
            "placement": {
                "kind": placement.kind,
                "workers": placement.workers,
                "address": placement.address,
            },
            "wall_time_s": round(wall, 3),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "lab_version": results.package_versions()["brokerlab"],
        },
    )
    return SweepResult(
        path=out,
        table=table,
        summary=summarize(table, paths),
        paths=paths,
        placement=placement,
        reused=reused,
        failed=failed,
        wall_time_s=wall,
    )


def _axis_values(tasks: Sequence[Task], path: str) -> list[Any]:
    return list(dict.fromkeys(task.point.columns[path] for task in tasks))


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def load_sweep_inputs(
    argument: Path,
    vary: Sequence[str],
    seeds: int | None,
    targets: str | None,
    out: Path | None,
) -> tuple[Scenario, list[Axis], int | None, list[str], Path | None, str]:
    """The CLI's inputs: a scenario plus ``--vary`` flags, or a sweep file (flags add to it and
    win over it). Returns (scenario, axes, seeds, targets, out, source)."""
    spec = load_sweep_file(argument) if is_sweep_file(argument) else SweepSpec(argument)
    scenario = load_scenario(spec.scenario_path)
    axes = list(spec.axes)
    flagged = [parse_vary(text) for text in vary]
    flagged_paths = {a.path for a in flagged}
    axes = [a for a in axes if a.path not in flagged_paths] + flagged
    chosen = [t.strip() for t in targets.split(",")] if targets else list(spec.targets or ["sim"])
    return (
        scenario,
        axes,
        seeds if seeds is not None else spec.seeds,
        check_targets(chosen),
        out or spec.out,
        str(spec.scenario_path),
    )
