"""Run a scenario on one target and store the result.

Targets are ``sim`` plus every real target registered in :mod:`brokerlab.adapters.targets` (one
record per broker: adapter, URL option, embedded server, faults it can play...). The registry
imports no client library and the simulator is imported lazily, so ``brokerlab validate`` starts
fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokerlab.adapters import targets as registry
from brokerlab.core import results
from brokerlab.core.analysis import Analysis, analyze
from brokerlab.core.scenario import Scenario, scenario_to_yaml
from brokerlab.core.trace import TargetResult, Trace
from brokerlab.core.vocabulary import BROKER_FAULTS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunOptions:
    """How to run: seed, where results go, which existing brokers to use, how to show progress.

    ``urls`` maps a target's URL option by its Python name (``redis_url``, ``nats_url``, any a
    registered target declares) to an existing broker; ``redis_url`` and ``nats_url`` may also be
    given as fields.
    """

    seed: int | None = None
    out: Path | None = None
    results_dir: Path = field(default_factory=results.default_results_dir)
    redis_url: str | None = None
    nats_url: str | None = None
    progress: Progress | None = None
    urls: Mapping[str, str | None] = field(default_factory=dict)

    def url_for(self, target: registry.Target) -> str | None:
        """The existing broker given for ``target`` (by its URL option), if any."""
        key = target.url.key
        given = self.urls.get(key)
        if given is None and key in ("redis_url", "nats_url"):
            given = getattr(self, key)
        return given

    #: the simulator's performance profile, overriding ``broker.profile`` (``--profile``)
    profile: str | None = None


TargetFn = Callable[[Scenario, int, Path, RunOptions], TargetResult]


def _run_sim(scenario: Scenario, seed: int, workdir: Path, options: RunOptions) -> TargetResult:
    from brokerlab.sim import simulate
    from brokerlab.sim.profile import ProfileError

    try:
        return simulate(scenario, seed, progress=options.progress)
    except ProfileError as error:
        raise TargetError(str(error)) from None


def session_state_dir() -> Path:
    """Where `brokerlab brokers up` records the session's brokers (``$BROKERLAB_STATE``)."""
    return Path(os.environ.get("BROKERLAB_STATE", ".brokerlab"))


def _session_url(scenario: Scenario, target: str) -> str | None:
    """A session broker (`brokers up`) that can serve this run as configured, if any.

    Only a server started with the scenario's persistence is reused: measuring an AOF-always
    scenario on a server without AOF would report the wrong broker.
    """
    state = session_state_dir()
    if not (state / "brokers.json").exists():
        return None
    from brokerlab.adapters import embedded

    wanted = scenario.broker.persistence.model_dump(mode="json")
    for entry in embedded.brokers_status(state):
        if (
            entry["alive"]
            and target in entry.get("targets", [])
            and entry.get("persistence") == wanted
        ):
            return str(entry["url"])
    return None


def _real(target: str) -> TargetFn:
    def run(scenario: Scenario, seed: int, workdir: Path, options: RunOptions) -> TargetResult:
        from brokerlab import adapters
        from brokerlab.adapters.faults import FaultRefused

        record = registry.get_target(target)
        url, session = _real_url(scenario, record, options)
        try:
            result = adapters.run_real(
                scenario, target, seed, workdir=workdir, url=url, progress=options.progress
            )
        except FaultRefused as error:
            raise TargetError(str(error)) from None
        if session:
            result.info["session_broker"] = session
        return result

    return run


def _real_url(
    scenario: Scenario, target: registry.Target, options: RunOptions
) -> tuple[str | None, bool]:
    """The broker a real run uses: the one given by URL, else a session broker that fits, else
    None (the lab starts its own). A session broker is shared: faults that kill or pause a
    broker need the run's own."""
    given = options.url_for(target)
    if given:
        return given, False
    if any(f.action in BROKER_FAULTS for f in scenario.faults):
        return None, False
    session = _session_url(scenario, target.name)
    return session, session is not None


def check_target(scenario: Scenario, target: str, options: RunOptions) -> None:
    """Refuse, before any folder, broker or client exists, what ``target`` cannot do with this
    scenario: an unknown target, or faults it cannot or must not play (a :class:`TargetError`).
    """
    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if target == "sim" or target not in registry.target_names():
        return
    from brokerlab.adapters.faults import FaultRefused, check_faults

    record = registry.get_target(target)
    url, _session = _real_url(scenario, record, options)
    try:
        check_faults(for_target(scenario, target), record, own_broker=url is None)
    except FaultRefused as error:
        raise TargetError(str(error)) from None


class _Targets(MutableMapping[str, TargetFn]):
    """Target name -> run function: ``sim``, every registered real target (read live, so a target
    registered later is runnable at once), and entries set here (tests)."""

    def __init__(self) -> None:
        self._extra: dict[str, TargetFn] = {"sim": _run_sim}

    def __getitem__(self, name: str) -> TargetFn:
        if name in self._extra:
            return self._extra[name]
        if name in registry.target_names():
            return _real(name)
        raise KeyError(name)

    def __setitem__(self, name: str, run: TargetFn) -> None:
        self._extra[name] = run

    def __delitem__(self, name: str) -> None:
        del self._extra[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._extra, *registry.target_names()]))

    def __len__(self) -> int:
        return len(list(iter(self)))


#: Target name -> run function. ``sim`` plays any broker kind; real targets need their broker.
TARGETS: MutableMapping[str, TargetFn] = _Targets()


class TargetError(Exception):
    """A user asked a target for what it cannot do: an unknown target, or faults it must not
    play (killing a broker the lab did not start, power loss on a real broker)."""


def for_target(scenario: Scenario, target: str) -> Scenario:
    """The scenario as a real target plays it: the broker kind becomes the target's kind.

    A scenario names one broker kind for the simulator; comparing brokers means running the same
    load, consumers and requirements on each real broker, so a real target overrides ``kind``
    (with the kind its record measures).
    """
    if target == "sim" or target not in registry.target_names():
        return scenario
    kind = registry.get_target(target).kind
    if scenario.broker.kind == kind:
        return scenario
    broker = scenario.broker.model_copy(update={"kind": kind})
    return scenario.model_copy(update={"broker": broker})


def scenario_digest(scenario: Scenario, target: str) -> str:
    """A fingerprint of the scenario exactly as ``target`` plays it, to find runs to reuse."""
    played = scenario_to_yaml(for_target(scenario, target))
    return hashlib.sha256(played.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """A finished, stored run."""

    path: Path
    target: str
    metrics: dict[str, Any]
    analysis: Analysis
    result: TargetResult
    wall_time_s: float


def run_scenario(
    scenario: Scenario, target: str, options: RunOptions, source: str | None = None
) -> RunRecord:
    """Run ``scenario`` on ``target``, analyse the trace, write the run folder, return it all.

    What the target cannot do is refused (:class:`TargetError`) before anything is written.
    """
    check_target(scenario, target, options)
    seed = options.seed if options.seed is not None else scenario.seed
    scenario = for_target(scenario, target)
    if options.profile and target == "sim":
        # The scenario as run says which profile was used (scenario.yaml, reuse digests).
        broker = scenario.broker.model_copy(update={"profile": options.profile})
        scenario = scenario.model_copy(update={"broker": broker})
    started = datetime.now(UTC)
    run_id = results.new_run_id(scenario.name, target, seed, started)
    final = results.choose_run_dir(options.results_dir, run_id, options.out)
    with results.staged_dir(final) as folder:
        clock = time.perf_counter()
        result = TARGETS[target](scenario, seed, folder, options)
        # Parquet encoding releases the GIL: the trace is written while it is analysed.
        with _trace_written_in_background(result.trace, folder):
            analysis = analyze_result(result, scenario, target, seed)
        wall = time.perf_counter() - clock
        metrics = analysis.to_metrics()
        write_run_files(
            folder,
            scenario,
            target,
            seed,
            result,
            metrics,
            warnings=analysis.warnings,
            unexpected=analysis.unexpected,
            started=started,
            wall_time_s=wall,
            source=source,
            run_id=final.name,
            trace_written=True,
        )
    return RunRecord(final, target, metrics, analysis, result, wall)


@contextlib.contextmanager
def _trace_written_in_background(trace: Trace, folder: Path) -> Iterator[None]:
    """Write ``trace`` into ``folder`` on a thread while the block runs; on leaving, wait for it
    and raise what writing raised.

    The thread gets shallow copies of the tables (same data, its own pandas block managers), so
    whatever pandas does to the caller's tables meanwhile cannot disturb the writer. The wait
    outlasts a Ctrl-C: a writer still running while the staging folder is removed would leave a
    half-written folder behind.
    """
    tables = Trace(
        sends=trace.sends.copy(deep=False),
        deliveries=trace.deliveries.copy(deep=False),
        timeline=trace.timeline.copy(deep=False),
    )
    failures: list[BaseException] = []
    finished = threading.Event()

    def write() -> None:
        try:
            tables.write(folder)
        except BaseException as error:  # handed to the caller's thread
            failures.append(error)
        finally:
            finished.set()

    thread = threading.Thread(target=write, name="brokerlab-trace-writer", daemon=True)
    # Ctrl-C is held back while the thread starts (Thread.start waits for it, and a
    # KeyboardInterrupt there would leave a running writer unwaited for).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    thread.start()
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        yield
    finally:
        _wait_through_ctrl_c(finished)
    if failures:
        raise failures[0]


def _wait_through_ctrl_c(finished: threading.Event) -> None:
    """Wait for ``finished`` even if Ctrl-C interrupts the wait; then re-raise the Ctrl-C.

    An event, not ``Thread.join``: before Python 3.13 a join cut short by Ctrl-C marks the
    thread as ended while it still runs, so a second join returns at once.
    """
    interrupted: KeyboardInterrupt | None = None
    while not finished.is_set():
        try:
            finished.wait()
        except KeyboardInterrupt as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted


def analyze_result(result: TargetResult, scenario: Scenario, target: str, seed: int) -> Analysis:
    """The one analysis of a target's result, as ``run_scenario`` does it (the trace's span is
    the run's duration). Sweeps call it where the target ran, e.g. on a Dask worker."""
    duration_s = _trace_span(result)
    return analyze(
        result.trace,
        scenario,
        target=target,
        seed=seed,
        duration_s=duration_s,
        held=held_at_drain(result.info),
    )


def held_at_drain(info: dict[str, Any]) -> int | None:
    """Messages the target still held when a timed-out drain ended (entries at the broker not
    yet delivered or not yet acknowledged), from run.json's ``drain`` record; None when the
    drain completed or the target could not say."""
    drain = info.get("drain") or {}
    at_broker = drain.get("at_broker")
    if drain.get("reason") != "timeout" or not at_broker:
        return None
    return max(0, int(at_broker.get("undelivered", 0))) + max(0, int(at_broker.get("unacked", 0)))


def write_run_files(
    folder: Path,
    scenario: Scenario,
    target: str,
    seed: int,
    result: TargetResult,
    metrics: dict[str, Any],
    *,
    warnings: list[str],
    unexpected: int,
    started: datetime,
    wall_time_s: float,
    source: str | None,
    run_id: str,
    trace_files: Mapping[str, bytes] | None = None,
    trace_written: bool = False,
) -> None:
    """Write a run folder's files (trace, scenario.yaml, metrics.json, run.json) into ``folder``.

    Split from :func:`run_scenario` so a sweep can run a target on another machine and write
    the folder where its results are kept: the files are the same either way. ``trace_files``
    (file name -> Parquet bytes) are the trace already encoded where it was made; without them
    ``result.trace`` is written here, unless ``trace_written`` says the caller already did.
    """
    versions = results.package_versions()
    if trace_written:
        pass
    elif trace_files is None:
        result.trace.write(folder)
    else:
        for name, data in trace_files.items():
            (folder / name).write_bytes(data)
    (folder / results.SCENARIO_FILE).write_text(scenario_to_yaml(scenario), encoding="utf-8")
    results.write_json(folder / results.METRICS_FILE, metrics)
    results.write_manifest(
        folder,
        results.RunManifest(
            run_id=run_id,
            scenario=scenario.name,
            scenario_file=source,
            scenario_sha256=scenario_digest(scenario, target),
            target=target,
            seed=seed,
            started_at=started.isoformat(timespec="seconds"),
            wall_time_s=round(wall_time_s, 3),
            lab_version=versions["brokerlab"],
            versions=versions,
            host=results.host_info(),
            command=" ".join(sys.argv),
            target_info=_jsonable(result.info),
            warnings=list(result.warnings) + list(warnings),
            unexpected=unexpected,
            faults=list(result.faults),
            # the performance profile the simulator charged (name, provenance, charges);
            # a real broker needs no model
            profile=_jsonable(result.info.get("profile")) if target == "sim" else None,
        ),
    )


def _trace_span(result: TargetResult) -> float:
    """Seconds from the run's start to its last recorded event."""
    sends, deliveries = result.trace.sends, result.trace.deliveries
    ends = [0.0]
    for column in ("t_sent", "t_acked"):
        if len(sends):
            ends.append(float(sends[column].max(skipna=True) or 0.0))
    for column in ("t_delivered", "t_done"):
        if len(deliveries):
            ends.append(float(deliveries[column].max(skipna=True) or 0.0))
    return round(max(v for v in ends if v == v), 6)


def _jsonable(value: Any) -> Any:
    """Make target info safe for json.dumps (paths, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
