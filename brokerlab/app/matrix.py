"""The guarantee matrix: broker configurations × faults, simulated and real, against expectations.

Each cell is one scenario file ``scenarios/faults/CONFIG--FAULT.yaml``. ``run_matrix`` plays every
cell on the simulator and/or on the real broker the cell names, and beside it a fault-free
control: the same scenario and seed without its faults (cells of one config share it, since
their scenarios differ only in the fault). Each cell is then judged against the expectation table
(``brokerlab/data/fault_expectations.yaml``, the expected guarantees, machine-checkable):

- ``inconclusive`` when the run cannot show anything: the fault never fired (no window recorded,
  or a warning that it failed to start or was not played), nothing was acknowledged or
  delivered, the drain was cut off while messages were still arriving (so "lost" may be
  "late"), a consumer crash caught the consumer holding nothing, the run or its control failed;
- ``mismatch`` when a count the table says is ``none`` is not 0, a count it says is ``some`` is
  0 with the fault or also above 0 in the control (then the fault did not cause it), or the
  control is not clean;
- ``match`` otherwise.

A matrix that cannot fail proves nothing: with the control and the fired/acknowledged checks, a
cell whose fault is removed, or a run in which nothing was acknowledged, no longer matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from brokerlab.app.runner import RunOptions, RunRecord, run_scenario
from brokerlab.core import results
from brokerlab.core.scenario import Scenario, load_scenario, scenario_to_yaml
from brokerlab.core.trace import Trace

MATRIX_CSV = "matrix.csv"
MATRIX_JSON = "matrix.json"
MATRIX_TARGETS = ("sim", "real")

#: The counts of metrics.json a cell can hold a rule for, in the order the table shows them.
RULE_COUNTS = ("lost", "duplicates", "redelivered", "out_of_order", "unknown")
#: What a rule may say: 0 with the fault; more than 0 with the fault and 0 in the control; either.
RULES = ("none", "some", "any")
#: Counts a fault-free control must show as 0 (``unprocessed`` only where the analysis has it).
CLEAN_COUNTS = (*RULE_COUNTS, "failed", "unprocessed")

Status = Literal["match", "mismatch", "inconclusive"]
STATUSES: tuple[Status, ...] = ("match", "mismatch", "inconclusive")

#: Warning fragments that say a timeline entry was not (fully) played: the adapters' fault player
#: and the simulator's timeline resolution write these.
NOT_PLAYED = (
    "failed to start",
    "never started",
    "did not end cleanly",
    "was not played",
    "entry ignored",
    "names no simulated client",
)

COLUMNS = (
    "config",
    "fault",
    "target",
    "lost",
    "duplicates",
    "out_of_order",
    "unknown",
    "redelivered",
    "expected",
    "matches",
    "broker",
    "note",
    "run",
    # added with the controls (existing columns above keep their names and order)
    "status",
    "reason",
    "acked",
    "delivered",
    "unprocessed",
    "fault_window",
    "control_lost",
    "control_duplicates",
    "control_out_of_order",
    "control_unknown",
    "control_redelivered",
    "control_unprocessed",
    "control_run",
)


class MatrixError(Exception):
    """A user's mistake: a cell file that does not fit the matrix, an unknown target."""


def load_expectations() -> dict[str, Any]:
    """The expectation table: config and fault names, and per cell the rules for each count."""
    text = resources.files("brokerlab").joinpath("data/fault_expectations.yaml").read_text("utf-8")
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Cell:
    """One scenario of the matrix and what the expectation table says of it (a rule per count)."""

    config: str
    fault: str
    path: Path
    expected: str
    lost: str = "any"
    duplicates: str = "any"
    redelivered: str = "any"
    out_of_order: str = "any"
    unknown: str = "any"

    def rules(self) -> dict[str, str]:
        """Count -> rule, for the counts this cell checks (``any`` left out)."""
        return {key: getattr(self, key) for key in RULE_COUNTS if getattr(self, key) != "any"}


def find_cells(folder: Path) -> list[Cell]:
    """Every ``CONFIG--FAULT.yaml`` in ``folder``, in table order; unknown names are errors."""
    table = load_expectations()
    cells = []
    for path in sorted(folder.glob("*.yaml")):
        config, sep, fault = path.stem.partition("--")
        expectation = table["cells"].get(config, {}).get(fault) if sep else None
        if expectation is None:
            raise MatrixError(
                f"{path}: not a matrix cell: name it CONFIG--FAULT.yaml with a known pair"
            )
        cell = Cell(config, fault, path, **expectation)
        bad = {k: v for k, v in cell.rules().items() if v not in RULES}
        if bad:
            raise MatrixError(f"{config} x {fault}: rules must be one of {RULES}, got {bad}")
        cells.append(cell)
    if not cells:
        raise MatrixError(f"{folder}: no matrix cells (CONFIG--FAULT.yaml files)")
    order = {name: i for i, name in enumerate(table["configs"])}
    faults = {name: i for i, name in enumerate(table["faults"])}
    return sorted(cells, key=lambda c: (order.get(c.config, 99), faults.get(c.fault, 99)))


@dataclass(frozen=True)
class Observation:
    """What the matrix reads from one run: counts, fault windows, warnings, or why it failed.

    Built from a finished run (:meth:`from_run`) or by hand in tests; ``windows`` are run.json's
    ``faults`` entries (``action``, ``t_start``, ``t_end``).
    """

    counts: Mapping[str, int] | None
    windows: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    error: str = ""
    path: str = ""
    #: Set when the final drain ran out while messages were still arriving (see :func:`drain_cut`).
    drain_cut: str = ""
    #: Deliveries never processed to the end (their consumer died with them); None if unknown.
    cut_short: int | None = None

    @classmethod
    def from_run(cls, run: RunRecord, drain_timeout: float) -> Observation:
        trace = run.result.trace
        return cls(
            counts=dict(run.metrics.get("counts") or {}),
            windows=tuple(vars(w) for w in run.result.faults),
            warnings=tuple(run.result.warnings) + tuple(run.analysis.warnings),
            path=str(run.path),
            drain_cut=drain_cut(trace.sends, trace.deliveries, drain_timeout)
            or still_at_broker(run.result.info),
            cut_short=int(trace.deliveries["t_done"].isna().sum()),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> Observation:
        """A stored run folder (metrics.json, run.json, the trace), e.g. to judge runs again."""
        folder = Path(folder)
        metrics = json.loads((folder / results.METRICS_FILE).read_text(encoding="utf-8"))
        run = json.loads((folder / results.RUN_FILE).read_text(encoding="utf-8"))
        played = yaml.safe_load((folder / results.SCENARIO_FILE).read_text(encoding="utf-8"))
        trace = Trace.read(folder)
        return cls(
            counts=dict(metrics.get("counts") or {}),
            windows=tuple(run.get("faults") or ()),
            warnings=tuple(run.get("warnings") or ()),
            path=str(folder),
            drain_cut=drain_cut(trace.sends, trace.deliveries, float(played["drain_timeout"]))
            or still_at_broker(run.get("target_info") or {}),
            cut_short=int(trace.deliveries["t_done"].isna().sum()),
        )

    @classmethod
    def failed(cls, error: BaseException, path: str = "") -> Observation:
        return cls(counts=None, error=f"{type(error).__name__}: {error}", path=path)

    def count(self, key: str) -> int | None:
        """A count, or None when the run has none (failed run, or a key this analysis lacks)."""
        if self.counts is None:
            return None
        value = self.counts.get(key)
        return None if value is None else int(value)

    def rule_value(self, key: str) -> int | None:
        """The figure a rule judges: a count, except that ``lost`` is the business loss, lost
        plus ``unprocessed`` (taken by a consumer that died with it, never redelivered)."""
        value = self.count(key)
        if key == "lost" and value is not None:
            value += self.count("unprocessed") or 0
        return value

    def show(self, key: str) -> str:
        """``key value`` as a reason says it, e.g. ``lost 300 (+126 unprocessed)``."""
        value = self.count(key)
        unprocessed = self.count("unprocessed") or 0
        if key == "lost" and value is not None and unprocessed:
            return f"lost {value} (+{unprocessed} unprocessed)"
        return f"{key} {value}"


#: How close to the drain's deadline (``drain_timeout`` after the last publish settled) the last
#: delivery must come to say the drain was cut off; a broker that lost messages goes quiet long
#: before it.
DRAIN_MARGIN_S = 1.0


def drain_cut(sends: pd.DataFrame, deliveries: pd.DataFrame, drain_timeout: float) -> str:
    """Why a run's ``lost`` may only be late: the drain ended while deliveries still arrived.

    The final drain lasts until every acknowledged message is delivered or ``drain_timeout``
    after the last publish settled. A broker that lost messages delivers nothing more long
    before that deadline; a consumer that is merely slow (a loaded machine) is still
    delivering when the deadline cuts it off. Then "lost" cannot be told from "not yet
    delivered". Returns the reason, or "" when the drain finished or went quiet first.
    """
    if not len(sends) or not len(deliveries):
        return ""
    settled = pd.concat([sends["t_sent"], sends["t_acked"]]).max(skipna=True)
    last = deliveries["t_delivered"].max(skipna=True)
    if pd.isna(settled) or pd.isna(last):
        return ""
    deadline = float(settled) + drain_timeout
    if float(last) < deadline - min(DRAIN_MARGIN_S, drain_timeout / 10):
        return ""
    return (
        f"the drain was cut off at about {deadline:.1f} s while messages were still being "
        f"delivered (last at {float(last):.2f} s): undelivered messages may only be late"
    )


def still_at_broker(info: Mapping[str, Any]) -> str:
    """Why a run's ``lost`` may only be late, from the target's own drain record (run.json
    ``target_info.drain``): the drain timed out while the broker still held entries for the
    consumers (undelivered or unacknowledged). A broker that lost them holds none. Returns the
    reason, or "" when the drain completed, the broker held nothing, or could not say.
    """
    drain = info.get("drain") or {}
    at_broker = drain.get("at_broker") or {}
    held = max(0, int(at_broker.get("undelivered", 0))) + int(at_broker.get("unacked", 0))
    if drain.get("reason") != "timeout" or not held:
        return ""
    return (
        f"the drain timed out after {float(drain.get('seconds', 0)):.1f} s with "
        f"{drain.get('pending')} acknowledged messages pending and {held} entries still at the "
        "broker: undelivered messages may only be late"
    )


@dataclass(frozen=True)
class Judgement:
    """A cell's status and the one-line reason a reader needs to trust or doubt it."""

    status: Status
    reason: str

    @property
    def matches(self) -> bool:
        return self.status == "match"


def _window_text(windows: Iterable[Mapping[str, Any]], fault: str) -> str:
    return ", ".join(
        f"{float(w['t_start']):.2f}-{float(w['t_end']):.2f} s"
        for w in windows
        if w.get("action") == fault
    )


def _not_measurable(run: Observation, what: str) -> list[str]:
    """Why a run cannot serve as evidence at all (failed, nothing acknowledged or delivered)."""
    if run.counts is None:
        return [f"{what} failed: {run.error or 'no metrics'}"]
    reasons = []
    if not run.count("acked"):
        reasons.append(f"{what}: nothing was acknowledged")
    if not run.count("unique") and not run.count("delivered"):
        reasons.append(f"{what}: nothing was delivered")
    undelivered = (run.count("lost") or 0) + (run.count("unprocessed") or 0)
    if run.drain_cut and undelivered:
        reasons.append(f"{what}: {undelivered} lost or unprocessed, but {run.drain_cut}")
    return reasons


def fault_fired(fault: str, run: Observation) -> list[str]:
    """Why the cell's fault cannot be said to have happened in ``run`` (empty: it fired).

    A window must be recorded for the fault's action, and no warning may say that a timeline
    entry failed to start, never started, did not end cleanly or was ignored.
    """
    reasons = []
    if not any(w.get("action") == fault for w in run.windows):
        reasons.append(f"the {fault} never fired (no fault window recorded)")
    for warning in run.warnings:
        if any(fragment in warning for fragment in NOT_PLAYED):
            reasons.append(f"fault not played: {warning}")
    return reasons


def _took_nothing(cell: Cell, run: Observation) -> bool:
    """Whether a consumer crash hit between messages: nothing was in the consumer's hands.

    Then a broker that redelivers has nothing to redeliver, and the run cannot show it does. A
    broker that fails to redeliver still shows: the message the consumer died with is
    unprocessed (or lost, if the crash came before its delivery was recorded).
    """
    return (
        cell.fault == "consumer-crash"
        and run.cut_short == 0
        and not run.rule_value("lost")
        and not run.count("redelivered")
    )


def _control_doubts(control: Observation | None) -> list[str]:
    if control is None:
        return ["no control run"]
    doubts = _not_measurable(control, "the control")
    if control.windows:
        doubts.append("the control ran faults")
    return doubts


def judge_cell(cell: Cell, run: Observation, control: Observation | None) -> Judgement:
    """Judge one cell from its run with the fault and its fault-free control.

    ``inconclusive`` when either run cannot be evidence or the fault did not fire (a ``none``
    rule broken with the fault is still a mismatch when only the control is unusable);
    ``mismatch`` when a rule is broken or the control is not clean; else ``match``.
    """
    doubts = _not_measurable(run, "the run") or fault_fired(cell.fault, run)
    if doubts:
        return Judgement("inconclusive", "; ".join(doubts))
    rules = cell.rules()
    broken = []
    for key, rule in rules.items():
        value = run.rule_value(key)
        if value is None:
            doubts.append(f"the run has no {key} count")
        elif rule == "none" and value > 0:
            broken.append(f"{run.show(key)} with the fault, expected none")
    control_doubts = _control_doubts(control)
    if control is None or control_doubts:
        if broken:
            return Judgement("mismatch", "; ".join([*broken, *control_doubts]))
        return Judgement(
            "inconclusive", "; ".join([*control_doubts, "cannot show what the fault caused"])
        )
    for key, rule in rules.items():
        value, without = run.rule_value(key), control.rule_value(key)
        if rule != "some" or value is None:
            continue
        if value == 0 and _took_nothing(cell, run):
            doubts.append(
                f"{key} 0, but the consumer crash caught the consumer holding no message (no "
                "delivery cut short, none lost or redelivered): nothing for the broker to redo"
            )
        elif value == 0:
            broken.append(f"{key} 0 with the fault, expected some")
        elif without is None:
            doubts.append(f"the control has no {key} count")
        elif without > 0:
            broken.append(
                f"{run.show(key)} with the fault but also {control.show(key)} without it: "
                "not caused by the fault"
            )
    dirty = [f"{key} {control.count(key)}" for key in CLEAN_COUNTS if (control.count(key) or 0) > 0]
    if dirty:
        broken.append("the control (no fault) is not clean: " + ", ".join(dirty))
    if broken:
        return Judgement("mismatch", "; ".join(broken))
    if doubts:
        return Judgement("inconclusive", "; ".join(doubts))
    caused = [
        f"{run.show(key)} vs 0 without the fault" for key, rule in rules.items() if rule == "some"
    ]
    held = [key for key, rule in rules.items() if rule == "none"]
    said = [f"fault fired at {_window_text(run.windows, cell.fault)}"]
    said += caused
    if held:
        said.append("none " + ", ".join(held))
    said.append("control clean")
    return Judgement("match", "; ".join(said))


def _expectation(cell: Cell) -> str:
    """The expectation in words: the machine-checked rules, then the table's wording."""
    checked = ", ".join(f"{key} {rule}" for key, rule in cell.rules().items())
    return f"{checked}: {cell.expected}"


def _note(warnings: Iterable[str]) -> str:
    """Warnings that say the target could not play part of the scenario (e.g. a fault)."""
    flagged = [
        w
        for w in warnings
        if "not simulated" in w
        or "cannot" in w
        or "not applied" in w
        or any(fragment in w for fragment in NOT_PLAYED)
    ]
    return "; ".join(flagged)


def control_of(scenario: Scenario, config: str) -> Scenario:
    """The cell's scenario without faults: the same load, broker, consumers and seed.

    Named after the config so that every cell of one config, whose scenarios differ only in the
    fault, shares one control run.
    """
    return scenario.model_copy(
        update={
            "faults": [],
            "name": f"{config}--control",
            "description": f"Fault-free control of the {config} cells of the guarantee matrix.",
        }
    )


@dataclass(frozen=True)
class MatrixResult:
    """A finished matrix: its folder and one record per cell and target."""

    path: Path
    records: pd.DataFrame

    def grid(self) -> pd.DataFrame:
        """Configs as rows, faults as columns; each cell per target 'status: lost F/C, dup F/C'
        with F the run with the fault and C its fault-free control."""
        rows: dict[str, dict[str, str]] = {}
        for (config, fault), group in self.records.groupby(["config", "fault"], sort=False):
            parts = []
            for record in group.itertuples():
                status = getattr(record, "status", None) or (
                    "match" if record.matches else "mismatch"
                )
                if record.lost is None or pd.isna(record.lost):
                    parts.append(f"{record.target} {status}: run failed")
                    continue
                parts.append(
                    f"{record.target} {status}: lost {_pair(record.lost, record.control_lost)}, "
                    f"dup {_pair(record.duplicates, record.control_duplicates)}"
                )
            rows.setdefault(str(config), {})[str(fault)] = " | ".join(parts)
        return pd.DataFrame.from_dict(rows, orient="index")

    def tally(self) -> dict[str, int]:
        """How many records have each status."""
        counts = self.records["status"].value_counts()
        return {status: int(counts.get(status, 0)) for status in STATUSES}


def _pair(value: Any, control: Any) -> str:
    def show(v: Any) -> str:
        return "-" if v is None or pd.isna(v) else str(int(v))

    return f"{show(value)}/{show(control)}"


@dataclass
class _Controls:
    """Control runs by (target, scenario as played): cells of one config share theirs."""

    stage: Path
    final: Path
    options: RunOptions
    on_cell: Callable[[Cell, str], None] | None
    done: dict[tuple[str, str], Observation] = field(default_factory=dict)
    folders: set[tuple[str, str]] = field(default_factory=set)

    def get(self, cell: Cell, scenario: Scenario, target: str, run_target: str) -> Observation:
        control = control_of(scenario, cell.config)
        key = (target, scenario_to_yaml(control))
        if key not in self.done:
            folder = f"{cell.config}--control"
            if (target, folder) in self.folders:  # a cell of this config with other settings
                folder = f"{cell.config}--{cell.fault}--control"
            self.folders.add((target, folder))
            if self.on_cell:
                self.on_cell(replace(cell, fault="control"), run_target)
            self.done[key] = _play(
                control,
                run_target,
                replace(self.options, out=self.stage / folder / target),
                str(cell.path),
                str(self.final / folder / target),
            )
        return self.done[key]


def _play(
    scenario: Scenario, run_target: str, options: RunOptions, source: str, final: str
) -> Observation:
    try:
        run = run_scenario(scenario, run_target, options, source=source)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one broken cell must not hide the others
        return Observation.failed(error, final)
    return replace(Observation.from_run(run, scenario.drain_timeout), path=final)


def _record(
    cell: Cell, target: str, broker: str, run: Observation, control: Observation
) -> dict[str, Any]:
    judgement = judge_cell(cell, run, control)
    counts = run.counts or {}
    others = control.counts or {}
    note = _note(run.warnings)
    if run.error:
        note = f"run failed: {run.error}"
    return {
        "config": cell.config,
        "fault": cell.fault,
        "target": target,
        "lost": counts.get("lost"),
        "duplicates": counts.get("duplicates"),
        "out_of_order": counts.get("out_of_order"),
        "unknown": counts.get("unknown"),
        "redelivered": counts.get("redelivered"),
        "expected": _expectation(cell),
        "matches": judgement.matches,
        "broker": broker,
        "note": note,
        "run": run.path,
        "status": judgement.status,
        "reason": judgement.reason,
        "acked": counts.get("acked"),
        "delivered": counts.get("delivered"),
        "unprocessed": counts.get("unprocessed"),
        "fault_window": _window_text(run.windows, cell.fault),
        "control_lost": others.get("lost"),
        "control_duplicates": others.get("duplicates"),
        "control_out_of_order": others.get("out_of_order"),
        "control_unknown": others.get("unknown"),
        "control_redelivered": others.get("redelivered"),
        "control_unprocessed": others.get("unprocessed"),
        "control_run": control.path,
    }


def run_matrix(
    folder: Path,
    targets: list[str],
    options: RunOptions,
    on_cell: Callable[[Cell, str], None] | None = None,
) -> MatrixResult:
    """Run every cell and its control on every target; write ``matrix.csv`` / ``matrix.json``."""
    unknown = [t for t in targets if t not in MATRIX_TARGETS]
    if not targets or unknown:
        raise MatrixError(f"--targets: unknown {unknown or 'empty list'}; use sim, real or both")
    cells = find_cells(folder)
    scenarios = {cell: load_scenario(cell.path) for cell in cells}
    seed = options.seed
    started = datetime.now(UTC)
    final = results.choose_run_dir(
        options.results_dir,
        results.new_run_id("matrix", "+".join(targets), seed or 1, started),
        options.out,
    )
    records: list[dict[str, Any]] = []
    with results.staged_dir(final) as stage:
        controls = _Controls(stage, final, options, on_cell)
        for cell in cells:
            scenario = scenarios[cell]
            for target in targets:
                run_target = "sim" if target == "sim" else scenario.broker.kind
                if on_cell:
                    on_cell(cell, run_target)
                name = f"{cell.config}--{cell.fault}"
                run = _play(
                    scenario,
                    run_target,
                    replace(options, out=stage / name / target),
                    str(cell.path),
                    str(final / name / target),
                )
                control = controls.get(cell, scenario, target, run_target)
                records.append(_record(cell, target, scenario.broker.kind, run, control))
        frame = pd.DataFrame(records, columns=list(COLUMNS))
        frame.to_csv(stage / MATRIX_CSV, index=False)
        (stage / MATRIX_JSON).write_text(
            json.dumps(records, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        results.write_manifest(
            stage,
            results.MatrixManifest(
                run_id=final.name,
                scenario="matrix",
                scenario_file=str(folder),
                targets=targets,
                seed=seed,
                started_at=started.isoformat(timespec="seconds"),
                # the manifest's contract ("N/M match"); mismatch and inconclusive are in the CSV
                verdict=f"{int(frame['matches'].sum())}/{len(frame)} match",
                versions=results.package_versions(),
                host=results.host_info(),
            ),
        )
    return MatrixResult(final, frame)


def disagreements(records: pd.DataFrame) -> pd.DataFrame:
    """Cells where the simulator and the real broker differ on loss or duplicates (none vs some).

    Only runs that can be evidence are compared: an inconclusive run says nothing either way.
    """
    done = records.dropna(subset=["lost", "duplicates"])
    if "status" in done:
        done = done[done["status"] != "inconclusive"]
    sim = done[done["target"] == "sim"].set_index(["config", "fault"])
    real = done[done["target"] == "real"].set_index(["config", "fault"])
    both = sim.merge(real, left_index=True, right_index=True, suffixes=("_sim", "_real"))
    differs = ((both["lost_sim"] > 0) != (both["lost_real"] > 0)) | (
        (both["duplicates_sim"] > 0) != (both["duplicates_real"] > 0)
    )
    columns = ["lost_sim", "lost_real", "duplicates_sim", "duplicates_real", "note_sim"]
    return both.loc[differs, columns].reset_index()
