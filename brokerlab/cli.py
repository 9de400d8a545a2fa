"""The ``brokerlab`` command: validate scenarios, run them, list what was run.

Exit codes: 0 success, 2 bad input (a scenario, a flag, a results folder), 1 a failure of the lab
itself (a bug, or a broker that could not be started), with a message, never a bare traceback for
a user's mistake. With ``--check`` (``run``, ``compare``) a finished run also says its verdict:
3 fail, 4 inconclusive. 130: interrupted (Ctrl-C), within seconds, with no broker or worker left
running and no half-written results folder.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C while the command's libraries load (up to a second or two on a busy machine): end
    # with the same exit status as any other interrupt, not a traceback of an import. Ended
    # here and now, not by raising SystemExit: an exception raised in a signal handler surfaces
    # wherever the main thread happens to be, and code that catches everything there (a bare
    # ``except:`` in a library) once swallowed it, so a Ctrl-C'd run went on and exited 0.
    # Nothing exists yet to clean up: no broker, worker or results folder is made before
    # ``_Lab.invoke`` replaces this handler.
    os.write(2, b"interrupted\n")
    os._exit(130)


# Only when this module is the program (the console script or ``python -m brokerlab.cli``), not
# when a test or a notebook imports it; ``_Lab.invoke`` takes over once a command runs.
_STARTING = (
    (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "brokerlab")
    and threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
)
if _STARTING:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import traceback  # noqa: E402 - after the start-up handler, on purpose
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import click  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table  # noqa: E402

from brokerlab.adapters.binaries import BrokerUnavailable  # noqa: E402
from brokerlab.adapters.targets import target_names, url_options  # noqa: E402
from brokerlab.core import results  # noqa: E402
from brokerlab.core.scenario import ScenarioError, load_scenario  # noqa: E402

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
#: ``--check``: a verdict of fail, or of inconclusive, as the exit code (for pipelines).
EXIT_VERDICT_FAIL, EXIT_VERDICT_INCONCLUSIVE = 3, 4

_CHECK_HELP = "Exit 3 if a verdict is fail, 4 if inconclusive (and none fails), else 0."


def _verdict_exit(verdicts: list[str]) -> int:
    """The ``--check`` exit code for some verdicts: the worst decides, fail before inconclusive
    (a measured failure is the stronger finding: the use case is known not to be met)."""
    if "fail" in verdicts:
        return EXIT_VERDICT_FAIL
    if "inconclusive" in verdicts:
        return EXIT_VERDICT_INCONCLUSIVE
    return EXIT_OK


# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default, so ids
# and paths are never cut.
_PIPED_WIDTH = 200
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPED_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPED_WIDTH)


def _usage_error(message: str) -> NoReturn:
    err.print("[red]error:[/] ", end="", markup=True)
    _print_plain(err, message)
    sys.exit(EXIT_USAGE)


def _print_plain(console: Console, text: str) -> None:
    # User text (paths, YAML) may contain square brackets; never let rich read them as markup.
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields the ``progress(done, total)`` callback targets call."""
    if not enabled:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("msgs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def run_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags every command that runs scenarios shares (seed, where results go, brokers)."""
    flags = [
        click.option(
            "--seed", type=int, default=None, help="Random seed (default: the scenario's)."
        ),
        click.option(
            "--out", type=click.Path(path_type=Path), default=None, help="Write exactly here."
        ),
        click.option(
            "--results-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Folder for results (default $BROKERLAB_RESULTS or ./results).",
        ),
        # One per URL option of the registered real targets (--redis-url, --nats-url...).
        *(
            click.option(option.flag, option.key, default=None, envvar=option.env, help=option.help)
            for option in url_options()
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        click.option("--debug", is_flag=True, help="Show tracebacks of lab failures."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def _run_options(flags: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> Any:
    """RunOptions from the shared flags."""
    from brokerlab.app.runner import RunOptions

    results_dir = flags["results_dir"] or results.default_results_dir()
    _stage_parents.update([results_dir] + ([flags["out"].parent] if flags["out"] else []))
    return RunOptions(
        seed=flags["seed"],
        out=flags["out"],
        results_dir=results_dir,
        progress=progress,
        urls={option.key: flags.get(option.key) for option in url_options()},
        profile=flags.get("profile"),
    )


@contextmanager
def _failures(debug: bool, *user_errors: type[Exception]) -> Iterator[None]:
    """Turn what can go wrong while running into exit codes: 2 for the user's, 1 for the lab's."""
    try:
        yield
    except ScenarioError as error:
        _print_plain(err, error.render())
        sys.exit(EXIT_USAGE)
    except (results.ResultsError, BrokerUnavailable, *user_errors) as error:
        # BrokerUnavailable: no server to start and no URL given; the message names both ways
        _usage_error(str(error))
    except KeyboardInterrupt:
        err.print("interrupted: nothing was written")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        _lab_failure(error, debug)


#: Folders this command stages results in (see ``results.staged_dir``).
_stage_parents: set[Path] = set()


def _remove_own_stages() -> None:
    """Remove this process's staging folders: the last step of a Ctrl-C cut short."""
    import shutil

    for folder in _stage_parents:
        for stage in folder.glob(f".*.partial-{os.getpid()}"):
            shutil.rmtree(stage, ignore_errors=True)


class _Lab(click.Group):
    """The ``brokerlab`` group: Ctrl-C ends any command promptly with exit 130.

    The first Ctrl-C cancels the running measurement so that its teardown runs (clients stop,
    the run's stream is deleted, the lab's brokers stop); whatever still runs after
    ``embedded.INTERRUPT_DEADLINE`` seconds is killed (see ``adapters.embedded``). A Ctrl-C
    between steps (loading a scenario, writing a report) is reported the same way, not as
    click's "Aborted!" with exit 1. A command that carried on after a Ctrl-C (something on the
    way caught its ``KeyboardInterrupt``) still ends with 130, never with its own status.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from brokerlab.adapters.embedded import interrupt_handling, interrupted

        try:
            if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            with interrupt_handling(cleanup=_remove_own_stages):
                try:
                    result = super().invoke(ctx)
                except SystemExit as done:
                    if interrupted() and done.code != EXIT_INTERRUPTED:
                        raise KeyboardInterrupt from None
                    raise
            if interrupted():
                # The Ctrl-C's KeyboardInterrupt was caught on its way (by a library that
                # catches everything) and the command went on: the user still asked to stop,
                # and exit 0 would say the command ran as asked.
                raise KeyboardInterrupt
            return result
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(EXIT_INTERRUPTED)


def _targets(value: str, known: Any, option: str) -> list[str]:
    """A comma-separated list of known names, each once."""
    chosen = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in known]
    if not chosen or unknown:
        _usage_error(f"{option}: unknown {unknown or 'empty list'}; use {', '.join(known)}")
    if len(set(chosen)) != len(chosen):
        _usage_error(f"{option}: a name is given twice")
    return chosen


@click.group(cls=_Lab, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="brokerlab")
def main() -> None:
    """brokerlab: choose and size a message broker by evidence.

    Write a scenario (producers, broker, consumers, faults, requirements), simulate it, run it on
    real brokers, and compare the measurements against the use case's requirements.
    """
    from brokerlab.core.load import requested_processes

    try:
        # Read by every real run and by the simulator's twins of them: refused before anything.
        requested_processes()
    except ValueError as error:
        _usage_error(str(error))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check scenario FILES and report every problem at once (exit 2 if any)."""
    failed = False
    for path in files:
        try:
            load_scenario(path)
        except ScenarioError as error:
            failed = True
            _print_plain(err, error.render())
        else:
            _print_plain(stdout, f"{path}: ok")
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


def _load_or_exit(path: Path) -> Any:
    try:
        return load_scenario(path)
    except ScenarioError as error:
        _print_plain(err, error.render())
        sys.exit(EXIT_USAGE)


def _lab_failure(error: BaseException, debug: bool) -> NoReturn:
    """A failure of the lab or its environment: say what broke; the traceback with --debug."""
    err.print(f"[red]brokerlab failed:[/] {type(error).__name__}: ", end="", markup=True)
    _print_plain(err, str(error))
    if debug:
        traceback.print_exception(error)
    else:
        err.print("(run again with --debug for the traceback)")
    sys.exit(EXIT_FAILURE)


_PROFILE_HELP = (
    "Simulator performance profile: auto, default, none or a profile file "
    "(overrides the scenario's broker.profile)."
)


def _check_profile(spec: str | None, kind: str) -> None:
    """A --profile (or the scenario's broker.profile) that cannot be used: exit 2 before running."""
    from brokerlab.sim.profile import ProfileError, resolve_profile

    try:
        resolve_profile(spec, kind) if spec else None
    except ProfileError as error:
        _usage_error(str(error))


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    default="sim",
    show_default=True,
    help=", ".join(["sim", *target_names()]),
)
@click.option("--check", is_flag=True, help=_CHECK_HELP)
@click.option("--profile", default=None, help=_PROFILE_HELP)
@run_flags
def run(scenario: Path, target: str, check: bool, **flags: Any) -> None:
    """Run SCENARIO on one target and write results/RUN_ID/ (or exactly --out)."""
    from brokerlab.app.runner import TARGETS, TargetError, run_scenario
    from brokerlab.app.summary import print_summary

    if target not in TARGETS:
        _usage_error(f"--target: unknown target {target!r}; use one of {', '.join(TARGETS)}")
    parsed = _load_or_exit(scenario)
    if target == "sim":
        _check_profile(flags["profile"] or parsed.broker.profile, parsed.broker.kind)
    with (
        _progress(f"{parsed.name} on {target}", enabled=not flags["quiet"]) as progress,
        _failures(flags["debug"], TargetError),
    ):
        record = run_scenario(parsed, target, _run_options(flags, progress), source=str(scenario))
    warnings = list(record.result.warnings) + record.analysis.warnings
    print_summary(stdout, record.metrics, str(record.path), warnings)
    profile = record.result.info.get("profile")
    if isinstance(profile, dict):
        _print_plain(stdout, f"performance profile: {profile.get('describe')}")
    if check:
        sys.exit(_verdict_exit([record.metrics["verdict"]]))


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--targets",
    default=",".join(["sim", *target_names()]),
    show_default=True,
    help="Comma-separated targets to run side by side.",
)
@click.option("--no-report", is_flag=True, help="Do not write report.html at the end.")
@click.option("--check", is_flag=True, help=_CHECK_HELP + " A target that did not run: 1.")
@click.option("--profile", default=None, help=_PROFILE_HELP)
@run_flags
def compare(scenario: Path, targets: str, no_report: bool, check: bool, **flags: Any) -> None:
    """Run SCENARIO on several targets and write one comparison folder with a side-by-side table."""
    from brokerlab.app.compare import compare as run_compare
    from brokerlab.app.runner import TARGETS
    from brokerlab.app.summary import verdict_line

    chosen = _targets(targets, TARGETS, "--targets")
    parsed = _load_or_exit(scenario)
    if "sim" in chosen:
        _check_profile(flags["profile"] or parsed.broker.profile, parsed.broker.kind)
    with _progress(parsed.name, enabled=not flags["quiet"]) as progress, _failures(flags["debug"]):
        record = run_compare(
            parsed,
            chosen,
            _run_options(flags, progress),
            source=str(scenario),
            on_target=lambda t: err.print(f"running {parsed.name} on {t}", markup=False),
        )
    table = Table(title=f"{parsed.name}: side by side", title_justify="left")
    table.add_column("metric")
    for target in record.table.columns:
        table.add_column(target, justify="right")
    for label, row in record.table.iterrows():
        cells = [_cell(v) for v in row]
        if label == "verdict":
            cells = [_verdict_markup(v) for v in cells]
        table.add_row(str(label), *cells)
    stdout.print(table)
    for target, run_record in record.runs.items():
        if run_record.metrics["verdict"] != "pass":
            stdout.print(f"{escape(target)}: {verdict_line(run_record.metrics)}")
    _report_errors(record.errors)
    _print_plain(stdout, f"comparison: {record.path}")
    if not no_report and record.runs:
        from brokerlab.app.report import build_report

        with _failures(flags["debug"]):
            _print_plain(stdout, f"report: {build_report([record.path])}")
    if record.errors:
        sys.exit(EXIT_FAILURE)  # an incomplete comparison: its worst verdict is not known
    sys.exit(_verdict_exit([r.metrics["verdict"] for r in record.runs.values()]) if check else 0)


def _percent(value: float | None) -> str:
    """A margin as a signed percentage; '-' when there is none (None or NaN)."""
    return "-" if value is None or value != value else f"{value:+.1%}"


def _report_errors(errors: dict[str, str]) -> None:
    """Targets or candidates that failed while the others ran."""
    for name, message in errors.items():
        err.print(f"[red]{name} failed:[/] ", end="")
        _print_plain(err, message)


def _verdict_markup(verdict: str) -> str:
    """A verdict coloured as the run summary colours it (other words, e.g. "?", plain)."""
    from brokerlab.app.summary import VERDICT_COLOURS

    colour = VERDICT_COLOURS.get(verdict)
    return f"[{colour}]{verdict}[/]" if colour else escape(verdict)


def _text(value: Any) -> str:
    """Optional text from a table cell: '' for None or NaN (pandas' missing value)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--candidates",
    default="redis-streams,nats,nats-jetstream,kafka,rabbitmq,sqs",
    show_default=True,
    help="Broker kinds to rank (real runs where an adapter exists, simulator presets otherwise).",
)
@click.option(
    "--sim-only", is_flag=True, help="Simulate every candidate, even those with adapters."
)
@click.option(
    "--no-reuse", is_flag=True, help="Run every candidate again, even with a matching run."
)
@run_flags
def select(scenario: Path, candidates: str, sim_only: bool, no_reuse: bool, **flags: Any) -> None:
    """Rank candidate brokers against SCENARIO's requirements, with the evidence for each."""
    from brokerlab.app.select import select as run_select
    from brokerlab.app.summary import VERDICT_COLOURS
    from brokerlab.core.vocabulary import BROKER_KINDS

    chosen = _targets(candidates, BROKER_KINDS, "--candidates")
    parsed = _load_or_exit(scenario)
    with _progress(parsed.name, enabled=not flags["quiet"]) as progress, _failures(flags["debug"]):
        selection = run_select(
            parsed,
            chosen,
            _run_options(flags, progress),
            real=not sim_only,
            reuse=not no_reuse,
            source=str(scenario),
            on_candidate=lambda c, how: err.print(f"{c}: {how}", markup=False),
        )
    table = Table(title=f"{parsed.name}: ranking", title_justify="left")
    for name in (
        "rank",
        "candidate",
        "target",
        "verdict",
        "failed requirements",
        "unknown",
        "not modelled",
        "worst margin",
        "mean margin",
    ):
        table.add_column(name)
    for row in selection.ranking.itertuples():
        colour = VERDICT_COLOURS.get(row.verdict, "red")
        table.add_row(
            f"{row.rank}=" if row.tie else str(row.rank),
            row.candidate,
            escape(
                row.target
                + (f" ({row.profile})" if isinstance(row.profile, str) else "")
                + (" (reused)" if row.reused else "")
            ),
            f"[{colour}]{row.verdict}[/]",
            escape(row.failed_requirements) or "-",
            escape(row.unknown_requirements) or "-",
            escape(row.not_modelled) or "-",
            _percent(row.worst_margin),
            _percent(row.mean_margin),
        )
    stdout.print(table)
    if len(selection.ranking) and selection.ranking["tie"].any():
        _print_plain(
            stdout,
            "'=' marks a tie: same failures, same judgement and the same margins (at 0.1%); "
            "tied candidates are listed by name, not by preference",
        )
    evidence = Table(title="evidence", title_justify="left")
    for name in ("candidate", "requirement", "bound", "measured", "judged", "from", "note"):
        evidence.add_column(name, overflow="fold")
    status_colours = {"ok": "green", "fail": "red", "unknown": "yellow", "not modelled": "dim"}
    for row in selection.evidence.itertuples():
        capability, source = _text(row.capability), _text(row.source)
        measured = "; ".join(t for t in (_cell(row.measured), capability) if t not in ("", "-"))
        sources = row.evidence + (f" ; {source}" if source not in ("", row.evidence) else "")
        evidence.add_row(
            row.candidate,
            row.requirement,
            _cell(row.bound),
            escape(measured or "-"),
            f"[{status_colours.get(row.status, 'red')}]{row.status.replace('fail', 'FAIL')}[/]",
            escape(f"{row.kind}: {sources}"),
            escape(_text(row.note)),
        )
    stdout.print(evidence)
    _report_errors(selection.errors)
    for note in selection.notes:
        _print_plain(stdout, f"note: {note}")
    _print_plain(stdout, f"selection: {selection.path}")
    sys.exit(EXIT_FAILURE if selection.errors else EXIT_OK)


@main.command()
@click.option(
    "--cells",
    "cells_dir",
    type=click.Path(path_type=Path),
    default=Path("scenarios/faults"),
    show_default=True,
    help="Folder of CONFIG--FAULT.yaml cell scenarios.",
)
@click.option("--targets", default="sim,real", show_default=True, help="sim, real, or both.")
@run_flags
def matrix(cells_dir: Path, targets: str, **flags: Any) -> None:
    """Run the guarantee matrix (broker configs x faults) against the expectation table."""
    from brokerlab.app.matrix import MATRIX_TARGETS, MatrixError, disagreements, run_matrix

    chosen = _targets(targets, MATRIX_TARGETS, "--targets")
    with _failures(flags["debug"], MatrixError):
        result = run_matrix(
            cells_dir,
            chosen,
            _run_options(flags),
            on_cell=lambda cell, target: err.print(
                f"{cell.config} x {cell.fault} on {target}", markup=False
            ),
        )
    grid = result.grid()
    table = Table(
        title="guarantee matrix: status, lost and duplicates with the fault / in the fault-free "
        "control (as the expectation table says: match)"
    )
    table.add_column("config")
    for fault in grid.columns:
        table.add_column(str(fault), overflow="fold")
    for config, row in grid.iterrows():
        table.add_row(str(config), *(str(v) for v in row))
    stdout.print(table)
    records = result.records
    tally = result.tally()
    _print_plain(
        stdout,
        f"{tally['match']} of {len(records)} runs match the expectation table, "
        f"{tally['mismatch']} mismatch, {tally['inconclusive']} inconclusive",
    )
    for status in ("mismatch", "inconclusive"):
        for row in records[records["status"] == status].itertuples():
            _print_plain(
                stdout, f"{status}: {row.config} x {row.fault} on {row.target}: {row.reason}"
            )
    differ = disagreements(records)
    if len(differ):
        _print_plain(stdout, "simulation and reality disagree on loss or duplicates in:")
        for row in differ.itertuples():
            _print_plain(
                stdout,
                f"  {row.config} x {row.fault}: sim lost {row.lost_sim} dup {row.duplicates_sim}, "
                f"real lost {row.lost_real} dup {row.duplicates_real}"
                + (f" ({row.note_sim})" if row.note_sim else ""),
            )
    for row in records[records["note"] != ""].itertuples():
        _print_plain(stdout, f"note: {row.config} x {row.fault} on {row.target}: {row.note}")
    _print_plain(stdout, f"matrix: {result.path}")


def _url_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per URL option of the registered real targets (--redis-url, --nats-url...)."""
    for option in reversed(url_options()):
        command = click.option(
            option.flag, option.key, default=None, envvar=option.env, help=option.help
        )(command)
    return command


@contextmanager
def _point_progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over a sweep's points (not messages)."""
    if not enabled:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _note(text: str) -> None:
    _print_plain(err, text)


def _mean_ci(row: Any, metric: str, digits: int = 2) -> str:
    mean, half = row.get(metric), row.get(f"{metric} ±95%")
    if mean is None or mean != mean:
        return "-"
    if half is None or half != half:
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {half:,.{digits}f}"


def _print_sweep_summary(summary: Any, paths: list[str], title: str) -> None:
    """One row per point and target: means across seeds with 95% confidence intervals."""
    table = Table(title=title, title_justify="left")
    for name in (*paths, "target", "seeds", "pass"):
        table.add_column(name, justify="right")
    metrics = (
        ("e2e p50 ms", "latency_ms.end_to_end.p50", 3),
        ("e2e p99 ms", "latency_ms.end_to_end.p99", 3),
        ("completion p99 ms", "latency_ms.completion.p99", 3),
        ("delivered/s", "throughput_per_s.delivered", 1),
        ("lost", "counts.lost", 1),
    )
    for label, _, _ in metrics:
        table.add_column(label, justify="right")
    for row in summary.to_dict("records"):
        table.add_row(
            *(_cell(row[p]) for p in paths),
            str(row["target"]),
            str(row["seeds"]),
            f"{row['passed']}/{row['seeds']}",
            *(_mean_ci(row, metric, digits) for _, metric, digits in metrics),
        )
    stdout.print(table)


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--vary",
    multiple=True,
    metavar="PATH=V1,V2,...|PATH=START..STOP:N",
    help="A scenario field and its values, in the scenario's units; several make a grid.",
)
@click.option("--seeds", type=int, default=None, help="Seeds per point (default 1).")
@click.option("--targets", default=None, help="Comma-separated targets (default: sim).")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Local Dask worker processes (default: one per core; 1 = in this process).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Run simulator points on this Dask cluster (default $DASK_SCHEDULER_ADDRESS).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="The sweep folder (reused)."
)
@click.option("--results-dir", type=click.Path(path_type=Path), default=None)
@_url_flags
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks of lab failures.")
def sweep(
    scenario: Path,
    vary: tuple[str, ...],
    seeds: int | None,
    targets: str | None,
    workers: int | None,
    scheduler: str | None,
    out: Path | None,
    quiet: bool,
    debug: bool,
    **flags: Any,
) -> None:
    """Play SCENARIO at every combination of --vary values × seeds × targets.

    SCENARIO is a scenario file, or a sweep file (YAML with scenario, vary, seeds, targets).
    Writes one run folder per point under DIR/runs/ (reused when the same scenario, target and
    seed already ran there) and DIR/sweep.csv + DIR/sweep.parquet, one row per run.
    """
    from brokerlab.app.sweep import SweepError, default_out, load_sweep_inputs, run_sweep

    try:
        parsed, axes, seed_count, chosen, out, source = load_sweep_inputs(
            scenario, vary, seeds, targets, out
        )
    except SweepError as error:
        _usage_error(str(error))
    except ScenarioError as error:
        _print_plain(err, error.render())
        sys.exit(EXIT_USAGE)
    options = _run_options({**flags, "seed": None, "out": None})
    out = out or default_out(parsed, options.results_dir, axes, seed_count, chosen)
    with (
        _point_progress(f"{parsed.name} sweep", enabled=not quiet) as progress,
        _failures(debug, SweepError),
    ):
        try:
            result = run_sweep(
                parsed,
                axes,
                seeds=seed_count,
                targets=chosen,
                out=out,
                workers=workers,
                scheduler=scheduler,
                options=options,
                source=source,
                on_progress=progress,
                on_note=_note,
            )
        except KeyboardInterrupt:
            _print_plain(
                err,
                f"interrupted: finished runs are kept in {out / 'runs'}; "
                "the same command resumes the sweep",
            )
            sys.exit(130)
    _print_sweep_summary(
        result.summary,
        result.paths,
        f"{parsed.name}: mean ± 95% confidence interval across seeds",
    )
    errors = result.table[result.table["error"].notna()]
    for row in errors.itertuples():
        _print_plain(err, f"run failed: {row.target} seed {row.seed}: {row.error}")
    _print_plain(
        stdout,
        f"{len(result.table)} runs ({result.reused} reused, {result.failed} failed) in "
        f"{result.wall_time_s:.1f} s; simulator runs {result.placement.describe()}",
    )
    _print_plain(stdout, f"sweep: {result.path}")


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--find",
    "find",
    required=True,
    type=click.Choice(["rate", "consumers", "partitions", "catch-up"]),
    help="rate: highest rate meeting every requirement; consumers/partitions: fewest that do; "
    "catch-up: time to recover from a consumer outage.",
)
@click.option("--target", "-t", default="sim", show_default=True, help="Where to play it.")
@click.option("--outage", default=None, help="catch-up: how long every consumer is down (30s).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds near the edge.")
@click.option(
    "--keep-up",
    type=float,
    default=0.95,
    show_default=True,
    help="Also require delivered >= this x offered (0: requirements only).",
)
@click.option(
    "--tolerance", type=float, default=0.02, show_default=True, help="rate: bisection resolution."
)
@click.option("--workers", type=int, default=None, help="Local Dask workers (1 = in process).")
@click.option("--scheduler", default=None, help="Dask scheduler address (tcp://HOST:PORT).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The capacity folder.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None)
@_url_flags
@click.option("--quiet", "-q", is_flag=True, help="Do not print each step.")
@click.option("--debug", is_flag=True, help="Show tracebacks of lab failures.")
def capacity(
    scenario: Path,
    find: str,
    target: str,
    outage: str | None,
    seeds: int,
    keep_up: float,
    tolerance: float,
    workers: int | None,
    scheduler: str | None,
    out: Path | None,
    quiet: bool,
    debug: bool,
    **flags: Any,
) -> None:
    """Answer a capacity question about SCENARIO and write DIR/capacity.json.

    Every evaluated point is a run folder under DIR/runs/; the answer is printed in one line.
    """
    from brokerlab.app.capacity import CapacityError, check_question, find_capacity
    from brokerlab.app.sweep import SweepError
    from brokerlab.core.units import parse_duration

    parsed = _load_or_exit(scenario)
    outage_s = None
    if outage is not None:
        try:
            outage_s = parse_duration(outage)
        except ValueError as error:
            _usage_error(f"--outage: {error}")
        if not outage_s > 0:
            _usage_error("--outage: must be longer than zero")
    try:
        check_question(parsed, find, target, outage_s)
    except CapacityError as error:
        _usage_error(str(error))
    options = _run_options({**flags, "seed": None, "out": None})
    with _failures(debug, SweepError):
        result = find_capacity(
            parsed,
            find,
            target=target,
            out=out,
            seeds=seeds,
            outage=outage_s,
            keep_up=keep_up,
            tolerance=tolerance,
            workers=workers,
            scheduler=scheduler,
            options=options,
            source=str(scenario),
            on_step=None if quiet else _note,
        )
    _print_plain(stdout, result.answer)
    _print_plain(stdout, f"capacity: {result.path / 'capacity.json'}")


def _state_dir() -> Path:
    from brokerlab.app.runner import session_state_dir

    return session_state_dir()


@main.command()
@click.option(
    "--targets",
    default="redis-streams,nats,nats-jetstream",
    show_default=True,
    help="Local targets to calibrate.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the profile here instead of this machine's store (one target: exactly this "
    "file; several: FILE-<target>.yaml).",
)
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the ladder's runs (default $BROKERLAB_RESULTS/calibration).",
)
@click.option("--redis-url", default=None, envvar="BROKERLAB_REDIS_URL", help="Use this Redis.")
@click.option("--nats-url", default=None, envvar="BROKERLAB_NATS_URL", help="Use this NATS.")
@click.option(
    "--quick",
    is_flag=True,
    help="Shorter runs and one bisection of each ceiling (a rougher fit, for smoke tests).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=None,
    help="Runs of each rung; the fit takes their medians (default 3, 1 with --quick).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of lab failures.")
def calibrate(
    targets: str,
    out: Path | None,
    results_dir: Path | None,
    redis_url: str | None,
    nats_url: str | None,
    quick: bool,
    repeats: int | None,
    debug: bool,
) -> None:
    """Measure local brokers with a short ladder of real runs and fit their performance profiles.

    The profiles land in $BROKERLAB_PROFILES (default ~/.local/share/brokerlab/profiles/), where
    every simulator run with broker.profile auto finds them.
    """
    from brokerlab.app.calibrate import LOCAL_TARGETS, relative
    from brokerlab.app.calibrate import calibrate as run_calibrate
    from brokerlab.app.runner import RunOptions, TargetError

    chosen = _targets(targets, LOCAL_TARGETS, "--targets")
    if out is not None and out.is_dir():
        _usage_error(f"--out: {out} is a folder; give a file name")
    options = RunOptions(
        results_dir=results_dir or results.default_results_dir() / "calibration",
        redis_url=redis_url,
        nats_url=nats_url,
    )
    with _failures(debug, TargetError):
        done = run_calibrate(
            chosen,
            options,
            say=lambda text: _print_plain(err, text),
            out=out,
            quick=quick,
            repeats=repeats,
        )
    for calibration in done:
        profile = calibration.profile
        fitted = Table(title=f"{calibration.target}: fitted profile", title_justify="left")
        fitted.add_column("cost")
        fitted.add_column("median", justify="right")
        fitted.add_column("p99", justify="right")
        for name, dist in (
            ("round trip", profile.round_trip),
            ("publish (persistence none)", profile.publish.none),
            ("publish (persistence always)", profile.publish.always),
            ("delivery", profile.deliver),
            ("ack", profile.ack),
            ("consumer client, per message", profile.client.consume),
            ("consumer lateness after a wait", profile.client.timer),
            (f"fetch work ({profile.consume.mode})", profile.consume.fetch),
            ("end of a short fetch (its closing status)", profile.consume.status),
            ("wake-up of a blocked fetch", profile.consume.wake),
        ):
            median = getattr(dist, "median", getattr(dist, "value", dist.mean))
            p99 = getattr(dist, "p99", median)
            fitted.add_row(name, f"{median * 1e3:.3f} ms", f"{p99 * 1e3:.3f} ms")
        bandwidth = f"{profile.bandwidth / 1e6:.1f} MB/s" if profile.bandwidth else "-"
        fitted.add_row("bandwidth", bandwidth, "")
        if profile.idle is not None:
            cost = profile.idle.cost
            median = getattr(cost, "median", getattr(cost, "value", cost.mean))
            fitted.add_row(
                f"wake-up after idling (tau {profile.idle.tau * 1e3:.1f} ms)",
                f"{median * 1e3:.3f} ms",
                f"{getattr(cost, 'p99', median) * 1e3:.3f} ms",
            )
        capacity = profile.capacity
        if capacity is not None:
            one = " (one client process)" if capacity.clients is not None else ""
            fitted.add_row(
                f"sustained capacity, messages{one}",
                f"{capacity.messages:,.0f}/s" if capacity.messages else "-",
                "",
            )
            fitted.add_row(
                f"sustained capacity, bytes{one}",
                f"{capacity.bytes / 1e6:.1f} MB/s" if capacity.bytes else "-",
                "",
            )
            if capacity.fetches:
                fitted.add_row(
                    f"sustained capacity, fetches{one}",
                    f"{capacity.fetches:,.0f}/s",
                    "",
                )
            if capacity.clients is not None:
                clients = capacity.clients
                more = 1 / clients.scale(clients.cores)
                fitted.add_row(
                    f"clients' share of a message's CPU (capacity x{more:.2f} with "
                    f"{clients.cores} client processes)",
                    f"{clients.share:.0%}",
                    "",
                )
            fitted.add_row(
                "publishes' share of the capacity (a backlog drains "
                f"x{1 / (1 - capacity.publish_share):.2f} faster once the producers stop)",
                f"{capacity.publish_share:.0%}" if capacity.publish_share else "- (no backlog)",
                "",
            )
            if capacity.publish_batched is not None:
                fitted.add_row(
                    "... for a producer behind schedule (what is due in one call)",
                    f"{capacity.publish_batched:.0%}",
                    "",
                )
        fitted.add_row("parallelism (broker servers)", str(profile.parallelism), "")
        stdout.print(fitted)
        errors = Table(title=f"{calibration.target}: replay of each run", title_justify="left")
        errors.add_column("run")
        first = calibration.errors[0] if calibration.errors else {}
        labels = [k for k in first if k not in ("run", "spread")]
        for label in labels:
            errors.add_column(f"{label} sim / real (error)", justify="right")
        # The repeats' own disagreement: an error within it is noise, not the model.
        errors.add_column("repeats' spread delivered / e2e p50", justify="right")
        for row in calibration.errors:
            cells = []
            for label in labels:
                sim, real = row[label]
                error = relative(sim, real)
                cells.append(
                    "-"
                    if sim is None or real is None
                    else f"{sim:,.3f} / {real:,.3f} ({'-' if error is None else f'{error:+.0%}'})"
                )
            spreads = row.get("spread") or {}
            cells.append(
                " / ".join("-" if v is None else f"{v:.0%}" for v in spreads.values()) or "-"
            )
            errors.add_row(row["run"], *cells)
        stdout.print(errors)
        if calibration.path:
            _print_plain(stdout, f"profile: {calibration.path}")


@main.group()
def brokers() -> None:
    """Brokers the lab starts for a notebook session, reused by runs until `down`."""


@brokers.command("up")
@click.option(
    "--targets",
    default="redis-streams,nats-jetstream",
    show_default=True,
    help="Which brokers to start (nats and nats-jetstream share one server).",
)
@click.option(
    "--persistence",
    type=click.Choice(["none", "periodic", "always"]),
    default="none",
    show_default=True,
    help="Redis AOF policy / JetStream sync interval of the servers.",
)
def brokers_up(targets: str, persistence: str) -> None:
    """Start the lab's own brokers on free loopback ports and keep them running."""
    from brokerlab.adapters.embedded import BrokerError
    from brokerlab.adapters.embedded import brokers_up as up
    from brokerlab.core.scenario import Broker

    chosen = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        entries = up(_state_dir(), chosen, Broker(kind="redis-streams", persistence=persistence))
    except ValueError as error:
        _usage_error(f"--targets: {error}")
    except BrokerError as error:
        _print_plain(err, f"could not start a broker: {error}")
        sys.exit(EXIT_FAILURE)
    _brokers_table(entries, "status")


@brokers.command("status")
def brokers_status() -> None:
    """Show the session's brokers and whether each is alive."""
    from brokerlab.adapters.embedded import brokers_status as status

    entries = status(_state_dir())
    if not entries:
        stdout.print("no session brokers (start them with `brokerlab brokers up`)")
        return
    for entry in entries:
        entry["status"] = "alive" if entry["alive"] else f"gone ({entry['state']})"
    _brokers_table(entries, "status")


@brokers.command("down")
def brokers_down() -> None:
    """Stop the session's brokers and forget them."""
    from brokerlab.adapters.embedded import brokers_down as down

    entries = down(_state_dir())
    if not entries:
        stdout.print("no session brokers were up")
        return
    _brokers_table(entries, "state")


def _brokers_table(entries: list[dict[str, Any]], status_key: str) -> None:
    table = Table(title=f"session brokers ({_state_dir()})", title_justify="left")
    for name in ("kind", "targets", "url", "pid", "version", "persistence", status_key):
        table.add_column(name, overflow="fold")
    for entry in entries:
        persistence = entry.get("persistence") or {}
        table.add_row(
            str(entry.get("kind")),
            ",".join(entry.get("targets", [])),
            str(entry.get("url")),
            str(entry.get("pid")),
            str(entry.get("version", "")),
            str(persistence.get("mode", "")),
            str(entry.get(status_key, "")),
        )
    stdout.print(table)


@main.command("list")
@click.option(
    "--scenarios-dir", type=click.Path(path_type=Path), default=Path("scenarios"), show_default=True
)
@click.option("--results-dir", type=click.Path(path_type=Path), default=None)
def list_(scenarios_dir: Path, results_dir: Path | None) -> None:
    """List scenarios and runs (scenario, target, date, verdict)."""
    table = Table(title=f"scenarios in {scenarios_dir}", title_justify="left")
    for name in ("file", "name", "broker", "description"):
        table.add_column(name)
    for path in sorted(scenarios_dir.rglob("*.yaml")) if scenarios_dir.is_dir() else []:
        try:
            scenario = load_scenario(path)
        except ScenarioError as error:
            table.add_row(str(path), "-", "-", f"invalid: {error.problems[0][1]}")
            continue
        table.add_row(str(path), scenario.name, scenario.broker.kind, scenario.description)
    stdout.print(table)
    folder = results_dir or results.default_results_dir()
    runs = results.list_runs(folder)
    table = Table(title=f"runs in {folder}", title_justify="left")
    for name in ("run", "kind", "scenario", "target", "started", "verdict"):
        table.add_column(name)
    for item in runs:
        table.add_row(
            *(escape(v) for v in (item.run_id, item.kind, item.scenario, item.target)),
            escape(item.started_at),
            _verdict_markup(item.verdict),
        )
    stdout.print(table)
    if not runs:
        stdout.print(f"no runs yet in {folder}")


@main.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the report here (default: FIRST_FOLDER/report.html).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of lab failures.")
def report(folders: tuple[Path, ...], output: Path | None, debug: bool) -> None:
    """Write one self-contained HTML report of run and/or comparison FOLDERS.

    Figures are also saved as PNG and SVG in a figures/ folder beside the report.
    """
    from brokerlab.app.report import ReportError, build_report
    from brokerlab.app.sweep_report import SweepReportError, build_sweep_report, is_sweep_folder

    if len(folders) == 1 and is_sweep_folder(folders[0]):
        try:
            path = build_sweep_report(folders[0], output)
        except SweepReportError as error:
            _usage_error(str(error))
        except Exception as error:
            _lab_failure(error, debug)
        _print_plain(stdout, f"report: {path}")
        return
    try:
        path = build_report(list(folders), output)
    except ReportError as error:
        err.print("[red]error:[/] ", end="", markup=True)
        _print_plain(err, str(error))  # paths may hold brackets: never read them as markup
        sys.exit(EXIT_USAGE)
    except Exception as error:
        _lab_failure(error, debug)
    _print_plain(stdout, f"report: {path}")


@main.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve on this port (default: a free one).",
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser; open the printed URL.")
def lab(port: int | None, no_browser: bool) -> None:
    """Start JupyterLab on notebooks/, the .py notebooks opening as notebooks on double-click.

    Serves the repository (notebooks/, scenarios/, results/) on 127.0.0.1 with jupytext's
    notebook view as the default viewer of Python files, for this server only: your own
    JupyterLab settings and other servers are not changed. Ctrl-C stops it and its kernels.
    """
    import signal
    import socket
    import subprocess
    import tempfile

    from brokerlab.app.notebook import NOTEBOOKS_DIR, LabError, find_lab_root, free_port, lab_launch

    try:
        root = find_lab_root()
    except LabError as error:
        _usage_error(str(error))
    if port is not None:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                _usage_error(f"--port {port}: the port is in use; choose another or leave it out")
    with tempfile.TemporaryDirectory(prefix="brokerlab-lab-") as config:
        launch = lab_launch(root, Path(config), port or free_port(), open_browser=not no_browser)
        _print_plain(stdout, f"JupyterLab on {root / NOTEBOOKS_DIR}: {launch.url}")
        sys.stdout.flush()
        server = subprocess.Popen(launch.command, env=launch.env, cwd=root)
        # SIGTERM (a service manager, a test) stops the server the way Ctrl-C does: JupyterLab
        # shuts its kernels down on SIGTERM, so nothing is left running.
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            code = server.wait()
        except KeyboardInterrupt:
            server.terminate()
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
    sys.exit(0 if code in (0, -signal.SIGTERM) else code)


if __name__ == "__main__":  # pragma: no cover
    main()
