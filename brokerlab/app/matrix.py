"""The guarantee matrix: broker configurations × faults, simulated and real, against expectations.

Each cell is one scenario file ``scenarios/faults/CONFIG--FAULT.yaml``. ``run_matrix`` plays every
cell on the simulator and/or on the real broker the cell names, reads lost / duplicates /
out-of-order / unknown from each run's metrics, and checks them against the expectation table
(``brokerlab/data/fault_expectations.yaml``, DESIGN.md's table in machine-checkable form).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from brokerlab.app.runner import RunOptions, run_scenario
from brokerlab.core import results
from brokerlab.core.scenario import load_scenario

MATRIX_CSV = "matrix.csv"
MATRIX_JSON = "matrix.json"
MATRIX_TARGETS = ("sim", "real")
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
)


class MatrixError(Exception):
    """A user's mistake: a cell file that does not fit the matrix, an unknown target."""


def load_expectations() -> dict[str, Any]:
    """The expectation table: config and fault names, and per cell what loss/duplicates mean."""
    text = resources.files("brokerlab").joinpath("data/fault_expectations.yaml").read_text("utf-8")
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Cell:
    """One scenario of the matrix and what DESIGN.md expects of it."""

    config: str
    fault: str
    path: Path
    lost: str
    duplicates: str
    expected: str
    redelivered: str = "any"


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
        cells.append(Cell(config, fault, path, **expectation))
    if not cells:
        raise MatrixError(f"{folder}: no matrix cells (CONFIG--FAULT.yaml files)")
    order = {name: i for i, name in enumerate(table["configs"])}
    faults = {name: i for i, name in enumerate(table["faults"])}
    return sorted(cells, key=lambda c: (order.get(c.config, 99), faults.get(c.fault, 99)))


def _meets(rule: str, value: int | None) -> bool:
    if rule == "any":
        return True
    if value is None:
        return False
    return {"none": value == 0, "some": value > 0, "any": True}[rule]


def judge(cell: Cell, counts: dict[str, int]) -> bool:
    """Whether a run's loss, duplicates and redeliveries are what the table expects of the cell."""
    return (
        _meets(cell.lost, counts.get("lost"))
        and _meets(cell.duplicates, counts.get("duplicates"))
        and _meets(cell.redelivered, counts.get("redelivered"))
    )


def _expectation(cell: Cell) -> str:
    """The expectation in words: the machine-checked part, then DESIGN.md's wording."""
    checked = f"lost {cell.lost}, duplicates {cell.duplicates}"
    if cell.redelivered != "any":
        checked += f", redelivered {cell.redelivered}"
    return f"{checked}: {cell.expected}"


def _note(warnings: list[str]) -> str:
    """Warnings that say the target could not play part of the scenario (e.g. a fault)."""
    flagged = [w for w in warnings if "not simulated" in w or "cannot" in w or "not applied" in w]
    return "; ".join(flagged)


@dataclass(frozen=True)
class MatrixResult:
    """A finished matrix: its folder and one record per cell and target."""

    path: Path
    records: pd.DataFrame

    def grid(self) -> pd.DataFrame:
        """Configs as rows, faults as columns, each cell 'sim L/D | real L/D' with a mark."""
        rows: dict[str, dict[str, str]] = {}
        for (config, fault), group in self.records.groupby(["config", "fault"], sort=False):
            parts = []
            for record in group.itertuples():
                if record.lost is None or pd.isna(record.lost):
                    parts.append(f"{record.target}: error")
                    continue
                mark = "ok" if record.matches else "MISMATCH"
                parts.append(
                    f"{record.target}: lost {int(record.lost)}, dup {int(record.duplicates)} {mark}"
                )
            rows.setdefault(str(config), {})[str(fault)] = " | ".join(parts)
        return pd.DataFrame.from_dict(rows, orient="index")


def run_matrix(
    folder: Path,
    targets: list[str],
    options: RunOptions,
    on_cell: Callable[[Cell, str], None] | None = None,
) -> MatrixResult:
    """Run every cell on every target and write ``matrix.csv`` / ``matrix.json`` with the runs."""
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
        for cell in cells:
            scenario = scenarios[cell]
            for target in targets:
                run_target = "sim" if target == "sim" else scenario.broker.kind
                if on_cell:
                    on_cell(cell, run_target)
                record: dict[str, Any] = {
                    "config": cell.config,
                    "fault": cell.fault,
                    "target": target,
                    "lost": None,
                    "duplicates": None,
                    "out_of_order": None,
                    "unknown": None,
                    "redelivered": None,
                    "expected": _expectation(cell),
                    "matches": False,
                    "broker": scenario.broker.kind,
                    "note": "",
                    "run": str(final / f"{cell.config}--{cell.fault}" / target),
                }
                out = stage / f"{cell.config}--{cell.fault}" / target
                try:
                    run = run_scenario(
                        scenario, run_target, replace(options, out=out), source=str(cell.path)
                    )
                except KeyboardInterrupt:
                    raise
                except Exception as error:  # one broken cell must not hide the others
                    record["note"] = f"run failed: {type(error).__name__}: {error}"
                    records.append(record)
                    continue
                counts = run.metrics["counts"]
                record.update(
                    lost=counts["lost"],
                    duplicates=counts["duplicates"],
                    out_of_order=counts["out_of_order"],
                    unknown=counts["unknown"],
                    redelivered=counts["redelivered"],
                    matches=judge(cell, counts),
                    note=_note(list(run.result.warnings)),
                )
                records.append(record)
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
                verdict=f"{int(frame['matches'].sum())}/{len(frame)} match",
                versions=results.package_versions(),
                host=results.host_info(),
            ),
        )
    return MatrixResult(final, frame)


def disagreements(records: pd.DataFrame) -> pd.DataFrame:
    """Cells where the simulator and the real broker differ on loss or duplicates (none vs some)."""
    done = records.dropna(subset=["lost", "duplicates"])
    sim = done[done["target"] == "sim"].set_index(["config", "fault"])
    real = done[done["target"] == "real"].set_index(["config", "fault"])
    both = sim.merge(real, left_index=True, right_index=True, suffixes=("_sim", "_real"))
    differs = ((both["lost_sim"] > 0) != (both["lost_real"] > 0)) | (
        (both["duplicates_sim"] > 0) != (both["duplicates_real"] > 0)
    )
    columns = ["lost_sim", "lost_real", "duplicates_sim", "duplicates_real", "note_sim"]
    return both.loc[differs, columns].reset_index()
